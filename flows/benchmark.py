"""``cloudmask benchmark model``: parameters, GMAC and speed of a model per tile, batch size and precision.

On a GPU it follows the paper's latency protocol (batch 8, 10 warm-up and 40 timed batches, each
synchronised) unless told otherwise, and names the GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:  # imported where used: torch takes seconds to load, and --help should not wait for it
    import torch

from .parsers import csv_list, machine_name, output_file


def add_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="benchmarks that print figures: model speed, reads, the job, memory, scale",
        description="Benchmarks that print figures.",
    )
    bsub = p.add_subparsers(dest="benchmark_command", metavar="WHAT", required=True)
    m = bsub.add_parser(
        "model",
        help="params, GMAC and seconds per 512x512 tile for batch sizes and precisions",
        description="Times the model's forward pass on random tiles. CPU defaults: batch 1 and 8, fp32 (and "
        "bf16 where the CPU has it natively), 1 warm-up and 3 timed batches. GPU defaults: the "
        "paper's protocol, batch 8, 10 warm-up and 40 timed batches, synchronised around each.",
        epilog="examples:\n  cloudmask benchmark model\n  cloudmask benchmark model --batch-sizes 8 "
        "--precisions bf16 --repeats 5\n  cloudmask benchmark model --device cuda --json gpu.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument(
        "--model",
        default="mscloudcam",
        help="a registered model: mscloudcam or one of its variants (mscloudcam_tiny ...; default: %(default)s)",
    )
    m.add_argument("--bands", type=int, default=13, help="input bands (default: %(default)s)")
    m.add_argument("--cam-bypass", action="store_true", help="time the authors' variant (CAM computed nowhere)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    m.add_argument("--batch-sizes", help="comma-separated (default: 1,8 on CPU, 8 on GPU)")
    m.add_argument(
        "--precisions",
        help="comma-separated from fp32, bf16, fp16 (default: fp32,bf16 on a GPU or a CPU "
        "with native bf16; fp32 on other CPUs, where bf16 is emulated and many "
        "times slower)",
    )
    m.add_argument("--warmup", type=int, help="warm-up batches (default: 1 on CPU, 10 on GPU)")
    m.add_argument("--repeats", type=int, help="timed batches (default: 3 on CPU, 40 on GPU)")
    m.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    m.add_argument(
        "--variants",
        default="default",
        help="comma-separated from " + ", ".join(f"{k} ({v})" for k, v in VARIANTS.items()) + " (default: %(default)s)",
    )
    m.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    m.set_defaults(func=run_model)
    from . import (
        benchmark_agreement,
        benchmark_memory,
        benchmark_overcast,
        benchmark_pipeline,
        benchmark_precision,
        benchmark_read,
        benchmark_scale,
    )

    benchmark_precision.add_parser(bsub)
    benchmark_pipeline.add_parser(bsub)
    benchmark_memory.add_parser(bsub)
    benchmark_scale.add_parser(bsub)
    benchmark_read.add_parser(bsub)
    benchmark_agreement.add_parser(bsub)
    benchmark_overcast.add_parser(bsub)


def count_gmac(model: torch.nn.Module, bands: int, size: int) -> float:
    """Multiply-accumulates (1e9) of one eval forward at ``1 x bands x size x size`` (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, bands, size, size))
    return counter.get_total_flops() / 2e9


VARIANTS = {
    "default": "what the pipeline runs: channels_last, fused attention (SDPA), inference_mode",
    "contiguous": "NCHW tensors instead of channels_last",
    "math-attention": "attention written out (softmax(q k^T) v) instead of fused SDPA kernels",
    "no-grad": "torch.no_grad instead of inference_mode",
    "compile": "torch.compile (inductor) of the default; compiles per shape and precision first",
}


def variant_model(model: torch.nn.Module, variant: str) -> tuple[torch.nn.Module, Callable]:
    """``model`` set up as ``variant`` (see VARIANTS) and the context its forward runs in."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layout = torch.contiguous_format if variant == "contiguous" else torch.channels_last
    model = model.to(memory_format=layout)
    for m in model.modules():  # timm's attention blocks pick fused SDPA or the written-out form by this flag
        if hasattr(m, "fused_attn"):
            m.fused_attn = variant != "math-attention"
    grad = torch.no_grad if variant == "no-grad" else torch.inference_mode
    if variant == "math-attention":

        def context():
            stack = contextlib.ExitStack()
            stack.enter_context(grad())
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            return stack
    else:
        context = grad
    if variant == "compile":
        model = torch.compile(model)
    return model, context


def time_batches(
    model, x: torch.Tensor, dtype: torch.dtype, warmup: int, repeats: int, context: Callable | None = None
) -> list[float]:
    """Seconds per batch for ``repeats`` timed forward passes after ``warmup`` untimed ones (under ``context``,
    default ``torch.inference_mode``)."""
    import torch

    context = context or torch.inference_mode
    cuda = x.device.type == "cuda"
    times = []
    with context():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if dtype != torch.float32:
                with torch.autocast(x.device.type, dtype=dtype):
                    model(x)
            else:
                model(x)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """Sustained GFLOPS of an ``n x n`` matmul in ``dtype`` on this CPU (the floor the model is measured against)."""
    import torch

    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def default_precisions(device) -> str:
    """fp32 and bf16 where inference's ``auto`` leaves fp32 (a GPU, or a CPU with native bf16); fp32 alone elsewhere."""
    import torch

    from pipeline.detect.infer import resolve_precision

    if resolve_precision("auto", device) != torch.float32:
        return "fp32,bf16"
    print(
        "precisions: fp32 only -- this CPU has no native bf16 (emulated bf16 is many times slower); "
        "ask for it with --precisions fp32,bf16"
    )
    return "fp32"


def run_model(args: argparse.Namespace) -> int:
    import torch

    from pipeline.config import InferSpec
    from pipeline.detect.infer import resolve_device, resolve_precision
    from pipeline.detect.model import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch_sizes = csv_list(args.batch_sizes or ("8" if gpu else "1,8"), int, "batch-sizes")
    precisions = csv_list(args.precisions or default_precisions(device), str, "precisions")
    for p in precisions:
        InferSpec(precision=p)  # validates the name
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    repeats = args.repeats if args.repeats is not None else (40 if gpu else 3)
    if min(batch_sizes) < 1:
        raise ConfigError(f"--batch-sizes {args.batch_sizes}: every batch size must be at least 1")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"--repeats {repeats} must be >= 1 and --warmup {warmup} >= 0")

    variants = csv_list(args.variants, str, "variants")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    base = create_model(args.model, in_chans=args.bands, cam_bypass=args.cam_bypass).eval()
    size = base.img_size
    params = sum(p.numel() for p in base.parameters())
    gmac = count_gmac(base, args.bands, size)
    base = base.to(device)
    print(
        f"model {args.model}{' (cam_bypass)' if args.cam_bypass else ''}: {params:,} parameters, "
        f"{gmac:.2f} GMAC per {args.bands}x{size}x{size} tile"
    )
    print(
        f"device: {device.type} -- {machine_name(device)}; torch {torch.__version__}; "
        f"{warmup} warm-up + {repeats} timed batches{', synchronised' if gpu else ''}"
    )
    floors = {}
    if not gpu:  # the floor: the tile's FLOPs at this CPU's sustained matmul speed, per precision
        for prec in precisions:
            dtype = resolve_precision(prec, device)
            gflops = matmul_gflops(dtype)
            floors[prec] = 2 * gmac / gflops
            print(f"floor {prec}: 4096^2 matmul {gflops:.0f} GFLOPS -> {floors[prec] * 1e3:.0f} ms per tile")
    header = (
        f"{'variant':>14} {'batch':>5} {'precision':>9} {'s/batch':>8} {'ms/tile':>8} {'Mpx/s':>6} "
        f"{'GMAC/s':>7}{' of floor' if floors else ''}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for variant in variants:
        model, context = variant_model(base, variant)
        for bs in batch_sizes:
            x = torch.rand(bs, args.bands, size, size, device=device) * 2.0  # DN/3000 of 0..6000 DN
            x = x.contiguous(memory_format=torch.contiguous_format if variant == "contiguous" else torch.channels_last)
            for prec in precisions:
                dtype = resolve_precision(prec, device)
                times = time_batches(model, x, dtype, warmup, repeats, context)
                per_batch = sum(times) / len(times)
                per_tile = per_batch / bs
                row = dict(
                    variant=variant,
                    batch=bs,
                    precision=prec,
                    s_per_batch=per_batch,
                    ms_per_tile=per_tile * 1e3,
                    tiles_per_s=1 / per_tile,
                    mpx_per_s=size * size / per_tile / 1e6,
                    gmac_per_s=gmac / per_tile,
                    min_s_per_batch=min(times),
                )
                if prec in floors:
                    row["of_floor"] = floors[prec] / per_tile
                rows.append(row)
                of_floor = f"   {row['of_floor']:.0%}" if "of_floor" in row else ""
                print(
                    f"{variant:>14} {bs:>5} {prec:>9} {per_batch:>8.3f} {row['ms_per_tile']:>8.1f} "
                    f"{row['mpx_per_s']:>6.3f} {row['gmac_per_s']:>7.1f}{of_floor}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    model=args.model,
                    cam_bypass=args.cam_bypass,
                    bands=args.bands,
                    tile=size,
                    params=params,
                    gmac=gmac,
                    device=device.type,
                    machine=machine_name(device),
                    torch=torch.__version__,
                    warmup=warmup,
                    repeats=repeats,
                    floors_s=floors,
                    rows=rows,
                ),
                f,
                indent=2,
            )
        print(f"figures written to {args.json}")
    return 0

"""``cloudmask``: the command-line entry point. Each flow module adds its own subcommand."""

from __future__ import annotations

import argparse
import os
import sys

# No model weights can come from a hub at run time; without this, timm/huggingface retry for ~47 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# torch's OpenMP threads sleep when they wait instead of spinning (read before torch loads; workers inherit it): the
# model's threads share the cores with the threads reading the next blocks and with other processes, whom spinning
# threads starve. Alone, the forward pass is as fast (docs/performance.md, "Threads that wait").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipeline.errors import CloudmaskError, Terminated, raise_if_stopped, request_stop  # noqa: E402

from . import benchmark, clusters, compare, demo, evaluate, export, run, train, weights  # noqa: E402

FLOWS = (run, demo, export, compare, train, evaluate, benchmark, weights, clusters)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudmask",
        description="Archive-scale cloud masking of Sentinel-2 and Landsat with MSCloudCAM.",
        epilog="Run 'cloudmask COMMAND --help' for a command's options and examples.",
    )
    from pipeline import __version__

    parser.add_argument("--version", action="version", version=f"cloudmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for flow in FLOWS:
        flow.add_parser(sub)
    return parser


def _stop(signum, frame):
    request_stop(signum)


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    # a handler, not the default action: the job unwinds (and, as PID 1 in a container, SIGTERM and SIGINT are not
    # ignored); the signal is also recorded, so a stop swallowed where it landed (a destructor, a C library's
    # callback) is raised again at the job's next check
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        code = int(args.func(args) or 0)
        raise_if_stopped()  # a stop that was swallowed until the end still reports as a stop
        return code
    except CloudmaskError as exc:
        print(f"cloudmask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cloudmask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"cloudmask {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

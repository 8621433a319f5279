"""``cloudmask``: the command-line entry point. Each flow module adds its own subcommand."""

from __future__ import annotations

import argparse
import os
import sys

# No model weights can come from a hub at run time; without this, timm/huggingface retry for ~47 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.errors import CloudmaskError  # noqa: E402

from . import benchmark, clusters, compare, demo, evaluate, run, train, weights  # noqa: E402

FLOWS = (run, demo, compare, train, evaluate, benchmark, weights, clusters)


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


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (locks released, clusters closed), then exit 143."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    # a handler, not the default action: the job unwinds (and, as PID 1 in a container, SIGTERM is not ignored)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # PID 1 ignores SIGINT's default action too
    try:
        return int(args.func(args) or 0)
    except CloudmaskError as exc:
        print(f"cloudmask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cloudmask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"cloudmask {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())

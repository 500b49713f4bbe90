"""The ``stablesoftmax`` command: a thin shell over the lab and the library.

Each subcommand lives in its own module under :mod:`stablesoftmax.lab`, which
provides ``add_parser(subparsers)``; the parser it adds sets ``run``, a
function of the parsed arguments that returns the exit code. Heavy imports
(matplotlib, torch, scipy) happen inside ``run``, so ``--help`` stays fast.

Exit codes: 0 success, 1 a check failed (``diagnose --fail-on``), 2 bad input.
Every :class:`~stablesoftmax.StableSoftmaxError` is printed as one line,
without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from ._errors import StableSoftmaxError

SUBCOMMANDS = ("battery", "bench", "diagnose")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablesoftmax",
        description="Stable softmax, logsumexp and cross-entropy: the lab, benchmarks and diagnostics.",
        epilog="Run 'stablesoftmax COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"stablesoftmax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = _load(name)
        if module is not None:
            module.add_parser(sub)
    return parser


def _load(name: str):
    try:
        return importlib.import_module(f"stablesoftmax.lab.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"stablesoftmax.lab.{name}":
            return None  # that subcommand is not part of this build
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stablesoftmax`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except StableSoftmaxError as exc:
        print(f"stablesoftmax {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `stablesoftmax battery | head`: the reader left, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"stablesoftmax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

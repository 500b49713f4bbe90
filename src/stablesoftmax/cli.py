"""The ``stablesoftmax`` command: a thin shell over the lab and the library.

Each subcommand lives in its own module under :mod:`stablesoftmax.lab`, which
provides ``add_parser(subparsers)``; the parser it adds sets ``run``, a
function of the parsed arguments that returns the exit code. Only the module
of the subcommand being run is imported: ``stablesoftmax --help`` lists the
subcommands from :data:`SUBCOMMANDS` without importing any of them (each
imports NumPy and more), and heavy imports (matplotlib, torch, scipy) happen
inside ``run``.

Exit codes: 0 success, 1 a check failed (``diagnose --fail-on``), 2 bad input,
a refused file, a missing optional library, or an output that cannot be
written (a full disk). Every error is printed as one line on stderr, without
a traceback: ``stablesoftmax COMMAND: error: MESSAGE``, or, when ``--json``
is given, one JSON object (schema ``stablesoftmax.error/1``) with the keys
``schema``, ``command``, ``error`` (the exception's class name, or
``UsageError`` for a command line argparse refuses), ``message`` and
``exit_code``. Standard output carries only the report, so
``--json > report.json`` never mixes the two.

Every message goes through one printer, :func:`_say`, which folds it onto one
line, whatever it came from: an exception whose text spans lines (a
``torch.load`` error), argparse's usage error (printed without the usage
block; ``--help`` shows that), or a warning. Warnings raised while a command
runs (torch warns when it loads a sparse or quantized tensor) are held back:
after an error only the error line is printed, after success each distinct
warning is printed as one line, ``stablesoftmax COMMAND: warning: MESSAGE``
(with ``--json``, a JSON object whose ``error`` is the warning's class and
``exit_code`` null).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from . import StableSoftmaxError, __version__

# name -> one-line help, the same text each module's add_parser gives (tests/test_cli.py checks it).
SUBCOMMANDS = {
    "battery": "write and run the lab's experiment directory (naive.py, stable.py, compare.py, results, report)",
    "bench": "time logsumexp against naive NumPy, SciPy and PyTorch; write timings.csv",
    "diagnose": "find the logits slices that make a naive loss inf or NaN",
}
ERROR_SCHEMA = "stablesoftmax.error/1"


def build_parser(argv: Sequence[str] | None = None, *, json_errors: bool = False) -> argparse.ArgumentParser:
    """The command's parser. With ``argv``, only the subcommand it names is imported; the others are
    listed by name and help alone. Without it, every subcommand is imported and complete."""
    chosen = _chosen(argv) if argv is not None else None
    parser = _parser_class(json_errors)(
        prog="stablesoftmax",
        description="Stable softmax, logsumexp and cross-entropy: the lab, benchmarks and diagnostics.",
        epilog="Run 'stablesoftmax COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"stablesoftmax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            module = _load(name)
            if module is not None:
                module.add_parser(sub)
        elif _available(name):
            sub.add_parser(name, help=summary)  # never run: argv names another subcommand, or none
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (the top level takes no values)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in SUBCOMMANDS else None


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` (or an abbreviation argparse would take for it) comes before any ``--``."""
    words = list(argv)[: list(argv).index("--")] if "--" in argv else list(argv)
    return any(len(w) > 3 and "--json".startswith(w) for w in words)


def _parser_class(json_errors: bool) -> type[argparse.ArgumentParser]:
    class Parser(argparse.ArgumentParser):
        """argparse's parser, whose refusal of a command line is one line (or one JSON object) too."""

        def error(self, message: str) -> NoReturn:
            command = self.prog.split(" ", 1)[1] if " " in self.prog else None
            if not json_errors:
                message = f"{message}; see '{self.prog} --help'"
            _say(command, "UsageError", message, json_errors, exit_code=2)
            self.exit(2)

    return Parser


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"stablesoftmax.lab.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"stablesoftmax.lab.{name}":
            return None  # that subcommand is not part of this build
        if exc.name is not None and not exc.name.startswith("stablesoftmax"):
            raise MissingDependency(name, exc.name) from None
        raise


class MissingDependency(Exception):
    """A subcommand needs a library that is not installed (the ``lab`` extra)."""

    def __init__(self, command: str, module: str) -> None:
        super().__init__(
            f"the {command} command needs {module.split('.')[0]}, which is not installed; "
            "install the lab's dependencies: pip install 'stablesoftmax[lab]'"
        )
        self.command = command


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"stablesoftmax.lab.{name}") is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stablesoftmax`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    json_errors = _wants_json(argv)
    try:
        parser = build_parser(argv, json_errors=json_errors)
    except MissingDependency as exc:
        _say(exc.command, type(exc).__name__, str(exc), json_errors, exit_code=2)
        return 2
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each distinct warning once; the test suite's "error" is not the CLI's
        code = _run(args, json_errors)
    if code in (0, 1):  # after an error, its one line is all that stderr gets
        for w in caught:
            _say(args.command, w.category.__name__, str(w.message), json_errors, exit_code=None, level="warning")
    return code


def _run(args: argparse.Namespace, json_errors: bool) -> int:
    """Run the subcommand; an error becomes its one line on stderr and exit code 2."""

    def fail(exc: BaseException, message: str) -> int:
        _say(args.command, type(exc).__name__, message, json_errors, exit_code=2)
        return 2

    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a full disk shows here, inside the try, and not as a traceback at exit
        return code
    except StableSoftmaxError as exc:
        return fail(exc, str(exc))
    except BrokenPipeError:  # e.g. `stablesoftmax battery | head`: the reader left, so stop quietly
        _drop_stdout()
        return 141
    except OSError as exc:  # ENOSPC, EIO, ... on standard output or a file being written
        _drop_stdout()
        where = exc.filename or "standard output"
        return fail(
            exc,
            f"could not write {where} ({exc.strerror or exc}); expected a writable output with space left on its disk.",
        )
    except MemoryError as exc:
        return fail(exc, "ran out of memory; read less at once (lower --max-bytes) or give the machine more memory.")
    except KeyboardInterrupt:
        print(f"stablesoftmax {args.command}: interrupted", file=sys.stderr)
        return 130


def _say(
    command: str | None, kind: str, message: str, json_errors: bool, *, exit_code: int | None, level: str = "error"
) -> None:
    """Print one message on one line of stderr: ``stablesoftmax COMMAND: LEVEL: MESSAGE``, or a JSON object.

    The one place where messages are folded, so no message (a multi-line
    ``torch.load`` error, a warning, argparse's refusal) can break the promise.
    """
    one_line = " ".join(message.split())
    if json_errors:
        error = {"schema": ERROR_SCHEMA, "command": command, "error": kind, "message": one_line, "exit_code": exit_code}
        print(json.dumps(error), file=sys.stderr)
        return
    prefix = f"stablesoftmax {command}" if command else "stablesoftmax"
    print(f"{prefix}: {level}: {one_line}", file=sys.stderr)


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit cannot fail a second time."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())

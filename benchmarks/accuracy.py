"""Accuracy table of issue 2 (item 5): ulps from mpmath, stablesoftmax beside SciPy and PyTorch.

Run from the repository root::

    python benchmarks/accuracy.py            # the full battery (the one tests/test_accuracy.py uses)
    python benchmarks/accuracy.py --quick    # no rows of 10 000 or 100 000 entries
    python benchmarks/accuracy.py --csv benchmarks/results/accuracy.csv > benchmarks/results/accuracy.md
                                             # the committed table the documentation shows

Every library gets the same battery (``tests/accuracy_harness.py``, the
harness ``tests/test_accuracy.py`` holds to the goals; it is not shipped),
each row cast to the dtype first, and is measured against mpmath at 50
digits from the cast values. A cell is ``max / median`` in ulps of the dtype
over the elements whose exact value is finite and nonzero: ``logsumexp`` in
ulps of ``max(|lse|, max|x|)``, the others elementwise in ulps of the exact
value. A cell over the goal names its worst case in parentheses. Special
values (``-inf`` and exact zeros of masked or ``-inf`` entries, ``+-inf``
past the dtype's range) must match exactly; the cell counts those a library
gets wrong (a NaN for an all-masked row, say) and names the first such
case. Libraries without ``where=`` get masked entries as ``-inf``. A pair the library cannot compute in the input's
dtype is marked and explained under the table; so is a pair whose library
raised a warning on some case. stablesoftmax is measured twice: on NumPy
arrays, and on CPU torch tensors of the same dtypes where torch is installed.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np

# The harness is a test module, not part of the package: import it from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import accuracy_harness as accuracy  # noqa: E402
from tests.accuracy_harness import AccuracyRow  # noqa: E402
from tests.helpers import ulp_goal  # noqa: E402

LIBRARIES = {
    "stablesoftmax": "stablesoftmax",
    "stablesoftmax-torch": "stablesoftmax on torch tensors",
    "scipy": "SciPy",
    "torch": "PyTorch",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller battery: no rows of 10 000 or 100 000 entries")
    p.add_argument("--seed", type=int, default=0, help="seed of the battery's random rows (default 0)")
    p.add_argument(
        "--csv", metavar="FILE", help="also write the table as CSV (the documentation's accuracy page reads it)"
    )
    args = p.parse_args(argv)
    start = time.perf_counter()
    impls, absent = _implementations()
    rows = {name: accuracy.accuracy_rows(impl, seed=args.seed, quick=args.quick) for name, impl in impls.items()}
    print(f"command: {' '.join(['python'] + sys.argv)}")
    sizes = ", ".join(f"{d.name} {len(accuracy.battery(d, seed=args.seed, quick=args.quick))}" for d in accuracy.DTYPES)
    print(f"battery: seed {args.seed}{', quick' if args.quick else ''}; cases per dtype: {sizes}")
    print(f"versions: {_versions()}")
    if absent:
        print(f"not installed: {', '.join(absent)}")
    print()
    print("\n".join(markdown(rows, _goals())))
    if args.csv:
        head, body, _ = table(rows, _goals())
        with open(args.csv, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([head, *body])
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


def table(
    rows: dict[str, list[AccuracyRow]], goals: dict[tuple[str, str], float] | None = None
) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """The table's header, its cells (one row per function and dtype, a column per library) and its notes.

    Parameters
    ----------
    rows : dict of str to list of AccuracyRow
        Per library, from :func:`tests.accuracy_harness.accuracy_rows`
        (all lists in the same function and dtype order).
    goals : dict, optional
        ``(function, dtype name) -> goal in ulps``; adds a goal column.

    Returns
    -------
    head : list of str
    body : list of list of str
    notes : dict of str to int
        Each note's text and the number its cells carry as ``[n]``.
    """
    names = list(rows)
    notes: dict[str, int] = {}
    head = (
        ["function", "dtype"]
        + (["goal"] if goals else [])
        + [f"{LIBRARIES.get(n, n)}: max / median ulp" for n in names]
    )
    body = []
    for i, first in enumerate(rows[names[0]]):
        cells = [first.function, first.dtype] + ([f"{goals[first.function, first.dtype]:g}"] if goals else [])
        goal = goals[first.function, first.dtype] if goals else -1.0
        body.append(cells + [_cell(rows[n][i], goal, notes) for n in names])
    return head, body, notes


def markdown(rows: dict[str, list[AccuracyRow]], goals: dict[tuple[str, str], float] | None = None) -> list[str]:
    """The table in Markdown, then its notes and the worst element of the first library per row.

    Parameters
    ----------
    rows, goals
        As for :func:`table`.

    Returns
    -------
    list of str
        The lines.
    """
    head, body, notes = table(rows, goals)
    first = list(rows)[0]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    worst = [f"- {r.function} {r.dtype}: {r.detail}" for r in rows[first] if r.detail]
    lines += [""] + [f"[{k}] {text}" for text, k in notes.items()]
    lines += ["", f"Worst {LIBRARIES.get(first, first)} element per function and dtype:"] + worst
    return lines


def _cell(row: AccuracyRow, goal: float, notes: dict[str, int]) -> str:
    """``max / median`` apart from special values, worst case when over the goal, special misses, note marks."""
    if row.note:
        return f"n/a [{notes.setdefault(row.note, len(notes) + 1)}]"
    text = f"{_num(row.finite_max_ulp)} / {_num(row.median_ulp)}"
    if row.finite_max_ulp > goal:
        text += f" ({row.finite_worst_case})"
    if row.special_wrong:
        text += f"; **{row.special_wrong} special wrong** ({row.worst_case})"
    if row.warned:
        case, _, warning = row.warned.partition(": ")
        note = f"{LIBRARIES.get(row.library, row.library)} warns: {warning} (e.g. on {case!r})"
        text += f" [{notes.setdefault(note, len(notes) + 1)}]"
    return text


def _num(v: float) -> str:
    if not np.isfinite(v):
        return str(v)
    return f"{v:.2f}" if v < 100 else f"{v:.3g}"


def _implementations() -> tuple[dict[str, accuracy.Implementation], list[str]]:
    impls, absent = {}, []
    for name in LIBRARIES:
        try:
            impls[name] = accuracy.implementation(name)
        except ImportError:
            absent.append(LIBRARIES[name])
    return impls, absent


def _versions() -> str:
    """The libraries measured, with their versions, as they were imported for this run."""
    import importlib.metadata

    import stablesoftmax

    # The package's own version from the code imported (an editable install's metadata can be older),
    # and the commit it was measured at.
    out = [f"python {platform.python_version()}", f"stablesoftmax {stablesoftmax.__version__} ({_commit()})"]
    for dist in ("numpy", "ml_dtypes", "numba", "scipy", "torch", "mpmath"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def _commit() -> str:
    """``git describe`` of the checkout the package was imported from, ``+changes`` if it has uncommitted ones."""
    import subprocess

    import stablesoftmax

    where = Path(stablesoftmax.__file__).parent
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."], capture_output=True, text=True)
    except OSError:
        return "not a git checkout"
    if head.returncode:
        return "not a git checkout"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _goals() -> dict[tuple[str, str], float]:
    """The goals from ``tests/helpers.py``, their one home."""
    return {(f, d.name): ulp_goal(f, d) for f in accuracy.FUNCTIONS for d in accuracy.DTYPES}


if __name__ == "__main__":
    raise SystemExit(main())

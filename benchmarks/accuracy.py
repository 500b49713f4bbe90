"""Accuracy table of issue 2 (item 5): ulps from mpmath, stablesoftmax beside SciPy and PyTorch.

Run from the repository root::

    python benchmarks/accuracy.py            # the full battery (the one tests/test_accuracy.py uses)
    python benchmarks/accuracy.py --quick    # no rows of 10 000 or 100 000 entries

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
    args = p.parse_args(argv)
    start = time.perf_counter()
    impls, absent = _implementations()
    rows = {name: accuracy.accuracy_rows(impl, seed=args.seed, quick=args.quick) for name, impl in impls.items()}
    print(f"command: {' '.join(['python'] + sys.argv)}")
    sizes = ", ".join(f"{d.name} {len(accuracy.battery(d, seed=args.seed, quick=args.quick))}" for d in accuracy.DTYPES)
    print(f"battery: seed {args.seed}{', quick' if args.quick else ''}; cases per dtype: {sizes}")
    if absent:
        print(f"not installed: {', '.join(absent)}")
    print()
    print("\n".join(markdown(rows, _goals())))
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


def markdown(rows: dict[str, list[AccuracyRow]], goals: dict[tuple[str, str], float] | None = None) -> list[str]:
    """The table's lines: one per function and dtype, a ``max / median`` column per library.

    Parameters
    ----------
    rows : dict of str to list of AccuracyRow
        Per library, from :func:`tests.accuracy_harness.accuracy_rows`
        (all lists in the same function and dtype order).
    goals : dict, optional
        ``(function, dtype name) -> goal in ulps``; adds a goal column.

    Returns
    -------
    list of str
        The Markdown table, then its notes.
    """
    names = list(rows)
    notes: dict[str, int] = {}
    head = ["function", "dtype"] + (["goal"] if goals else []) + [f"{LIBRARIES.get(n, n)}: max / median ulp" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, first in enumerate(rows[names[0]]):
        cells = [first.function, first.dtype] + ([f"{goals[first.function, first.dtype]:g}"] if goals else [])
        goal = goals[first.function, first.dtype] if goals else -1.0
        cells += [_cell(rows[n][i], goal, notes) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    worst = [f"- {r.function} {r.dtype}: {r.detail}" for r in rows[names[0]] if r.detail]
    lines += [""] + [f"[{k}] {text}" for text, k in notes.items()]
    lines += ["", f"Worst {LIBRARIES.get(names[0], names[0])} element per function and dtype:"] + worst
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
        text += f" [{notes.setdefault(f'{LIBRARIES.get(row.library, row.library)} warns: {warning} (e.g. on {case!r})', len(notes) + 1)}]"
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


def _goals() -> dict[tuple[str, str], float]:
    """The goals from ``tests/helpers.py``, their one home."""
    return {(f, d.name): ulp_goal(f, d) for f in accuracy.FUNCTIONS for d in accuracy.DTYPES}


if __name__ == "__main__":
    raise SystemExit(main())

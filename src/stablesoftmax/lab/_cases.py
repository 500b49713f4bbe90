"""The inputs the teaching labs name, as data.

Every number here is copied from the labs' seeds: lab 01 block C (the eight
softmax cases, cross-entropy target ``y = 1``), lab 02 task 1 (four logsumexp
inputs) and the "break CE via log softmax" seed (two float32 rows and their
targets). The experiment's ``compare.py`` spells the same lists the way lab 01
writes them, for the learner to read; ``tests/test_battery.py`` checks that the
two agree. The report, the predictions template and the tests read these.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .. import ArgumentError

__all__ = [
    "Case",
    "BreakRow",
    "SOFTMAX_CASES",
    "CE_TARGET",
    "LAB02_INPUTS",
    "BREAK_ROWS",
    "BREAK_DTYPE",
    "DTYPES",
    "parse_dtype",
]

inf = float("inf")


@dataclass(frozen=True)
class Case:
    """One row of the softmax battery: a name, the logits and a short label for tables."""

    name: str
    logits: tuple[float, ...]
    label: str


@dataclass(frozen=True)
class BreakRow:
    """One row of the float32 log(softmax) break: logits, target, and what the seed prints.

    ``seed_unsafe`` and ``seed_safe`` are the seed's "Expected failure mode"
    lines for ``-log(softmax(x))[t]`` and the fused form.
    """

    name: str
    logits: tuple[float, ...]
    target: int
    seed_unsafe: float
    seed_safe: float


SOFTMAX_CASES: tuple[Case, ...] = (
    Case("small magnitudes", (0.1, 0.2, 0.3, 0.4, 0.5), "[0.1, 0.2, 0.3, 0.4, 0.5]"),
    Case("mixed magnitudes", (-3.0, 0.0, 1.0, 2.0, 5.0), "[-3, 0, 1, 2, 5]"),
    Case("large positive", (1.0, 92.0, 3.0, 0.0, 2.0), "[1, 92, 3, 0, 2]"),
    Case("large negative", (-100.0, -200.0, -300.0, -400.0, -500.0), "[-100, -200, -300, -400, -500]"),
    Case("all identical", (5.0,) * 5, "[5, 5, 5, 5, 5]"),
    Case("masked entry", (1.0, -inf, 3.0, 0.0, 2.0), "[1, -inf, 3, 0, 2]"),
    Case("single element", (42.0,), "[42]"),
    Case("verb vocabulary", (0.0,) * 600, "zeros(600)"),
)

# Lab 01 block C: "For the cross_entropy battery, fix y = 1 (present simple)".
CE_TARGET = 1

LAB02_INPUTS: tuple[tuple[float, ...], ...] = (
    (0.0, 0.0, 0.0),
    (1.0, 2.0, 3.0),
    (1000.0, 1001.0, 1002.0),
    (-1000.0, -999.0, -998.0),
)

BREAK_ROWS: tuple[BreakRow, ...] = (
    BreakRow("small", (1.2, 4.7, 3.1, 0.5, 2.9), 2, seed_unsafe=2.0871, seed_safe=2.0871),
    BreakRow("huge", (10.0, 92.0, 30.0, -50.0, 40.0), 3, seed_unsafe=inf, seed_safe=142.0),
)
# The seed's break is a float32 phenomenon (exp(-142) underflows there, not in
# float64), so this block ignores --dtype.
BREAK_DTYPE = np.dtype(np.float32)

DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def parse_dtype(name: str) -> np.dtype:
    """The NumPy dtype called ``name``, or an ArgumentError naming what is allowed."""
    try:
        return DTYPES[name]
    except KeyError:
        allowed = ", ".join(DTYPES)
        raise ArgumentError(f"--dtype {name!r} is not supported; allowed: {allowed}") from None

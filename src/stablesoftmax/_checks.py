"""Value checks that need the data: targets in range, probabilities and class weights non-negative.

Each is made only where values can be read now (:func:`._arrays.concrete_host`):
a tracer, a fake tensor or an accelerator array is never synchronised for a check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import concrete_host
from ._errors import ArgumentError, TargetError

__all__ = ["check_targets", "check_probabilities", "check_class_weight"]

Array = Any


def check_targets(tgt: Array, c: int, ignore_index: int, batch: tuple[int, ...] | None = None) -> None:
    """Class indices in ``[0, C)`` or ``ignore_index``: checked where values can be read cheaply.

    ``batch`` is the target's shape before it became ``(B,)``, for the message.
    """
    if not concrete_host(tgt):
        return
    flat = np.asarray(tgt).reshape(-1)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= c))
    if bad.any():
        i = int(np.argmax(bad))
        where = tuple(int(v) for v in np.unravel_index(i, batch if batch is not None else flat.shape))
        raise TargetError(
            f"target value {int(flat[i])} at position {where} is out of range; class indices must be "
            f"in [0, {c}) or equal ignore_index={ignore_index}."
        )


def check_probabilities(q: Array) -> None:
    if not concrete_host(q):
        return
    arr = np.asarray(q)
    neg = arr < 0
    if neg.any():
        i = np.unravel_index(int(np.argmax(neg.reshape(-1))), arr.shape)
        raise ArgumentError(
            f"probability target has a negative entry {arr[i]} at row {i[0]}, class {i[1]}; "
            f"probabilities must be >= 0 (they need not sum to 1, as in PyTorch)."
        )


def check_class_weight(w: Array, name: str = "weight") -> None:
    """Class weights are >= 0 and finite: a negative weight would let the mean's denominator reach 0."""
    if not concrete_host(w):
        return
    arr = np.asarray(w)
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ArgumentError(f"{name}[{i}] = {arr[i]} is not allowed; class weights must be finite and >= 0.")

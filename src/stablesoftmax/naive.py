"""The textbook formulas, exactly as the labs write them. Unsafe on purpose.

These overflow to ``inf``/NaN and underflow to ``-inf`` just as NumPy does, and
NumPy's RuntimeWarnings come through untouched: they are what the lab breaks
and what the battery reports. Use :mod:`stablesoftmax` for real work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax", "logsumexp", "log_softmax", "cross_entropy"]

# NumPy's ufuncs give a NumPy scalar where the result is 0-d: logsumexp and cross_entropy of a single
# slice. softmax and log_softmax keep x's shape, an array for the vectors and batches they are given
# (of a 0-d x they too would give a scalar).
_Result = np.ndarray | np.generic


def softmax(x: Any, /, *, axis: int = -1) -> np.ndarray:
    """``exp(x) / sum(exp(x))``. Overflows to NaN once ``max(x)`` passes ~709 (float64)."""
    e = np.exp(np.asarray(x))
    p: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return p


def logsumexp(x: Any, /, *, axis: int = -1) -> _Result:
    """``log(sum(exp(x)))``. Overflows to ``inf`` or underflows to ``-inf``."""
    lse: _Result = np.log(np.exp(np.asarray(x)).sum(axis=axis))
    return lse


def log_softmax(x: Any, /, *, axis: int = -1) -> np.ndarray:
    """``log(exp(x) / sum(exp(x)))``: the unfused route, ``-inf`` where a probability underflows."""
    e = np.exp(np.asarray(x))
    logp: np.ndarray = np.log(e / e.sum(axis=axis, keepdims=True))
    return logp


def cross_entropy(x: Any, y: Any, /, *, axis: int = -1) -> _Result:
    """``-log(softmax(x)[y])``, per slice: ``inf`` once the target's probability underflows."""
    p = softmax(x, axis=axis)
    idx = np.expand_dims(np.asarray(y), axis)
    loss: _Result = -np.log(np.take_along_axis(p, idx, axis=axis)).squeeze(axis)
    return loss

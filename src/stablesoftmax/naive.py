"""The textbook formulas, exactly as the labs write them. Unsafe on purpose.

These overflow to ``inf``/NaN and underflow to ``-inf`` just as NumPy does, and
NumPy's RuntimeWarnings come through untouched: they are what the lab breaks
and what the battery reports. Use :mod:`stablesoftmax` for real work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax", "logsumexp", "log_softmax", "cross_entropy"]


def softmax(x: Any, /, *, axis: int = -1) -> np.ndarray:
    """``exp(x) / sum(exp(x))``. Overflows to NaN once ``max(x)`` passes ~709 (float64)."""
    e = np.exp(np.asarray(x))
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(x: Any, /, *, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(x)))``. Overflows to ``inf`` or underflows to ``-inf``."""
    return np.log(np.exp(np.asarray(x)).sum(axis=axis))


def log_softmax(x: Any, /, *, axis: int = -1) -> np.ndarray:
    """``log(exp(x) / sum(exp(x)))``: the unfused route, ``-inf`` where a probability underflows."""
    e = np.exp(np.asarray(x))
    return np.log(e / e.sum(axis=axis, keepdims=True))


def cross_entropy(x: Any, y: Any, /, *, axis: int = -1) -> np.ndarray:
    """``-log(softmax(x)[y])``, per slice: ``inf`` once the target's probability underflows."""
    p = softmax(x, axis=axis)
    idx = np.expand_dims(np.asarray(y), axis)
    return -np.log(np.take_along_axis(p, idx, axis=axis)).squeeze(axis)

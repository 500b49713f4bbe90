"""Large outputs: memory handed back by the caller is used again."""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["recycled_empty"]

# A fresh array of hundreds of MB costs the operating system's zeroing of every new page,
# and glibc hands such blocks straight back to the system when they are freed, so a
# training loop would pay it on every step. Large gradients are therefore carved from a
# few kept blocks; a block is used again once nothing refers to it any more, which in a
# loop is as soon as the previous step's gradient is dropped. The measurements are in
# benchmarks/results/kernels.md (the recycled_empty entry).
_RECYCLE_MIN_BYTES = 16 << 20
_RECYCLE_SLOTS = 2  # a loop rebinding its gradient holds two at once, during the call
_RECYCLED: list[np.ndarray] = []
_RECYCLE_LOCK = threading.Lock()
_FREE_REFS = 2  # sys.getrefcount of a block held by the list alone (the list, the argument)


def recycled_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)``; for a large array, from a kept block nothing refers to any more.

    A block is free when its reference count is the list's own: every NumPy
    view of it (the returned array, its reshapes, a PyTorch tensor made by
    ``torch.from_numpy``) holds a reference to it. At most
    ``_RECYCLE_SLOTS`` blocks are kept, so what stays allocated after the
    last call is at most what a loop held at its peak.
    """
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < _RECYCLE_MIN_BYTES:
        return np.empty(shape, dt)
    with _RECYCLE_LOCK:
        free = [i for i in range(len(_RECYCLED)) if sys.getrefcount(_RECYCLED[i]) == _FREE_REFS]
        block = next((_RECYCLED[i] for i in free if _RECYCLED[i].nbytes == nbytes), None)
        if block is None:
            if len(_RECYCLED) >= _RECYCLE_SLOTS and free:  # a kept block of another size makes room
                del _RECYCLED[free[0]]
            block = np.empty(nbytes, np.uint8)
            if len(_RECYCLED) < _RECYCLE_SLOTS:
                _RECYCLED.append(block)
        out: np.ndarray = block.view(dt).reshape(shape)
        return out

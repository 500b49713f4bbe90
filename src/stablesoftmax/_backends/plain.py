"""NumPy and array-API libraries without autograd: :mod:`.._compute` as it is.

For NumPy the reference computes with infinities by design (``inf - inf``
inside TwoSum, ``exp(-inf)``, ``log1p`` of ``inf``) and its results follow the
contract, so NumPy's floating-point warnings carry no information here: they
are silenced at this one boundary, for NumPy only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _compute


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return run


logsumexp = _quiet(_compute.logsumexp)
softmax = _quiet(_compute.softmax)
logsumexp_grad = _quiet(_compute.logsumexp_grad)
softmax_grad = _quiet(_compute.softmax_grad)
cross_entropy = _quiet(_compute.cross_entropy)
nll_loss = _quiet(_compute.nll_loss)
bce = _quiet(_compute.bce)

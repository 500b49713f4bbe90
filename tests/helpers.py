"""Shared test helpers: dtypes, ulp measurement, the one place tolerances live."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# ulp measurement lives with the accuracy harness; re-exported here for the tests.
from tests.accuracy_harness import ulp, ulp_error  # noqa: F401

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64)]
DTYPE_IDS = [str(d) for d in FLOAT_DTYPES]

# (precision in bits incl. the hidden bit, smallest normal exponent)
_FORMAT = {
    np.dtype(np.float16): (11, -14),
    BFLOAT16: (8, -126),
    np.dtype(np.float32): (24, -126),
    np.dtype(np.float64): (53, -1022),
}

# Accuracy goals, in ulps, from the core issue. The one place they live.
ULP_GOALS = {
    "float64": {"logsumexp": 2.0, "log_softmax": 2.5, "softmax": 4.0, "cross_entropy": 2.5},
    "narrow": {"logsumexp": 1.0, "log_softmax": 1.0, "softmax": 1.0, "cross_entropy": 1.0},
}


def ulp_goal(fn: str, dtype: np.dtype) -> float:
    return ULP_GOALS["float64" if np.dtype(dtype) == np.float64 else "narrow"][fn]


def eps(dtype) -> float:
    """Machine epsilon of ``dtype`` (bfloat16 included, which np.finfo may not know)."""
    return 2.0 ** (1 - _FORMAT[np.dtype(dtype)][0])


def rtol(dtype, k: float = 4.0) -> float:
    """``k`` machine epsilons of ``dtype``: the tolerance for algebraic identities."""
    return k * eps(dtype)

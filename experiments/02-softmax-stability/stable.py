"""Stable softmax, log-sum-exp, log-softmax and cross-entropy, in pure NumPy (lab 01 block B).

Every function works along the last axis: ``x`` is one row of logits, shape
(K,), or a batch of rows, shape (B, K). An entry of ``-inf`` is a masked class:
its probability is exactly 0.

A row that is all ``-inf`` has no class left, so there is no distribution to
return. The choice made here (the same as stablesoftmax's): softmax gives all
zeros, log_sum_exp gives ``-inf`` (the log of an empty sum, exact), log_softmax
gives ``-inf`` everywhere, and the cross-entropy is ``+inf`` (the true class has
probability 0). A uniform answer would invent mass the input does not have; NaN
would poison every sum it enters. Rows holding ``+inf`` are out of scope.
"""

import numpy as np

# Too narrow to add in: bfloat16 cannot count past 256 (256 + 1 == 256), so these
# are widened to float32, and each result is rounded back once at the end.
NARROW = ("float16", "bfloat16")


def _shift(x):
    """The max trick's pieces along the last axis: z = x - m, the max m, and exp(z)."""
    x = np.asarray(x)
    if x.dtype.name in NARROW:
        x = x.astype(np.float32)
    # keepdims: one max per row, as a (B, 1) column that broadcasts against (B, K).
    # x.max() would be one max for the whole batch.
    m = np.max(x, axis=-1, keepdims=True)
    # An all -inf row has m = -inf, and -inf - (-inf) is NaN: shift that row by 0.
    z = x - np.where(np.isfinite(m), m, 0)
    return z, m, np.exp(z)  # every exponent is <= 0: exp cannot overflow, and the max gives exp(0) = 1


def _back(result, x):
    """The result in the input's own dtype (widened 16-bit inputs are rounded back here)."""
    dtype = np.asarray(x).dtype
    return result.astype(dtype) if dtype.name in NARROW else result


def stable_softmax(x):
    """exp(x_i - m) / sum_j exp(x_j - m): multiplying top and bottom by exp(-m) changes nothing."""
    _, _, e = _shift(x)
    s = e.sum(axis=-1, keepdims=True)  # at least 1, the max's own term, unless the row is all -inf
    return _back(e / np.where(s > 0, s, 1), x)  # all -inf: 0 / 1, all zeros


def log_sum_exp(x):
    """m + log(sum exp(x - m))."""
    _, m, e = _shift(x)
    with np.errstate(divide="ignore"):  # an all -inf row sums to 0, and log(0) = -inf is its answer
        log_s = np.log(e.sum(axis=-1))
    return _back(m[..., 0] + log_s, x)  # add m back: without it the result is off by exactly m


def log_softmax(x):
    """(x_i - m) - log(sum exp(x - m)): no probability is formed, so none underflows to 0 before a log."""
    z, _, e = _shift(x)
    s = e.sum(axis=-1, keepdims=True)
    return _back(z - np.log(np.where(s > 0, s, 1)), x)  # all -inf: z - 0 stays -inf, not NaN


def stable_cross_entropy(x, y):
    """log_sum_exp(x) - x[y], straight from the logits; y is an int, or one class per row of a batch.

    Written as log(s) - (x[y] - m), so that m cancels exactly. A masked target,
    x[y] = -inf, gives +inf: the truth has probability 0.
    """
    z, _, e = _shift(x)
    s = e.sum(axis=-1)
    z_y = np.take_along_axis(z, np.asarray(y)[..., None], axis=-1)[..., 0]
    return _back(np.log(np.where(s > 0, s, 1)) - z_y, x)

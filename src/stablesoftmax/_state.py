"""The per-slice state that every path of the family produces, merges and finishes.

Written once, against the array API: ``xp`` is the namespace of the input
(NumPy, PyTorch on any device, JAX, CuPy, array-api-strict), so the same code
runs natively everywhere. Nothing here branches on values, so it traces under
``jax.jit``, ``torch.compile`` and on fake (meta) tensors.

A slice (a row of ``(B, K)`` rows, reduced along the last axis) is summed up
by :class:`State` ``(m, k, s)``:

* ``m``, the max; ``k``, where it is (first occurrence);
* ``s``, the sum of ``exp(x_i - m)`` over every ``i != k``. The max term is
  exactly 1 and left out, so ``logsumexp = m + log1p(s)`` keeps ``s`` when it
  is far below one ulp of 1 (Blanchard, Higham & Higham, "Accurately computing
  the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41, 2021).

One rule, :func:`shift`, makes every special slice fall out of the same
formulas as an ordinary one (the contract in :mod:`._contract`):

* ``x_i - m`` is taken as 0 wherever ``x_i == m``, so a slice holding
  ``+inf`` has ``s = (number of +inf entries) - 1``: its softmax is uniform
  over those entries, its log-softmax ``-log1p(s)`` there, its logsumexp
  ``+inf``;
* on a slice without mass (``m = -inf``: all ``-inf``, all masked) every
  shift is ``-inf`` and ``s = 0``: softmax 0, log-softmax and logsumexp
  ``-inf``;
* NaN propagates through ``m`` and ``s`` to every output of its slice.

States of two chunks of one slice (blocks of a stream, vocabulary chunks of
the linear cross-entropy, ranks of a process group) combine with
:func:`merge`, and the result is the state of the whole slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["State", "Shift", "twosum_error", "shift", "state", "merge", "lse", "log_probs", "probs"]

Array = Any  # an array of the namespace ``xp`` (the array API has no static type for it)


@dataclass(frozen=True)
class Shift:
    """``x - m`` for every entry, with its exact rounding error.

    ``d`` is the rounded shift under the special-slice rule of this module,
    ``err`` the exact remainder ``(x - m) - d`` (zero where ``d`` is not
    finite), or None when the shift needs no correction (input narrower than
    the compute dtype, where the wide difference is exact).
    """

    d: Array
    err: Array | None


@dataclass(frozen=True)
class State:
    """``(m, k, s)`` of each slice: arrays of the batch shape (``k`` integer)."""

    m: Array
    k: Array
    s: Array


def twosum_error(a: Array, b: Array, total: Array, xp: Any) -> Array:
    """The exact ``(a + b) - total`` where ``total = fl(a + b)`` (Knuth's TwoSum), 0 where not finite."""
    bv = total - a
    av = total - bv
    err = (a - av) + (b - bv)
    return xp.where(xp.isfinite(err), err, xp.zeros_like(err))


def shift(x: Array, m: Array, xp: Any, *, exact: bool, scale: float = 1.0) -> Shift:
    """``(x - m) / scale`` over rows ``x`` (B, K) and their max ``m`` (B, 1), by the module's rule.

    ``scale`` is a softmax temperature: dividing the shift rather than the
    logits means ``x / T`` can never overflow (the max entry's shift is 0 for
    any ``T``), and the shift stays exact.
    """
    d = _rounded_shift(x, m, xp)
    err = twosum_error(x, -m, d, xp) if exact else None
    if scale != 1.0:
        d = d / scale
        err = None if err is None else err / scale
    return Shift(d, err)


def _rounded_shift(x: Array, m: Array, xp: Any) -> Array:
    """``x - m`` rounded, elementwise: 0 wherever ``x == m``, ``-inf`` wherever ``m = -inf``."""
    raw = x - m
    d = xp.where(x == m, xp.zeros_like(raw), raw)
    return xp.where(m == -xp.inf, xp.full_like(d, -xp.inf), d)


def state(x: Array, xp: Any, *, exact: bool, scale: float = 1.0) -> tuple[State, Shift, Array]:
    """The state of each row of ``x`` (B, K), K >= 1, with its shift and terms.

    ``terms`` are ``exp(x_i - m)`` with the max's term set to 0, so that
    ``s = sum(terms)``; the callers that need the softmax reuse them.
    """
    k = xp.argmax(x, axis=-1, keepdims=True)
    m = xp.max(x, axis=-1, keepdims=True)
    sh = shift(x, m, xp, exact=exact, scale=scale)
    t = xp.exp(sh.d)
    if sh.err is not None:
        t = _corrected(t, sh.err, xp)
    at_max = xp.arange(x.shape[-1], device=_device(x)) == k
    t = xp.where(at_max, xp.zeros_like(t), t)
    s = xp.sum(t, axis=-1)
    return State(m[:, 0] / scale if scale != 1.0 else m[:, 0], k[:, 0], s), sh, t


def _corrected(t: Array, err: Array, xp: Any) -> Array:
    """``exp(d + e) = exp(d) (1 + e)`` to within ``e**2``.

    In float64 ``t + t e`` keeps every bit of the correction. In float32
    ``t e`` of a tiny term is subnormal, which XLA and GPUs flush to zero,
    so there the factor ``1 + e`` (rounded, within an ulp) is applied instead.
    """
    if t.dtype == xp.float32:
        return t * (1 + err)
    return t + t * err


def merge(a: State, b: State, xp: Any) -> State:
    """The state of a slice made of slice ``a`` followed by slice ``b``.

    With ``m = max(m_a, m_b)``: ``s = s_large + (1 + s_small) exp(m_small - m)``,
    the exponent carrying its TwoSum error. ``k`` must be global positions;
    on a tie the earlier slice ``a`` keeps the max, as ``argmax`` would.
    """
    a_large = (a.m >= b.m) | xp.isnan(a.m)
    m = xp.where(a_large, a.m, b.m)
    m_small = xp.where(a_large, b.m, a.m)
    s_large = xp.where(a_large, a.s, b.s)
    s_small = xp.where(a_large, b.s, a.s)
    d = _rounded_shift(m_small, m, xp)  # shift's rule, on the two maxima
    e = twosum_error(m_small, -m, d, xp)
    s = s_large + (1 + s_small) * _corrected(xp.exp(d), e, xp)
    s = xp.where(m == -xp.inf, xp.zeros_like(s), s)
    s = xp.where(xp.isnan(a.m) | xp.isnan(b.m), xp.full_like(s, xp.nan), s)
    return State(m, xp.where(a_large, a.k, b.k), s)


# --------------------------------------------------------------------------
# Finishing a state: one function per output, each a line of algebra
# --------------------------------------------------------------------------


def lse(st: State, xp: Any) -> Array:
    """``m + log1p(s)``: ``-inf`` without mass, ``+inf`` with a ``+inf`` entry, NaN with a NaN."""
    return st.m + xp.log1p(st.s)


def log_probs(sh: Shift, st: State, xp: Any) -> Array:
    """Log-softmax ``(x - m) - log1p(s)``, never ``x - lse`` (which cancels at the max)."""
    out = sh.d - xp.log1p(st.s)[:, None]
    return out if sh.err is None else out + sh.err


def probs(terms: Array, st: State, xp: Any) -> Array:
    """Softmax ``exp(x - m) / (1 + s)`` from the terms of :func:`state` (max term 0)."""
    at_max = xp.arange(terms.shape[-1], device=_device(terms)) == st.k[:, None]
    one = xp.where(xp.isnan(st.m), xp.full_like(st.m, xp.nan), xp.ones_like(st.m))[:, None]
    full = xp.where(at_max, one, terms)
    full = xp.where((st.m == -xp.inf)[:, None], xp.zeros_like(full), full)
    return full / (1 + st.s)[:, None]


def _device(x: Array) -> Any:
    import array_api_compat

    return array_api_compat.device(x)

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

from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "State",
    "Shift",
    "twosum_error",
    "shift",
    "state",
    "corrected",
    "merge",
    "lse",
    "log_probs",
    "probs",
    "Sums",
    "Parts",
    "part",
    "merge_parts",
    "Loss",
    "finish",
    "reduce",
    "row_scales",
    "block_probs",
    "target_mass",
    "gradient",
    "block_gradient",
    "rows_of",
]

Array = Any  # an array of the namespace ``xp`` (the array API has no static type for it)


@dataclass(frozen=True)
class Shift:
    """``x - m`` for every entry, with its exact rounding error.

    ``d`` is the rounded shift under the special-slice rule of this module,
    ``err`` the exact remainder ``(x - m) - d`` (zero where ``d`` is not
    finite), or None when the shift needs no correction (input narrower than
    the compute dtype, where the wide difference is needs_twosum).
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


def shift(x: Array, m: Array, xp: Any, *, needs_twosum: bool, scale: float = 1.0) -> Shift:
    """``(x - m) / scale`` over rows ``x`` (B, K) and their max ``m`` (B, 1), by the module's rule.

    ``scale`` is a softmax temperature: dividing the shift rather than the
    logits means ``x / T`` can never overflow (the max entry's shift is 0 for
    any ``T``), and the shift stays exact.
    """
    d = _rounded_shift(x, m, xp)
    err = twosum_error(x, -m, d, xp) if needs_twosum else None
    if scale != 1.0:
        d = d / scale
        err = None if err is None else err / scale
    return Shift(d, err)


def _rounded_shift(x: Array, m: Array, xp: Any) -> Array:
    """``x - m`` rounded, elementwise: 0 wherever ``x == m``, ``-inf`` wherever ``m = -inf``."""
    raw = x - m
    d = xp.where(x == m, xp.zeros_like(raw), raw)
    return xp.where(m == -xp.inf, xp.full_like(d, -xp.inf), d)


def state(x: Array, xp: Any, *, needs_twosum: bool, scale: float = 1.0) -> tuple[State, Shift, Array]:
    """The state of each row of ``x`` (B, K), K >= 1, with its shift and terms.

    ``terms`` are ``exp(x_i - m)`` with the max's term set to 0, so that
    ``s = sum(terms)``; the callers that need the softmax reuse them.
    """
    k = xp.argmax(x, axis=-1, keepdims=True)
    m = xp.max(x, axis=-1, keepdims=True)
    sh = shift(x, m, xp, needs_twosum=needs_twosum, scale=scale)
    t = xp.exp(sh.d)
    if sh.err is not None:
        t = corrected(t, sh.err, xp)
    at_max = xp.arange(x.shape[-1], device=_device(x)) == k
    t = xp.where(at_max, xp.zeros_like(t), t)
    s = xp.sum(t, axis=-1)
    return State(m[:, 0] / scale if scale != 1.0 else m[:, 0], k[:, 0], s), sh, t


def corrected(t: Array, err: Array | None, xp: Any) -> Array:
    """``exp(d + e) = exp(d) (1 + e)`` to within ``e**2``.

    In float64 ``t + t e`` keeps every bit of the correction. In float32
    ``t e`` of a tiny term is subnormal, which XLA and GPUs flush to zero,
    so there the factor ``1 + e`` (rounded, within an ulp) is applied instead.
    ``err`` None (an exact shift) leaves ``t`` as it is.
    """
    if err is None:
        return t
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
    s = s_large + (1 + s_small) * corrected(xp.exp(d), e, xp)
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


# --------------------------------------------------------------------------
# Loss parts: what a cross-entropy needs of a row, produced by anyone, merged and finished here
# --------------------------------------------------------------------------


SUM_SCALE = 2.0**-64  # the shift sums are held scaled by it: sum_c a_c (x_c - m) overflows on huge logits


@dataclass(frozen=True)
class Sums:
    """``SUM_SCALE sum_c a_c (x_c - m)`` per row: a rounded part ``d`` and its TwoSum error ``e``; ``a = sum_c a_c``.

    Every shift is ``<= 0``, so ``-d`` never cancels in a finish. The power
    of two is needs_twosum: it only keeps a sum of shifts near ``-1e308`` finite
    (the finish multiplies back after the smoothing share, where the loss
    itself is finite).
    """

    d: Array
    e: Array
    a: Array


@dataclass(frozen=True)
class Parts:
    """What a producer (an accelerator, a vocabulary chunk, a rank) holds of each row of a loss.

    ``m, k, s``: the :class:`State` of its classes (``k`` a global position);
    ``xy``: the target's logit where the target is among them, else 0;
    ``q``: probability targets' sums (weights ``q_c w_c``); ``u``: label
    smoothing's (weights ``w_c`` on the allowed classes), with ``count`` the
    number of allowed classes. The sums are relative to this part's own ``m``.
    """

    m: Array
    k: Array
    s: Array
    xy: Array | None = None
    q: Sums | None = None
    u: Sums | None = None
    count: Array | None = None

    @property
    def state(self) -> State:
        return State(self.m, self.k, self.s)


def part(
    x: Array,
    first: int,
    xp: Any,
    *,
    needs_twosum: bool,
    y: Array | None = None,
    q: Array | None = None,
    w: Array | None = None,
    allowed: Array | None = None,
    smoothing: bool = False,
) -> Parts:
    """The parts of rows ``x`` (B, K), classes ``first : first + K``, in the compute dtype.

    ``y`` (B,) global class targets, ``q`` (B, K) probabilities, ``w`` (K,)
    class weights, ``allowed`` (B, K) the mask: each only where it applies.
    """
    n, k = x.shape
    if k == 0:
        return empty_part(n, xp, x, class_target=y is not None, probs=q is not None, smoothing=smoothing)
    st, sh, _ = state(x, xp, needs_twosum=needs_twosum)
    xy = None if y is None else pick(x, y - first, xp)
    qs = None if q is None else sums(sh, q if w is None else q * w[None, :], xp)
    us = count = None
    if smoothing:
        ones = xp.ones_like(x) if allowed is None else xp.astype(allowed, x.dtype)
        us = sums(sh, ones if w is None else ones * w[None, :], xp)
        count = xp.sum(ones, axis=-1)
    return Parts(st.m, st.k + first, st.s, xy, qs, us, count)


def empty_part(n: int, xp: Any, like: Array, *, class_target: bool, probs: bool, smoothing: bool) -> Parts:
    """The parts of no classes: no mass (``m = -inf, s = 0``) and zero sums."""
    zero = xp.zeros((n,), dtype=like.dtype, device=_device(like))
    nothing = Sums(zero, zero, zero)
    return Parts(
        zero - xp.inf,
        xp.zeros((n,), dtype=xp.int64, device=_device(like)),
        zero,
        zero if class_target else None,
        nothing if probs else None,
        nothing if smoothing else None,
        zero if smoothing else None,
    )


def pick(x: Array, j: Array, xp: Any) -> Array:
    """``x[n, j[n]]`` where ``0 <= j[n] < K``, else 0."""
    inside = (j >= 0) & (j < x.shape[1])
    safe = xp.where(inside, j, xp.zeros_like(j))
    got = xp.take_along_axis(x, safe[:, None], axis=-1)[:, 0]
    return xp.where(inside, got, xp.zeros_like(got))


def sums(sh: Shift, a: Array, xp: Any) -> Sums:
    """``sum_c a_c (x_c - m)`` with the shift's error, skipping ``a_c = 0`` (``0 (-inf) = 0``, as ``0 log 0``)."""
    zero = xp.zeros_like(a)
    scaled = a * SUM_SCALE
    d = xp.sum(xp.where(a != 0, scaled * sh.d, zero), axis=-1)
    e = xp.zeros_like(d) if sh.err is None else xp.sum(xp.where(a != 0, scaled * sh.err, zero), axis=-1)
    return Sums(d, e, xp.sum(a, axis=-1))


def rebase(sm: Sums | None, m_old: Array, m_new: Array, xp: Any) -> Sums | None:
    """The sums relative to ``m_new >= m_old``: add ``a (m_old - m_new)``, the difference with its TwoSum error."""
    if sm is None:
        return None
    sh = shift(m_old[:, None], m_new[:, None], xp, needs_twosum=True)
    zero = xp.zeros_like(sm.a)
    err = sh.err if sh.err is not None else xp.zeros_like(sh.d)  # needs_twosum=True: never None
    scaled = sm.a * SUM_SCALE
    d = sm.d + xp.where(sm.a != 0, scaled * sh.d[:, 0], zero)
    e = sm.e + xp.where(sm.a != 0, scaled * err[:, 0], zero)
    return Sums(d, e, sm.a)


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return None
    if isinstance(a, Sums):
        return Sums(a.d + b.d, a.e + b.e, a.a + b.a)
    return a + b


def merge_parts(a: Parts, b: Parts, xp: Any) -> Parts:
    """The parts of ``a``'s classes followed by ``b``'s: :func:`merge`, and the sums rebased to its max."""
    st = merge(a.state, b.state, xp)
    q = _add(rebase(a.q, a.m, st.m, xp), rebase(b.q, b.m, st.m, xp))
    u = _add(rebase(a.u, a.m, st.m, xp), rebase(b.u, b.m, st.m, xp))
    return Parts(st.m, st.k, st.s, _add(a.xy, b.xy), q, u, _add(a.count, b.count))


def concat_parts(blocks: list[Parts], xp: Any) -> Parts:
    """Parts of consecutive row blocks as one."""
    if len(blocks) == 1:
        return blocks[0]

    def cat(values: list[Any]) -> Any:
        if values[0] is None:
            return None
        if isinstance(values[0], Sums):
            return Sums(*(cat([getattr(v, f.name) for v in values]) for f in fields(Sums)))
        return xp.concat(values)

    return Parts(*(cat([getattr(p, f.name) for p in blocks]) for f in fields(Parts)))


@dataclass(frozen=True)
class Loss:
    """Per-row results of a cross-entropy's finish that its gradient reuses (all (B,))."""

    alive: Array  # counted, with a distribution
    row_weight: Array  # each row's weight in the mean's denominator
    big_a: Array  # A = sum_c a_c, the row's whole target mass
    lse: Array


def finish(
    p: Parts,
    xp: Any,
    *,
    target: Array,
    counted: Array,
    weight: Array | None,
    probs: bool,
    smoothing: float,
    z_loss: float,
    needs_twosum: bool,
) -> tuple[Loss, Array, Array | None]:
    r"""The one cross-entropy finish: ``(rows, ce, z)`` per row, 0 where a row is not alive.

    ``ce = (A L - D) - E`` with ``L = log1p(s)``, ``A = sum_c a_c`` and
    ``D + E = sum_c a_c (x_c - m)`` for the target mass
    ``a_c = (1 - a) q_c w_c + (a / K) w_c [c allowed]`` (``q`` one-hot for
    class targets). Every term of ``A L`` and of ``-D`` is ``>= 0``: nothing
    cancels, so a confident row keeps its tiny loss ``w_y log1p(s)``, which
    ``lse - x_y`` would round to 0. ``z = z_loss lse**2``.
    """
    alive = counted & (p.m != -xp.inf)
    big_l = xp.log1p(p.s)
    lse_ = lse(p.state, xp)
    if probs:
        if p.q is None:
            raise ValueError("probability targets need the parts' q sums")
        row_weight, q = xp.astype(alive, p.m.dtype), p.q
    else:
        y = xp.where(alive, target, xp.zeros_like(target))
        row_weight = (
            xp.astype(alive, p.m.dtype) if weight is None else xp.where(alive, xp.take(weight, y), xp.zeros_like(p.m))
        )
        xy = p.xy if p.xy is not None else xp.zeros_like(p.m)
        sh = shift(xy[:, None], p.m[:, None], xp, needs_twosum=needs_twosum)
        err = xp.zeros_like(row_weight) if sh.err is None else sh.err[:, 0]
        zero = xp.zeros_like(row_weight)
        scaled = row_weight * SUM_SCALE
        q = Sums(
            xp.where(row_weight != 0, scaled * sh.d[:, 0], zero),
            xp.where(row_weight != 0, scaled * err, zero),
            row_weight,
        )
    big_a, d, e = _mixed(q, p.u, p.count, smoothing, xp)
    ce = xp.where(alive, (big_a * big_l - d / SUM_SCALE) - e / SUM_SCALE, xp.zeros_like(big_l))
    zt = xp.where(alive, z_loss * lse_ * lse_, xp.zeros_like(lse_)) if z_loss else None
    return Loss(alive, row_weight, big_a, lse_), ce, zt


def _mixed(q: Sums, u: Sums | None, count: Array | None, smoothing: float, xp: Any) -> tuple[Array, Array, Array]:
    """``(A, D, E)`` of the mass ``a_c = (1 - a) q_c w_c + (a / K) w_c [c allowed]``."""
    if not smoothing or u is None or count is None:
        return q.a, q.d, q.e
    share = smoothing / xp.maximum(count, xp.ones_like(count))
    keep = 1 - smoothing

    def mix(a: Array, b: Array) -> Array:
        zero = xp.zeros_like(a)
        return (keep * a if keep else zero) + xp.where(share != 0, share * b, zero)  # 0 * -inf stays out

    return mix(q.a, u.a), mix(q.d, u.d), mix(q.e, u.e)


def _mean_factor(total: Array, denom: Array, xp: Any) -> Array:
    """``total / denom``, and 0 where ``denom`` is 0: a mean of nothing is 0.0 (pytorch#70348)."""
    return xp.where(denom != 0, total / xp.where(denom != 0, denom, xp.ones_like(denom)), xp.zeros_like(total))


def reduce(ce: Array, zt: Array | None, row_weight: Array, alive: Array, reduction: str, xp: Any) -> Array:
    """Apply the reduction: the cross-entropy's mean is over ``sum(row_weight)``, the z-loss's over the alive rows."""
    if reduction == "none":
        return ce if zt is None else ce + zt
    total = xp.sum(ce)
    total_z = None if zt is None else xp.sum(zt)
    if reduction == "sum":
        return total if total_z is None else total + total_z
    out = _mean_factor(total, xp.sum(row_weight), xp)
    if total_z is not None:
        out = out + _mean_factor(total_z, xp.sum(xp.astype(alive, total.dtype)), xp)
    return out


def row_scales(
    reduction: str, alive: Array, row_weight: Array, g: Array, xp: Any, *, dtype: Any
) -> tuple[Array, Array]:
    """Per-row factors of the cotangent ``g`` for the CE part and the z part, of ``dtype``: :func:`reduce`'s VJP."""
    if reduction == "none":
        return g, g
    ones = xp.ones((alive.shape[0],), dtype=dtype, device=_device(alive))
    if reduction == "sum":
        return g * ones, g * ones
    ce = _mean_factor(g, xp.sum(row_weight), xp)
    z = _mean_factor(g, xp.sum(xp.astype(alive, dtype)), xp)
    return ce * ones, z * ones


def block_probs(x: Array, m: Array, s: Array, xp: Any, *, needs_twosum: bool) -> Array:
    """``exp(x - m) / (1 + s)`` of a block of a row's classes, given the whole row's ``m`` and ``s``.

    No max term needs restoring, as in :func:`probs`: it is ``exp(0)`` here.
    """
    sh = shift(x, m[:, None], xp, needs_twosum=needs_twosum)
    t = corrected(xp.exp(sh.d), sh.err, xp)
    nowhere = xp.full_like(m, -1, dtype=xp.int64)
    return probs(t, State(m, nowhere, s), xp)


def target_mass(
    x: Array,
    first: int,
    xp: Any,
    *,
    target: Array,
    probs: bool,
    alive: Array,
    smoothing: float,
    allowed: Array | None,
    count: Array | None,
    w: Array | None,
) -> Array:
    """``a_c`` (B, K) on classes ``first : first + K`` of each row, with the row's allowed ``count`` for smoothing.

    ``target`` is (B,) classes or the block's (B, K) probabilities; ``w`` the block's class weights.
    """
    dt = x.dtype
    if probs:
        q = target
    else:
        y = xp.where(alive, target, xp.zeros_like(target))
        q = xp.astype(xp.arange(x.shape[1], device=_device(x))[None, :] + first == y[:, None], dt)
    if smoothing:
        ones = xp.ones_like(x) if allowed is None else xp.astype(allowed, dt)
        whole = xp.sum(ones, axis=-1) if count is None else count
        q = (1 - smoothing) * q + smoothing * (ones / xp.maximum(whole, xp.ones_like(whole))[:, None])
    a = q if w is None else q * w[None, :]
    return xp.where(alive[:, None], a, xp.zeros_like(a))


@dataclass(frozen=True)
class Coefficients:
    """Per-row factors of the one gradient (all (B,)): what an accelerator needs beyond the state and the logits."""

    alive: Array
    big_a: Array  # A = sum_c a_c
    g: Array  # the CE factor of the cotangent (the reduction's included, not w_y)
    z: Array | None  # the z-loss factor 2 z lse g_z, None without z-loss


def coefficients(rows: Loss, scales: tuple[Array, Array], xp: Any, *, z_loss: float) -> Coefficients:
    """The gradient's per-row factors from a finish's ``rows`` and :func:`row_scales`' ``scales``."""
    z = None
    if z_loss:
        lse_ = xp.where(rows.alive, rows.lse, xp.zeros_like(rows.lse))
        z = 2 * z_loss * lse_ * scales[1]
    return Coefficients(rows.alive, rows.big_a, scales[0], z)


def gradient(
    x: Array,
    p: Array,
    a: Array,
    m: Array,
    s: Array,
    at_k: Array,
    coef: Coefficients,
    xp: Any,
    *,
    softcap: float | None,
) -> Array:
    r"""The one cross-entropy gradient of a block: ``(A p_c - a_c) g + z p_c``, from the per-row coefficients.

    ``p`` and ``a`` are the block's probabilities and target mass, ``m, s`` the
    row's state, ``at_k`` (B, K) True at the row's max ``k``; ``coef`` holds
    ``A``, the row's whole mass, ``g``, the CE factor of the cotangent, and
    ``z``, the z-loss factor ``2 z lse g_z`` (see :func:`coefficients`). At
    the max ``A p_k - a_k`` is written ``((A - a_k) - a_k s) / (1 + s)``,
    which does not cancel when ``p_k`` rounds to 1. Then the softcap's
    derivative, and 0 wherever the input cannot move the loss; a NaN row that
    counts stays NaN.
    """
    big_a = coef.big_a[:, None]
    s2 = s[:, None]
    grad = xp.where(at_k, ((big_a - a) - a * s2) / (1 + s2), big_a * p - a) * coef.g[:, None]
    if coef.z is not None:
        grad = grad + p * coef.z[:, None]
    if softcap is not None:
        grad = grad * (1 - (x / softcap) ** 2)
    movable = xp.isfinite(x) & xp.isfinite(m)[:, None] & coef.alive[:, None]
    grad = xp.where(movable, grad, xp.zeros_like(grad))
    nan_row = xp.isnan(m) & coef.alive
    return xp.where(nan_row[:, None], xp.full_like(grad, xp.nan), grad)


def block_gradient(
    x: Array,
    first: int,
    parts: Parts,
    rows: Loss,
    scales: tuple[Array, Array],
    xp: Any,
    *,
    target: Array,
    probs: bool,
    weight: Array | None,
    allowed: Array | None,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    needs_twosum: bool,
) -> Array:
    """``d loss / d x`` for the block ``x`` of classes ``first : first + K`` of rows whose whole parts are known.

    The rows' merged parts (over every chunk or rank) and their finish give
    the probabilities and the target mass; :func:`gradient` writes it. A
    position ``parts.k`` outside the block (or -1) has no max term here.
    ``weight`` and ``allowed`` are the block's; ``target`` (B,) global
    classes or the block's (B, K) probabilities.
    """
    p = block_probs(x, parts.m, parts.s, xp, needs_twosum=needs_twosum)
    a = target_mass(
        x,
        first,
        xp,
        target=target,
        probs=probs,
        alive=rows.alive,
        smoothing=smoothing,
        allowed=allowed,
        count=parts.count,
        w=weight,
    )
    at_k = xp.arange(x.shape[1], device=_device(x))[None, :] + first == parts.k[:, None]
    coef = coefficients(rows, scales, xp, z_loss=z_loss)
    return gradient(x, p, a, parts.m, parts.s, at_k, coef, xp, softcap=softcap)


def rows_of(obj: Any, r: slice) -> Any:
    """A dataclass of per-row arrays (:class:`Parts`, :class:`Loss`, :class:`Sums`) restricted to rows ``r``."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = rows_of(v, r) if isinstance(v, Sums) else (None if v is None else v[r, ...])
    return type(obj)(**out)


def _device(x: Array) -> Any:
    import array_api_compat

    return array_api_compat.device(x)

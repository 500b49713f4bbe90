"""Rows in, rows out: widen, pick the kernels or the reference, round once.

Every backend adapter (NumPy directly, the PyTorch custom ops, the JAX
``custom_vjp`` rules) calls these functions with rows ``(B, K)`` of the
caller's array library and dtype. Each one widens to the compute dtype
(float64 where the device has it), runs the compiled kernels when the rows
are NumPy and the options are ones the kernels take, else the array-API
reference (:mod:`._reference`), and rounds the result once back to the
input's dtype. Value checks that need concrete data (a target out of range)
are made here too, only on concrete host arrays: a tracer, a fake tensor or
an accelerator array is never synchronised for a check.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import array_api_compat.numpy as npx
import numpy as np

from . import _arrays, _reference, _state
from ._errors import ArgumentError, TargetError

Array = Any

_REFERENCE = contextvars.ContextVar("stablesoftmax_reference_path", default=False)
_KERNELS: Any = False  # the kernels module once looked up; None when it cannot load


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within this block every function takes the array-API reference path, never the kernels.

    The lab uses it so that its results are the same bytes with or without
    numba (the two paths agree within the ulp goals, not bit for bit).
    """
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def kernels() -> Any:
    """The compiled kernels module when it can run here, else None.

    Imported on first use, so ``import stablesoftmax`` does not import numba.
    ``STABLESOFTMAX_DISABLE_KERNELS=1`` turns the compiled path off.
    """
    global _KERNELS
    if _REFERENCE.get() or os.environ.get("STABLESOFTMAX_DISABLE_KERNELS", "") == "1":
        return None
    if _KERNELS is False:
        module: Any
        try:
            from . import _kernels as module
        except ImportError:  # numba missing or broken: the reference serves
            module = None
        _KERNELS = module if module is not None and module.available() else None
    return _KERNELS


# --------------------------------------------------------------------------
# Dtypes: the compute dtype, widening, and the one rounding back
# --------------------------------------------------------------------------


def is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def compute_dtype(x: Array, xp: Any) -> Any:
    """float64, unless the device has none (Apple MPS, JAX without x64): then float32."""
    return _arrays.compute_dtype(x, xp)


def widen(x: Array, xp: Any) -> tuple[Array, bool]:
    """``(x in the compute dtype, needs_twosum)``.

    The shift ``x - m`` needs its TwoSum error term only when the input is
    as wide as the compute dtype; a narrower input's difference is exact in
    float64. In a float32 compute dtype the shift is always compensated.
    """
    wide = compute_dtype(x, xp)
    needs_twosum = wide == xp.float32 or x.dtype == wide
    return (x if x.dtype == wide else xp.astype(x, wide)), needs_twosum


def round_to(out: Array, like: Array, xp: Any) -> Array:
    """``out`` (compute dtype) rounded once to ``like``'s dtype.

    A float64 -> 16-bit cast rounds twice in NumPy (bfloat16), PyTorch and
    JAX: through float32. Rounding to float32 with round-to-odd first makes
    the second rounding the correct one (Boldo & Melquiond, "Emulation of FMA
    and correctly rounded sums: proved algorithms using rounding to odd",
    IEEE TC 2008). Odd is found from the significand's parity, ``|f| / ulp(f)``.
    """
    dtype = like.dtype
    if out.dtype == dtype:
        return out
    if _itemsize(dtype) != 2 or out.dtype == xp.float32:
        return xp.astype(out, dtype)
    near = xp.astype(out, xp.float32)
    back = xp.astype(near, out.dtype)
    inexact = xp.isfinite(out) & xp.isfinite(back) & (back != out)
    toward = xp.where(back > out, xp.full_like(near, -xp.inf), xp.full_like(near, xp.inf))
    other = xp.nextafter(near, toward)
    mag = xp.abs(near)
    ulp = xp.astype(xp.nextafter(mag, xp.full_like(mag, xp.inf)), out.dtype) - xp.astype(mag, out.dtype)
    ulp = xp.where(ulp > 0, ulp, xp.ones_like(ulp))
    even = xp.remainder(xp.astype(mag, out.dtype) / ulp, 2) == 0
    odd = xp.where(inexact & even, other, near)
    return xp.astype(odd, dtype)


def _itemsize(dtype: Any) -> int:
    name = str(dtype).split(".")[-1]
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(name, 8)


_concrete_host = _arrays.concrete_host


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------


def masked(x: Array, mask: Array | None, xp: Any) -> Array:
    """A masked entry is exactly a ``-inf`` entry, whatever it holds."""
    return x if mask is None else xp.where(mask, x, xp.full_like(x, -xp.inf))


def _numpy_kernel(x: Array, xp: Any, mask: Array | None, temperature: float) -> Any:
    if not is_numpy(xp) or temperature != 1.0 or x.shape[-1] == 0:
        return None
    module = kernels()
    if module is None or x.dtype.kind != "f":
        return None
    return module


def kernel_parts(module: Any, x2: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' ``(m, s)`` of rows ``x2`` in :class:`._state.State`'s convention.

    The kernels give ``s = 0`` on a row whose max is ``+inf``; the state
    counts the other ``+inf`` entries there, so that every finish is the same.
    """
    m, s = module.lse_parts_rows(x2) if out is None else module.softmax_parts_rows(x2, out)
    top = m == np.inf
    if top.any():
        s = s.copy()
        s[top] = (x2[top] == np.inf).sum(axis=-1) - 1
    return m, s


def _kernel_mask(mask: Array | None) -> np.ndarray | None:
    return None if mask is None else np.ascontiguousarray(mask, dtype=bool)


def _kernel_rows(x: Array) -> np.ndarray:
    x2 = np.ascontiguousarray(x)
    return x2.astype(np.float32) if x2.dtype.itemsize == 2 else x2  # exact: 16-bit values are float32 values


def numpy_rows(x: Any, axis: Any) -> tuple[np.ndarray, tuple[int, ...], int] | None:
    """``(rows, moved shape, axis)`` of a plain float32/float64 ndarray reduced along one int axis.

    The fast path of the public functions for their commonest call: a NumPy
    array, one in-range axis, no options. None when anything else is asked,
    or the input is empty, or the kernels cannot run: the general path then
    validates (and raises) as always. Both paths give the same bytes.
    """
    if type(x) is not np.ndarray or type(axis) is not int or x.dtype.char not in "fd":
        return None
    ndim = x.ndim
    if not -ndim <= axis < ndim or x.size == 0 or kernels() is None:
        return None
    ax = axis % ndim
    moved = x if ax == ndim - 1 else np.moveaxis(x, ax, -1)
    return np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]), moved.shape, ax


def fast_logsumexp(x: Any, axis: Any, keepdims: bool) -> Any:
    """:func:`logsumexp` of a plain NumPy array by one kernel call, or None (see :func:`numpy_rows`)."""
    found = numpy_rows(x, axis)
    if found is None:
        return None
    rows, moved, ax = found
    lse = kernels().lse_rows(rows).astype(x.dtype, copy=False).reshape(moved[:-1])  # rounded once, as round_to
    if keepdims:
        lse = np.expand_dims(lse, ax)
    return lse[()] if lse.ndim == 0 else lse


def fast_softmax(x: Any, axis: Any, temperature: Any, log: bool) -> Any:
    """softmax (log-softmax) of a plain NumPy array by one kernel call, or None (see :func:`numpy_rows`)."""
    if type(temperature) not in (int, float) or temperature != 1:
        return None
    found = numpy_rows(x, axis)
    if found is None:
        return None
    rows, moved, ax = found
    out = np.empty(rows.shape, x.dtype)
    kernels().state_rows(rows, out=out, log=log)
    out = out.reshape(moved)
    return out if ax == x.ndim - 1 else np.moveaxis(out, -1, ax)


def logsumexp(x: Array, xp: Any, *, mask: Array | None = None, b: Array | None = None) -> tuple[Array, Array | None]:
    """Per-row ``(lse, sign)`` (sign None without ``b``), in ``x``'s dtype."""
    module = _numpy_kernel(x, xp, mask, 1.0) if b is None else None
    if module is not None:
        return round_to(module.lse_rows(_kernel_rows(x), where=_kernel_mask(mask)), x, xp), None
    xw, exact = widen(x, xp)
    xw = masked(xw, mask, xp)
    if b is None:
        return round_to(_reference.logsumexp(xw, xp, exact=exact), x, xp), None
    bw = masked_weights(b, mask, xw, xp)
    out, sign = _reference.weighted_logsumexp(xw, bw, xp, exact=exact)
    return round_to(out, x, xp), round_to(sign, x, xp)


def masked_weights(b: Array, mask: Array | None, xw: Array, xp: Any) -> Array:
    """``b`` in the compute dtype, 0 where masked: a masked term is absent, whatever its weight."""
    bw = xp.astype(b, xw.dtype)
    return bw if mask is None else xp.where(mask, bw, xp.zeros_like(bw))


def softmax(x: Array, xp: Any, *, mask: Array | None = None, temperature: float = 1.0, log: bool = False) -> Array:
    """Softmax (or log-softmax) rows in ``x``'s dtype."""
    module = _numpy_kernel(x, xp, mask, temperature)
    if module is not None:
        x2 = _kernel_rows(x)
        out = np.empty(x2.shape, x2.dtype if x2.dtype == x.dtype else np.float64)
        module.state_rows(x2, where=_kernel_mask(mask), out=out, log=log)
        return round_to(out, x, xp)
    xw, exact = widen(x, xp)
    fn = _reference.log_softmax if log else _reference.softmax
    return round_to(fn(masked(xw, mask, xp), xp, exact=exact, temperature=temperature), x, xp)


def logsumexp_grad(x: Array, g: Array, xp: Any, *, mask: Array | None = None, b: Array | None = None) -> Array:
    xw, exact = widen(x, xp)
    xw = masked(xw, mask, xp)
    bw = None if b is None else masked_weights(b, mask, xw, xp)
    return round_to(_reference.logsumexp_grad(xw, xp.astype(g, xw.dtype), xp, exact=exact, b=bw), x, xp)


def softmax_grad(
    x: Array, g: Array, xp: Any, *, mask: Array | None = None, temperature: float = 1.0, log: bool = False
) -> Array:
    xw, exact = widen(x, xp)
    fn = _reference.log_softmax_grad if log else _reference.softmax_grad
    out = fn(masked(xw, mask, xp), xp.astype(g, xw.dtype), xp, exact=exact, temperature=temperature)
    return round_to(out, x, xp)


# --------------------------------------------------------------------------
# Large outputs: memory handed back by the caller is used again
# --------------------------------------------------------------------------

# A fresh array of hundreds of MB costs the operating system's zeroing of every new
# page (60 ms to 0.9 s for 524 MB on the project's machine, depending on how easily
# it finds huge pages), more than a third of the cross-entropy kernel that fills it.
# glibc hands such blocks straight back to the system when they are freed, so a
# training loop pays it on every step. Large gradients are therefore carved from a
# few kept blocks; a block is used again once nothing refers to it any more, which
# in a loop is as soon as the previous step's gradient is dropped.
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


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------


def ce_problem(
    x: Array,
    target: Array,
    xp: Any,
    *,
    weight: Array | None,
    mask: Array | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> _reference.Problem:
    """The validated cross-entropy problem in the compute dtype (softcap applied, then the mask)."""
    xw, exact = widen(x, xp)
    if softcap is not None:
        xw, exact = softcap * xp.tanh(xw / softcap), False
    xw = masked(xw, mask, xp)
    if probs:
        tgt = xp.astype(target, xw.dtype)
        counted = xp.ones((x.shape[0],), dtype=xp.bool, device=_state._device(x))
        check_probabilities(tgt)
    else:
        tgt = xp.astype(target, xp.int64)
        counted = tgt != ignore_index
        check_targets(tgt, x.shape[-1], ignore_index)
    w = None if weight is None else xp.astype(weight, xw.dtype)
    return _reference.Problem(xw, tgt, probs, counted, w, mask, exact, reduction, smoothing, z_loss, softcap)


def check_targets(tgt: Array, c: int, ignore_index: int, batch: tuple[int, ...] | None = None) -> None:
    """Class indices in ``[0, C)`` or ``ignore_index``: checked where values can be read cheaply.

    ``batch`` is the target's shape before it became ``(B,)``, for the message.
    """
    if not _concrete_host(tgt):
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
    if not _concrete_host(q):
        return
    arr = np.asarray(q)
    neg = arr < 0
    if neg.any():
        i = np.unravel_index(int(np.argmax(neg.reshape(-1))), arr.shape)
        raise ArgumentError(
            f"probability target has a negative entry {arr[i]} at row {i[0]}, class {i[1]}; "
            f"probabilities must be >= 0 (they need not sum to 1, as in PyTorch)."
        )


def check_class_weight(w: Array) -> None:
    """Class weights are >= 0 and finite: a negative weight would let the mean's denominator reach 0."""
    if not _concrete_host(w):
        return
    arr = np.asarray(w)
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ArgumentError(f"weight[{i}] = {arr[i]} is not allowed; class weights must be finite and >= 0.")


def cross_entropy(
    x: Array, target: Array, xp: Any, *, grad: bool, g: Array | None = None, **options: Any
) -> tuple[Array, Array | None]:
    """``(loss, dloss/dx or None)`` in ``x``'s dtype."""
    module = _numpy_ce_kernel(x, xp, options)
    result = None if module is None else _kernel_ce(module, x, target, options, grad, g)
    if result is not None:
        return result
    pb = ce_problem(x, target, xp, **options)
    fwd = _reference.cross_entropy(pb, xp)
    loss = round_to(fwd.loss, x, xp)
    if not grad:
        return loss, None
    gw = xp.astype(g, pb.x.dtype) if hasattr(g, "dtype") else xp.asarray(1.0 if g is None else g, dtype=pb.x.dtype)
    return loss, round_to(_reference.cross_entropy_grad(pb, fwd, gw, xp), x, xp)


def fast_cross_entropy(
    x: Any, target: Any, axis: Any, reduction: Any, ignore_index: Any, plain: bool
) -> tuple[bool, Any]:
    """``(True, loss)`` of ``[N, C]`` NumPy logits and int targets by the kernels, or ``(False, None)``.

    The fast path of :func:`cross_entropy` for its commonest call: a plain
    float32/float64 ndarray with the classes last, a signed-integer ndarray
    of ``N`` class indices, and ``plain`` (no weight, mask, smoothing, z-loss
    or softcap). Anything else, or an empty batch, takes the general path,
    which validates (and raises) as always; the two give the same bytes.
    """
    if not plain or type(x) is not np.ndarray or type(target) is not np.ndarray or x.ndim != 2:
        return False, None
    if x.dtype.char not in "fd" or target.dtype.kind != "i" or target.shape != x.shape[:1] or 0 in x.shape:
        return False, None
    if type(axis) is not int or axis not in (-1, 1) or type(ignore_index) is not int:
        return False, None
    module = kernels()
    if module is None or reduction not in ("mean", "sum", "none"):
        return False, None
    options = dict(ignore_index=ignore_index, reduction=reduction, smoothing=0.0, z_loss=0.0, softcap=None, probs=False)
    with np.errstate(all="ignore"):  # as at the NumPy backend's boundary (see _backends.plain)
        result = _kernel_ce(module, x, target, dict(options, weight=None, mask=None), False, None)
    if result is None:
        return False, None
    loss = result[0]
    return True, loss[()] if loss.ndim == 0 else loss


def _numpy_ce_kernel(x: Array, xp: Any, options: dict[str, Any]) -> Any:
    """The kernels, for NumPy logits with class targets and no softcap (masks, smoothing, weights welcome)."""
    if not is_numpy(xp) or options["probs"] or options["softcap"] is not None:
        return None
    if x.shape[1] == 0 or x.dtype.kind != "f":
        return None
    return kernels()


def _kernel_ce(
    module: Any, x: np.ndarray, target: np.ndarray, options: dict[str, Any], grad: bool, g: Any
) -> tuple[Array, Any] | None:
    """The loss (and gradient) from one kernel pass per row: its state and the sums smoothing needs.

    ``loss = (1 - a) w_y (L - d_y) + (a / K) (W L - D)`` with ``L = log1p(s)``,
    every term >= 0. The gradient is written in the same sweep; it needs the
    mean's denominator before the pass, so a row that turns out to have no
    mass (all masked or ``-inf``, rare) means a second pass with the right one.
    """
    x2 = _kernel_rows(x)
    tgt = np.asarray(target).astype(np.int64, copy=False)
    check_targets(tgt, x2.shape[1], options["ignore_index"])
    mask = _kernel_mask(options["mask"])
    weight = None if options["weight"] is None else np.asarray(options["weight"], np.float64)
    counted = tgt != options["ignore_index"]
    y = np.where(counted, tgt, 0)
    live = counted if mask is None else counted & mask.any(axis=1)
    r, dx, wy = _ce_pass(module, x2, y, mask, weight, live, options, g if grad else None)
    if grad and ((r.m == -np.inf) & live).any():
        live = live & (r.m != -np.inf)
        r, dx, wy = _ce_pass(module, x2, y, mask, weight, live, options, g)
    live = live & (r.m != -np.inf)
    if options["smoothing"] and (live & np.isfinite(r.m) & ~np.isfinite(r.shift_sum) & (r.allowed > 0)).any():
        if not (np.isneginf(x2) & (mask if mask is not None else True)).any():
            return None  # sum_c (x_c - m) overflowed on huge logits: the reference takes the whole batch
    wy = np.where(live, wy, 0.0)  # a slice without mass leaves the mean's denominator
    return round_to(np.asarray(_kernel_loss(r, x2, live, wy, options, mask)), x, np), (
        None if dx is None else round_to(dx, x, np)
    )


def _ce_pass(
    module: Any,
    x2: np.ndarray,
    y: np.ndarray,
    mask: Any,
    weight: Any,
    live: np.ndarray,
    options: dict[str, Any],
    g: Any,
) -> tuple[Any, Any, np.ndarray]:
    wy = live.astype(np.float64) if weight is None else np.where(live, weight[y], 0.0)
    if g is None:
        return (
            module.cross_entropy_rows(x2, y, where=mask, weight=weight, label_smoothing=options["smoothing"]),
            None,
            wy,
        )
    ce_scale, z_scale = _scales(np.asarray(g, np.float64), options["reduction"], wy, live)
    dx = recycled_empty(x2.shape, x2.dtype)
    z = options["z_loss"]
    r = module.cross_entropy_rows(
        x2,
        y,
        where=mask,
        weight=weight,
        label_smoothing=options["smoothing"],
        grad=dx,
        g=np.where(live, ce_scale, 0.0),
        z_grad=np.where(live, 2 * z * z_scale, 0.0) if z else None,
    )
    dx[~live] = 0.0  # ignored and dropped rows move nothing, NaN or not
    return r, dx, wy


def _scales(g: np.ndarray, reduction: str, wy: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row factors of the loss's cotangent for the CE part and the z part."""
    n = len(live)
    if reduction == "none":
        gb = np.broadcast_to(g, (n,))
        return gb, gb
    if reduction == "sum":
        return np.full(n, float(g)), np.full(n, float(g))
    denom, count = wy.sum(), np.count_nonzero(live)
    return np.full(n, float(g) / denom if denom else 0.0), np.full(n, float(g) / count if count else 0.0)


def _top_rows_shift_sum(r: Any, x2: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``sum_c w_c (x_c - m)`` on rows whose max is ``+inf``.

    By the shift rule it is ``-inf`` unless every allowed entry is ``+inf``.
    """
    top = r.m == np.inf
    shift_sum: np.ndarray = r.shift_sum
    if not top.any():
        return shift_sum
    allowed = np.ones(x2[top].shape, bool) if mask is None else mask[top]
    out: np.ndarray = shift_sum.copy()
    out[top] = np.where(((x2[top] == np.inf) | ~allowed).all(axis=1), 0.0, -np.inf)
    return out


def _kernel_loss(
    r: Any, x2: np.ndarray, live: np.ndarray, wy: np.ndarray, options: dict[str, Any], mask: np.ndarray | None = None
) -> Any:
    a, z = options["smoothing"], options["z_loss"]
    st = _state.State(r.m, r.k, r.s)
    log_rest = np.log1p(r.s)
    sh = _state.shift(r.x_target[:, None], r.m[:, None], npx, exact=x2.dtype == np.float64)
    neg_lp = -_state.log_probs(sh, st, npx)[:, 0]  # L - d_y
    ce = np.where(live & (wy != 0) & (a < 1), (1 - a) * wy * neg_lp, 0.0)  # a = 1: no one-hot part, even at inf
    if a:
        shift_sum = _top_rows_shift_sum(r, x2, mask)
        spread = (a / np.maximum(r.allowed, 1)) * (r.weight_sum * log_rest - shift_sum)
        ce = ce + np.where(live, spread, 0.0)
    lse = _state.lse(st, npx)
    zt = np.where(live, z * lse * lse, 0.0) if z else None
    return _reference.reduce_losses(ce, zt, wy, live, options["reduction"], npx)


def nll_loss(
    lp: Array,
    target: Array,
    xp: Any,
    *,
    weight: Array | None,
    ignore_index: int,
    reduction: str,
    grad: bool = False,
    g: Array | None = None,
) -> Array:
    lw, _ = widen(lp, xp)
    tgt = xp.astype(target, xp.int64)
    check_targets(tgt, lp.shape[-1], ignore_index)
    w = None if weight is None else xp.astype(weight, lw.dtype)
    counted = tgt != ignore_index
    if not grad:
        return round_to(_reference.nll_loss(lw, tgt, counted, w, reduction, xp), lp, xp)
    return round_to(_reference.nll_loss_grad(lw, tgt, counted, w, reduction, xp.astype(g, lw.dtype), xp), lp, xp)


def bce(
    x: Array,
    t: Array,
    xp: Any,
    *,
    weight: Array | None,
    pos_weight: Array | None,
    reduction: str,
    grad: bool = False,
    g: Array | None = None,
) -> Array:
    xw, _ = widen(x, xp)
    tw = xp.astype(t, xw.dtype)
    w = None if weight is None else xp.astype(weight, xw.dtype)
    pw = None if pos_weight is None else xp.astype(pos_weight, xw.dtype)
    n = 1
    for d in x.shape:
        n *= d
    if grad:
        gw = xp.astype(g, xw.dtype)
        if reduction == "mean":
            gw = gw / max(n, 1)
        return round_to(_reference.bce_grad(xw, tw, w, pw, gw, xp), x, xp)
    elem = _reference.bce(xw, tw, w, pw, xp)
    if reduction == "none":
        return round_to(elem, x, xp)
    total = xp.sum(elem)
    return round_to(total if reduction == "sum" else (total / n if n else total * 0), x, xp)

"""Rows in, rows out: widen, let the chosen accelerator compute the parts, finish once, round once.

Every backend adapter (NumPy directly, the PyTorch custom ops, the JAX
``custom_vjp`` rules) calls these functions with rows ``(B, K)`` of the
caller's array library and dtype. Each one asks :func:`._kernels.select`
who computes (this module is the only one that asks), widens to the compute
dtype (:mod:`._precision`), lets the accelerator or the array-API reference
(:mod:`._reference`) produce the per-row parts, finishes them with
:mod:`._state` (one finish and one gradient for every loss), and rounds the
result once back to the input's dtype. Value checks that need concrete data
are :mod:`._checks`'s.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import array_api_compat
import array_api_compat.numpy as npx
import numpy as np

from . import _reference, _state
from ._buffers import recycled_empty
from ._checks import check_probabilities, check_targets
from ._errors import ArgumentError
from ._kernels import host_kernels, reference_path, select, triton_active, triton_path
from ._precision import compute_dtype, is_numpy, masked, masked_weights, round_to, widen

__all__ = [
    "reference_path",
    "triton_path",
    "compute_dtype",
    "round_to",
    "widen",
    "set_reference_budget",
    "set_num_threads",
    "get_num_threads",
    "host_kernels_serve",
    "triton_active",
    "host_state",
    "logsumexp",
    "softmax",
    "logsumexp_grad",
    "softmax_grad",
    "cross_entropy",
    "cross_entropy_keeping_parts",
    "kept_ce_parts",
    "nll_loss",
    "bce",
    "fast_logsumexp",
    "fast_softmax",
    "fast_vector_logsumexp",
    "fast_cross_entropy",
    "ce_block_grad",
    "ce_chunk_parts",
]

Array = Any
BUDGET_ENV = "STABLESOFTMAX_REFERENCE_BUDGET"
_BUDGET = [256 << 20]  # bytes the reference's temporaries may take at once; set_reference_budget changes it
_TEMPORARIES = 12  # the most row-sized compute-dtype arrays the reference holds at once (the CE gradient's)
_HOST_BLOCK = 1 << 14  # entries per row block of the reference's float64 temporaries on the host (128 KiB each)
THREADS_ENV = "STABLESOFTMAX_NUM_THREADS"
_THREADS = [0]  # the kernels' thread limit; 0: every core the process may use. set_num_threads changes it
# Entries from which the kernels split rows over threads. Below, handing bands to
# the pool costs more than it saves (see docs/performance.rst for the measurement).
THREADS_FROM = 1 << 20


# --------------------------------------------------------------------------
# Who computes
# --------------------------------------------------------------------------


def _accelerator(x: Array, xp: Any, temperature: float = 1.0) -> Any:
    """The accelerator for rows ``x`` with these options, or None for the reference."""
    if not is_numpy(xp) or temperature != 1.0 or x.shape[-1] == 0:
        return None
    return select(x)


def host_kernels_serve() -> bool:
    """Whether host rows go to an accelerator: CPU tensors are then computed through a NumPy view.

    Not under :func:`._kernels.triton_path`, where torch tensors stay tensors.
    """
    return host_kernels() is not None and not triton_active()


def _device_accelerator(x: Array, xp: Any, temperature: float = 1.0) -> Any:
    """The accelerator for rows that are not NumPy's (torch tensors on a Triton device), or None."""
    if is_numpy(xp) or temperature != 1.0 or x.shape[-1] == 0:
        return None
    return select(x)


def host_state(x: np.ndarray) -> _state.State:
    """The state ``(m, k, s)`` of host rows ``x`` (B, K), K >= 1, float64: the accelerator's, or the reference's.

    The reference runs in row blocks, so its temporaries stay a few MiB
    whatever the rows' size.
    """
    rows = _kernel_rows(x)
    module: Any = select(rows)  # the numba module on host rows: it takes threads
    if module is not None:
        m, k, s = module.state_rows(rows, **_threads(rows))
        return _state.State(m, k, s)
    n, width = rows.shape
    m, k, s = np.empty(n), np.empty(n, np.int64), np.empty(n)
    step = max(1, _HOST_BLOCK // max(width, 1))
    for r in range(0, n, step):
        xw = rows[r : r + step].astype(np.float64)
        with np.errstate(all="ignore"):  # see _backends.plain
            st = _state.state(xw, npx, needs_twosum=rows.dtype == np.float64)[0]
        m[r : r + step], k[r : r + step], s[r : r + step] = st.m, st.k, st.s
    return _state.State(m, k, s)


def set_reference_budget(nbytes: int, /) -> int:
    """Bound the memory the array-API reference path takes beyond its input and output; return the old bound.

    Where no compiled kernel serves (an array library without one, a device
    without Triton, inside :func:`reference_path`), the reference computes in
    blocks of rows, each of which holds at most ``nbytes`` of temporaries
    in the compute dtype. Every block is computed exactly as the whole array
    would be, so results do not depend on the budget. The default is 256 MiB;
    the environment variable ``STABLESOFTMAX_REFERENCE_BUDGET`` (bytes), read
    at each call, takes precedence.

    Parameters
    ----------
    nbytes : int
        At least 1; a block always holds at least one row.

    Returns
    -------
    int
        The budget in force before the call.

    Examples
    --------
    >>> import stablesoftmax as ss
    >>> old = ss.set_reference_budget(64 << 20)
    >>> _ = ss.set_reference_budget(old)
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ArgumentError(f"nbytes={nbytes!r} is not allowed; the budget is a whole number of bytes >= 1.")
    old, _BUDGET[0] = _BUDGET[0], int(nbytes)
    return old


def set_num_threads(n: int, /) -> int:
    """Limit the threads the compiled CPU kernels use on large inputs; return the old limit.

    From about a million entries (``2**20``) the numba kernels split the rows
    into bands, one per thread, run at once; by default every core the process
    may use (``os.sched_getaffinity``, else ``os.cpu_count()``). Smaller
    inputs run on the calling thread. Each row is computed exactly as on one
    thread, so results are the same bytes whatever the limit. The environment
    variable ``STABLESOFTMAX_NUM_THREADS``, read at each call, takes
    precedence. The names follow ``torch.set_num_threads`` and
    ``numba.set_num_threads``.

    Parameters
    ----------
    n : int
        At least 1; ``1`` keeps every call on the calling thread.

    Returns
    -------
    int
        The limit in force before the call (:func:`get_num_threads`).

    See Also
    --------
    get_num_threads

    Examples
    --------
    >>> import stablesoftmax as ss
    >>> old = ss.set_num_threads(1)
    >>> ss.get_num_threads()
    1
    >>> _ = ss.set_num_threads(old)
    """
    _check_threads(n, "n")
    old = get_num_threads()
    _THREADS[0] = int(n)
    return old


def get_num_threads() -> int:
    """The most threads the compiled CPU kernels use on a large input: the limit in force.

    ``STABLESOFTMAX_NUM_THREADS`` when set, else the last
    :func:`set_num_threads`, else every core the process may use.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> import stablesoftmax as ss
    >>> ss.get_num_threads() >= 1
    True
    """
    env = os.environ.get(THREADS_ENV, "")
    if env:
        if not env.strip().isdigit() or int(env) < 1:
            raise ArgumentError(f"{THREADS_ENV}={env!r} is not allowed; it must be a whole number of threads >= 1.")
        return int(env)
    return _THREADS[0] or _usable_cores()


def _usable_cores() -> int:
    """The cores this process may run on: its affinity mask where the OS has one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_threads(n: Any, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ArgumentError(f"{name}={n!r} is not allowed; the thread limit is a whole number >= 1.")


def _threads(rows: np.ndarray) -> dict[str, int]:
    """The numba kernels' ``threads=`` option for host rows ``(N, K)``: none (one thread) below :data:`THREADS_FROM`.

    Small calls pass no option, so that they read no environment variable and
    call the kernels as the :class:`._kernels.Accelerator` protocol does.
    """
    if rows.size < THREADS_FROM or rows.shape[0] < 2:
        return {}
    return {"threads": get_num_threads()}


def _budget() -> int:
    env = os.environ.get(BUDGET_ENV, "")
    return int(env) if env.isdigit() and int(env) > 0 else _BUDGET[0]


def _row_blocks(n: int, k: int) -> list[slice]:
    """Consecutive row blocks whose reference temporaries (float64 rows of ``k``) stay within the budget."""
    rows = max(1, _budget() // (_TEMPORARIES * 8 * max(k, 1)))
    return [slice(lo, min(n, lo + rows)) for lo in range(0, n, rows)] or [slice(0, 0)]


def _by_blocks(fn: Any, xp: Any, x: Array, *others: Array | None) -> Any:
    """``fn(x, *others)`` computed over row blocks and joined: the same values, with one block's temporaries.

    ``fn`` returns one array or a tuple of arrays (or None), rows first.
    """
    blocks = _row_blocks(x.shape[0], x.shape[-1])
    if len(blocks) == 1:
        return fn(x, *others)
    results = (fn(x[r, ...], *(None if a is None else a[r, ...] for a in others)) for r in blocks)
    return _stitch(results, blocks, x.shape[0], xp)


def _stitch(results: Iterator[Any], blocks: list[slice], n: int, xp: Any) -> Any:
    """Per-block results joined along the rows.

    A library whose arrays can be written (NumPy, torch) has each block
    written into the result as it comes, and dropped; others (JAX) have the
    blocks concatenated.
    """
    first = next(results)
    single = not isinstance(first, tuple)

    def as_tuple(o: Any) -> tuple[Any, ...]:
        return (o,) if single else tuple(o)

    head = as_tuple(first)
    rest = (as_tuple(o) for o in results)
    if any(a is not None and ("jax" in type(a).__module__ or not hasattr(a, "__setitem__")) for a in head):
        cols = [head, *rest]
        joined = tuple(None if c[0] is None else xp.concat(list(c), axis=0) for c in zip(*cols, strict=True))
    else:
        joined = tuple(
            None if a is None else xp.empty((n, *a.shape[1:]), dtype=a.dtype, device=_state._device(a)) for a in head
        )
        for r, block in zip(blocks, itertools.chain([head], rest), strict=True):
            for dst, src in zip(joined, block, strict=True):
                if dst is not None:
                    dst[r.start : r.stop, ...] = src
    return joined[0] if single else joined


def _kernel_mask(mask: Array | None) -> np.ndarray | None:
    return None if mask is None else np.ascontiguousarray(mask, dtype=bool)


def _kernel_rows(x: Array) -> np.ndarray:
    """Rows as the kernels take them: C-contiguous, in their own dtype (16-bit rows are read as they are)."""
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------


# float32 and float64 in native byte order: NumPy's dtypes of these are singletons,
# so an identity test checks kind, size and byte order at once, without dtype.name.
_NATIVE_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def numpy_rows(x: Any, axis: Any) -> tuple[Any, np.ndarray, tuple[int, ...], int] | None:
    """``(kernels, rows, moved shape, axis)`` of a plain float32/float64 ndarray reduced along one int axis.

    The fast path of the public functions for their commonest call: a NumPy
    array, one in-range axis, no options. None when anything else is asked,
    or the input is empty, or the kernels cannot run: the general path then
    validates (and raises) as always. Both paths give the same bytes.
    """
    if type(x) is not np.ndarray or type(axis) is not int or not _native_float(x.dtype):
        return None
    ndim = x.ndim
    if not -ndim <= axis < ndim or x.size == 0:
        return None
    module = host_kernels()
    if module is None:
        return None
    ax = axis % ndim
    moved = x if ax == ndim - 1 else np.moveaxis(x, ax, -1)
    return module, np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]), moved.shape, ax


def _native_float(dt: np.dtype) -> bool:
    return dt is _NATIVE_FLOATS[0] or dt is _NATIVE_FLOATS[1] or (dt.char in "fd" and dt.isnative)


def fast_logsumexp(x: Any, axis: Any, keepdims: bool) -> Any:
    """:func:`logsumexp` of a plain NumPy array by one kernel call, or None (see :func:`numpy_rows`)."""
    found = numpy_rows(x, axis)
    if found is None:
        return None
    module, rows, moved, ax = found
    lse = module.lse_rows(rows, **_threads(rows)).astype(x.dtype, copy=False)  # rounded once, as round_to
    lse = lse.reshape(moved[:-1])
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
    module, rows, moved, ax = found
    out = np.empty(rows.shape, x.dtype)
    module.state_rows(rows, out=out, log=log, **_threads(rows))
    out = out.reshape(moved)
    return out if ax == x.ndim - 1 else np.moveaxis(out, -1, ax)


def fast_vector_logsumexp(x: Any, axis: Any, where: Any, b: Any, keepdims: bool, return_sign: bool) -> Any:
    """logsumexp of a 1-D float32/float64 NumPy array by one kernel call, or None for the general path."""
    if type(x) is not np.ndarray or x.ndim != 1 or where is not None or b is not None or keepdims or return_sign:
        return None
    if type(axis) is not int or axis not in (-1, 0) or not _native_float(x.dtype) or not x.size:
        return None
    if not x.flags.c_contiguous:
        return None
    module = host_kernels()
    if module is None:
        return None
    return x.dtype.type(module.lse_vector(x))  # float64 -> float32 rounds once, as astype does


def logsumexp(x: Array, xp: Any, *, mask: Array | None = None, b: Array | None = None) -> tuple[Array, Array | None]:
    """Per-row ``(lse, sign)`` (sign None without ``b``), in ``x``'s dtype."""
    device = _device_accelerator(x, xp) if b is None else None
    if device is not None:
        return _device_logsumexp(device, x, xp, mask), None
    module = _accelerator(x, xp) if b is None else None
    if module is not None:
        rows = _kernel_rows(x)
        return round_to(module.lse_rows(rows, where=_kernel_mask(mask), **_threads(rows)), x, xp), None
    if b is None:
        return _by_blocks(lambda x_, m_: _reference_lse(x_, xp, m_), xp, x, mask), None
    out, sign = _by_blocks(lambda x_, m_, b_: _reference_weighted_lse(x_, xp, m_, b_), xp, x, mask, b)
    return out, sign


def _reference_lse(x: Array, xp: Any, mask: Array | None) -> Array:
    xw, needs_twosum = widen(x, xp)
    return round_to(_reference.logsumexp(masked(xw, mask, xp), xp, needs_twosum=needs_twosum), x, xp)


def _reference_weighted_lse(x: Array, xp: Any, mask: Array | None, b: Array) -> tuple[Array, Array]:
    xw, needs_twosum = widen(x, xp)
    xw = masked(xw, mask, xp)
    out, sign = _reference.weighted_logsumexp(xw, masked_weights(b, mask, xw, xp), xp, needs_twosum=needs_twosum)
    return round_to(out, x, xp), round_to(sign, x, xp)


def softmax(x: Array, xp: Any, *, mask: Array | None = None, temperature: float = 1.0, log: bool = False) -> Array:
    """Softmax (or log-softmax) rows in ``x``'s dtype."""
    device = _device_accelerator(x, xp, temperature)
    if device is not None:
        return _device_softmax(device, x, xp, mask, log)
    module = _accelerator(x, xp, temperature)
    if module is not None:
        x2 = _kernel_rows(x)
        out = np.empty(x2.shape, x2.dtype)  # rounded once by the kernels, 16-bit included
        module.state_rows(x2, where=_kernel_mask(mask), out=out, log=log, **_threads(x2))
        return out
    fn = _reference.log_softmax if log else _reference.softmax

    def block(x_: Array, m_: Array | None) -> Array:
        xw, needs_twosum = widen(x_, xp)
        return round_to(fn(masked(xw, m_, xp), xp, needs_twosum=needs_twosum, temperature=temperature), x_, xp)

    return _by_blocks(block, xp, x, mask)


def logsumexp_grad(x: Array, g: Array, xp: Any, *, mask: Array | None = None, b: Array | None = None) -> Array:
    def block(x_: Array, g_: Array, m_: Array | None, b_: Array | None) -> Array:
        xw, needs_twosum = widen(x_, xp)
        xw = masked(xw, m_, xp)
        bw = None if b_ is None else masked_weights(b_, m_, xw, xp)
        out = _reference.logsumexp_grad(xw, xp.astype(g_, xw.dtype), xp, needs_twosum=needs_twosum, b=bw)
        return round_to(out, x_, xp)

    return _by_blocks(block, xp, x, g, mask, b)


def softmax_grad(
    x: Array, g: Array, xp: Any, *, mask: Array | None = None, temperature: float = 1.0, log: bool = False
) -> Array:
    fn = _reference.log_softmax_grad if log else _reference.softmax_grad

    def block(x_: Array, g_: Array, m_: Array | None) -> Array:
        xw, needs_twosum = widen(x_, xp)
        gw = xp.astype(g_, xw.dtype)
        return round_to(fn(masked(xw, m_, xp), gw, xp, needs_twosum=needs_twosum, temperature=temperature), x_, xp)

    return _by_blocks(block, xp, x, g, mask)


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
    check: bool = True,
) -> _reference.Problem:
    """The validated cross-entropy problem in the compute dtype (softcap applied, then the mask).

    ``check=False`` leaves the value checks to the caller (a block of rows would report positions in the block).
    """
    xw, needs_twosum = widen(x, xp)
    if softcap is not None:
        xw, needs_twosum = softcap * xp.tanh(xw / softcap), False
    xw = masked(xw, mask, xp)
    if probs:
        tgt = xp.astype(target, xw.dtype)
        counted = xp.ones((tgt.shape[0],), dtype=xp.bool, device=_state._device(x))
        if check:
            check_probabilities(tgt)
    else:
        tgt = xp.astype(target, xp.int64)
        counted = tgt != ignore_index
        if check:
            check_targets(tgt, x.shape[-1], ignore_index)
    w = None if weight is None else xp.astype(weight, xw.dtype)
    return _reference.Problem(xw, tgt, probs, counted, w, mask, needs_twosum, reduction, smoothing, z_loss, softcap)


def cross_entropy(
    x: Array, target: Array, xp: Any, *, grad: bool, g: Array | None = None, parts: Array | None = None, **options: Any
) -> tuple[Array, Array | None]:
    """``(loss, dloss/dx or None)`` in ``x``'s dtype.

    ``parts``, from :func:`cross_entropy_keeping_parts` on the same
    arguments, spares a device's gradient the read that finds them; an
    empty one (any other path) is ignored.
    """
    device = _ce_device(x, xp, options)
    if device is not None:
        saved = None if parts is None or parts.shape[0] == 0 else _unpack_parts(device, parts, xp)
        loss, dx, _ = _device_ce(device, x, target, xp, options, grad, g, saved)
        return loss, dx
    module = _ce_accelerator(x, xp, options)
    result = None if module is None else _kernel_ce(module, x, target, options, grad, g)
    if result is not None:
        return result
    return _reference_ce(x, target, xp, grad, g, options)


def kept_ce_parts(x: Array, xp: Any, **options: Any) -> int:
    """How many rows of parts :func:`cross_entropy_keeping_parts` gives for ``x``: its accelerator's fields, or 0."""
    device = _ce_device(x, xp, options)
    return 0 if device is None else len(device.CrossEntropyRows._fields)


def cross_entropy_keeping_parts(x: Array, target: Array, xp: Any, **options: Any) -> tuple[Array, Array]:
    """The loss and, on a device, its rows' parts as a ``[fields, N]`` float64 array, for the backward.

    Elsewhere the parts are ``[0, N]`` of ``x``'s dtype (a device without
    float64, such as MPS, can hold it): the CPU kernels find them in the
    gradient's own sweep, and the reference in its row blocks.
    """
    device = _ce_device(x, xp, options)
    if device is None:
        loss, _ = cross_entropy(x, target, xp, grad=False, **options)
        return loss, xp.empty((0, x.shape[0]), dtype=x.dtype, device=_state._device(x))
    loss, _, r = _device_ce(device, x, target, xp, options, False, None, None)
    return loss, xp.stack([xp.astype(f, xp.float64) for f in r], axis=0)


def _ce_device(x: Array, xp: Any, options: dict[str, Any]) -> Any:
    """The device accelerator for class-target rows without a softcap, or None."""
    return None if options["probs"] or options["softcap"] is not None else _device_accelerator(x, xp)


def _unpack_parts(module: Any, parts: Array, xp: Any) -> Any:
    """The accelerator's ``CrossEntropyRows`` from a :func:`cross_entropy_keeping_parts` array."""
    m, k, s, x_target, shift_sum, allowed, weight_sum = (parts[i, ...] for i in range(parts.shape[0]))
    return module.CrossEntropyRows(
        m, xp.astype(k, xp.int64), s, x_target, shift_sum, xp.astype(allowed, xp.int64), weight_sum
    )


def _reference_ce(
    x: Array, target: Array, xp: Any, grad: bool, g: Any, options: dict[str, Any]
) -> tuple[Array, Array | None]:
    """The reference's loss and gradient, over row blocks: each block's parts, one finish over every row.

    The parts are per row and the finish and the reduction see every row, so
    the values are those of one block of all the rows, whatever the budget.
    """
    mask = options["mask"]
    opts = {k: v for k, v in options.items() if k != "mask"}
    blocks = _row_blocks(*x.shape)

    def block_problem(r: slice, check: bool = False) -> _reference.Problem:
        return ce_problem(
            x[r, ...], target[r, ...], xp, mask=None if mask is None else mask[r, ...], check=check, **opts
        )

    if len(blocks) == 1:
        problem = block_problem(blocks[0], check=True)
        parts, meta = _reference.cross_entropy_parts(problem, xp), problem
    else:
        meta = ce_problem(x[0:0, ...], target, xp, mask=None, **opts)  # the whole target, checked once; no rows held
        parts = _state.concat_parts([_reference.cross_entropy_parts(block_problem(r), xp) for r in blocks], xp)
    rows, loss = _reference.cross_entropy_finish(meta, parts, xp)
    out = round_to(loss, x, xp)
    if not grad:
        return out, None
    dt = parts.m.dtype
    gw = xp.astype(g, dt) if hasattr(g, "dtype") else xp.asarray(1.0 if g is None else g, dtype=dt)
    scales = _state.row_scales(meta.reduction, rows.alive, rows.row_weight, gw, xp, dtype=dt)
    n = x.shape[0]
    scales = (xp.broadcast_to(scales[0], (n,)), xp.broadcast_to(scales[1], (n,)))

    def block_grad(x_: Array, r: slice) -> Array:
        problem = block_problem(r)
        fwd = _reference.Forward(_state.rows_of(parts, r), _state.rows_of(rows, r), loss)
        return round_to(_reference.cross_entropy_grad(problem, fwd, (scales[0][r, ...], scales[1][r, ...]), xp), x_, xp)

    return out, _stitch((block_grad(x[r, ...], r) for r in blocks), blocks, x.shape[0], xp)


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
    if x.dtype.char not in "fd" or not x.dtype.isnative or target.dtype.kind != "i":
        return False, None
    if target.shape != x.shape[:1] or 0 in x.shape:
        return False, None
    if type(axis) is not int or axis not in (-1, 1) or type(ignore_index) is not int:
        return False, None
    module = host_kernels()
    if module is None or reduction not in ("mean", "sum", "none"):
        return False, None
    options = dict(ignore_index=ignore_index, reduction=reduction, smoothing=0.0, z_loss=0.0, softcap=None, probs=False)
    with np.errstate(all="ignore"):  # as at the NumPy backend's boundary (see _backends.plain)
        result = _kernel_ce(module, x, target, dict(options, weight=None, mask=None), False, None)
    if result is None:
        return False, None
    loss = result[0]
    return True, loss[()] if loss.ndim == 0 else loss


def _ce_accelerator(x: Array, xp: Any, options: dict[str, Any]) -> Any:
    """The accelerator for class targets without softcap (masks, smoothing, weights welcome), or None."""
    if options["probs"] or options["softcap"] is not None:
        return None
    return _accelerator(x, xp)


def _kernel_ce(
    module: Any, x: np.ndarray, target: np.ndarray, options: dict[str, Any], grad: bool, g: Any
) -> tuple[Array, Any] | None:
    """The loss (and gradient) from one accelerator pass per row: its parts, then :func:`._state.finish`.

    The gradient is written in the same sweep; it needs the mean's
    denominator before the pass, so a row that turns out to have no mass
    (all masked or ``-inf``, rare) means a second pass with the right one.
    """
    x2 = _kernel_rows(x)
    tgt = np.asarray(target).astype(np.int64, copy=False)
    check_targets(tgt, x2.shape[1], options["ignore_index"])
    mask = _kernel_mask(options["mask"])
    weight = None if options["weight"] is None else np.asarray(options["weight"], np.float64)
    counted = tgt != options["ignore_index"]
    y = np.where(counted, tgt, 0)
    live = counted if mask is None else counted & mask.any(axis=1)
    short, smoothing = _short_sweep(module, x2, options, grad), options["smoothing"]
    while True:
        r, dx = _ce_pass(module, x2, y, mask, weight, live, options, g if grad else None, short=short)
        if grad and ((r.m == -np.inf) & live).any():
            live = live & (r.m != -np.inf)
            r, dx = _ce_pass(module, x2, y, mask, weight, live, options, g)
        if smoothing and _shift_sum_overflowed(r, live, x2, mask):
            return None  # the reference takes the whole batch
        rows, ce, zt = _ce_finish(r, npx, y, live, weight, options, needs_twosum=x2.dtype == np.float64)
        loss = _state.reduce(ce, zt, rows.row_weight, rows.alive, options["reduction"], npx)
        if not short or _rounds_surely(loss, ce, rows, r.s, module.SHORT_ERROR, options["reduction"]):
            return round_to(np.asarray(loss), x, np), (None if dx is None else round_to(dx, x, np))
        short = False  # a rounding boundary lies near: the accurate sweep decides


def _ce_finish(
    r: Any, xp: Any, y: Array, counted: Array, weight: Any, options: dict[str, Any], *, needs_twosum: bool
) -> tuple[_state.Loss, Array, Array | None]:
    """:func:`._state.finish` of an accelerator's class-target rows ``r``: ``(rows, ce, zt)``."""
    smoothing = options["smoothing"]
    return _state.finish(
        _parts_of(r, xp, smoothing=smoothing),
        xp,
        target=y,
        counted=counted,
        weight=weight,
        probs=False,
        smoothing=smoothing,
        z_loss=options["z_loss"],
        needs_twosum=needs_twosum,
    )


def _short_sweep(module: Any, x2: np.ndarray, options: dict[str, Any], grad: bool) -> bool:
    """Whether a loss may come from the short polynomial's sweep and a rounding test: float32 rows, one loss.

    A loss per row would need a test per row; the z-loss and the gradient
    are left to the accurate sweep.
    """
    plain = not grad and not options["z_loss"] and options["reduction"] in ("mean", "sum")
    return plain and x2.dtype == np.float32 and hasattr(module, "SHORT_ERROR")


def _rounds_surely(loss: Any, ce: Any, rows: _state.Loss, s: Any, error: float, reduction: str) -> bool:
    """Whether float32 rounds a loss finished from a short sweep's parts as it rounds the accurate sweep's (Ziv).

    Each row's ``s`` is within ``error`` relative of the accurate one's, so
    ``L = log1p(s)`` is within ``error`` (``s / (1 + s) < 1``), and its loss
    ``ce = (A L - D) - E`` within ``A error``: ``D`` and ``E`` do not depend
    on ``exp``. ``2**-48 (A L + ce)`` covers the rounding of ``log1p``, of the
    product and of the differences, in both sweeps. ``ce >= 0``, so NumPy's
    pairwise sums of the two sweeps' rows differ by at most that much more,
    ``2 (log2 N + 2) u sum(ce)``; the mean divides by the same weight sum, and
    ``2**-50 |loss|`` covers the division. When no float32 rounding boundary
    lies in that window around ``loss``, the accurate loss rounds to the same
    float32. A non-finite window fails the test.
    """
    with np.errstate(all="ignore"):
        big_a, lg = rows.big_a, np.log1p(s)
        per_row = np.where(rows.alive, big_a * error + 2.0**-48 * (big_a * lg + ce), 0.0)
        window = np.sum(per_row) + 2.0 * (np.log2(max(ce.shape[0], 1)) + 2.0) * 2.0**-53 * np.sum(ce)
        if reduction == "mean":
            window = window / np.sum(rows.row_weight)
        window = window + 2.0**-50 * np.abs(loss)
        return bool(np.float32(loss - window) == np.float32(loss + window))


def _ce_pass(
    module: Any,
    x2: np.ndarray,
    y: np.ndarray,
    mask: Any,
    weight: Any,
    live: np.ndarray,
    options: dict[str, Any],
    g: Any,
    *,
    short: bool = False,
) -> tuple[Any, Any]:
    """One accelerator pass: the parts and, with ``g``, the gradient written from the per-row coefficients.

    ``short`` asks for the short polynomial's sweep (no ``g``; see :func:`_short_sweep`).
    """
    if g is None:
        more = {"short": True} if short else {}
        return (
            module.cross_entropy_rows(
                x2, y, where=mask, weight=weight, label_smoothing=options["smoothing"], **_threads(x2), **more
            ),
            None,
        )
    row_weight = live.astype(np.float64) if weight is None else np.where(live, weight[y], 0.0)
    garr = np.broadcast_to(np.asarray(g, np.float64), (len(y),) if options["reduction"] == "none" else ())
    ce_scale, z_scale = _state.row_scales(options["reduction"], live, row_weight, garr, npx, dtype=np.float64)
    ce_scale, z_scale = np.broadcast_to(ce_scale, y.shape), np.broadcast_to(z_scale, y.shape)
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
        **_threads(x2),
    )
    dx[~live] = 0.0  # ignored and dropped rows move nothing, NaN or not
    return r, dx


def ce_chunk_parts(
    x: Array, first: int, target: Array, *, weight: Array | None, smoothing: float, needs_twosum: bool
) -> _state.Parts:
    """The loss parts of float32 or float64 logits ``x``, classes ``first : first + K``, with class targets.

    ``target`` holds global classes, ``weight`` the block's class weights.
    The accelerator gives them in one pass (its ``cross_entropy_rows``);
    the reference, :func:`._state.part` in row blocks (see :func:`ce_block_grad`).
    """
    xp = array_api_compat.array_namespace(x)
    n, width = x.shape
    module = select(x) if width else None
    if module is None:
        blocks = [
            _state.part(
                xp.astype(x[r, ...], xp.float64),
                first,
                xp,
                needs_twosum=needs_twosum,
                y=target[r],
                w=weight,
                smoothing=bool(smoothing),
            )
            for r in _fallback_rows(n, width, xp)
        ]
        return _state.concat_parts(blocks, xp)
    x = _kernel_rows(x) if is_numpy(xp) else (x if x.stride(-1) == 1 else x.contiguous())  # unit-stride rows
    local = target - first
    inside = (local >= 0) & (local < width)
    r = module.cross_entropy_rows(
        x, xp.where(inside, local, xp.zeros_like(local)), weight=weight, label_smoothing=1.0 if smoothing else 0.0
    )
    if smoothing and is_numpy(xp) and _shift_sum_overflowed(r, np.ones(n, bool), x, None):
        with reference_path():
            return ce_chunk_parts(x, first, target, weight=weight, smoothing=smoothing, needs_twosum=needs_twosum)
    xy = xp.where(inside, r.x_target, xp.zeros_like(r.x_target))
    return _parts_of(r, xp, smoothing=smoothing, first=first, xy=xy)


def _parts_of(r: Any, xp: Any, *, smoothing: float, first: int = 0, xy: Array | None = None) -> _state.Parts:
    """An accelerator's ``cross_entropy_rows`` result as :class:`._state.Parts` (positions from ``first``).

    The kernels' compensated shift sum is held scaled, as :func:`._state.sums` holds it.
    """
    u = count = None
    if smoothing:
        u = _state.Sums(r.shift_sum * _state.SUM_SCALE, xp.zeros_like(r.shift_sum), r.weight_sum)
        count = xp.astype(r.allowed, xp.float64)
    return _state.Parts(r.m, r.k + first if first else r.k, r.s, r.x_target if xy is None else xy, None, u, count)


def _shift_sum_overflowed(r: Any, live: Any, x: np.ndarray, mask: Any) -> bool:
    """Whether a host pass's ``sum_c (x_c - m)`` overflowed on huge logits: the reference, which scales it, serves.

    A ``-inf`` allowed logit makes the sum ``-inf`` rightly; only without one is a non-finite sum an overflow.
    """
    if not (live & np.isfinite(r.m) & ~np.isfinite(r.shift_sum) & (r.allowed > 0)).any():
        return False
    return not (np.isneginf(x) & (mask if mask is not None else True)).any()


def _fallback_rows(n: int, width: int, xp: Any) -> list[slice]:
    """Row blocks of the reference's compute-dtype temporaries: ``2**14`` entries on the host; elsewhere a
    sixteenth of the rows, at least that (fewer launches on a device)."""
    step = max(1, _HOST_BLOCK // max(width, 1), 0 if is_numpy(xp) else -(-n // 16))
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)] or [slice(0, 0)]


def ce_block_grad(
    x: Array,
    first: int,
    parts: _state.Parts,
    rows: _state.Loss,
    scales: tuple[Array, Array],
    *,
    target: Array,
    weight: Array | None,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    needs_twosum: bool,
    out: Array | None = None,
) -> Array:
    """:func:`._state.block_gradient` of float32 or float64 logits ``x``, class targets, rounded once to ``out``.

    ``x`` holds classes ``first : first + K`` of rows whose merged parts and
    finish are known: a chunk of ``linear_cross_entropy``. The accelerator
    (numba on the host, Triton on a device) writes it from the per-row
    coefficients in one pass; the reference, in row blocks whose compute-dtype
    temporaries stay near ``2**14`` entries on the host (a sixteenth of the
    chunk, at least that, elsewhere). ``out`` (``x``'s shape, float64 or
    ``x``'s dtype) may be ``x`` itself, whose logits the gradient then replaces;
    by default a new array of ``x``'s dtype.
    """
    xp = array_api_compat.array_namespace(x)
    n, width = x.shape
    dev = _state._device(x)
    if out is None:
        out = xp.empty((n, width), dtype=x.dtype, device=dev)
    module = select(x) if width else None
    if module is not None:
        x = _kernel_rows(x) if is_numpy(xp) else (x if x.stride(-1) == 1 else x.contiguous())  # unit-stride rows
        with np.errstate(all="ignore"):
            coef = _state.coefficients(rows, scales, xp, z_loss=z_loss)
            zeros = xp.zeros((n,), dtype=xp.float64, device=dev)
            count = parts.count if parts.count is not None else xp.ones_like(zeros)
            module.block_gradient_rows(
                x,
                first,
                parts.m,
                parts.k,
                parts.s,
                xp.where(rows.alive, target, xp.zeros_like(target)),
                coef.alive,
                coef.big_a,
                coef.g,
                zeros if coef.z is None else coef.z,
                smoothing * (1 / xp.maximum(count, xp.ones_like(count))) if smoothing else zeros,  # as target_mass
                1.0 - smoothing,
                weight=weight,
                softcap=softcap,
                out=out,
            )
        return out
    for r in _fallback_rows(n, width, xp):
        with np.errstate(all="ignore"):  # see _backends.plain
            block = _state.block_gradient(
                xp.astype(x[r, ...], xp.float64),
                first,
                _state.rows_of(parts, r),
                _state.rows_of(rows, r),
                (scales[0][r], scales[1][r]),
                xp,
                target=target[r],
                probs=False,
                weight=weight,
                allowed=None,
                smoothing=smoothing,
                z_loss=z_loss,
                softcap=softcap,
                needs_twosum=needs_twosum,
            )
        out[r, ...] = xp.astype(block, out.dtype)
    return out


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


# --------------------------------------------------------------------------
# Device accelerators: the rows stay on their device, and nothing waits for it
# --------------------------------------------------------------------------


def _device_logsumexp(module: Any, x: Array, xp: Any, mask: Array | None) -> Array:
    m, k, s = module.state_rows(x.contiguous(), where=None if mask is None else mask.contiguous())
    return round_to(_state.lse(_state.State(m, k, s), xp), x, xp)


def _device_softmax(module: Any, x: Array, xp: Any, mask: Array | None, log: bool) -> Array:
    rows = x.contiguous()
    out = xp.empty(rows.shape, dtype=rows.dtype, device=_state._device(rows))  # written rounded once
    module.state_rows(rows, where=None if mask is None else mask.contiguous(), out=out, log=log)
    return out


def _device_ce(
    module: Any, x: Array, target: Array, xp: Any, options: dict[str, Any], grad: bool, g: Any, saved: Any
) -> tuple[Array, Array | None, Any]:
    """The loss from the accelerator's parts and :func:`._state.finish`; the gradient from a second pass.

    No value is read on the host: the targets are checked only where they
    can be read without a sync (a CPU tensor), and the mean's denominator
    stays a tensor. The gradient's pass needs the rows that the finish
    found alive, so it is its own launch after the loss's. ``saved`` are
    the parts of an earlier call on the same rows (the forward's, in a
    backward): the parts' launch is then skipped. Returns the parts too.
    """
    rows_x = x.contiguous()
    tgt = xp.astype(target, xp.int64)
    check_targets(tgt, rows_x.shape[1], options["ignore_index"])
    counted = tgt != options["ignore_index"]
    y = xp.where(counted, tgt, xp.zeros_like(tgt))
    mask = None if options["mask"] is None else options["mask"].contiguous()
    weight = None if options["weight"] is None else xp.astype(options["weight"], xp.float64)
    smoothing, z = options["smoothing"], options["z_loss"]
    r = (
        saved
        if saved is not None
        else module.cross_entropy_rows(rows_x, y, where=mask, weight=weight, label_smoothing=smoothing)
    )
    rows, ce, zt = _ce_finish(r, xp, y, counted, weight, options, needs_twosum=rows_x.dtype == xp.float64)
    loss = round_to(_state.reduce(ce, zt, rows.row_weight, rows.alive, options["reduction"], xp), x, xp)
    if not grad:
        return loss, None, r
    g64 = xp.astype(xp.asarray(1.0 if g is None else g, device=_state._device(rows_x)), xp.float64)
    ce_scale, z_scale = _state.row_scales(options["reduction"], rows.alive, rows.row_weight, g64, xp, dtype=xp.float64)
    ones = xp.ones_like(rows.row_weight)
    zero = xp.zeros_like(rows.row_weight)
    dx = xp.empty(rows_x.shape, dtype=rows_x.dtype, device=_state._device(rows_x))
    module.cross_entropy_rows(
        rows_x,
        y,
        where=mask,
        weight=weight,
        label_smoothing=smoothing,
        grad=dx,
        g=xp.where(rows.alive, ce_scale * ones, zero),
        z_grad=xp.where(rows.alive, 2 * z * z_scale * ones, zero) if z else None,
        parts=r,  # found above: the gradient's pass is its only read
    )
    return loss, xp.where(rows.alive[:, None], dx, xp.zeros_like(dx)), r  # ignored and dropped rows move nothing

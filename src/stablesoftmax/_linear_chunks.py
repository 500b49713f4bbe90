"""The chunks of ``linear_cross_entropy``: each chunk's logits, parts and gradient, on the host or the arrays' device.

:mod:`._linear` validates and answers in the caller's library; this module
only computes, over :mod:`._state`'s parts, finish and gradient, so that the
torch adapter's ops can call it without reaching above the dispatch layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat.numpy as npx
import numpy as np

from . import _compute, _state
from ._errors import ShapeError

_PRODUCT_ENTRIES = 1 << 18  # the host backward's G W_c buffer: 1 MiB of float32 rows, whatever N


@dataclass
class _Linear:
    """A checked problem: NumPy arrays on the host in the compute dtype, or the caller's own (PyTorch) arrays."""

    h: Any  # (N, H)
    w: Any  # (V, H)
    b: Any  # (V,) or None
    y: Any  # (N,) int64
    counted: Any  # (N,) bool
    class_weight: Any  # (V,) float64 or None
    chunk: int
    like: Any  # an array of hidden's library and dtype, for the results
    xp: Any
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None
    ignore_index: int = -100


def _starts(p: _Linear) -> range:
    return range(0, p.w.shape[0], p.chunk)


def _chunk_logits(p: _Linear, i: int) -> np.ndarray:
    """Logits of classes ``i : i + chunk``, softcap applied: the only block ever held.

    The weight's rows are widened to ``h``'s dtype here (a 16-bit weight from a
    CPU tensor's view), a chunk at a time.
    """
    w_chunk = p.w[i : i + p.chunk].astype(p.h.dtype, copy=False)
    logits: np.ndarray = p.h @ w_chunk.T  # NumPy's stubs give Any for a matmul of unknown dtypes
    if p.b is not None:
        logits += p.b[i : i + p.chunk]
    if p.softcap is not None:
        np.divide(logits, p.softcap, out=logits)
        np.tanh(logits, out=logits)
        logits *= p.softcap
    return logits


def forward(p: _Linear) -> tuple[_state.Parts, _state.Loss, Any]:
    """Each chunk's parts merged into the rows' parts, then the one finish: ``(parts, rows, reduced loss)``.

    On the host or the arrays' device, as :func:`backward`; the loss is float64.
    """
    host, xp = _on_host(p)
    h = p.h if host else _compute_h(p)
    merged: _state.Parts | None = None
    with np.errstate(all="ignore"):  # see _backends.plain
        for i in _starts(p):
            logits = _chunk_logits(p, i) if host else _native_logits(p, h, i)
            chunk = _parts(p, logits, i)
            merged = chunk if merged is None else _state.merge_parts(merged, chunk, xp)
            del logits  # before the next chunk's matmul, so two chunks never coexist
        assert merged is not None  # V >= 1: at least one chunk
        rows, ce, zt = _state.finish(
            merged,
            xp,
            target=p.y,
            counted=p.counted,
            weight=p.class_weight,
            probs=False,
            smoothing=p.smoothing,
            z_loss=p.z_loss,
            needs_twosum=_needs_twosum(p),
        )
        loss = _state.reduce(ce, zt, rows.row_weight, rows.alive, p.reduction, xp)
    return merged, rows, loss


def _parts(p: _Linear, logits: Any, first: int) -> _state.Parts:
    """The parts of one chunk of classes, with global positions: its state, the target's logit, smoothing's sums."""
    return _compute.ce_chunk_parts(
        logits,
        first,
        p.y,
        weight=None if p.class_weight is None else p.class_weight[first : first + logits.shape[1]],
        smoothing=p.smoothing,
        needs_twosum=_needs_twosum(p),
    )


def backward(p: _Linear, parts: _state.Parts, rows: _state.Loss, g: Any) -> tuple[Any, Any, Any]:
    """``d hidden``, ``d weight``, ``d bias`` (None without a bias) in the compute dtype, on the host or the device.

    On the host a 16-bit weight's gradient is in its own dtype, rounded once from float32.

    Each chunk's ``G = d loss / d logits`` is the accelerator's block gradient
    (:func:`._compute.ce_block_grad`), then its three matmuls: ``d weight`` is
    written chunk by chunk from ``G^T h``; only one chunk of ``G`` exists at a time.
    """
    host, xp = _on_host(p)
    h = p.h if host else _compute_h(p)
    scales = _scales(p, rows, g, xp)
    if not (host and bool(rows.alive.all())):  # the check would synchronise a device: there, always
        h = xp.where(rows.alive[:, None], h, xp.zeros_like(h))  # a NaN in a dropped row moves nothing
    dev = _state._device(h)
    d_h = xp.zeros(h.shape, dtype=h.dtype, device=dev)
    # A 16-bit weight (a CPU tensor's view) gets its gradient in its own dtype, each chunk's rows summed in
    # float32 by their matmul and rounded once: no (V, H) float32 array beside the gradient.
    narrow = host and p.w.dtype.itemsize == 2
    d_w = xp.empty((p.w.shape[0], h.shape[1]), dtype=p.w.dtype if narrow else h.dtype, device=dev)
    w_rows = np.empty((min(p.chunk, p.w.shape[0]), h.shape[1]), h.dtype) if narrow else None
    d_b = None if p.b is None else xp.empty((p.w.shape[0],), dtype=h.dtype, device=dev)
    # G W_c, added into d_h in row blocks through one small buffer: an (N, H) one would be a chunk's worth.
    step = max(1, _PRODUCT_ENTRIES // max(1, h.shape[1]))
    product = np.empty((min(step, h.shape[0]), h.shape[1]), h.dtype) if host else None
    for i in _starts(p):
        grad = _chunk_logits(p, i) if host else _native_logits(p, h, i)
        width = grad.shape[1]
        with np.errstate(all="ignore"):  # see _backends.plain
            _compute.ce_block_grad(
                grad,
                i,
                parts,
                rows,
                scales,
                target=p.y,
                weight=None if p.class_weight is None else p.class_weight[i : i + width],
                smoothing=p.smoothing,
                z_loss=p.z_loss,
                softcap=p.softcap,
                needs_twosum=_needs_twosum(p),
                out=grad,  # the chunk's logits become its gradient: one chunk is all it holds
            )
        w_chunk = xp.astype(p.w[i : i + width], h.dtype, copy=False)
        if product is not None:  # on the host
            for r in range(0, h.shape[0], step):
                d_h[r : r + step] += np.matmul(grad[r : r + step], w_chunk, out=product[: min(step, h.shape[0] - r)])
            if w_rows is None:
                np.matmul(grad.T, h, out=d_w[i : i + width])
            else:
                d_w[i : i + width] = np.matmul(grad.T, h, out=w_rows[:width])
        elif _is_torch(grad):  # in place: no (N, H) or (K, H) temporary
            d_h.addmm_(grad, w_chunk)
            d_w[i : i + width].addmm_(grad.T, h, beta=0)  # beta=0: what d_w held is ignored, NaN included
        else:
            d_h += xp.matmul(grad, w_chunk)
            d_w[i : i + width, ...] = xp.matmul(grad.T, h)
        if d_b is not None:
            d_b[i : i + width] = xp.sum(grad, axis=0)
        del grad
    return d_h, d_w, d_b


def _is_torch(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "torch"


def _scales(p: _Linear, rows: _state.Loss, g: Any, xp: Any) -> tuple[Any, Any]:
    """:func:`._state.row_scales` per row, in float64; a host cotangent's shape is checked here."""
    if xp is npx:
        g = np.asarray(g, dtype=np.float64)
        _check_cotangent(tuple(g.shape), p.reduction)
        g = np.broadcast_to(g, rows.alive.shape) if p.reduction == "none" else g.reshape(())
    ce, z = _state.row_scales(p.reduction, rows.alive, rows.row_weight, g, xp, dtype=xp.float64)
    return xp.broadcast_to(ce, rows.alive.shape), xp.broadcast_to(z, rows.alive.shape)


def _check_cotangent(shape: tuple[int, ...], reduction: str) -> None:
    if reduction != "none" and int(np.prod(shape)) != 1:
        raise ShapeError(f"g of shape {shape} must be a scalar for reduction={reduction!r}.")


def op_problem(h: Any, w: Any, b: Any, y: Any, class_weight: Any, xp: Any, **options: Any) -> _Linear:
    """A problem rebuilt from an op's arguments, checked before by :func:`_problem`.

    ``options``: ``ignore_index, chunk, reduction, smoothing, z_loss, softcap``.
    """
    o = options
    counted = y != o["ignore_index"]
    return _Linear(
        h,
        w,
        b,
        y,
        counted,
        class_weight,
        o["chunk"],
        h,
        xp,
        o["reduction"],
        o["smoothing"],
        o["z_loss"],
        o["softcap"],
        o["ignore_index"],
    )


def saved_parts(m: Any, k: Any, s: Any, p: _Linear) -> _state.Parts:
    """The merged parts a gradient needs, from the state its forward kept (smoothing counts all V classes)."""
    xp = p.xp
    count = xp.full(m.shape, float(p.w.shape[0]), dtype=m.dtype, device=_state._device(m)) if p.smoothing else None
    return _state.Parts(m, k, s, count=count)


def _on_host(p: _Linear) -> tuple[bool, Any]:
    """Whether ``p`` holds NumPy arrays (whatever the caller's library), and the namespace its arrays compute in."""
    host = isinstance(p.h, np.ndarray)
    return host, (npx if host else p.xp)


def _needs_twosum(p: _Linear) -> bool:
    """Float64 logits need the shift's TwoSum error; float32 logits widened to float64 shift exactly."""
    return bool(p.h.dtype == _on_host(p)[1].float64)


def _compute_h(p: _Linear) -> Any:
    """``hidden`` in the compute dtype: float64 stays, 16-bit and float32 are multiplied in float32."""
    xp = p.xp
    return xp.astype(p.h, xp.float64 if _needs_twosum(p) else xp.float32, copy=False)


def _native_logits(p: _Linear, h: Any, i: int) -> Any:
    """:func:`_chunk_logits` in ``p``'s library: the chunk's matmul in ``h``'s dtype, bias, softcap."""
    xp = p.xp
    logits = xp.matmul(h, xp.astype(p.w[i : i + p.chunk], h.dtype, copy=False).T)
    if p.b is not None:
        logits = logits + xp.astype(p.b[i : i + p.chunk], h.dtype, copy=False)
    if p.softcap is not None:
        logits = xp.tanh(logits / p.softcap) * p.softcap
    return logits

"""The autograd functions: forward through the exchange and the one finish, backward from the rows' parts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat.numpy as npx
import array_api_compat.torch as tx
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _compute, _reference, _state
from .._errors import GradientError
from .._state import Loss, Parts, State
from ._calls import _CE, _Linear, _Reduction
from ._exchange import (
    _arrays,
    _exchange,
    _Global,
    _needs_twosum,
    _on_host,
    _prepare,
    _probs,
    _quiet,
    _row_blocks,
    _scales,
    _sub,
    _tensor,
)

Array = Any


_Backward = Callable[..., Any]


def _first_derivative(name: str | None = None) -> Callable[[_Backward], _Backward]:
    """``once_differentiable``, refusing by name a backward asked to build a graph (``create_graph=True``).

    The distributed gradients are not themselves differentiated; without the
    refusal a second derivative would fail later with PyTorch's own message.
    ``name`` is the function's, or ``None`` to read ``ctx.call.name``.
    """

    def wrap(backward: _Backward) -> _Backward:
        once = once_differentiable(backward)

        def checked(ctx: Any, *grads: Any) -> Any:
            if torch.is_grad_enabled():
                fn = name or ctx.call.name
                raise GradientError(
                    f"the second derivative of stablesoftmax.distributed.{fn} is not computed, and "
                    "create_graph=True asks for the graph of its gradient; differentiate it once."
                )
            return once(ctx, *grads)

        return checked

    return wrap


@dataclass(frozen=True)
class _Aux:
    """A cross-entropy call's arrays in the namespace it computes in."""

    target: Array
    counted: Array
    weight: Array | None  # (V,) compute dtype
    local_weight: Array | None  # this rank's (C_r,)
    mask: Array | None


def _aux(call: _CE, host: bool, xp: Any, dtype: Any) -> _Aux:
    target, weight, mask = _arrays(host, call.target, call.weight, call.mask)
    if call.probs:
        target = xp.astype(target, dtype)
        counted = xp.ones((target.shape[0],), dtype=xp.bool, device=_state._device(target))
    else:
        counted = target != call.ignore_index
    w = None if weight is None else xp.astype(weight, dtype)
    lo, hi = call.layout.start, call.layout.offsets[call.layout.rank + 1]
    return _Aux(target, counted, w, None if w is None else w[lo:hi], mask)


def _ce_part(call: _CE, x: Array, aux: _Aux, xp: Any) -> Parts:
    """This rank's part of every row, by row blocks (the kernels' one pass where they apply)."""
    n, k = x.shape
    first = call.layout.start
    if k and not (call.probs or call.mask is not None or call.softcap):
        return _compute.ce_chunk_parts(
            x, first, aux.target, weight=aux.local_weight, smoothing=call.smoothing, needs_twosum=_needs_twosum(x, xp)
        )
    parts = []
    for r in _row_blocks(n, k):
        xw, needs_twosum = _prepare(x[r], xp, call.softcap, _sub(aux.mask, r))
        parts.append(
            _state.part(
                xw,
                first,
                xp,
                needs_twosum=needs_twosum,
                y=None if call.probs else aux.target[r],
                q=_sub(aux.target, r) if call.probs else None,
                w=aux.local_weight,
                allowed=_sub(aux.mask, r),
                smoothing=bool(call.smoothing),
            )
        )
    return _state.concat_parts(parts, xp)


def _ce_rows(call: _CE, gl: _Global, aux: _Aux, xp: Any, needs_twosum: bool) -> tuple[Loss, Array, Array | None]:
    """The rows' finish, :func:`._state.finish`, on the parts every rank now holds."""
    return _state.finish(
        gl.parts(xp),
        xp,
        target=aux.target,
        counted=aux.counted,
        weight=aux.weight,
        probs=call.probs,
        smoothing=call.smoothing,
        z_loss=call.z_loss,
        needs_twosum=needs_twosum,
    )


def _ce_forward(call: _CE, x: Tensor) -> tuple[Tensor, Any]:
    host = _on_host(x)
    with _quiet(host):
        xp = npx if host else tx
        (xa,) = _arrays(host, x)
        dtype = _compute.compute_dtype(xa, xp)
        aux = _aux(call, host, xp, dtype)
        if call.rows.n == 0:
            shape = (0,) if call.reduction == "none" else ()
            return _tensor(xp.zeros(shape, dtype=xa.dtype), x.device), None
        gl = _exchange(_ce_part(call, xa, aux, xp), call.comm, xp)
        needs_twosum = _needs_twosum(xa, xp) and call.softcap is None
        rows, ce, zt = _ce_rows(call, gl, aux, xp, needs_twosum)
        loss = _state.reduce(ce, zt, rows.row_weight, rows.alive, call.reduction, xp)
        return _tensor(_compute.round_to(loss, xa, xp), x.device), (gl, rows)


def _ce_backward(call: _CE, saved: Any, x: Tensor, g: Tensor) -> Tensor:
    """This rank's ``d loss / d local_logits``, from ``M``, ``S`` and its own logits: no collective."""
    host = _on_host(x)
    with _quiet(host):
        xp = npx if host else tx
        xa, ga = _arrays(host, x, g)
        if saved is None:
            return _tensor(xp.zeros(xa.shape, dtype=xa.dtype, device=_state._device(xa)), x.device)
        gl, rows = saved
        aux = _aux(call, host, xp, gl.m.dtype)
        scales = _scales(call.reduction, rows.alive, rows.row_weight, xp.astype(ga, gl.m.dtype), xp)
        out = _grad_rows(call, xa, call.layout.start, aux.local_weight, gl, rows, aux, scales, xp)
        return _tensor(out, x.device)


def _grad_rows(
    call: _CE,
    x: Array,
    first: int,
    w: Array | None,
    gl: _Global,
    rows: Loss,
    aux: _Aux,
    scales: tuple[Array, Array],
    xp: Any,
) -> Array:
    """``d loss / d x`` for a block of classes ``first : first + K`` (weights ``w``), by row blocks, in x's dtype.

    :func:`._state.block_gradient` on the rows' global parts: no collective.
    Float32 and float64 logits with class targets, no mask and no softcap
    take the accelerator's block gradient (one pass) through
    :func:`._compute.ce_block_grad`.
    """
    parts = gl.parts(xp)
    if not call.probs and aux.mask is None and call.softcap is None and x.dtype in (xp.float32, xp.float64):
        return _compute.ce_block_grad(
            x,
            first,
            parts,
            rows,
            scales,
            target=aux.target,
            weight=w,
            smoothing=call.smoothing,
            z_loss=call.z_loss,
            softcap=None,
            needs_twosum=x.dtype == xp.float64,
        )
    out = xp.empty(x.shape, dtype=x.dtype, device=_state._device(x))
    for r in _row_blocks(*x.shape):
        xw, needs_twosum = _prepare(x[r], xp, call.softcap, _sub(aux.mask, r))
        grad = _state.block_gradient(
            xw,
            first,
            _state.rows_of(parts, r),
            _state.rows_of(rows, r),
            (scales[0][r], scales[1][r]),
            xp,
            target=aux.target[r],
            probs=call.probs,
            weight=w,
            allowed=_sub(aux.mask, r),
            smoothing=call.smoothing,
            z_loss=call.z_loss,
            softcap=call.softcap,
            needs_twosum=needs_twosum,
        )
        out[r] = _compute.round_to(grad, x, xp)
    return out


class _CrossEntropy(torch.autograd.Function):
    """The loss of a validated :class:`_CE`; backward is local to the rank."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: _CE) -> Tensor:
        loss, saved = _ce_forward(call, x)
        ctx.call, ctx.saved = call, saved
        ctx.save_for_backward(x)
        return loss

    @staticmethod
    @_first_derivative("cross_entropy")
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _ce_backward(ctx.call, ctx.saved, x, g), None


def _reduce_forward(call: _Reduction, x: Tensor, host: bool) -> tuple[Any, Array, Array, _Global | None, bool]:
    """``(xp, rows, prepared rows, state, needs_twosum)`` of a reduction, after the exchange (no state for no rows)."""
    xp = npx if host else tx
    xa, mask = _arrays(host, x, call.mask)
    xw, needs_twosum = _prepare(xa, xp, None, mask)
    if call.rows.n == 0:
        return xp, xa, xw, None, needs_twosum
    parts = [_state.part(xw[r], call.layout.start, xp, needs_twosum=needs_twosum) for r in _row_blocks(*xw.shape)]
    return xp, xa, xw, _exchange(_state.concat_parts(parts, xp), call.comm, xp), needs_twosum


class _LogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, call: _Reduction) -> Tensor:
        host = _on_host(x)
        with _quiet(host):
            xp, xa, _, gl, _ = _reduce_forward(call, x, host)
            out = (
                xp.zeros((0,), dtype=xa.dtype)
                if gl is None
                else _compute.round_to(_state.lse(State(gl.m, gl.k, gl.s), xp), xa, xp)
            )
        ctx.call, ctx.gl = call, gl
        ctx.save_for_backward(x)
        return _tensor(out, x.device)

    @staticmethod
    @_first_derivative("logsumexp")
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        host = _on_host(x)
        with _quiet(host):
            xp = npx if host else tx
            xa, ga, mask = _arrays(host, x, g, ctx.call.mask)
            if ctx.gl is None:
                return _tensor(xp.zeros_like(xa), x.device), None
            xw, needs_twosum = _prepare(xa, xp, None, mask)
            p = _probs(xw, ctx.gl, xp, needs_twosum)
            grad = _reference.dead_to_zero(p * xp.astype(ga, p.dtype)[:, None], xw, xp, m=ctx.gl.m)
            return _tensor(_compute.round_to(grad, xa, xp), x.device), None


class _Softmax(torch.autograd.Function):
    """This rank's block of softmax (``log=False``) or log_softmax; backward makes one all-reduce."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: _Reduction, log: bool) -> Tensor:
        host = _on_host(x)
        with _quiet(host):
            xp, xa, xw, gl, needs_twosum = _reduce_forward(call, x, host)
            if gl is None:
                out = xp.zeros(xa.shape, dtype=xa.dtype)
            else:
                sh = _state.shift(xw, gl.m[:, None], xp, needs_twosum=needs_twosum)
                st = State(gl.m, xp.full_like(gl.k, -1), gl.s)
                out = _state.log_probs(sh, st, xp) if log else _probs(xw, gl, xp, needs_twosum)
                out = _compute.round_to(out, xa, xp)
        ctx.call, ctx.gl, ctx.log = call, gl, log
        ctx.save_for_backward(x)
        return _tensor(out, x.device)

    @staticmethod
    @_first_derivative(None)
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        r"""The single-process VJPs' forms, which do not cancel at the row's max ``k``: three all-reduces of ``N``.

        ``k``, the row's first max over every rank, is one all-reduce MIN;
        softmax needs ``g_k`` and then ``sum_{i != k} (g_i - g_k) p_i``,
        log-softmax ``sum(g)`` and ``sum_{i != k} g_i`` (one SUM of both).
        """
        (x,) = ctx.saved_tensors
        host = _on_host(x)
        with _quiet(host):
            xp = npx if host else tx
            xa, ga, mask = _arrays(host, x, g, ctx.call.mask)
            if ctx.gl is None:
                return _tensor(xp.zeros_like(xa), x.device), None, None
            xw, needs_twosum = _prepare(xa, xp, None, mask)
            gl, comm = ctx.gl, ctx.call.comm
            p = _probs(xw, gl, xp, needs_twosum)
            gw = _reference.live_only(xp.astype(ga, p.dtype), xw, xp, m=gl.m)
            top = xp.where(gl.owner, gl.k, xp.full_like(gl.k, ctx.call.layout.total))
            comm.all_reduce(top, "min")
            cols = xp.arange(xw.shape[1], device=_state._device(xw))[None, :] + ctx.call.layout.start
            at_k = cols == top[:, None]  # on one rank only: the row's first max
            zero = xp.zeros_like(gw)
            if ctx.log:
                sums = xp.stack([xp.sum(gw, axis=-1), xp.sum(xp.where(at_k, zero, gw), axis=-1)])
                comm.all_reduce(sums, "sum")
                gk = xp.sum(xp.where(at_k, gw, zero), axis=-1, keepdims=True)
                s = gl.s[:, None]
                grad = xp.where(at_k, (gk * s - sums[1][:, None]) / (1 + s), gw - p * sums[0][:, None])
            else:
                gk = xp.sum(xp.where(at_k, gw, zero), axis=-1)
                comm.all_reduce(gk, "sum")
                rel = gw - gk[:, None]
                rest = xp.where(at_k, zero, p)
                inner = xp.sum(xp.where(rest != 0, rel * rest, zero), axis=-1)
                comm.all_reduce(inner, "sum")
                grad = p * (rel - inner[:, None])
            grad = _reference.dead_to_zero(grad, xw, xp, m=gl.m)
            return _tensor(_compute.round_to(grad, xa, xp), x.device), None, None


def _matmul_dtype(h: Array, xp: Any) -> Any:
    return xp.float64 if h.dtype == xp.float64 else xp.float32


def _chunk_logits(h: Array, w: Array, b: Array | None, c: slice, xp: Any) -> Array:
    """Logits of this rank's classes ``c``, in the matmul dtype: the only logits ever held."""
    logits = xp.matmul(h, xp.matrix_transpose(w[c]))
    return logits if b is None else logits + b[c][None, :]


def _linear_arrays(layer: Sequence[Tensor | None], host: bool, xp: Any) -> tuple[Array, Array, Array | None]:
    h, w, b = _arrays(host, *layer)
    dt = _matmul_dtype(h, xp)
    return xp.astype(h, dt), xp.astype(w, dt), None if b is None else xp.astype(b, dt)


def _linear_forward(call: _Linear, *layer: Tensor | None) -> tuple[Tensor, Any]:
    host = _on_host(call.h) and call.h.dtype == call.w.dtype
    with _quiet(host):
        xp = npx if host else tx
        h, w, b = _linear_arrays(layer, host, xp)
        aux = _aux(call, host, xp, _compute.compute_dtype(h, xp))
        n, v = h.shape[0], w.shape[0]
        if n == 0:
            return _tensor(xp.zeros((0,) if call.reduction == "none" else (), dtype=h.dtype), call.h.device), None
        part = None
        for c in _chunks(v, call.chunk):
            piece = _linear_part(call, _chunk_logits(h, w, b, c, xp), call.layout.start + c.start, aux, c, xp)
            part = piece if part is None else _state.merge_parts(part, piece, xp)
        if part is None:
            like = xp.zeros((1,), dtype=_compute.compute_dtype(h, xp))
            part = _state.empty_part(n, xp, like, class_target=True, probs=False, smoothing=bool(call.smoothing))
        gl = _exchange(part, call.comm, xp)
        rows, ce, zt = _ce_rows(call, gl, aux, xp, h.dtype == xp.float64 and call.softcap is None)
        loss = _state.reduce(ce, zt, rows.row_weight, rows.alive, call.reduction, xp)
        like = _arrays(host, layer[0])[0]
        return _tensor(_compute.round_to(loss, like, xp), call.h.device), (gl, rows)


def _chunks(v: int, chunk: int) -> Iterator[slice]:
    for c in range(0, v, chunk):
        yield slice(c, min(v, c + chunk))


def _linear_part(call: _Linear, logits: Array, first: int, aux: _Aux, c: slice, xp: Any) -> Parts:
    """A chunk's parts: the accelerator's one pass (:func:`._compute.ce_chunk_parts`) unless a softcap comes first."""
    w = _sub(aux.local_weight, c)
    if call.softcap is None:
        return _compute.ce_chunk_parts(
            logits, first, aux.target, weight=w, smoothing=call.smoothing, needs_twosum=logits.dtype == xp.float64
        )
    parts = []
    for r in _row_blocks(*logits.shape):
        xw, needs_twosum = _prepare(logits[r], xp, call.softcap, None)
        piece = _state.part(
            xw, first, xp, needs_twosum=needs_twosum, y=aux.target[r], w=w, smoothing=bool(call.smoothing)
        )
        parts.append(piece)
    return _state.concat_parts(parts, xp)


def _linear_backward(
    call: _Linear, saved: Any, g: Tensor, *layer: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each chunk's ``G = d loss / d logits`` (float64), then ``d h += G W_c``, ``d W_c = G^T h``, ``d b_c = sum G``.

    ``d h`` is summed over the ranks by one all-reduce: ``hidden`` feeds every
    rank's classes, so its gradient is the sum of every rank's ``G_r W_r``.
    """
    host = _on_host(call.h) and call.h.dtype == call.w.dtype
    with _quiet(host):
        xp = npx if host else tx
        h, w, b = _linear_arrays(layer, host, xp)
        d_h, d_w = xp.zeros_like(h), xp.zeros_like(w)
        d_b = None if b is None else xp.zeros_like(b)
        if saved is not None:
            gl, rows = saved
            aux = _aux(call, host, xp, gl.m.dtype)
            (ga,) = _arrays(host, g)
            scales = _scales(call.reduction, rows.alive, rows.row_weight, xp.astype(ga, gl.m.dtype), xp)
            for c in _chunks(w.shape[0], call.chunk):
                grad = _linear_grad(call, _chunk_logits(h, w, b, c, xp), c, gl, rows, aux, scales, xp)
                d_h += xp.matmul(grad, w[c])
                d_w[c] = xp.matmul(xp.matrix_transpose(grad), h)
                if d_b is not None:
                    d_b[c] = xp.sum(grad, axis=0)
            call.comm.all_reduce(d_h, "sum")  # every rank has rows, or none has: all or none make it
        like = _arrays(host, *layer)
        dev = call.h.device
        d_h, d_w = (_tensor(_compute.round_to(a, lk, xp), dev) for a, lk in ((d_h, like[0]), (d_w, like[1])))
        return d_h, d_w, None if d_b is None else _tensor(_compute.round_to(d_b, like[2], xp), dev)


def _linear_grad(
    call: _Linear, logits: Array, c: slice, gl: _Global, rows: Loss, aux: _Aux, scales: tuple[Array, Array], xp: Any
) -> Array:
    """``d loss / d logits`` of one chunk, rounded once to the matmul dtype."""
    return _grad_rows(call, logits, call.layout.start + c.start, _sub(aux.local_weight, c), gl, rows, aux, scales, xp)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, call: _Linear) -> Tensor:
        loss, saved = _linear_forward(call, h, w, b)
        ctx.call, ctx.saved = call, saved
        ctx.save_for_backward(h, w, b)
        return loss

    @staticmethod
    @_first_derivative("linear_cross_entropy")
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        d_h, d_w, d_b = _linear_backward(ctx.call, ctx.saved, g, *ctx.saved_tensors)
        return d_h, d_w, d_b, None

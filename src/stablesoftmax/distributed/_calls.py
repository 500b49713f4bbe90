"""The validated calls: each public function's arguments checked on this rank, and the header they send."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _checks, _losses
from .. import _dispatch as D
from .._errors import ArgumentError, DtypeError, GradientError, ShapeError
from ._protocol import _CALLS, _NONE, _UNPLACED, _bounds, _Comm, _digest, _fingerprint, _float_bits, _Layout, _local

Array = Any


# --------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------


@dataclass
class _CE:
    """A cross-entropy call, validated on this rank; ``settle`` adds what needs the whole group."""

    comm: _Comm
    rows: D.Rows
    x: Tensor  # (N, C_r), still attached to the caller's graph; for _Linear, hidden (its dtype is the call's)
    target: Tensor  # (N,) int64 global classes, or (N, C_r) probabilities
    probs: bool
    weight: Tensor | None  # (V,)
    mask: Tensor | None  # (N, C_r)
    ignore_index: int
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None
    bounds: tuple[int, ...] | None
    axis: int
    layout: _Layout = field(default_factory=lambda: _UNPLACED)  # set by settle, once the group agreed

    @classmethod
    def build(
        cls,
        comm: _Comm,
        logits: Any,
        target: Any,
        axis: Any,
        weight: Any,
        ignore_index: Any,
        reduction: Any,
        label_smoothing: Any,
        where: Any,
        z_loss: Any,
        softcap: Any,
        bounds: Any,
    ) -> _CE:
        _no_gradient_for(weight, "weight", "cross_entropy")
        _no_gradient_for(target, "target", "cross_entropy")
        arr, xp = _torch_in(logits, "local_logits")
        rows = D.Rows.of(tuple(arr.shape), D.class_axis(axis, arr.ndim, "local_logits"))
        red, ignore, smoothing, z, cap = _losses.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
        mask = D.mask_in(_local(where), arr, xp, tuple(arr.shape))
        tgt = D.like(_local(target), arr, xp, "target")
        probs = D.dtype_name(tgt.dtype) in D.FLOATS and tuple(tgt.shape) == tuple(arr.shape)
        if probs and ignore != -100:
            raise ArgumentError(
                f"ignore_index={ignore} cannot be used with probability targets; mask classes with where= instead."
            )
        if probs:
            _checks.check_probabilities(_host_values(rows.split(tgt, xp)))
        tgt = rows.split(tgt, xp) if probs else _class_indices(tgt, rows, tuple(arr.shape), xp)
        w = _class_weight(weight, arr, xp, "weight")
        return cls(
            comm,
            rows,
            rows.split(arr, xp),
            tgt,
            probs,
            w,
            None if mask is None else rows.split(mask, xp),
            ignore,
            red,
            smoothing,
            z,
            cap,
            _bounds(bounds, comm.size),
            rows.axes[0],
        )

    def header(self) -> dict[str, int]:
        return {
            "rows": self.rows.n,
            "classes": self.rows.k,
            "call": _CALLS.index("cross_entropy"),
            "dtype": _dtype_code(self.x),
            "shape": _digest(self.rows.batch, self.axis),
            "axis": self.axis,
            "reduction": _losses.REDUCTIONS.index(self.reduction),
            "ignore_index": self.ignore_index,
            "label_smoothing": _float_bits(self.smoothing),
            "z_loss": _float_bits(self.z_loss),
            "softcap": _float_bits(self.softcap),
            "target_kind": int(self.probs),
            "weight_length": _NONE if self.weight is None else self.weight.shape[0],
            "where": int(self.mask is not None),
            "bounds": _NONE if self.bounds is None else _digest(self.bounds),
        }

    def device_header(self) -> Tensor:
        return _target_header(None if self.probs else self.target, self.ignore_index, self.weight)

    def settle(self, layout: _Layout) -> None:
        """The checks that need the global class count; their inputs agree on every rank, so do their errors."""
        self.layout = layout
        if layout.total == 0 and self.rows.n:
            raise ShapeError(
                f"local_logits of shape {self.rows.shape} hold no classes on any rank; cross_entropy "
                f"needs at least one."
            )
        _settle_targets(
            self.weight, "weight", None if self.probs else self.target, self.ignore_index, layout, self.rows.batch
        )


def _torch_in(x: Any, name: str) -> tuple[Tensor, Any]:
    if D.library(x) != "torch":
        raise ArgumentError(f"{name} is a {type(x).__name__}; the distributed functions take torch tensors.")
    return D.array_in(x, name)


def _dtype_code(x: Tensor) -> int:
    return D.FLOATS.index(D.dtype_name(x.dtype))


def _class_indices(tgt: Tensor, rows: D.Rows, shape: tuple[int, ...], xp: Any) -> Tensor:
    """Integer class indices of the batch's shape as ``(N,)`` int64; their range is checked once ``V`` is known."""
    kind = D.dtype_name(tgt.dtype)
    if kind in D.FLOATS or not kind.startswith(("int", "uint")):
        raise DtypeError(
            f"target has dtype {kind} and shape {tuple(tgt.shape)}; give integer class indices of "
            f"shape {rows.batch}, or float probabilities of local_logits' shape {shape}."
        )
    if tuple(tgt.shape) != rows.batch:
        raise ShapeError(
            f"target of shape {tuple(tgt.shape)} does not match local_logits of shape {shape} without "
            f"its class axis {rows.axes[0]}: expected {rows.batch}."
        )
    flat: Tensor = xp.reshape(xp.astype(tgt, xp.int64), (rows.n,))
    return flat


def _host_values(t: Tensor) -> Any:
    """A CPU tensor as its NumPy view, for the value checks of :mod:`._compute` (which never sync a device)."""
    return t.detach().numpy() if t.device.type == "cpu" else t


def _no_gradient_for(value: Any, name: str, fn: str) -> None:
    """Refuse by name an argument that requires grad: only the sharded input (and the layer) get gradients here."""
    if isinstance(value, Tensor) and value.requires_grad:
        raise GradientError(
            f"{name} requires grad, but stablesoftmax.distributed.{fn} gives it no gradient (only the sharded "
            "input and the layer's weights get one); pass it detached."
        )


def _class_weight(weight: Any, x: Tensor, xp: Any, name: str) -> Tensor | None:
    """The full class-weight vector, checked (finite, >= 0); its length is checked once ``V`` is known."""
    if weight is None:
        return None
    w: Tensor = D.array_in(D.like(_local(weight), x, xp, name), name)[0]
    if w.ndim != 1:
        raise ShapeError(f"{name} of shape {tuple(w.shape)} must be one vector of per-class weights, shape [V].")
    _checks.check_class_weight(_host_values(w), name)
    return w


def _target_header(target: Tensor | None, ignore_index: int, weight: Tensor | None) -> Tensor:
    """``(low, high, fingerprint)`` of the counted class targets, and the weight's fingerprint, on their device."""
    if target is None or target.numel() == 0:
        low = high = torch.tensor(0, dtype=torch.int64)
    else:
        counted = torch.where(target != ignore_index, target, torch.zeros_like(target))
        low, high = counted.min(), counted.max()
    dev = low.device
    return torch.stack([low, high, _fingerprint(target).to(dev), _fingerprint(weight).to(dev)])


def _settle_targets(
    weight: Tensor | None, name: str, target: Tensor | None, ignore_index: int, layout: _Layout, batch: tuple[int, ...]
) -> None:
    if weight is not None and weight.shape[0] != layout.total:
        raise ShapeError(
            f"{name} of shape {tuple(weight.shape)} must have one entry per class of all ranks: shape "
            f"({layout.total},)."
        )
    if target is None or target.numel() == 0:
        return
    if layout.target_low < 0 or layout.target_high >= layout.total:  # the header saw it; find where, for the message
        _checks.check_targets(target.detach().cpu().numpy(), layout.total, ignore_index, batch)


# --------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# --------------------------------------------------------------------------


@dataclass
class _Reduction:
    """A sharded reduction's call, validated on this rank."""

    comm: _Comm
    name: str
    rows: D.Rows
    x: Tensor  # (N, C_r)
    mask: Tensor | None
    bounds: tuple[int, ...] | None
    keepdims: bool
    layout: _Layout = field(default_factory=lambda: _UNPLACED)

    @classmethod
    def build(cls, comm: _Comm, local: Any, name: str, axis: Any, where: Any, bounds: Any, keepdims: Any) -> _Reduction:
        arr, xp = _torch_in(local, "local_x")
        rows = D.Rows.of(tuple(arr.shape), D.class_axis(axis, arr.ndim, "local_x"))
        if not isinstance(keepdims, bool):
            raise ArgumentError(f"keepdims={keepdims!r} must be True or False.")
        mask = D.mask_in(_local(where), arr, xp, tuple(arr.shape))
        return cls(
            comm,
            name,
            rows,
            rows.split(arr, xp),
            None if mask is None else rows.split(mask, xp),
            _bounds(bounds, comm.size),
            keepdims,
        )

    def header(self) -> dict[str, int]:
        return {
            "rows": self.rows.n,
            "classes": self.rows.k,
            "call": _CALLS.index(self.name),
            "dtype": _dtype_code(self.x),
            "axis": self.rows.axes[0],
            "where": int(self.mask is not None),
            "shape": _digest(self.rows.batch, self.rows.axes),
            "keepdims": int(self.keepdims),
            "bounds": _NONE if self.bounds is None else _digest(self.bounds),
        }

    def device_header(self) -> Tensor:
        return _target_header(None, 0, None)

    def settle(self, layout: _Layout) -> None:
        self.layout = layout


# --------------------------------------------------------------------------
# Linear cross-entropy: each rank walks its own classes in chunks
# --------------------------------------------------------------------------


@dataclass
class _Linear(_CE):
    """A linear cross-entropy call: the :class:`_CE` options, and the layer."""

    h: Tensor = field(kw_only=True)  # keyword-only: _CE's fields before them have defaults
    w: Tensor = field(kw_only=True)
    b: Tensor | None = None
    chunk: int = 1

    @classmethod
    def build_layer(
        cls,
        comm: _Comm,
        hidden: Any,
        weight: Any,
        target: Any,
        bias: Any,
        chunk_size: Any,
        class_weight: Any,
        ignore_index: Any,
        reduction: Any,
        label_smoothing: Any,
        z_loss: Any,
        softcap: Any,
        bounds: Any,
    ) -> _Linear:
        _no_gradient_for(class_weight, "class_weight", "linear_cross_entropy")
        h, xp = _torch_in(hidden, "hidden")
        w, _ = _torch_in(weight, "local_weight")
        if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
            raise ShapeError(
                f"hidden of shape {tuple(h.shape)} and local_weight of shape {tuple(w.shape)} must be "
                f"[N, H] and [V_r, H] with the same H."
            )
        b = None if bias is None else _torch_in(bias, "bias")[0]
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ShapeError(f"bias of shape {tuple(b.shape)} must have one entry per local class: ({w.shape[0]},).")
        rows = D.Rows.of((h.shape[0], w.shape[0]), (1,))
        red, ignore, smoothing, z, cap = _losses.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
        tgt = _class_indices(D.like(_local(target), h, xp, "target"), rows, (h.shape[0], w.shape[0]), xp)
        chunk = max(1, -(-w.shape[0] // 32)) if chunk_size is None else _losses.chunk_size_option(chunk_size)
        return cls(
            comm,
            rows,
            h,
            tgt,
            False,
            _class_weight(class_weight, h, xp, "class_weight"),
            None,
            ignore,
            red,
            smoothing,
            z,
            cap,
            _bounds(bounds, comm.size),
            1,
            h=h,
            w=w,
            b=b,
            chunk=chunk,
        )

    def header(self) -> dict[str, int]:
        out = super().header()
        out.update(
            call=_CALLS.index("linear_cross_entropy"),
            dtype=_dtype_code(self.h),
            hidden=self.h.shape[1],
            bias=int(self.b is not None),
            chunk_size=self.chunk,
            shape=_digest(self.h.shape[0]),
        )
        return out

    def settle(self, layout: _Layout) -> None:
        self.layout = layout
        _settle_targets(self.weight, "class_weight", self.target, self.ignore_index, layout, self.rows.batch)

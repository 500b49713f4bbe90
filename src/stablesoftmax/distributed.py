"""Vocab-parallel losses and reductions on ``torch.distributed``: the class axis sharded over ranks.

Each rank of a process group holds a contiguous block of the classes of every
row, ``local_logits = logits[..., v0:v1]``, blocks in rank order; the blocks
may be uneven, and a rank may hold none. The functions here return, on every
rank, what the single-process functions of :mod:`stablesoftmax` return on the
concatenated logits, to the same ulp goals whatever the number of ranks, and
give each rank the gradient of its own block.

How
---
A rank's block of a row is summed up by the per-slice state of
:mod:`stablesoftmax._state`, ``(m, k, s)``: the max, where it is, and
``sum exp(x_i - m)`` over the other entries. The row's state is the merge of the
ranks' states, made with collectives instead of :func:`._state.merge`'s pairs:

1. **all-gather** of a fixed header (89 int64, 712 bytes, per rank: sizes, options,
   fingerprints of the replicated arguments, and any error this rank found in
   its arguments). It gives the shard bounds, and lets every rank raise the same
   named error for bad input on any rank, rather than leave the others waiting.
2. **all-reduce MAX** of each rank's ``m`` (``N`` values): the row's max ``M``.
3. **all-reduce SUM** of one packed ``(c, N)`` array: each rank's mass rescaled
   to ``M`` -- ``s`` from a rank whose max is ``M`` and ``(1 + s) exp(m - M)``
   from the others, the exponent carrying its TwoSum error as in
   :func:`._state.merge` -- and the number of ranks whose max is ``M``. Each of
   those left its max term (exactly 1) out of ``s``; the row leaves out one, so
   ``S = sum + (count - 1)``, and ``s`` far below one ulp of 1 survives. The
   losses add what they need: the target's logit (only the rank holding it
   sends a non-zero), and for label smoothing and probability targets the sums
   ``sum_c a_c (x_c - m)`` (rebased to ``M``, all terms ``<= 0``, so no
   cancellation), ``sum_c a_c`` and the number of allowed classes.

The results are then the single-process formulas on ``(M, S)``:
:func:`._state.lse`, :func:`._state.log_probs`, :func:`._state.probs`, the
loss ``A log1p(S) - sum_c a_c (x_c - M)`` with ``A = sum_c a_c`` (PyTorch's
global label smoothing, never the shard's) and the same reduction
(:func:`._state.reduce`). Everything is computed in float64
(float32 where the device has none) and rounded once to the input's dtype.
CPU float32/float64 tensors are computed through zero-copy NumPy views, as the
single-process functions compute them, so both round alike.

Backward needs ``M``, ``S`` and the rank's own logits only: the
cross-entropy and ``logsumexp`` gradients make no collective. ``softmax`` and
``log_softmax`` need one all-reduce of ``N`` values in backward (their Jacobian
couples every class of a row), and ``linear_cross_entropy`` one all-reduce of
``d hidden`` (``N x H``), since ``hidden`` feeds every rank's block.

Every rank must call the same function with the same options; a rank that does
not call at all leaves the others waiting for the group's timeout, as any
collective does.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat.numpy as npx
import array_api_compat.torch as tx
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _checks, _compute, _losses, _precision, _reference, _state
from . import _dispatch as D
from ._contract import documented
from ._errors import ArgumentError, AxisError, DtypeError, ShapeError, StableSoftmaxError, TargetError
from ._state import Loss, Parts, State, Sums
from ._typing import ArrayIn

__all__ = ["cross_entropy", "logsumexp", "log_softmax", "softmax", "linear_cross_entropy"]

Array = Any  # a NumPy array or a torch tensor, in the namespace ``xp`` beside it


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


@documented("cross_entropy")
def cross_entropy(
    local_logits: Tensor,
    target: ArrayIn,
    /,
    *,
    group: dist.ProcessGroup | None = None,
    bounds: Sequence[int] | None = None,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    r"""Cross-entropy of logits whose class axis is sharded over a process group.

    Equals :func:`stablesoftmax.cross_entropy` on the concatenation of every
    rank's ``local_logits`` along ``axis``, on every rank:

    .. math:: \ell_n = A_n \operatorname{log1p}(S_n) - \sum_c a_{n,c} (x_{n,c} - M_n),
              \qquad A_n = \sum_c a_{n,c}

    with ``M``, ``S`` the row's state over all ranks and ``a`` the weighted
    target mass (``w_y`` on the target, plus ``w_c s / K`` from smoothing ``s``).

    Parameters
    ----------
    local_logits : torch.Tensor, shape ``[..., C_r, ...]``
        This rank's contiguous block of classes, blocks in the group's rank
        order (``C_r`` may differ between ranks, and may be 0). A DTensor
        sharded on ``axis`` over a 1-D mesh is taken as its local block and
        the mesh's group.
    target : tensor
        Global class indices shaped like the logits without the class axis,
        the same on every rank; or probabilities over this rank's block,
        shaped like ``local_logits``.
    group : ProcessGroup, optional
        The group the classes are sharded over; the default group if None.
    bounds : sequence of int, optional
        The class offsets ``[0, v_1, ..., V]``, one more than the ranks. They
        are checked against the blocks' sizes; they save no collective, since
        the header exchange is also what makes bad input fail on every rank.
    axis, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`stablesoftmax.cross_entropy`.
    weight : array_like, shape ``[V]``, optional
        The full class-weight vector, the same on every rank (as in
        ``torch.nn.functional.cross_entropy``).
    where : tensor of bool, optional
        This rank's block of the mask, broadcast to ``local_logits``' shape.

    Returns
    -------
    torch.Tensor
        The loss, the same on every rank, in ``local_logits``' dtype. Its
        backward gives this rank's ``d loss / d local_logits`` with no
        communication (every rank differentiates its own copy of the loss).

    Notes
    -----
    Collectives per call: one all-gather of the 712-byte header, one all-reduce
    MAX of ``N`` values and one all-reduce SUM of ``c x N`` values in the
    compute dtype, ``c = 3`` for class targets, ``+ 3`` for probability targets
    (and then no target logit: ``c = 5``), ``+ 4`` with label smoothing.
    Backward: none.

    Examples
    --------
    Run under ``torchrun --nproc-per-node 2``; each rank holds half the classes::

        x = full_logits[:, rank * 5:(rank + 1) * 5]          # (N, 5) of (N, 10)
        loss = distributed.cross_entropy(x, target, label_smoothing=0.1)
        loss.backward()                                       # x.grad: this rank's block
    """
    x, comm = _unwrap(local_logits, group, axis)
    call = _agree(
        comm,
        lambda: _CE.build(
            comm, x, target, axis, weight, ignore_index, reduction, label_smoothing, where, z_loss, softcap, bounds
        ),
    )
    loss = _apply(_CrossEntropy, call.x, call)
    return tx.reshape(loss, call.rows.batch) if call.reduction == "none" else loss


def logsumexp(
    local_x: Tensor,
    /,
    *,
    group: dist.ProcessGroup | None = None,
    bounds: Sequence[int] | None = None,
    axis: int = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
) -> Tensor:
    r"""``log(sum(exp(x)))`` over a class axis sharded over a process group, the same on every rank.

    .. math:: \operatorname{lse}(x) = M + \operatorname{log1p}(S)

    Parameters
    ----------
    local_x : torch.Tensor
        This rank's block of the sharded ``axis`` (see :func:`cross_entropy`).
    group, bounds
        As in :func:`cross_entropy`.
    axis : int, default -1
        The sharded axis (one axis).
    keepdims : bool, default False
    where : tensor of bool, optional
        This rank's block of the mask.

    Returns
    -------
    torch.Tensor
        The global logsumexp in ``local_x``' dtype, on every rank. Backward
        gives ``g softmax(x)`` on this rank's block, with no communication.

    Notes
    -----
    Special values are those of :func:`stablesoftmax.logsumexp` (without
    ``b``): ``-inf`` for a slice without mass (all ``-inf``, all masked, or no
    class on any rank), ``+inf`` with a ``+inf`` entry, NaN with an unmasked
    NaN; masked entries are ignored whatever they hold.

    Collectives per call: the header all-gather, one all-reduce MAX of ``N``
    values and one all-reduce SUM of ``2 x N`` values. Backward: none.
    """
    x, comm = _unwrap(local_x, group, axis)
    call = _agree(comm, lambda: _Reduction.build(comm, x, "logsumexp", axis, where, bounds, keepdims))
    out: Tensor = call.rows.reduced(_apply(_LogSumExp, call.x, call), tx, keepdims)
    return out


@documented("log_softmax")
def log_softmax(
    local_x: Tensor,
    /,
    *,
    group: dist.ProcessGroup | None = None,
    bounds: Sequence[int] | None = None,
    axis: int = -1,
    where: ArrayIn | None = None,
) -> Tensor:
    r"""This rank's block of the global ``log_softmax`` over a sharded class axis.

    .. math:: \log\sigma(x)_i = (x_i - M) - \operatorname{log1p}(S)

    computed as the difference of the exact shift and ``log1p(S)``, never as
    ``x - logsumexp(x)``. Parameters as in :func:`logsumexp`; the result has
    ``local_x``' shape and dtype.

    Notes
    -----
    Collectives per call: the header all-gather, one all-reduce MAX of ``N``
    values and one all-reduce SUM of ``2 x N``. Backward: one all-reduce SUM of
    ``N`` values (``sum_c g_c`` over the whole row).
    """
    x, comm = _unwrap(local_x, group, axis)
    call = _agree(comm, lambda: _Reduction.build(comm, x, "log_softmax", axis, where, bounds, False))
    out: Tensor = call.rows.join(_apply(_Softmax, call.x, call, True), tx)
    return out


@documented("softmax")
def softmax(
    local_x: Tensor,
    /,
    *,
    group: dist.ProcessGroup | None = None,
    bounds: Sequence[int] | None = None,
    axis: int = -1,
    where: ArrayIn | None = None,
) -> Tensor:
    r"""This rank's block of the global ``softmax`` over a sharded class axis.

    .. math:: \sigma(x)_i = \frac{e^{x_i - M}}{1 + S}

    Parameters as in :func:`logsumexp`; the result has ``local_x``' shape and
    dtype.

    Notes
    -----
    Collectives per call: the header all-gather, one all-reduce MAX of ``N``
    values and one all-reduce SUM of ``2 x N``. Backward: one all-reduce SUM of
    ``N`` values (``sum_c g_c p_c`` over the whole row).
    """
    x, comm = _unwrap(local_x, group, axis)
    call = _agree(comm, lambda: _Reduction.build(comm, x, "softmax", axis, where, bounds, False))
    out: Tensor = call.rows.join(_apply(_Softmax, call.x, call, False), tx)
    return out


def linear_cross_entropy(
    hidden: Tensor,
    local_weight: Tensor,
    target: ArrayIn,
    /,
    *,
    group: dist.ProcessGroup | None = None,
    bounds: Sequence[int] | None = None,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
    class_weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    r"""``cross_entropy(hidden @ weight.T + bias, target)`` with ``weight``'s rows sharded over a process group.

    No rank forms even its own ``[N, V_r]`` logits: each rank walks its
    classes in chunks of ``chunk_size``, as
    :func:`stablesoftmax.linear_cross_entropy` does, merging each chunk's
    state into its own with :func:`._state.merge`; the ranks' states are then
    merged as in :func:`cross_entropy`.

    Parameters
    ----------
    hidden : torch.Tensor, shape ``[N, H]``
        The final hidden states, the same on every rank.
    local_weight : torch.Tensor, shape ``[V_r, H]``
        This rank's rows of the output layer (classes ``v_r : v_r + V_r``).
    target : tensor of int, shape ``[N]``
        Global class indices, the same on every rank.
    group, bounds
        As in :func:`cross_entropy`.
    bias : torch.Tensor, shape ``[V_r]``, optional
        This rank's block of the bias.
    chunk_size : int, optional
        Classes per chunk; by default ``ceil(V_r / 32)``.
    class_weight : array_like, shape ``[V]``, optional
        The full class-weight vector (``weight`` is the layer's).
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`stablesoftmax.cross_entropy`.

    Returns
    -------
    torch.Tensor
        The loss, the same on every rank, in ``hidden``'s dtype. The matmuls
        run in float32 for 16-bit and float32 input and in float64 for float64
        input; the states, the loss and ``d loss / d logits`` in float64.
        Backward recomputes each chunk's logits and gives ``d local_weight``,
        ``d bias`` of this rank and the full ``d hidden``.

    Notes
    -----
    Collectives per call: the header all-gather, one all-reduce MAX of ``N``
    values, one all-reduce SUM of ``c x N`` (``c = 3``, ``+ 4`` with label
    smoothing). Backward: one all-reduce SUM of ``d hidden`` (``N x H``, in the
    matmul dtype), the sum of every rank's ``G_r W_r``.
    """
    comm = _comm(group)
    call = _agree(
        comm,
        lambda: _Linear.build_layer(
            comm,
            hidden,
            local_weight,
            target,
            bias,
            chunk_size,
            class_weight,
            ignore_index,
            reduction,
            label_smoothing,
            z_loss,
            softcap,
            bounds,
        ),
    )
    return _apply(_LinearCrossEntropy, call.h, call.w, call.b, call)


# --------------------------------------------------------------------------
# The group, and the header every rank checks before the exchange
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Comm:
    """A process group and this process's place in it."""

    group: Any
    rank: int
    size: int
    device: torch.device  # where the header travels: the current CUDA device for NCCL

    def all_reduce(self, a: Array, op: str) -> None:
        """In place, on a NumPy array (through its tensor view) or a tensor."""
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)


def _comm(group: Any) -> _Comm:
    """The group, or a named error where there is none to exchange through."""
    if not dist.is_available():
        raise ArgumentError("group: this PyTorch build has no torch.distributed; the distributed functions need it.")
    if not dist.is_initialized():
        raise ArgumentError(
            f"group={group!r}: the default process group is not initialised; call "
            f"torch.distributed.init_process_group first."
        )
    g = dist.group.WORLD if group is None else group
    try:
        rank, size, backend = dist.get_rank(g), dist.get_world_size(g), str(dist.get_backend(g))
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ArgumentError(f"group={group!r} is not a usable process group ({exc}).") from None
    if rank < 0:
        raise ArgumentError(f"group={group!r}: this process (global rank {dist.get_rank()}) is not a member of it.")
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
    return _Comm(g, rank, size, device)


def _unwrap(x: Any, group: Any, axis: Any) -> tuple[Any, _Comm]:
    """A DTensor sharded on ``axis`` over a 1-D mesh becomes its local block and the mesh's group."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor exists (and the import is slow)
    if dtensor is None or not isinstance(x, dtensor.DTensor):
        return x, _comm(group)
    place = x.placements
    ok = x.device_mesh.ndim == 1 and isinstance(place[0], dtensor.Shard) and D.is_int(axis)
    if not ok or getattr(place[0], "dim", 0) % x.ndim != int(axis) % x.ndim:
        raise ArgumentError(
            f"local_logits is a DTensor placed {tuple(place)} on a {x.device_mesh.ndim}-D mesh; it "
            f"must be Shard({axis}) over a 1-D mesh, or pass its .to_local() block and the group."
        )
    if group is not None and group is not x.device_mesh.get_group():
        raise ArgumentError("group differs from the DTensor's mesh group; pass group=None with a DTensor.")
    return x.to_local(), _comm(x.device_mesh.get_group())


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Tensor:
    out: Tensor = fn.apply(*args)  # type: ignore[no-untyped-call]
    return out


def _local(a: Any) -> Any:
    """An auxiliary argument given as a DTensor (a replicated target, a sharded mask) as its local tensor."""
    return a.to_local() if type(a).__name__ == "DTensor" and hasattr(a, "to_local") else a


_FIELDS = (
    "error",
    "rows",
    "classes",
    "target_low",
    "target_high",
    "message_bytes",
    # every rank must agree on the fields below
    "call",
    "dtype",
    "shape",
    "axis",
    "reduction",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "target_kind",
    "target",
    "weight",
    "weight_length",
    "where",
    "bounds",
    "chunk_size",
    "hidden",
    "bias",
    "keepdims",
)
_AGREED = _FIELDS[_FIELDS.index("call") :]
_MESSAGE = 64  # int64 slots (512 bytes) of the first error's message
_ON_DEVICE = ("target_low", "target_high", "target", "weight")  # computed where the arrays live: no sync
_CALLS = ("cross_entropy", "logsumexp", "log_softmax", "softmax", "linear_cross_entropy")
_KINDS = ("class indices", "probabilities")
_ERRORS = (StableSoftmaxError, ArgumentError, AxisError, ShapeError, TargetError, DtypeError)
_NONE = -(2**63)  # an option that is None
_NAMES = {
    "shape": "the shape outside the class axis",
    "target": "target (class indices must be the same on every rank)",
    "weight": "the class weights (the full vector, the same on every rank)",
    "hidden": "the hidden size H",
    "where": "whether where= is given",
    "bias": "whether bias= is given",
    "target_kind": "the kind of target",
}


@dataclass(frozen=True)
class _Layout:
    """Where this rank's classes sit among the group's: ``offsets[r] : offsets[r + 1]`` on rank ``r``."""

    offsets: tuple[int, ...]
    rank: int
    target_low: int = 0  # the smallest and largest counted class target (the same on every rank)
    target_high: int = 0

    @property
    def start(self) -> int:
        return self.offsets[self.rank]

    @property
    def total(self) -> int:
        return self.offsets[-1]


_UNPLACED = _Layout((0,), 0)


def _agree(comm: _Comm, build: Callable[[], Any]) -> Any:
    """Validate this rank's call, exchange headers, and raise the same error on every rank or none.

    Any exception while validating is caught and sent in the header rather
    than raised at once: a rank that raised before the exchange would leave
    the others waiting in it for ever.
    """
    try:
        call = build()
        head, dev, error = _header(call.header(), None), call.device_header(), None
    except Exception as exc:  # noqa: BLE001 -- carried to every rank, and re-raised here below
        call, head, dev, error = None, _header({}, exc), None, exc
    table = _exchange_headers(comm, head, dev)
    _raise_first_error(table, comm, error)
    _raise_disagreement(table)
    call.settle(_layout(table, comm, call.bounds))
    return call


def _header(ints: dict[str, int], error: BaseException | None) -> np.ndarray:
    """This rank's header: its fields, or (never failing) the error it found and the start of its message."""
    head = np.zeros(len(_FIELDS) + _MESSAGE, np.int64)
    for name, value in ints.items():
        head[_FIELDS.index(name)] = value  # an int beyond int64 raises here, inside _agree's try
    if error is not None:
        head[0] = _error_code(error)
        text = str(error).encode()[: 8 * _MESSAGE]
        head[_FIELDS.index("message_bytes")] = len(text)
        head[len(_FIELDS) :] = np.frombuffer(text.ljust(8 * _MESSAGE, b"\0"), "<i8")
    return head


def _exchange_headers(comm: _Comm, head: np.ndarray, dev: Tensor | None) -> np.ndarray:
    """One all-gather of every rank's header: ``(size, len(_FIELDS) + _MESSAGE)`` int64 on the host."""
    mine = torch.from_numpy(head).to(comm.device)
    if dev is not None:
        mine[[_FIELDS.index(n) for n in _ON_DEVICE]] = dev.to(comm.device)
    out = [torch.empty_like(mine) for _ in range(comm.size)]
    dist.all_gather(out, mine, group=comm.group)
    return torch.stack(out).cpu().numpy()


def _error_code(error: BaseException) -> int:
    for i, cls in sorted(enumerate(_ERRORS), key=lambda p: -len(p[1].__mro__)):  # the most derived class first
        if isinstance(error, cls):
            return i + 1
    return len(_ERRORS) + 1


def _raise_first_error(table: np.ndarray, comm: _Comm, own: BaseException | None) -> None:
    """A rank that found an error raises it; the others raise its class and message, naming the rank."""
    bad = np.flatnonzero(table[:, 0])
    if own is not None:
        raise own
    if not len(bad):
        return
    r = int(bad[0])
    code, size = int(table[r, 0]), int(table[r, _FIELDS.index("message_bytes")])
    text = table[r, len(_FIELDS) :].astype("<i8").tobytes()[:size].decode(errors="ignore")
    if code <= len(_ERRORS):
        raise _ERRORS[code - 1](f"{text} (on rank {r} of the group)")
    raise ArgumentError(f"rank {r} of the group failed before the exchange: {text}")


def _raise_disagreement(table: np.ndarray) -> None:
    """Ranks that hold different numbers of rows, or pass different options, get a named error each."""
    rows = table[:, _FIELDS.index("rows")]
    if (rows != rows[0]).any():
        r = int(np.argmax(rows != rows[0]))
        raise ShapeError(
            f"rank 0 holds {rows[0]} rows and rank {r} holds {rows[r]}; every rank holds the same rows "
            f"(only the class axis is sharded)."
        )
    for name in _AGREED:
        col = table[:, _FIELDS.index(name)]
        if (col != col[0]).any():
            r = int(np.argmax(col != col[0]))
            what = _NAMES.get(name, name)
            if name in ("shape", "target", "weight", "bounds"):
                raise ArgumentError(
                    f"ranks disagree on {what}: rank 0 and rank {r} pass different values; every "
                    f"rank of the group must pass the same."
                )
            raise ArgumentError(
                f"ranks disagree on {what}: rank 0 has {_decode(name, col[0])} and rank {r} has "
                f"{_decode(name, col[r])}; every rank of the group must pass the same."
            )


def _decode(name: str, v: int) -> Any:
    if v == _NONE:
        return None
    if name in ("label_smoothing", "z_loss", "softcap"):
        return struct.unpack("<d", struct.pack("<q", int(v)))[0]
    codes = {"call": _CALLS, "dtype": D.FLOATS, "reduction": _losses.REDUCTIONS, "target_kind": _KINDS}.get(name)
    return repr(codes[int(v)]) if codes is not None and 0 <= v < len(codes) else int(v)


def _layout(table: np.ndarray, comm: _Comm, bounds: tuple[int, ...] | None) -> _Layout:
    sizes = table[:, _FIELDS.index("classes")]
    offsets = (0, *(int(v) for v in np.cumsum(sizes)))
    if bounds is not None and bounds != offsets:
        r = next(i for i in range(comm.size) if bounds[i + 1] - bounds[i] != sizes[i])
        raise ShapeError(
            f"bounds={list(bounds)} give rank {r} {bounds[r + 1] - bounds[r]} classes, but it holds "
            f"{sizes[r]}; the blocks' sizes give the offsets {list(offsets)}."
        )
    low, high = (int(table[0, _FIELDS.index(n)]) for n in ("target_low", "target_high"))
    return _Layout(offsets, comm.rank, low, high)


def _bounds(bounds: Any, size: int) -> tuple[int, ...] | None:
    if bounds is None:
        return None
    ok = isinstance(bounds, Sequence) and len(bounds) == size + 1 and all(D.is_int(b) for b in bounds)
    if not ok or bounds[0] != 0 or any(b > c for b, c in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ArgumentError(
            f"bounds={bounds!r} must be {size + 1} non-decreasing ints starting at 0: the class "
            f"offsets [0, v_1, ..., V] of the {size} ranks."
        )
    return tuple(int(b) for b in bounds)


def _float_bits(v: float | None) -> int:
    return _NONE if v is None else int(struct.unpack("<q", struct.pack("<d", float(v)))[0])


def _digest(*parts: Any) -> int:
    """A fingerprint of host values that every process computes alike (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=7).digest(), "little")


def _fingerprint(t: Tensor | None) -> Tensor:
    """A cheap fingerprint of a tensor's bits, computed on its device (no host sync)."""
    if t is None:
        return torch.tensor(_NONE, dtype=torch.int64)
    flat = t.detach().reshape(-1)
    if flat.dtype.is_floating_point:
        flat = flat.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    flat = torch.remainder(flat.to(torch.int64), 65521)  # every bit counts, and the sum below cannot overflow
    pos = torch.remainder(torch.arange(flat.numel(), device=flat.device), 1021) + 1
    return (flat * pos).sum() + flat.numel()


# --------------------------------------------------------------------------
# One rank's part of each row, and the exchange that merges the parts
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Global:
    """A row's parts over every rank, as the exchange left them.

    ``m`` is the max (NaN on a row holding NaN), ``s`` the compensated sum; the
    sums are relative to ``m``. ``owner`` and ``k``: whether this rank holds the
    max, and where its own first max is.
    """

    m: Array
    s: Array
    xy: Array | None
    q: Sums | None
    u: Sums | None
    count: Array | None
    owner: Array
    k: Array

    def parts(self, xp: Any) -> Parts:
        """The row's :class:`._state.Parts`, its max position only where this rank holds it (else -1)."""
        k = xp.where(self.owner, self.k, xp.full_like(self.k, -1))
        return Parts(self.m, k, self.s, self.xy, self.q, self.u, self.count)


def _host_part(x: np.ndarray, first: int, y: np.ndarray | None) -> Parts:
    """The parts of raw CPU rows (no smoothing, mask or softcap) from the host's accelerator: one pass."""
    st = _compute.host_state(x)
    xy = None if y is None else _state.pick(x, y - first, npx).astype(np.float64)
    return Parts(st.m, st.k + first, st.s, xy)


def _exchange(part: Parts, comm: _Comm, xp: Any) -> _Global:
    """Every rank's part merged into the row's state: one all-reduce MAX and one all-reduce SUM.

    Rank ``r`` sends ``s_r`` when its max is the row's, ``(1 + s_r) w_r`` with
    ``w_r = exp(m_r - M)`` otherwise, and whether its max is the row's; each
    such rank left one max term out, so ``S = sum + (count - 1)``.
    """
    big = xp.asarray(part.m, copy=True)
    comm.all_reduce(big, "max")
    owner = part.m == big
    sh = _state.shift(part.m[:, None], big[:, None], xp, exact=True)
    w = _state.corrected(xp.exp(sh.d[:, 0]), None if sh.err is None else sh.err[:, 0], xp)
    cols = [xp.where(owner, part.s, (1 + part.s) * w), xp.astype(owner, big.dtype)]
    if part.xy is not None:
        cols.append(part.xy)
    for sm in (_state.rebase(part.q, part.m, big, xp), _state.rebase(part.u, part.m, big, xp)):
        cols += [] if sm is None else [sm.d, sm.e, sm.a]
    cols += [] if part.count is None else [part.count]
    packed = xp.stack(cols)
    comm.all_reduce(packed, "sum")
    s = xp.where(big == -xp.inf, xp.zeros_like(big), packed[0] + (packed[1] - 1))
    big = xp.where(xp.isnan(s), xp.full_like(big, xp.nan), big)  # a NaN anywhere reached s; MAX may have lost it
    rest = iter(range(2, len(cols)))
    xy = None if part.xy is None else packed[next(rest)]
    q = None if part.q is None else Sums(*(packed[next(rest)] for _ in range(3)))
    u = None if part.u is None else Sums(*(packed[next(rest)] for _ in range(3)))
    count = None if part.count is None else packed[next(rest)]
    return _Global(big, s, xy, q, u, count, owner, part.k)


def _probs(x: Array, gl: _Global, xp: Any, exact: bool) -> Array:
    return _state.block_probs(x, gl.m, gl.s, xp, exact=exact)


# --------------------------------------------------------------------------
# Computing on this rank: NumPy views on the CPU, as the single-process path does
# --------------------------------------------------------------------------

_BLOCK = 1 << 18  # entries per row block of the float64 temporaries (2 MiB each)


def _on_host(x: Tensor) -> bool:
    """CPU float32/float64 tensors are computed through NumPy views when the kernels run, as
    :mod:`._backends.torch` computes them, so that both paths round alike."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _compute.host_kernels_serve()


def _arrays(host: bool, *ts: Tensor | None) -> list[Any]:
    if host:
        return [None if t is None else t.detach().numpy() for t in ts]
    return [None if t is None else t.detach() for t in ts]


@contextlib.contextmanager
def _quiet(host: bool) -> Iterator[None]:
    """NumPy warns on ``inf - inf`` and ``exp(-inf)``, which the formulas expect and mask (see _backends.plain)."""
    if host:
        with np.errstate(all="ignore"):
            yield
    else:
        yield


def _tensor(a: Array, device: torch.device) -> Tensor:
    if isinstance(a, Tensor):
        return a
    arr = np.asarray(a)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr)
    return torch.from_numpy(arr).to(device)


def _needs_twosum(x: Array, xp: Any) -> bool:
    return _compute.widen(x, xp)[1]


def _row_blocks(n: int, k: int) -> Iterator[slice]:
    step = max(1, _BLOCK // max(k, 1))
    for r in range(0, n, step):
        yield slice(r, min(n, r + step))


def _prepare(x: Array, xp: Any, softcap: float | None, mask: Array | None) -> tuple[Array, bool]:
    """``x`` in the compute dtype, softcapped, then masked: :func:`._compute.ce_problem`'s order."""
    xw, exact = _compute.widen(x, xp)
    if softcap is not None:
        xw, exact = softcap * xp.tanh(xw / softcap), False
    return _precision.masked(xw, mask, xp), exact


def _sub(a: Array | None, r: slice) -> Array | None:
    return None if a is None else a[r]


def _scales(reduction: str, alive: Array, wy: Array, g: Array, xp: Any) -> tuple[Array, Array]:
    """:func:`._state.row_scales`: the reduction's factors of the cotangent, per row."""
    return _state.row_scales(reduction, alive, wy, g, xp, dtype=wy.dtype)


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
        arr, xp = _torch_in(logits, "local_logits")
        rows = D.Rows.of(tuple(arr.shape), D.class_axis(axis, arr.ndim, "local_logits"))
        red = D.choice(reduction, "reduction", _losses.REDUCTIONS)
        smoothing, z, cap = _losses.check_options(label_smoothing, z_loss, softcap)
        ignore = D.int_option(ignore_index, "ignore_index", "an int (the class index to ignore, -100 by default)")
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


def _class_weight(weight: Any, x: Tensor, xp: Any, name: str) -> Tensor | None:
    """The full class-weight vector, checked (finite, >= 0); its length is checked once ``V`` is known."""
    if weight is None:
        return None
    w: Tensor = D.array_in(D.like(_local(weight), x, xp, name), name)[0]
    if w.ndim != 1:
        raise ShapeError(f"{name} of shape {tuple(w.shape)} must be one vector of per-class weights, shape [V].")
    _compute.check_class_weight(_host_values(w))
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
        _compute.check_targets(target.detach().cpu().numpy(), layout.total, ignore_index, batch)


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
    if _precision.is_numpy(xp) and k and not (call.probs or call.smoothing or call.mask is not None or call.softcap):
        return _host_part(x, first, aux.target)
    parts = []
    for r in _row_blocks(n, k):
        xw, exact = _prepare(x[r], xp, call.softcap, _sub(aux.mask, r))
        parts.append(
            _state.part(
                xw,
                first,
                xp,
                exact=exact,
                y=None if call.probs else aux.target[r],
                q=_sub(aux.target, r) if call.probs else None,
                w=aux.local_weight,
                allowed=_sub(aux.mask, r),
                smoothing=bool(call.smoothing),
            )
        )
    return _state.concat_parts(parts, xp)


def _ce_rows(call: _CE, gl: _Global, aux: _Aux, xp: Any, exact: bool) -> tuple[Loss, Array, Array | None]:
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
        exact=exact,
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
        exact = _needs_twosum(xa, xp) and call.softcap is None
        rows, ce, zt = _ce_rows(call, gl, aux, xp, exact)
        loss = _state.reduce(ce, zt, rows.wy, rows.alive, call.reduction, xp)
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
        scales = _scales(call.reduction, rows.alive, rows.wy, xp.astype(ga, gl.m.dtype), xp)
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
    """
    out = xp.empty(x.shape, dtype=x.dtype, device=_state._device(x))
    parts = gl.parts(xp)
    for r in _row_blocks(*x.shape):
        xw, exact = _prepare(x[r], xp, call.softcap, _sub(aux.mask, r))
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
            exact=exact,
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
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _ce_backward(ctx.call, ctx.saved, x, g), None


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


def _reduce_forward(call: _Reduction, x: Tensor, host: bool) -> tuple[Any, Array, Array, _Global | None, bool]:
    """``(xp, rows, prepared rows, state, exact)`` of a reduction, after the exchange (no state for no rows)."""
    xp = npx if host else tx
    xa, mask = _arrays(host, x, call.mask)
    xw, exact = _prepare(xa, xp, None, mask)
    if call.rows.n == 0:
        return xp, xa, xw, None, exact
    parts = [_state.part(xw[r], call.layout.start, xp, exact=exact) for r in _row_blocks(*xw.shape)]
    return xp, xa, xw, _exchange(_state.concat_parts(parts, xp), call.comm, xp), exact


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
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        host = _on_host(x)
        with _quiet(host):
            xp = npx if host else tx
            xa, ga, mask = _arrays(host, x, g, ctx.call.mask)
            if ctx.gl is None:
                return _tensor(xp.zeros_like(xa), x.device), None
            xw, exact = _prepare(xa, xp, None, mask)
            p = _probs(xw, ctx.gl, xp, exact)
            grad = _reference.dead_to_zero(p * xp.astype(ga, p.dtype)[:, None], xw, xp, m=ctx.gl.m)
            return _tensor(_compute.round_to(grad, xa, xp), x.device), None


class _Softmax(torch.autograd.Function):
    """This rank's block of softmax (``log=False``) or log_softmax; backward makes one all-reduce."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: _Reduction, log: bool) -> Tensor:
        host = _on_host(x)
        with _quiet(host):
            xp, xa, xw, gl, exact = _reduce_forward(call, x, host)
            if gl is None:
                out = xp.zeros(xa.shape, dtype=xa.dtype)
            else:
                sh = _state.shift(xw, gl.m[:, None], xp, exact=exact)
                st = State(gl.m, xp.full_like(gl.k, -1), gl.s)
                out = _state.log_probs(sh, st, xp) if log else _probs(xw, gl, xp, exact)
                out = _compute.round_to(out, xa, xp)
        ctx.call, ctx.gl, ctx.log = call, gl, log
        ctx.save_for_backward(x)
        return _tensor(out, x.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        r"""``g - p sum(g)`` (log) or ``p (g - <g, p>)``: the row's sum is one all-reduce of ``N`` values."""
        (x,) = ctx.saved_tensors
        host = _on_host(x)
        with _quiet(host):
            xp = npx if host else tx
            xa, ga, mask = _arrays(host, x, g, ctx.call.mask)
            if ctx.gl is None:
                return _tensor(xp.zeros_like(xa), x.device), None, None
            xw, exact = _prepare(xa, xp, None, mask)
            p = _probs(xw, ctx.gl, xp, exact)
            gw = _reference.live_only(xp.astype(ga, p.dtype), xw, xp, m=ctx.gl.m)
            total = xp.sum(gw if ctx.log else gw * p, axis=-1)
            ctx.call.comm.all_reduce(total, "sum")
            grad = gw - p * total[:, None] if ctx.log else p * (gw - total[:, None])
            grad = _reference.dead_to_zero(grad, xw, xp, m=ctx.gl.m)
            return _tensor(_compute.round_to(grad, xa, xp), x.device), None, None


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
        red = D.choice(reduction, "reduction", _losses.REDUCTIONS)
        smoothing, z, cap = _losses.check_options(label_smoothing, z_loss, softcap)
        ignore = D.int_option(ignore_index, "ignore_index", "an int (the class index to ignore, -100 by default)")
        tgt = _class_indices(D.like(_local(target), h, xp, "target"), rows, (h.shape[0], w.shape[0]), xp)
        chunk = max(1, -(-w.shape[0] // 32)) if chunk_size is None else _chunk_size(chunk_size)
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


def _chunk_size(value: Any) -> int:
    if not D.is_int(value) or value < 1:
        raise ArgumentError(f"chunk_size={value!r} is not allowed; it must be a whole number >= 1.")
    return int(value)


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
        loss = _state.reduce(ce, zt, rows.wy, rows.alive, call.reduction, xp)
        like = _arrays(host, layer[0])[0]
        return _tensor(_compute.round_to(loss, like, xp), call.h.device), (gl, rows)


def _chunks(v: int, chunk: int) -> Iterator[slice]:
    for c in range(0, v, chunk):
        yield slice(c, min(v, c + chunk))


def _linear_part(call: _Linear, logits: Array, first: int, aux: _Aux, c: slice, xp: Any) -> Parts:
    if _precision.is_numpy(xp) and not (call.smoothing or call.softcap):
        return _host_part(logits, first, aux.target)
    w = _sub(aux.local_weight, c)
    parts = []
    for r in _row_blocks(*logits.shape):
        xw, exact = _prepare(logits[r], xp, call.softcap, None)
        piece = _state.part(xw, first, xp, exact=exact, y=aux.target[r], w=w, smoothing=bool(call.smoothing))
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
            scales = _scales(call.reduction, rows.alive, rows.wy, xp.astype(ga, gl.m.dtype), xp)
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
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        d_h, d_w, d_b = _linear_backward(ctx.call, ctx.saved, g, *ctx.saved_tensors)
        return d_h, d_w, d_b, None

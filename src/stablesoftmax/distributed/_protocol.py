"""The protocol between ranks: the group, the header every rank sends first, and the agreement on it.

Every call starts with one all-gather of a fixed header (sizes, options, fingerprints of the
replicated arguments, and any error a rank found), so that every rank raises the same named error
for bad input on any rank, and learns the shard bounds. See the package docstring.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .. import _dispatch as D
from .. import _losses
from .._errors import ArgumentError, AxisError, DtypeError, ShapeError, StableSoftmaxError, TargetError

Array = Any


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
        ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}
        dist.all_reduce(t, op=ops[op], group=self.group)


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

"""The exchange: each rank's parts merged over the group by one all-reduce MAX and one SUM; where ranks compute.

CPU float32/float64 tensors are computed through zero-copy NumPy views when the host's kernels run
(as the single-process functions compute them, so both round alike); anything else in torch ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _compute, _precision, _state
from .._state import Parts, Sums
from ._protocol import _Comm

Array = Any


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


def _exchange(part: Parts, comm: _Comm, xp: Any) -> _Global:
    """Every rank's part merged into the row's state: one all-reduce MAX and one all-reduce SUM.

    Rank ``r`` sends ``s_r`` when its max is the row's, ``(1 + s_r) w_r`` with
    ``w_r = exp(m_r - M)`` otherwise, and whether its max is the row's; each
    such rank left one max term out, so ``S = sum + (count - 1)``.
    """
    big = xp.asarray(part.m, copy=True)
    comm.all_reduce(big, "max")
    owner = part.m == big
    sh = _state.shift(part.m[:, None], big[:, None], xp, needs_twosum=True)
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


def _probs(x: Array, gl: _Global, xp: Any, needs_twosum: bool) -> Array:
    return _state.block_probs(x, gl.m, gl.s, xp, needs_twosum=needs_twosum)


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
    xw, needs_twosum = _compute.widen(x, xp)
    if softcap is not None:
        xw, needs_twosum = softcap * xp.tanh(xw / softcap), False
    return _precision.masked(xw, mask, xp), needs_twosum


def _sub(a: Array | None, r: slice) -> Array | None:
    return None if a is None else a[r]


def _scales(reduction: str, alive: Array, row_weight: Array, g: Array, xp: Any) -> tuple[Array, Array]:
    """:func:`._state.row_scales`: the reduction's factors of the cotangent, per row."""
    return _state.row_scales(reduction, alive, row_weight, g, xp, dtype=row_weight.dtype)

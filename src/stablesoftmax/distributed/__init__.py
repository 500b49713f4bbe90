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
``log_softmax`` need a few all-reduces of ``N`` values in backward (their Jacobian
couples every class of a row, and the row's max position is found first, so that
the gradient at the max does not cancel), and ``linear_cross_entropy`` one all-reduce of
``d hidden`` (``N x H``), since ``hidden`` feeds every rank's block.

Every rank must call the same function with the same options; a rank that does
not call at all leaves the others waiting for the group's timeout, as any
collective does.

The package's rooms: :mod:`._protocol` (the group and the header every rank
sends first), :mod:`._calls` (each call's arguments, validated on its rank),
:mod:`._exchange` (the parts merged over the group, and where a rank
computes) and :mod:`._autograd` (the forward and backward of each function).
The parts, the finish and the gradient are :mod:`stablesoftmax._state`'s,
the same as every single-process path's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat.torch as tx
import torch.distributed as dist
from torch import Tensor

from .._contract import documented
from .._typing import ArrayIn
from ._autograd import _CrossEntropy, _LinearCrossEntropy, _LogSumExp, _Softmax
from ._calls import _CE, _Linear, _Reduction
from ._protocol import _agree, _apply, _comm, _unwrap

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
    values and one all-reduce SUM of ``2 x N``. Backward: one all-reduce MIN of
    ``N`` positions (the row's first max) and one all-reduce SUM of ``2 x N``
    values (``sum_c g_c``, and the same without the max's).
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
    values and one all-reduce SUM of ``2 x N``. Backward: one all-reduce MIN of
    ``N`` positions (the row's first max) and two all-reduces SUM of ``N``
    values (``g`` at the max, then ``sum_{c != k} (g_c - g_k) p_c``), so that the
    gradient at the max does not cancel.
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

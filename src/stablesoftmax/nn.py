"""PyTorch modules over the stablesoftmax functions, drop-in for those of ``torch.nn``.

:class:`CrossEntropyLoss`, :class:`NLLLoss`, :class:`BCEWithLogitsLoss`,
:class:`LogSoftmax` and :class:`Softmax` subclass the ``torch.nn`` module of
the same name: the same constructor arguments, defaults, attributes and
``state_dict`` keys (``weight`` and ``pos_weight`` are buffers), the legacy
``size_average``/``reduce`` arguments mapped by PyTorch's own code, the same
layout (classes on axis 1 of ``(N, C, d1, ...)``, axis 0 of an unbatched
``(C,)`` input). Only ``forward`` differs: it calls
:func:`stablesoftmax.cross_entropy` and its siblings, which give the same
results except where PyTorch's have no answer, and are more accurate in
float32 and 16-bit. A batch whose targets are all ``ignore_index`` gives a
``"mean"`` loss of 0 with zero gradient, not NaN (pytorch#70348).

:class:`CrossEntropyLoss` adds ``z_loss``, ``softcap`` and ``where``.
:class:`LinearCrossEntropyLoss` owns no parameters: it takes the hidden states
and the output layer's weight and bias at each call and never forms the
logits (:func:`stablesoftmax.linear_cross_entropy`).

The module needs PyTorch (``pip install 'stablesoftmax[torch]'``), so it is
imported by name and is not part of ``stablesoftmax.__all__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from stablesoftmax import (
    ArgumentError,
    ShapeError,
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
    log_softmax,
    nll_loss,
    softmax,
)

__all__ = [
    "CrossEntropyLoss",
    "NLLLoss",
    "BCEWithLogitsLoss",
    "LogSoftmax",
    "Softmax",
    "LinearCrossEntropyLoss",
]

_F = TypeVar("_F", bound=Callable[..., Any])


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    r"""``torch.nn.CrossEntropyLoss`` computed by :func:`stablesoftmax.cross_entropy`.

    .. math:: \ell_n = w_{y_n}\big(\operatorname{lse}(x_n) - x_{n, y_n}\big)

    Parameters
    ----------
    weight : Tensor, shape ``[C]``, optional
        Per-class weights, kept as a buffer.
    size_average, reduce : bool, optional
        PyTorch's deprecated arguments, mapped to ``reduction`` as PyTorch does.
    ignore_index : int, default -100
        Class-index targets equal to it count for nothing.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's convention: the target becomes ``(1 - a) q + a / K``.
    z_loss : float, default 0.0
        Weight of the PaLM z-loss ``logsumexp(x)**2``, >= 0.
    softcap : float, optional
        Gemma 2 soft-capping ``softcap * tanh(x / softcap)`` of the logits, > 0.
    where : Tensor of bool, optional
        A mask kept as a buffer, broadcast against the input (NumPy rules): a
        masked class has probability 0. For a per-class mask of an
        ``(N, C, d1, ...)`` input give it shape ``(C, 1, ..., 1)``.

    Notes
    -----
    The input is ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``; the target holds
    class indices (int64, without the class axis) or probabilities (float,
    the input's shape), as in PyTorch. The options are checked when the
    module is built, ``weight``'s shape at the first call. The gradient
    reaches the input only: a target that requires grad is refused, where
    PyTorch would differentiate probability targets too.

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import CrossEntropyLoss
    >>> x = torch.tensor([[10.0, 92.0, 30.0, -50.0, 40.0]])
    >>> CrossEntropyLoss()(x, torch.tensor([3]))
    tensor(142.)
    >>> every_target_ignored = torch.tensor([-100])
    >>> torch.nn.CrossEntropyLoss()(x, every_target_ignored), CrossEntropyLoss()(x, every_target_ignored)
    (tensor(nan), tensor(0.))
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        where: Tensor | None = None,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.register_buffer("where", where)
        self.where: Tensor | None
        # The library's own checks, on a 1 x 1 input: a bad option fails here, not at the first batch.
        cross_entropy(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), **self._options())

    def _options(self) -> dict[str, Any]:
        return dict(
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _input_only(target)
        loss: Tensor = cross_entropy(
            input, target, axis=_class_axis(input), weight=self.weight, where=self.where, **self._options()
        )
        return loss

    def extra_repr(self) -> str:
        return _repr(self._options(), weight=self.weight, where=self.where)


class NLLLoss(torch.nn.NLLLoss):
    r"""``torch.nn.NLLLoss`` computed by :func:`stablesoftmax.nll_loss`: ``-w[y] * log_probs[y]``.

    Parameters
    ----------
    weight : Tensor, shape ``[C]``, optional
        Per-class weights, kept as a buffer.
    size_average, reduce : bool, optional
        PyTorch's deprecated arguments, mapped to ``reduction`` as PyTorch does.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import LogSoftmax, NLLLoss
    >>> x = torch.tensor([[10.0, 92.0, 30.0, -50.0, 40.0]])
    >>> NLLLoss()(LogSoftmax(dim=1)(x), torch.tensor([3]))
    tensor(142.)
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction)
        nll_loss(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), **self._options())  # checks them, as above

    def _options(self) -> dict[str, Any]:
        return dict(ignore_index=self.ignore_index, reduction=self.reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        loss: Tensor = nll_loss(input, target, axis=_class_axis(input), weight=self.weight, **self._options())
        return loss

    def extra_repr(self) -> str:
        return _repr(self._options(), weight=self.weight)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    r"""``torch.nn.BCEWithLogitsLoss`` computed by :func:`stablesoftmax.binary_cross_entropy_with_logits`.

    .. math:: \ell = w\,\big[\,p_w\, t\, \operatorname{softplus}(-x) + (1 - t)\, \operatorname{softplus}(x)\big]

    Parameters
    ----------
    weight : Tensor, optional
        Broadcast to the input's shape; kept as a buffer.
    size_average, reduce : bool, optional
        PyTorch's deprecated arguments, mapped to ``reduction`` as PyTorch does.
    reduction : {"mean", "sum", "none"}, default "mean"
    pos_weight : Tensor, optional
        Weight of the positive term: a scalar, or one entry per class along
        the last axis. Kept as a buffer.

    Notes
    -----
    The gradient reaches the input only: a target that requires grad is
    refused, where PyTorch would differentiate it too.

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import BCEWithLogitsLoss
    >>> BCEWithLogitsLoss()(torch.tensor([-200.0]), torch.tensor([1.0]))
    tensor(200.)
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        binary_cross_entropy_with_logits(torch.zeros(1), torch.zeros(1), reduction=self.reduction)  # checks, as above

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _input_only(target)
        return binary_cross_entropy_with_logits(
            input, target, weight=self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return _repr({"reduction": self.reduction}, weight=self.weight, pos_weight=self.pos_weight)


class LogSoftmax(torch.nn.LogSoftmax):
    r"""``torch.nn.LogSoftmax`` computed by :func:`stablesoftmax.log_softmax` along ``dim``.

    Parameters
    ----------
    dim : int
        The axis the distribution is over. Required: PyTorch's implicit
        choice when it is None is deprecated there and refused here.

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import LogSoftmax
    >>> LogSoftmax(dim=-1)(torch.tensor([0.0, -30.0], dtype=torch.float64))[0].item()
    -9.357622968839737e-14
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__(_explicit_dim(dim, "LogSoftmax"))

    def forward(self, input: Tensor) -> Tensor:
        return log_softmax(input, axis=self.dim)


class Softmax(torch.nn.Softmax):
    r"""``torch.nn.Softmax`` computed by :func:`stablesoftmax.softmax` along ``dim``.

    Parameters
    ----------
    dim : int
        The axis the distribution is over. Required: PyTorch's implicit
        choice when it is None is deprecated there and refused here.

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import Softmax
    >>> Softmax(dim=-1)(torch.tensor([0.0, float("-inf")]))
    tensor([1., 0.])
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__(_explicit_dim(dim, "Softmax"))

    def forward(self, input: Tensor) -> Tensor:
        return softmax(input, axis=self.dim)


class LinearCrossEntropyLoss(torch.nn.Module):
    r"""Cross-entropy of ``input @ linear_weight.T + linear_bias``, never forming the logits.

    .. math:: \ell_n = \operatorname{lse}_v(h_n \cdot w_v + b_v) - (h_n \cdot w_{y_n} + b_{y_n})

    The module owns no parameters: the output layer's weight and bias are
    passed at each call (``loss(hidden, model.lm_head.weight, labels)``), so
    it works with any existing layer, tied embeddings included. This differs
    from ``torch.nn.LinearCrossEntropyLoss``, which holds its own ``Linear``.
    Computed by :func:`stablesoftmax.linear_cross_entropy`, one vocabulary
    chunk at a time, on the host.

    Parameters
    ----------
    weight : Tensor, shape ``[C]``, optional
        Per-class weights, kept as a buffer (as in ``torch.nn.CrossEntropyLoss``).
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float, default 0.0
    softcap : float, optional
        As in :class:`CrossEntropyLoss`.
    chunk_size : int, optional
        Classes per chunk; see :func:`stablesoftmax.linear_cross_entropy`.

    Notes
    -----
    ``forward(input, linear_weight, target, linear_bias=None)`` takes
    ``input`` of shape ``[..., H]``, ``linear_weight`` ``[C, H]``, ``target``
    ``[...]`` of class indices and ``linear_bias`` ``[C]``; ``"none"`` gives
    the target's shape. Under ``torch.compile`` the call traces whole,
    backward included: the chunks are custom ops on the tensors' device.

    Examples
    --------
    >>> import torch
    >>> from stablesoftmax.nn import LinearCrossEntropyLoss
    >>> head = torch.nn.Linear(2, 3, bias=False, dtype=torch.float64)
    >>> with torch.no_grad():
    ...     _ = head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    >>> hidden = torch.tensor([[[400.0, -300.0]]], dtype=torch.float64)
    >>> LinearCrossEntropyLoss()(hidden, head.weight, torch.tensor([[0]])).item()  # logits 400, -300, 100
    5.148200222412013e-131

    That is ``log1p(exp(-300) + exp(-700))``: the naive ``lse - x_y`` rounds it to 0.
    """

    def __init__(
        self,
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.weight: Tensor | None
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size
        one = torch.zeros(1, 1)
        linear_cross_entropy(one, one, torch.zeros(1, dtype=torch.int64), **self._options())  # checks them, as above

    def _options(self) -> dict[str, Any]:
        return dict(
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
        )

    def forward(
        self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None = None
    ) -> Tensor:
        lead = tuple(input.shape[:-1])
        if input.ndim < 1 or tuple(target.shape) != lead:
            raise ShapeError(
                f"target of shape {tuple(target.shape)} must be input's shape {tuple(input.shape)} "
                f"without its last (hidden) axis: {lead}."
            )
        loss: Tensor = linear_cross_entropy(
            input.reshape(-1, input.shape[-1]),
            linear_weight,
            target.reshape(-1),
            bias=linear_bias,
            class_weight=self.weight,
            **self._options(),
        )
        return loss.reshape(lead) if self.reduction == "none" else loss

    def extra_repr(self) -> str:
        return _repr(self._options(), weight=self.weight)


def _class_axis(input: Tensor) -> int:
    """PyTorch's layout: classes on axis 1 of ``(N, C, d1, ...)``, on axis 0 of an unbatched ``(C,)``."""
    return 0 if input.ndim == 1 else 1


def _input_only(target: Tensor) -> None:
    """Refuse a target that asks for a gradient: the losses give one to the input only, and none would come."""
    if target.requires_grad and torch.is_grad_enabled():
        raise ArgumentError(
            "target requires grad, but stablesoftmax's losses differentiate their input only (PyTorch's "
            "differentiate a float target too); pass target.detach()."
        )


def _explicit_dim(dim: Any, module: str) -> Any:
    if dim is None:
        raise ArgumentError(
            f"{module}(dim=None) is not allowed: PyTorch's implicit choice of dim is deprecated; pass dim, the axis "
            "the distribution is over (dim=-1 for the last)."
        )
    return dim


def _repr(options: dict[str, Any], **tensors: Tensor | None) -> str:
    """``name=value`` for each option, and each tensor held as ``name=shape``."""
    held = [f"{name}=Tensor{tuple(t.shape)}" for name, t in tensors.items() if t is not None]
    return ", ".join([f"{name}={value!r}" for name, value in options.items()] + held)

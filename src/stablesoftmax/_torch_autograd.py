"""PyTorch autograd for the family: ``loss.backward()`` through our VJPs.

When a function of the family receives a tensor that requires grad (and
grad mode is on), it runs as a ``torch.autograd.Function`` whose forward is
our forward and whose backward is our hand-written VJP. So gradients are
exactly those of :func:`~stablesoftmax.cross_entropy_grad` and siblings:
zero, not NaN, on masked slices where PyTorch's own softmax gives NaN
(pytorch#41508). Only the logits get a gradient; targets, weights and masks
are constants. Second derivatives are not provided.
"""

from __future__ import annotations

from typing import Any

__all__ = ["wants_grad", "apply"]


def wants_grad(x: Any) -> bool:
    """True when ``x`` is a torch tensor that autograd must track."""
    if type(x).__module__.split(".")[0] != "torch" or not getattr(x, "requires_grad", False):
        return False
    import torch

    return torch.is_grad_enabled()


def apply(name: str, x: Any, *args: Any, **options: Any) -> Any:
    """Run function ``name`` on ``x`` (and constant ``args``) under autograd."""
    return _function()(x, name, args, options)


_FUNCTION = None


def _function():
    """The autograd.Function class, built on first use so torch stays optional."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class FamilyFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, name, args, options):
                ctx.save_for_backward(x)
                ctx.name, ctx.args, ctx.options = name, args, options
                return _forward(name)(x.detach(), *args, **options)

            @staticmethod
            @torch.autograd.function.once_differentiable
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return _vjp(ctx.name, x.detach(), g.detach(), ctx.args, ctx.options), None, None, None

        _FUNCTION = FamilyFunction.apply
    return _FUNCTION


def _forward(name: str):
    from . import _losses, _reductions

    return {
        "logsumexp": _reductions.logsumexp,
        "softmax": _reductions.softmax,
        "log_softmax": _reductions.log_softmax,
        "cross_entropy": _losses.cross_entropy,
    }[name]


def _vjp(name: str, x: Any, g: Any, args: tuple, options: dict) -> Any:
    from . import _losses, _reductions

    if name == "cross_entropy":
        return _losses.cross_entropy_grad(x, *args, g=g, **options)
    grad = {"logsumexp": _reductions.logsumexp_grad, "softmax": _reductions.softmax_grad,
            "log_softmax": _reductions.log_softmax_grad}[name]
    return grad(x, g, **options)

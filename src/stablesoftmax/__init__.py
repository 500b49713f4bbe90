"""stablesoftmax: the softmax family, stable and accurate on any array.

Library layer (this package's private modules): ``logsumexp``, ``softmax``,
``log_softmax`` and the cross-entropy losses, their gradients, the streaming
``LogSumExp`` and the edge-case ``CONTRACT``. ``stablesoftmax.naive`` holds
the textbook formulas the lab breaks; ``stablesoftmax.lab`` and the
``stablesoftmax`` command sit on top.
"""

from __future__ import annotations

import typing as _typing

from ._errors import (
    ArgumentError,
    AxisError,
    DtypeError,
    GradientError,
    InputFileError,
    ShapeError,
    StableSoftmaxError,
    TargetError,
)

if _typing.TYPE_CHECKING:
    from . import naive
    from ._contract import CONTRACT
    from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
    from ._losses import (
        binary_cross_entropy_with_logits,
        cross_entropy,
        cross_entropy_grad,
        cross_entropy_with_grad,
        nll_loss,
    )
    from ._reductions import (
        get_num_threads,
        log_softmax,
        log_softmax_grad,
        logsumexp,
        logsumexp_grad,
        reference_path,
        set_num_threads,
        set_reference_budget,
        softmax,
        softmax_grad,
        triton_path,
    )
    from ._sampling import sample
    from ._streaming import LogSumExp, logsumexp_chunks

# Where each public name lives. They are imported on first use (PEP 562), so that
# `import stablesoftmax` and `stablesoftmax --help` do not pay for NumPy and the library.
_HOME = {
    "naive": "naive",
    "autograd": "autograd",
    "CONTRACT": "_contract",
    "linear_cross_entropy": "_linear",
    "linear_cross_entropy_with_grad": "_linear",
    "binary_cross_entropy_with_logits": "_losses",
    "cross_entropy": "_losses",
    "cross_entropy_grad": "_losses",
    "cross_entropy_with_grad": "_losses",
    "nll_loss": "_losses",
    "log_softmax": "_reductions",
    "log_softmax_grad": "_reductions",
    "logsumexp": "_reductions",
    "logsumexp_grad": "_reductions",
    "reference_path": "_reductions",
    "triton_path": "_reductions",
    "set_reference_budget": "_reductions",
    "set_num_threads": "_reductions",
    "get_num_threads": "_reductions",
    "softmax": "_reductions",
    "softmax_grad": "_reductions",
    "sample": "_sampling",
    "LogSumExp": "_streaming",
    "logsumexp_chunks": "_streaming",
}


def __getattr__(name: str) -> object:
    import importlib

    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'stablesoftmax' has no attribute {name!r}")
    module = importlib.import_module(f".{home}", __name__)
    value = module if home == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted((set(globals()) - {"_typing"}) | set(_HOME))


__version__ = "0.2.0"

__all__ = [
    "__version__",
    "logsumexp",
    "softmax",
    "log_softmax",
    "logsumexp_grad",
    "softmax_grad",
    "log_softmax_grad",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "nll_loss",
    "binary_cross_entropy_with_logits",
    "sample",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "LogSumExp",
    "logsumexp_chunks",
    "naive",
    "CONTRACT",
    "reference_path",
    "triton_path",
    "set_reference_budget",
    "set_num_threads",
    "get_num_threads",
    "StableSoftmaxError",
    "ArgumentError",
    "GradientError",
    "AxisError",
    "ShapeError",
    "TargetError",
    "DtypeError",
    "InputFileError",
]

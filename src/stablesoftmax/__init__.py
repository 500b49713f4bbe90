"""stablesoftmax: the softmax family, stable and accurate on any array.

Library layer (this package's private modules): ``logsumexp``, ``softmax``,
``log_softmax`` and the cross-entropy losses, their gradients, the streaming
``LogSumExp`` and the edge-case ``CONTRACT``. ``stablesoftmax.naive`` holds
the textbook formulas the lab breaks; ``stablesoftmax.lab`` and the
``stablesoftmax`` command sit on top.
"""

from __future__ import annotations

from . import naive
from ._contract import CONTRACT
from ._errors import (
    ArgumentError,
    AxisError,
    DtypeError,
    InputFileError,
    ShapeError,
    StableSoftmaxError,
    TargetError,
)
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._losses import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    nll_loss,
)
from ._sampling import sample
from ._streaming import LogSumExp, logsumexp_chunks
from ._reductions import (
    log_softmax,
    log_softmax_grad,
    logsumexp,
    logsumexp_grad,
    reference_path,
    softmax,
    softmax_grad,
)

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
    "StableSoftmaxError",
    "ArgumentError",
    "AxisError",
    "ShapeError",
    "TargetError",
    "DtypeError",
    "InputFileError",
]

"""Named exceptions.

Every error stablesoftmax raises for bad input is one of these. Each message
names the argument, the bad value and what is allowed, so that the CLI can
print it as it is, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "StableSoftmaxError",
    "ArgumentError",
    "AxisError",
    "ShapeError",
    "TargetError",
    "DtypeError",
    "InputFileError",
    "GradientError",
]


class StableSoftmaxError(Exception):
    """Base class of every input error raised by stablesoftmax."""


class ArgumentError(StableSoftmaxError, ValueError):
    """An option has a value outside what is allowed."""


class AxisError(ArgumentError, IndexError):
    """An ``axis`` is out of range, repeated or not an integer."""


class ShapeError(ArgumentError):
    """Two arrays that must match or broadcast do not."""


class TargetError(ArgumentError, IndexError):
    """A class-index target is out of range or of the wrong kind."""


class DtypeError(StableSoftmaxError, TypeError):
    """An array has a dtype stablesoftmax does not compute in."""


class InputFileError(StableSoftmaxError, ValueError):
    """A file given on the command line is missing, unreadable or malformed.

    The message names the file, what is wrong and what is expected.
    """


class GradientError(StableSoftmaxError, NotImplementedError):
    """A derivative stablesoftmax does not compute was asked for.

    Forward-mode AD, a second derivative, or the gradient of an argument the
    function does not differentiate. The message names the function and the
    argument: a refusal by name, never a silent zero or missing gradient. A
    ``NotImplementedError`` (so a ``RuntimeError``), as PyTorch's own refusals
    of a derivative are: the input is valid, the derivative is not computed.
    """

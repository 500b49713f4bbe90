"""The examples in the public docstrings run and print what they show."""

import doctest
import importlib.util
import inspect
import warnings

import numpy as np
import pytest

import stablesoftmax
from stablesoftmax import autograd, naive


def _public_modules():
    """The modules that define a public name, and the public submodules.

    Read from ``stablesoftmax.__all__``, so a new public function's examples are run without
    anyone adding its module here; ``distributed`` needs PyTorch.
    """
    defined = {inspect.getmodule(getattr(stablesoftmax, name)) for name in stablesoftmax.__all__}
    modules = {m for m in defined if m is not None and m.__name__.startswith("stablesoftmax")}
    modules |= {autograd, naive}
    if importlib.util.find_spec("torch") is not None:
        from stablesoftmax import distributed

        modules.add(distributed)
    return sorted(modules, key=lambda m: m.__name__)


MODULES = _public_modules()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # examples set the naive formula's warnings beside the stable result
        result = doctest.testmod(
            module, extraglobs={"stablesoftmax": stablesoftmax}, optionflags=doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0


def test_examples_exist():
    finder = doctest.DocTestFinder()
    with_examples = [t.name for m in MODULES for t in finder.find(m) if t.examples]
    assert len(with_examples) >= 8, with_examples

"""The examples in the public docstrings run and print what they show."""

import doctest
import warnings

import numpy as np
import pytest

import stablesoftmax
from stablesoftmax import _linear, _losses, _reductions, _sampling, _streaming, autograd

MODULES = [_reductions, _losses, _linear, _sampling, _streaming, autograd]


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

"""The public signatures say what the functions return, and a type checker reads them so.

mypy checks a small user program and its ``reveal_type`` notes are compared with
the types the functions are documented to return: a tensor in gives a tensor out,
NumPy input or a Python sequence gives NumPy's answer (an ``ndarray``, or a NumPy
scalar where no axis is left), and ``return_sign=True`` gives a pair. A second test
calls the same functions and checks that what they return at run time is of the
expected type, so the annotations cannot drift from the behaviour.
"""

import types
import typing

import numpy as np
import numpy.typing as npt
import pytest

import stablesoftmax as ss

mypy_api = pytest.importorskip("mypy.api")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
array_api_strict = pytest.importorskip("array_api_strict")
xps = array_api_strict

TENSOR = "torch.Tensor"
JAX = "jax.Array"
STRICT = "array_api_strict._array_object.Array"
# Spelled out in the program, independently of stablesoftmax._typing, and revealed there.
NUMPY_RESULT = "npt.NDArray[Any] | np.generic"
NUMPY_ARRAY = "npt.NDArray[Any]"

# (expression, expected type): a name above, or a type expression the program reveals for comparison.
CASES = [
    ("logsumexp(torch.ones(3))", TENSOR),
    ("logsumexp(torch.ones(3), return_sign=True)", f"tuple[{TENSOR}, {TENSOR}]"),
    ("logsumexp(jnp.ones(3))", JAX),
    ("logsumexp(xps.ones(3), axis=None, keepdims=True)", STRICT),
    ("logsumexp(np.ones((2, 3)))", NUMPY_RESULT),
    ("logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)", f"tuple[{NUMPY_RESULT}, {NUMPY_RESULT}]"),
    ("logsumexp(torch.ones(3), return_sign=flag)", f"{TENSOR} | tuple[{TENSOR}, {TENSOR}]"),
    ("softmax(torch.ones(3), temperature=2.0)", TENSOR),
    ("log_softmax([[1.0, 2.0]], axis=0)", NUMPY_RESULT),
    ("softmax_grad(np.ones(3), np.ones(3))", NUMPY_ARRAY),
    ("log_softmax_grad(jnp.ones(3), jnp.ones(3))", JAX),
    ("logsumexp_grad([1.0, 2.0], 1.0)", NUMPY_ARRAY),
    ("cross_entropy(torch.ones(2, 3), torch.tensor([0, 1]))", TENSOR),
    ("cross_entropy(np.ones((2, 3)), [0, 1], reduction='none')", NUMPY_RESULT),
    ("cross_entropy_grad(torch.ones(2, 3), [0, 1])", TENSOR),
    ("cross_entropy_with_grad(np.ones((2, 3)), [0, 1])", f"tuple[{NUMPY_RESULT}, {NUMPY_ARRAY}]"),
    ("nll_loss(xps.ones((2, 3)), xps.asarray([0, 1]))", STRICT),
    ("binary_cross_entropy_with_logits([0.5], [1.0])", NUMPY_RESULT),
    ("softmax(Frame())", NUMPY_RESULT),
    ("sample(torch.ones(2, 3), rng=0)", TENSOR),
    ("sample(np.ones((2, 3)), rng=0)", "npt.NDArray[np.int64] | np.int64"),
    ("linear_cross_entropy(torch.ones(2, 3), torch.ones(4, 3), [0, 1])", TENSOR),
    (
        "linear_cross_entropy_with_grad(np.ones((2, 3)), np.ones((4, 3)), [0, 1])",
        f"tuple[{NUMPY_RESULT}, tuple[{NUMPY_ARRAY}, {NUMPY_ARRAY}, {NUMPY_ARRAY} | None]]",
    ),
    ("logsumexp_chunks([np.ones(3), np.ones(2)])", f"{NUMPY_RESULT} | {TENSOR}"),
    ("LogSumExp().update(torch.ones(3)).result()", f"{NUMPY_RESULT} | {TENSOR}"),
]

# Calls the signatures refuse: an option of the wrong type.
REFUSED = [
    "softmax(torch.ones(3), axis='0')",
    "logsumexp(np.ones(3), keepdims=None)",
    "cross_entropy(np.ones((2, 3)), [0, 1], label_smoothing='0.1')",
]

# Has what the array protocol asks but __dlpack__: typed, and run, as input NumPy reads.
FRAME = """\
class Frame:  # a shape and a dtype but no __dlpack__, as a pandas Series: NumPy reads it
    shape: tuple[int, ...] = (2,)
    ndim: int = 1
    dtype: Any = np.dtype(np.float64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> npt.NDArray[np.float64]:
        return np.array([1.0, 2.0])
"""

HEADER = (
    """\
from typing import Any
import array_api_strict as xps
import array_api_strict._array_object
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import torch
from stablesoftmax import (
    binary_cross_entropy_with_logits, cross_entropy, cross_entropy_grad, cross_entropy_with_grad,
    LogSumExp, linear_cross_entropy, linear_cross_entropy_with_grad, log_softmax, log_softmax_grad, logsumexp,
    logsumexp_chunks, logsumexp_grad, nll_loss, sample, softmax, softmax_grad,
)
def expected(x: Any) -> Any: ...
flag: bool = bool(np.random.default_rng(0).integers(2))
"""
    + FRAME
)


def _program():
    """``(text, lines)``: the user program, and for each case the lines revealing it and its expected type.

    The refused calls come last, one a line, from line ``lines[-1][1] + 1`` on.
    """
    text, lines = HEADER, []
    for i, (expr, want) in enumerate(CASES):
        first = text.count("\n") + 1
        text += f"reveal_type({expr})\n_e{i}: {want} = expected(0)\nreveal_type(_e{i})\n"
        lines.append((first, first + 2))
    return text + "".join(f"{call}\n" for call in REFUSED), lines


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory, request):
    """``(stdout, program path, lines)`` of one strict mypy run over the program (see :func:`_program`)."""
    folder = tmp_path_factory.mktemp("typing")
    program = folder / "program.py"
    text, lines = _program()
    program.write_text(text)
    config = folder / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = folder / "cache" if pytest_cache is None else pytest_cache.mkdir("mypy")
    stdout, _, _ = mypy_api.run(["--config-file", str(config), "--cache-dir", str(cache), str(program)])
    assert "Cannot find implementation or library stub" not in stdout, stdout
    return stdout, program, lines


def _program_lines(stdout, program, kind):
    """``{line number: message}`` of the ``kind`` ("note" or "error") lines mypy gave for the program itself."""
    found = {}
    for line in stdout.splitlines():
        head, _, rest = line.partition(f": {kind}: ")
        if rest and head.startswith(str(program)):
            found[int(head.rsplit(":", 1)[1])] = rest
    return found


def test_revealed_types_are_the_documented_ones(mypy_run):
    stdout, program, lines = mypy_run
    notes = _program_lines(stdout, program, "note")
    for (expr, want), (case, ref) in zip(CASES, lines, strict=True):
        got, expected = notes.get(case, "(no note)"), notes.get(ref, "(no note)")
        assert got.startswith("Revealed type is "), (expr, got, stdout)
        assert got == expected, f"{expr}: {got}; expected {expected} (from {want})"
        assert got != 'Revealed type is "Any"', expr


def test_program_type_checks_but_refused_calls_do_not(mypy_run):
    stdout, program, lines = mypy_run
    errors = _program_lines(stdout, program, "error")
    refused_from = lines[-1][1] + 1
    assert sorted(errors) == list(range(refused_from, refused_from + len(REFUSED))), stdout
    assert all(message.endswith(("[arg-type]", "[call-overload]")) for message in errors.values()), errors


def _conforms(value, tp):
    """Whether ``value`` is of the type ``tp``: unions, fixed tuples, ndarrays of a scalar type, classes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(map(_conforms, value, args))
    if origin is np.ndarray:
        (scalar,) = typing.get_args(args[1])  # ndarray[shape, dtype[scalar]]
        return isinstance(value, np.ndarray) and (scalar is typing.Any or issubclass(value.dtype.type, scalar))
    if tp is None:
        return value is None
    return isinstance(value, tp)


_frame: dict[str, typing.Any] = {"Any": typing.Any, "np": np, "npt": npt}
exec(FRAME, _frame)

NAMES = {
    "Frame": _frame["Frame"],
    "np": np,
    "npt": npt,
    "torch": torch,
    "jax": jax,
    "jnp": jnp,
    "xps": xps,
    "Any": typing.Any,
}


@pytest.mark.parametrize(("expr", "want"), CASES, ids=[c[0] for c in CASES])
def test_run_time_result_is_of_the_revealed_type(expr, want):
    names = {name: getattr(ss, name) for name in ss.__all__}
    with np.errstate(invalid="ignore"):  # the weighted sum of one case is 0, which the sign reports
        got = eval(expr, {**NAMES, "flag": True, **names})
    tp = eval(want, {**NAMES, "array_api_strict": array_api_strict})
    assert _conforms(got, tp), (expr, got, want)


def test_conforms_tells_types_apart():
    """The run-time check above can fail: it refuses what its types exclude."""
    assert not _conforms(np.float64(1.0), npt.NDArray[typing.Any])
    assert not _conforms(np.ones(2), npt.NDArray[np.int64])
    assert not _conforms((torch.ones(1),), tuple[torch.Tensor, torch.Tensor])
    assert not _conforms(None, torch.Tensor | np.generic)
    assert _conforms((np.ones(1), None), tuple[npt.NDArray[typing.Any], torch.Tensor | None])

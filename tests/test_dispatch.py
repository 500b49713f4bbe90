"""The dispatch layer: one table of array libraries, filled at import, and calls that behave cold as warm.

A warm process hides the faults these tests look for: a table filled while a
call runs breaks a cold ``torch.compile`` (Dynamo guards on it) and makes the
first call check less than the second. So each test here starts a fresh
interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from stablesoftmax import _arrays  # noqa: E402


def _fresh(code: str, timeout: float = 300, cache: str | None = None) -> str:
    """Run ``code`` in a new interpreter and return its stdout; fail with its stderr.

    ``cache``: a folder for inductor's compiled code, so that nothing compiled before is reused.
    """
    env = dict(os.environ, PYTHONWARNINGS="error::UserWarning")
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


class TestLibraryTable:
    def test_importing_an_adapter_changes_no_table(self):
        before = dict(_arrays.LIBRARIES)
        from stablesoftmax._backends import torch as adapter  # noqa: F401

        assert _arrays.LIBRARIES == before

    def test_torch_rules_without_the_adapter_imported(self):
        out = _fresh(
            """
            import sys, torch
            from stablesoftmax import _arrays
            assert "stablesoftmax._backends.torch" not in sys.modules
            t = torch.zeros(3)
            print(_arrays.concrete_host(t), _arrays.compute_dtype(t, torch), _arrays.concrete_host(t.to("meta")))
            """
        )
        assert out.split() == ["True", "torch.float64", "False"]


# The step every compile test runs: the family's functions and their gradients, compiled before any
# eager call. Each result is compared with PyTorch's own function in float64.
_COLD_STEP = """
import sys, torch
import torch.nn.functional as F
import stablesoftmax as ss

backend = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(6, 11, dtype=torch.float64)
y = torch.randint(0, 11, (6,))
w = torch.rand(11, dtype=torch.float64) + 0.5

def ours(x):
    return (ss.cross_entropy(x, y, weight=w, label_smoothing=0.1) + ss.logsumexp(x, axis=-1).sum()
            + (ss.softmax(x, axis=-1) * x).sum() + ss.log_softmax(x, axis=0)[0].sum())

def theirs(x):
    return (F.cross_entropy(x, y, weight=w, label_smoothing=0.1) + torch.logsumexp(x, dim=-1).sum()
            + (torch.softmax(x, dim=-1) * x).sum() + torch.log_softmax(x, dim=0)[0].sum())

step = torch.compile(ours, fullgraph=True, backend=backend)
a = x.clone().requires_grad_(True)
b = x.clone().requires_grad_(True)
got = step(a)
got.backward()
want = theirs(b)
want.backward()
got_v, want_v = float(got.detach()), float(want.detach())
assert abs(got_v - want_v) <= 1e-12 * abs(want_v), (got_v, want_v)
assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-13), (a.grad - b.grad).abs().max()

# A bfloat16 step compiles and runs too.
h = torch.randn(4, 9, dtype=torch.bfloat16, requires_grad=True)
loss = torch.compile(lambda h: ss.cross_entropy(h, y[:4] % 9), fullgraph=True, backend=backend)(h)
loss.backward()
assert loss.dtype == torch.bfloat16 and h.grad.dtype == torch.bfloat16 and torch.isfinite(h.grad).all()
print("ok")
"""


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_cold_torch_compile_traces_whole(backend, tmp_path):
    out = _fresh(_COLD_STEP.replace("sys.argv[1]", repr(backend)), timeout=600, cache=str(tmp_path))
    assert out.strip() == "ok"


def test_first_torch_call_checks_as_the_second():
    """A refusal holds on the first call in a process, not only once an adapter was imported."""
    out = _fresh(
        """
        import torch, stablesoftmax as ss
        from stablesoftmax import ArgumentError, TargetError
        x = torch.zeros(2, 3, dtype=torch.float64)
        refused = []
        for call in (
            lambda: ss.cross_entropy(x, torch.tensor([0, 1]), weight=torch.tensor([1.0, -1.0, 1.0])),
            lambda: ss.cross_entropy(x, torch.tensor([0, 7])),
            lambda: ss.nll_loss(x, torch.tensor([0, 3])),
            lambda: ss.cross_entropy(x, torch.tensor([[0.5, -0.5, 1.0]] * 2, dtype=torch.float64)),
        ):
            for attempt in range(2):
                try:
                    call()
                    refused.append(False)
                except (ArgumentError, TargetError):
                    refused.append(True)
        print(refused)
        """
    )
    assert out.strip() == str([True] * 8)

"""loss.backward() through our functions on tensors that require grad."""

import numpy as np
import pytest

import stablesoftmax as ss

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

F = torch.nn.functional


class TestTorchAutograd:
    @pytest.mark.parametrize(
        "opts", [{}, {"label_smoothing": 0.1}, {"weight": [1.0, 2.0, 0.5, 1.0]}, {"reduction": "sum"}]
    )
    def test_cross_entropy_matches_pytorch(self, rng, opts):
        x = rng.normal(0, 3, (6, 4))
        y = torch.tensor([0, 3, -100, 1, 2, 2])
        topts = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in opts.items()}
        ours_t = torch.tensor(x, requires_grad=True)
        ref_t = torch.tensor(x, requires_grad=True)
        ours = ss.cross_entropy(ours_t, y, **topts)
        ref = F.cross_entropy(ref_t, y, **topts)
        ours.backward()
        ref.backward()
        assert ours.requires_grad and ours.dtype == torch.float64
        np.testing.assert_allclose(ours.item(), ref.item(), rtol=1e-14)
        np.testing.assert_allclose(ours_t.grad.numpy(), ref_t.grad.numpy(), rtol=1e-12, atol=1e-16)

    @pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
    def test_family_matches_pytorch(self, rng, fn):
        x = rng.normal(0, 3, (3, 5))
        a, b = torch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        g = torch.tensor(rng.normal(size=(3,) if fn == "logsumexp" else (3, 5)))
        getattr(ss, fn)(a, axis=1).backward(g)
        (torch.logsumexp(b, 1) if fn == "logsumexp" else getattr(torch, fn)(b, dim=1)).backward(g)
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12, atol=1e-16)

    def test_fully_masked_row_is_zero_with_zero_gradient(self):
        # pytorch#41508: PyTorch's softmax of a fully masked row is NaN, so any loss over it is NaN.
        data = [[1.0, 2.0, 3.0], [0.5, 0.1, 0.2]]
        keep = torch.tensor([[False, False, False], [True, True, False]])
        w = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
        x = torch.tensor(data, requires_grad=True)
        out = ss.softmax(x, where=keep)
        (out * w).sum().backward()
        assert (out[0] == 0).all() and (x.grad[0] == 0).all() and torch.isfinite(x.grad).all()
        ref_x = torch.tensor(data, requires_grad=True)
        ref = torch.softmax(ref_x.masked_fill(~keep, -torch.inf), dim=1)
        assert torch.isnan(ref[0]).all() and torch.isnan((ref * w).sum())
        np.testing.assert_allclose(out[1].detach().numpy(), ref[1].detach().numpy(), rtol=1e-6)

    def test_seed_article_example(self):
        logits = [[2.0, 1.0, 0.1], [1000.0, 1.0, -1000.0], [3.0, 2.0, 1.0]]
        targets = torch.tensor([0, 2, 1])
        ours_t = torch.tensor(logits, requires_grad=True)
        ref_t = torch.tensor(logits, requires_grad=True)
        loss = ss.cross_entropy(ours_t, targets)
        loss.backward()
        F.cross_entropy(ref_t, targets).backward()
        assert torch.isfinite(loss) and torch.isfinite(ours_t.grad).all()
        assert loss.item() == pytest.approx(F.cross_entropy(ref_t.detach(), targets).item(), rel=1e-6)
        np.testing.assert_allclose(ours_t.grad.numpy(), ref_t.grad.numpy(), rtol=1e-6, atol=1e-7)

    def test_float16_gradient_keeps_dtype(self):
        x = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float16, requires_grad=True)
        ss.log_softmax(x).sum().backward()
        assert x.grad.dtype == torch.float16

    def test_no_grad_mode_returns_plain_tensor(self):
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        with torch.no_grad():
            assert not ss.softmax(x).requires_grad

    def test_return_sign_with_grad(self):
        x = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
        lse, sign = ss.logsumexp(x, b=np.array([1.0, -2.0]), return_sign=True)
        lse.backward()
        assert sign.item() == -1.0 and x.grad.tolist() == [-1.0, 2.0]

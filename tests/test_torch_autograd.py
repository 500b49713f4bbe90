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


class TestEveryGradientArrives:
    """No gradient is lost: each input that can carry one gets it, or a named refusal (docs/gradients.rst)."""

    def test_weights_b_get_their_gradient(self, rng):
        # d log|sum b e^x| / d b_i = e^{x_i} / S, against PyTorch's autograd of the plain float64 formula.
        x = torch.tensor(rng.normal(0, 2, (3, 5)))
        b = torch.tensor(rng.uniform(-0.5, 2.0, (3, 5)), requires_grad=True)
        ref_b = b.detach().clone().requires_grad_()
        g = torch.tensor(rng.normal(size=3))
        ss.logsumexp(x, b=b, axis=1, return_sign=True)[0].backward(g)
        torch.log((ref_b * x.exp()).sum(1).abs()).backward(g)
        np.testing.assert_allclose(b.grad.numpy(), ref_b.grad.numpy(), rtol=1e-13, atol=1e-15)

    def test_broadcast_weights_b_sum_their_gradient_and_masked_entries_get_zero(self):
        x = torch.tensor([[0.0, 1.0, 2.0], [3.0, -torch.inf, 1.0]], dtype=torch.float64)
        keep = torch.tensor([[True, False, True], [True, True, True]])
        b = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
        ss.logsumexp(x, b=b, axis=1, where=keep).sum().backward()
        e = x.exp()
        want = [e[0, 0] / (e[0, 0] + 0.5 * e[0, 2]) + e[1, 0] / (e[1, 0] + 0.5 * e[1, 2]), 0.0, 0.0]
        want[2] = e[0, 2] / (e[0, 0] + 0.5 * e[0, 2]) + e[1, 2] / (e[1, 0] + 0.5 * e[1, 2])
        np.testing.assert_allclose(b.grad.numpy(), [float(w) for w in want], rtol=1e-14)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.2}, {"weight": [1.0, 2.0, 0.5, 1.5]}])
    def test_probability_targets_get_pytorchs_gradient(self, rng, reduction, opts):
        x = torch.tensor(rng.normal(0, 3, (5, 4)))
        q = torch.softmax(torch.tensor(rng.normal(size=(5, 4))), 1)
        topts = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in opts.items()}
        ours, ref = q.clone().requires_grad_(), q.clone().requires_grad_()
        g = torch.tensor(rng.normal(size=5 if reduction == "none" else ()))
        ss.cross_entropy(x, ours, reduction=reduction, **topts).backward(g)
        F.cross_entropy(x, ref, reduction=reduction, **topts).backward(g)
        np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=1e-13, atol=1e-16)

    def test_probability_target_gradient_is_never_nan(self):
        # A -inf logit's -log p is +inf (mass there makes the loss +inf), as PyTorch; a fully masked row is 0.
        x = torch.tensor([[0.0, -torch.inf, 1.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
        keep = torch.tensor([[True, True, True], [False, False, False]])
        q = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64, requires_grad=True)
        ss.cross_entropy(x, q, where=keep).backward()
        assert not torch.isnan(q.grad).any()
        assert q.grad[0, 1] == torch.inf and (q.grad[1] == 0).all()

    def test_empty_batch_is_on_the_graph(self):
        for loss_of in (
            lambda x: ss.cross_entropy(x, torch.zeros(0, dtype=torch.long)),
            lambda x: ss.nll_loss(x, torch.zeros(0, dtype=torch.long)),
            lambda x: ss.cross_entropy(x, torch.zeros(0, 4, dtype=torch.float64), reduction="none").sum(),
        ):
            x = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
            loss = loss_of(x)
            loss.backward()
            assert loss.item() == 0.0 and x.grad.shape == (0, 4)
        x = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
        ss.logsumexp(x, axis=1).sum().backward()
        assert x.grad.shape == (3, 0)

    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # forward_ad's own
    def test_forward_mode_is_refused_by_name(self):
        x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
            with pytest.raises(ss.StableSoftmaxError, match=r"forward-mode AD .* stablesoftmax\.softmax"):
                ss.softmax(dual)

    @pytest.mark.parametrize(
        ("name", "loss_of"),
        [
            ("logsumexp", lambda x: ss.logsumexp(x, axis=1).sum()),
            ("log_softmax", lambda x: (ss.log_softmax(x) ** 2).sum()),
            ("cross_entropy", lambda x: ss.cross_entropy(x, torch.tensor([0, 2]))),
        ],
    )
    def test_second_derivative_is_refused_by_name(self, name, loss_of):
        x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
        (dx,) = torch.autograd.grad(loss_of(x), x, create_graph=True)
        with pytest.raises(ss.StableSoftmaxError, match=f"second derivative of stablesoftmax.{name}"):
            torch.autograd.grad((dx**2).sum(), x)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("weight_shape", [(4, 5), (5,)])
    def test_bce_target_weight_and_pos_weight_get_their_gradients(self, rng, reduction, weight_shape):
        # Against autograd of the plain float64 formula (PyTorch's own BCE refuses a weight that requires grad).
        x = torch.tensor(rng.normal(0, 3, (4, 5)))
        t, w, pw = (
            torch.tensor(rng.uniform(lo, hi, s)) for lo, hi, s in [(0, 1, (4, 5)), (0.5, 2, weight_shape), (0.5, 3, 5)]
        )
        ours = [a.clone().requires_grad_() for a in (t, w, pw)]
        ref = [a.clone().requires_grad_() for a in (t, w, pw)]
        g = torch.tensor(rng.normal(size=(4, 5) if reduction == "none" else ()))
        ss.binary_cross_entropy_with_logits(
            x, ours[0], weight=ours[1], pos_weight=ours[2], reduction=reduction
        ).backward(g)
        sp = torch.nn.functional.softplus
        elem = ref[1] * (ref[2] * ref[0] * sp(-x, threshold=1000) + (1 - ref[0]) * sp(x, threshold=1000))
        (elem if reduction == "none" else elem.sum() if reduction == "sum" else elem.mean()).backward(g)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-13, atol=1e-16)

    def test_float32_weights_b_gradient_is_within_one_ulp_of_mpmath(self, rng):
        # e^{x_i} / sum_j b_j e^{x_j} at 50 digits, rounded once: the float64 formula then one rounding to float32.
        import mpmath

        from tests.helpers import ulp_error

        x = rng.normal(0, 20, (4, 16)).astype(np.float32)
        b = rng.uniform(0.1, 3.0, (4, 16)).astype(np.float32)
        bt = torch.tensor(b, requires_grad=True)
        ss.logsumexp(torch.tensor(x), b=bt, axis=1).sum().backward()
        assert bt.grad.dtype == torch.float32
        with mpmath.workdps(50):
            for i in range(4):
                s = mpmath.fsum(
                    mpmath.mpf(float(bj)) * mpmath.exp(float(xj)) for xj, bj in zip(x[i], b[i], strict=True)
                )
                for j in range(16):
                    want = mpmath.exp(float(x[i, j])) / s
                    assert ulp_error(float(bt.grad[i, j]), want, np.dtype(np.float32)) <= 1.0

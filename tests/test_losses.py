"""cross_entropy, nll_loss and binary_cross_entropy_with_logits against PyTorch, plus errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import stablesoftmax as ss
from stablesoftmax import CONTRACT, ArgumentError, DtypeError, ShapeError, TargetError
from tests.helpers import eps, ulp_error

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

F = torch.nn.functional

# (logits shape, class axis): PyTorch's (N, C), (N, C, d1, d2) and (C,)
SHAPES = [((6, 5), -1), ((3, 4, 2, 3), 1), ((5,), 0)]
GRID = list(
    itertools.product(SHAPES, ["index", "prob"], [False, True], ["mean", "sum", "none"], [0.0, 0.25], [False, True])
)


def _targets(rng, shape, axis, kind, ignore):
    c = shape[axis]
    batch = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    if kind == "prob":
        q = rng.dirichlet(np.ones(c), size=batch)
        return np.moveaxis(q, -1, axis % len(shape))
    y = rng.integers(0, c, batch)
    if ignore and y.ndim:
        y.reshape(-1)[::3] = -100
    return y


def _torch_layout(x, axis):
    """PyTorch wants the class axis at 1 (or 0 for 1-D input)."""
    return x if x.ndim == 1 or axis % x.ndim == 1 else np.moveaxis(x, axis, 1)


class TestCrossEntropyParity:
    @pytest.mark.parametrize(("shape_axis", "kind", "weighted", "reduction", "smoothing", "ignore"), GRID)
    def test_grid_float64(self, shape_axis, kind, weighted, reduction, smoothing, ignore, rng):
        (shape, axis) = shape_axis
        x = rng.uniform(-5, 5, shape)
        y = _targets(rng, shape, axis, kind, ignore)
        w = rng.uniform(0.5, 2.0, shape[axis]) if weighted else None
        ours = ss.cross_entropy(x, y, axis=axis, weight=w, reduction=reduction, label_smoothing=smoothing)
        ref = F.cross_entropy(
            torch.tensor(x),
            torch.tensor(y),
            weight=None if w is None else torch.tensor(w),
            reduction=reduction,
            label_smoothing=smoothing,
        )
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, atol=0)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_float32_within_two_ulp(self, reduction, rng):
        x = rng.normal(0, 4, (64, 10)).astype(np.float32)
        y = rng.integers(0, 10, 64)
        ours = np.asarray(ss.cross_entropy(x, y, reduction=reduction))
        ref = F.cross_entropy(torch.tensor(x, dtype=torch.float64), torch.tensor(y), reduction=reduction).numpy()
        assert ours.dtype == np.float32
        errs = [ulp_error(o, r, np.float32) for o, r in zip(ours.reshape(-1), ref.reshape(-1), strict=True)]
        assert max(errs) <= 2.0

    @given(data=st.data())
    def test_hypothesis_options(self, data):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
        n, c = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
        scale = data.draw(st.sampled_from([1.0, 30.0, 300.0]))
        x = rng.normal(0, scale, (n, c))
        y = rng.integers(0, c, n)
        y[rng.random(n) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))] = -100
        opts = {
            "reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
            "label_smoothing": data.draw(st.sampled_from([0.0, 0.1, 1.0])),
            "weight": data.draw(st.sampled_from([None, rng.uniform(0.1, 3, c)])),
        }
        ours = ss.cross_entropy(x, y, **opts)
        tw = None if opts["weight"] is None else torch.tensor(opts["weight"])
        ref = F.cross_entropy(torch.tensor(x), torch.tensor(y), **{**opts, "weight": tw}).numpy()
        if np.isnan(ref).any():
            # PyTorch's mean of nothing is NaN; ours is 0 by contract (pytorch#70348).
            assert opts["reduction"] == "mean" and (y == -100).all() and ours == 0.0
            return
        # PyTorch forms x - lse, so a loss far below the logits' magnitude keeps only an absolute
        # accuracy of ~eps * |x|; parity is measured on that scale (ours is held to mpmath elsewhere).
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12 * np.abs(x).max())

    def test_weights_ignore_and_smoothing_together(self, rng):
        # pytorch#69339 / #73205: ignored elements leave both the sum and the weighted denominator.
        x, y, w = rng.normal(size=(8, 4)), np.array([0, 1, -100, 3, 2, -100, 1, 0]), np.array([1.0, 2.0, 3.0, 0.5])
        keep = y != -100
        full = ss.cross_entropy(x, y, weight=w, label_smoothing=0.3)
        sliced = ss.cross_entropy(x[keep], y[keep], weight=w, label_smoothing=0.3)
        assert full == pytest.approx(sliced, rel=4 * eps(np.float64))


class TestCrossEntropy:
    def test_seed_break_case_fp32(self):
        # break-ce-via-log-softmax.txt: -log of a (stable) softmax is inf, ours is exactly 142.
        huge = np.array([10.0, 92.0, 30.0, -50.0, 40.0], dtype=np.float32)
        assert ss.cross_entropy(huge, 3) == np.float32(142.0)
        with np.errstate(divide="ignore"):
            assert -np.log(ss.softmax(huge)[3]) == np.inf

    def test_seed_safe_case_matches_naive(self):
        small = np.array([1.2, 4.7, 3.1, 0.5, 2.9], dtype=np.float32)
        assert ss.cross_entropy(small, 2) == pytest.approx(
            float(ss.naive.cross_entropy(small, 2)), rel=4 * eps(np.float32)
        )

    def test_tiny_loss_keeps_full_precision(self):
        # PyTorch returns a loss 1e15 ulps off here: lse - x[y] cancels 50 digits.
        # Reference: log1p(exp(b - a)) in mpmath, from the exact float64 inputs, no cancellation.
        import mpmath

        a, b = 30.20172946, -81.33487437
        with mpmath.workdps(60):
            ref = mpmath.log1p(mpmath.exp(mpmath.mpf(b) - mpmath.mpf(a)))
        assert ulp_error(ss.cross_entropy(np.array([[a, b]]), np.array([0])), ref, np.float64) <= 2.5

    def test_never_goes_through_softmax(self):
        # Far below float64's exp range: -log(softmax) is inf, lse - x[y] is 1500.
        assert ss.cross_entropy(np.array([0.0, -1500.0]), 1) == 1500.0

    def test_integer_and_probability_targets_agree(self, rng):
        x, y = rng.normal(size=(7, 5)), rng.integers(0, 5, 7)
        onehot = np.eye(5)[y]
        for red in ("mean", "sum", "none"):
            np.testing.assert_allclose(
                ss.cross_entropy(x, y, reduction=red),
                ss.cross_entropy(x, onehot, reduction=red),
                rtol=4 * eps(np.float64),
            )

    def test_masking_equals_slicing(self, rng):
        x, y = rng.normal(size=(5, 6)), rng.integers(0, 3, 5)
        keep = np.array([True, True, True, False, False, False])
        noisy = np.where(keep, x, np.nan)
        for smoothing in (0.0, 0.2):
            a = ss.cross_entropy(noisy, y, where=keep, label_smoothing=smoothing, reduction="none")
            b = ss.cross_entropy(x[:, :3], y, label_smoothing=smoothing, reduction="none")
            np.testing.assert_allclose(a, b, rtol=4 * eps(np.float64))

    def test_masked_huge_logits_do_not_move_the_loss(self, rng):
        x, y = rng.normal(size=(4, 5)), np.array([0, 1, 2, 0])
        keep = np.ones((4, 5), bool)
        keep[:, 4] = False
        ref = ss.cross_entropy(x[:, :4], y)
        for huge in (1e4, 1e30, np.inf, np.nan):
            moved = x.copy()
            moved[:, 4] = huge
            assert ss.cross_entropy(moved, y, where=keep) == pytest.approx(ref, rel=4 * eps(np.float64))

    def test_z_loss_adds_lse_squared(self, rng):
        x, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
        lse = ss.logsumexp(x)
        got = ss.cross_entropy(x, y, z_loss=1e-2, reduction="none")
        np.testing.assert_allclose(got, ss.cross_entropy(x, y, reduction="none") + 1e-2 * lse**2, rtol=1e-14)

    def test_overflow_to_inf_is_quiet_where_inf_is_the_answer(self):
        # lse ~ 1e300, so z * lse**2 is +inf: the right answer, and no RuntimeWarning on the way.
        with np.errstate(all="raise"):
            assert ss.cross_entropy(np.array([[1e300, 0.0]]), np.array([0]), z_loss=1.0) == np.inf
            capped = ss.cross_entropy(np.array([[1e308, 0.0]]), np.array([1]), softcap=0.5, reduction="none")
        assert capped[0] == pytest.approx(0.5 + np.log1p(np.exp(-0.5)), rel=4 * eps(np.float64))  # logits [0.5, 0]

    def test_softcap_is_applied_first(self, rng):
        x, y = rng.normal(0, 50, (6, 4)), rng.integers(0, 4, 6)
        capped = 30.0 * np.tanh(x / 30.0)
        np.testing.assert_allclose(ss.cross_entropy(x, y, softcap=30.0), ss.cross_entropy(capped, y), rtol=1e-14)

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
    def test_narrow_logits_keep_their_dtype(self, dtype):
        from tests.helpers import BFLOAT16

        dt = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
        x = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]).astype(dt)
        for red in ("mean", "none"):
            assert np.asarray(ss.cross_entropy(x, np.array([0, 2]), reduction=red)).dtype == dt

    def test_sum_accumulates_wide(self):
        # 2**24 + 1 elements of loss ~1: a float32 running sum would stall at 2**24.
        x = np.zeros((2**12 + 1, 2), dtype=np.float32)
        y = np.zeros(2**12 + 1, dtype=np.int64)
        got = ss.cross_entropy(x, y, reduction="sum")
        assert got == np.float32((2**12 + 1) * np.log(2.0))

    def test_input_not_modified(self, rng):
        x, y = rng.normal(size=(3, 4)), np.array([0, -100, 3])
        xb, yb = x.copy(), y.copy()
        ss.cross_entropy_with_grad(x, y, label_smoothing=0.1, softcap=5.0)
        np.testing.assert_array_equal(x, xb)
        np.testing.assert_array_equal(y, yb)


class TestCompiledDispatch:
    def test_class_targets_reach_the_kernels_and_options_that_need_more_do_not(self, each_path, monkeypatch):
        from stablesoftmax import _kernels

        module = _kernels.host_kernels()
        if module is None:
            assert each_path == "numpy"
            return
        calls = []
        real = module.cross_entropy_rows
        monkeypatch.setattr(
            module, "cross_entropy_rows", lambda x2, *a, **k: calls.append(x2.shape) or real(x2, *a, **k)
        )
        x, y = np.zeros((3, 4)), np.array([0, 1, 2])
        for opts in ({"weight": np.ones(4), "z_loss": 0.1}, {"label_smoothing": 0.1}, {"where": np.ones((3, 4), bool)}):
            ss.cross_entropy(x, y, **opts)
        assert calls == [(3, 4)] * 3
        ss.cross_entropy(x, y, softcap=2.0)
        ss.cross_entropy(x, np.full((3, 4), 0.25))
        assert calls == [(3, 4)] * 3


class TestCrossEntropyErrors:
    def test_target_out_of_range(self):
        with pytest.raises(
            TargetError,
            match=(
                r"target value 7 at position \(1,\) is out of range; "
                r"class indices must be in \[0, 3\) or equal ignore_index=-100"
            ),
        ):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 7]))

    def test_negative_target_that_is_not_ignore_index(self):
        with pytest.raises(TargetError, match=r"target value -1 at position \(0, 1\)"):
            ss.cross_entropy(np.zeros((2, 3, 2)), np.array([[0, -1], [1, 1]]), axis=1)

    def test_float_class_indices(self):
        with pytest.raises(TargetError, match="float class indices"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))

    def test_shape_mismatch_names_both_shapes(self):
        with pytest.raises(
            ShapeError, match=r"target of shape \(3,\) does not match logits of shape \(2, 3\).*expected \(2,\)"
        ):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))

    def test_weight_of_wrong_length(self):
        with pytest.raises(ShapeError, match=r"weight of shape \(2,\) must have one entry per class: shape \(3,\)"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), weight=np.ones(2))

    @pytest.mark.parametrize("bad", [-0.1, 1.5, np.nan])
    def test_label_smoothing_out_of_range(self, bad):
        with pytest.raises(ArgumentError, match=r"label_smoothing=.* must be in \[0, 1\]"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=bad)

    def test_unknown_reduction(self):
        with pytest.raises(ArgumentError, match=r"reduction='avg' is not one of \('none', 'mean', 'sum'\)"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="avg")

    def test_ignore_index_with_probability_targets(self):
        with pytest.raises(ArgumentError, match="ignore_index=0 cannot be used with probability targets"):
            ss.cross_entropy(np.zeros((2, 3)), np.full((2, 3), 1 / 3), ignore_index=0)

    def test_negative_probability_target(self):
        with pytest.raises(ArgumentError, match=r"negative entry -0.5 at row 1, class 2"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([[1.0, 0, 0], [0.5, 1.0, -0.5]]))

    @pytest.mark.parametrize(
        ("opt", "bad"), [("z_loss", -1.0), ("z_loss", np.inf), ("softcap", 0.0), ("softcap", -3.0)]
    )
    def test_bad_z_loss_and_softcap(self, opt, bad):
        with pytest.raises(ArgumentError, match=rf"{opt}="):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), **{opt: bad})

    def test_zero_d_logits(self):
        with pytest.raises(ShapeError, match="0-d; it needs a class axis"):
            ss.cross_entropy(np.float64(1.0), 0)

    def test_zero_classes(self):
        with pytest.raises(ShapeError, match="has no classes along axis -1"):
            ss.cross_entropy(np.zeros((2, 0)), np.array([0, 0]))

    def test_bool_target(self):
        with pytest.raises(DtypeError, match="target has dtype bool"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([True, False]))

    def test_tuple_axis(self):
        with pytest.raises(ArgumentError, match=r"axis=\(0, 1\) must be a single int"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), axis=(0, 1))


class TestNllLoss:
    @pytest.mark.parametrize(("weighted", "reduction"), list(itertools.product([False, True], ["mean", "sum", "none"])))
    def test_torch_parity(self, weighted, reduction, rng):
        lp = ss.log_softmax(rng.normal(size=(3, 5, 4)), axis=1)
        y = rng.integers(0, 5, (3, 4))
        y[0, 0] = -100
        w = rng.uniform(0.5, 2, 5) if weighted else None
        ref = F.nll_loss(
            torch.tensor(lp), torch.tensor(y), weight=None if w is None else torch.tensor(w), reduction=reduction
        )
        np.testing.assert_allclose(ss.nll_loss(lp, y, axis=1, weight=w, reduction=reduction), ref.numpy(), rtol=1e-12)

    def test_equals_cross_entropy_of_log_softmax(self, rng):
        x, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
        assert ss.nll_loss(ss.log_softmax(x), y) == pytest.approx(ss.cross_entropy(x, y), rel=4 * eps(np.float64))


class TestBinaryCrossEntropyWithLogits:
    @pytest.mark.parametrize(
        ("weighted", "pos", "reduction"), list(itertools.product([False, True], [False, True], ["mean", "sum", "none"]))
    )
    def test_torch_parity(self, weighted, pos, reduction, rng):
        x, t = rng.normal(0, 5, (6, 3)), rng.random((6, 3))
        w = rng.uniform(0.5, 2, (6, 3)) if weighted else None
        pw = rng.uniform(0.5, 3, 3) if pos else None
        ref = F.binary_cross_entropy_with_logits(
            torch.tensor(x),
            torch.tensor(t),
            weight=None if w is None else torch.tensor(w),
            pos_weight=None if pw is None else torch.tensor(pw),
            reduction=reduction,
        )
        got = ss.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction=reduction)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12)

    def test_log_sigmoid_does_not_underflow(self):
        # log(sigmoid(-200)) is -inf in float32; the loss of target 1 is exactly 200.
        assert ss.binary_cross_entropy_with_logits(np.float32([-200.0]), np.float32([1.0])) == np.float32(200.0)

    def test_infinite_logits_with_zero_coefficient(self):
        got = ss.binary_cross_entropy_with_logits(np.array([np.inf, -np.inf]), np.array([1.0, 0.0]), reduction="none")
        np.testing.assert_array_equal(got, [0.0, 0.0])

    def test_shape_mismatch(self):
        with pytest.raises(ShapeError, match=r"target of shape \(2,\) must have the logits' shape \(3,\)"):
            ss.binary_cross_entropy_with_logits(np.zeros(3), np.zeros(2))


class TestSiblingsAgree:
    """``nll_loss(log_softmax(x), y)`` is ``cross_entropy(x, y)`` on every contract row that has a class target."""

    ROWS = [
        r
        for r in CONTRACT
        if "cross_entropy" in r.expect
        and "target" in r.example
        and np.asarray(r.example["target"]).dtype.kind in "iu"
        and "where" not in r.example
    ]

    @pytest.mark.parametrize("rule", ROWS, ids=lambda r: r.case)
    def test_nll_of_log_softmax_equals_cross_entropy(self, rule, each_path):
        (x, y), kw = rule.arguments("cross_entropy")
        reduction = kw.get("reduction", "mean")
        want = ss.cross_entropy(x, y, reduction=reduction)
        got = ss.nll_loss(ss.log_softmax(x, axis=-1), y, reduction=reduction)
        np.testing.assert_array_equal(got, want)

    @pytest.mark.parametrize(
        "x", [[[-np.inf, -np.inf], [0.0, 1.0]], [[np.inf, 0.0], [1.0, 2.0]], [[np.inf, np.inf], [0.0, -np.inf]]]
    )
    def test_special_rows(self, x, each_path):
        x = np.array(x)
        y = np.array([0, 1])
        for reduction in ("none", "mean", "sum"):
            np.testing.assert_array_equal(
                ss.nll_loss(ss.log_softmax(x), y, reduction=reduction), ss.cross_entropy(x, y, reduction=reduction)
            )

    def test_same_bad_axis_same_error(self):
        from stablesoftmax import AxisError

        for call in (
            lambda: ss.softmax(np.ones((2, 3)), axis=1.5),
            lambda: ss.cross_entropy(np.ones((2, 3)), np.array([0, 1]), axis=1.5),
            lambda: ss.nll_loss(np.ones((2, 3)), np.array([0, 1]), axis=1.5),
        ):
            with pytest.raises(AxisError, match=r"axis=1.5"):
                call()

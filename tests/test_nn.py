"""stablesoftmax.nn: each module against the torch.nn module it replaces, in float64."""

import doctest
import itertools
import pickle
import subprocess
import sys

import numpy as np
import pytest

from stablesoftmax import ArgumentError, ShapeError

torch = pytest.importorskip("torch")
snn = pytest.importorskip("stablesoftmax.nn")

REDUCTIONS = ["mean", "sum", "none"]
# (input shape, class axis) in PyTorch's layouts: (N, C), (N, C, d1, d2) and unbatched (C,)
SHAPES = [((6, 5), 1), ((3, 4, 2, 3), 1), ((5,), 0)]
# dynamo warns each time it traces through array_api_compat's lru_cache-wrapped type checks
DYNAMO_LRU_CACHE = "ignore:Dynamo detected a call to a `functools.lru_cache`-wrapped function:UserWarning"


def assert_same(ours, theirs):
    """Equal to PyTorch's float64 result up to rounding: 1e-12 relative, 1e-15 absolute for entries near 0.

    The two differ in how they round (ours is held to mpmath elsewhere), never in what they compute.
    """
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def _t(a, requires_grad=False):
    return torch.tensor(a, requires_grad=requires_grad)


def _class_targets(rng, shape, axis, ignore_index):
    batch = tuple(n for i, n in enumerate(shape) if i != axis)
    y = rng.integers(0, shape[axis], batch)
    y = np.where(y == ignore_index, (y + 1) % shape[axis], y)  # ignored only where placed below
    if ignore_index is not None and y.ndim:
        y.reshape(-1)[::3] = ignore_index
    return _t(y)


def _prob_targets(rng, shape, axis):
    q = rng.dirichlet(np.ones(shape[axis]), size=tuple(n for i, n in enumerate(shape) if i != axis))
    return _t(np.moveaxis(q, -1, axis))


def _loss_and_grad(module, x, *rest):
    x = x.detach().clone().requires_grad_()
    loss = module(x, *rest)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


def _check_parity(ours, theirs, x, *rest):
    loss, grad = _loss_and_grad(ours, x, *rest)
    ref_loss, ref_grad = _loss_and_grad(theirs, x, *rest)
    assert_same(loss, ref_loss)
    assert_same(grad, ref_grad)


class TestCrossEntropyLoss:
    @pytest.mark.parametrize(
        ("shape_axis", "weighted", "reduction", "smoothing", "ignore_index"),
        list(itertools.product(SHAPES, [False, True], REDUCTIONS, [0.0, 0.2], [None, -100, 2])),
    )
    def test_class_targets_match_torch(self, shape_axis, weighted, reduction, smoothing, ignore_index, rng):
        shape, axis = shape_axis
        x = _t(rng.uniform(-5, 5, shape))
        y = _class_targets(rng, shape, axis, ignore_index)
        opts = dict(
            weight=_t(rng.uniform(0.5, 2.0, shape[axis])) if weighted else None,
            ignore_index=-100 if ignore_index is None else ignore_index,
            reduction=reduction,
            label_smoothing=smoothing,
        )
        _check_parity(snn.CrossEntropyLoss(**opts), torch.nn.CrossEntropyLoss(**opts), x, y)

    @pytest.mark.parametrize(
        ("shape_axis", "weighted", "reduction", "smoothing"),
        list(itertools.product(SHAPES, [False, True], REDUCTIONS, [0.0, 0.2])),
    )
    def test_probability_targets_match_torch(self, shape_axis, weighted, reduction, smoothing, rng):
        shape, axis = shape_axis
        x = _t(rng.uniform(-5, 5, shape))
        opts = dict(
            weight=_t(rng.uniform(0.5, 2.0, shape[axis])) if weighted else None,
            reduction=reduction,
            label_smoothing=smoothing,
        )
        q = _prob_targets(rng, shape, axis)
        _check_parity(snn.CrossEntropyLoss(**opts), torch.nn.CrossEntropyLoss(**opts), x, q)

    def test_ignore_index_with_probability_targets_refused_as_by_torch(self, rng):
        x, q = _t(rng.uniform(-5, 5, (6, 5))), _prob_targets(rng, (6, 5), 1)
        with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
            torch.nn.CrossEntropyLoss(ignore_index=2)(x, q)
        with pytest.raises(ArgumentError, match="ignore_index=2 cannot be used with probability targets"):
            snn.CrossEntropyLoss(ignore_index=2)(x, q)

    def test_positional_arguments_in_torchs_order(self, rng):
        x, y, w = _t(rng.normal(size=(6, 4))), _t(np.array([0, 1, 3, 3, 2, 1])), _t(rng.uniform(0.5, 2, 4))
        args = (w, None, 3, None, "sum", 0.1)  # weight, size_average, ignore_index, reduce, reduction, smoothing
        _check_parity(snn.CrossEntropyLoss(*args), torch.nn.CrossEntropyLoss(*args), x, y)

    @pytest.mark.parametrize(
        ("size_average", "reduce", "reduction"), [(False, None, "sum"), (None, False, "none"), (True, True, "mean")]
    )
    def test_legacy_arguments_mapped_as_torch_maps_them(self, size_average, reduce, reduction):
        with pytest.warns(UserWarning, match=f"please use reduction='{reduction}' instead"):
            ours = snn.CrossEntropyLoss(size_average=size_average, reduce=reduce)
        assert ours.reduction == reduction

    def test_z_loss_adds_mean_lse_squared_over_counted_elements(self, rng):
        x, y = _t(rng.normal(0, 3, (6, 5))), _t(np.array([0, -100, 4, 1, -100, 2]))
        counted = y != -100
        ref = torch.nn.functional.cross_entropy(x, y) + 1e-2 * torch.logsumexp(x[counted], 1).pow(2).mean()
        assert_same(snn.CrossEntropyLoss(z_loss=1e-2)(x, y), ref)

    def test_softcap_caps_the_logits_first(self, rng):
        x, y = _t(rng.normal(0, 50, (6, 5))), _t(rng.integers(0, 5, 6))
        _check_parity(
            snn.CrossEntropyLoss(softcap=30.0),
            lambda v, t: torch.nn.functional.cross_entropy(30 * torch.tanh(v / 30), t),
            x,
            y,
        )

    def test_where_equals_minus_inf_logits(self, rng):
        x, y = _t(rng.normal(size=(4, 3, 2))), _t(np.array([[0, 2], [1, 0], [2, 2], [0, 1]]))
        keep = _t(np.array([True, False, True]))[:, None]  # classes on axis 1: shape (C, 1)
        ours = snn.CrossEntropyLoss(where=keep, reduction="none")
        ref = torch.nn.CrossEntropyLoss(reduction="none")
        y = torch.where(y == 1, 0, y)  # targets on allowed classes
        _check_parity(ours, lambda v, t: ref(v.masked_fill(~keep, -torch.inf), t), x, y)

    def test_every_target_ignored_is_zero_not_nan(self, rng):
        x = _t(rng.normal(size=(3, 4)), requires_grad=True)
        loss = snn.CrossEntropyLoss()(x, _t(np.full(3, -100)))
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(x.grad, torch.zeros_like(x))
        assert torch.nn.CrossEntropyLoss()(x, _t(np.full(3, -100))).isnan()  # what it replaces gives NaN

    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("reduction", "avg", r"reduction='avg' is not one of"),
            ("label_smoothing", 1.5, r"label_smoothing=1.5 is not allowed; it must be in \[0, 1\]"),
            ("z_loss", -1.0, r"z_loss=-1.0 is not allowed"),
            ("softcap", 0.0, r"softcap=0.0 is not allowed"),
            ("ignore_index", 1.5, r"ignore_index=1.5 is not an int"),
        ],
    )
    def test_bad_options_refused_when_built(self, option, value, message):
        with pytest.raises(ArgumentError, match=message):
            snn.CrossEntropyLoss(**{option: value})

    def test_weight_of_the_wrong_length_named_at_the_call(self, rng):
        loss = snn.CrossEntropyLoss(weight=_t(np.ones(3)))
        with pytest.raises(ShapeError, match=r"weight of shape \(3,\) must have one entry per class: shape \(5,\)"):
            loss(_t(rng.normal(size=(2, 5))), _t(np.array([0, 1])))


class TestNLLLoss:
    @pytest.mark.parametrize(
        ("shape_axis", "weighted", "reduction", "ignore_index"),
        list(itertools.product(SHAPES, [False, True], REDUCTIONS, [None, -100, 2])),
    )
    def test_matches_torch(self, shape_axis, weighted, reduction, ignore_index, rng):
        shape, axis = shape_axis
        log_probs = torch.log_softmax(_t(rng.uniform(-5, 5, shape)), axis)
        y = _class_targets(rng, shape, axis, ignore_index)
        opts = dict(
            weight=_t(rng.uniform(0.5, 2.0, shape[axis])) if weighted else None,
            ignore_index=-100 if ignore_index is None else ignore_index,
            reduction=reduction,
        )
        _check_parity(snn.NLLLoss(**opts), torch.nn.NLLLoss(**opts), log_probs, y)

    def test_bad_reduction_refused_when_built(self):
        with pytest.raises(ArgumentError, match="reduction='avg' is not one of"):
            snn.NLLLoss(reduction="avg")


class TestBCEWithLogitsLoss:
    @pytest.mark.parametrize(
        ("weight", "pos_weight", "reduction"),
        list(itertools.product([None, "row", "full"], [None, "scalar", "class"], REDUCTIONS)),
    )
    def test_matches_torch(self, weight, pos_weight, reduction, rng):
        shape = (4, 3)
        x, t = _t(rng.normal(0, 4, shape)), _t(rng.uniform(0, 1, shape))
        weights = {None: None, "row": _t(rng.uniform(0.5, 2, (4, 1))), "full": _t(rng.uniform(0.5, 2, shape))}
        pos_weights = {None: None, "scalar": _t(np.array([1.5])), "class": _t(rng.uniform(0.5, 3, 3))}
        opts = dict(weight=weights[weight], pos_weight=pos_weights[pos_weight], reduction=reduction)
        _check_parity(snn.BCEWithLogitsLoss(**opts), torch.nn.BCEWithLogitsLoss(**opts), x, t)

    def test_far_negative_logit_keeps_its_loss(self):
        # log(sigmoid(-200)) underflows to -inf in float32; softplus(200) is 200.
        x = torch.tensor([-200.0])
        assert snn.BCEWithLogitsLoss()(x, torch.tensor([1.0])).item() == 200.0


class TestSoftmaxModules:
    @pytest.mark.parametrize(("pair", "dim"), list(itertools.product(["Softmax", "LogSoftmax"], [0, 1, -1, 2])))
    def test_matches_torch(self, pair, dim, rng):
        x = _t(rng.normal(0, 5, (3, 4, 5)))
        g = _t(rng.normal(size=(3, 4, 5)))

        def run(module):
            v = x.clone().requires_grad_()
            out = module(v)
            out.backward(g)
            return out.detach(), v.grad

        (out, grad), (ref, ref_grad) = run(getattr(snn, pair)(dim)), run(getattr(torch.nn, pair)(dim))
        assert_same(out, ref)
        assert_same(grad, ref_grad)

    @pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
    def test_implicit_dim_refused(self, name):
        with pytest.raises(ArgumentError, match=rf"{name}\(dim=None\) is not allowed.*pass dim"):
            getattr(snn, name)()


class TestLinearCrossEntropyLoss:
    @pytest.mark.parametrize(
        ("bias", "weighted", "reduction", "smoothing"),
        list(itertools.product([False, True], [False, True], REDUCTIONS, [0.0, 0.2])),
    )
    def test_equals_cross_entropy_of_the_layer(self, bias, weighted, reduction, smoothing, rng):
        h, y = rng.normal(size=(2, 3, 4)), rng.integers(0, 7, (2, 3))
        y[0, 1] = -100
        w, b = rng.normal(size=(7, 4)), rng.normal(size=7) if bias else None
        cw = _t(rng.uniform(0.5, 2, 7)) if weighted else None
        opts = dict(reduction=reduction, label_smoothing=smoothing)
        ours = snn.LinearCrossEntropyLoss(weight=cw, chunk_size=3, **opts)  # three chunks, the last one short
        ref = torch.nn.CrossEntropyLoss(weight=cw, **opts)

        def run(loss_of):
            hh, ww = _t(h, True), _t(w, True)
            bb = None if b is None else _t(b, True)
            loss = loss_of(hh, ww, bb)
            loss.backward(torch.ones_like(loss))
            return [loss.detach(), hh.grad, ww.grad] + ([] if b is None else [bb.grad])

        got = run(lambda hh, ww, bb: ours(hh, ww, _t(y), bb))
        want = run(lambda hh, ww, bb: ref(torch.nn.functional.linear(hh, ww, bb).permute(0, 2, 1), _t(y)))
        for a, e in zip(got, want, strict=True):
            assert_same(a, e)

    def test_owns_no_parameters(self):
        assert list(snn.LinearCrossEntropyLoss().parameters()) == []

    def test_target_shape_named(self, rng):
        with pytest.raises(ShapeError, match=r"target of shape \(5,\) must be input's shape \(2, 3, 4\) without"):
            snn.LinearCrossEntropyLoss()(_t(rng.normal(size=(2, 3, 4))), _t(rng.normal(size=(7, 4))), _t(np.zeros(5)))


def _modules():
    """One of each module, with options away from the defaults, and arguments for a call."""
    rng = np.random.default_rng(7)
    x, y, w = _t(rng.normal(size=(4, 5))), _t(np.array([0, -100, 4, 2])), _t(rng.uniform(0.5, 2, 5))
    return {
        "CrossEntropyLoss": (
            snn.CrossEntropyLoss(w, label_smoothing=0.1, z_loss=1e-3, softcap=20.0, where=_t(np.ones(5, bool))),
            (x, y),
        ),
        "NLLLoss": (snn.NLLLoss(w, reduction="sum"), (torch.log_softmax(x, 1), y)),
        "BCEWithLogitsLoss": (
            snn.BCEWithLogitsLoss(w, pos_weight=_t(rng.uniform(1, 2, 5))),
            (x, _t(rng.uniform(0, 1, (4, 5)))),
        ),
        "LogSoftmax": (snn.LogSoftmax(dim=1), (x,)),
        "Softmax": (snn.Softmax(dim=0), (x,)),
        "LinearCrossEntropyLoss": (
            snn.LinearCrossEntropyLoss(weight=w, ignore_index=4, z_loss=1e-3, chunk_size=2),
            (_t(rng.normal(size=(4, 3))), _t(rng.normal(size=(5, 3))), _t(np.array([0, 4, 1, 2]))),
        ),
    }


MODULES = list(_modules())


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "BCEWithLogitsLoss"])
def test_target_asking_for_a_gradient_refused(name, rng):
    # PyTorch would differentiate a probability target; ours would give it no gradient, so it says so.
    x, q = _t(rng.normal(size=(3, 4))), _t(rng.dirichlet(np.ones(4), 3), requires_grad=True)
    with pytest.raises(ArgumentError, match=r"target requires grad.*pass target.detach\(\)"):
        getattr(snn, name)()(x, q)
    with torch.no_grad():
        assert getattr(snn, name)()(x, q).shape == ()


class TestModuleProtocol:
    @pytest.mark.parametrize("name", MODULES)
    def test_pickles(self, name):
        module, args = _modules()[name]
        back = pickle.loads(pickle.dumps(module))
        assert type(back) is type(module) and repr(back) == repr(module)
        assert torch.equal(back(*args), module(*args))

    @pytest.mark.parametrize("name", MODULES)
    def test_state_dict_round_trips(self, name):
        module, args = _modules()[name]
        state = module.state_dict()
        fresh = pickle.loads(pickle.dumps(module))  # the same options, its buffers then overwritten
        for buffer in fresh.buffers():
            buffer.zero_()
        fresh.load_state_dict(state)
        assert torch.equal(fresh(*args), module(*args))

    @pytest.mark.parametrize(
        ("name", "keys"),
        [
            ("CrossEntropyLoss", ["weight", "where"]),
            ("NLLLoss", ["weight"]),
            ("BCEWithLogitsLoss", ["weight", "pos_weight"]),
            ("LinearCrossEntropyLoss", ["weight"]),
        ],
    )
    def test_weights_are_buffers_as_in_torch(self, name, keys):
        module, _ = _modules()[name]
        assert list(module.state_dict()) == keys
        assert list(module.parameters()) == []

    def test_loads_torchs_state_dict(self, rng):
        w = _t(rng.uniform(0.5, 2, 5))
        ours = snn.CrossEntropyLoss(torch.ones(5, dtype=torch.float64))
        ours.load_state_dict(torch.nn.CrossEntropyLoss(w).state_dict())
        assert torch.equal(ours.weight, w)

    def test_repr_shows_the_options(self):
        module, _ = _modules()["CrossEntropyLoss"]
        assert repr(module) == (
            "CrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.1, z_loss=0.001, "
            "softcap=20.0, weight=Tensor(5,), where=Tensor(5,))"
        )
        assert repr(snn.LinearCrossEntropyLoss(chunk_size=8)) == (
            "LinearCrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0, "
            "softcap=None, chunk_size=8)"
        )
        assert repr(snn.BCEWithLogitsLoss(reduction="sum")) == "BCEWithLogitsLoss(reduction='sum')"

    @pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "Softmax", "LogSoftmax"])
    def test_is_a_torch_module_of_the_same_name(self, name):
        module, _ = _modules()[name]
        assert isinstance(module, getattr(torch.nn, name))

    @pytest.mark.filterwarnings(DYNAMO_LRU_CACHE)
    @pytest.mark.parametrize("name", MODULES)
    def test_torch_compile_traces_forward_and_backward(self, name):
        module, args = _modules()[name]
        torch._dynamo.reset()
        fullgraph = True  # linear cross-entropy too: its chunks are custom ops
        differentiable = 2 if name == "LinearCrossEntropyLoss" else 1  # hidden and the layer's weight, or the input
        compiled = torch.compile(module, fullgraph=fullgraph, backend="aot_eager")

        def run(fn):
            leaves = [a.detach().clone().requires_grad_(i < differentiable) for i, a in enumerate(args)]
            out = fn(*leaves)
            out.backward(torch.ones_like(out))
            return [out.detach()] + [a.grad for a in leaves[:differentiable]]

        got = run(compiled)  # compiled first: the step must trace cold
        for a, e in zip(got, run(module), strict=True):
            assert torch.equal(a, e)


class _Net(torch.nn.Module):
    """A small classifier written with torch.nn: an attention pooling (Softmax), then four losses."""

    def __init__(self, weight):
        super().__init__()
        self.embed = torch.nn.Linear(3, 8)
        self.score = torch.nn.Linear(8, 1)
        self.attend = torch.nn.Softmax(dim=1)
        self.head = torch.nn.Linear(8, 5)
        self.log_softmax = torch.nn.LogSoftmax(dim=-1)
        self.ce = torch.nn.CrossEntropyLoss(weight, label_smoothing=0.1)
        self.nll = torch.nn.NLLLoss(weight, reduction="sum")
        self.bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0, dtype=torch.float64))

    def forward(self, x, y, multi):
        h = torch.tanh(self.embed(x))  # (B, T, 8)
        pooled = (self.attend(self.score(h)) * h).sum(1)
        logits = self.head(pooled)
        return self.ce(logits, y) + 0.1 * self.nll(self.log_softmax(logits), y) + self.bce(logits, multi)


def _swap(model):
    """``model`` with each torch.nn module of the family replaced by stablesoftmax.nn's, same options."""
    for name, child in model.named_children():
        if type(child) is torch.nn.CrossEntropyLoss:
            new = snn.CrossEntropyLoss(
                child.weight, None, child.ignore_index, None, child.reduction, child.label_smoothing
            )
        elif type(child) is torch.nn.NLLLoss:
            new = snn.NLLLoss(child.weight, ignore_index=child.ignore_index, reduction=child.reduction)
        elif type(child) is torch.nn.BCEWithLogitsLoss:
            new = snn.BCEWithLogitsLoss(child.weight, reduction=child.reduction, pos_weight=child.pos_weight)
        elif type(child) in (torch.nn.Softmax, torch.nn.LogSoftmax):
            new = getattr(snn, type(child).__name__)(child.dim)
        else:
            continue
        setattr(model, name, new)
    return model


def test_training_curve_equals_torch_nn_step_for_step(rng):
    x = _t(rng.normal(size=(16, 6, 3)))
    y = _t(rng.integers(0, 5, 16))
    y[::5] = -100
    multi = _t(rng.integers(0, 2, (16, 5)).astype(np.float64))
    weight = _t(rng.uniform(0.5, 2, 5))

    def curve(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = model(x, y, multi)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses), torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    torch.manual_seed(0)
    reference = _Net(weight).double()
    swapped = _swap(pickle.loads(pickle.dumps(reference)))
    assert sum(type(m).__module__ == "stablesoftmax.nn" for m in swapped.children()) == 5
    ours, ours_params = curve(swapped)
    theirs, their_params = curve(reference)
    assert theirs[-1] < 0.8 * theirs[0]  # it learns, so the steps move the parameters
    assert_same(ours, theirs)
    assert_same(ours_params, their_params)


def test_docstring_examples():
    result = doctest.testmod(snn, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_import_stablesoftmax_imports_neither_torch_nor_nn():
    code = "import sys, stablesoftmax; print(sorted(m for m in ('torch', 'stablesoftmax.nn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

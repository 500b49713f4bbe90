"""stablesoftmax.distributed on real process groups: every rank gets the single-process result.

One spawn of four gloo processes on 127.0.0.1 runs every case. Groups of 2 and
3 ranks are subgroups of it (the 3-rank one starts at global rank 1, so group
ranks differ from global ones); the 4-rank cases use the default group. Shards
are uneven, and one is empty. The processes only compute the distributed
results and their gradients; this process builds the same inputs, computes the
single-process references on the concatenated logits and compares:

* losses within 4 ulp in float64 and 1 ulp in float32 (special values exactly),
  the same bits on every rank;
* each rank's gradient within 1e-12 relative of its slice of the single-process
  gradient in float64 (1 ulp in float32), exact zeros where that is zero.

Every collective has the group's 60 s timeout, and the spawn a join deadline.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import stablesoftmax as ss  # noqa: E402
from stablesoftmax import distributed as sd  # noqa: E402

WORLD = 4
GROUP_RANKS = {2: (0, 1), 3: (1, 2, 3), 4: (0, 1, 2, 3)}  # global ranks of each group, in group-rank order
SHARDS = {2: (7, 3), 3: (4, 0, 6), 4: (1, 4, 2, 3)}  # classes per group rank: uneven, one empty
DEADLINE_S = 420  # the whole spawn, on two shared cores; each collective also times out after 60 s
ULP_GOAL = {"float64": 4, "float32": 1, "float16": 1}
GRAD_REL_GOAL = 1e-12  # float64; float32 gradients within 1 ulp
N = 12


# --------------------------------------------------------------------------
# The cases, and their inputs (built alike in every process from the case's name)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    fn: str  # a function of stablesoftmax.distributed, or "dtensor"
    world: int
    dtype: str
    data: str = "random"  # "random", "contract", "ignored" (every target ignored), "nan"
    options: tuple = ()  # (name, value); "weight"/"where"/"class_weight" True means: use the inputs' array
    probs: bool = False
    bounds: bool = False  # pass bounds= (they are right)
    axis: int = -1

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options) or "plain"
        extra = "".join(
            [
                ",probs" if self.probs else "",
                ",bounds" if self.bounds else "",
                f",axis={self.axis}" if self.axis != -1 else "",
            ]
        )
        return f"{self.fn}-w{self.world}-{self.dtype}-{self.data}-{opts}{extra}"

    @property
    def reduction(self) -> str:
        return dict(self.options).get("reduction", "mean")


def _ce_options() -> list[tuple[tuple, bool]]:
    return [
        ((), False),
        ((("reduction", "sum"),), False),
        ((("reduction", "none"),), False),
        ((("weight", True),), False),
        ((("ignore_index", 1),), False),
        ((("label_smoothing", 0.1),), False),
        ((("label_smoothing", 0.25), ("weight", True), ("where", True)), False),
        ((("z_loss", 1e-3),), False),
        ((("softcap", 5.0),), False),
        ((("where", True),), False),
        (
            (("label_smoothing", 0.1), ("z_loss", 1e-2), ("softcap", 30.0), ("weight", True), ("reduction", "sum")),
            False,
        ),
        ((), True),
        ((("label_smoothing", 0.2), ("weight", True)), True),
        ((("where", True),), True),
        ((("reduction", "none"), ("where", True)), True),
    ]


def _cases() -> list[Case]:
    out = []
    for world, dtype in itertools.product((2, 3, 4), ("float64", "float32")):
        for opts, probs in _ce_options():
            for data in ("random", "contract"):
                out.append(Case("cross_entropy", world, dtype, data, opts, probs, bounds=world == 3))
        out.append(Case("cross_entropy", world, dtype, "ignored", (("weight", True),)))
        out.append(Case("cross_entropy", world, dtype, "nan", (("reduction", "none"),)))
        out.append(Case("cross_entropy", world, dtype, "contract", (("label_smoothing", 0.1),), axis=1))
        for fn in ("logsumexp", "log_softmax", "softmax"):
            for data, opts in (("random", ()), ("contract", ()), ("contract", (("where", True),)), ("nan", ())):
                out.append(Case(fn, world, dtype, data, opts))
        for opts in (
            (),
            (("label_smoothing", 0.2), ("class_weight", True)),
            (("z_loss", 1e-2), ("reduction", "sum")),
            (("softcap", 4.0), ("bias", True), ("chunk_size", 2)),
            (("ignore_index", 2), ("bias", True)),
        ):
            out.append(Case("linear_cross_entropy", world, dtype, "random", opts))
    out.append(Case("dtensor", 4, "float64", "contract", (("label_smoothing", 0.1),)))
    for opts in ((), (("label_smoothing", 0.1), ("weight", True))):  # 16-bit: computed wide, rounded once
        out.append(Case("cross_entropy", 4, "float16", "random", opts + (("reduction", "none"),)))
    out.append(Case("softmax", 4, "float16", "random"))
    return out


CASES = _cases()
NATIVE = [c for c in CASES if c.world == 3 and c.fn != "dtensor"]


def _rng(case: Case) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(case.name.encode()))


def inputs(case: Case) -> dict:
    """The full (unsharded) arrays of a case, as NumPy arrays of the case's dtype."""
    rng = _rng(case)
    v = sum(SHARDS[case.world])
    dt = np.dtype(case.dtype)
    if case.fn == "linear_cross_entropy":
        return _layer(rng, v, dt, case)
    x = rng.standard_normal((N, v)) * 3
    y = rng.integers(0, v, N)
    if case.data == "contract":
        _contract_rows(x, y, dt, case.reduction == "none")
    if case.data == "nan":
        x[3, v // 2] = np.nan
    if case.data == "ignored":
        y[:] = -100
    opts = dict(case.options)
    if opts.get("ignore_index") is not None:
        y[::3] = opts["ignore_index"]
    where = rng.uniform(size=(N, v)) < 0.8
    where[np.arange(N), y % v] = True  # the target stays allowed; row 10 below is masked whole
    where[10] = False
    x[10, 0] = np.nan  # a masked NaN is ignored (where there is a mask)
    if "where" not in opts:
        x[10, 0] = 1.5
    if case.data == "contract" and case.reduction == "none" and "where" in opts:
        where[0, y[0]] = False  # the target masked: that element's loss is +inf
    out = {
        "x": x.astype(dt),
        "y": y,
        "weight": rng.uniform(0.5, 2.0, v),
        "where": where,
        "g": rng.uniform(0.5, 1.5, N).astype(dt),
    }
    if case.probs:
        q = rng.uniform(size=(N, v)) * (rng.uniform(size=(N, v)) < 0.7)
        q[:, 0] += 0.1
        if case.reduction != "none":  # no mass on -inf or masked logits: finite losses
            q[np.isneginf(x) | (~where if "where" in opts else False)] = 0.0
        total = q.sum(axis=1, keepdims=True)  # 0 on a row without mass, which every loss drops
        out["y"] = np.where(total > 0, q / np.where(total > 0, total, 1.0), 1.0 / v).astype(dt)
    if case.axis == 1:  # PyTorch's (N, C, d) layout: rows 2k and 2k+1 become one sample's two positions
        out["x"] = np.ascontiguousarray(out["x"].reshape(N // 2, 2, v).transpose(0, 2, 1))
        out["where"] = np.ascontiguousarray(where.reshape(N // 2, 2, v).transpose(0, 2, 1))
        out["y"] = y.reshape(N // 2, 2)
        out["g"] = out["g"].reshape(N // 2, 2)
    out["cotangent"] = rng.uniform(-1, 1, out["x"].shape).astype(dt)
    return out


def _contract_rows(x: np.ndarray, y: np.ndarray, dt: np.dtype, infinite_losses: bool) -> None:
    """The contract's rows, each in its own row, placed so that they cross shard boundaries."""
    v = x.shape[1]
    big = 1e300 if dt == np.float64 else 1e37
    x[1] = -np.inf  # no mass: dropped, loss 0, gradient 0
    x[2, v // 2] = np.inf  # a +inf entry
    y[2] = (v // 2 + 1) % v if infinite_losses else v // 2
    x[3, 0] = x[3, v - 1] = np.inf  # +inf in the first and the last shard: the max is tied across ranks
    y[3] = 0
    x[4] = np.linspace(-1, 1, v) * big  # huge logits
    x[5, 1] = x[5, v - 2] = 50.0  # a finite max tied across ranks
    y[5] = v - 2
    x[6, y[6]] = 60.0  # a confident prediction: s is far below one ulp of 1
    x[7, :] = -np.inf
    x[7, v - 1] = 0.0  # one live entry, in the last shard
    y[7] = v - 1
    if infinite_losses:
        x[8, y[8]] = -np.inf  # the target's logit is -inf: that loss is +inf


def _layer(rng: np.random.Generator, v: int, dt: np.dtype, case: Case) -> dict:
    """Hidden states and weights on a dyadic grid, so that ``h @ W.T + b`` is exact in any order and any dtype."""
    h = 8
    hidden = rng.integers(-8, 9, (N, h)) / 8.0
    weight = rng.integers(-16, 17, (v, h)) / 16.0
    bias = rng.integers(-8, 9, v) / 4.0
    y = rng.integers(0, v, N)
    opts = dict(case.options)
    if opts.get("ignore_index") is not None:
        y[::4] = opts["ignore_index"]
    return {
        "hidden": hidden.astype(dt),
        "w": weight.astype(dt),
        "bias": bias.astype(dt),
        "y": y,
        "weight": rng.uniform(0.5, 2.0, v),
        "g": rng.uniform(0.5, 1.5, N).astype(dt),
    }


# --------------------------------------------------------------------------
# In the spawned processes
# --------------------------------------------------------------------------


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    groups = {w: (None if w == WORLD else dist.new_group(list(GROUP_RANKS[w]))) for w in GROUP_RANKS}
    results: dict = {}
    for case in CASES:
        if rank in GROUP_RANKS[case.world]:
            results[case.name] = _run_case(case, GROUP_RANKS[case.world].index(rank), groups[case.world])
    for case in NATIVE:  # the path CUDA tensors take: torch operations throughout, no NumPy view
        if rank in GROUP_RANKS[case.world]:
            with ss.reference_path():
                results[case.name + "|native"] = _run_case(
                    case, GROUP_RANKS[case.world].index(rank), groups[case.world]
                )
    results["errors"] = _bad_inputs(rank)
    results["example"] = _example().run()
    results["edges"] = _edges(rank)
    with open(Path(outdir) / f"{rank}.pkl", "wb") as fp:
        pickle.dump(results, fp)
    dist.destroy_process_group()


def _edges(rank: int) -> dict:
    """Empty batches, no classes on any rank, and a sharded axis 0 with keepdims, on the default group."""
    k = SHARDS[4][rank]
    lo, hi = _offsets(4)[rank : rank + 2]
    empty = torch.ones(0, k, dtype=torch.float64, requires_grad=True)
    mean = sd.cross_entropy(empty, torch.zeros(0, dtype=torch.int64))
    mean.backward()
    none = sd.cross_entropy(empty, torch.zeros(0, dtype=torch.int64), reduction="none")
    classless = torch.ones(3, 0, dtype=torch.float64)
    try:
        sd.cross_entropy(classless, torch.zeros(3, dtype=torch.int64))
        refused = None
    except ss.StableSoftmaxError as exc:
        refused = type(exc).__name__
    full = torch.linspace(-3, 4, 30, dtype=torch.float64).reshape(10, 3) ** 2
    col = full[lo:hi].clone().requires_grad_()
    lse = sd.logsumexp(col, axis=0, keepdims=True)
    lse.backward(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64))
    return {
        "mean": mean.item(),
        "grad_shape": tuple(empty.grad.shape),
        "none_shape": tuple(none.shape),
        "lse_classless": sd.logsumexp(classless).numpy(),
        "softmax_classless": tuple(sd.softmax(classless).shape),
        "refused": refused,
        "axis0": lse.detach().numpy(),
        "axis0_grad": col.grad.numpy(),
    }


def _example():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "vocab_parallel.py"
    spec = importlib.util.spec_from_file_location("examples_vocab_parallel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _offsets(world: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(SHARDS[world])])


def _run_case(case: Case, r: int, group) -> dict:
    data = inputs(case)
    lo, hi = _offsets(case.world)[r : r + 2]
    if case.fn == "linear_cross_entropy":
        return _run_linear(case, data, lo, hi, group)
    axis = case.axis
    take = (slice(None), slice(lo, hi)) if axis == -1 else (slice(None), slice(lo, hi), slice(None))
    x = torch.tensor(data["x"][take], requires_grad=True)
    kwargs = _torch_options(case, data, take)
    if case.bounds:
        kwargs["bounds"] = [int(b) for b in _offsets(case.world)]
    if case.fn == "dtensor":
        return _run_dtensor(case, data, kwargs)
    if case.fn == "cross_entropy":
        y = torch.tensor(data["y"][take] if case.probs else data["y"])
        out = sd.cross_entropy(x, y, group=group, axis=axis, **kwargs)
        out.backward(torch.tensor(data["g"]) if case.reduction == "none" else None)
    else:
        out = getattr(sd, case.fn)(x, group=group, **kwargs)
        cot = data["g"] if case.fn == "logsumexp" else data["cotangent"][take]
        out.backward(torch.tensor(cot))
    return {"out": out.detach().numpy(), "grad": x.grad.numpy()}


def _torch_options(case: Case, data: dict, take: tuple) -> dict:
    out = {}
    for k, v in case.options:
        if k == "weight":
            out[k] = torch.tensor(data["weight"])
        elif k == "where":
            out[k] = torch.tensor(data["where"][take])
        else:
            out[k] = v
    return out


def _run_linear(case: Case, data: dict, lo: int, hi: int, group) -> dict:
    h = torch.tensor(data["hidden"], requires_grad=True)
    w = torch.tensor(data["w"][lo:hi], requires_grad=True)
    opts = dict(case.options)
    b = torch.tensor(data["bias"][lo:hi], requires_grad=True) if opts.pop("bias", False) else None
    if opts.pop("class_weight", False):
        opts["class_weight"] = torch.tensor(data["weight"])
    out = sd.linear_cross_entropy(h, w, torch.tensor(data["y"]), group=group, bias=b, **opts)
    out.backward(torch.tensor(data["g"]) if case.reduction == "none" else None)
    return {
        "out": out.detach().numpy(),
        "grad": w.grad.numpy(),
        "d_hidden": h.grad.numpy(),
        "d_bias": None if b is None else b.grad.numpy(),
    }


def _run_dtensor(case: Case, data: dict, kwargs: dict) -> dict:
    """A DTensor made by distribute_tensor (torch.chunk's even-first split), as ColwiseParallel would leave it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    dt = distribute_tensor(torch.tensor(data["x"]), mesh, [Shard(1)]).requires_grad_()
    out = sd.cross_entropy(dt, torch.tensor(data["y"]), **kwargs)
    out.backward()
    return {"out": out.detach().numpy(), "grad": dt.grad.full_tensor().numpy(), "placements": str(dt.grad.placements)}


BAD = [
    "bounds",
    "target_range",
    "smoothing_differs",
    "reduction_on_one_rank",
    "rows_differ",
    "targets_differ",
    "weight_length",
    "different_functions",
    "probs_with_ignore",
    "not_a_tensor_on_one_rank",
    "negative_weight",
    "negative_probability_on_one_rank",
    "weight_requires_grad",
    "probabilities_require_grad",
    "second_derivative",
    "second_derivative_of_logsumexp",
    "replicated_dtensor",
]


def _grad_of(fn, x, *args):
    """The gradient of ``fn`` with its graph kept (``create_graph=True``), as a second derivative needs."""
    leaf = x.clone().requires_grad_()
    return torch.autograd.grad(fn(leaf, *args), leaf, create_graph=True)


def _bad_inputs(rank: int) -> dict:
    """Each bad call on the default group of four, recorded as ``(class name, message)`` per rank, then a good one."""
    from torch.distributed.tensor import DeviceMesh, Replicate, distribute_tensor

    x = torch.ones(3, SHARDS[4][rank], dtype=torch.float64)
    y = torch.tensor([0, 9, 2])
    q = torch.full_like(x, 0.1)
    q[1, 0] = -0.1 if rank == 2 else 0.1
    replicated = distribute_tensor(torch.ones(3, 10), DeviceMesh("cpu", list(range(WORLD))), [Replicate()])
    calls = {
        "bounds": lambda: sd.cross_entropy(x, y, bounds=[0, 1, 5, 8, 11]),
        "target_range": lambda: sd.cross_entropy(x, torch.tensor([0, 10, 2])),
        "smoothing_differs": lambda: sd.cross_entropy(x, y, label_smoothing=0.1 * (rank == 2)),
        "reduction_on_one_rank": lambda: sd.cross_entropy(x, y, reduction="avg" if rank == 1 else "mean"),
        "rows_differ": lambda: sd.cross_entropy(x[: 2 + (rank == 3)], y[: 2 + (rank == 3)]),
        "targets_differ": lambda: sd.cross_entropy(x, y if rank else torch.tensor([0, 9, 3])),
        "weight_length": lambda: sd.cross_entropy(x, y, weight=torch.ones(9)),
        "different_functions": lambda: sd.logsumexp(x) if rank == 3 else sd.softmax(x),
        "probs_with_ignore": lambda: sd.cross_entropy(x, torch.ones_like(x) / 10, ignore_index=0),
        "not_a_tensor_on_one_rank": lambda: sd.logsumexp(x.numpy() if rank == 0 else x),
        "negative_weight": lambda: sd.cross_entropy(x, y, weight=torch.tensor([1.0, 1, 1, -1, 1, 1, 1, 1, 1, 1])),
        "negative_probability_on_one_rank": lambda: sd.cross_entropy(x, q),
        "replicated_dtensor": lambda: sd.cross_entropy(replicated, y),
        "weight_requires_grad": lambda: sd.cross_entropy(x, y, weight=torch.ones(10, requires_grad=True)),
        "probabilities_require_grad": lambda: sd.cross_entropy(x, torch.full_like(x, 0.1).requires_grad_()),
        "second_derivative": lambda: _grad_of(sd.cross_entropy, x, y),
        "second_derivative_of_logsumexp": lambda: _grad_of(lambda a: sd.logsumexp(a).sum(), x),
    }
    out = {}
    for name in BAD:
        try:
            calls[name]()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 -- recorded for the test to judge
            out[name] = (type(exc).__name__, str(exc))
    out["after"] = float(sd.cross_entropy(x, y))  # the group still works after every refusal
    return out


# --------------------------------------------------------------------------
# In this process: spawn once, then compare case by case
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    """Every case's results on every global rank: one spawn of four processes, bounded by DEADLINE_S."""
    import torch.multiprocessing as mp

    outdir = tmp_path_factory.mktemp("distributed")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} processes did not finish within {DEADLINE_S} s")
    out = []
    for rank in range(WORLD):
        with open(outdir / f"{rank}.pkl", "rb") as fp:
            out.append(pickle.load(fp))
    return out


def ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Distance in units of ``ref``'s last place; 0 where both are the same special value."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64)) / np.spacing(np.abs(ref)).astype(np.float64)
    return np.where(same, 0.0, np.where(np.isfinite(d), d, np.inf))


def grad_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Relative error in float64, ulps in narrower dtypes; inf where one is zero or NaN and the other is not."""
    if ref.dtype != np.float64:
        return float(ulps(got, ref).max(initial=0))
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(got - ref) / np.abs(ref)
    return float(np.where(same, 0.0, np.where(np.isfinite(rel), rel, np.inf)).max(initial=0))


def reference(case: Case) -> dict:
    """The single-process results on the concatenated logits and their gradients, on the array-API reference path.

    The reference path is the oracle the compiled kernels are held to; with NumPy arrays it runs in NumPy, as the
    distributed functions run on CPU tensors, so both take their ``tanh`` and ``exp`` from the same library.
    """
    data = inputs(case)
    with ss.reference_path():
        if case.fn == "linear_cross_entropy":
            return _reference_linear(case, data)
        opts = {k: (data[k] if v is True else v) for k, v in case.options}
        x = data["x"]
        if case.fn in ("cross_entropy", "dtensor"):
            g = data["g"] if case.reduction == "none" else 1.0
            loss, grad = ss.cross_entropy_with_grad(x, data["y"], g=g, axis=case.axis, **opts)
            return {"out": np.asarray(loss), "grad": grad}
        cot = data["g"] if case.fn == "logsumexp" else data["cotangent"]
        out = getattr(ss, case.fn)(x, **opts)
        return {"out": np.asarray(out), "grad": getattr(ss, case.fn + "_grad")(x, cot, **opts)}


def _reference_linear(case: Case, data: dict) -> dict:
    opts = dict(case.options)
    opts.pop("chunk_size", None)
    bias = data["bias"] if opts.pop("bias", False) else None
    if opts.pop("class_weight", False):
        opts["weight"] = data["weight"]
    h, w = data["hidden"], data["w"]
    logits = h @ w.T + (0 if bias is None else bias)  # exact: the inputs are on a dyadic grid
    g = data["g"] if case.reduction == "none" else 1.0
    loss, dlogits = ss.cross_entropy_with_grad(logits, data["y"], g=g, **opts)
    return {
        "out": np.asarray(loss),
        "grad": dlogits.T @ h,
        "d_hidden": dlogits @ w,
        "d_bias": None if bias is None else dlogits.sum(axis=0),
    }


def _slice(case: Case, a: np.ndarray, r: int) -> np.ndarray:
    lo, hi = _offsets(case.world)[r : r + 2]
    return a[lo:hi] if case.fn == "linear_cross_entropy" else (a[:, lo:hi] if case.axis == -1 else a[:, lo:hi, :])


def _check_outputs(case: Case, runs: list[dict], ref: dict, key: str = "") -> None:
    ranks = GROUP_RANKS[case.world]
    first = runs[ranks[0]][case.name + key]["out"]
    for gr in ranks:
        got = runs[gr][case.name + key]["out"]
        if case.fn in ("log_softmax", "softmax"):
            expect = _slice(case, ref["out"], ranks.index(gr))
        else:
            expect = ref["out"]
            assert got.tobytes() == first.tobytes(), "ranks disagree on the loss"
        assert ulps(got, expect).max(initial=0) <= ULP_GOAL[case.dtype], (got, expect)
        assert np.isnan(got).sum() == np.isnan(expect).sum()


def _check_gradients(case: Case, runs: list[dict], ref: dict, key: str = "") -> None:
    goal = GRAD_REL_GOAL if case.dtype == "float64" else 1.0
    for r, gr in enumerate(GROUP_RANKS[case.world]):
        got = runs[gr][case.name + key]["grad"]
        expect = ref["grad"] if case.fn == "dtensor" else _slice(case, ref["grad"], r)
        assert grad_error(got, expect) <= goal, (r, got, expect)


class TestCrossEntropy:
    @pytest.mark.parametrize("case", [c for c in CASES if c.fn == "cross_entropy"], ids=lambda c: c.name)
    def test_equals_one_process_on_every_rank(self, runs, case):
        ref = reference(case)
        _check_outputs(case, runs, ref)
        _check_gradients(case, runs, ref)

    @pytest.mark.parametrize("world", [2, 3, 4])
    def test_all_ignored_mean_is_zero_with_zero_gradient(self, runs, world):
        case = next(c for c in CASES if c.data == "ignored" and c.world == world and c.dtype == "float64")
        for gr in GROUP_RANKS[world]:
            assert runs[gr][case.name]["out"] == 0.0
            assert not runs[gr][case.name]["grad"].any()

    def test_contract_rows_are_finite_where_one_process_is(self, runs):
        """No NaN anywhere the single-process result has none, and the dropped row's loss is exactly 0."""
        for case in (c for c in CASES if c.fn == "cross_entropy" and c.data == "contract" and c.axis == -1):
            ref = reference(case)
            for gr in GROUP_RANKS[case.world]:
                got = runs[gr][case.name]
                assert not np.isnan(got["out"]).any() and not np.isnan(got["grad"]).any(), case.name
                if case.reduction == "none":
                    assert got["out"][1] == 0.0 and ref["out"][1] == 0.0


class TestReductions:
    @pytest.mark.parametrize(
        "case", [c for c in CASES if c.fn in ("logsumexp", "log_softmax", "softmax")], ids=lambda c: c.name
    )
    def test_equals_one_process_on_every_rank(self, runs, case):
        ref = reference(case)
        _check_outputs(case, runs, ref)
        _check_gradients(case, runs, ref)


class TestLinearCrossEntropy:
    @pytest.mark.parametrize("case", [c for c in CASES if c.fn == "linear_cross_entropy"], ids=lambda c: c.name)
    def test_equals_cross_entropy_of_the_exact_logits(self, runs, case):
        _check_linear(case, runs, "")


def _check_linear(case: Case, runs: list[dict], key: str) -> None:
    ref = reference(case)
    _check_outputs(case, runs, ref, key)
    # Each gradient is a matmul of d loss / d logits, a sum over rows (d weight, d bias) or over every rank's
    # classes (d hidden), so each is compared to its largest entry: 1e-12 of it in float64, and in float32
    # (N + V) ulps of it, the bound of a float32 sum of that many terms.
    tol = GRAD_REL_GOAL if case.dtype == "float64" else (N + sum(SHARDS[case.world])) * np.finfo(np.float32).eps
    for r, gr in enumerate(GROUP_RANKS[case.world]):
        got = runs[gr][case.name + key]
        for name in ("grad", "d_hidden", "d_bias"):
            if ref[name] is None:
                continue
            expect = ref[name] if name == "d_hidden" else _slice(case, ref[name], r)
            assert np.abs(got[name] - expect).max(initial=0) <= tol * np.abs(ref[name]).max(), name


class TestNativePath:
    """The 3-rank cases again with the kernels off: every array a torch tensor, as on a GPU."""

    @pytest.mark.parametrize("case", NATIVE, ids=lambda c: c.name)
    def test_equals_one_process_on_every_rank(self, runs, case):
        if case.fn == "linear_cross_entropy":
            _check_linear(case, runs, "|native")
            return
        ref = reference(case)
        _check_outputs(case, runs, ref, "|native")
        _check_gradients(case, runs, ref, "|native")


class TestDTensor:
    def test_sharded_dtensor_gives_the_loss_and_the_full_gradient(self, runs):
        case = next(c for c in CASES if c.fn == "dtensor")
        ref = reference(case)
        for gr in range(WORLD):
            got = runs[gr][case.name]
            assert ulps(got["out"], ref["out"]).max() <= ULP_GOAL[case.dtype]
            # distribute_tensor's backward gathers the shards' gradients into the full tensor on every rank
            assert grad_error(got["grad"], ref["grad"]) <= GRAD_REL_GOAL


class TestBadInput:
    """Each refusal is the same named error on every rank, and the group is usable afterwards."""

    EXPECT = {
        "bounds": ("ShapeError", "bounds=[0, 1, 5, 8, 11]"),
        "target_range": (
            "TargetError",
            "target value 10 at position (1,) is out of range; class indices must be in [0, 10)",
        ),
        "smoothing_differs": ("ArgumentError", "ranks disagree on label_smoothing: rank 0 has 0.0 and rank 2 has 0.1"),
        "reduction_on_one_rank": ("ArgumentError", "reduction='avg' is not one of"),
        "rows_differ": ("ShapeError", "rank 0 holds 2 rows and rank 3 holds 3"),
        "targets_differ": ("ArgumentError", "ranks disagree on target"),
        "weight_length": ("ShapeError", "weight of shape (9,) must have one entry per class of all ranks: shape (10,)"),
        "different_functions": (
            "ArgumentError",
            "ranks disagree on call: rank 0 has 'softmax' and rank 3 has 'logsumexp'",
        ),
        "probs_with_ignore": ("ArgumentError", "ignore_index=0 cannot be used with probability targets"),
        "not_a_tensor_on_one_rank": ("ArgumentError", "local_x is a ndarray"),
        "negative_weight": ("ArgumentError", "weight[3] = -1.0 is not allowed"),
        "negative_probability_on_one_rank": ("ArgumentError", "probability target has a negative entry -0.1"),
        "replicated_dtensor": ("ArgumentError", "must be Shard(-1) over a 1-D mesh"),
        "weight_requires_grad": ("GradientError", "weight requires grad, but stablesoftmax.distributed.cross_entropy"),
        "probabilities_require_grad": ("GradientError", "target requires grad"),
        "second_derivative": ("GradientError", "second derivative of stablesoftmax.distributed.cross_entropy"),
        "second_derivative_of_logsumexp": ("GradientError", "second derivative of stablesoftmax.distributed.logsumexp"),
    }

    @pytest.mark.parametrize("name", BAD)
    def test_named_error_on_every_rank(self, runs, name):
        cls, words = self.EXPECT[name]
        for gr in range(WORLD):
            got = runs[gr]["errors"][name]
            assert got is not None, f"rank {gr} raised nothing"
            assert got[0] == cls and words in got[1], (gr, got)

    def test_the_group_works_after_the_refusals(self, runs):
        expect = float(ss.cross_entropy(np.ones((3, sum(SHARDS[4]))), np.array([0, 9, 2])))
        assert all(runs[gr]["errors"]["after"] == expect for gr in range(WORLD))

    def test_uninitialised_group_is_a_named_error(self):
        assert not dist.is_initialized()
        with pytest.raises(ss.ArgumentError, match="not initialised; call torch.distributed.init_process_group"):
            sd.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
        with pytest.raises(ss.ArgumentError, match="not initialised"):
            sd.linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.int64))


class TestEdges:
    def test_empty_batch_and_no_classes_follow_the_contract(self, runs):
        for gr in range(WORLD):
            e = runs[gr]["edges"]
            assert e["mean"] == 0.0 and e["grad_shape"] == (0, SHARDS[4][gr]) and e["none_shape"] == (0,)
            assert (e["lse_classless"] == -np.inf).all() and e["softmax_classless"] == (3, 0)
            assert e["refused"] == "ShapeError"

    def test_sharded_axis_zero_with_keepdims(self, runs):
        full = (np.linspace(-3, 4, 30).reshape(10, 3)) ** 2
        g = np.array([[1.0, -2.0, 0.5]])
        with ss.reference_path():
            ref = ss.logsumexp(full, axis=0, keepdims=True)
            grad = ss.logsumexp_grad(full, g, axis=0, keepdims=True)
        for gr in range(WORLD):
            e = runs[gr]["edges"]
            lo, hi = _offsets(4)[gr : gr + 2]
            assert e["axis0"].shape == (1, 3) and ulps(e["axis0"], ref).max() <= ULP_GOAL["float64"]
            assert grad_error(e["axis0_grad"], grad[lo:hi]) <= GRAD_REL_GOAL


class TestExample:
    def test_every_rank_matches_one_process(self, runs):
        """examples/vocab_parallel.py's run(), on the four ranks (its torchrun main calls the same)."""
        for gr in range(WORLD):
            got = runs[gr]["example"]
            one = np.float64(got["one_process"])
            assert ulps(np.float64(got["loss"]), one) <= 4 and ulps(np.float64(got["linear"]), one) <= 4
            assert got["grad_error"] <= GRAD_REL_GOAL and got["linear_grad_error"] <= GRAD_REL_GOAL


def test_public_names():
    from stablesoftmax.distributed import _protocol

    assert (len(_protocol._FIELDS) + _protocol._MESSAGE) * 8 == 712  # the header size the docstrings state
    assert set(sd.__all__) == {"cross_entropy", "logsumexp", "log_softmax", "softmax", "linear_cross_entropy"}
    for name in sd.__all__:
        fn = getattr(sd, name)
        assert fn.__doc__ and "Collectives per call" in fn.__doc__, name
        assert "return" in fn.__annotations__

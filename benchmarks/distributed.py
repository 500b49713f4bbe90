"""Costs of stablesoftmax.distributed, and its equality with one process, on gloo processes on 127.0.0.1.

Run from the repository root::

    python benchmarks/distributed.py                  # every part at the issue's sizes
    python benchmarks/distributed.py --only time      # one part: bytes, time, memory or equality
    python benchmarks/distributed.py --quick          # small sizes: a smoke run

* **bytes**: what one call hands to each collective (recorded by wrapping
  ``torch.distributed.all_reduce``/``all_gather``), against all-gathering the logits.
* **time**: cross_entropy forward, and forward plus backward, at (4096, 32000)
  float32 over 2 ranks, against all-gathering the logits and calling
  ``stablesoftmax.cross_entropy`` on them. Rounds interleave the methods; each
  call starts after a barrier and its time is the slowest rank's; the figures
  are medians over rounds with their spread, and the ratio is of medians.
* **memory**: the peak resident memory each rank adds during forward plus
  backward of linear_cross_entropy, against forming the local logits and
  against gathering them (peak RSS, reset per method through
  ``/proc/self/clear_refs``, above the resident memory just before).
* **equality**: random and contract rows at (256, 2003) over 2, 3 and 4 ranks
  with uneven shards, every option: the largest loss error in ulps and the
  largest gradient error (relative in float64, ulps in float32) against the
  single-process functions on the array-API reference path.

One thread per process. The machine is shared, so expect noise in the times.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "STABLESOFTMAX_NUM_THREADS",
):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import stablesoftmax as ss  # noqa: E402
from stablesoftmax import distributed as sd  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("bytes", "time", "memory", "equality"), action="append")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    # H only scales the matmuls' time, not the logits' memory: 256 keeps the memory part to minutes here.
    sizes = {"n": 512, "v": 4000, "h": 64} if args.quick else {"n": 4096, "v": 32000, "h": 256}
    for part in args.only or ("bytes", "time", "memory", "equality"):
        world = 4 if part == "equality" else 2
        out = spawn(world, part, {**sizes, "rounds": args.rounds, "quick": args.quick})
        print(REPORTS[part](out, sizes), flush=True)
    return 0


def spawn(world: int, part: str, opts: dict) -> dict:
    """Run ``part`` on ``world`` fresh processes; rank 0's result."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(world, port, part, opts, str(out)), nprocs=world, start_method="spawn")
        return json.loads(out.read_text())


def _worker(rank: int, world: int, port: int, part: str, opts: dict, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=600)
    )
    result = PARTS[part](rank, world, opts)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


# --------------------------------------------------------------------------
# The problem: the same full logits on every rank, each holding its block
# --------------------------------------------------------------------------


def bounds(v: int, world: int) -> list[int]:
    return [v * r // world for r in range(world + 1)]


def shard(n: int, v: int, rank: int, world: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's block of seeded logits (N, V), made block by block so no rank holds the whole."""
    lo, hi = bounds(v, world)[rank : rank + 2]
    gen = torch.Generator().manual_seed(1000 + rank)
    x = (torch.randn(n, hi - lo, generator=gen) * 3).to(dtype)
    target = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(7))
    return x, target


def gather_logits(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------
# bytes: what each collective of one call is handed
# --------------------------------------------------------------------------


def part_bytes(rank: int, world: int, opts: dict) -> dict:
    n, v = opts["n"], opts["v"]
    x, y = shard(n, v, rank, world)
    rows = {}
    for name, call in (
        ("cross_entropy", lambda: sd.cross_entropy(x, y)),
        ("cross_entropy, label_smoothing", lambda: sd.cross_entropy(x, y, label_smoothing=0.1)),
        ("cross_entropy, probability targets", lambda: sd.cross_entropy(x, torch.softmax(x, dim=1))),
        ("logsumexp", lambda: sd.logsumexp(x)),
        ("all-gather the logits", lambda: gather_logits(x)),
    ):
        rows[name] = recorded(call)
    xg = x.clone().requires_grad_()
    rows["softmax backward"] = recorded(lambda: sd.softmax(xg).backward(torch.ones_like(xg)), after_forward=True)
    return {"n": n, "v": v, "world": world, "rows": rows}


def recorded(call, after_forward: bool = False) -> list[tuple[str, int]]:
    """``(collective, bytes handed to it)`` for every collective ``call`` makes (the backward's alone if asked)."""
    log: list[tuple[str, int]] = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def wrap(name):
        def inner(*a, **k):
            t = a[1] if name == "all_gather" else a[0]
            log.append((name, t.numel() * t.element_size()))
            return originals[name](*a, **k)

        return inner

    for name in originals:
        setattr(dist, name, wrap(name))
    try:
        call()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return log[3:] if after_forward else log


def _total(out: dict, name: str) -> int:
    return sum(b for _, b in out["rows"][name])


def report_bytes(out: dict, sizes: dict) -> str:
    w = out["world"]
    lines = [
        f"## Bytes per call, N={out['n']}, V={out['v']}, {w} ranks (float32 logits, float64 exchange)",
        "",
        "| call | collectives (bytes each rank hands over) | total per rank |",
        "|---|---|---|",
    ]
    for name, log in out["rows"].items():
        cells = ", ".join(f"{c} {b:,}" for c, b in log)
        lines.append(f"| {name} | {cells} | {sum(b for _, b in log):,} |")
    lines.append("")
    lines.append(
        f"An all-reduce of B bytes moves about 2 B (w - 1) / w per rank in a ring; an all-gather of B "
        f"bytes from each rank moves B (w - 1). Ratio, all-gather of the logits to cross_entropy: "
        f"{_total(out, 'all-gather the logits') / _total(out, 'cross_entropy'):.0f}x of what each rank "
        f"hands over."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# time: sharded against gathered, interleaved rounds
# --------------------------------------------------------------------------


def part_time(rank: int, world: int, opts: dict) -> dict:
    n, v = opts["n"], opts["v"]
    x, y = shard(n, v, rank, world)

    def sharded_fwd():
        sd.cross_entropy(x, y)

    def sharded_step():
        xg = x.clone().requires_grad_()  # the clone is in both methods
        sd.cross_entropy(xg, y).backward()

    def gathered_fwd():
        ss.cross_entropy(gather_logits(x), y)

    def gathered_step():
        full = gather_logits(x.clone()).requires_grad_()
        ss.cross_entropy(full, y).backward()
        lo, hi = bounds(v, world)[rank : rank + 2]
        full.grad[:, lo:hi].clone()  # this rank's block of the gradient

    methods = {
        "sharded forward": sharded_fwd,
        "gathered forward": gathered_fwd,
        "sharded forward+backward": sharded_step,
        "gathered forward+backward": gathered_step,
    }
    for fn in methods.values():  # warm-up: kernels loaded, buffers touched
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(opts["rounds"]):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            dist.barrier()
            t = time.perf_counter()
            methods[name]()
            el = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
            dist.all_reduce(el, op=dist.ReduceOp.MAX)
            times[name].append(float(el))
    return {"n": n, "v": v, "world": world, "times": times}


def report_time(out: dict, sizes: dict) -> str:
    t = out["times"]
    lines = [
        f"## Wall time, ({out['n']}, {out['v']}) float32 over {out['world']} ranks "
        f"({len(next(iter(t.values())))} interleaved rounds, slowest rank per call)",
        "",
        "| method | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    for name, v in t.items():
        lines.append(f"| {name} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    for what in ("forward", "forward+backward"):
        ratio = statistics.median(t[f"sharded {what}"]) / statistics.median(t[f"gathered {what}"])
        lines.append(f"\nsharded / gathered, {what}: {ratio:.2f}x (ratio of medians)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# memory: peak resident memory added per rank
# --------------------------------------------------------------------------


def part_memory(rank: int, world: int, opts: dict) -> dict:
    n, v, h = opts["n"], opts["v"], opts["h"]
    lo, hi = bounds(v, world)[rank : rank + 2]
    hidden = torch.randn(n, h, generator=torch.Generator().manual_seed(3))
    weight = torch.randn(hi - lo, h, generator=torch.Generator().manual_seed(10 + rank)) * 0.05
    y = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(7))

    def linear():
        w = weight.clone().requires_grad_()
        hh = hidden.clone().requires_grad_()
        sd.linear_cross_entropy(hh, w, y).backward()

    def local_logits():
        w = weight.clone().requires_grad_()
        hh = hidden.clone().requires_grad_()
        sd.cross_entropy(hh @ w.T, y).backward()

    def gathered():
        w = weight.clone().requires_grad_()
        full = gather_logits((hidden @ w.T).detach()).requires_grad_()
        ss.cross_entropy(full, y).backward()

    out = {}
    for name, fn in (
        ("linear_cross_entropy", linear),
        ("local logits + cross_entropy", local_logits),
        ("gathered logits + one process", gathered),
    ):
        fn()  # warm-up, so that one-time allocations (kernels, buffers) are not counted
        out[name] = peak_added(fn)
        dist.barrier()
    peaks = torch.tensor([out[k] for k in out], dtype=torch.float64)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    return {
        "n": n,
        "v": v,
        "h": h,
        "world": world,
        "peaks": dict(zip(out, peaks.tolist(), strict=True)),
        "local_logits_bytes": n * (hi - lo) * 4,
    }


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def peak_added(fn) -> float:
    """Bytes the peak resident set rises above the resident set just before ``fn``."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current resident set
    before = _status("VmRSS")
    fn()
    return float(_status("VmHWM") - before)


def report_memory(out: dict, sizes: dict) -> str:
    mib = 2**20
    lines = [
        f"## Peak memory added per rank, forward+backward, N={out['n']}, H={out['h']}, V={out['v']} float32 "
        f"over {out['world']} ranks (largest over ranks)",
        "",
        f"Local logits would be {out['local_logits_bytes'] / mib:.0f} MiB per rank.",
        "",
        "| method | peak added MiB | / local logits |",
        "|---|---|---|",
    ]
    for name, b in out["peaks"].items():
        lines.append(f"| {name} | {b / mib:.0f} | {b / out['local_logits_bytes']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# equality: against one process, over 2, 3 and 4 ranks
# --------------------------------------------------------------------------

EQ_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": True, "where": True},
    {"z_loss": 1e-3},
    {"softcap": 20.0},
    {"probs": True},
    {"probs": True, "label_smoothing": 0.1, "where": True},
]


def part_equality(rank: int, world: int, opts: dict) -> dict:
    n, v = (64, 503) if opts["quick"] else (256, 2003)
    groups = {2: [0, 1], 3: [1, 2, 3], 4: [0, 1, 2, 3]}
    handles = {w: None if w == world else dist.new_group(r) for w, r in groups.items()}
    rows = []
    for w, ranks in groups.items():
        cuts = _uneven(v, w)
        for dtype in ("float64", "float32"):
            for o in EQ_OPTIONS:
                mine = _eq_case(rank in ranks and ranks.index(rank), cuts, n, v, dtype, o, handles[w], rank in ranks)
                got = [None] * world
                dist.all_gather_object(got, mine)
                if rank == 0:
                    rows.append(
                        {
                            "world": w,
                            "dtype": dtype,
                            "options": o,
                            **_eq_compare([got[r] for r in ranks], cuts, n, v, dtype, o),
                        }
                    )
    return {"n": n, "v": v, "rows": rows}


def _uneven(v: int, w: int) -> list[int]:
    rng = np.random.default_rng(w)
    cuts = np.sort(rng.choice(np.arange(1, v), w - 1, replace=False))
    return [0, *map(int, cuts), v]


def _eq_inputs(n: int, v: int, dtype: str, o: dict, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, v)) * rng.uniform(0.5, 8, (n, 1))
    y = rng.integers(0, v, n)
    big = 1e300 if dtype == "float64" else 1e37
    x[0] = -np.inf
    x[1, ::97] = np.inf
    y[1] = 0
    x[2] = np.linspace(-1, 1, v) * big
    x[3, y[3]] = 80.0
    x[4, [5, v - 5]] = 40.0
    y[5::7] = -100
    where = rng.uniform(size=(n, v)) < 0.9
    where[np.arange(n), y % v] = True
    q = rng.uniform(size=(n, v)) ** 4
    if o.get("where"):
        q[~where] = 0
    q[np.isneginf(x)] = 0
    q = np.where(q.sum(1, keepdims=True) > 0, q / np.maximum(q.sum(1, keepdims=True), 1e-300), 1.0 / v)
    return {
        "x": x.astype(dtype),
        "y": q.astype(dtype) if o.get("probs") else y,
        "weight": rng.uniform(0.5, 2, v),
        "where": where,
        "g": rng.uniform(0.5, 1.5, n).astype(dtype),
    }


def _eq_kwargs(o: dict, data: dict, lo: int, hi: int, full: bool) -> dict:
    out = {k: val for k, val in o.items() if k not in ("probs", "weight", "where")}
    if o.get("weight"):
        out["weight"] = data["weight"]
    if o.get("where"):
        out["where"] = data["where"] if full else torch.tensor(data["where"][:, lo:hi])
    return out


def _eq_case(r, cuts: list[int], n: int, v: int, dtype: str, o: dict, group, member: bool):
    if not member:
        return None
    data = _eq_inputs(n, v, dtype, o)
    lo, hi = cuts[r], cuts[r + 1]
    x = torch.tensor(data["x"][:, lo:hi], requires_grad=True)
    y = torch.tensor(data["y"][:, lo:hi] if o.get("probs") else data["y"])
    kw = _eq_kwargs(o, data, lo, hi, False)
    if "weight" in kw:
        kw["weight"] = torch.tensor(kw["weight"])
    loss = sd.cross_entropy(x, y, group=group, **kw)
    loss.backward(torch.tensor(data["g"]) if o.get("reduction") == "none" else None)
    return loss.detach().numpy(), x.grad.numpy()


def _eq_compare(got: list, cuts: list[int], n: int, v: int, dtype: str, o: dict) -> dict:
    data = _eq_inputs(n, v, dtype, o)
    g = data["g"] if o.get("reduction") == "none" else 1.0
    with ss.reference_path():
        ref, grad = ss.cross_entropy_with_grad(data["x"], data["y"], g=g, **_eq_kwargs(o, data, 0, v, True))
    ref = np.asarray(ref)
    loss_ulps = max(_ulps(loss, ref) for loss, _ in got)
    full = np.concatenate([gr for _, gr in got], axis=1)
    grad_err = _grad_err(full, grad)
    with np.errstate(invalid="ignore", divide="ignore"):  # per row, relative to the row's largest entry
        row_err = float(np.nanmax(np.abs(full - grad) / np.abs(grad).max(axis=1, keepdims=True), initial=0))
    exact = _exact_grad(data, o) if dtype == "float64" else None
    vs_exact = None if exact is None else (_grad_err(full, exact, finite=True), _grad_err(grad, exact, finite=True))
    nan_ok = all(
        np.isnan(loss).sum() == np.isnan(ref).sum()
        and np.isnan(gr).sum() == np.isnan(grad[:, cuts[r] : cuts[r + 1]]).sum()
        for r, (loss, gr) in enumerate(got)
    )
    return {
        "loss_ulps": loss_ulps,
        "grad_err": grad_err,
        "row_err": row_err,
        "vs_exact": vs_exact,
        "nan_where_one_process": bool(nan_ok),
    }


def _exact_grad(data: dict, o: dict) -> np.ndarray | None:
    """``d loss / d x`` in long double on the rows with finite logits, for the options without z-loss or softcap."""
    if "z_loss" in o or "softcap" in o or np.finfo(np.longdouble).nmant <= 52:
        return None
    ld = np.longdouble
    x, y = data["x"].astype(ld), data["y"]
    allowed = data["where"] if o.get("where") else np.ones(x.shape, bool)
    xm = np.where(allowed, x, ld(-np.inf))
    finite = np.isfinite(np.where(allowed, x, 0)).all(axis=1) & (np.abs(x) < 1e100).all(axis=1)
    xf = np.where(finite[:, None], xm, 0)
    k = np.argmax(xf, axis=1)
    e = np.exp(xf - xf[np.arange(len(x)), k][:, None])
    e[np.arange(len(x)), k] = 0
    rest = e.sum(axis=1)  # the sum without the max term, as the state keeps it
    e[np.arange(len(x)), k] = 1
    p = e / (1 + rest)[:, None]
    if o.get("probs"):
        q, counted = y.astype(ld), np.ones(len(x), bool)
    else:
        q, counted = np.zeros(x.shape, ld), y != -100
        q[np.flatnonzero(counted), y[counted]] = 1
    alpha = ld(o.get("label_smoothing", 0.0))
    q = (1 - alpha) * q + alpha * allowed / allowed.sum(axis=1, keepdims=True)
    a = q * (data["weight"].astype(ld) if o.get("weight") else 1)
    live = counted & (np.max(xm, axis=1) > -np.inf)
    wy = (
        np.ones(len(x), ld)
        if o.get("probs") or not o.get("weight")
        else data["weight"].astype(ld)[np.where(counted, y, 0)]
    )
    red = o.get("reduction", "mean")
    scale = data["g"].astype(ld) if red == "none" else np.full(len(x), 1 / (wy * live).sum() if red == "mean" else 1)
    big_a = a.sum(axis=1)
    grad = big_a[:, None] * p - a
    a_k = a[np.arange(len(x)), k]
    grad[np.arange(len(x)), k] = ((big_a - a_k) - a_k * rest) / (1 + rest)  # A p_k - a_k without cancelling
    grad *= scale[:, None]
    return np.where((live & finite)[:, None] & allowed, grad, np.nan)


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64)) / np.spacing(np.abs(b)).astype(np.float64)
    return float(np.where(same, 0, np.where(np.isfinite(d), d, np.inf)).max(initial=0))


def _grad_err(a: np.ndarray, b: np.ndarray, finite: bool = False) -> float:
    """Largest relative error (ulps in float32); with ``finite``, only where ``b`` is not NaN."""
    if finite:
        keep = ~np.isnan(b)
        a, b = a[keep].astype(b.dtype), b[keep]
    elif b.dtype == np.float32:
        return _ulps(a, b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / np.abs(b)
    return float(np.where(same, 0, np.where(np.isfinite(rel), rel, np.inf)).max(initial=0))


def report_equality(out: dict, sizes: dict) -> str:
    lines = [
        f"## Equality with one process, ({out['n']}, {out['v']}) with contract rows, uneven shards",
        "",
        "Gradient: elementwise relative error in float64 (ulps in float32); per row: relative to the row's "
        "largest entry; exact: elementwise against long double, distributed / one process.",
        "",
        "| ranks | dtype | options | loss, ulps | gradient | per row | exact: distributed / one process | "
        "NaN where one process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        ex = "-" if r["vs_exact"] is None else f"{r['vs_exact'][0]:.2g} / {r['vs_exact'][1]:.2g}"
        lines.append(
            f"| {r['world']} | {r['dtype']} | {opts} | {r['loss_ulps']:.0f} | {r['grad_err']:.2g} | "
            f"{r['row_err']:.2g} | {ex} | {'yes' if r['nan_where_one_process'] else 'NO'} |"
        )
    for dt in ("float64", "float32"):
        rows = [r for r in out["rows"] if r["dtype"] == dt]
        lines.append(
            f"\n{dt}: largest loss error {max(r['loss_ulps'] for r in rows):.0f} ulp, largest gradient "
            f"error {max(r['grad_err'] for r in rows):.2g}"
        )
    return "\n".join(lines)


PARTS = {"bytes": part_bytes, "time": part_time, "memory": part_memory, "equality": part_equality}
REPORTS = {"bytes": report_bytes, "time": report_time, "memory": report_memory, "equality": report_equality}


if __name__ == "__main__":
    sys.exit(main())

"""The one short GPU check: bandwidth, time and peak memory against PyTorch and Liger-Kernel, ulps, host syncs.

The project's own version of the shared GPU check (``shared/gpu/bench_gpu.py``),
extended as the device-kernels issue asks. Run it on a CUDA machine from the
repository root, after installing the project with the ``gpu`` extra (and
``liger-kernel`` for its rows)::

    python benchmarks/bench_gpu.py --out "$OUT/gpu.json"        # CUDA, (16384, 131072) bfloat16 and float32
    python benchmarks/bench_gpu.py --device cpu --small          # a dry run anywhere
    python benchmarks/bench_gpu.py --device cpu --small --triton # the dry run through Triton's interpreter

For each dtype it reports:

* the bandwidth: one read (``x.sum()``) and a copy (``x.clone()``), and the
  datasheet HBM peak where the device is known;
* the time of ``logsumexp``, ``softmax``, ``log_softmax`` and
  ``cross_entropy`` (forward, forward + backward) for PyTorch, ``torch.compile``
  of ``F.cross_entropy``, Liger-Kernel's ``LigerCrossEntropyLoss`` and
  stablesoftmax, each as milliseconds, as reads of the logits, and as a
  fraction of HBM for the bytes the call must move;
* the peak extra device memory of each forward + backward, in logits' bytes;
* ``linear_cross_entropy`` against ``F.linear_cross_entropy``: time and peak
  memory at a (N, H) x (V, H) layer;
* whether a call synchronises with the host (``torch.cuda.set_sync_debug_mode``);
* the worst error in ulps of each dtype, against the library's float64 host
  path, with whether the dtype and device were kept.

A figure that cannot be had is skipped with its reason under ``failures``, so
the run always writes its report.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

# Datasheet HBM bandwidth, bytes/s, by a word of the device name.
PEAK = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "A100": 2.0e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds per call, after a warm-up, with the device synchronised around each call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def peak_extra(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes the call allocates on the device above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def attempt(report: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report says what failed and goes on
        report.setdefault("failures", {})[key] = f"{type(e).__name__}: {str(e)[:200]}"
        return None


def bandwidth(x: torch.Tensor, device: torch.device, repeats: int) -> dict[str, Any]:
    nbytes = x.numel() * x.element_size()
    t_read = timed(lambda: x.sum(), device, repeats)
    t_copy = timed(lambda: x.clone(), device, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK.items() if k in name), None)
    return {
        "bytes": nbytes,
        "read_GBps": nbytes / t_read / 1e9,
        "copy_GBps": 2 * nbytes / t_copy / 1e9,
        "hbm_peak_GBps": None if peak is None else peak / 1e9,
        "one_read_s": t_read,
    }


def fwd_bwd(x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
    def run() -> object:
        xg = x.detach().requires_grad_(True)
        loss_fn(xg).backward()
        return xg.grad

    return run


def liger_loss() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from liger_kernel.transformers import LigerCrossEntropyLoss

    return LigerCrossEntropyLoss()  # type: ignore[no-any-return]


def throughput(
    report: dict[str, Any], ss: Any, x: torch.Tensor, t: torch.Tensor, device: torch.device, repeats: int, bw: dict
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    size, peak = bw["bytes"], bw["hbm_peak_GBps"]

    def row(name: str, fn: Callable[[], object], moves: int, grad: bool = False) -> None:
        s = attempt(report, name, lambda: timed(fn, device, repeats))
        if s is None:
            return
        entry = {"ms": s * 1e3, "reads": s / bw["one_read_s"]}
        if peak is not None:
            entry["hbm_fraction"] = moves * size / s / (peak * 1e9)
        if grad:
            extra = attempt(report, f"{name} memory", lambda: peak_extra(fn, device))
            entry["peak_extra_logits"] = None if extra is None else extra / size
        rows[name] = entry

    compiled = torch.compile(F.cross_entropy)
    row("torch.logsumexp", lambda: torch.logsumexp(x, -1), 1)
    row("torch.softmax", lambda: torch.softmax(x, -1), 2)
    row("torch.log_softmax", lambda: F.log_softmax(x, -1), 2)
    row("torch.cross_entropy", lambda: F.cross_entropy(x, t), 1)
    row("torch.cross_entropy fwd+bwd", fwd_bwd(x, lambda xg: F.cross_entropy(xg, t)), 3, grad=True)
    row("torch.compile(cross_entropy) fwd+bwd", fwd_bwd(x, lambda xg: compiled(xg, t)), 3, grad=True)
    liger = attempt(report, "liger import", liger_loss)
    if liger is not None:
        row("liger cross_entropy fwd+bwd", fwd_bwd(x, lambda xg: liger(xg, t)), 3, grad=True)
    if ss is not None:
        row("ss.logsumexp", lambda: ss.logsumexp(x, axis=-1), 1)
        row("ss.softmax", lambda: ss.softmax(x, axis=-1), 2)
        row("ss.log_softmax", lambda: ss.log_softmax(x, axis=-1), 2)
        row("ss.cross_entropy", lambda: ss.cross_entropy(x, t), 1)
        row("ss.cross_entropy fwd+bwd", fwd_bwd(x, lambda xg: ss.cross_entropy(xg, t)), 3, grad=True)
    return rows


def linear(report: dict[str, Any], ss: Any, device: torch.device, small: bool, repeats: int) -> dict[str, Any]:
    """``linear_cross_entropy`` against ``F.linear_cross_entropy``, bfloat16 layer, forward + backward."""
    n, h, v = (64, 32, 512) if small else (8192, 4096, 131072)
    g = torch.Generator(device="cpu").manual_seed(2)
    hidden = (torch.randn(n, h, generator=g) / h**0.5).to(device=device, dtype=torch.bfloat16)
    weight = torch.randn(v, h, generator=g).to(device=device, dtype=torch.bfloat16)
    target = torch.randint(0, v, (n,), generator=g).to(device)
    logits_bytes = n * v * 2
    out: dict[str, Any] = {"shape": [n, h, v], "logits_bytes": logits_bytes}

    def run(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def step() -> object:
            hg, wg = hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)
            fn(hg, wg, target).backward()
            return hg.grad, wg.grad

        return step

    methods = {"torch F.linear_cross_entropy": getattr(F, "linear_cross_entropy", None)}
    if ss is not None:
        methods["ss.linear_cross_entropy"] = ss.linear_cross_entropy
    for name, fn in methods.items():
        if fn is None:
            report.setdefault("failures", {})[name] = "not in this torch"
            continue
        s = attempt(report, name, lambda fn=fn: timed(run(fn), device, 1 if small else max(3, repeats // 4)))
        extra = attempt(report, f"{name} memory", lambda fn=fn: peak_extra(run(fn), device))
        if s is not None:
            out[name] = {"ms": s * 1e3, "peak_extra_logits": None if extra is None else extra / logits_bytes}
    return out


def accuracy(report: dict[str, Any], ss: Any, device: torch.device) -> dict[str, Any]:
    """Worst error in ulps of each dtype against the library's float64 NumPy path on the host."""
    import numpy as np

    npdt = {torch.float64: np.float64, torch.float32: np.float32}
    out: dict[str, Any] = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    x64 = torch.randn(64, 4096, generator=g, dtype=torch.float64) * 20
    t = torch.randint(0, 4096, (64,), generator=g)
    bits = {torch.bfloat16: (8, 2.0**-133), torch.float16: (11, 2.0**-24)}
    for dt in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        xd = x64.to(dt)
        xh = xd.double().numpy()  # the rounded input, exactly, in float64
        refs = {
            "logsumexp": ss.logsumexp(xh, axis=-1),
            "softmax": ss.softmax(xh, axis=-1),
            "log_softmax": ss.log_softmax(xh, axis=-1),
            "cross_entropy": ss.cross_entropy(xh, t.numpy(), reduction="none"),
        }
        xdev, tdev = xd.to(device), t.to(device)
        calls = {
            "logsumexp": functools.partial(ss.logsumexp, xdev, axis=-1),
            "softmax": functools.partial(ss.softmax, xdev, axis=-1),
            "log_softmax": functools.partial(ss.log_softmax, xdev, axis=-1),
            "cross_entropy": functools.partial(ss.cross_entropy, xdev, tdev, reduction="none"),
        }
        for name, fn in calls.items():
            got = attempt(report, f"accuracy {name}/{dt}", fn)
            if got is None:
                continue
            r = np.asarray(refs[name], dtype=np.float64)
            if dt in bits:  # np.spacing of float64 is not the 16-bit ulp
                width, tiny = bits[dt]
                lead = np.floor(np.log2(np.maximum(np.abs(r), 1e-300)))
                spacing = np.maximum(2.0 ** (lead - (width - 1)), tiny)
            else:
                spacing = np.abs(np.spacing(r.astype(npdt[dt]))).astype(np.float64)
            err = np.abs(got.detach().double().cpu().numpy() - r) / spacing
            out[f"{name}/{str(dt).split('.')[-1]}"] = {
                "max_ulp": float(np.max(np.where(np.isfinite(r), err, 0.0))),
                "dtype_kept": got.dtype == dt,
                "device_kept": got.device == xdev.device,
            }
    return out


def host_syncs(ss: Any, x: torch.Tensor, t: torch.Tensor, device: torch.device) -> Any:
    if device.type != "cuda":
        return "not a CUDA device"
    found = {}
    calls = {
        "logsumexp": lambda: ss.logsumexp(x, axis=-1),
        "softmax": lambda: ss.softmax(x, axis=-1),
        "cross_entropy": lambda: ss.cross_entropy(x, t),
        "cross_entropy fwd+bwd": fwd_bwd(x, lambda xg: ss.cross_entropy(xg, t)),
    }
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, fn in calls.items():
            try:
                fn()
                found[name] = "no host sync"
            except RuntimeError as e:
                found[name] = f"synchronises: {str(e)[:160]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="small shapes, for a dry run")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", default=None, help="write the report as JSON here too")
    p.add_argument("--triton", action="store_true", help="on the CPU: the Triton kernels, interpreted")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.triton and device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    n, v = (256, 4096) if args.small else (16384, 131072)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "shape": [n, v],
    }
    try:
        import stablesoftmax as ss

        report["stablesoftmax"] = ss.__version__
    except Exception as e:  # noqa: BLE001
        ss = None
        report["failures"] = {"import": f"{type(e).__name__}: {e}"}
    with ss.triton_path() if args.triton and ss is not None else contextlib.nullcontext():
        run(args, device, n, v, ss, report)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def run(args: argparse.Namespace, device: torch.device, n: int, v: int, ss: Any, report: dict[str, Any]) -> None:
    g = torch.Generator(device="cpu").manual_seed(1)
    for dt in (torch.bfloat16, torch.float32):
        x = (torch.randn(n, v, generator=g) * 4).to(device=device, dtype=dt)
        t = torch.randint(0, v, (n,), generator=g).to(device)
        name = str(dt).split(".")[-1]
        bw = bandwidth(x, device, args.repeats)
        report[f"bandwidth/{name}"] = bw
        report[f"throughput/{name}"] = throughput(report, ss, x, t, device, args.repeats, bw)
        if ss is not None:
            syncs = functools.partial(host_syncs, ss, x, t, device)
            report[f"host_syncs/{name}"] = attempt(report, f"host syncs {name}", syncs)
    report["linear"] = linear(report, ss, device, args.small, args.repeats)
    if ss is not None:
        report["accuracy"] = accuracy(report, ss, device)


if __name__ == "__main__":
    main()

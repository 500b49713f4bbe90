"""Peak memory and time of ``stablesoftmax diagnose`` on a large float32 .npy file.

Issue 7 asks for a 2 GB float32 logits file to be diagnosed with a peak
resident set under 256 MB, in at most 3x the time of one ``np.load`` plus one
``.max(axis=-1)`` over the same file. This script writes such a file (random
logits with a few broken rows planted in it) into a temporary directory,
then runs each side in a fresh subprocess and reads its peak RSS from
``VmHWM`` in ``/proc/self/status`` (Linux; ``getrusage``'s ``ru_maxrss``
would include the parent's RSS at fork time):

* baseline: ``x = np.load(path); x.max(axis=-1)``
* diagnose: ``stablesoftmax.cli.main(["diagnose", path, "--target", t, "--json"])``

Both read the file from the page cache (it was just written, and each side
runs ``--repeat`` times, best time kept), so the ratio compares compute and
memory traffic, not the disk. The temporary directory is removed at the end.

``--hostile`` measures the other goal (issue 14): the hostile files of at most
10 MB that ``tests/test_diagnose_fuzz.py`` builds (size bombs, special files,
deep nesting, the slowest contents to parse and to diagnose) must each finish
within 10 s and under 512 MB. Each runs as ``python -m stablesoftmax diagnose``
in a fresh process, start-up included; the table gives wall and CPU seconds
and the peak RSS from ``getrusage`` of that process alone.

Usage::

    python benchmarks/diagnose_memory.py                 # 2 GB, 1000 classes
    python benchmarks/diagnose_memory.py --size-gb 0.25  # a quick run
    python benchmarks/diagnose_memory.py --hostile       # the hostile files: time and memory of each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = """
import sys, time
import numpy as np
t0 = time.perf_counter()
x = np.load(sys.argv[1])
x.max(axis=-1)
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(dt, hwm)
"""

DIAGNOSE = """
import contextlib, io, sys, time
from stablesoftmax.cli import main
import stablesoftmax.lab.diagnose  # start-up, not work: main imports only the subcommand it runs

def hwm():
    return [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]

start_rss = hwm()
out = io.StringIO()
t0 = time.perf_counter()
with contextlib.redirect_stdout(out):
    code = main(["diagnose", sys.argv[1], "--target", sys.argv[2], "--json"])
dt = time.perf_counter() - t0
sys.stderr.write(out.getvalue()[-400:] if code else "")
print(dt, hwm(), start_rss, code)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=2.0, help="size of the logits file in GB (1e9 bytes; default 2)")
    p.add_argument("--classes", type=int, default=1000, help="classes per row (default 1000)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each side; the best time is kept (default 2)")
    p.add_argument("--dir", default=None, help="where to make the temporary directory (default: the system's)")
    p.add_argument("--hostile", action="store_true", help="time the hostile files of at most 10 MB instead")
    args = p.parse_args()
    if args.hostile:
        return _hostile(args.dir)
    size = int(args.size_gb * 1e9)
    base = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < 1.2 * size:
        sys.exit(
            f"not enough free disk in {base}: {free / 1e9:.1f} GB free, {1.2 * size / 1e9:.1f} GB needed; "
            "use --size-gb or --dir"
        )
    with tempfile.TemporaryDirectory(dir=base, prefix="diagnose_memory_") as tmp:
        path, target = _make_file(Path(tmp), size, args.classes)
        base_t, base_rss, _ = _best(BASELINE, [path], args.repeat)
        diag_t, diag_rss, start_rss = _best(DIAGNOSE, [path, target], args.repeat)
    mb = 2**20
    result = {
        "file_gb": round(size / 1e9, 3),
        "classes": args.classes,
        "baseline_s": round(base_t, 3),
        "baseline_peak_rss_mb": round(base_rss / mb, 1),
        "diagnose_s": round(diag_t, 3),
        "diagnose_peak_rss_mb": round(diag_rss / mb, 1),
        "diagnose_rss_after_imports_mb": round(start_rss / mb, 1),
        "time_ratio": round(diag_t / base_t, 2),
    }
    print(json.dumps(result, indent=2))
    ok = diag_rss < 256 * mb and diag_t <= 3 * base_t
    print(
        f"peak RSS {diag_rss / mb:.0f} MB (goal < 256 MB), time {diag_t / base_t:.2f}x np.load + max "
        f"(goal <= 3x): {'OK' if ok else 'NOT MET'}"
    )


# The command as `python -m stablesoftmax` runs it, and its own peak RSS (VmHWM: getrusage after a fork
# and exec would count the parent's pages too) written to argv[1] when it is done.
HOSTILE = """
import sys
from stablesoftmax import cli
try:
    code = cli.main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    f.write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
sys.exit(code)
"""


def _make_file(tmp: Path, size: int, k: int) -> tuple[str, str]:
    """Random logits of about ``size`` bytes, with a few rows that break naive code."""
    n = max(8, size // (4 * k))
    path, target = tmp / "logits.npy", tmp / "target.npy"
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    step = max(1, 2**24 // k)
    for a in range(0, n, step):
        b = min(n, a + step)
        out[a:b] = rng.standard_normal((b - a, k), dtype=np.float32) * 3
    out[1] = np.float32(0)
    out[1, :5] = [10.0, 92.0, 30.0, -50.0, 40.0]  # the seed's row: float32 underflow, target 3
    out[n // 2, 7] = np.nan
    out[n - 1, 0] = 12.5  # float16 overflow
    out.flush()
    del out
    t = rng.integers(0, k, size=n)
    t[1] = 3
    np.save(target, t)
    return str(path), str(target)


def _best(code: str, argv: list[str], repeat: int) -> tuple[float, float, float]:
    """``(best seconds, highest peak RSS in bytes, RSS after imports in bytes)`` over ``repeat`` fresh processes."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"subprocess failed ({done.returncode}):\n{done.stderr[-2000:]}")
        fields = [float(f) for f in done.stdout.split()[:3]]
        runs.append((fields[0], fields[1] * 1024, fields[2] * 1024 if len(fields) > 2 else 0.0))  # VmHWM is in KiB
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]


def _hostile(where: str | None) -> None:
    """Each hostile file in a fresh process: wall and CPU seconds, peak RSS, exit code; the worst last."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_diagnose_fuzz import HOSTILE_EXPECTED, _hostile_files

    rows = []
    with tempfile.TemporaryDirectory(dir=where, prefix="diagnose_hostile_") as tmp:
        for name, args in _hostile_files(Path(tmp)).items():
            out = "/dev/full" if name.startswith("full_disk") else os.devnull
            hwm_file = Path(tmp) / "hwm"
            t0 = time.perf_counter()
            with open(out, "w") as stdout:
                proc = subprocess.Popen(
                    [sys.executable, "-c", HOSTILE, str(hwm_file), "diagnose", *map(str, args)],
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                err = proc.stderr.read()
                _, status, usage = os.wait4(proc.pid, 0)  # this process's own CPU time
                proc.returncode = os.waitstatus_to_exitcode(status)
                proc.stderr.close()
            wall = time.perf_counter() - t0
            rows.append(
                (
                    name,
                    proc.returncode,
                    wall,
                    usage.ru_utime + usage.ru_stime,
                    int(hwm_file.read_text()) / 1024,
                    err.count("\n"),
                    HOSTILE_EXPECTED[name][0],
                )
            )
    print(f"{'case':<26} exit  wall s   cpu s  peak MB  stderr lines")
    for name, code, wall, cpu, peak, lines, _ in rows:
        print(f"{name:<26} {code:>4} {wall:>7.2f} {cpu:>7.2f} {peak:>8.0f} {lines:>13}")
    slowest, largest = max(rows, key=lambda r: r[2]), max(rows, key=lambda r: r[4])
    bad = [r[0] for r in rows if r[2] > 10 or r[4] >= 512 or r[1] not in r[6]]
    print(
        f"slowest: {slowest[0]} {slowest[2]:.2f} s; largest: {largest[0]} {largest[4]:.0f} MB; goal (each "
        f"within 10 s, under 512 MB, the expected exit): {'MET' if not bad else 'NOT MET: ' + ', '.join(bad)}"
    )


if __name__ == "__main__":
    main()

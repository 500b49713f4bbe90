"""Fuzz ``stablesoftmax diagnose`` with malformed files: never a traceback, always exit 2.

For each format, a seeded generator makes at least 500 files, each broken in
a way that makes it invalid by construction (truncated, extra bytes, a bad
header, a refused dtype, ragged or non-numeric text, no data, ...). Every
one must be answered by ``stablesoftmax.cli.main`` in-process with exit code
2 and a one-line message naming the file, and must never raise.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stablesoftmax.cli import main

N_FILES = 500
JUNK_CHARS = "@$`!?;\x00"
JUNK_CELLS = ["abc", "1.2.3", "--1", "0x10", "1e", "", "NaNx", "1_000", "\u221e", '"1"', "True", "1,5"]


def _base_array(rng: np.random.Generator) -> np.ndarray:
    n, k = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    return (rng.standard_normal((n, k)) * 10).astype(rng.choice([np.float16, np.float32, np.float64]))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npy_with_header(text: str, data: bytes) -> bytes:
    """A version-1.0 .npy with any header text (padded as numpy pads it) and any data."""
    head = text.encode("latin1")
    pad = 64 - (10 + len(head) + 1) % 64
    head = head + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data


# --------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------


def _npy_case(rng: np.random.Generator, i: int) -> bytes:
    arr = _base_array(rng)
    good = _npy_bytes(arr)
    header_end = 10 + struct.unpack("<H", good[8:10])[0]
    op = i % 11
    if op == 0:  # truncated anywhere
        return good[: int(rng.integers(0, len(good)))]
    if op == 1:  # extra bytes after the data
        return good + rng.bytes(int(rng.integers(1, 17)))
    if op == 2:  # a wrong magic string
        magic = rng.bytes(6)
        return (magic if magic != b"\x93NUMPY" else b"NUMPY!") + good[6:]
    if op == 3:  # a format version that does not exist
        return good[:6] + bytes([int(rng.choice([0, *range(4, 256)])), int(rng.integers(0, 256))]) + good[8:]
    if op == 4:  # junk inside the header dict or its padding
        at = int(rng.integers(10, header_end - 1))
        return good[:at] + JUNK_CHARS[int(rng.integers(len(JUNK_CHARS)))].encode("latin1") + good[at:]
    if op == 5:  # a refused dtype, with exactly the bytes its shape needs
        descr = str(
            rng.choice(
                [
                    "'|O'",
                    "'<U3'",
                    "'|S4'",
                    "'<c8'",
                    "'|V4'",
                    "'<M8[s]'",
                    "'<m8[s]'",
                    "[('a', '<f4')]",
                    "'|V2'",
                    "'xyz'",
                    "5",
                    "None",
                ]
            )
        )
        size = {
            "'<U3'": 12,
            "'|S4'": 4,
            "'<c8'": 8,
            "'|V4'": 4,
            "'<M8[s]'": 8,
            "'<m8[s]'": 8,
            "'|V2'": 2,
            "[('a', '<f4')]": 4,
        }.get(descr, 8)
        return _npy_with_header(f"{{'descr': {descr}, 'fortran_order': False, 'shape': (2, 3), }}", rng.bytes(6 * size))
    if op == 6:  # a shape that is not one, or holds no data
        shape = str(
            rng.choice(
                [
                    "(-1, 3)",
                    "(2, 'a')",
                    "(2.5,)",
                    "None",
                    "(2**70, 1)",
                    "(10**30, 5)",
                    "(0, 5)",
                    "()",
                    "(3, 0)",
                    "[2, 3]",
                    "(True, 2)",
                ]
            )
        )
        return _npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}", rng.bytes(4))
    if op == 7:  # a header length past the end of the file
        return good[:8] + struct.pack("<H", int(rng.integers(len(good), 65536))) + good[10:]
    if op == 8:  # fortran_order that is not a bool
        fo = str(rng.choice(["'yes'", "1", "None", "[]"]))
        return _npy_with_header(f"{{'descr': '<f4', 'fortran_order': {fo}, 'shape': (1, 2), }}", bytes(8))
    if op == 9:  # a key missing or one too many
        text = str(
            rng.choice(
                [
                    "{'descr': '<f4', 'shape': (1, 2), }",
                    "{'descr': '<f4', 'fortran_order': False, }",
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), 'x': 1, }",
                ]
            )
        )
        return _npy_with_header(text, bytes(8))
    return good[:header_end] + good[header_end:][: int(rng.integers(0, len(good) - header_end))]  # data cut short


# --------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------


def _zip(members: dict[str, bytes], compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npz_case(rng: np.random.Generator, i: int) -> bytes:
    arr = _base_array(rng)
    op = i % 7
    comp = zipfile.ZIP_DEFLATED if rng.integers(2) else zipfile.ZIP_STORED
    if op == 0:  # truncated archive (the end-of-central-directory record is lost)
        good = _zip({"logits.npy": _npy_bytes(arr)}, comp)
        return good[: int(rng.integers(0, len(good)))]
    if op == 1:  # not a zip at all
        return rng.bytes(int(rng.integers(0, 300)))
    if op == 2:  # a member that is a malformed .npy
        return _zip({"logits.npy": _npy_case(rng, int(rng.integers(0, 11)))}, comp)
    if op == 3:  # no arrays in the archive
        return _zip({"readme.txt": b"hello"}, comp)
    if op == 4:  # an object array, which numpy.savez pickles
        buf = io.BytesIO()
        np.savez(buf, logits=np.array([None, {"a": 1}], dtype=object))
        return buf.getvalue()
    if op == 5:  # one byte of stored data changed: the CRC no longer matches
        member = _npy_bytes(arr)
        good = _zip({"logits.npy": member}, zipfile.ZIP_STORED)
        start = good.index(member[:16])
        at = start + int(rng.integers(0, len(member)))
        return good[:at] + bytes([good[at] ^ int(rng.integers(1, 256))]) + good[at + 1 :]
    return _zip({"a.npy": _npy_bytes(arr), "b.npy": _npy_bytes(arr)}, comp)  # two arrays, none named logits


# --------------------------------------------------------------------------
# .csv / .tsv
# --------------------------------------------------------------------------


def _table_case(sep: str) -> Callable[[np.random.Generator, int], bytes]:
    def make(rng: np.random.Generator, i: int) -> bytes:
        rows = [[f"{v:.6g}" for v in row] for row in _base_array(rng).astype(np.float64).tolist()]
        op = i % 7
        r = int(rng.integers(len(rows)))
        if op == 0:  # ragged: a field dropped or added (never on the only line)
            r = max(r, 1)
            rows[r] = rows[r][:-1] if rng.integers(2) else rows[r] + ["1"]
        elif op == 1:  # one cell that is not a number
            rows[r][int(rng.integers(len(rows[r])))] = JUNK_CELLS[int(rng.integers(len(JUNK_CELLS)))]
        elif op == 2:  # nothing but a header, comments and blank lines
            return str(rng.choice(["", "\n\n", "# a comment\n", "a" + sep + "b\n", "x\n# c\n\n"])).encode()
        elif op == 3:  # bytes that are not UTF-8
            text = "\n".join(sep.join(row) for row in rows).encode()
            at = int(rng.integers(0, len(text)))
            return text[:at] + bytes([int(rng.integers(0x80, 0xC0))]) + text[at:]
        elif op == 4:  # the other delimiter: every line is one cell that is not a number
            return "\n".join((";" if sep == "," else "|").join(row) for row in rows).encode()
        elif op == 5:  # a NUL byte inside a cell
            c = int(rng.integers(len(rows[r])))
            rows[r][c] = rows[r][c] + "\x00"
        else:  # an empty field
            rows[r][int(rng.integers(len(rows[r])))] = " "
        return "\n".join(sep.join(row) for row in rows).encode()

    return make


# --------------------------------------------------------------------------
# .json
# --------------------------------------------------------------------------


def _json_case(rng: np.random.Generator, i: int) -> bytes:
    data = _base_array(rng).astype(np.float64).tolist()
    op = i % 10
    if op == 0:  # cut short: the top-level bracket never closes
        text = json.dumps({"logits": data} if rng.integers(2) else data)
        return text[: int(rng.integers(0, len(text) - 1))].encode()
    if op == 1:  # ragged
        data[int(rng.integers(len(data)))].append(1.0)
    elif op == 2:  # a value that is not a number
        data[0][int(rng.integers(len(data[0])))] = [True, None, "abc", {"a": 1}, "1.5", [], False][int(rng.integers(7))]
    elif op == 3:  # nested too deep (for numpy, or for the JSON parser)
        depth = int(rng.choice([40, 100, 100_000]))
        return ("[" * depth + "1" + "]" * depth).encode()
    elif op == 4:  # no data
        return str(rng.choice(["[]", "[[]]", "[[], []]", "{}", '{"logits": []}'])).encode()
    elif op == 5:  # a single number (0-d)
        return str(rng.choice(["3", "-1.5", "NaN", '"inf"', '{"logits": 2}'])).encode()
    elif op == 6:  # several arrays, none called logits
        return json.dumps({"a": data, "b": data}).encode()
    elif op == 7:  # not UTF-8
        return json.dumps(data).encode() + b"\xff"
    elif op == 8:  # not JSON
        return str(rng.choice(["[1, 2,]", "{'a': 1}", "[1 2]", "nan", "[[1, 2], [3, 4]] x", "[--1]"])).encode()
    else:  # an integer past float64 in a float table, or past int64 in an integer one
        data = [[10**400, 1]] if rng.integers(2) else [[2**70, 1, 2]]
    return json.dumps(data).encode()


# --------------------------------------------------------------------------
# .safetensors
# --------------------------------------------------------------------------


def _st(header: object, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _safetensors_case(rng: np.random.Generator, i: int) -> bytes:
    arr = _base_array(rng).astype(np.float32)
    entry = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [0, arr.nbytes]}
    good = _st({"logits": entry}, arr.tobytes())
    op = i % 8
    if op == 0:  # truncated anywhere
        return good[: int(rng.integers(0, len(good)))]
    if op == 1:  # a header length past the end of the file
        return _st({"logits": entry}, arr.tobytes(), length=int(rng.integers(len(good), 2**63)))
    if op == 2:  # a header that is not a JSON object
        return _st(str(rng.choice(['{"a": ', "null", "[1, 2]", '"x"', "{'a': 1}", "\x00"])), arr.tobytes())
    if op == 3:  # a dtype safetensors has but we do not, or none at all
        entry["dtype"] = str(rng.choice(["F8_E4M3", "F8_E5M2", "C64", "X", "f32"]))
    elif op == 4:  # a shape that is not one
        entry["shape"] = [[-1, 2], ["a"], [2.5], "x", None, [True, 2]][int(rng.integers(6))]
    elif op == 5:  # offsets that do not match the shape or the file
        n = arr.nbytes
        bad = [[0, n - 1], [5, 2], [0], [0, n + 4], ["0", n], [0.0, n], [n, 2 * n]]
        entry["data_offsets"] = bad[int(rng.integers(len(bad)))]
    elif op == 6:  # no data
        entry["shape"], entry["data_offsets"] = [0, 3], [0, 0]
    else:  # an entry that is not an object, or only metadata
        return _st(({"logits": [1, 2]} if rng.integers(2) else {"__metadata__": {"a": "b"}}), arr.tobytes())
    return _st({"logits": entry}, arr.tobytes())


# --------------------------------------------------------------------------
# .pt
# --------------------------------------------------------------------------


class NotATensor:
    """A class torch.load(weights_only=True) must refuse to build."""


def _pt_case(rng: np.random.Generator, i: int) -> bytes:
    import torch

    t = torch.from_numpy(_base_array(rng).astype(np.float32))
    op = i % 6
    buf = io.BytesIO()
    if op == 0:  # truncated archive
        torch.save(t, buf)
        good = buf.getvalue()
        return good[: int(rng.integers(0, len(good) - 1))]
    if op == 1:  # random bytes
        return rng.bytes(int(rng.integers(0, 200)))
    if op == 2:  # an object weights_only refuses to unpickle
        torch.save({"logits": NotATensor()}, buf)
    elif op == 3:  # containers that hold no tensor to read
        torch.save([[t], "text", {1: t}, (t, t)][int(rng.integers(4))], buf)
    elif op == 4:  # a dtype we refuse
        torch.save(t.to(torch.complex64) if rng.integers(2) else t.to(torch.float8_e4m3fn), buf)
    else:  # 0-d or empty
        torch.save(torch.tensor(1.5) if rng.integers(2) else torch.zeros(0, 3), buf)
    return buf.getvalue()


GENERATORS = {
    "npy": _npy_case,
    "npz": _npz_case,
    "csv": _table_case(","),
    "tsv": _table_case("\t"),
    "json": _json_case,
    "safetensors": _safetensors_case,
    "pt": _pt_case,
}


@pytest.mark.parametrize("ext", list(GENERATORS))
def test_malformed_files_exit_2_with_one_line(tmp_path: Path, capsys, ext: str):
    if ext == "pt":
        pytest.importorskip("torch")
    rng = np.random.default_rng(sum(map(ord, ext)))
    problems = []
    for i in range(N_FILES):
        path = tmp_path / f"f{i}.{ext}"
        path.write_bytes(GENERATORS[ext](rng, i))
        code = main(["diagnose", str(path)])  # an uncaught exception fails the test here
        out, err = capsys.readouterr()
        ok = code == 2 and out == "" and err.count("\n") == 1 and path.name in err and "Traceback" not in err
        if not ok:
            problems.append((i, code, err.strip()[:200], out[:100]))
        path.unlink()
    assert not problems, problems[:10]


# --------------------------------------------------------------------------
# Hostile files under a memory cap and a timeout (issue 14, "what to build")
# --------------------------------------------------------------------------
#
# Every file here is at most 10 MB and built to make the command hang, allocate
# without bound or crash: size bombs, special files, deep nesting, adversarial
# contents. Each runs in a fork of one worker process that has imported the CLI,
# NumPy and torch once (a fresh process per file would cost seconds of imports
# each). The child gets RLIMIT_AS = the worker's address space + 512 MB, and
# the CPU time left of 10 s once a fresh process's start-up is paid (measured
# below, in CPU seconds too: the machine is shared, and wall time would measure
# the neighbours; benchmarks/diagnose_memory.py --hostile reports wall times).
# A hang without CPU (a blocking open) is caught by a 60 s wall-clock kill.
# It must exit 0, 1 or 2, print no traceback, print
# exactly one line on stderr when it exits 2, and keep its peak resident set
# (getrusage of the child: the imported libraries, torch included, count too)
# under 512 MB. Every case prints its time and memory with ``pytest -s``.

LIMIT_S, LIMIT_MB, MAX_FILE, HANG_S = 10.0, 512, 10 * 10**6, 60.0
SPECIAL_EXTS = (".npy", ".npz", ".json", ".csv", ".pt", ".safetensors")

WORKER = r"""
import json, os, resource, signal, sys, time, traceback
import numpy as np
try:
    import torch  # a fresh process reading a .pt imports it too: the worker's footprint includes it
except ImportError:
    torch = None
from stablesoftmax import cli

def vm_bytes():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024

def child(case, cap):
    out = os.open(case.get("stdout") or os.devnull, os.O_WRONLY)
    err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    sys.stderr = os.fdopen(2, "w", closefd=False)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cpu = int(case["cpu"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        code = cli.main(case["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 99
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        traceback.print_exc()
        code = 98
    os._exit(code)

# Warm up in the worker: numba's cached kernels and the lazy imports load once, not in every child.
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    np.save(os.path.join(tmp, "w.npy"), np.array([[0.0, -20.0, 95.0]], dtype=np.float32))
    np.save(os.path.join(tmp, "t.npy"), np.array([1]))
    devnull = open(os.devnull, "w")
    sys.stdout, real = devnull, sys.stdout
    cli.main(["diagnose", os.path.join(tmp, "w.npy"), "--target", os.path.join(tmp, "t.npy")])
    sys.stdout = real
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    cap = vm_bytes() + case["extra_mb"] * 2**20
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(case, cap)
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > case["hang"]:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            timed_out = True
            break
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    err = open(case["stderr"], errors="replace").read()
    print(json.dumps({"code": code, "err": err, "seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
                      "peak_mb": usage.ru_maxrss / 1024, "timed_out": timed_out}), flush=True)
"""


def _startup_cpu_s(tmp: Path) -> float:
    """CPU seconds a fresh ``stablesoftmax diagnose`` process takes on a tiny file whose report computes a
    stable loss (so the compiled kernels load, as they do for any failing slice): the imports' share."""
    import resource  # POSIX only, as the fuzz run is

    np.save(tmp / "x.npy", np.array([[0.0, -20.0, 95.0]], dtype=np.float32))
    np.save(tmp / "t.npy", np.array([1]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "stablesoftmax", "diagnose", str(tmp / "x.npy"), "--target", str(tmp / "t.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """Run ``stablesoftmax diagnose ARGS`` in a fork under the caps; returns its outcome."""
    tmp = tmp_path_factory.mktemp("capped")
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    budget = LIMIT_S - _startup_cpu_s(tmp)  # CPU seconds left for the work itself
    assert json.loads(worker.stdout.readline()) == {"ready": True}

    def run(*argv: str, stdout: str | None = None) -> dict:
        case = {
            "argv": ["diagnose", *map(str, argv)],
            "stdout": stdout,
            "stderr": str(tmp / "err.txt"),
            "extra_mb": LIMIT_MB,
            "cpu": budget,
            "hang": HANG_S,
        }
        worker.stdin.write(json.dumps(case) + "\n")
        worker.stdin.flush()
        return {**json.loads(worker.stdout.readline()), "budget": budget}

    yield run
    worker.stdin.close()
    worker.wait(timeout=60)
    worker.stdout.close()


def check(outcome: dict, *codes: int) -> str:
    """The goals of issue 14 for one file; returns the stderr line of a refusal."""
    err, code = outcome["err"], outcome["code"]
    assert not outcome["timed_out"], f"hung: killed after {outcome['seconds']:.1f} s"
    assert outcome["cpu"] <= outcome["budget"], f"{outcome['cpu']:.1f} CPU s, budget {outcome['budget']:.1f} s"
    assert code in (codes or (0, 1, 2)), (code, err[-2000:])
    assert "Traceback" not in err and "out of memory" not in err, err[-2000:]
    assert outcome["peak_mb"] < LIMIT_MB, f"peak RSS {outcome['peak_mb']:.0f} MB"
    lines = err.splitlines()
    if code == 2:
        assert len(lines) == 1, err
        return lines[0]
    assert err == "", err  # stderr is a file, not a terminal: no progress bar, and no warning either
    return ""


def _deep_pickle_pt(depth: int) -> bytes:
    """A torch zip archive whose data.pkl nests lists ``depth`` deep (EMPTY_LIST x depth, APPEND x depth-1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/byteorder", b"little")
    return buf.getvalue()


def _near_cliff_rows(n: int, k: int) -> np.ndarray:
    """Rows whose target sits at float16's underflow cliff: each needs the naive program simulated in full."""
    rng = np.random.default_rng(0)
    x = np.full((n, k), -16.6, np.float32) + rng.uniform(-1, 1, (n, k)).astype(np.float32)
    x[:, 0] = 0
    return x


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npz_of_rows(path: Path, rows: np.ndarray, repeat: int) -> tuple[int, ...]:
    """An .npz of ``rows`` tiled ``repeat`` times, deflated fast (level 1): periodic data shrinks ~100x."""
    shape = (rows.shape[0] * repeat, rows.shape[1])
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("logits.npy", "w", force_zip64=True) as member,
    ):
        member.write(_npy_header(shape))
        block = rows.tobytes()
        for _ in range(repeat):
            member.write(block)
    return shape


def _claiming(path: Path, member: str, claimed: int) -> None:
    """Patch an archive's central directory so that ``member`` declares ``claimed`` bytes, as a bomb's does."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len].decode().endswith(member):
            struct.pack_into("<I", data, at + 24, claimed)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def _hostile_files(tmp: Path) -> dict[str, list[str]]:
    """name -> the command's arguments; every file is at most 10 MB."""
    cases: dict[str, list[str]] = {}
    # size bombs: a member that declares 2 GB, as a 9 MB archive of zeros would; the slowest rows, 120 MiB of them
    header = _npy_header((2**19, 2**10))
    with zipfile.ZipFile(tmp / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("logits.npy", header + bytes(2**20))
    _claiming(tmp / "bomb.npz", "logits.npy", len(header) + 2**31)
    shape = _npz_of_rows(tmp / "cliff.npz", _near_cliff_rows(8, 1000), 120 * 2**20 // 32000)
    np.save(tmp / "cliff_t.npy", np.ones(shape[0], dtype=np.int64))
    cases.update(npz_bomb=[tmp / "bomb.npz"], npz_slowest_rows=[tmp / "cliff.npz", "--target", tmp / "cliff_t.npy"])
    np.save(tmp / "cliff.npy", _near_cliff_rows(2400, 1000))  # 9.6 MB, streamed
    np.save(tmp / "cliff2_t.npy", np.ones(2400, dtype=np.int64))
    cases["npy_slowest_rows"] = [tmp / "cliff.npy", "--target", tmp / "cliff2_t.npy"]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.save(torch.zeros(1).expand(10**5, 10**5), tmp / "stride0.pt")
        cases.update(pt_stride_zero=[tmp / "stride0.pt"], pt_stride_zero_axis0=[tmp / "stride0.pt", "--axis", "0"])
        torch.save({"logits": torch.zeros(4, 4)}, tmp / "bomb.pt")
        _claiming(tmp / "bomb.pt", "data/0", 2**31)  # a deflated storage would declare this much
        cases["pt_deflated_bomb"] = [tmp / "bomb.pt"]
        (tmp / "deep.pt").write_bytes(_deep_pickle_pt(200_000))
        cases["pt_deep_pickle"] = [tmp / "deep.pt"]
    # special files, behind every name
    os.mkfifo(tmp / "fifo")
    for ext in SPECIAL_EXTS:
        (tmp / f"zero{ext}").symlink_to("/dev/zero")
        (tmp / f"fifo{ext}").symlink_to(tmp / "fifo")
        cases[f"dev_zero{ext}"] = [tmp / f"zero{ext}"]
        cases[f"fifo{ext}"] = [tmp / f"fifo{ext}"]
    (tmp / "dir.npy").mkdir()
    (tmp / "null.json").symlink_to("/dev/null")
    np.save(tmp / "ok.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    cases.update(
        directory=[tmp / "dir.npy"],
        dev_null=[tmp / "null.json"],
        target_dev_zero=[tmp / "ok.npy", "--target", tmp / "zero.npy"],
        target_fifo=[tmp / "ok.npy", "--target", tmp / "fifo.json"],
    )
    # deep nesting
    (tmp / "deep.json").write_text("[" * 2_000_000 + "]" * 2_000_000)
    (tmp / "deep33.json").write_text("[" * 33 + "1" + "]" * 33)
    head = json.dumps({"logits": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}})
    deep_head = ("[" * 2_000_000 + "]" * 2_000_000).encode()
    (tmp / "deep.safetensors").write_bytes(struct.pack("<Q", len(deep_head)) + deep_head + bytes(8))
    (tmp / "claim.safetensors").write_bytes(struct.pack("<Q", 10**18) + head.encode() + bytes(8))
    (tmp / "deep_header.npy").write_bytes(
        _npy_with_header(
            "{'descr': " + "(" * 5000 + "'<f4'" + ")" * 5000 + ", 'fortran_order': False, 'shape': (1, 2), }", bytes(8)
        )
    )
    cases.update(
        json_deep=[tmp / "deep.json"],
        json_33_levels=[tmp / "deep33.json"],
        safetensors_deep_header=[tmp / "deep.safetensors"],
        safetensors_claims=[tmp / "claim.safetensors"],
        npy_deep_header=[tmp / "deep_header.npy"],
    )
    # text just under the 4 MiB text limit, in the slowest shapes to parse, and a file over it
    lines = 2 * 2**20 - 8
    (tmp / "tall.csv").write_text("0\n" * lines)  # two million one-cell lines
    (tmp / "tall_bad.csv").write_text("0\n" * lines + "x\n")
    (tmp / "big.csv").write_text(("1.5," * 999 + "1.5\n") * 2400)  # 9.6 MB
    (tmp / "strings.json").write_text("[" + ",".join(['["inf","-inf",1.5,2]'] * 190_000) + "]")
    (tmp / "strings_bad.json").write_text("[" + ",".join(['["inf","-inf",1.5,2]'] * 190_000) + ",[1,2,3,true]]")
    cases.update(
        csv_tall=[tmp / "tall.csv"],
        csv_tall_bad_last_line=[tmp / "tall_bad.csv"],
        csv_big=[tmp / "big.csv"],
        json_strings=[tmp / "strings.json"],
        json_strings_bad_at_end=[tmp / "strings_bad.json"],
    )
    # a report written to a full disk, as text and as JSON
    np.save(tmp / "huge_rows.npy", np.array([[10.0, 92.0, 30.0, -50.0, 40.0]] * 400, dtype=np.float32))
    cases.update(full_disk=[tmp / "huge_rows.npy"], full_disk_json=[tmp / "huge_rows.npy", "--json"])
    for args in cases.values():
        for a in args:
            p = Path(a)
            if p.is_file() and not p.is_symlink():
                assert p.stat().st_size <= MAX_FILE, p
    return cases


HOSTILE_EXPECTED = {  # name -> (allowed exit codes, phrase the refusal must hold or "" for a run)
    "npz_bomb": ((2,), f"would decompress to (shape (524288, 1024), float32) {2**31} bytes"),
    "npz_slowest_rows": ((0,), ""),
    "npy_slowest_rows": ((0,), ""),
    "pt_stride_zero": ((2,), "holds a tensor of shape (100000, 100000)"),
    "pt_stride_zero_axis0": ((2,), "holds a tensor of shape (100000, 100000)"),
    "pt_deflated_bomb": ((2,), "is an archive that would decompress to"),
    "pt_deep_pickle": ((2,), ""),
    "directory": ((2,), "is a directory"),
    "dev_null": ((2,), "is a character device"),
    "target_dev_zero": ((2,), "--target"),
    "target_fifo": ((2,), "is a FIFO"),
    "json_deep": ((2,), "not valid JSON"),
    "json_33_levels": ((2,), "deeper than 32"),
    "safetensors_deep_header": ((2,), ""),
    "safetensors_claims": ((2,), "-byte header"),
    "npy_deep_header": ((2,), "not a valid .npy"),
    "csv_tall": ((0,), ""),
    "csv_tall_bad_last_line": ((2,), "line 2097145, field 1 is 'x'"),
    "csv_big": ((2,), "--max-text-bytes"),
    "json_strings": ((0,), ""),
    "json_strings_bad_at_end": ((2,), "holds true, not a number"),
    "full_disk": ((2,), "No space left on device"),
    "full_disk_json": ((2,), '"error": "OSError"'),
    **{f"dev_zero{e}": ((2,), "is a character device") for e in SPECIAL_EXTS},
    **{f"fifo{e}": ((2,), "is a FIFO") for e in SPECIAL_EXTS},
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, RLIMIT_AS and /proc are Linux's")
def test_hostile_files_within_time_and_memory(tmp_path, capped):
    cases = _hostile_files(tmp_path)
    assert set(cases) == set(HOSTILE_EXPECTED) - (
        set() if "pt_deep_pickle" in cases else {k for k in HOSTILE_EXPECTED if k.startswith("pt_")}
    )
    problems, report = [], []
    for name, args in cases.items():
        codes, phrase = HOSTILE_EXPECTED[name]
        stdout = "/dev/full" if name.startswith("full_disk") else None
        outcome = capped(*args, stdout=stdout)
        report.append(
            f"{name}: exit {outcome['code']}, {outcome['cpu']:.2f} CPU s ({outcome['seconds']:.2f} s), "
            f"{outcome['peak_mb']:.0f} MB"
        )
        try:
            line = check(outcome, *codes)
            assert phrase in line, (phrase, line)
        except AssertionError as exc:
            problems.append((name, str(exc)[:400]))
    print("\n".join(report))  # shown with -s: the time and memory of every case
    assert not problems, problems

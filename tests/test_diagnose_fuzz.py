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
import struct
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
        descr = str(rng.choice(["'|O'", "'<U3'", "'|S4'", "'<c8'", "'|V4'", "'<M8[s]'", "'<m8[s]'",
                                "[('a', '<f4')]", "'|V2'", "'xyz'", "5", "None"]))
        size = {"'<U3'": 12, "'|S4'": 4, "'<c8'": 8, "'|V4'": 4, "'<M8[s]'": 8, "'<m8[s]'": 8, "'|V2'": 2,
                "[('a', '<f4')]": 4}.get(descr, 8)
        return _npy_with_header(f"{{'descr': {descr}, 'fortran_order': False, 'shape': (2, 3), }}", rng.bytes(6 * size))
    if op == 6:  # a shape that is not one, or holds no data
        shape = str(rng.choice(["(-1, 3)", "(2, 'a')", "(2.5,)", "None", "(2**70, 1)", "(10**30, 5)", "(0, 5)",
                                "()", "(3, 0)", "[2, 3]", "(True, 2)"]))
        return _npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}", rng.bytes(4))
    if op == 7:  # a header length past the end of the file
        return good[:8] + struct.pack("<H", int(rng.integers(len(good), 65536))) + good[10:]
    if op == 8:  # fortran_order that is not a bool
        fo = str(rng.choice(["'yes'", "1", "None", "[]"]))
        return _npy_with_header(f"{{'descr': '<f4', 'fortran_order': {fo}, 'shape': (1, 2), }}", bytes(8))
    if op == 9:  # a key missing or one too many
        text = str(rng.choice(["{'descr': '<f4', 'shape': (1, 2), }", "{'descr': '<f4', 'fortran_order': False, }",
                               "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), 'x': 1, }"]))
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
        return good[:at] + bytes([good[at] ^ int(rng.integers(1, 256))]) + good[at + 1:]
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

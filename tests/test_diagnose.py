"""Tests for ``stablesoftmax diagnose``: the API, the readers and the command.

Oracles: mpmath for the overflow and underflow thresholds, PyTorch's float16
softmax as an independent naive program, the seed recipe
(``shared/seeds/break-ce-via-log-softmax.txt``) for its two rows, and a full
simulation of the naive program for the staged shortcut.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import sys
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest

from stablesoftmax import ArgumentError, AxisError, ShapeError, TargetError
from stablesoftmax.cli import main
from stablesoftmax.lab import diagnose as dg
from stablesoftmax.lab.diagnose import DTYPES, diagnose

DATA = Path(__file__).parent / "data"
BF16 = np.dtype(ml_dtypes.bfloat16)
SMALL = [1.2, 4.7, 3.1, 0.5, 2.9]  # the seed's safe row, target 2
HUGE = [10.0, 92.0, 30.0, -50.0, 40.0]  # the seed's broken row, target 3
PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def overflows(v: float, name: str) -> bool:
    """mpmath oracle: ``exp(v)`` rounds to inf in D (at or past max + half an ulp; the tie goes to inf)."""
    fi = ml_dtypes.finfo(dg._NUMPY_DTYPES[name])
    mpmath.mp.prec = 200
    limit = mpmath.mpf(float(fi.max)) * (1 + mpmath.mpf(2) ** -PRECISION[name])
    return mpmath.exp(mpmath.mpf(v)) >= limit


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], header_extra: dict | None = None) -> None:
    """A .safetensors file by the format's definition: u64 header length, JSON header, raw little-endian data."""
    header, blobs, offset = dict(header_extra or {}), [], 0
    for name, (code, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["diagnose", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------
# The seed's two cases
# --------------------------------------------------------------------------


class TestSeedCases:
    def test_huge_spread_row_is_target_underflow_in_float32(self):
        r = diagnose(np.array([HUGE], dtype=np.float32), target=[3], dtypes=("float32",))
        rep = r.dtypes["float32"]
        assert rep.underflow == 1
        (s,) = rep.worst
        assert "underflow" in s.problems
        assert s.naive_loss == math.inf  # the seed's ce_unsafe
        assert s.naive_prob == 0.0
        # exact: lse = 92 + log1p(e^-52 + ...) rounds to 92 in float64, so the loss is 92 - (-50)
        assert s.stable_loss == 142.0
        assert (s.argmin, s.spread, s.min_log_prob) == (3, 142.0, -142.0)

    def test_small_row_is_clean_in_every_dtype(self):
        r = diagnose(np.array([SMALL], dtype=np.float32), target=[2])
        assert all(rep.failing == 0 and not rep.worst for rep in r.dtypes.values())
        assert r.verdict.status == "clean"
        assert not r.failed("any")

    def test_naive_loss_matches_the_seed_recipe(self):
        x = np.array(HUGE, dtype=np.float32)
        with np.errstate(under="ignore", divide="ignore"):  # the seed's unsafe code, run as written
            e = np.exp(x - x.max())
            seed_unsafe = float(-np.log((e / e.sum())[3]))
        s = diagnose(x[None], target=[3], dtypes=("float32",)).dtypes["float32"].worst[0]
        assert s.naive_loss == seed_unsafe == math.inf

    def test_small_row_without_target_is_clean(self):
        r = diagnose(np.array([SMALL], dtype=np.float32))
        assert r.verdict.status == "clean"


# --------------------------------------------------------------------------
# Thresholds: overflow of exp(x) and underflow of the target's probability
# --------------------------------------------------------------------------


class TestOverflow:
    @pytest.mark.parametrize("name", DTYPES)
    def test_threshold_is_log_finfo_max(self, name):
        rep = diagnose(np.zeros((1, 2)), dtypes=(name,)).dtypes[name]
        assert rep.overflow_above == math.log(float(ml_dtypes.finfo(dg._NUMPY_DTYPES[name]).max))

    def test_float16_overflows_above_11_09(self):
        x = np.array([[v, 0.0] for v in (11.0, 11.08, 11.1, 11.5, 12.0, -3.0)], dtype=np.float32)
        r = diagnose(x, dtypes=("float16", "float32"), top=10)
        assert sorted(s.index[0] for s in r.dtypes["float16"].worst) == [2, 3, 4]
        assert r.dtypes["float32"].overflow == 0
        assert round(r.dtypes["float16"].overflow_above, 2) == 11.09

    @pytest.mark.parametrize("name", DTYPES)
    def test_neighbours_of_the_threshold_match_mpmath(self, name):
        d = dg._NUMPY_DTYPES[name]
        nearest = np.array([math.log(float(ml_dtypes.finfo(d).max))]).astype(d)
        bits = nearest.view(f"u{d.itemsize}").astype(np.int64)
        around = (bits + np.arange(-2, 3)).astype(f"u{d.itemsize}").view(d)  # five consecutive values of D
        vals = [float(v) for v in around.astype(np.float64)]
        got = diagnose(np.array([[v, 0.0] for v in vals]), dtypes=(name,), top=10).dtypes[name]
        flagged = {s.index[0] for s in got.worst}
        assert flagged == {i for i, v in enumerate(vals) if overflows(v, name)}
        assert 0 < len(flagged) < 5  # the values straddle the threshold

    def test_logits_beyond_the_dtype_are_overflow(self):
        x = np.array([[70000.0, 0.0]], dtype=np.float32)  # inf once cast to float16
        r = diagnose(x, target=[1], dtypes=("float16",))
        assert r.dtypes["float16"].overflow == 1
        assert math.isnan(r.dtypes["float16"].worst[0].naive_loss)  # max - max is inf - inf


class TestUnderflow:
    # gaps just inside and just past log(smallest subnormal / 2), representable in each dtype
    GAPS = {"float16": (16.75, 17.75), "bfloat16": (92.0, 93.5), "float32": (103.5, 104.5), "float64": (744.5, 745.75)}

    @pytest.mark.parametrize("name", DTYPES)
    @pytest.mark.parametrize("with_target", [True, False])
    def test_target_probability_rounds_to_zero_past_the_cliff(self, name, with_target):
        inside, past = self.GAPS[name]
        x = np.array([[0.0, -inside], [0.0, -past]])
        r = diagnose(x, target=[1, 1] if with_target else None, dtypes=(name,), top=10)
        assert [s.index for s in r.dtypes[name].worst] == [(1,)]
        assert r.dtypes[name].underflow == 1
        fi = ml_dtypes.finfo(dg._NUMPY_DTYPES[name])
        mpmath.mp.prec = 100
        half = mpmath.mpf(float(fi.smallest_subnormal)) / 2
        assert mpmath.exp(-inside) > half > mpmath.exp(-past)  # the rows straddle the exact cliff

    def test_the_sum_can_push_a_probability_to_zero(self):
        # exp(-10.5) ~ 2.75e-5 survives in float16, but divided by a sum of ~K it falls below 2^-25
        t = []
        rows = []
        for k in (100, 1000):
            row = np.zeros(k, dtype=np.float16)
            row[-1] = -10.5
            rows.append(row)
            t.append(k - 1)
        flags = [
            diagnose(r[None], target=[k - 1], dtypes=("float16",)).dtypes["float16"].underflow
            for r, k in zip(rows, (100, 1000), strict=True)
        ]
        assert flags == [0, 1]

    def test_agrees_with_torch_float16_softmax(self):
        # PyTorch rounds the probability once; the textbook program rounds exp to float16 first. The two
        # agree except where the exact probability is within a factor of 4 of the cliff, 2^-25.
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(7)
        n = 400
        x = (rng.standard_normal((n, 64)) * 6).astype(np.float16)
        t = rng.integers(0, 64, n)
        r = diagnose(x, target=t, dtypes=("float16",), top=n)
        ours = {s.index[0] for s in r.dtypes["float16"].worst if "underflow" in s.problems}
        p = torch.softmax(torch.from_numpy(x), dim=-1)  # max-shifted, float accumulation, float16 result
        theirs = set(np.flatnonzero((p[torch.arange(n), torch.from_numpy(t)] == 0).numpy()).tolist())
        exact = np.exp(dg.log_softmax(x.astype(np.float64))[np.arange(n), t])
        near = set(np.flatnonzero(np.abs(np.log2(exact / 2.0**-25)) < 2).tolist())
        assert ours - near == theirs - near
        assert len(ours - near) > 10 and len(near) < n / 4  # the data crosses the cliff, mostly not near it

    def test_masked_target_is_not_underflow(self):
        r = diagnose(np.array([[0.0, -np.inf, 1.0]]), target=[1])
        assert r.data.target_masked == 1
        assert all(rep.underflow == 0 for rep in r.dtypes.values())
        assert r.data.worst[0].stable_loss == math.inf


class TestStagesAgreeWithFullSimulation:
    """The three-stage shortcut must give exactly what the whole naive program gives, slice by slice."""

    @pytest.mark.parametrize("src", [np.float16, np.float32, np.float64])
    @pytest.mark.parametrize("k", [1, 2, 7, 300, 2000])
    def test_near_the_cliff(self, rng, src, k):
        n = 300
        for name in DTYPES:
            cliff = -dg._limits(name)[1]
            x = rng.standard_normal((n, k)) * rng.uniform(0.01, 4.0, (n, 1)) + rng.uniform(-30, 30, (n, 1))
            t = rng.integers(0, k, n)
            x[np.arange(n), t] = x.max(axis=1) - cliff + rng.uniform(-math.log(k) - 2, 2, n)
            x = x.astype(src)
            for tt in (t, None):
                st = dg._row_stats(x, tt)
                got = dg._window_flags(x, tt, st, [name], k)[name].under
                with np.errstate(over="ignore"):
                    fits = np.isfinite(st.mx.astype(dg._NUMPY_DTYPES[name]))
                want = st.check & fits & dg._underflows(x, tt, dg._NUMPY_DTYPES[name])
                np.testing.assert_array_equal(got, want, err_msg=f"{name}, source {np.dtype(src)}, K={k}")

    def test_huge_logits_fall_back_to_the_simulation(self, rng):
        # |x| ~ 1e15 makes the float32 reference useless; the slices near float64's cliff are simulated
        n, k = 200, 50
        x = 1e15 + rng.standard_normal((n, k)) * 50
        t = rng.integers(0, k, n)
        x[np.arange(n), t] = x.max(axis=1) - 745.1 + rng.uniform(-3, 3, n)
        st = dg._row_stats(x, t)
        got = dg._window_flags(x, t, st, ["float64"], k)["float64"].under
        want = dg._underflows(x, t, np.dtype(np.float64))
        np.testing.assert_array_equal(got, want)
        assert 0 < want.sum() < n


# --------------------------------------------------------------------------
# Data problems, axes, input kinds
# --------------------------------------------------------------------------


class TestDataProblems:
    X = np.array([[np.nan, 1, 2], [-np.inf] * 3, [np.inf, 0, 1], [0, -np.inf, 3], [1, 2, 3]], dtype=np.float32)

    def test_counts_and_problems(self):
        r = diagnose(self.X, target=[0, 0, 0, 1, 2])
        d = r.data
        assert (d.nan, d.posinf, d.masked, d.target_masked) == (1, 1, 1, 1)
        assert [(s.index, s.problems) for s in d.worst] == [
            ((0,), ["nan"]),
            ((1,), ["masked"]),
            ((2,), ["posinf"]),
            ((3,), ["target_masked"]),
        ]
        assert r.failed("any") and not r.failed("overflow") and not r.failed("underflow")
        assert r.verdict.status == "fail"

    def test_masked_entries_are_left_out_of_min_and_spread(self):
        s = diagnose(self.X, target=[0, 0, 0, 1, 2]).data.worst[3]
        assert (s.min, s.argmin, s.spread) == (0.0, 0, 3.0)

    def test_fully_masked_slice_has_no_min(self):
        s = diagnose(self.X).data.worst[1]
        assert (s.max, s.min, s.spread, s.argmin, s.min_prob) == (-math.inf, None, None, None, None)

    def test_no_finite_slice_gives_nan_range(self):
        r = diagnose(np.full((2, 3), -np.inf))
        assert math.isnan(r.data.max_spread) and r.data.masked == 2


class TestAxesAndInputs:
    def test_axis_is_the_classes_axis(self, rng):
        x = rng.standard_normal((3, 5, 4)).astype(np.float32) * 30
        t = rng.integers(0, 5, (3, 4))
        a = json.loads(diagnose(x, target=t, axis=1, top=50).to_json())  # JSON: NaN == NaN there
        b = json.loads(diagnose(np.moveaxis(x, 1, -1), target=t, top=50).to_json())
        for rep in (a, b):
            rep["source"].pop("shape"), rep["source"].pop("axis")
        assert a == b
        assert any(a["dtypes"][n]["failing"] for n in DTYPES)

    def test_one_dimensional_logits_are_one_slice(self):
        r = diagnose(np.array(HUGE, dtype=np.float32), target=3, dtypes=("float32",))
        assert r.source["slices"] == 1 and r.dtypes["float32"].worst[0].index == ()

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
    def test_torch_tensors(self, dtype):
        torch = pytest.importorskip("torch")
        x = torch.tensor([HUGE, SMALL], dtype=getattr(torch, dtype))
        r = diagnose(x, target=torch.tensor([3, 2]), dtypes=("float16",))
        assert r.source["dtype"] == dtype
        assert r.dtypes["float16"].underflow == 1

    def test_integer_logits_are_promoted(self):
        r = diagnose(np.array([[0, 20, 1]]), dtypes=("float16",))
        assert r.source["dtype"] == "float64" and r.dtypes["float16"].overflow == 1


class TestArguments:
    @pytest.mark.parametrize(
        "kwargs, exc, match",
        [
            ({"dtypes": ("float8",)}, ArgumentError, "float8"),
            ({"dtypes": ()}, ArgumentError, "distinct names"),
            ({"dtypes": ("float32", "float32")}, ArgumentError, "distinct"),
            ({"axis": (0, 1)}, AxisError, "one classes axis"),
            ({"axis": 2}, AxisError, "out of range"),
            ({"top": -1}, ArgumentError, "top=-1"),
            ({"target": [1.0, 2.0]}, TargetError, "must be integers"),
            ({"target": [1, 2, 3]}, ShapeError, r"expected \(2,\)"),
            ({"target": [0, 5]}, TargetError, r"holds 5 at slice \(1,\).*\[0, 5\)"),
            ({"target": [-1, 0]}, TargetError, r"\[0, 5\)"),
        ],
    )
    def test_bad_arguments(self, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            diagnose(np.zeros((2, 5)), **kwargs)

    @pytest.mark.parametrize("x", [np.float32(1.0), np.zeros((0, 5)), np.zeros((3, 0))])
    def test_no_slices(self, x):
        with pytest.raises(ShapeError, match="at least one slice"):
            diagnose(x)


# --------------------------------------------------------------------------
# The report: JSON schema, human text
# --------------------------------------------------------------------------

SLICE_KEYS = {
    "index": list,
    "problems": list,
    "max": float,
    "min": (float, type(None)),
    "spread": (float, type(None)),
    "argmin": (int, type(None)),
    "min_prob": (float, type(None)),
    "min_log_prob": (float, type(None)),
    "target": (int, type(None)),
    "target_logit": (float, type(None)),
    "stable_loss": (float, type(None)),
    "naive_loss": (float, type(None)),
    "naive_unshifted_loss": (float, type(None)),
    "naive_prob": (float, type(None)),
}


def keys(d: dict) -> list[str]:
    return sorted(d)


def documented_schema() -> tuple[dict, dict]:
    """The JSON schema block of ``stablesoftmax.lab.diagnose``'s docstring, as nested dicts of its keys:
    the report, and ``slice``. A value that is not an object is kept as its text ("str", "[slice]")."""
    doc = dg.__doc__
    start = doc.index("::", doc.index("JSON schema")) + 2
    block = doc[start : doc.index("\n\n``", start)]
    report, end = _object(block, block.index("{"))
    slice_, _ = _object(block, block.index("{", block.index("slice =", end)))
    return report, slice_


_KEY = re.compile(r'\s*(?:"(\w+)"|(D))\s*:\s*')


def _object(text: str, i: int) -> tuple[dict, int]:
    """Parse ``{"key": value, ...}`` starting at ``text[i] == "{"``; returns it and the index after its ``}``."""
    out: dict = {}
    i += 1
    while (found := _KEY.match(text, i)) is not None:
        key, i = found.group(1) or found.group(2), found.end()
        if text[i] == "{":
            out[key], i = _object(text, i)
        else:
            depth, j = 0, i
            while depth or text[j] not in ",}":
                depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[j], 0)
                j += 1
            out[key], i = text[i:j].strip(), j
        i = text.index(",", i) + 1 if text[i:].lstrip().startswith(",") else i
    i += len(text[i:]) - len(text[i:].lstrip())
    assert text[i] == "}", text[i : i + 40]
    return out, i + 1


class TestReportSchema:
    def report(self):
        x = np.array([HUGE, SMALL, [np.nan, 0, 0, 0, 0]], dtype=np.float32)
        return diagnose(x, target=[3, 2, 0])

    def test_top_level_and_sections(self):
        d = self.report().to_dict()
        assert set(d) == {"schema", "source", "data", "dtypes", "verdict"}
        assert d["schema"] == "stablesoftmax.diagnose/1"
        assert set(d["source"]) == {"name", "shape", "dtype", "axis", "slices", "classes", "target", "ignore_index"}
        assert set(d["data"]) == {
            "nan",
            "posinf",
            "masked",
            "target_masked",
            "ignored",
            "max_logit",
            "min_logit",
            "max_spread",
            "worst",
        }
        assert list(d["dtypes"]) == list(DTYPES)
        for rep in d["dtypes"].values():
            assert set(rep) == {
                "dtype",
                "overflow_above",
                "underflow_below",
                "overflow",
                "underflow",
                "failing",
                "worst",
            }
            assert all(isinstance(rep[k], int) for k in ("overflow", "underflow", "failing"))
        assert set(d["verdict"]) == {"status", "message"} and d["verdict"]["status"] in ("clean", "fail")

    def test_documented_keys_are_the_emitted_keys(self, tmp_path, capsys):
        # the schema in the module docstring (which docs/diagnose.rst points to) against `diagnose --json`
        x = np.array([HUGE, SMALL, [np.nan, 0, 0, 0, 0]], dtype=np.float32)
        np.save(tmp_path / "x.npy", x), np.save(tmp_path / "t.npy", np.array([3, 2, 0]))
        code, out, _ = run_cli(capsys, tmp_path / "x.npy", "--target", tmp_path / "t.npy", "--json")
        emitted = json.loads(out)
        report, slice_ = documented_schema()
        assert keys(emitted) == keys(report)
        assert keys(emitted["source"]) == keys(report["source"])
        assert keys(emitted["data"]) == keys(report["data"]) and keys(emitted["verdict"]) == keys(report["verdict"])
        assert list(emitted["dtypes"]) == list(DTYPES)
        for rep in emitted["dtypes"].values():
            assert keys(rep) == keys(report["dtypes"]["D"])
        slices = emitted["data"]["worst"] + [s for rep in emitted["dtypes"].values() for s in rep["worst"]]
        assert len(slices) >= 4 and all(keys(s) == keys(slice_) for s in slices)

    def test_slice_fields_and_types(self):
        d = self.report().to_dict()
        slices = d["data"]["worst"] + [s for rep in d["dtypes"].values() for s in rep["worst"]]
        assert len(slices) >= 4
        for s in slices:
            assert set(s) == set(SLICE_KEYS)
            for key, types in SLICE_KEYS.items():
                assert isinstance(s[key], types), (key, s[key])
            assert set(s["problems"]) <= set(dg.PROBLEMS)

    def test_json_is_strict_and_spells_special_floats(self):
        text = self.report().to_json()

        def refuse(name):
            raise AssertionError(f"non-standard JSON constant {name}")

        d = json.loads(text, parse_constant=refuse)
        s = d["dtypes"]["float32"]["worst"][0]
        assert s["naive_loss"] == "inf" and s["stable_loss"] == 142.0
        assert d["data"]["worst"][0]["max"] == "nan"

    def test_str_is_the_human_report(self):
        r = self.report()
        text = str(r)
        assert text.endswith(r.verdict.message + "\n")
        assert "worst slices in float32 (1 of 1 failing)" in text


class TestGoldenReport:
    def test_golden_human_report(self, capsys, monkeypatch):
        monkeypatch.chdir(DATA)
        code, out, err = run_cli(capsys, "diagnose_golden.npy", "--target", "diagnose_golden_target.npy")
        assert (code, err) == (0, "")
        assert out == (DATA / "diagnose_golden.txt").read_text()


# --------------------------------------------------------------------------
# Streaming: windows give the same report as the whole array
# --------------------------------------------------------------------------


class TestStreaming:
    def make(self, tmp_path, rng, order="C"):
        x = rng.standard_normal((97, 3, 11)).astype(np.float32) * 8
        x[5, 1, :4] = HUGE[:4]
        x[50, 2, 3] = np.nan
        x[96, 0] = -np.inf
        path = tmp_path / "x.npy"
        np.save(path, np.asarray(x, order=order))
        return x, path

    @pytest.mark.parametrize("axis", [-1, 1])
    def test_windows_match_memory(self, tmp_path, rng, monkeypatch, axis):
        x, path = self.make(tmp_path, rng)
        t = rng.integers(0, x.shape[axis], np.delete(x.shape, axis))
        from stablesoftmax.lab import _readers

        whole = json.loads(diagnose(x, target=t, axis=axis, top=7).to_json())
        monkeypatch.setattr(dg, "CHUNK_BYTES", 300)  # a few slices per window
        seen = []
        src = _readers.open_array(str(path))
        read = src.read
        src = _readers.Array(
            src.name, src.shape, src.dtype, src.stream_axis, lambda a, b: seen.append((a, b)) or read(a, b)
        )
        streamed = json.loads(dg._scan(src, t, axis, DTYPES, 7, "target").to_json())
        assert len(seen) > 10  # it really went window by window
        whole["source"]["name"] = streamed["source"]["name"]
        assert streamed == whole

    def test_fortran_order_file(self, tmp_path, rng, capsys):
        x, path = self.make(tmp_path, rng, order="F")
        np.save(tmp_path / "c.npy", np.ascontiguousarray(x))
        a = run_cli(capsys, path, "--json")
        b = run_cli(capsys, tmp_path / "c.npy", "--json")
        da, db = json.loads(a[1]), json.loads(b[1])
        da["source"].pop("name"), db["source"].pop("name")
        assert da == db


# --------------------------------------------------------------------------
# The command: formats, exit codes, bad input
# --------------------------------------------------------------------------


@pytest.fixture
def seed_arrays():
    return np.array([SMALL, HUGE], dtype=np.float32), np.array([2, 3])


class TestCommandFormats:
    def check(self, capsys, *argv, underflow=1, dtype="float32"):
        code, out, err = run_cli(capsys, *argv, "--json", "--dtype", dtype)
        assert (code, err) == (0, "")
        d = json.loads(out)
        assert d["dtypes"][dtype]["underflow"] == underflow
        return d

    def test_npy(self, tmp_path, capsys, seed_arrays):
        x, t = seed_arrays
        np.save(tmp_path / "x.npy", x), np.save(tmp_path / "t.npy", t)
        d = self.check(capsys, tmp_path / "x.npy", "--target", tmp_path / "t.npy")
        assert d["dtypes"]["float32"]["worst"][0]["stable_loss"] == 142.0

    def test_npz_with_keys(self, tmp_path, capsys, seed_arrays):
        x, t = seed_arrays
        np.savez_compressed(tmp_path / "b.npz", scores=x, labels=t)
        self.check(capsys, tmp_path / "b.npz", "--key", "scores", "--target-key", "labels")

    def test_npz_picks_the_array_named_logits(self, tmp_path, capsys, seed_arrays):
        x, t = seed_arrays
        np.savez(tmp_path / "b.npz", logits=x, target=t)
        d = self.check(capsys, tmp_path / "b.npz", "--target-key", "target")
        assert d["source"]["target"] is True

    def test_safetensors_bfloat16(self, tmp_path, capsys, seed_arrays):
        x, t = seed_arrays
        write_safetensors(
            tmp_path / "x.safetensors",
            {"logits": ("BF16", x.astype(BF16)), "target": ("I64", t)},
            {"__metadata__": {"format": "pt"}},
        )
        d = self.check(capsys, tmp_path / "x.safetensors", "--target-key", "target", dtype="bfloat16")
        assert d["source"]["dtype"] == "bfloat16"

    def test_safetensors_written_by_the_library(self, tmp_path, capsys, seed_arrays):
        st = pytest.importorskip("safetensors.numpy")
        x, t = seed_arrays
        st.save_file({"logits": x, "target": t}, str(tmp_path / "x.safetensors"))
        self.check(capsys, tmp_path / "x.safetensors", "--target-key", "target")

    def test_torch_file(self, tmp_path, capsys, seed_arrays):
        torch = pytest.importorskip("torch")
        x, t = seed_arrays
        torch.save({"logits": torch.from_numpy(x).half(), "target": torch.from_numpy(t)}, tmp_path / "x.pt")
        torch.save(torch.from_numpy(x), tmp_path / "y.pth")
        self.check(capsys, tmp_path / "x.pt", "--target-key", "target", dtype="float16")
        self.check(capsys, tmp_path / "y.pth")

    def test_csv_with_header_nan_and_inf(self, tmp_path, capsys):
        (tmp_path / "x.csv").write_text("a,b,c,d,e\n1.2,4.7,3.1,0.5,2.9\n10,92,30,-50,40\nnan,1,2,3,inf\n")
        (tmp_path / "t.csv").write_text("2\n3\n0\n")
        d = self.check(capsys, tmp_path / "x.csv", "--target", tmp_path / "t.csv")
        assert (d["data"]["nan"], d["source"]["shape"]) == (1, [3, 5])

    def test_big_endian_npy(self, tmp_path, capsys, seed_arrays):
        x, _ = seed_arrays
        np.save(tmp_path / "x.npy", x.astype(">f4"))
        self.check(capsys, tmp_path / "x.npy")

    def test_tsv_and_json(self, tmp_path, capsys, seed_arrays):
        x, t = seed_arrays
        (tmp_path / "x.tsv").write_text("\n".join("\t".join(map(str, r)) for r in x.tolist()) + "\n")
        (tmp_path / "x.json").write_text(json.dumps({"logits": x.tolist(), "target": t.tolist()}))
        (tmp_path / "y.json").write_text(json.dumps([["-inf", 0.0], ["Infinity", 1.0]]))
        self.check(capsys, tmp_path / "x.tsv")
        self.check(capsys, tmp_path / "x.json", "--target-key", "target")
        d = self.check(capsys, tmp_path / "y.json", underflow=0)
        assert (d["data"]["masked"], d["data"]["posinf"]) == (0, 1)


class TestExitCodes:
    def test_clean_file_exits_zero_with_fail_on_any(self, tmp_path, capsys):
        np.save(tmp_path / "x.npy", np.array([SMALL], dtype=np.float32))
        assert run_cli(capsys, tmp_path / "x.npy", "--fail-on", "any")[0] == 0

    @pytest.mark.parametrize(
        "fail_on, dtype, code",
        [
            ("underflow", "float32", 1),
            ("overflow", "float32", 1),
            ("any", "float32", 1),
            ("underflow", "float64", 0),
            ("any", "float64", 0),
            (None, "float32", 0),
        ],
    )
    def test_fail_on(self, tmp_path, capsys, seed_arrays, fail_on, dtype, code):
        x, _ = seed_arrays
        np.save(tmp_path / "x.npy", x)
        extra = ["--fail-on", fail_on] if fail_on else []
        assert run_cli(capsys, tmp_path / "x.npy", "--dtype", dtype, *extra)[0] == code

    def test_data_problems_fail_any_only(self, tmp_path, capsys):
        np.save(tmp_path / "x.npy", np.array([[np.nan, 0.0]]))
        assert run_cli(capsys, tmp_path / "x.npy", "--fail-on", "any")[0] == 1
        assert run_cli(capsys, tmp_path / "x.npy", "--fail-on", "overflow")[0] == 0

    def test_repeated_dtype_option_last_wins(self, tmp_path, capsys, seed_arrays):
        # issue 13 item 6: repeated flags follow argparse's usual last-wins, as --axis and --top do
        np.save(tmp_path / "x.npy", seed_arrays[0])
        code, out, _ = run_cli(capsys, tmp_path / "x.npy", "--dtype", "float16", "--dtype", "float32,float64", "--json")
        assert code == 0 and list(json.loads(out)["dtypes"]) == ["float32", "float64"]


def _bad_files(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a phrase the message must hold)."""
    x = np.array([SMALL, HUGE], dtype=np.float32)
    np.save(tmp / "ok.npy", x)
    full = (tmp / "ok.npy").read_bytes()
    (tmp / "trunc.npy").write_bytes(full[:-7])
    (tmp / "extra.npy").write_bytes(full + b"\0" * 4)
    np.save(tmp / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp / "bf16.npy", x.astype(BF16))
    np.save(tmp / "str.npy", np.array(["a", "b"]))
    np.save(tmp / "cplx.npy", np.ones((2, 2), np.complex64))
    np.save(tmp / "scalar.npy", np.float32(3))
    np.save(tmp / "rows0.npy", np.zeros((0, 5), np.float32))
    np.save(tmp / "cls0.npy", np.zeros((4, 0), np.float32))
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04" + bytes(range(60)))
    np.savez(tmp / "objs.npz", logits=np.array([None, 1], dtype=object))
    (tmp / "ragged.csv").write_text("1,2,3\n4,5\n")
    (tmp / "words.csv").write_text("1,2,3\n4,five,6\n")
    (tmp / "empty.csv").write_text("a,b\n")
    (tmp / "ragged.json").write_text("[[1, 2], [3]]")
    (tmp / "bool.json").write_text("[[true, 2]]")
    np.save(tmp / "t_shape.npy", np.array([1, 2, 3]))
    np.save(tmp / "t_range.npy", np.array([2, 5]))
    np.save(tmp / "t_float.npy", np.array([2.0, 3.0]))
    (tmp / "adir.npy").mkdir()
    (tmp / "x.parquet").write_bytes(b"PAR1")
    ok = str(tmp / "ok.npy")
    return {
        "truncated npy": ([str(tmp / "trunc.npy")], "is truncated"),
        "extra bytes": ([str(tmp / "extra.npy")], "extra bytes"),
        "object array": ([str(tmp / "obj.npy")], "not unpickled"),
        "bfloat16 npy": ([str(tmp / "bf16.npy")], "bfloat16"),
        "strings": ([str(tmp / "str.npy")], "expected float16"),
        "complex": ([str(tmp / "cplx.npy")], "complex64"),
        "0-d": ([str(tmp / "scalar.npy")], "0-d"),
        "zero rows": ([str(tmp / "rows0.npy")], "no data"),
        "zero classes": ([str(tmp / "cls0.npy")], "no data"),
        "corrupt npz": ([str(tmp / "corrupt.npz")], "not a valid .npz"),
        "object npz": ([str(tmp / "objs.npz")], "not unpickled"),
        "missing npz key": ([str(tmp / "objs.npz"), "--key", "nope"], "has no array 'nope'"),
        "ragged csv": ([str(tmp / "ragged.csv")], "line 2 has 2 fields"),
        "words csv": ([str(tmp / "words.csv")], "'five', not a number"),
        "header-only csv": ([str(tmp / "empty.csv")], "no data"),
        "ragged json": ([str(tmp / "ragged.json")], "ragged"),
        "bool json": ([str(tmp / "bool.json")], "not a number"),
        "target shape": ([ok, "--target", str(tmp / "t_shape.npy")], "one class index per slice"),
        "target range": ([ok, "--target", str(tmp / "t_range.npy")], r"[0, 5)"),
        "target float": ([ok, "--target", str(tmp / "t_float.npy")], "must be integers"),
        "missing file": ([str(tmp / "nope.npy")], "no such file"),
        "directory": ([str(tmp / "adir.npy")], "is a directory"),
        "unknown extension": ([str(tmp / "x.parquet")], "unknown file type (.parquet)"),
        "bad axis": ([ok, "--axis", "5"], "axis=5"),
        "bad dtype": ([ok, "--dtype", "float8"], "float8"),
    }


BAD_CASES = [
    "truncated npy",
    "extra bytes",
    "object array",
    "bfloat16 npy",
    "strings",
    "complex",
    "0-d",
    "zero rows",
    "zero classes",
    "corrupt npz",
    "object npz",
    "missing npz key",
    "ragged csv",
    "words csv",
    "header-only csv",
    "ragged json",
    "bool json",
    "target shape",
    "target range",
    "target float",
    "missing file",
    "directory",
    "unknown extension",
    "bad axis",
    "bad dtype",
]


class TestBadInput:
    @pytest.mark.parametrize("case", BAD_CASES)
    def test_one_line_exit_2(self, tmp_path, capsys, case):
        argv, phrase = _bad_files(tmp_path)[case]
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("stablesoftmax diagnose: error: ")
        assert phrase in err
        if case not in ("bad axis", "bad dtype"):
            assert Path(argv[-1] if "target" in case else argv[0]).name in err  # names the file

    def test_object_array_is_never_unpickled(self, tmp_path, capsys, monkeypatch):
        import pickle

        np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)

        def boom(*args, **kwargs):
            raise AssertionError("unpickled")

        monkeypatch.setattr(pickle, "load", boom)
        monkeypatch.setattr(pickle, "loads", boom)
        assert run_cli(capsys, tmp_path / "obj.npy")[0] == 2


class Tty(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self):
        return True


class TestProgress:
    """tqdm draws the bar on a terminal; a log or a pipe gets nothing (tests run without a TTY)."""

    def scan_with_bar(self, stream, monkeypatch, nbytes_needed=0):
        monkeypatch.setattr(dg, "CHUNK_BYTES", 4096)  # many windows from a small array
        monkeypatch.setattr(dg, "LARGE_INPUT", nbytes_needed)
        x = np.zeros((64, 100), dtype=np.float32)  # 25 600 bytes: 7 windows of 40 rows at most
        src = dg._readers.from_memory(x, "x.npy")
        with dg._progress_bar("x.npy", src.nbytes, stream) as bar:
            dg._scan(src, None, -1, ("float32",), 1, "target", progress=bar)
            return bar.n, src.nbytes

    def test_bar_on_a_terminal_counts_every_byte(self, monkeypatch):
        tty = Tty()
        done, total = self.scan_with_bar(tty, monkeypatch)
        assert done == total
        assert "diagnose x.npy" in tty.getvalue() and "\r" in tty.getvalue()

    def test_nothing_off_a_terminal(self, monkeypatch):
        plain = io.StringIO()
        self.scan_with_bar(plain, monkeypatch)
        assert plain.getvalue() == ""

    def test_small_input_gets_no_bar_even_on_a_terminal(self, monkeypatch):
        tty = Tty()
        self.scan_with_bar(tty, monkeypatch, nbytes_needed=10**9)
        assert tty.getvalue() == ""

    def test_command_draws_on_a_terminal_and_is_silent_otherwise(self, tmp_path, capsys, monkeypatch, seed_arrays):
        np.save(tmp_path / "x.npy", seed_arrays[0])
        monkeypatch.setattr(dg, "LARGE_INPUT", 0)  # this small file counts as large
        assert run_cli(capsys, tmp_path / "x.npy")[2] == ""  # capsys's stderr is no terminal
        tty = Tty()
        monkeypatch.setattr(sys, "stderr", tty)
        assert main(["diagnose", str(tmp_path / "x.npy")]) == 0
        assert "diagnose x.npy" in tty.getvalue()

    def test_small_files_show_no_progress(self, tmp_path, capsys, seed_arrays):
        np.save(tmp_path / "x.npy", seed_arrays[0])
        assert run_cli(capsys, tmp_path / "x.npy")[2] == ""


class TestPublicApiOnly:
    def test_diagnose_and_its_readers_import_only_public_names(self):
        # the library's private modules are being rewritten; the lab stands on stablesoftmax.__all__
        import ast

        import stablesoftmax
        from stablesoftmax.lab import _cases, _outdir, _plot, _readers

        lab_modules = {"_readers", "_plot", "_outdir", "_cases"}
        for module in (dg, _readers, _plot, _outdir, _cases):
            tree = ast.parse(Path(module.__file__).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 2:  # from .. import / from ..x import
                    assert node.module is None, (module.__name__, node.module)
                    assert {a.name for a in node.names} <= set(stablesoftmax.__all__), module.__name__
                elif isinstance(node, ast.ImportFrom) and node.level == 1:  # the lab's own modules
                    names = {node.module} if node.module else {a.name for a in node.names}
                    assert names <= lab_modules, (module.__name__, names)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                    assert not any(n.startswith("stablesoftmax") for n in names), (module.__name__, names)

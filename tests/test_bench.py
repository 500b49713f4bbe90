"""``stablesoftmax bench``: the timings table, its ratios, and how it extends."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from stablesoftmax import cli
from stablesoftmax.lab import bench


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["bench", "--out", str(out), "--repeats", "5", "-q"]) == 0
    return out, read_csv(out / "timings.csv")


class TestTimingsCsv:
    def test_columns_and_implementations(self, one_run):
        out, rows = one_run
        assert tuple(rows[0]) == bench.COLUMNS
        impls = [r["implementation"] for r in rows]
        expect = ["stable", "naive", "textbook"] + [m for m in ("scipy", "torch") if importlib.util.find_spec(m)]
        assert sorted(impls) == sorted(expect)
        assert all(r["function"] == "logsumexp" and r["shape"] == "64x600" for r in rows)

    def test_statistics_are_consistent(self, one_run):
        _, rows = one_run
        naive = float(next(r for r in rows if r["implementation"] == "naive")["median_s"])
        for r in rows:
            lo, med, hi = float(r["min_s"]), float(r["median_s"]), float(r["max_s"])
            assert 0 < lo <= med <= hi
            assert int(r["repeats"]) == 5 and int(r["calls_per_repeat"]) >= 1
            assert float(r["ratio_to_naive"]) == pytest.approx(med / naive, rel=1e-5, abs=1e-4)  # 4 decimals in the CSV

    def test_versions_are_of_the_code_timed(self, one_run):
        import numpy

        import stablesoftmax

        _, rows = one_run
        version = {r["implementation"]: r["version"] for r in rows}
        assert version["stable"] == stablesoftmax.__version__ and version["naive"] == numpy.__version__

    def test_png_and_manifest(self, one_run):
        import hashlib

        out, _ = one_run
        assert (out / "timings.png").read_bytes().startswith(b"\x89PNG")
        m = json.loads((out / "manifest.json").read_text())
        assert m["repeats"] == 5 and m["cases"] == [{"function": "logsumexp", "shape": [64, 600], "dtype": "float64"}]
        for name, digest in m["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


class TestMeasure:
    def test_counts_calls(self):
        calls = []
        number, samples = bench.measure(lambda: calls.append(1), repeats=7)
        assert len(samples) == 7 and all(s > 0 for s in samples)
        # warm-up, then calibration doubling 1, 2, 4, ..., number, then the repeats
        calibration = sum(2**k for k in range(number.bit_length()))
        assert len(calls) == 1 + calibration + 7 * number


class TestInterleaved:
    def test_each_round_times_every_implementation_in_a_rotating_order(self):
        calls = []
        numbers, samples = bench.measure_interleaved(
            {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4
        )
        assert all(len(v) == 4 for v in samples.values())
        # after the warm-up and the calibration of each, the rounds: a b, b a, a b, b a (number calls each)
        rounds = calls[len(calls) - 4 * (numbers["a"] + numbers["b"]) :]
        na, nb = numbers["a"], numbers["b"]
        expect = (["a"] * na + ["b"] * nb + ["b"] * nb + ["a"] * na) * 2
        assert rounds == expect

    def test_ratio_spread_is_per_round(self, one_run):
        _, rows = one_run
        for r in rows:
            q1, q3 = float(r["ratio_q1"]), float(r["ratio_q3"])
            assert 0 < q1 <= q3
            if r["implementation"] == "naive":
                assert q1 == q3 == 1.0  # each round's naive time divided by itself


class TestExtending:
    def test_each_case_has_its_own_naive_ratio(self, monkeypatch, tmp_path):
        cases = (bench.BenchCase("logsumexp", (4, 8)), bench.BenchCase("softmax", (2, 16), "float32"))
        monkeypatch.setitem(bench.SUITES, "lab", cases)
        monkeypatch.setattr(bench, "BINDERS", {k: bench.BINDERS[k] for k in ("stable", "naive")})
        assert cli.main(["bench", "--out", str(tmp_path), "--repeats", "3", "-q"]) == 0
        rows = read_csv(tmp_path / "timings.csv")
        assert [(r["function"], r["implementation"]) for r in rows] == [
            ("logsumexp", "stable"),
            ("logsumexp", "naive"),
            ("softmax", "stable"),
            ("softmax", "naive"),
        ]
        assert [r["ratio_to_naive"] for r in rows if r["implementation"] == "naive"] == ["1.0000", "1.0000"]


class TestPerfSuite:
    def test_scaling_chart_and_read_ratio(self, monkeypatch, tmp_path):
        sweep = tuple(bench.BenchCase("logsumexp", (8, k), "float32") for k in (16, 64, 256))
        monkeypatch.setattr(bench, "SCALING", sweep)
        monkeypatch.setitem(bench.SUITES, "perf", (bench.BenchCase("cross_entropy", (8, 32), "float32"),) + sweep)
        monkeypatch.setattr(bench, "BINDERS", {k: bench.BINDERS[k] for k in ("stable", "naive", "textbook")})
        assert cli.main(["bench", "--out", str(tmp_path), "--suite", "perf", "--repeats", "3", "-q"]) == 0
        assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG")
        rows = read_csv(tmp_path / "timings.csv")
        assert {r["function"] for r in rows} == {"cross_entropy", "logsumexp"}
        assert all(float(r["ratio_to_one_read"]) > 0 for r in rows)
        assert "textbook" not in {r["implementation"] for r in rows if r["function"] == "cross_entropy"}

    def test_only_that_matches_nothing(self, tmp_path, capsys):
        assert cli.main(["bench", "--out", str(tmp_path), "--only", "nothing-like-this", "-q"]) == 2
        assert "--only 'nothing-like-this' matches no case of suite 'lab'" in capsys.readouterr().err


class TestBinders:
    @pytest.mark.parametrize("function", ["cross_entropy", "cross_entropy_with_grad"])
    def test_every_implementation_computes_the_same_loss(self, function, rng):
        import numpy as np

        x, y = rng.normal(size=(6, 5)), rng.integers(0, 5, 6)
        results = {k: b(function, x, y) for k, b in bench.BINDERS.items()}
        ref = results.pop("stable")()
        for name, thunk in results.items():
            if thunk is None:
                continue
            got = thunk()
            if function == "cross_entropy":
                assert float(got) == pytest.approx(float(ref), rel=1e-12), name
            else:
                assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12), name
                np.testing.assert_allclose(np.asarray(got[1]), ref[1], rtol=1e-10, err_msg=name)


class TestDefaultsAndBounds:
    def test_no_arguments_writes_lab02_timings_into_a_default_directory(self, tmp_path, monkeypatch, capsys):
        # lab 02 task 6: stable, SciPy and naive logsumexp on (64, 600), saved as timings.csv
        monkeypatch.chdir(tmp_path)
        assert cli.main(["bench", "-q"]) == 0
        out = bench.default_out("lab")
        assert out.parts[0] == "out" and out.name.endswith("-phase-05-logsumexp")
        rows = read_csv(tmp_path / out / "timings.csv")
        case = ("logsumexp", "64x600", "float64")
        lab02 = {r["implementation"] for r in rows if (r["function"], r["shape"], r["dtype"]) == case}
        assert {"stable", "naive", "scipy"} <= lab02
        assert f"wrote {out}/" in capsys.readouterr().out

    @pytest.mark.parametrize("repeats", ["2", "10001", str(10**26), "1e3"])
    def test_repeats_bounded(self, tmp_path, capsys, repeats):
        code = cli.main(["bench", "--out", str(tmp_path / "b"), "--repeats", repeats])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
        assert "--repeats" in err and ">= 3 and <= 10000" in err and repeats[:20] in err
        assert not (tmp_path / "b").exists()

    def test_empty_out_refused(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        assert cli.main(["bench", "--out", ""]) == 2
        assert "--out '' is empty" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


class TestMachineBesideTheTable:
    @pytest.fixture
    def tiny_perf(self, monkeypatch):
        monkeypatch.setitem(bench.SUITES, "perf", (bench.BenchCase("logsumexp", (4, 16), "float32"),))
        monkeypatch.setattr(bench, "BINDERS", {k: bench.BINDERS[k] for k in ("stable", "naive")})
        monkeypatch.setattr(bench, "read_bandwidth", lambda: 1e10)

    def test_cpu_features_and_versions_are_printed_and_kept(self, tiny_perf, tmp_path, capsys):
        assert cli.main(["bench", "--out", str(tmp_path), "--suite", "perf", "--repeats", "3", "-q"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("cpu: ") and "vector features:" in lines[0] and "AVX-512: " in lines[0]
        assert lines[1].startswith("versions: ") and "numpy " in lines[1] and "stablesoftmax " in lines[1]
        assert lines[2].startswith("function")
        cpu = json.loads((tmp_path / "manifest.json").read_text())["platform"]["cpu"]
        if cpu["source"] == "/proc/cpuinfo":  # what the line says is what /proc/cpuinfo says
            text = Path("/proc/cpuinfo").read_text()
            flags = next(ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))).split(":")[1].split()
            assert cpu["avx512"] == ("avx512f" in flags) and ("avx2" in cpu["vector_features"]) == ("avx2" in flags)

    def test_fallbacks_when_proc_cpuinfo_is_missing(self, monkeypatch):
        from stablesoftmax.lab import _manifest

        monkeypatch.setattr(_manifest, "_proc_cpuinfo", lambda: (None, None))
        line = _manifest.cpu_line()
        assert "(from numpy)" in line and "AVX-512: " in line
        monkeypatch.setattr(_manifest, "_umath", lambda: None)
        line = _manifest.cpu_line()
        assert "vector features: unknown (from unknown)" in line and "AVX-512: unknown" in line


class TestCommittedLab02Timings:
    def test_timings_chart_and_manifest(self):
        import hashlib

        dirs = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*-phase-05-logsumexp"))
        assert dirs, "experiments/<date>-phase-05-logsumexp/ is not committed"
        out = dirs[-1]
        rows = read_csv(out / "timings.csv")
        m = json.loads((out / "manifest.json").read_text())
        expect = {"stable", "naive", "scipy"} | ({"torch"} if m["versions"]["torch"] else set())
        assert expect <= {r["implementation"] for r in rows if r["shape"] == "64x600" and r["function"] == "logsumexp"}
        for name, digest in m["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert m["command"].startswith(f"stablesoftmax bench --out experiments/{out.name} ")
        assert m["platform"]["cpu"]["vector_features"] is not None
        for text in ((out / "timings.csv").read_text(), (out / "manifest.json").read_text()):
            assert not any(bad in text for bad in ("/work/", "/home/", "/tmp/", "/usr/"))

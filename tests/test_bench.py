"""``stablesoftmax bench``: the timings table, its ratios, and how it extends."""

from __future__ import annotations

import csv
import importlib.util
import json

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


class TestExtending:
    def test_each_case_has_its_own_naive_ratio(self, monkeypatch, tmp_path):
        cases = (bench.BenchCase("logsumexp", (4, 8)), bench.BenchCase("softmax", (2, 16), "float32"))
        monkeypatch.setitem(bench.SUITES, "lab", cases)
        monkeypatch.setattr(bench, "BINDERS", {k: bench.BINDERS[k] for k in ("stable", "naive")})
        assert cli.main(["bench", "--out", str(tmp_path), "--repeats", "3", "-q"]) == 0
        rows = read_csv(tmp_path / "timings.csv")
        assert [(r["function"], r["implementation"]) for r in rows] == [
            ("logsumexp", "stable"), ("logsumexp", "naive"), ("softmax", "stable"), ("softmax", "naive")]
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

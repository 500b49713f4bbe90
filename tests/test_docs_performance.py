"""The performance page's results are current, filed by CPU class, and its prose agrees with them.

``docs/performance.rst`` draws its charts from ``benchmarks/results/perf.csv`` (written
by ``python benchmarks/perf.py --csv``) and quotes the goals of ``perf.md``; these tests
fail when those files are older than the package or the page's words drift from them.
"""

import csv
import re
import sys
from pathlib import Path

import pytest

import stablesoftmax

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def release(version: str) -> tuple[int, ...]:
    """``"0.2.0"`` -> ``(0, 2, 0)``; a local or pre-release suffix is left out."""
    return tuple(int(p) for p in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


@pytest.fixture(scope="module")
def perf_rows() -> list[dict[str, str]]:
    with (RESULTS / "perf.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def perf_script():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import perf
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return perf


def test_committed_timings_are_of_this_version(perf_rows):
    ours = {row["version"] for row in perf_rows if row["library"] == "stablesoftmax"}
    assert ours, "perf.csv holds no stablesoftmax row"
    stale = {v for v in ours if release(v) < release(stablesoftmax.__version__)}
    assert not stale, f"rerun: python benchmarks/perf.py --rounds 5 --out benchmarks/results/perf.md --csv {RESULTS}"


@pytest.mark.parametrize("report", ["perf.md", "perf-zen5.md", "accuracy.md"])
def test_committed_reports_are_of_this_version(report):
    head = (RESULTS / report).read_text()[:2000]
    found = re.search(r"stablesoftmax (\d[\w.+]*)", head)
    assert found and release(found.group(1)) >= release(stablesoftmax.__version__), report


def test_every_row_names_its_cpu_class(perf_rows, perf_script):
    assert list(perf_rows[0]) == perf_script.CSV_FIELDS
    assert all(row["cpu_class"] and row["cpu"] for row in perf_rows)


@pytest.mark.parametrize("function", ["logsumexp", "softmax", "log_softmax"])
def test_each_function_is_measured_against_all_three_baselines(perf_rows, function):
    """The charts compare with naive NumPy, SciPy and PyTorch; each CPU class must have all three."""
    for cls in {row["cpu_class"] for row in perf_rows}:
        rows = [r for r in perf_rows if r["cpu_class"] == cls and r["function"] == function and not r["variant"]]
        libraries = {r["library"] for r in rows if r["ratio_to_stablesoftmax"]}
        assert {"numpy", "scipy", "torch", "stablesoftmax"} <= libraries, (cls, function, libraries)


@pytest.mark.parametrize(
    ("model", "llvm", "features", "expected"),
    [
        ("AMD EPYC", "znver3", {"avx2": True}, "AMD EPYC Zen 3 (AVX2)"),
        ("AMD EPYC 7B13 64-Core Processor", "znver3", {"avx2": True}, "AMD EPYC Zen 3 (AVX2)"),
        (
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
            "icelake-server",
            {"avx2": True, "avx512f": True},
            "Intel Xeon Platinum Ice Lake-SP (AVX-512)",
        ),
        ("aarch64", "neoverse-n1", {}, "unknown CPU Neoverse N1 (no AVX2)"),
        ("", "x86-64", {}, "unknown CPU x86-64 (no AVX2)"),
    ],
)
def test_cpu_class(perf_script, model, llvm, features, expected):
    assert perf_script.cpu_class(model, llvm, features) == expected


def test_a_run_keeps_other_cpu_classes(perf_script, perf_rows, tmp_path):
    """Rows of another class survive a run; the run's own class is replaced, not appended."""
    path = tmp_path / "perf.csv"
    other = {**perf_rows[0], "cpu_class": "Other CPU Zen 9 (AVX-1024)", "median_s": "1"}
    perf_script.write_csv(str(path), [perf_rows[0], other])
    fresh = {**perf_rows[0], "median_s": 2.5}
    perf_script.write_csv(str(path), [fresh])
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cpu_class"], r["median_s"]) for r in rows] == [(other["cpu_class"], "1"), (fresh["cpu_class"], "2.5")]


@pytest.mark.parametrize(
    ("report", "marker"),
    [("perf.md", "goals-missed"), ("perf-zen5.md", "goals-missed-zen5")],
)
def test_goals_named_missed_are_those_the_report_marks(report, marker):
    """Each list of missed goals on the page is exactly its report's 'NOT met' rows for the public functions."""
    goals = (RESULTS / report).read_text().split("### Goals", 1)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in goals.splitlines() if line.startswith("|")]
    # The goals of the public functions, and the kernel's one goal of its own: a bound on memory reads.
    missed = {
        f"{case}: {goal}"
        for case, goal, _, verdict in (r for r in rows if len(r) == 4)
        if verdict == "NOT met" and ("stablesoftmax" in goal or "one read" in goal)
    }
    page = (REPO / "docs" / "performance.rst").read_text()
    section = page.split(f".. {marker}-start", 1)[1].split(f".. {marker}-end", 1)[0]
    listed = set(re.findall(r"^- ``(.+)``$", section, flags=re.M))
    assert listed == missed

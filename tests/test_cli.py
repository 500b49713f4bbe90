"""The command line: help, exit codes, one-line errors, --force, bad predictions files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stablesoftmax import cli
from stablesoftmax.lab.battery import FILES, TEMPLATE


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


class TestHelp:
    @pytest.mark.parametrize("command", ["battery", "bench"])
    def test_subcommand_help_has_examples(self, capsys, command):
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"stablesoftmax {command} --out" in text

    def test_help_imports_nothing_heavy(self):
        code = (
            "import sys\nfrom stablesoftmax import cli\n"
            "try:\n    cli.main(['battery', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('matplotlib', 'scipy', 'torch') if m in sys.modules]\n"
            "print('HEAVY', heavy)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in done.stdout, done.stdout + done.stderr

    def test_top_level_help_imports_no_subcommand(self):
        # `stablesoftmax --help` lists the subcommands from cli.SUBCOMMANDS; importing their modules (NumPy,
        # ml_dtypes, and what they import) is the cost the lazy parser avoids
        code = (
            "import sys\nfrom stablesoftmax import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LAB', sorted(m for m in sys.modules if m.startswith('stablesoftmax.lab.')))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "LAB []" in done.stdout, done.stdout + done.stderr
        assert all(f"    {name}" in done.stdout for name in cli.SUBCOMMANDS)

    def test_top_level_help_imports_no_numpy(self):
        code = (
            "import sys\nfrom stablesoftmax import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', [m for m in ('numpy', 'ml_dtypes') if m in sys.modules])"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in done.stdout, done.stdout + done.stderr

    def test_summaries_are_the_modules_own(self):
        import argparse
        import importlib

        for name, summary in cli.SUBCOMMANDS.items():
            sub = argparse.ArgumentParser().add_subparsers()
            importlib.import_module(f"stablesoftmax.lab.{name}").add_parser(sub)
            assert [a.help for a in sub._choices_actions] == [summary], name

    @pytest.mark.parametrize("command", ["battery", "bench", "diagnose"])
    def test_only_the_named_subcommand_is_built(self, command):
        parser = cli.build_parser([command, "--help"])
        sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
        built = {name for name, p in sub.choices.items() if len(p._actions) > 1}  # a stub has only -h
        assert built == {command}

    def test_unknown_subcommand_lists_the_choices(self, capsys):
        with pytest.raises(SystemExit) as exc:
            cli.main(["diagnoze", "x.npy"])
        assert exc.value.code == 2
        assert "invalid choice: 'diagnoze'" in capsys.readouterr().err

    def test_python_dash_m(self, tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "stablesoftmax", "battery", "--out", str(tmp_path), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "large positive" in done.stdout and "stop conditions" in done.stdout
        assert all((tmp_path / f).exists() for f in FILES)


class TestBadArguments:
    def test_dtype(self, capsys, tmp_path):
        code, _, err = run(capsys, "battery", "--out", str(tmp_path), "--dtype", "float8")
        assert_one_line_error(code, err, "--dtype", "'float8'", "float32", "bfloat16")

    @pytest.mark.parametrize("seed", ["abc", "-1"])
    def test_seed(self, capsys, tmp_path, seed):
        code, _, err = run(capsys, "battery", "--out", str(tmp_path), "--seed", seed)
        assert_one_line_error(code, err, "--seed", repr(seed), "non-negative integer")

    def test_out_is_a_file(self, capsys, tmp_path):
        f = tmp_path / "file"
        f.write_text("x")
        code, _, err = run(capsys, "battery", "--out", str(f))
        assert_one_line_error(code, err, "--out", str(f), "not a directory")

    def test_out_not_writable(self, capsys, tmp_path):
        f = tmp_path / "file"
        f.write_text("x")
        code, _, err = run(capsys, "battery", "--out", str(f / "sub"))
        assert_one_line_error(code, err, "--out", "not writable")
        assert f.read_text() == "x"

    def test_bench_repeats(self, capsys, tmp_path):
        code, _, err = run(capsys, "bench", "--out", str(tmp_path), "--repeats", "1")
        assert_one_line_error(code, err, "--repeats", "'1'", ">= 3")


class TestForce:
    def test_existing_files_need_force(self, capsys, tmp_path):
        assert run(capsys, "battery", "--out", str(tmp_path), "-q")[0] == 0
        (tmp_path / "README.md").write_text("mine")
        code, _, err = run(capsys, "battery", "--out", str(tmp_path), "-q")
        assert_one_line_error(code, err, "README.md", "--force")
        assert (tmp_path / "README.md").read_text() == "mine"  # untouched
        code, out, _ = run(capsys, "battery", "--out", str(tmp_path), "-q", "--force")
        assert code == 0 and (tmp_path / "README.md").read_text() != "mine"

    def test_other_files_are_left_alone(self, capsys, tmp_path):
        (tmp_path / "notes.txt").write_text("keep")
        assert run(capsys, "battery", "--out", str(tmp_path), "-q")[0] == 0
        assert (tmp_path / "notes.txt").read_text() == "keep"


class TestSummaryAndProgress:
    def test_summary_table_and_progress(self, capsys, tmp_path):
        code, out, err = run(capsys, "battery", "--out", str(tmp_path))
        assert code == 0
        assert "naive NaN" in out and "large positive" in out and f"fill in {TEMPLATE}" in out
        assert "[1/3]" in err and "[3/3]" in err


GOOD = '[cases."large positive"]\nnaive_nan = true\nstable_nan = false\nce = 0.0\n'


class TestPredictionsFile:
    def write(self, tmp_path: Path, text: str) -> Path:
        f = tmp_path / "p.toml"
        f.write_text(text)
        return f

    def bad(self, capsys, tmp_path, text: str, *needles: str) -> None:
        f = self.write(tmp_path, text)
        code, _, err = run(capsys, "battery", "--out", str(tmp_path / "out"), "--predictions", str(f))
        assert_one_line_error(code, err, "--predictions", str(f), *needles)
        assert not (tmp_path / "out").exists()  # checked before anything is written

    def test_complete_file_is_read(self, capsys, tmp_path):
        from stablesoftmax.lab._predictions import CASE_NAMES

        # every case answered (the battery refuses a partial file); the CE answers are wrong on purpose
        text = "".join(f'[cases."{n}"]\nnaive_nan = false\nstable_nan = false\nce = 1.0\n\n' for n in CASE_NAMES)
        f = self.write(tmp_path, text)
        code, out, _ = run(capsys, "battery", "--out", str(tmp_path / "out"), "-q", "--predictions", str(f))
        assert code == 0 and "answer(s) in p.toml missed" in out and "large positive (naive NaN?)" in out

    def test_not_toml(self, capsys, tmp_path):
        self.bad(capsys, tmp_path, GOOD + "ce = = 1\n", "not valid TOML", "line 5")

    def test_wrong_type_names_line_and_field(self, capsys, tmp_path):
        self.bad(
            capsys,
            tmp_path,
            GOOD.replace("naive_nan = true", 'naive_nan = "yes"'),
            "line 2",
            "naive_nan",
            "'yes'",
            "true or false",
        )

    def test_bad_ce(self, capsys, tmp_path):
        self.bad(capsys, tmp_path, GOOD.replace("ce = 0.0", 'ce = "lots"'), "line 4", "ce", "undefined")

    def test_unknown_field(self, capsys, tmp_path):
        self.bad(capsys, tmp_path, GOOD + "confidence = 3\n", "line 5", "confidence", "naive_nan, stable_nan, ce, why")

    def test_unknown_case(self, capsys, tmp_path):
        self.bad(
            capsys, tmp_path, GOOD + '\n[cases."huge"]\nnaive_nan = true\n', "line 6", "'huge'", "'large positive'"
        )

    def test_dtype_mismatch(self, capsys, tmp_path):
        self.bad(capsys, tmp_path, 'dtype = "float64"\n' + GOOD, "line 1", "float64", "float32")

    def test_missing_file(self, capsys, tmp_path):
        code, _, err = run(capsys, "battery", "--out", str(tmp_path), "--predictions", str(tmp_path / "nope.toml"))
        assert_one_line_error(code, err, "nope.toml", "no such file")

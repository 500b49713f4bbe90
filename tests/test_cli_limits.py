"""The command's limits and hostile inputs (issue 14 items 3, 4 and 6; issue 13 item 6).

Each refusal is a named error, exit 2 and one line on stderr that names the
argument, the file and the limit with the option that raises it. The fuzz
suite that runs such files under a memory cap and a timeout is in
``test_diagnose_fuzz.py``; here each case is pinned on its own, in-process.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from stablesoftmax import cli
from stablesoftmax.lab import _readers
from stablesoftmax.lab import diagnose as dg

SMALL = [1.2, 4.7, 3.1, 0.5, 2.9]
HUGE = [10.0, 92.0, 30.0, -50.0, 40.0]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["diagnose", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv, needles=()) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stablesoftmax diagnose: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------
# Special files: refused before they are read, never hang
# --------------------------------------------------------------------------


class TestSpecialFiles:
    @pytest.mark.parametrize("ext", [".json", ".csv", ".npz", ".npy", ".pt", ".safetensors", ".tsv"])
    def test_dev_zero_behind_any_name(self, capsys, tmp_path, ext):
        link = tmp_path / f"zero{ext}"
        link.symlink_to("/dev/zero")
        refused(capsys, link, needles=("LOGITS", str(link), "is a character device, refused", "regular file"))

    def test_dev_zero_as_target(self, capsys, tmp_path):
        np.save(tmp_path / "x.npy", np.array([SMALL], np.float32))
        link = tmp_path / "t.npy"
        link.symlink_to("/dev/zero")
        refused(capsys, tmp_path / "x.npy", "--target", link, needles=("--target", "character device"))

    def test_fifo_is_refused_without_hanging(self, tmp_path):
        fifo = tmp_path / "pipe.npy"
        os.mkfifo(fifo)
        # A real process, so that a hang is a timeout here and not a stuck test run.
        done = subprocess.run(
            [sys.executable, "-m", "stablesoftmax", "diagnose", str(fifo)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and "is a FIFO (named pipe), refused" in done.stderr

    @pytest.mark.parametrize(
        "name, link", [("pipe.json", False), ("pipe.csv", False), ("pipe.npz", False), ("x.json", True), ("x.pt", True)]
    )
    def test_fifo_or_symlink_to_one(self, capsys, tmp_path, name, link):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        path = tmp_path / name
        if link:
            path.symlink_to(fifo)
        else:
            fifo.rename(path)
        result = {}  # in a thread: a blocking open would leave it running, and the join below would time out
        worker = threading.Thread(target=lambda: result.update(line=refused(capsys, path)), daemon=True)
        worker.start()
        worker.join(20)
        assert "is a FIFO (named pipe), refused" in result.get("line", "hung"), result

    def test_directory_with_a_data_name(self, capsys, tmp_path):
        (tmp_path / "d.csv").mkdir()
        refused(capsys, tmp_path / "d.csv", needles=("is a directory",))


# --------------------------------------------------------------------------
# Size limits: what is read whole is bounded, and the option raises it
# --------------------------------------------------------------------------


def npz_claiming(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose one member declares (central directory and .npy header) far more than it holds."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    header = head.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("logits.npy", header + bytes(1024))
    # Make the archive claim the full size, as a crafted bomb's directory does.
    need = len(header) + int(np.prod(shape)) * 4
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, need)
    path.write_bytes(bytes(data))


class TestSizeLimits:
    def test_npz_member_that_decompresses_past_the_limit(self, capsys, tmp_path):
        # a real bomb: 48 MiB of zeros deflate to ~50 kB; a 16M limit refuses it before decompressing
        x = np.zeros((12 * 2**20 // 1000, 1000), np.float32)
        np.savez_compressed(tmp_path / "bomb.npz", logits=x)
        assert (tmp_path / "bomb.npz").stat().st_size < 2**20
        line = refused(
            capsys,
            tmp_path / "bomb.npz",
            "--max-bytes",
            "16M",
            needles=(
                "LOGITS",
                "bomb.npz['logits']",
                f"would decompress to (shape {x.shape}, float32)",
                f"{x.nbytes} bytes",
                "over the limit of 16777216 bytes",
                f"--max-bytes {x.nbytes}",
            ),
        )
        assert ".npy" in line  # says how to avoid the limit altogether
        code, out, _ = run(capsys, tmp_path / "bomb.npz", "--max-bytes", "64M", "--dtype", "float32")
        assert code == 0 and f"shape {x.shape}" in out

    def test_npz_claiming_2_gb_is_refused_at_the_default(self, capsys, tmp_path):
        shape = (2**19, 1024)  # 2 GiB of float32
        npz_claiming(tmp_path / "claim.npz", shape)
        assert (tmp_path / "claim.npz").stat().st_size < 10_000
        refused(
            capsys,
            tmp_path / "claim.npz",
            needles=(f"{2**31} bytes", f"over the limit of {_readers.MAX_BYTES} bytes", "--max-bytes"),
        )

    def test_stride_zero_pt_claiming_1e10_logits(self, capsys, tmp_path):
        torch = pytest.importorskip("torch")
        t = torch.zeros(1).expand(10**5, 10**5)  # one stored number, 10^10 logits claimed
        torch.save(t, tmp_path / "wide.pt")
        assert (tmp_path / "wide.pt").stat().st_size < 4000
        for extra in ([], ["--axis", "0"]):
            refused(
                capsys,
                tmp_path / "wide.pt",
                *extra,
                needles=(
                    "holds a tensor of shape (100000, 100000) (torch.float32)",
                    f"{4 * 10**10} bytes",
                    "--max-bytes",
                ),
            )

    def test_deflated_pt_archive_past_the_limit(self, capsys, tmp_path):
        torch = pytest.importorskip("torch")
        torch.save({"logits": torch.zeros(4096, 1024)}, tmp_path / "plain.pt")  # 16 MiB of storage
        with (
            zipfile.ZipFile(tmp_path / "plain.pt") as zin,
            zipfile.ZipFile(tmp_path / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as zout,
        ):
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info.filename))
        assert (tmp_path / "bomb.pt").stat().st_size < 100_000
        refused(
            capsys,
            tmp_path / "bomb.pt",
            "--max-bytes",
            "8M",
            needles=("is an archive that would decompress to", "over the limit of 8388608", "--max-bytes"),
        )
        assert run(capsys, tmp_path / "bomb.pt", "--max-bytes", "32M", "--dtype", "float32")[0] == 0

    def test_pt_file_larger_than_the_limit(self, capsys, tmp_path):
        torch = pytest.importorskip("torch")
        torch.save(torch.zeros(300, 1000), tmp_path / "x.pt")
        refused(
            capsys,
            tmp_path / "x.pt",
            "--max-bytes",
            "100K",
            needles=("over the limit of 102400 bytes", "raise the limit with --max-bytes"),
        )

    @pytest.mark.parametrize("ext", [".csv", ".json"])
    def test_text_file_larger_than_the_text_limit(self, capsys, tmp_path, ext):
        path = tmp_path / f"x{ext}"
        rows = "\n".join(",".join(["1.5"] * 100) for _ in range(100))
        path.write_text(rows if ext == ".csv" else "[" + ",".join(f"[{r}]" for r in rows.split("\n")) + "]")
        size = path.stat().st_size
        refused(
            capsys,
            path,
            "--max-text-bytes",
            "10K",
            needles=(f"is {size} bytes, over the limit of 10240 bytes", "--max-text-bytes"),
        )
        assert run(capsys, path, "--max-text-bytes", "1M", "--dtype", "float32")[0] == 0

    def test_safetensors_header_over_the_text_limit(self, capsys, tmp_path):
        header = json.dumps(
            {"__metadata__": {"pad": "x" * 20000}, "logits": {"dtype": "F32", "shape": [1, 5], "data_offsets": [0, 20]}}
        ).encode()
        (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(20))
        refused(
            capsys,
            tmp_path / "x.safetensors",
            "--max-text-bytes",
            "10K",
            needles=(f"{len(header)}-byte JSON header", "--max-text-bytes"),
        )
        assert run(capsys, tmp_path / "x.safetensors", "--dtype", "float32")[0] == 0

    def test_npy_read_whole_is_bounded(self, capsys, tmp_path):
        # classes on axis 0 of a C-order file: no window can be read without the whole file
        np.save(tmp_path / "x.npy", np.zeros((1000, 300), np.float32))
        refused(
            capsys,
            tmp_path / "x.npy",
            "--axis",
            "0",
            "--max-bytes",
            "1M",
            needles=("classes on axis 0", "read whole", "1200000 bytes", "--max-bytes 1200000"),
        )
        assert run(capsys, tmp_path / "x.npy", "--max-bytes", "1M", "--dtype", "float32")[0] == 0  # streamed

    @pytest.mark.parametrize(
        "text, value", [("1048576", 2**20), ("512K", 2**19), ("2G", 2**31), ("3MiB", 3 * 2**20), ("1 gb", 2**30)]
    )
    def test_size_option_spellings(self, text, value):
        assert dg._size(text, "--max-bytes", 0) == value

    @pytest.mark.parametrize("text", ["0", "-5", "1.5G", "lots", "", "1X"])
    def test_bad_size_option(self, capsys, tmp_path, text):
        np.save(tmp_path / "x.npy", np.array([SMALL], np.float32))
        refused(
            capsys,
            tmp_path / "x.npy",
            "--max-bytes",
            text,
            needles=("--max-bytes", repr(text), "positive number of bytes"),
        )


# --------------------------------------------------------------------------
# Item 4: --ignore-index
# --------------------------------------------------------------------------


class TestIgnoreIndex:
    def test_padded_targets_are_counted_not_refused(self, capsys, tmp_path):
        x = np.array([SMALL, HUGE, SMALL, [0.0, -200.0, 0, 0, 0]], np.float32)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "t.npy", np.array([2, -100, -100, 1]))
        code, out, _ = run(capsys, tmp_path / "x.npy", "--target", tmp_path / "t.npy", "--json", "--dtype", "float32")
        d = json.loads(out)
        assert code == 0 and d["data"]["ignored"] == 2 and d["source"]["ignore_index"] == -100
        # HUGE (slice 1) still overflows: the naive code meets exp(92) before any mask; its target is not
        # looked at, so only slice 3 (target 1 at -200 from the max) underflows
        f32 = d["dtypes"]["float32"]
        assert f32["overflow"] == 1 and f32["underflow"] == 1
        assert [s["index"] for s in f32["worst"]] == [[3], [1]]
        ignored = next(s for s in f32["worst"] if s["index"] == [1])
        assert ignored["target"] == -100 and ignored["stable_loss"] is None and ignored["naive_loss"] is None

    def test_human_report_counts_them(self, capsys, tmp_path):
        np.save(tmp_path / "x.npy", np.array([SMALL, SMALL], np.float32))
        np.save(tmp_path / "t.npy", np.array([-100, 0]))
        code, out, _ = run(capsys, tmp_path / "x.npy", "--target", tmp_path / "t.npy")
        assert code == 0 and "target: yes, 1 slice(s) ignored (target -100)" in out

    def test_other_ignore_index(self, capsys, tmp_path):
        np.save(tmp_path / "x.npy", np.array([SMALL, SMALL], np.float32))
        np.save(tmp_path / "t.npy", np.array([-1, 0]))
        refused(
            capsys,
            tmp_path / "x.npy",
            "--target",
            tmp_path / "t.npy",
            needles=("holds -1 at slice (0,)", "or equal the ignore index -100"),
        )
        code, out, _ = run(capsys, tmp_path / "x.npy", "--target", tmp_path / "t.npy", "--ignore-index", "-1", "--json")
        assert code == 0 and json.loads(out)["data"]["ignored"] == 1

    def test_ignored_target_on_minus_inf_is_not_a_data_problem(self):
        x = np.array([[-np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0]])
        r = dg.diagnose(x, target=[-100, 0], dtypes=("float64",))
        assert (r.data.target_masked, r.data.ignored) == (1, 1)
        assert r.data.worst[0].index == (1,)

    def test_uint64_target_does_not_wrap_to_the_ignore_index(self):
        x = np.zeros((2, 3))
        with pytest.raises(dg.TargetError, match=r"holds 18446744073709551516 at slice \(0,\)"):
            dg.diagnose(x, target=np.array([2**64 - 100, 0], dtype=np.uint64))

    @pytest.mark.parametrize("bad", [True, 1.5, "a", None, 2**63])
    def test_bad_ignore_index(self, bad):
        with pytest.raises(dg.ArgumentError, match=r"ignore_index=.* is not allowed; it must be an integer"):
            dg.diagnose(np.zeros((1, 3)), target=[0], ignore_index=bad)

    def test_ignored_slices_match_dropping_them(self, rng):
        # the ignore index must act as leaving the slice out of every target check
        x = (rng.standard_normal((64, 7)) * 40).astype(np.float32)
        t = rng.integers(0, 7, 64)
        pad = rng.random(64) < 0.3
        padded = dg.diagnose(x, target=np.where(pad, -100, t), dtypes=("float16", "float32"))
        kept = dg.diagnose(x[~pad], target=t[~pad], dtypes=("float16", "float32"))
        for name in ("float16", "float32"):
            assert padded.dtypes[name].underflow == kept.dtypes[name].underflow
            # overflow is a property of the logits alone: counted on every slice
            assert padded.dtypes[name].overflow == dg.diagnose(x, dtypes=(name,)).dtypes[name].overflow
        assert padded.data.ignored == int(pad.sum())


# --------------------------------------------------------------------------
# Item 6: clear messages
# --------------------------------------------------------------------------


class TestMessages:
    @pytest.mark.parametrize(
        "text, phrase",
        [
            ("1;2;3\n4;5;6\n", "separates its fields with ';' (line 1); expected fields separated by ','"),
            ("a;b;c\n1;2;3\n", "separates its fields with ';' (line 2)"),
            ("1,5;2,5\n3,5;4,5\n", "has ';' in line 1"),
            ("1\t2\n", "separates its fields with a tab"),
        ],
    )
    def test_semicolon_csv_names_the_separator(self, capsys, tmp_path, text, phrase):
        (tmp_path / "x.csv").write_text(text)
        line = refused(capsys, tmp_path / "x.csv", needles=(phrase,))
        assert "no data" not in line

    def test_pt_refusal_names_the_global(self, capsys, tmp_path):
        torch = pytest.importorskip("torch")
        torch.save({"logits": Path("/tmp")}, tmp_path / "x.pt")
        line = refused(capsys, tmp_path / "x.pt", needles=("torch.load(weights_only=True)", "the global pathlib."))
        assert "Weights only load failed" not in line and "\x1b" not in line

    def test_table_error_names_line_and_field_far_into_a_file(self, capsys, tmp_path):
        (tmp_path / "x.csv").write_text("1,2\n" * 100_000 + "3,x\n")
        refused(capsys, tmp_path / "x.csv", needles=("line 100001, field 2 is 'x', not a number",))

    def test_table_width_change_far_into_a_file(self, capsys, tmp_path):
        (tmp_path / "x.csv").write_text("# c\n" + "1,2\n" * 70_000 + "3\n")
        refused(capsys, tmp_path / "x.csv", needles=("line 70002 has 1 fields but earlier lines have 2",))

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("x,y\n1,2\n#c\n\n 3 , 4\r\n", [[1, 2], [3, 4]]),
            ("1,2.5\ninf,-Infinity\n", [[1, 2.5], [np.inf, -np.inf]]),
        ],
    )
    def test_tables_still_read(self, text, expected, tmp_path):
        (tmp_path / "x.csv").write_text(text)
        arr = _readers.open_array(str(tmp_path / "x.csv")).whole()
        np.testing.assert_array_equal(arr, np.array(expected))
        assert arr.dtype == (np.int64 if "." not in text and "inf" not in text else np.float64)

    @pytest.mark.parametrize(
        "text, expected",
        [
            ('[["inf", " -INF ", "NaN"], [1, 2, 3]]', [[np.inf, -np.inf, np.nan], [1, 2, 3]]),
            ('{"nan": [1, "-infinity"]}', [1, -np.inf]),
        ],
    )
    def test_json_special_strings(self, tmp_path, text, expected):
        (tmp_path / "x.json").write_text(text)
        np.testing.assert_array_equal(_readers.open_array(str(tmp_path / "x.json")).whole(), np.array(expected))


# --------------------------------------------------------------------------
# Issue 13 item 6: exit status of a FAIL verdict, errors under --json
# --------------------------------------------------------------------------


class TestExitAndJsonErrors:
    def test_fail_verdict_exits_0_and_says_why(self, capsys, tmp_path):
        np.save(tmp_path / "x.npy", np.array([HUGE], np.float32))
        code, out, err = run(capsys, tmp_path / "x.npy")
        assert code == 0 and err == "" and "verdict  FAIL" in out
        assert out.endswith(
            "exit     0: diagnose reports, it does not gate; "
            "--fail-on overflow|underflow|any exits 1 on what it names\n"
        )
        code, out, _ = run(capsys, tmp_path / "x.npy", "--fail-on", "any")
        assert code == 1 and "exit     0" not in out

    def test_json_error_is_one_json_line_on_stderr(self, capsys, tmp_path):
        code, out, err = run(capsys, tmp_path / "nope.npy", "--json")
        assert code == 2 and out == "" and err.count("\n") == 1
        e = json.loads(err)
        assert e == {
            "schema": "stablesoftmax.error/1",
            "command": "diagnose",
            "error": "InputFileError",
            "message": f"LOGITS {tmp_path / 'nope.npy'}: no such file; expected a readable regular file.",
            "exit_code": 2,
        }

    def test_json_usage_error(self, capsys, tmp_path):
        with pytest.raises(SystemExit) as exc:
            cli.main(["diagnose", "x.npy", "--json", "--axis", "one"])
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and out == "" and err.count("\n") == 1
        e = json.loads(err)
        assert e["error"] == "UsageError" and e["command"] == "diagnose" and "--axis" in e["message"]

    def test_plain_errors_stay_text(self, capsys, tmp_path):
        line = refused(capsys, tmp_path / "nope.npy")
        assert not line.startswith("{")

    def test_full_disk(self, tmp_path):
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system")
        np.save(tmp_path / "x.npy", np.array([HUGE] * 200, np.float32))
        # A real process: Python's own flush at exit must not fail a second time (the fuzz suite runs --json).
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "stablesoftmax", "diagnose", str(tmp_path / "x.npy")],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "could not write standard output (No space left on device)" in done.stderr


# --------------------------------------------------------------------------
# The one-line promise: every message, whatever its source, is one line
# --------------------------------------------------------------------------


def _saved_quietly(torch, tensor_fn, path: Path) -> None:
    """torch.save of a tensor whose creation warns (beta or deprecated layouts): the warning is torch's, not ours."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(tensor_fn(), path)


class TestOneLine:
    @pytest.mark.parametrize(
        "name, make",
        [
            ("csr", lambda torch: torch.eye(3).to_sparse_csr()),  # torch warns once on load: 3 lines before
            ("quantized", lambda torch: torch.quantize_per_tensor(torch.ones(2, 3), 0.1, 0, torch.qint8)),  # 5 lines
        ],
    )
    def test_pt_whose_load_warns_is_refused_in_one_line(self, tmp_path, name, make):
        torch = pytest.importorskip("torch")
        _saved_quietly(torch, lambda: make(torch), tmp_path / f"{name}.pt")
        # A real process: torch's warnings go to its stderr as Python prints them, two lines each.
        done = subprocess.run(
            [sys.executable, "-m", "stablesoftmax", "diagnose", str(tmp_path / f"{name}.pt")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and done.stdout == "", done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("stablesoftmax diagnose: error: LOGITS "), done.stderr

    def test_message_spanning_lines_is_folded(self, capsys, tmp_path, monkeypatch):
        def load(*args, **kwargs):
            raise RuntimeError("Weights only load failed.\n  Please file an issue\n\nwith the following:\n  detail")

        torch = pytest.importorskip("torch")
        torch.save(torch.zeros(2, 3), tmp_path / "x.pt")
        monkeypatch.setattr(torch, "load", load)
        line = refused(capsys, tmp_path / "x.pt", needles=("could not be read by torch.load",))
        assert "Weights only load failed. Please file an issue with the following: detail" in line

    def test_a_warning_after_success_is_one_line(self, capsys, tmp_path, monkeypatch):
        import warnings

        scan = dg._scan

        def warning_scan(*args, **kwargs):
            warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
            return scan(*args, **kwargs)

        monkeypatch.setattr(dg, "_scan", warning_scan)
        np.save(tmp_path / "x.npy", np.array([SMALL], np.float32))
        code, out, err = run(capsys, tmp_path / "x.npy")
        assert code == 0 and "verdict  clean" in out
        assert err == "stablesoftmax diagnose: warning: first line second line\n"
        code, out, err = run(capsys, tmp_path / "x.npy", "--json")
        assert code == 0 and json.loads(out)["verdict"]["status"] == "clean"
        assert json.loads(err) == {
            "schema": "stablesoftmax.error/1",
            "command": "diagnose",
            "error": "UserWarning",
            "message": "first line second line",
            "exit_code": None,
        }

    def test_a_warning_before_an_error_is_not_printed(self, capsys, tmp_path, monkeypatch):
        import warnings

        def warning_open(*args, **kwargs):
            warnings.warn("about to fail", UserWarning, stacklevel=1)
            raise dg.InputFileError("LOGITS x.npy: is broken; expected a good file.")

        monkeypatch.setattr(dg._readers, "open_array", warning_open)
        line = refused(capsys, tmp_path / "x.npy", needles=("is broken",))
        assert "about to fail" not in line

    def test_usage_error_is_one_line(self, capsys):
        with pytest.raises(SystemExit) as exc:
            cli.main(["diagnose", "x.npy", "--axis", "one"])
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and out == ""
        assert err == (
            "stablesoftmax diagnose: error: argument --axis: invalid int value: 'one'; "
            "see 'stablesoftmax diagnose --help'\n"
        )

    def test_unknown_command_is_one_line(self, capsys):
        with pytest.raises(SystemExit) as exc:
            cli.main(["diagnosis"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1
        assert "invalid choice: 'diagnosis'" in err and "'diagnose'" in err

    def test_missing_optional_library_is_one_line(self, capsys, monkeypatch):
        # diagnose imports tqdm and ml_dtypes (the lab extra): without them, one line naming the fix
        monkeypatch.delitem(sys.modules, "stablesoftmax.lab.diagnose")
        monkeypatch.setitem(sys.modules, "tqdm", None)  # an import of tqdm now fails as if it were missing
        assert cli.main(["diagnose", "x.npy"]) == 2
        err = capsys.readouterr().err
        assert err == (
            "stablesoftmax diagnose: error: the diagnose command needs tqdm, which is not installed; "
            "install the lab's dependencies: pip install 'stablesoftmax[lab]'\n"
        )


class TestTorchLayouts:
    @pytest.mark.parametrize(
        "make, layout",
        [
            (lambda torch: torch.eye(3).to_sparse(), "sparse_coo"),
            (lambda torch: torch.eye(3).to_sparse_csr(), "sparse_csr"),
            (lambda torch: {"logits": torch.eye(4).to_sparse_bsr((2, 2))}, "sparse_bsr"),
        ],
    )
    def test_sparse_tensor_is_named_sparse(self, capsys, tmp_path, make, layout):
        torch = pytest.importorskip("torch")
        _saved_quietly(torch, lambda: make(torch), tmp_path / "x.pt")
        line = refused(capsys, tmp_path / "x.pt", needles=(f"a sparse layout ({layout})", "to_dense()"))
        assert "NumPy cannot hold" not in line and "dtype" not in line

    def test_nested_tensor(self, capsys, tmp_path):
        torch = pytest.importorskip("torch")
        _saved_quietly(torch, lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), tmp_path / "x.pt")
        refused(capsys, tmp_path / "x.pt", needles=("holds a nested tensor", "expected a dense tensor"))


class TestPandasTables:
    """``DataFrame.to_csv`` writes the index as a first column under a blank header cell.

    pandas need not be installed: these are the bytes it writes (``df.to_csv(path)``,
    ``lineterminator`` os.linesep; ``sep="\\t"`` for .tsv).
    """

    LOGITS = [[1.5, -2.0, 3.0], [4.0, 100.0, -1.0]]

    @pytest.mark.parametrize(
        "name, text",
        [
            ("default.csv", ",0,1,2\n0,1.5,-2.0,3.0\n1,4.0,100.0,-1.0\n"),  # pd.DataFrame(array).to_csv(path)
            ("named.csv", ",a,b,c\n0,1.5,-2.0,3.0\n1,4.0,100.0,-1.0\n"),
            ("labels.csv", ",a,b,c\r\nrow0,1.5,-2.0,3.0\r\n# a comment, kept\r\n\r\nrow1,4.0,100.0,-1.0\r\n"),
            ("default.tsv", "\t0\t1\t2\n0\t1.5\t-2.0\t3.0\n1\t4.0\t100.0\t-1.0\n"),
        ],
    )
    def test_index_column_is_dropped(self, tmp_path, name, text):
        (tmp_path / name).write_bytes(text.encode())
        arr = _readers.open_array(str(tmp_path / name)).whole()
        np.testing.assert_array_equal(arr, np.array(self.LOGITS))

    @pytest.mark.parametrize(
        "text",
        [
            "1.5,-2.0,3.0\n4.0,100.0,-1.0\n",  # np.savetxt
            "a,b,c\n1.5,-2.0,3.0\n4.0,100.0,-1.0\n",  # pandas with index=False
        ],
    )
    def test_ordinary_tables_keep_every_column(self, tmp_path, text):
        (tmp_path / "x.csv").write_text(text)
        np.testing.assert_array_equal(_readers.open_array(str(tmp_path / "x.csv")).whole(), np.array(self.LOGITS))

    def test_target_series_index_is_dropped(self, capsys, tmp_path):
        (tmp_path / "x.csv").write_text(",0,1,2\n0,1.5,-2.0,3.0\n1,4.0,100.0,-1.0\n")
        (tmp_path / "t.csv").write_text(",label\n0,2\n1,1\n")  # pd.Series(labels, name="label").to_csv(path)
        code, out, _ = run(capsys, tmp_path / "x.csv", "--target", tmp_path / "t.csv", "--json")
        source = json.loads(out)["source"]
        assert code == 0 and source["shape"] == [2, 3] and source["classes"] == 3 and source["target"]

    def test_a_first_row_missing_its_first_number_is_still_refused(self, capsys, tmp_path):
        (tmp_path / "x.csv").write_text(",-2.0,3.0\n4.0,100.0,-1.0\n")
        refused(capsys, tmp_path / "x.csv", needles=("line 1, field 1 is '', not a number",))

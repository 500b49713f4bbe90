"""read_regular_file / open_regular_file: regular files only, within a byte budget (issue 14, item 3)."""

from __future__ import annotations

import os
import threading

import pytest

from stablesoftmax import InputFileError
from stablesoftmax.lab._readers import open_regular_file, read_regular_file


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"x = 1\n")
    return path


class TestReadRegularFile:
    def test_reads_whole_file_within_budget(self, small):
        assert read_regular_file(small, what="--predictions", max_bytes=6) == b"x = 1\n"

    def test_refuses_file_over_budget_naming_argument_file_and_limit(self, small):
        with pytest.raises(
            InputFileError,
            match=r"^--predictions .*p\.toml: is 6 bytes, over the limit of 5 bytes.*"
            r"raise the limit with --max-file-bytes",
        ):
            read_regular_file(small, what="--predictions", max_bytes=5, raise_with="--max-file-bytes")

    def test_refuses_fifo_without_blocking(self, tmp_path):
        fifo = tmp_path / "f.toml"
        os.mkfifo(fifo)
        # If the check ever opened the FIFO blocking, this thread would hang; the join timeout would then fail.
        result = {}

        def attempt():
            try:
                read_regular_file(fifo, what="--predictions", max_bytes=100)
            except InputFileError as exc:
                result["msg"] = str(exc)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(5)
        assert "msg" in result and "is a FIFO (named pipe), refused" in result["msg"]

    @pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
    def test_refuses_device_and_symlink_to_it(self, tmp_path, target):
        if not os.path.exists(target):
            pytest.skip(f"{target} is not on this system")
        link = tmp_path / "z.json"
        link.symlink_to(target)
        for path in (target, link):
            with pytest.raises(InputFileError, match="is a character device, refused; expected a regular file"):
                read_regular_file(path, what="LOGITS", max_bytes=100)

    def test_refuses_directory(self, tmp_path):
        with pytest.raises(InputFileError, match=r"^--out .*: is a directory, refused"):
            read_regular_file(tmp_path, what="--out", max_bytes=100)

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputFileError, match=r"^LOGITS .*nope\.npy: no such file"):
            read_regular_file(tmp_path / "nope.npy", what="LOGITS", max_bytes=100)

    def test_open_regular_file_gives_a_seekable_binary_file(self, small):
        with open_regular_file(small, what="LOGITS", max_bytes=100) as fp:
            fp.seek(2)
            assert fp.read() == b"= 1\n"
            assert os.get_blocking(fp.fileno())

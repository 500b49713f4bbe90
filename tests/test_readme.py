"""The README tells the truth: its tour runs as shown and its contract tables are current."""

import doctest
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from stablesoftmax._contract import SECTIONS, render_sections

README = Path(__file__).resolve().parents[1] / "README.md"


def test_contract_tables_are_current():
    text = README.read_text()
    assert all(f"<!-- contract:{name} -->" in text for name in SECTIONS)
    assert render_sections(text) == text, "run: python -c 'import stablesoftmax._contract as c; c.refresh()'"


def test_tour_runs_as_shown():
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    globs: dict = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the naive lines warn on purpose; the README says so
        for i, block in enumerate(blocks):
            test = parser.get_doctest(block, globs, f"README block {i}", str(README), 0)
            runner.run(test, clear_globs=False)
            globs = test.globs  # DocTest copies its globals; later blocks continue from this one
    assert runner.summarize(verbose=False).failed == 0
    assert runner.tries >= 15


def test_two_setup_commands_match_ci():
    """Exactly two set-up commands; CI installs and runs what the second one does."""
    commands = re.findall(r"```sh\n(.*?)\n```", README.read_text(), flags=re.S)
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    for piece in ("'torch==2.13.0'", "-e '.[test,lab,fast]'", "python -m pytest -q"):
        assert piece in commands[1] and piece in ci, piece
    assert "stablesoftmax battery" in commands[0]

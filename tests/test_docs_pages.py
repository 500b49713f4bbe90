"""The site's pages tell the truth where they hold text typed by hand.

Most of each page is drawn from the package when the site is built (the contract
tables, the command outputs, the accuracy CSV, the API listing); what is typed
is checked here, so that a page fails a test when it goes stale.
"""

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax._contract import SECTIONS
from tests.test_battery import LAB_SAMPLE, predictions_text  # lab 01's own sample predictions

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def page(name: str) -> str:
    return (DOCS / f"{name}.rst").read_text()


def block_after(text: str, marker: str) -> list[str]:
    """The lines of the indented block that follows ``marker``'s line (a literal or code block)."""
    lines = text[text.index(marker) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("   "))
    block = []
    for line in lines[start:]:
        if line and not line.startswith("   "):
            break
        block.append(line[3:])
    return [line for line in block if line]


def test_contract_page_shows_every_section():
    """Each group of the contract has its table; the tables are rendered from CONTRACT at build time."""
    directives = re.findall(r"^\.\. contract-table:: (.+)$", page("contract"), flags=re.M)
    shown = [tuple(d.split()) for d in directives]
    for cols in SECTIONS.values():
        assert cols in shown, cols


def test_lab_steps_on_the_site_are_the_readmes():
    """The README's lab quick start and the lab page run the same battery commands, in order."""

    def steps(text: str) -> list[str]:
        return re.findall(r"^ *\$ (stablesoftmax battery[^#\n]*?)\s*(?:#.*)?$", text, flags=re.M)

    readme = (REPO / "README.md").read_text()
    assert steps(readme) == steps(page("lab"))
    assert len(steps(readme)) == 2


def test_lab_steps_print_what_the_page_shows(tmp_path):
    """The lab page's step-by-step session, run with lab 01's sample predictions as the learner's (as the page says)."""
    session = block_after(page("lab"), ".. code-block:: console")
    commands = [i for i, line in enumerate(session) if line.startswith("$ ")]

    def shown(i: int) -> list[str]:  # what the page prints under the command at session[i]
        return session[i + 1 : next(j for j in commands if j > i)]

    def run(line: str) -> list[str]:
        args = shlex.split(line[2:].split("#")[0])[1:]
        proc = subprocess.run(
            [sys.executable, "-m", "stablesoftmax", *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    template, filled = (i for i in commands if session[i].startswith("$ stablesoftmax battery"))
    assert run(session[template]) == shown(template)
    (tmp_path / "out" / "02-softmax-stability" / "predictions.toml").write_text(predictions_text(LAB_SAMPLE))
    printed, expected = run(session[filled]), shown(filled)
    assert expected[0] == "..."  # the page shows the end of the output
    assert printed[-len(expected) + 1 :] == expected[1:]


def test_diagnose_json_error_is_what_the_command_prints(tmp_path):
    """The JSON error example of the diagnose page, run."""
    lines = [line.strip() for line in page("diagnose").splitlines()]
    at = lines.index("$ stablesoftmax diagnose nope.npy --json")
    command, expected = lines[at : at + 2]
    proc = subprocess.run(
        [sys.executable, "-m", "stablesoftmax", *shlex.split(command)[2:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == expected


def test_api_page_error_example_is_the_message():
    """The TargetError line of the API page is what the library raises for that input."""
    shown = block_after(page("api"), ".. code-block:: text")[0]
    name, _, message = shown.partition(": ")
    with pytest.raises(ss.TargetError) as info:
        ss.cross_entropy(np.zeros((2, 3)), np.array([0, 7]))
    assert name == "stablesoftmax.TargetError"
    assert str(info.value) == message


def test_accuracy_sentences_hold_on_the_committed_table():
    """'16-bit and float32 results are correctly rounded ... In float64 ... within their goals.'"""
    text = page("accuracy")
    assert "16-bit and float32 results are correctly rounded on every case (at most 0.5 ulp)" in text
    goals = re.search(r"within their goals \(([\d.]+), ([\d.]+) and ([\d.]+) ulp\)", text)
    assert goals, "the float64 sentence changed; update this test with it"
    with (REPO / "benchmarks" / "results" / "accuracy.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    family = dict(zip(("logsumexp", "log_softmax", "softmax"), map(float, goals.groups()), strict=True))
    for row in rows:
        worst = float(row["stablesoftmax: max / median ulp"].split("/")[0])
        if row["dtype"] != "float64":
            assert worst <= 0.5, row
        elif row["function"] in family:
            assert float(row["goal"]) == family[row["function"]], row
            assert worst <= family[row["function"]], row


def test_every_page_is_reachable():
    """Each page but the index sits in a table of contents (Sphinx warns otherwise, but only at build)."""
    tocs = "".join(page(p.stem) for p in DOCS.glob("*.rst"))
    listed = set(re.findall(r"^   (\w+)$", tocs, flags=re.M))
    assert {p.stem for p in DOCS.glob("*.rst")} - {"index"} <= listed

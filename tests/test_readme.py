"""The README tells the truth: a short front page whose tour runs as shown and whose links lead somewhere.

What left the README for the site (the lab, accuracy, performance, the contract,
diagnose, distributed, the backends, the architecture) is checked where it now
lives, by ``tests/test_docs_pages.py`` and ``tests/test_docs_performance.py``.
"""

import doctest
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the lab extra brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# The two set-up commands, character for character: each must work on a fresh clone.
BATTERY = "python3 -m venv .venv && . .venv/bin/activate && pip install '.[lab]' && stablesoftmax battery"
TESTS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install 'torch==2.13.0' && "
    "pip install -e '.[test,lab,fast]' && python -m pytest -q"
)

# The site's pages the front page must point into, as relative paths to their sources.
PAGES = ("lab", "accuracy", "performance", "contract", "diagnose", "distributed", "backends", "architecture")


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 250


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
    """Exactly two set-up commands, unchanged; CI installs and runs what the second one does."""
    commands = re.findall(r"```sh\n(.*?)\n```", README.read_text(), flags=re.S)
    assert commands == [BATTERY, TESTS]
    ci = (REPO / ".ci" / "run").read_text()
    for piece in ("'torch==2.13.0'", "-e '.[test,lab,fast]'", "python -m pytest -q"):
        assert piece in commands[1] and piece in ci, piece


def test_links_lead_to_files_and_cover_the_site():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    missing = [t for t in targets if "://" not in t and not (REPO / t).exists()]
    assert not missing, missing
    assert {f"docs/{page}.rst" for page in PAGES} <= set(targets)
    assert "sphinx-build -b html docs build/docs" in text  # no docs host: say how to build the site


def test_every_page_linked_is_in_a_table_of_contents():
    """A page linked from the front page is reachable on the built site too."""
    pages = "".join(p.read_text() for p in (REPO / "docs").glob("*.rst"))
    toc = set(re.findall(r"^   (\w+)$", pages, flags=re.M))
    linked = set(re.findall(r"\]\(docs/(\w+)\.rst\)", README.read_text()))
    assert linked <= toc, linked - toc


def test_each_runtime_dependency_says_why():
    """One bullet per runtime dependency of pyproject.toml, named in bold, with a reason after it."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d).group() for d in deps]
    text = README.read_text()
    for name in names:
        line = re.search(rf"^- \*\*{re.escape(name)}\*\*[^:]*: (.+)$", text, flags=re.M | re.I)
        assert line and len(line.group(1).split()) >= 5, name

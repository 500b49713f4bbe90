"""Sphinx directives that build pages from the package itself, so that no page retypes it.

* ``.. contract-table:: logsumexp softmax log_softmax`` renders the rows of
  ``stablesoftmax.CONTRACT`` that speak of those functions; with ``:examples:``
  the table gives instead each rule's example, its exact expected results and why.
  After reading every page, any function the contract speaks of that no
  table shows is a warning (an error under ``-W``).
* ``.. accuracy-goals::`` renders the ulp goals from ``tests/helpers.py``.
* ``.. command-output:: diagnose FILE --top 3`` runs ``python -m stablesoftmax``
  with those arguments at build time and shows what it printed.
* ``write_api_pages`` writes ``_generated/api_list.inc`` (a summary table of every
  name in ``stablesoftmax.__all__``, by kind) and a page per name, before Sphinx
  reads the sources.
"""

from __future__ import annotations

import inspect
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import stablesoftmax

LOG = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]

# Public names that are data rather than functions, classes or modules: what their entry says.
# A new public data name with no line here is a build warning, so that it cannot go undocumented.
DATA = {
    "CONTRACT": "The edge-case contract as data: a list of rules, each with its outcome per function, "
    "an example and the exact expected results. Rendered on :doc:`/contract`.",
}


# --------------------------------------------------------------------------
# The contract tables
# --------------------------------------------------------------------------


def _inline(text: str) -> list[nodes.Node]:
    """Contract text marks code with single backticks (Markdown style); make those literals."""
    parts = text.split("`")
    return [nodes.literal(p, p) if i % 2 else nodes.Text(p) for i, p in enumerate(parts) if p]


def _table(head: list[str], rows: list[list[list[nodes.Node]]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["contract-table"])
    group = nodes.tgroup(cols=len(head))
    table += group
    group += [nodes.colspec(colwidth=w) for w in widths]
    thead, tbody = nodes.thead(), nodes.tbody()
    group += [thead, tbody]
    thead += _row([_inline(h) for h in head])
    for cells in rows:
        tbody += _row(cells)
    return table


def _row(cells: list[list[nodes.Node]]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", *content)
        row += entry
    return row


def _value(v: Any) -> str:
    """An example argument or expected value as Python would print it, arrays as lists."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    return repr(v)


class ContractTable(SphinxDirective):
    """The rows of ``stablesoftmax.CONTRACT`` for the functions named in the argument."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"examples": directives.flag}

    def run(self) -> list[nodes.Node]:
        names = self.arguments[0].split()
        rules = [r for r in stablesoftmax.CONTRACT if any(n in r.outcome for n in names)]
        if not rules:
            raise self.error(f"contract-table: no rule of stablesoftmax.CONTRACT speaks of {names}")
        covered = getattr(self.env, "ss_contract_covered", {})
        covered.setdefault(self.env.docname, set()).update(names)
        self.env.ss_contract_covered = covered  # type: ignore[attr-defined]
        if "examples" in self.options:
            return [self._examples(rules)]
        head = ["input"] + [f"`{n}`" for n in names]
        rows = [[_inline(r.case)] + [_inline(r.outcome.get(n, "")) for n in names] for r in rules]
        return [_table(head, rows, [3] + [4] * len(names))]

    def _examples(self, rules: list[Any]) -> nodes.table:
        rows = []
        for r in rules:
            args = ", ".join(f"{k}={_value(v)}" for k, v in r.example.items())
            expect = "; ".join(f"{k}: {_value(v)}" for k, v in r.expect.items())
            why = _inline(getattr(r, "why", "") or "")
            rows.append([_inline(r.case), [nodes.literal(args, args)], [nodes.literal(expect, expect)], why])
        head = ["input", "example", "exact result (tests/test_contract.py checks each)", "why"]
        return _table(head, rows, [3, 4, 5, 4])


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    getattr(env, "ss_contract_covered", {}).pop(docname, None)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    env.ss_contract_covered = {**getattr(env, "ss_contract_covered", {}), **getattr(other, "ss_contract_covered", {})}  # type: ignore[attr-defined]


def _check_contract_covered(app: Sphinx, env: BuildEnvironment) -> None:
    shown = set().union(*getattr(env, "ss_contract_covered", {}).values())
    spoken = {name for r in stablesoftmax.CONTRACT for name in r.outcome}
    if spoken - shown:
        LOG.warning("the contract speaks of %s, but no contract-table shows it", sorted(spoken - shown))


class AccuracyGoals(SphinxDirective):
    """The ulp goals, read from ``tests/helpers.py`` (``ULP_GOALS``), their one home."""

    def run(self) -> list[nodes.Node]:
        sys.path.insert(0, str(REPO))
        try:
            from tests.helpers import ULP_GOALS
        finally:
            sys.path.remove(str(REPO))
        functions = list(ULP_GOALS["float64"])
        rows = [
            [_inline(f"`{f}`"), _inline(f"{ULP_GOALS['narrow'][f]:g} ulp"), _inline(f"{ULP_GOALS['float64'][f]:g} ulp")]
            for f in functions
        ]
        return [_table(["function", "float16, bfloat16, float32", "float64"], rows, [3, 3, 2])]


# --------------------------------------------------------------------------
# Command output, run at build time
# --------------------------------------------------------------------------


class CommandOutput(SphinxDirective):
    """``$ stablesoftmax ARGS`` and what it printed (stdout), run now.

    It runs from the repository root, or from ``:cwd:`` below it, or, with
    ``:cwd: @tmp``, in a fresh empty directory. An exit status other than
    ``:returncode:`` (default 0) is a build error.
    """

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"cwd": directives.unchanged, "returncode": directives.nonnegative_int}

    def run(self) -> list[nodes.Node]:
        cwd = self.options.get("cwd", ".")
        if cwd == "@tmp":  # a fresh, empty directory: for commands that write files
            with tempfile.TemporaryDirectory() as tmp:
                proc = self._run(Path(tmp))
        else:
            proc = self._run(REPO / cwd)
        want = self.options.get("returncode", 0)
        if proc.returncode != want:
            raise self.error(
                f"command-output: 'stablesoftmax {self.arguments[0]}' exited {proc.returncode}, "
                f"expected {want}:\n{proc.stderr[-2000:]}"
            )
        text = f"$ stablesoftmax {self.arguments[0]}\n{proc.stdout.rstrip()}"
        return [nodes.literal_block(text, text, language="text")]

    def _run(self, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "100"}
        return subprocess.run(
            [sys.executable, "-m", "stablesoftmax", *shlex.split(self.arguments[0])],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


# --------------------------------------------------------------------------
# The API listing, from stablesoftmax.__all__
# --------------------------------------------------------------------------


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def write_api_pages(app: Sphinx) -> None:
    """Write the API listing and a page per public name, before Sphinx reads the sources."""
    out = Path(app.srcdir) / "_generated"
    (out / "api").mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[str]] = {"function": [], "class": [], "exception": [], "module": [], "data": []}
    for name in stablesoftmax.__all__:
        if name != "__version__":
            groups[_kind(getattr(stablesoftmax, name))].append(name)
    lines = [".. currentmodule:: stablesoftmax", ""]
    titles = {"function": "Functions", "class": "Classes", "exception": "Exceptions", "module": "Modules"}
    for kind, title in titles.items():
        lines += [title, "-" * len(title), "", ".. autosummary::", ""] + [f"   {n}" for n in groups[kind]] + [""]
        lines += [".. toctree::", "   :hidden:", ""] + [f"   _generated/api/{n}" for n in groups[kind]] + [""]
        for name in groups[kind]:
            _write(out / "api" / f"{name}.rst", _page(name, kind))
    lines += ["Data", "----", ""] + [_data_entry(n) for n in groups["data"]]
    _write(out / "api_list.inc", "\n".join(lines) + "\n")
    current = {f"{n}.rst" for names in groups.values() for n in names}
    for stale in (out / "api").iterdir():  # a name that left __all__ leaves no orphan page
        if stale.name not in current:
            stale.unlink()


def _page(name: str, kind: str) -> str:
    title = f"stablesoftmax.{name}"
    body = {
        "function": f".. autofunction:: {title}\n",
        "class": f".. autoclass:: {title}\n   :members:\n   :show-inheritance:\n",
        "exception": f".. autoexception:: {title}\n   :show-inheritance:\n",
        "module": f".. automodule:: {title}\n   :members:\n",
    }[kind]
    return f"{title}\n{'=' * len(title)}\n\n{body}"


def _data_entry(name: str) -> str:
    if name not in DATA:
        LOG.warning("stablesoftmax.%s is public data with no entry in docs/_ext/stablesoftmax_docs.py DATA", name)
    obj = getattr(stablesoftmax, name)
    return f".. data:: {name}\n   :type: {type(obj).__name__}\n\n   {DATA.get(name, '')}\n"


def _write(path: Path, text: str) -> None:
    """Write only when the text changed, so that Sphinx does not re-read an unchanged page."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("contract-table", ContractTable)
    app.add_directive("command-output", CommandOutput)
    app.add_directive("accuracy-goals", AccuracyGoals)
    app.connect("builder-inited", write_api_pages)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check_contract_covered)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

"""``stablesoftmax battery``: the lab's experiment directory, written and run.

The directory lab 01 asks for: ``naive.py`` (the textbook formulas), ``stable.py``
(a pure-NumPy model answer), ``compare.py`` (the driver), ``results.json``
(what ``compare.py`` wrote), ``README.md`` (predictions first, then results,
pitfalls and stop conditions), ``softmax_break.png`` and ``manifest.json``;
without ``--predictions`` also an empty ``predictions.toml`` to fill in, unless
one is there already. ``results.json`` is made by running that ``compare.py``,
so ``python compare.py`` in a copy of the directory rewrites the same bytes.
Everything but the manifest's time is byte-identical between two runs with the
same options.

The learner's order: ``--template`` writes the empty predictions file and
nothing else; fill it in; run with ``--predictions``; read README.md. Every
command the battery suggests carries the same ``--out``, and none of them
overwrites a file that git tracks (see :mod:`stablesoftmax.lab._outdir`).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .. import ArgumentError, StableSoftmaxError

__all__ = ["add_parser", "run", "rerun_command", "DEFAULT_OUT", "FILES", "TEMPLATE"]

DEFAULT_OUT = "out/02-softmax-stability"  # under /out/, which git ignores: a run never touches the committed example
DEFAULT_DTYPE, DEFAULT_SEED = "float32", 42
FILES = ("naive.py", "stable.py", "compare.py", "results.json", "README.md", "softmax_break.png", "manifest.json")
TEMPLATE = "predictions.toml"
OUTPUTS = FILES[2:]  # what --force may overwrite: naive.py and stable.py are the learner's and are kept

EXAMPLES = f"""\
examples:
  stablesoftmax battery --out {DEFAULT_OUT} --template
      write an empty {TEMPLATE} there, and nothing else: predict before you run
  stablesoftmax battery --out {DEFAULT_OUT} --predictions {DEFAULT_OUT}/{TEMPLATE}
      run the lab with your predictions; README.md compares them with the results
  stablesoftmax battery --out /tmp/lab --dtype bfloat16
      the same cases in bfloat16, where large negative logits also break naive softmax

Then, in the directory: edit stable.py (break it on purpose) and run `python compare.py`
to rewrite results.json. naive.py and stable.py are yours: no rerun overwrites them.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "battery",
        help="write and run the lab's experiment directory (naive.py, stable.py, compare.py, results, report)",
        description="Write the lab's naive.py, stable.py and compare.py, run compare.py on the labs'\n"
        "adversarial logits, and write results.json, README.md (the report), softmax_break.png\n"
        "and manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"directory to write (default: {DEFAULT_OUT}/)")
    p.add_argument(
        "--template",
        action="store_true",
        help=f"only write an empty DIR/{TEMPLATE} to fill in before the run, and stop",
    )
    p.add_argument("--predictions", metavar="FILE", help="your filled-in predictions (see --template)")
    p.add_argument(
        "--dtype",
        default=DEFAULT_DTYPE,
        metavar="DTYPE",
        help="dtype the inputs are cast to: float32 (default), float64, float16, bfloat16",
    )
    p.add_argument(
        "--seed", default=str(DEFAULT_SEED), metavar="N", help=f"seed of the random batch (default: {DEFAULT_SEED})"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite results an earlier run left in --out (never naive.py, stable.py or predictions)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Check every option, then write, run and summarise; returns the exit code."""
    from . import _outdir, _predictions
    from ._cases import parse_dtype

    out = _outdir.parse_out(args.out)
    dtype = parse_dtype(args.dtype).name
    seed = _parse_seed(args.seed)
    if args.template:
        if args.predictions is not None:
            raise ArgumentError("--template writes an empty predictions file; give it without --predictions")
        return _template_only(out, dtype, seed)
    preds = _predictions.load(Path(args.predictions), dtype) if args.predictions is not None else None
    _require_matplotlib()
    _outdir.prepare(out, list(OUTPUTS), force=args.force, elsewhere=DEFAULT_OUT)
    if preds is not None:
        _refuse_overwriting(preds.path, out)
    from .bench import progress

    say = progress(args.quiet)
    say(f"[1/3] writing naive.py, stable.py, compare.py and running compare.py at {dtype} ...")
    from . import _results

    lab_state = _results.write_lab_files(out, dtype=dtype, seed=seed)
    had_template = (out / TEMPLATE).exists()
    results, table = _results.run_compare(out)
    say("[2/3] writing README.md and drawing softmax_break.png ...")
    files = _write_outputs(out, results, preds, lab_state, seed)
    say("[3/3] writing manifest.json ...")
    _write_manifest(args, out, dtype, seed, preds, files, lab_state)
    order = [*FILES, TEMPLATE]
    written = sorted([*files, "manifest.json"], key=order.index)
    print(summary(table, results, preds, out, lab_state, seed, written, wrote_template=not had_template))
    return 0


def _parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise ArgumentError(f"--seed {text!r} is not allowed; give a non-negative integer")
    return seed


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise StableSoftmaxError(
            "battery draws softmax_break.png with matplotlib, which is not installed; "
            "install it with: pip install 'stablesoftmax[lab]'"
        ) from None


def _refuse_overwriting(predictions: Path, out: Path) -> None:
    for name in OUTPUTS:
        target = out / name
        if target.exists() and target.resolve() == predictions.resolve():
            raise ArgumentError(
                f"--predictions {predictions} is the {name} this run writes; "
                f"keep your predictions in {out / TEMPLATE} or another file"
            )


def _template_only(out: Path, dtype: str, seed: int) -> int:
    """``--template``: the empty predictions file, and nothing else: nothing to read before predicting."""
    from . import _outdir, _predictions

    path = out / TEMPLATE
    if path.exists():
        raise ArgumentError(
            f"--template: {_outdir.shown(path)} already exists and may hold your predictions; "
            "edit it, or delete it to start again from an empty one"
        )
    _outdir.prepare(out, [], force=False, elsewhere=DEFAULT_OUT)
    command = rerun_command(out, dtype, seed, path)
    _outdir.write(path, _predictions.template(dtype, command).encode())
    print(
        f"wrote {_outdir.shown(path)}: an empty prediction for each of the lab's 8 cases.\n"
        f"Fill in every answer before you look at any result, then run:\n  {command}"
    )
    return 0


def rerun_command(out: Path, dtype: str, seed: int, predictions: Path | None) -> str:
    """The battery command for this --out (and dtype, seed, predictions), with --force when it needs one.

    ``--force`` is added only when earlier results are in the way and git
    tracks none of them; over tracked files the command is left to refuse.
    """
    from . import _outdir

    parts = ["stablesoftmax", "battery", "--out", _outdir.shown(out)]
    if dtype != DEFAULT_DTYPE:
        parts += ["--dtype", dtype]
    if seed != DEFAULT_SEED:
        parts += ["--seed", str(seed)]
    if predictions is not None:
        parts += ["--predictions", _outdir.shown(predictions)]
    existing = [n for n in OUTPUTS if (out / n).exists()]
    if existing and not _outdir.tracked(out, existing):
        parts.append("--force")
    return shlex.join(parts)


def _write_outputs(
    out: Path, results: dict[str, Any], preds: Any, lab_state: dict[str, str], seed: int
) -> dict[str, str]:
    """README.md, the PNG and (when absent, without predictions) the template; the SHA-256 of every file."""
    from . import _outdir, _plot, _predictions, _report, _results

    files = {name: _outdir.sha256(out / name) for name in (*_results.LAB_FILES, "results.json")}
    rerun = rerun_command(out, results["dtype"], seed, preds.path if preds is not None else out / TEMPLATE)
    text = _report.render(results, preds, _results.library_view(results), lab_state=lab_state, rerun=rerun)
    files["README.md"] = _outdir.write(out / "README.md", text.encode())
    files["softmax_break.png"] = _outdir.write(out / "softmax_break.png", _plot.softmax_break(results))
    if (out / TEMPLATE).exists():  # the learner's, or the committed example's: left as it is, and listed
        files[TEMPLATE] = _outdir.sha256(out / TEMPLATE)
    elif preds is None:
        template = _predictions.template(results["dtype"], rerun_command(out, results["dtype"], seed, out / TEMPLATE))
        files[TEMPLATE] = _outdir.write(out / TEMPLATE, template.encode())
    return files


def _write_manifest(
    args: argparse.Namespace,
    out: Path,
    dtype: str,
    seed: int,
    preds: Any,
    files: dict[str, str],
    lab_state: dict[str, str],
) -> None:
    from . import _manifest, _outdir

    parts = ["stablesoftmax", "battery", "--out", _outdir.shown(out), "--dtype", dtype, "--seed", str(seed)]
    inputs: dict[str, Any] = {}
    if preds is not None:
        parts += ["--predictions", _outdir.shown(preds.path)]
        where = _relative_to(preds.path, out)
        inputs["predictions"] = {"path": where, "sha256": _outdir.sha256(preds.path)}
    if args.force:
        parts.append("--force")
    manifest = _manifest.build(
        command=shlex.join(parts),
        settings={"seed": seed, "dtype": dtype, "lab_files": lab_state},
        files=files,
        inputs=inputs,
    )
    _outdir.write(out / "manifest.json", _manifest.dumps(manifest))


def _relative_to(path: Path, out: Path) -> str:
    """``path`` relative to the experiment directory when it lies inside it (the manifest travels with it)."""
    from . import _outdir

    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return _outdir.shown(path)


# --------------------------------------------------------------------------
# The terminal summary
# --------------------------------------------------------------------------


def summary(
    table: str,
    results: dict[str, Any],
    preds: Any,
    out: Path,
    lab_state: dict[str, str],
    seed: int,
    written: list[str],
    *,
    wrote_template: bool,
) -> str:
    """compare.py's table, then what became of the predictions and the lab's files, and what was written."""
    from . import _outdir

    lines = [table, "", _predictions_line(results, preds, out, seed, wrote_template)]
    yours = [name for name, state in lab_state.items() if state == "yours"]
    if yours:
        lines.append(f"kept your {' and '.join(yours)} (not the lab's model answer): these results are from your code")
    lines.append(f"wrote {_outdir.shown(out)}/: {' '.join(written)}")
    return "\n".join(lines)


def _predictions_line(results: dict[str, Any], preds: Any, out: Path, seed: int, wrote_template: bool) -> str:
    from . import _outdir
    from ._predictions import divergences

    dtype = results["dtype"]
    if preds is None:
        note = " (an empty one is written there)" if wrote_template else " (the one already there was left as it is)"
        return (
            f"predictions: none given. To do the lab, fill in {TEMPLATE} in {_outdir.shown(out)}/{note} before "
            "you read the results, then run:\n  " + rerun_command(out, dtype, seed, out / TEMPLATE)
        )
    found = divergences(preds, results)
    if not found:
        return f"predictions: every prediction in {preds.source} matched the result"
    unexplained = sorted({d.case for d in found if not preds.cases[d.case].explain})
    misses = ", ".join(f"{d.case} ({d.field})" for d in found)
    line = f"predictions: {len(found)} answer(s) in {preds.source} missed: {misses}. README.md section 3 lists them"
    if not unexplained:
        return line + ", each with your explanation"
    return (
        line + f'; write why each missed as `explain = "..."` under its case in {_outdir.shown(preds.path)} '
        f"(not yet: {', '.join(unexplained)}), then run:\n  " + rerun_command(out, dtype, seed, preds.path)
    )

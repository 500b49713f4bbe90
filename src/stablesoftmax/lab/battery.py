"""``stablesoftmax battery``: run the labs' softmax battery, write the experiment directory.

The directory lab 01 asks for (``experiments/02-softmax-stability/``):
``results.json`` (schema in :mod:`stablesoftmax.lab._results`), ``README.md``
(predictions first, then results, divergences and stop conditions),
``softmax_break.png`` and ``manifest.json``; without ``--predictions`` also a
``predictions-template.toml`` to fill in. Everything but the manifest's time
is byte-identical between two runs with the same options.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from .._errors import ArgumentError, StableSoftmaxError

__all__ = ["add_parser", "run", "DEFAULT_OUT", "FILES", "TEMPLATE"]

DEFAULT_OUT = Path("experiments/02-softmax-stability")
FILES = ("results.json", "README.md", "softmax_break.png", "manifest.json")
TEMPLATE = "predictions-template.toml"

EXAMPLES = """\
examples:
  stablesoftmax battery
      float32 (the lab's precision) into experiments/02-softmax-stability/
  stablesoftmax battery --out /tmp/lab --dtype bfloat16
      the same cases in bfloat16, where large negative logits also break naive softmax
  stablesoftmax battery --predictions my-predictions.toml --force
      put your predictions (lab 01 block D) in the report and overwrite an earlier run

Without --predictions the directory gets predictions-template.toml: fill it in
before reading the results, then run again with --predictions FILE --force.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "battery",
        help="run the labs' softmax battery and write the experiment directory",
        description="Feed the labs' adversarial logits to naive and stable softmax, logsumexp,\n"
        "log_softmax and cross-entropy; write results.json, README.md (the report),\n"
        "softmax_break.png and manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"directory to write (default: {DEFAULT_OUT}/)")
    p.add_argument("--predictions", type=Path, metavar="FILE",
                   help="your predictions, a TOML file (see the template the first run writes)")
    p.add_argument("--dtype", default="float32", metavar="DTYPE",
                   help="dtype the inputs are cast to: float32 (default), float64, float16, bfloat16")
    p.add_argument("--seed", default="42", metavar="N", help="seed of the synthetic batch (default: 42)")
    p.add_argument("--force", action="store_true", help="overwrite files an earlier run left in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Check every option, then compute, write and summarise; returns the exit code."""
    from . import _outdir, _predictions
    from ._cases import parse_dtype

    dtype = parse_dtype(args.dtype)
    seed = _parse_seed(args.seed)
    preds = _predictions.load(args.predictions, dtype.name) if args.predictions is not None else None
    names = list(FILES) + ([TEMPLATE] if preds is None else [])
    _require_matplotlib()
    _outdir.prepare(args.out, names, force=args.force)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"[1/3] running the battery at {dtype.name} ...")
    from .._reductions import reference_path
    from ._results import run_battery

    results = run_battery(dtype, seed)
    say("[2/3] writing results.json, README.md and drawing softmax_break.png ...")
    with reference_path():  # the picture recomputes the rows: same path as results.json
        files = _write_outputs(args.out, results, preds)
    say("[3/3] writing manifest.json ...")
    _write_manifest(args, dtype.name, seed, files)
    print(summary(results, preds, args.out, sorted(files) + ["manifest.json"]))
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


def _write_outputs(out: Path, results: dict[str, Any], preds: Any) -> dict[str, str]:
    """results.json, README.md, the PNG and (without predictions) the template; their SHA-256."""
    from . import _outdir, _plot, _predictions, _report

    files = {
        "results.json": _outdir.write(out / "results.json", _json(results)),
        "README.md": _outdir.write(out / "README.md", _report.render(results, preds, TEMPLATE).encode()),
    }
    if preds is None:
        files[TEMPLATE] = _outdir.write(out / TEMPLATE, _predictions.template(results["dtype"]).encode())
    files["softmax_break.png"] = _outdir.write(out / "softmax_break.png", _plot.softmax_break(results))
    return files


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()


def _write_manifest(args: argparse.Namespace, dtype: str, seed: int, files: dict[str, str]) -> None:
    from . import _manifest, _outdir

    parts = ["stablesoftmax", "battery", "--out", str(args.out), "--dtype", dtype, "--seed", str(seed)]
    inputs: dict[str, Any] = {}
    if args.predictions is not None:
        parts += ["--predictions", str(args.predictions)]
        inputs["predictions"] = {"path": str(args.predictions), "sha256": _outdir.sha256(args.predictions)}
    if args.force:
        parts.append("--force")
    manifest = _manifest.build(command=shlex.join(parts), settings={"seed": seed, "dtype": dtype},
                               files=files, inputs=inputs)
    _outdir.write(args.out / "manifest.json", _manifest.dumps(manifest))


# --------------------------------------------------------------------------
# The terminal summary
# --------------------------------------------------------------------------


def summary(results: dict[str, Any], preds: Any, out: Path, written: list[str]) -> str:
    """A plain-text table of the softmax battery and one line per other block."""
    head = (f"{'case':<18}{'n':>5}  {'naive NaN':<10}{'stable NaN':<11}{'naive sum':>11}  {'stable |sum-1|':<16}"
            f"{'naive CE':>12}{'stable CE':>13}")
    lines = [f"stablesoftmax battery: dtype {results['dtype']}, seed {results['seed']}, y = {results['ce_target']}", "", head]
    for c in results["softmax"]:
        ce = c["cross_entropy"]
        lines.append(
            f"{c['name']:<18}{c['n']:>5}  {_yn(c['naive']['has_nan']):<10}{_yn(c['stable']['has_nan']):<11}"
            f"{_g(c['naive']['sum'], 8):>11}  {_g(c['sum_error_eps'], 3) + ' eps':<16}{_g(ce['naive']):>12}{_g(ce['stable']):>13}"
        )
    lines += ["", _stop_line(results), _break_line(results), _parity_line(results), _predictions_line(results, preds)]
    lines.append(f"wrote {out}/: {' '.join(written)}")
    return "\n".join(lines)


def _yn(flag: bool) -> str:
    return "NaN" if flag else "no"


def _g(v: Any, digits: int = 6) -> str:
    if v is None:
        return "undefined"
    return {"nan": "NaN"}.get(v, v) if isinstance(v, str) else f"{float(v):.{digits}g}"


def _stop_line(r: dict[str, Any]) -> str:
    sc = r["stop_conditions"]
    nn = sc["naive_nan"]
    def state(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    return (
        f"stop conditions: naive NaN on >= 2 cases {state(nn['met'])} ({len(nn['cases'])}: "
        f"{', '.join(nn['cases']) or 'none'}); stable NaN on none {state(sc['stable_nan']['met'])}; "
        f"stable sums within n*eps {state(sc['stable_sums']['met'])}"
    )


def _break_line(r: dict[str, Any]) -> str:
    b = r["fp32_break"]
    parts = [
        f"'{x['name']}' -log(softmax)={_g(x['unfused_ce'])} fused={_g(x['stable_ce'])}"
        + (f" (argmin logit {x['argmin_logit']})" if x["fails"] else "")
        for x in b["rows"]
    ]
    return f"{b['dtype']} break: {'; '.join(parts)}; smallest p in batch {_g(b['smallest_probability_per_batch'], 3)}"


def _parity_line(r: dict[str, Any]) -> str:
    p = r["scipy_parity"]
    if not p["available"]:
        return f"scipy parity: skipped ({p['reason']})"
    failed = [x["input"] for x in p["rows"] if not x["passed"]]
    return f"scipy parity: {len(p['rows']) - len(failed)} of {len(p['rows'])} inputs agree" + (
        f"; FAILED: {', '.join(failed)}" if failed else "")


def _predictions_line(r: dict[str, Any], preds: Any) -> str:
    if preds is None:
        return f"predictions: none given; fill in {TEMPLATE} and rerun with --predictions FILE --force"
    from ._predictions import divergences

    n = len(divergences(preds, r))
    if n == 0:
        return f"predictions: every prediction in {preds.source} matched the result"
    return f"predictions: {n} divergence(s) from {preds.source}, each explained in README.md"

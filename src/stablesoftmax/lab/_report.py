"""README.md of the experiment directory: predictions first, then results.

The order is lab 01 block D's: the predictions table, then the results, then
every place they disagree with the reason, then the stop conditions, the lab 02
table, the float32 break, SciPy parity, and the closing notes (the -max trick,
the all ``-inf`` policy read from the contract, the masked-label warning).
Nothing here depends on where the directory is or when it was written, so the
report is byte-identical between runs.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes

from .. import __version__
from .._contract import CONTRACT
from . import _results
from ._cases import CE_TARGET, DTYPES, SOFTMAX_CASES
from ._predictions import CE_ABS, CE_REL, Predictions, divergences

__all__ = ["render", "MAX_TRICK", "MASKED_LABEL"]

MAX_TRICK = (
    "Subtracting m = max(x) from every logit multiplies the numerator and the denominator of "
    "exp(x_i) / sum_j exp(x_j) by the same factor exp(-m), so the result is unchanged, while every "
    "exponent becomes <= 0 (exp cannot overflow) and the largest term is exactly exp(0) = 1 (the sum "
    "is at least 1, so there is no 0/0 and no log 0)."
)
MASKED_LABEL = (
    "If the true label y points at a masked logit (x[y] = -inf), the cross-entropy "
    "logsumexp(x) - x[y] is +inf. That is correct (the truth has probability 0, so the loss is "
    "infinite), but it is a poison pill for training: the mask must never cover the true label. "
    "The battery's masked-entry case does exactly this (x[1] = -inf, y = 1)."
)


def render(results: dict[str, Any], preds: Predictions | None, template_name: str) -> str:
    """The whole report as Markdown."""
    parts = [
        _intro(results),
        _predictions(preds, template_name),
        _results_tables(results),
        _comparison(results, preds),
        _stop_conditions(results),
        _lab02(results),
        _fp32_break(results),
        _parity(results),
        _closing(),
        _schema(),
    ]
    return "\n\n".join(p.rstrip() for p in parts) + "\n"


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return {"nan": "NaN", "inf": "inf", "-inf": "-inf"}.get(v, v)
    return f"{float(v):.{digits}g}"


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("**yes**" if flag else "no")


def _warn(ws: list[str]) -> str:
    return "; ".join(w.removeprefix("RuntimeWarning: ") for w in ws) or "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _intro(r: dict[str, Any]) -> str:
    return (
        f"# Softmax stability: the naive formulas break, the stable ones do not\n\n"
        f"Written by `stablesoftmax battery` (stablesoftmax {__version__}) at dtype **{r['dtype']}**, "
        f"seed {r['seed']}. Each case of lab 01 feeds one logit vector x, cast to {r['dtype']}, to the "
        f"naive `exp(x) / sum(exp(x))` and to `stablesoftmax.softmax`; the cross-entropy uses the true "
        f"label y = {CE_TARGET}. Files: `results.json` (schema at the end), `softmax_break.png`, "
        f"`manifest.json` (seed, versions, platform, command, SHA-256 of every file)."
    )


def _predictions(preds: Predictions | None, template_name: str) -> str:
    head = ["case", "x", "naive NaN?", "stable NaN?", f"predicted CE (y = {CE_TARGET})"]
    if preds is None:
        note = (
            f"No predictions were given. Fill in `{template_name}` (written next to this report) "
            "BEFORE reading on, then rerun with `--predictions` and `--force`."
        )
        rows = [[c.name, f"`{c.label}`", "?", "?", "?"] for c in SOFTMAX_CASES]
    else:
        note = f"From `{preds.source}`, written before the run."
        head.append("reasoning")
        rows = [_prediction_row(c.name, c.label, preds) for c in SOFTMAX_CASES]
    return f"## 1. Predictions\n\n{note}\n\n" + _table(head, rows)


def _prediction_row(name: str, label: str, preds: Predictions) -> list[str]:
    p = preds.cases.get(name)
    if p is None:
        return [name, f"`{label}`", "-", "-", "-", "-"]
    ce = "-" if p.ce is None else (p.ce if isinstance(p.ce, str) else _fmt(p.ce, 4))
    why = p.why.replace("|", "\\|") or "-"
    return [name, f"`{label}`", _yes(p.naive_nan), _yes(p.stable_nan), ce, why]


def _results_tables(r: dict[str, Any]) -> str:
    head = ["case", "n", "naive NaN?", "stable NaN?", "naive sum", "stable sum", "stable abs(sum-1)/eps",
            "naive max", "stable max", "max rel. diff (finite naive)", "naive warnings"]
    rows = [
        [c["name"], str(c["n"]), _yes(c["naive"]["has_nan"]), _yes(c["stable"]["has_nan"]),
         _fmt(c["naive"]["sum"], 10), _fmt(c["stable"]["sum"], 10), _fmt(c["sum_error_eps"], 3),
         _fmt(c["naive"]["max"]), _fmt(c["stable"]["max"]),
         f"{_fmt(c['max_rel_diff'], 3)} ({c['rel_diff_compared']} of {c['n']})", _warn(c["naive"]["warnings"])]
        for c in r["softmax"]
    ]
    ce_head = ["case", "naive CE", "stable CE", "naive logsumexp", "stable logsumexp", "naive warnings (CE)"]
    ce_rows = [
        [c["name"], _fmt(c["cross_entropy"]["naive"]), _fmt(c["cross_entropy"]["stable"]),
         _fmt(c["logsumexp"]["naive"]), _fmt(c["logsumexp"]["stable"]),
         _warn(c["cross_entropy"]["naive_warnings"]) if c["cross_entropy"]["defined"] else c["cross_entropy"]["note"]]
        for c in r["softmax"]
    ]
    return (
        f"## 2. Results ({r['dtype']})\n\n### Softmax\n\n" + _table(head, rows)
        + f"\n\n### Cross-entropy (y = {CE_TARGET}) and logsumexp\n\n" + _table(ce_head, ce_rows)
        + "\n\n![naive and stable softmax, case by case](softmax_break.png)"
    )


def _comparison(r: dict[str, Any], preds: Predictions | None) -> str:
    title = "## 3. Where the predictions diverged\n\n"
    if preds is None:
        return title + "No predictions were given, so there is nothing to compare yet."
    found = divergences(preds, r)
    rule = f"A CE estimate counts as right within {CE_REL:.0%} or {CE_ABS} nats of the stable result."
    if not found:
        return title + f"Every prediction matched the result. {rule}"
    lines = [f"- **{d.case}**, {d.field} predicted {d.predicted}, got {d.actual}: {d.why}" for d in found]
    reasons = [f"  Your reasoning was: \"{preds.cases[d.case].why}\"" for d in found]
    body = "\n".join(x for pair in zip(lines, reasons) for x in pair if not x.endswith('""'))
    return title + f"{len(found)} divergence(s). {rule}\n\n" + body


def _stop_conditions(r: dict[str, Any]) -> str:
    sc = r["stop_conditions"]
    nn, sn, ss = sc["naive_nan"], sc["stable_nan"], sc["stable_sums"]
    lines = [
        f"- {_box(nn['met'])} naive NaN on at least two cases of results.json (lab 01 and lab 02 inputs): "
        f"{len(nn['cases'])} ({', '.join(nn['cases']) or 'none'})",
        f"- {_box(sn['met'])} stable NaN on no case: {len(sn['cases'])} ({', '.join(sn['cases']) or 'none'})",
        f"- {_box(ss['met'])} every stable softmax sums to 1 within n * eps({r['dtype']}): worst is "
        f"{ss['worst_case']} at {_fmt(ss['worst_error_eps'], 3)} eps",
        "- [x] this report puts the predictions table before the results table",
    ]
    by = [[d, ", ".join(f["naive_nan"]) or "none", ", ".join(f["stable_nan"]) or "none"]
          for d, f in r["nan_by_dtype"].items()]
    why = "" if nn["met"] else "\n\n" + _naive_nan_unmet(r)
    return (
        "## 4. Stop conditions (lab 01)\n\n" + "\n".join(lines) + why
        + f"\n\nHow the sum is measured: {r['sum_rule']}\n\n"
        "Which cases give NaN depends on the dtype's exponent range, so the same eight cases at every dtype:\n\n"
        + _table(["dtype", "naive NaN", "stable NaN"], by)
    )


def _box(met: bool) -> str:
    return "[x]" if met else "[ ] **not met**"


def _naive_nan_unmet(r: dict[str, Any]) -> str:
    """Why fewer than two cases break at this dtype, and where the lab's condition does hold."""
    fi = ml_dtypes.finfo(DTYPES[r["dtype"]])
    lo, hi = math.log(float(fi.smallest_subnormal)), math.log(float(fi.max))
    holds = [d for d, f in r["nan_by_dtype"].items() if len(f["naive_nan"]) >= 2]
    broke = r["stop_conditions"]["naive_nan"]["softmax_cases"]
    text = (
        f"Why the first condition fails at {r['dtype']}: exp(x) is finite and nonzero there for "
        f"{lo:.2f} < x < {hi:.2f}, and {len(broke)} case(s) have their largest logit outside that range "
        f"({', '.join(broke) or 'none'})."
    )
    neg = next(c for c in SOFTMAX_CASES if c.name == "large negative")
    if neg.name not in broke:
        m = max(neg.logits)
        kind = "a subnormal" if math.exp(m) < float(fi.smallest_normal) else "an ordinary number"
        text += (f" The lab expects large negative to give 0/0, but its largest logit {m:g} is above {lo:.2f}: "
                 f"exp({m:g}) = {math.exp(m):.2g} is {kind} in {r['dtype']}, not 0.")
    return text + (f" The condition holds at: {', '.join(holds) or 'no supported dtype'} (table below), "
                   "or where the hardware flushes subnormals to zero.")


def _lab02(r: dict[str, Any]) -> str:
    rows = []
    for row in r["lab02"]:
        x = "`[" + ", ".join(_fmt(v) for v in row["input"]) + "]`"
        for fn in ("logsumexp", "log_softmax", "cross_entropy"):
            f = row[fn]
            rows.append([x, f"`{fn}`" + (f" (y = {CE_TARGET})" if fn == "cross_entropy" else ""),
                         _vec(f["naive"]), _vec(f["stable"]), _warn(f["naive_warnings"])])
    return (
        f"## 5. Lab 02: logsumexp, log_softmax and cross-entropy ({r['dtype']})\n\n"
        "The naive RuntimeWarnings are recorded, not suppressed (underflow included, which NumPy "
        "ignores by default).\n\n" + _table(["x", "function", "naive", "stable", "naive warnings"], rows)
    )


def _vec(v: Any) -> str:
    return "[" + ", ".join(_fmt(e) for e in v) + "]" if isinstance(v, list) else _fmt(v)


def _fp32_break(r: dict[str, Any]) -> str:
    b = r["fp32_break"]
    head = ["row", "logits", "target", "-log(softmax(x))[t]", "naive CE", "fused CE", "seed expects (unsafe / fused)",
            "p[target]", "smallest p", "argmin logit"]
    rows = [
        [x["name"], "`[" + ", ".join(_fmt(v) for v in x["logits"]) + "]`", str(x["target"]), _fmt(x["unfused_ce"]),
         _fmt(x["naive_ce"]), _fmt(x["stable_ce"]),
         f"{_fmt(x['seed_expected']['unfused_ce'])} / {_fmt(x['seed_expected']['stable_ce'])}",
         _fmt(x["target_probability"], 3), _fmt(x["smallest_probability"], 3), str(x["argmin_logit"])]
        for x in b["rows"]
    ]
    failing = [x for x in b["rows"] if x["fails"]]
    smallest = b["smallest_probability_per_batch"]
    diag = (
        f"Smallest softmax probability in the batch: {_fmt(smallest, 3)}"
        + (" (exactly 0: one underflow away from an infinite loss). " if float(smallest) == 0 else ". ")
        + ("Failing rows and the argmin of their logits: "
           + ", ".join(f"{x['name']} (argmin {x['argmin_logit']}, the target is {x['target']})" for x in failing) + "."
           if failing else "No row fails.")
    )
    scipy = "SciPy is not installed: no cross-check." if b["scipy_ce"] is None else (
        "Cross-check, `-scipy.special.log_softmax(x, axis=-1)[t]`: " + ", ".join(_fmt(v) for v in b["scipy_ce"]) + ".")
    return (
        f"## 6. The {b['dtype']} break: -log(softmax(x)) against the fused form\n\n"
        "`-log(softmax(x)[t])` uses the *stable* softmax; it still fails once p[t] underflows to 0.\n\n"
        + _table(head, rows) + f"\n\n{diag} {scipy} Warnings of the unfused route: {_warn(b['warnings']['unfused'])}."
        + _seed_check(b)
    )


def _seed_check(b: dict[str, Any]) -> str:
    """Where the seed's printed expectation and our fused result disagree beyond its 4 decimals."""
    off = [x for x in b["rows"] if _differs(x["seed_expected"]["stable_ce"], x["stable_ce"])]
    if not off:
        return ""
    items = ", ".join(f"{x['name']}: the seed prints {_fmt(x['seed_expected']['stable_ce'])}, "
                      f"the fused form (and SciPy) give {_fmt(x['stable_ce'])}" for x in off)
    return f"\n\nThe seed's expected output disagrees with its own formula on: {items}."


def _differs(expected: Any, got: Any) -> bool:
    e, g = float(expected), float(got)
    return not (e == g or abs(e - g) <= 5e-5 * max(1.0, abs(e)))


def _parity(r: dict[str, Any]) -> str:
    p = r["scipy_parity"]
    title = "## 7. SciPy parity (lab 01 block F, float64)\n\n"
    if not p["available"]:
        return title + p["reason"] + "."
    rows = [[x["input"], _fmt(x["softmax_max_abs_diff"], 3), _fmt(x["logsumexp_rel_diff"], 3),
             _fmt(x["log_softmax_max_rel_diff"], 3), _fmt(x["cross_entropy_rel_diff"], 3),
             "yes" if x["passed"] else "**no**"] for x in p["rows"]]
    head = ["input", "softmax max abs. diff", "logsumexp rel. diff", "log_softmax max rel. diff",
            f"CE (y = {CE_TARGET}) rel. diff", "pass"]
    verdict = "All pass." if p["passed"] else "**Some rows fail.**"
    return (title + f"Against `scipy.special` (axis=-1): softmax within {p['softmax_tol']:g} absolute, "
            f"logsumexp, log_softmax and CE within {p['logsumexp_tol']:g} relative. {verdict}\n\n" + _table(head, rows))


def _closing() -> str:
    rule = next(c for c in CONTRACT if c.case == "slice all `-inf`")
    return (
        "## 8. Why it works, and two policies\n\n"
        f"**The -max trick.** {MAX_TRICK}\n\n"
        f"**A row that is all -inf.** softmax returns {rule.outcome['softmax']}, logsumexp "
        f"{rule.outcome['logsumexp']}, log_softmax {rule.outcome['log_softmax']}. {rule.why} "
        "The lab's hint of last resort (uniform) would invent mass where the input has none.\n\n"
        f"**The masked label.** {MASKED_LABEL}"
    )


def _schema() -> str:
    doc = (_results.__doc__ or "").strip()
    body = "\n".join(line.rstrip() for line in doc.splitlines())
    return "## 9. results.json schema\n\n```text\n" + body + "\n```"

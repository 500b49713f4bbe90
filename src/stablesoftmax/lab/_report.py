"""README.md of the experiment directory: predictions first, then results.

The order is lab 01 block D's: the learner's predictions, then the results of
``compare.py`` (naive.py against stable.py), then every place a prediction
missed, beside the learner's own explanation (the report never writes one for
them), then the stop conditions, lab 02, the float32 break, the library beside
``stable.py``, SciPy parity, the labs' pitfalls (each shown on a battery case)
and the all ``-inf`` choice. Every figure comes from ``results.json`` or from
:func:`stablesoftmax.lab._results.library_view`; nothing depends on where the
directory is or when it was written, so the report is byte-identical between
runs.
"""

from __future__ import annotations

import math
from typing import Any

from .. import CONTRACT, __version__
from ._cases import CE_TARGET, DTYPES, SOFTMAX_CASES
from ._predictions import CE_ABS, CE_REL, Predictions, divergences
from ._results import finfo, ulps_apart

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
LABELS = {c.name: c.label for c in SOFTMAX_CASES}


def render(
    results: dict[str, Any],
    preds: Predictions | None,
    library: dict[str, Any],
    *,
    lab_state: dict[str, str],
    rerun: str,
) -> str:
    """The whole report as Markdown; ``rerun`` is the battery command the hints show."""
    parts = [
        _intro(results, lab_state),
        _predictions(preds, rerun),
        _results_tables(results),
        _comparison(results, preds, rerun),
        _stop_conditions(results),
        _lab02(results),
        _fp32_break(results),
        _library(results, library),
        _parity(results),
        _pitfalls(results),
        _closing(results),
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


def _vec(v: Any) -> str:
    return "[" + ", ".join(_fmt(e) for e in v) + "]" if isinstance(v, list) else _fmt(v)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _case(r: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in r["softmax"] if c["name"] == name)


def _intro(r: dict[str, Any], lab_state: dict[str, str]) -> str:
    yours = [n for n, s in lab_state.items() if s == "yours"]
    whose = (
        f" This run used **your own {' and '.join(yours)}**, which differ from the lab's model answer." if yours else ""
    )
    return (
        f"# Softmax stability: the naive formulas break, the stable ones do not\n\n"
        f"Written by `stablesoftmax battery` (stablesoftmax {__version__}) at dtype **{r['dtype']}**, "
        f"seed {r['seed']}. `compare.py` feeds each case of lab 01, cast to {r['dtype']}, to `naive.py` "
        f"(the textbook `exp(x) / sum(exp(x))`) and to `stable.py` (the max trick, pure NumPy), and writes "
        f"`results.json`; this report and `softmax_break.png` are drawn from it. The cross-entropy uses the "
        f"true label y = {CE_TARGET}. Edit `stable.py` and run `python compare.py` here to see what changes; "
        f"`manifest.json` holds the seed, versions, platform, command and the SHA-256 of every file." + whose
    )


def _predictions(preds: Predictions | None, rerun: str) -> str:
    head = ["case", "x", "naive NaN?", "stable NaN?", f"predicted CE (y = {CE_TARGET})"]
    if preds is None:
        note = (
            "**No predictions were given**, so this report compares nothing yet. To do the lab, fill in every "
            "answer of `predictions.toml` BEFORE reading on, then run:\n\n"
            f"```text\n{rerun}\n```"
        )
        rows = [[c.name, f"`{c.label}`", "?", "?", "?"] for c in SOFTMAX_CASES]
    else:
        note = f"From `{preds.source}`, written before the run."
        head.append("reasoning")
        rows = [_prediction_row(c.name, c.label, preds) for c in SOFTMAX_CASES]
    return f"## 1. Predictions\n\n{note}\n\n" + _table(head, rows)


def _prediction_row(name: str, label: str, preds: Predictions) -> list[str]:
    p = preds.cases[name]
    ce = p.ce if isinstance(p.ce, str) else _fmt(p.ce, 4)
    why = p.why.replace("|", "\\|") or "-"
    return [name, f"`{label}`", _yes(p.naive_nan), _yes(p.stable_nan), ce, why]


def _results_tables(r: dict[str, Any]) -> str:
    head = [
        "case",
        "n",
        "naive NaN?",
        "stable NaN?",
        "naive sum",
        "stable sum",
        "stable abs(sum-1)/eps",
        "naive max",
        "stable max",
        "max rel. diff (finite naive)",
        "naive warnings",
    ]
    rows = [
        [
            c["name"],
            str(c["n"]),
            _yes(c["naive"]["has_nan"]),
            _yes(c["stable"]["has_nan"]),
            _fmt(c["naive"]["sum"], 10),
            _fmt(c["stable"]["sum"], 10),
            _fmt(c["sum_error_eps"], 3),
            _fmt(c["naive"]["max"]),
            _fmt(c["stable"]["max"]),
            f"{_fmt(c['max_rel_diff'], 3)} ({c['rel_diff_compared']} of {c['n']})",
            _warn(c["naive"]["warnings"]),
        ]
        for c in r["softmax"]
    ]
    ce_head = ["case", "naive CE", "stable CE", "naive logsumexp", "stable logsumexp", "naive warnings (CE)"]
    ce_rows = [
        [
            c["name"],
            _fmt(c["cross_entropy"]["naive"]),
            _fmt(c["cross_entropy"]["stable"]),
            _fmt(c["logsumexp"]["naive"]),
            _fmt(c["logsumexp"]["stable"]),
            _warn(c["cross_entropy"]["naive_warnings"])
            if c["cross_entropy"]["defined"]
            else c["cross_entropy"]["note"],
        ]
        for c in r["softmax"]
    ]
    return (
        f"## 2. Results ({r['dtype']}): naive.py against stable.py\n\n### Softmax\n\n"
        + _table(head, rows)
        + f"\n\n### Cross-entropy (y = {CE_TARGET}) and logsumexp\n\n"
        + _table(ce_head, ce_rows)
        + "\n\n![naive and stable softmax, case by case](softmax_break.png)"
    )


def _comparison(r: dict[str, Any], preds: Predictions | None, rerun: str) -> str:
    """Where the predictions missed, with the learner's explanation, or a blank for it: never one of ours."""
    title = "## 3. Where the predictions diverged\n\n"
    if preds is None:
        return title + "No predictions were given, so there is nothing to compare yet."
    found = divergences(preds, r)
    rule = f"A CE estimate counts as right within {CE_REL:.0%} or {CE_ABS} nats of the stable result."
    if not found:
        return title + f"Every prediction matched the result. {rule}"
    lines = []
    for d in found:
        explain = preds.cases[d.case].explain
        said = (
            f'Your explanation: "{explain}"'
            if explain
            else f'*Not explained yet.* Write why it missed as `explain = "..."` under `[cases."{d.case}"]` '
            f"in `{preds.source}`."
        )
        lines.append(f"- **{d.case}**, {d.field} predicted {d.predicted}, got {d.actual}. {said}")
    todo = [d for d in found if not preds.cases[d.case].explain]
    after = f"\n\nThen run again:\n\n```text\n{rerun}\n```" if todo else ""
    return (
        title + f'{len(found)} divergence(s). {rule} Lab 01: "where prediction and reality diverged, write '
        'a sentence explaining why"; section 9 (the pitfalls) may help.\n\n' + "\n".join(lines) + after
    )


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
    by = [
        [d, ", ".join(f["naive_nan"]) or "none", ", ".join(f["stable_nan"]) or "none"]
        for d, f in r["nan_by_dtype"].items()
    ]
    why = "" if nn["met"] else "\n\n" + _naive_nan_unmet(r)
    return (
        "## 4. Stop conditions (lab 01)\n\n"
        + "\n".join(lines)
        + why
        + "\n\nHow the sum is measured: the exact sum (math.fsum) of the returned probabilities' float64 values. "
        "A row passes when |sum - 1| <= n * eps: each of the n probabilities is within one ulp of 1 (eps) of its "
        "exact value once rounded. The bound is generous (a correctly rounded softmax stays near eps/2 whatever "
        "n is), so the observed error is reported in eps as well.\n\n"
        "Which cases give NaN depends on the dtype's exponent range, so the same eight cases at every dtype:\n\n"
        + _table(["dtype", "naive NaN", "stable NaN"], by)
    )


def _box(met: bool) -> str:
    return "[x]" if met else "[ ] **not met**"


def _exp_range(dtype_name: str) -> tuple[float, float, Any]:
    fi = finfo(DTYPES[dtype_name])
    return math.log(float(fi.smallest_subnormal)), math.log(float(fi.max)), fi


def _naive_nan_unmet(r: dict[str, Any]) -> str:
    """Why fewer than two cases break at this dtype, and where the lab's condition does hold."""
    lo, hi, fi = _exp_range(r["dtype"])
    holds = [d for d, f in r["nan_by_dtype"].items() if len(f["naive_nan"]) >= 2]
    broke = r["stop_conditions"]["naive_nan"]["softmax_cases"]
    return (
        f"Why the first condition fails at {r['dtype']}: exp(x) is finite and nonzero there for "
        f"{lo:.2f} < x < {hi:.2f}, and only {len(broke)} case(s) have their largest logit outside that range "
        f"({', '.join(broke) or 'none'}). The condition holds at: {', '.join(holds) or 'no supported dtype'} "
        "(table below), or where the hardware flushes subnormals to zero."
    )


def _lab02(r: dict[str, Any]) -> str:
    rows = []
    for row in r["lab02"]:
        x = "`[" + ", ".join(_fmt(v) for v in row["input"]) + "]`"
        for fn in ("logsumexp", "log_softmax", "cross_entropy"):
            f = row[fn]
            rows.append(
                [
                    x,
                    f"`{fn}`" + (f" (y = {CE_TARGET})" if fn == "cross_entropy" else ""),
                    _vec(f["naive"]),
                    _vec(f["stable"]),
                    _warn(f["naive_warnings"]),
                ]
            )
    return (
        f"## 5. Lab 02: logsumexp, log_softmax and cross-entropy ({r['dtype']})\n\n"
        "The naive RuntimeWarnings are recorded, not suppressed (underflow included, which NumPy "
        "ignores by default).\n\n" + _table(["x", "function", "naive", "stable", "naive warnings"], rows)
    )


def _fp32_break(r: dict[str, Any]) -> str:
    b = r["fp32_break"]
    head = [
        "row",
        "logits",
        "target",
        "-log(softmax(x))[t]",
        "naive CE",
        "fused CE",
        "seed expects (unsafe / fused)",
        "p[target]",
        "smallest p",
        "argmin logit",
    ]
    rows = [
        [
            x["name"],
            "`[" + ", ".join(_fmt(v) for v in x["logits"]) + "]`",
            str(x["target"]),
            _fmt(x["unfused_ce"]),
            _fmt(x["naive_ce"]),
            _fmt(x["stable_ce"]),
            f"{_fmt(x['seed_expected']['unfused_ce'])} / {_fmt(x['seed_expected']['stable_ce'])}",
            _fmt(x["target_probability"], 3),
            _fmt(x["smallest_probability"], 3),
            str(x["argmin_logit"]),
        ]
        for x in b["rows"]
    ]
    failing = [x for x in b["rows"] if x["fails"]]
    smallest = b["smallest_probability_per_batch"]
    diag = (
        f"Smallest softmax probability in the batch: {_fmt(smallest, 3)}"
        + (" (exactly 0: one underflow away from an infinite loss). " if float(smallest) == 0 else ". ")
        + (
            "Failing rows and the argmin of their logits: "
            + ", ".join(f"{x['name']} (argmin {x['argmin_logit']}, the target is {x['target']})" for x in failing)
            + "."
            if failing
            else "No row fails."
        )
    )
    scipy = (
        "SciPy is not installed: no cross-check."
        if b["scipy_ce"] is None
        else (
            "Cross-check, `-scipy.special.log_softmax(x, axis=-1)[t]`: "
            + ", ".join(_fmt(v) for v in b["scipy_ce"])
            + "."
        )
    )
    warns = "; ".join(f"{x['name']}: {_warn(x['warnings']['unfused'])}" for x in b["rows"])
    return (
        f"## 6. The {b['dtype']} break: -log(softmax(x)) against the fused form\n\n"
        "`-log(softmax(x)[t])` uses stable.py's *stable* softmax; it still fails once p[t] underflows to 0.\n\n"
        + _table(head, rows)
        + f"\n\n{diag} {scipy} Warnings of the unfused route: {warns}."
        + _seed_check(b)
    )


def _seed_check(b: dict[str, Any]) -> str:
    """Where the seed's printed expectation and the fused result disagree beyond its 4 decimals."""
    off = [x for x in b["rows"] if _differs(x["seed_expected"]["stable_ce"], x["stable_ce"])]
    if not off:
        return ""
    items = ", ".join(
        f"{x['name']}: the seed prints {_fmt(x['seed_expected']['stable_ce'])}, "
        f"the fused form (and SciPy) give {_fmt(x['stable_ce'])}"
        for x in off
    )
    return f"\n\nThe seed's expected output disagrees with its own formula on: {items}."


def _differs(expected: Any, got: Any) -> bool:
    e, g = float(expected), float(got)
    return not (e == g or abs(e - g) <= 5e-5 * max(1.0, abs(e)))


def _library(r: dict[str, Any], lib: dict[str, Any]) -> str:
    """stable.py beside stablesoftmax, where the two differ: what one more rounding costs."""
    dtype = DTYPES[r["dtype"]]
    rows = []
    for c in r["softmax"]:
        mine = lib["cases"].get(c["name"])
        if mine is None:
            continue
        for fn, theirs in (("cross_entropy", c["cross_entropy"]["stable"]), ("logsumexp", c["logsumexp"]["stable"])):
            if theirs is not None and mine[fn] is not None:
                rows.append([c["name"], f"`{fn}`", _fmt(theirs, 9), _fmt(mine[fn], 9), _apart(theirs, mine[fn], dtype)])
    huge = next((x for x in r["pitfalls"]["log0_times_0"] if x["case"] == "huge"), None)
    lib_huge = lib["break_log_softmax"].get("huge")
    extra = ""
    if huge is not None and lib_huge is not None:
        i = max(range(len(lib_huge)), key=lambda k: float(lib_huge[k]))
        extra = (
            f"\n\nThe same happens to log_softmax near probability 1. On the float32 break row `huge`, entry {i} "
            f"(the largest logit) has log-probability {_fmt(huge['log_softmax'][i], 9)} in stable.py and "
            f"{_fmt(lib_huge[i], 9)} in stablesoftmax: the exact value is minus the sum of the other terms "
            "exp(x_j - m), which stable.py's log(1 + s) rounds away, since 1 + s rounds to 1 in float32. "
            "stablesoftmax keeps s apart from the 1 and takes log1p(s)."
        )
    same = sum(row[-1] == "same" for row in rows)
    return (
        f"## 7. stable.py beside the library ({r['dtype']})\n\n"
        "stable.py sums and takes logs in the input's dtype; stablesoftmax computes each result in a wider type "
        f"and rounds once, so its {r['dtype']} results are correctly rounded. {same} of {len(rows)} values below are "
        f"the same number; the others are apart by the given units in the last place of {r['dtype']}:\n\n"
        + _table(["case", "function", "stable.py", "stablesoftmax", "apart"], rows)
        + extra
    )


def _apart(a: Any, b: Any, dtype: Any) -> str:
    n = ulps_apart(a, b, dtype)
    if n == 0:
        return "same"
    return "special values differ" if math.isinf(n) else f"{n:.3g} ulp"


def _parity(r: dict[str, Any]) -> str:
    p = r["scipy_parity"]
    title = "## 8. SciPy parity (lab 01 block F, float64): stable.py against scipy.special\n\n"
    if not p["available"]:
        return f"{title}{p['reason']}."
    rows = [
        [
            x["input"],
            _fmt(x["softmax_max_abs_diff"], 3),
            _fmt(x["logsumexp_rel_diff"], 3),
            _fmt(x["log_softmax_max_rel_diff"], 3),
            _fmt(x["cross_entropy_rel_diff"], 3),
            "yes" if x["passed"] else "**no**",
        ]
        for x in p["rows"]
    ]
    head = [
        "input",
        "softmax max abs. diff",
        "logsumexp rel. diff",
        "log_softmax max rel. diff",
        f"CE (y = {CE_TARGET}) rel. diff",
        "pass",
    ]
    verdict = "All pass." if p["passed"] else "**Some rows fail.**"
    return (
        title + f"Against `scipy.special` (axis=-1): softmax within {p['softmax_tol']:g} absolute, "
        f"logsumexp, log_softmax and CE within {p['logsumexp_tol']:g} relative. {verdict} These differences "
        "are rounding in the last bit or two of float64, and move with the CPU's exp and log (NumPy's AVX-512 "
        "and AVX2 builds round differently), far below the tolerances.\n\n" + _table(head, rows)
    )


def _pitfalls(r: dict[str, Any]) -> str:
    """One paragraph per pitfall the labs name, each with the battery case that shows it."""
    p = r["pitfalls"]
    items = [
        _pit_all_neg_inf(r),
        _pit_batched_max(r, p["batched_max"]),
        _pit_add_back_m(p["add_back_m"]),
        f"**Lab 01: the masked label.** {MASKED_LABEL}",
        _pit_warnings(r),
        _pit_log0(p["log0_times_0"]),
        _pit_axis(p["axis"]),
        _pit_fused(r),
    ]
    return "## 9. The labs' pitfalls, each on a battery case\n\n" + "\n\n".join(items)


def _pit_all_neg_inf(r: dict[str, Any]) -> str:
    a = r["all_neg_inf"]
    return (
        "**Lab 01: `-inf` handling.** `np.exp(-np.inf)` is 0, so a masked entry is harmless (the masked-entry "
        "case sums to 1), but `-np.inf - (-np.inf)` is NaN: a row that is all `-inf` has max `-inf`, and the -max "
        f"trick would turn it into NaN. stable.py shifts such a row by 0. On `{_vec(a['input'])}` it returns softmax "
        f"{_vec(a['stable_softmax']['value'])}, log_sum_exp {_fmt(a['log_sum_exp']['value'])}, log_softmax "
        f"{_vec(a['log_softmax']['value'])} and cross-entropy {_fmt(a['stable_cross_entropy']['value'])}; stacked "
        f"under `[1, 2, 3]` in one batch, the softmax rows are "
        f"{' and '.join(_vec(row) for row in a['batch_softmax'])}. "
        "Section 11 says why."
    )


def _pit_batched_max(r: dict[str, Any], b: dict[str, Any]) -> str:
    broke = ", ".join(b["one_max_nan"])
    what = (
        f"leaves {broke} with every exp(x - {_fmt(b['batch_max'])}) rounded to 0 in {r['dtype']}, so "
        f"{'that row is' if len(b['one_max_nan']) == 1 else 'those rows are'} 0/0 = NaN"
        if b["one_max_nan"]
        else f"breaks no row at {r['dtype']}, whose range still holds exp(-592): the bug is there, hidden"
    )
    same = (
        "each row equals the same row run alone"
        if b["keepdims_equals_rows_alone"]
        else "**the batched rows differ from the rows run alone**"
    )
    return (
        "**Lab 01: batched max needs keepdims.** `x.max()` over a (B, K) batch is one number for the whole batch. "
        f"Stacking the six five-wide cases ({', '.join(b['cases'])}) into one batch, that one max is "
        f"{_fmt(b['batch_max'])} (from large positive), and shifting every row by it {what}. stable.py's "
        f"`x.max(axis=-1, keepdims=True)` takes one max per row: NaN on "
        f"{', '.join(b['keepdims_nan']) or 'no row'}, and {same}. Without keepdims, `x.max(axis=-1)` has shape (B,), "
        "which does not broadcast against (B, K) (an error here), and silently subtracts the wrong maxima when "
        "B equals K."
    )


def _pit_add_back_m(rows: list[dict[str, Any]]) -> str:
    said = "; ".join(
        f"on {x['case']}, `log(sum(exp(x - m)))` gives {_fmt(x['without_m'])} where log_sum_exp gives "
        f"{_fmt(x['stable'])}, off by m = {_fmt(x['m'])}"
        for x in rows
    )
    return (
        "**Lab 01: forgetting to add back m.** After the shift the sum holds exp(0) = 1, so its log is >= 0 and small; "
        f"the answer is m plus that log, and without m it is wrong by exactly m: {said}."
    )


def _pit_warnings(r: dict[str, Any]) -> str:
    row = next((x for x in r["lab02"] if [float(v) for v in x["input"]] == [1000.0, 1001.0, 1002.0]), r["lab02"][0])
    return (
        "**Lab 02: the RuntimeWarning is diagnostic.** `np.exp(1002)` overflows: on lab 02's "
        f"`{_vec(row['input'])}` the naive logsumexp is {_fmt(row['logsumexp']['naive'])} and NumPy warns "
        f'"{_warn(row["logsumexp"]["naive_warnings"])}". compare.py records every such warning in results.json '
        "and the tables above show them; it never suppresses one. stable.py raised none on any case."
    )


def _pit_log0(rows: list[dict[str, Any]]) -> str:
    huge = next(x for x in rows if x["case"] == "huge")
    masked = next(x for x in rows if x["case"] == "masked entry")
    return (
        "**Lab 02: log(0) · 0 = NaN.** A cross-entropy written as a dot product with a one-hot target, "
        f"`-sum(onehot * log p)`, multiplies every log-probability, the target's or not. On the float32 break row "
        f"`huge` with y = {huge['y']}: p[3] = exp(-142) underflows to 0, log(0) = -inf, and 0 · -inf = NaN, so "
        f"`-sum(onehot * log(softmax(x)))` is {_fmt(huge['onehot_log_of_softmax'])}, although class 3 is not the "
        f"target. Through stable.py's log_softmax, log p[3] = {_fmt(huge['log_softmax'][3])} stays finite and the "
        f"same product is {_fmt(huge['onehot_log_softmax'])}: the stable version never takes the log of an "
        f"underflowed exponent. But a masked entry is -inf even there: on masked entry with y = {masked['y']} the "
        f"one-hot product is {_fmt(masked['onehot_log_softmax'])}, while gathering the target, "
        f"`stable_cross_entropy(x, {masked['y']})`, gives {_fmt(masked['gather'])}. Index the target; do not "
        "multiply by a one-hot vector."
    )


def _pit_axis(a: dict[str, Any]) -> str:
    sane = a["per_row_sanity"]
    return (
        "**Lab 02: axis semantics.** naive.py's `e.sum()` sums every entry it is given, so a batch is normalised "
        f"as one long row: on the batch `[{', '.join(_vec(row) for row in a['batch'])}]`, naive softmax rows sum to "
        f"{', '.join(_fmt(s) for s in a['naive_row_sums'])} instead of 1, while stable.py's "
        f"(`axis=-1, keepdims=True`) sum to {', '.join(_fmt(s, 8) for s in a['stable_row_sums'])}. Lab 02's "
        f"per-row sanity property catches it: for z = `{_vec(sane['z'])}`, log_softmax(z).sum() is "
        f"{_fmt(sane['stable']['one_row_sum'])}, and half the sum over the batch [z, z] is "
        f"{_fmt(sane['stable']['two_rows_sum_halved'])} for stable.py but "
        f"{_fmt(sane['naive']['two_rows_sum_halved'])} for the naive formula."
    )


def _pit_fused(r: dict[str, Any]) -> str:
    huge = next((x for x in r["fp32_break"]["rows"] if x["name"] == "huge"), None)
    shown = (
        f" The float32 break (section 6) is the proof: on `huge` the route through the softmax gives "
        f"{_fmt(huge['unfused_ce'])}, the fused form {_fmt(huge['stable_ce'])}."
        if huge
        else ""
    )
    return (
        "**Lab 02: cross-entropy is fused.** Compute `-log_softmax(z)[y]`, or log_sum_exp(z) - z[y] as "
        "stable.py does, never `-log(softmax(z)[y])`: the two are equal in exact arithmetic, but the second goes "
        "through a probability that can underflow to 0." + shown
    )


def _closing(r: dict[str, Any]) -> str:
    rule = next(c for c in CONTRACT if c.case == "slice all `-inf`")
    return (
        "## 10. Why it works\n\n"
        f"**The -max trick.** {MAX_TRICK}\n\n"
        "## 11. A row that is all -inf: the choice\n\n"
        "stable.py's docstring states its choice: softmax gives all zeros, log_sum_exp and log_softmax `-inf`, the "
        f"cross-entropy `+inf` (section 9 shows them). stablesoftmax's contract says the same: softmax "
        f"{rule.outcome['softmax']}, logsumexp {rule.outcome['logsumexp']}, log_softmax "
        f"{rule.outcome['log_softmax']}. {rule.why} The lab's hint of last resort (uniform) would invent mass where "
        "the input has none.\n\n"
        "## 12. Files\n\n"
        "`naive.py`, `stable.py` (yours to edit: the battery never overwrites them), `compare.py` (run it here: "
        "`python compare.py` rewrites `results.json`; its docstring is the schema of `results.json`), "
        "`results.json`, `softmax_break.png`, `manifest.json`, this `README.md`, and `predictions.toml`."
    )

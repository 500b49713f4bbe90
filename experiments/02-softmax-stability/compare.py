"""Lab 01 block C: feed adversarial logits to naive.py and stable.py, write results.json.

Run it in this directory, ``python compare.py``: it prints the comparison
table and rewrites results.json. Edit stable.py (break it on purpose), rerun,
and see what changes. ``stablesoftmax battery`` runs this same file to make
results.json, then draws softmax_break.png and writes README.md from it, so
the two can never disagree.

results.json is strict JSON: a number is a JSON number, or one of the strings
"nan", "inf", "-inf"; null means "not computed" and comes with a note. Every
value is the exact float64 value of what a function returned in DTYPE.

  dtype, seed, ce_target   the settings below
  softmax         one entry per lab 01 case: naive and stable (has_nan, has_inf,
                  sum: the exact sum of the returned probabilities, min, max,
                  output when n <= 16, warnings), rel_diff |naive - stable| / |stable|
                  where naive is finite, max_rel_diff, sum_error_eps: |sum - 1| / eps,
                  sum_bound_eps: n; logsumexp and cross_entropy (y = 1) of both
  nan_by_dtype    the same cases at every dtype, NaN flags only
  lab02           lab 02 task 1's four inputs: logsumexp, log_softmax, cross_entropy
  fp32_break      the "break CE via log softmax" seed, always float32: -log of the
                  stable softmax at the target, against the fused cross-entropy
  all_neg_inf     stable.py on a row that is all -inf: its stated choice
  pitfalls        the labs' pitfalls, each reproduced on battery cases
  scipy_parity    lab 01 block F, float64, when SciPy is installed
  stop_conditions lab 01's: naive NaN on >= 2 cases, stable NaN on none, sums within n * eps
"""

import json
import math
import sys
import warnings
from pathlib import Path

sys.dont_write_bytecode = True  # importing naive.py and stable.py leaves no __pycache__ here

import numpy as np  # noqa: E402

try:
    import ml_dtypes  # noqa: E402  (registers bfloat16 with NumPy)
except ImportError:
    ml_dtypes = None

from naive import naive_cross_entropy, naive_log_softmax, naive_log_sum_exp, naive_softmax  # noqa: E402
from stable import log_softmax, log_sum_exp, stable_cross_entropy, stable_softmax  # noqa: E402

DTYPE = "float32"  # the lab's precision; `stablesoftmax battery --dtype` writes another
SEED = 42  # of the random batch in the SciPy check (lab 01: np.random.default_rng(42))
Y = 1  # lab 01: "fix y = 1 (present simple)"
SHOWN = 16  # rows up to this width keep their inputs and outputs in results.json
SCHEMA = "stablesoftmax.battery/2"
DTYPES = ["float64", "float32", "float16"] + (["bfloat16"] if ml_dtypes else [])

test_cases = [
    ("small magnitudes", np.array([0.1, 0.2, 0.3, 0.4, 0.5])),
    ("mixed magnitudes", np.array([-3.0, 0.0, 1.0, 2.0, 5.0])),
    ("large positive", np.array([1.0, 92.0, 3.0, 0.0, 2.0])),  # adversarial
    ("large negative", np.array([-100.0, -200.0, -300.0, -400.0, -500.0])),
    ("all identical", np.array([5.0, 5.0, 5.0, 5.0, 5.0])),
    ("masked entry", np.array([1.0, -np.inf, 3.0, 0.0, 2.0])),
    ("single element", np.array([42.0])),
    ("verb vocabulary", np.zeros(600)),  # uniform over the vocabulary
]
lab02_inputs = [  # lab 02 task 1
    np.array([0.0, 0.0, 0.0]),
    np.array([1.0, 2.0, 3.0]),
    np.array([1000.0, 1001.0, 1002.0]),
    np.array([-1000.0, -999.0, -998.0]),
]
# The "break CE via log softmax" seed: float32 rows, their targets, and what the seed says it prints.
break_rows = [
    ("small", np.array([1.2, 4.7, 3.1, 0.5, 2.9]), 2, {"unfused_ce": 2.0871, "stable_ce": 2.0871}),
    ("huge", np.array([10.0, 92.0, 30.0, -50.0, 40.0]), 3, {"unfused_ce": math.inf, "stable_ce": 142.0}),
]


# --------------------------------------------------------------------------
# Recording numbers and warnings
# --------------------------------------------------------------------------


def num(v):
    """A float for strict JSON: finite as it is, otherwise "nan", "inf" or "-inf"."""
    f = float(v)
    if math.isnan(f):
        return "nan"
    return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")


def nums(a):
    return [num(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def value(v):
    v = np.asarray(v)
    return num(v) if v.ndim == 0 else nums(v)


def eps(dtype):
    return float((ml_dtypes.finfo if ml_dtypes else np.finfo)(dtype).eps)


def run(fn, *args, naive=True):
    """fn(*args) and the RuntimeWarnings it raised, recorded in order, never hidden.

    Lab 02: "Don't suppress the warning; it's diagnostic." The naive side also
    reports underflow, half of what the labs break, which NumPy ignores by
    default; on the stable side an exp that rounds to 0 is correct rounding.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="warn", under="warn" if naive else "ignore"):
            out = fn(*args)
    return out, list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))


def pair(naive_fn, stable_fn, *args):
    """The naive and the stable result of one function on the same arguments, warnings kept."""
    naive_out, naive_w = run(naive_fn, *args)
    stable_out, stable_w = run(stable_fn, *args, naive=False)
    return {"naive": value(naive_out), "stable": value(stable_out), "naive_warnings": naive_w,
            "stable_warnings": stable_w}


def quietly(fn, *args):
    """fn(*args) with NumPy's warnings off: for a block whose warnings are recorded elsewhere."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(fn(*args))


# --------------------------------------------------------------------------
# Lab 01: the eight softmax cases
# --------------------------------------------------------------------------


def softmax_case(name, logits, dtype):
    x = logits.astype(dtype)
    naive_p, naive_w = run(naive_softmax, x)
    stable_p, stable_w = run(stable_softmax, x, naive=False)
    stable = summary(stable_p, stable_w)
    pairs = zip(np.asarray(naive_p, np.float64), np.asarray(stable_p, np.float64), strict=True)
    rel = [rel_diff(a, b) for a, b in pairs]
    compared = [float(r) for r in rel if r is not None]
    return {
        "name": name,
        "n": x.size,
        "input": nums(x) if x.size <= SHOWN else None,
        "naive": summary(naive_p, naive_w),
        "stable": stable,
        "rel_diff": rel if x.size <= SHOWN else None,
        "max_rel_diff": num(max(compared, default=math.nan)),
        "rel_diff_compared": len(compared),
        "sum_error_eps": num(abs(float(stable["sum"]) - 1.0) / eps(dtype)),
        "sum_bound_eps": x.size,
        "logsumexp": pair(naive_log_sum_exp, log_sum_exp, x),
        "cross_entropy": case_ce(x),
    }


def summary(p, warns):
    a = np.asarray(p, dtype=np.float64)
    total = math.fsum(a) if np.isfinite(a).all() else float(np.sum(a))  # exact, so rounding shows
    return {"has_nan": bool(np.isnan(a).any()), "has_inf": bool(np.isinf(a).any()), "sum": num(total),
            "min": num(a.min()), "max": num(a.max()), "output": nums(a) if a.size <= SHOWN else None,
            "warnings": warns}


def rel_diff(a, b):
    """|a - b| / |b| where a (naive) is finite, None where it is not; 0 where both are 0."""
    if not math.isfinite(a):
        return None
    if b == 0:
        return 0.0 if a == 0 else "inf"
    return num(abs(a - b) / abs(b))


def case_ce(x):
    if x.size <= Y:
        note = f"y = {Y} is out of range for a row of {x.size} class(es): cross-entropy is undefined"
        return {"defined": False, "note": note, "naive": None, "stable": None, "naive_warnings": [],
                "stable_warnings": []}
    return {"defined": True, **pair(naive_cross_entropy, stable_cross_entropy, x, Y)}


def nan_flags(dtype):
    """Which cases give NaN at ``dtype``: it depends on the dtype's exponent range."""
    flags = {"naive_nan": [], "stable_nan": []}
    for name, logits in test_cases:
        for key, fn in (("naive_nan", naive_softmax), ("stable_nan", stable_softmax)):
            if np.isnan(quietly(fn, logits.astype(dtype)).astype(np.float64)).any():
                flags[key].append(name)
    return flags


# --------------------------------------------------------------------------
# Lab 02 task 1, the float32 break, the all -inf row
# --------------------------------------------------------------------------


def lab02_row(z, dtype):
    x = z.astype(dtype)
    return {
        "input": nums(x),
        "logsumexp": pair(naive_log_sum_exp, log_sum_exp, x),
        "log_softmax": pair(naive_log_softmax, log_softmax, x),
        "cross_entropy": pair(naive_cross_entropy, stable_cross_entropy, x, Y),
    }


def fp32_break():
    rows = [break_row(name, logits.astype(np.float32), t, seed) for name, logits, t, seed in break_rows]
    return {
        "dtype": "float32",
        "rows": rows,
        "smallest_probability_per_batch": min((r["smallest_probability"] for r in rows), key=float),
        "failing_rows": [r["name"] for r in rows if r["fails"]],
        "scipy_ce": scipy_ce(),
    }


def break_row(name, x, t, seed):
    """The seed's ce_unsafe, -log(softmax(x)[t]) with the *stable* softmax, and its diagnostics."""
    p = quietly(stable_softmax, x)  # its own warnings are recorded in "softmax"; a broken stable.py may warn
    unfused, unfused_w = run(lambda: -np.log(p[t]))
    naive_ce, naive_w = run(naive_cross_entropy, x, t)
    stable_ce, _ = run(stable_cross_entropy, x, t, naive=False)
    return {
        "name": name, "logits": nums(x), "target": t,
        "unfused_ce": num(unfused), "naive_ce": num(naive_ce), "stable_ce": num(stable_ce),
        "target_probability": num(p[t]), "smallest_probability": num(p.min()), "argmin_logit": int(np.argmin(x)),
        "fails": not math.isfinite(float(unfused)),
        "seed_expected": {k: num(v) for k, v in seed.items()},
        "warnings": {"unfused": unfused_w, "naive": naive_w},
    }


def all_neg_inf(dtype):
    """stable.py on a row with no class left, and inside a batch beside an ordinary row."""
    x = np.full(3, -np.inf).astype(dtype)
    batch = np.stack([np.array([1.0, 2.0, 3.0]).astype(dtype), x])
    out = {"input": nums(x)}
    for fn in (stable_softmax, log_sum_exp, log_softmax):
        v, w = run(fn, x, naive=False)
        out[fn.__name__] = {"value": value(v), "warnings": w}
    v, w = run(stable_cross_entropy, x, 0, naive=False)
    out["stable_cross_entropy"] = {"value": value(v), "warnings": w}
    out["batch_softmax"] = [nums(row) for row in quietly(stable_softmax, batch)]
    return out


# --------------------------------------------------------------------------
# The pitfalls, each reproduced on battery cases
# --------------------------------------------------------------------------


def softmax_one_max(x):
    """Lab 01's batched-max pitfall: x.max() is one max for the whole batch, not one per row."""
    e = np.exp(x - x.max())
    return e / e.sum(axis=-1, keepdims=True)


def log_sum_exp_without_m(x):
    """Lab 01's other pitfall: the max is subtracted, and never added back."""
    return np.log(np.exp(x - x.max()).sum())


def pitfalls(dtype):
    return {"batched_max": batched_max(dtype), "add_back_m": add_back_m(dtype), "log0_times_0": log0_times_0(),
            "axis": axis_semantics(dtype)}


def batched_max(dtype):
    names = [name for name, z in test_cases if z.size == 5]
    batch = np.stack([z for _, z in test_cases if z.size == 5]).astype(dtype)
    one_max, per_row = quietly(softmax_one_max, batch), quietly(stable_softmax, batch)
    rows_alone = np.stack([quietly(stable_softmax, row) for row in batch])
    return {
        "cases": names,
        "batch_max": num(batch.max()),
        "one_max_nan": [n for n, r in zip(names, one_max, strict=True) if np.isnan(r.astype(np.float64)).any()],
        "keepdims_nan": [n for n, r in zip(names, per_row, strict=True) if np.isnan(r.astype(np.float64)).any()],
        "keepdims_equals_rows_alone": bool(np.array_equal(per_row, rows_alone)),
    }


def add_back_m(dtype):
    rows = [("large positive", test_cases[2][1]), ("lab 02 [1000, 1001, 1002]", lab02_inputs[2])]
    out = []
    for name, z in rows:
        x = z.astype(dtype)
        out.append({"case": name, "m": num(x.max()), "without_m": num(quietly(log_sum_exp_without_m, x)),
                    "stable": num(quietly(log_sum_exp, x))})
    return out


def log_of_softmax(x):
    """The unfused route: the log of a probability, which is -inf once that probability underflows."""
    return np.log(stable_softmax(x))


def onehot_ce(onehot, log_p):
    """Cross-entropy as a dot product with a one-hot target: every log-probability is multiplied."""
    return np.sum(onehot * -log_p)


def log0_times_0():
    """-sum(onehot * log p) meets 0 * log(0) = 0 * -inf = NaN, where a gather -log p[y] does not."""
    rows = [("huge", break_rows[1][1].astype(np.float32), 1), ("masked entry", test_cases[5][1].astype(DTYPE), 2)]
    out = []
    for name, x, y in rows:
        onehot = np.eye(x.size)[y].astype(x.dtype)
        log_p, log_q = quietly(log_of_softmax, x), quietly(log_softmax, x)
        out.append({"case": name, "dtype": x.dtype.name, "y": y, "log_softmax": nums(log_q),
                    "onehot_log_of_softmax": num(quietly(onehot_ce, onehot, log_p)),
                    "onehot_log_softmax": num(quietly(onehot_ce, onehot, log_q)),
                    "gather": num(quietly(stable_cross_entropy, x, y))})
    return out


def axis_semantics(dtype):
    """Lab 02: the naive formulas sum over everything, so a batch is normalised as one row."""
    z = lab02_inputs[1].astype(dtype)
    batch = np.stack([lab02_inputs[0], lab02_inputs[1]]).astype(dtype)
    per_row = {}
    for name, fn in (("stable", log_softmax), ("naive", naive_log_softmax)):
        one, two = quietly(fn, z).astype(np.float64), quietly(fn, np.stack([z, z])).astype(np.float64)
        per_row[name] = {"one_row_sum": num(math.fsum(one)), "two_rows_sum_halved": num(math.fsum(two.ravel()) / 2)}
    return {
        "batch": [nums(r) for r in batch],
        "naive_row_sums": [num(math.fsum(r)) for r in quietly(naive_softmax, batch).astype(np.float64)],
        "stable_row_sums": [num(math.fsum(r)) for r in quietly(stable_softmax, batch).astype(np.float64)],
        "per_row_sanity": {"z": nums(z), **per_row},
    }


# --------------------------------------------------------------------------
# Lab 01 block F: SciPy as the reference oracle, at float64
# --------------------------------------------------------------------------

SOFTMAX_TOL = 1e-15  # lab 01 block F, absolute, on probabilities
LSE_TOL = 1e-12  # lab 02 acceptance, relative


def scipy_ce():
    try:
        from scipy.special import log_softmax as sp_log_softmax
    except ImportError:
        return None
    return [num(-sp_log_softmax(logits.astype(np.float32), axis=-1)[t]) for _, logits, t, _ in break_rows]


def scipy_parity():
    try:
        from scipy import special
    except ImportError:
        return {"available": False, "reason": "SciPy is not installed: lab 01 block F was skipped"}
    inputs = [(name, z) for name, z in test_cases] + [(label(z), z) for z in lab02_inputs]
    inputs.append((f"random batch (16, 5), seed {SEED}", np.random.default_rng(SEED).normal(0.0, 3.0, size=(16, 5))))
    rows = [parity_row(name, x.astype(np.float64), special) for name, x in inputs]
    return {"available": True, "softmax_tol": SOFTMAX_TOL, "logsumexp_tol": LSE_TOL, "rows": rows,
            "passed": all(r["passed"] for r in rows)}


def parity_row(name, x, special):
    sm = max_diff(quietly(stable_softmax, x), special.softmax(x, axis=-1), relative=False)
    lse = max_diff(quietly(log_sum_exp, x), special.logsumexp(x, axis=-1), relative=True)
    lsm = max_diff(quietly(log_softmax, x), special.log_softmax(x, axis=-1), relative=True)
    ce = None
    if x.shape[-1] > Y:
        y = np.full(x.shape[:-1], Y)
        ce = max_diff(quietly(stable_cross_entropy, x, y), -special.log_softmax(x, axis=-1)[..., Y], relative=True)
    checked = [lse, lsm] + ([ce] if ce is not None else [])
    return {"input": name, "softmax_max_abs_diff": num(sm), "logsumexp_rel_diff": num(lse),
            "log_softmax_max_rel_diff": num(lsm), "cross_entropy_rel_diff": None if ce is None else num(ce),
            "passed": sm <= SOFTMAX_TOL and all(d <= LSE_TOL for d in checked)}


def max_diff(got, ref, *, relative):
    """Largest |got - ref| (over |ref| when relative and ref != 0); special values must agree exactly."""
    a, b = np.broadcast_arrays(np.asarray(got, np.float64), np.asarray(ref, np.float64))
    fin = np.isfinite(a) & np.isfinite(b)
    if not (fin | (a == b) | (np.isnan(a) & np.isnan(b))).all():
        return math.inf
    d = np.abs(a[fin] - b[fin])
    if relative:
        scale = np.abs(b[fin])
        d = np.divide(d, scale, out=d.copy(), where=scale != 0)
    return float(d.max(initial=0.0))


# --------------------------------------------------------------------------
# Stop conditions, the table, main
# --------------------------------------------------------------------------


def label(values):
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def lab02_nan(rows, side):
    """Lab 02 inputs where a ``side`` ("naive" or "stable") function returned NaN, with the functions."""
    found = []
    for row in rows:
        fns = [fn for fn in ("logsumexp", "log_softmax", "cross_entropy")
               if "nan" in np.atleast_1d(row[fn][side]).tolist()]
        if fns:
            found.append(f"lab 02 {label(row['input'])} ({', '.join(fns)})")
    return found


def stop_conditions(cases, lab02):
    softmax_nan = [c["name"] for c in cases if c["naive"]["has_nan"]]
    naive_nan = softmax_nan + lab02_nan(lab02, "naive")
    stable_nan = [c["name"] for c in cases if c["stable"]["has_nan"]] + lab02_nan(lab02, "stable")
    worst = max(cases, key=lambda c: float(c["sum_error_eps"]) / c["sum_bound_eps"])
    return {
        "naive_nan": {"required": ">= 2 cases", "cases": naive_nan, "softmax_cases": softmax_nan,
                      "met": len(naive_nan) >= 2},
        "stable_nan": {"required": "no case", "cases": stable_nan, "met": not stable_nan},
        "stable_sums": {"required": "|sum - 1| <= n * eps(dtype) for every case", "worst_case": worst["name"],
                        "worst_error_eps": worst["sum_error_eps"],
                        "met": all(float(c["sum_error_eps"]) <= c["sum_bound_eps"] for c in cases)},
    }


def battery():
    cases = [softmax_case(name, z, DTYPE) for name, z in test_cases]
    lab02 = [lab02_row(z, DTYPE) for z in lab02_inputs]
    return {
        "schema": SCHEMA, "dtype": DTYPE, "seed": SEED, "ce_target": Y,
        "softmax": cases,
        "nan_by_dtype": {d: nan_flags(d) for d in DTYPES},
        "lab02": lab02,
        "fp32_break": fp32_break(),
        "all_neg_inf": all_neg_inf(DTYPE),
        "pitfalls": pitfalls(DTYPE),
        "scipy_parity": scipy_parity(),
        "stop_conditions": stop_conditions(cases, lab02),
    }


def table(r):
    """The comparison table lab 01 asks for, and one line per other block."""
    def g(v, digits=6):
        return "undefined" if v is None else ("NaN" if v == "nan" else v if isinstance(v, str) else f"{v:.{digits}g}")

    def yn(flag):
        return "NaN" if flag else "no"

    lines = [f"compare.py: naive.py against stable.py, dtype {r['dtype']}, y = {r['ce_target']}", "",
             f"{'case':<18}{'n':>5}  {'naive NaN':<10}{'stable NaN':<11}{'naive sum':>11}  {'stable |sum-1|':<16}"
             f"{'naive CE':>12}{'stable CE':>13}"]
    for c in r["softmax"]:
        ce = c["cross_entropy"]
        lines.append(f"{c['name']:<18}{c['n']:>5}  {yn(c['naive']['has_nan']):<10}{yn(c['stable']['has_nan']):<11}"
                     f"{g(c['naive']['sum'], 8):>11}  {g(c['sum_error_eps'], 3) + ' eps':<16}{g(ce['naive']):>12}"
                     f"{g(ce['stable']):>13}")
    sc, b, p = r["stop_conditions"], r["fp32_break"], r["scipy_parity"]
    state = {True: "met", False: "NOT MET"}
    lines += ["", f"stop conditions: naive NaN on >= 2 cases {state[sc['naive_nan']['met']]} "
              f"({len(sc['naive_nan']['cases'])}: {', '.join(sc['naive_nan']['cases']) or 'none'}); "
              f"stable NaN on none {state[sc['stable_nan']['met']]}; "
              f"stable sums within n*eps {state[sc['stable_sums']['met']]}"]
    lines.append("float32 break: " + "; ".join(
        f"'{x['name']}' -log(softmax)={g(x['unfused_ce'])} fused={g(x['stable_ce'])}" for x in b["rows"])
        + f"; smallest p in batch {g(b['smallest_probability_per_batch'], 3)}")
    if p["available"]:
        failed = [x["input"] for x in p["rows"] if not x["passed"]]
        lines.append(f"scipy parity (float64): {len(p['rows']) - len(failed)} of {len(p['rows'])} inputs agree"
                     + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    else:
        lines.append(f"scipy parity: skipped ({p['reason']})")
    return "\n".join(lines)


def main():
    results = battery()
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    Path(__file__).with_name("results.json").write_text(text, encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()

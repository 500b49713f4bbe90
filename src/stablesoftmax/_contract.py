"""The edge-case contract, written once as data.

Each :class:`Rule` says what every function of the family returns for one
kind of special input, and carries a small example with its exact expected
outputs. The docstrings (through :func:`documented`), the test suite
(``tests/test_contract.py``) and the tables of ``docs/contract.rst`` all
read this list, so sibling functions cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

__all__ = ["Rule", "CONTRACT", "documented", "markdown_table"]

inf, nan = math.inf, math.nan
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Rule:
    """One row of the contract.

    ``outcome`` maps a function name (or ``"gradients"``) to the rule in
    words; ``example`` holds the arguments: ``x``, then ``target`` and ``g``
    where the function takes them, then keyword options; ``expect`` is the
    exact result of each function on it. ``kwargs`` overrides per function.
    """

    case: str
    outcome: dict[str, str]
    example: dict[str, Any]
    expect: dict[str, Any]
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    why: str = ""

    def arguments(self, name: str) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments that call function ``name`` on the example.

        Lists become float64 arrays (``target`` keeps integers as int64;
        ``target_dtype`` forces a dtype, for an empty target). Options a
        function does not take (``b`` outside logsumexp) are dropped.
        """
        opts = {**self.example, **self.kwargs.get(name, {})}
        tdtype = opts.pop("target_dtype", None)
        args = [np.asarray(opts.pop("x"), dtype=np.float64)]
        if "target" in opts:
            args.append(np.asarray(opts.pop("target"), dtype=tdtype))
        g = opts.pop("g", None)
        if name in ("logsumexp_grad", "softmax_grad", "log_softmax_grad"):
            args.append(np.asarray(g, dtype=np.float64))
        if name != "logsumexp":
            opts.pop("b", None)
        if not name.startswith("cross_entropy"):
            opts.pop("reduction", None)
        kw = {k: np.asarray(v) if isinstance(v, list) else v for k, v in opts.items()}
        return args, kw


CONTRACT: list[Rule] = [
    Rule(
        "empty reduction axis",
        {"logsumexp": "`-inf` (the log of an empty sum)", "softmax": "empty", "log_softmax": "empty"},
        {"x": []},
        {"logsumexp": -inf, "softmax": [], "log_softmax": []},
    ),
    Rule(
        "`-inf` entries",
        {"logsumexp": "the entry adds nothing", "softmax": "probability exactly 0", "log_softmax": "`-inf`"},
        {"x": [0.0, -inf]},
        {"logsumexp": 0.0, "softmax": [1.0, 0.0], "log_softmax": [0.0, -inf]},
    ),
    Rule(
        "slice all `-inf`",
        {"logsumexp": "`-inf`", "softmax": "all zeros", "log_softmax": "all `-inf`"},
        {"x": [-inf, -inf]},
        {"logsumexp": -inf, "softmax": [0.0, 0.0], "log_softmax": [-inf, -inf]},
        why=(
            "No entry has any mass; zeros (not NaN, not uniform) keep masked rows out of sums"
            " (pytorch#55056, jax#6811)."
        ),
    ),
    Rule(
        "slice all masked by `where`",
        {"logsumexp": "`-inf`", "softmax": "all zeros", "log_softmax": "all `-inf`"},
        {"x": [1.0, 2.0], "where": [False, False]},
        {"logsumexp": -inf, "softmax": [0.0, 0.0], "log_softmax": [-inf, -inf]},
        why="A masked entry is exactly a `-inf` entry.",
    ),
    Rule(
        "`where=False` entry holding NaN or a huge value",
        {"logsumexp": "ignored", "softmax": "0 there; the rest unmoved", "log_softmax": "`-inf` there"},
        {"x": [nan, 1e308, 0.0], "where": [False, False, True]},
        {"logsumexp": 0.0, "softmax": [0.0, 0.0, 1.0], "log_softmax": [-inf, -inf, 0.0]},
        why="A masked value must never move the result.",
    ),
    Rule(
        "`+inf` entries",
        {
            "logsumexp": "`+inf`",
            "softmax": "uniform over the `+inf` entries, 0 elsewhere (the limit)",
            "log_softmax": "`-log(k)` at the k `+inf` entries, `-inf` elsewhere",
        },
        {"x": [inf, 0.0, inf]},
        {"logsumexp": inf, "softmax": [0.5, 0.0, 0.5], "log_softmax": [-LOG2, -inf, -LOG2]},
    ),
    Rule(
        "`+inf` and `-inf` together",
        {"logsumexp": "`+inf`", "softmax": "1 at the `+inf` entry", "log_softmax": "0 there, `-inf` elsewhere"},
        {"x": [-inf, inf]},
        {"logsumexp": inf, "softmax": [0.0, 1.0], "log_softmax": [-inf, 0.0]},
    ),
    Rule(
        "NaN anywhere in the slice (unmasked)",
        {"logsumexp": "NaN", "softmax": "all NaN", "log_softmax": "all NaN"},
        {"x": [0.0, nan, 1.0]},
        {"logsumexp": nan, "softmax": [nan, nan, nan], "log_softmax": [nan, nan, nan]},
        why="NaN in means NaN out for that slice only; other slices are untouched.",
    ),
    Rule(
        "weight `b = 0`",
        {"logsumexp": "drops its term, even at `+inf` or NaN"},
        {"x": [inf, 0.0], "b": [0.0, 1.0]},
        {"logsumexp": 0.0},
        why="As SciPy: a zero weight means the term is absent.",
    ),
    Rule(
        "negative weighted sum",
        {"logsumexp": "NaN; with `return_sign=True`, `(log|sum|, -1)`"},
        {"x": [0.0, 0.0], "b": [1.0, -2.0]},
        {"logsumexp": nan},
        why="As SciPy: the log of a negative number has no real value.",
    ),
    Rule(
        "weighted sum exactly 0",
        {"logsumexp": "`-inf`, sign 0"},
        {"x": [0.0, 0.0], "b": [1.0, -1.0]},
        {"logsumexp": -inf},
        why="SciPy gives sign -1 for an empty axis; we give 0 for every zero sum.",
    ),
    # ---- cross-entropy -------------------------------------------------
    Rule(
        "target's logit is `-inf`",
        {"cross_entropy": "`+inf` for that element; the others stay finite"},
        {"x": [[0.0, -inf], [0.0, 0.0]], "target": [1, 0], "reduction": "none"},
        {"cross_entropy": [inf, LOG2]},
        why="Probability 0 of the truth is an infinite loss: a poison pill, so never mask the true label.",
    ),
    Rule(
        "probability target 0 on a `-inf` logit",
        {"cross_entropy": "contributes 0 (`0 log 0 = 0`), not NaN"},
        {"x": [[0.0, -inf]], "target": [[1.0, 0.0]], "reduction": "none"},
        {"cross_entropy": [0.0]},
    ),
    Rule(
        'every element ignored, `reduction="mean"`',
        {"cross_entropy": "0.0 with zero gradient, not NaN (pytorch#70348)"},
        {"x": [[1.0, 2.0], [3.0, 4.0]], "target": [-100, -100]},
        {"cross_entropy": 0.0, "cross_entropy_grad": [[0.0, 0.0], [0.0, 0.0]]},
    ),
    Rule(
        "a slice all masked (or all `-inf`) under cross-entropy",
        {"cross_entropy": "left out like an ignored element; a mean of nothing is 0.0"},
        {"x": [[1.0, 2.0]], "target": [0], "where": [[False, False]]},
        {"cross_entropy": 0.0, "cross_entropy_grad": [[0.0, 0.0]]},
        why="A slice with no distribution has no loss; counting it would turn the mean into NaN.",
    ),
    Rule(
        "empty batch",
        {"cross_entropy": '`"mean"` and `"sum"` give 0.0'},
        {"x": np.zeros((0, 3)), "target": [], "target_dtype": "int64"},
        {"cross_entropy": 0.0},
    ),
    # ---- gradients -----------------------------------------------------
    Rule(
        "gradient at `-inf` and masked entries (even holding NaN)",
        {"gradients": "exactly 0; their cotangents reach nothing"},
        {"x": [0.0, 0.0, -inf, nan], "where": [True, True, True, False], "g": [1.0, 3.0, 5.0, 7.0]},
        {
            "softmax_grad": [-0.5, 0.5, 0.0, 0.0],
            "log_softmax_grad": [-1.0, 1.0, 0.0, 0.0],
            "logsumexp_grad": [1.0, 1.0, 0.0, 0.0],
        },
        kwargs={"logsumexp_grad": {"g": 2.0}},
        why="A finite change leaves `-inf` at `-inf`, so the output cannot move (jax#19490 needed a double where).",
    ),
    Rule(
        "gradient on an all-masked slice",
        {"gradients": "all 0 (PyTorch gives NaN, pytorch#41508)"},
        {"x": [1.0, 2.0], "where": [False, False], "g": [1.0, 1.0]},
        {"softmax_grad": [0.0, 0.0], "log_softmax_grad": [0.0, 0.0], "logsumexp_grad": [0.0, 0.0]},
        kwargs={"logsumexp_grad": {"g": 1.0}},
    ),
    Rule(
        "gradient on a slice holding `+inf`",
        {"gradients": "all 0: the outputs are the limit and stay there under any finite change"},
        {"x": [inf, 0.0, inf], "g": [1.0, 2.0, 3.0]},
        {"softmax_grad": [0.0, 0.0, 0.0], "log_softmax_grad": [0.0, 0.0, 0.0], "logsumexp_grad": [0.0, 0.0, 0.0]},
        kwargs={"logsumexp_grad": {"g": 1.0}},
    ),
    Rule(
        "gradient of ignored targets",
        {"gradients": "0 on the ignored element's logits; the mean counts the rest"},
        {"x": [[0.0, 0.0], [0.0, 0.0]], "target": [0, -100]},
        {"cross_entropy_grad": [[-0.5, 0.5], [0.0, 0.0]]},
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def rules_for(name: str) -> list[Rule]:
    """The rules that say something about function ``name``."""
    return [r for r in CONTRACT if name in r.outcome]


def documented(name: str) -> Callable[[F], F]:
    """Add the contract's rows for ``name`` to the Notes section of its docstring (made if missing)."""

    def deco(fn: F) -> F:
        lines = ["    Special values (one table for the whole family, ``stablesoftmax.CONTRACT``):", ""]
        lines += [f"    - {r.case}: {r.outcome[name]}" for r in rules_for(name)]
        block = "\n".join(lines).replace("`", "``").replace("````", "``") + "\n\n"
        doc = fn.__doc__ or ""
        after = [m for m in ("    References\n", "    Examples\n") if m in doc]
        if "    Notes\n    -----\n" not in doc:
            block = "    Notes\n    -----\n" + block
        elif after:
            block = "\n" + block.rstrip("\n") + "\n\n"
        if after:
            head, _, tail = doc.partition(after[0])
            fn.__doc__ = head.rstrip() + "\n\n" + block + after[0] + tail
        else:
            fn.__doc__ = doc.rstrip() + "\n\n" + block
        return fn

    return deco


def markdown_table(names: tuple[str, ...] = ("logsumexp", "softmax", "log_softmax")) -> str:
    """The contract as a Markdown table, one column per function in ``names``."""
    head = "| input | " + " | ".join(f"`{n}`" for n in names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 1)]
    for r in CONTRACT:
        if any(n in r.outcome for n in names):
            cells = [r.case] + [r.outcome.get(n, "") for n in names]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


# The groups of the contract's tables, each a table of docs/contract.rst.
SECTIONS = {
    "family": ("logsumexp", "softmax", "log_softmax"),
    "cross_entropy": ("cross_entropy",),
    "gradients": ("gradients",),
}

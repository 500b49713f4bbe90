"""Softmax regression on the labs' five-tense task, trained twice.

The labs classify the tense of the next token among five tenses (indices
0..4). Here the features are synthetic: each tense has a centre in a small
feature space and each example is its centre plus Gaussian noise, all drawn
from ``np.random.default_rng(42)``. The model is ``logits = scale * (W x + b)``
and the loss the mean cross-entropy, computed as ``logsumexp - logit[y]``.

It is trained twice from the same start with plain gradient descent:

* with :class:`stablesoftmax.autograd.Value`, one scalar node per operation,
  the gradient from :meth:`~stablesoftmax.autograd.Value.backward`;
* with the array functions: :func:`stablesoftmax.cross_entropy_with_grad`
  gives the loss and ``d loss / d logits`` in one pass, and the chain rule
  through ``W x + b`` is two matrix products.

The two runs agree step by step, and at ``scale=1`` the loss goes down.
With ``scale=1000`` (and the step size divided by 1000, so ``W`` moves as
before) the logits reach the thousands, where ``exp`` overflows and the
textbook ``-log(softmax)`` gives ``inf`` or NaN. The steps are then far too
long in logit space and the loss jumps around in the hundreds, but every
loss and gradient stays finite, and the two runs still agree.

Run ``python examples/tense_regression.py``; it takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

import stablesoftmax
from stablesoftmax.autograd import Value, cross_entropy

TENSES = 5


@dataclass
class Run:
    """One training run: the mean loss before each step and the final parameters."""

    losses: list[float]
    W: np.ndarray  # (TENSES, features)
    b: np.ndarray  # (TENSES,)


def make_data(rng: np.random.Generator, n: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples ``(X, y)``: five tense centres plus unit Gaussian noise."""
    centres = 2.0 * rng.standard_normal((TENSES, features))
    y = rng.integers(TENSES, size=n)
    return centres[y] + rng.standard_normal((n, features)), y


def train_value(X: np.ndarray, y: np.ndarray, *, steps: int, lr: float, scale: float) -> Run:
    """Gradient descent with the scalar autograd engine."""
    W = [[Value(0.0) for _ in range(X.shape[1])] for _ in range(TENSES)]
    b = [Value(0.0) for _ in range(TENSES)]
    params = [w for row in W for w in row] + b
    losses = []
    for _ in range(steps):
        for p in params:
            p.grad = 0.0
        terms = [cross_entropy(_logits(W, b, x, scale), int(t)) for x, t in zip(X, y, strict=True)]
        loss = reduce(lambda u, v: u + v, terms) / len(terms)
        loss.backward()
        losses.append(loss.data)
        for p in params:
            p.data -= lr * p.grad
    return Run(losses, np.array([[w.data for w in row] for row in W]), np.array([v.data for v in b]))


def _logits(W: list[list[Value]], b: list[Value], x: np.ndarray, scale: float) -> list[Value]:
    """``scale * (W x + b)`` for one example, as Values."""
    logits = []
    for row, bias in zip(W, b, strict=True):
        z = bias
        for w, xi in zip(row, x, strict=True):
            z = z + w * float(xi)
        logits.append(z * scale)
    return logits


def train_array(X: np.ndarray, y: np.ndarray, *, steps: int, lr: float, scale: float) -> Run:
    """The same descent with the array loss and its fused gradient."""
    W, b = np.zeros((TENSES, X.shape[1])), np.zeros(TENSES)
    losses = []
    for _ in range(steps):
        logits = scale * (X @ W.T + b)
        loss, dlogits = stablesoftmax.cross_entropy_with_grad(logits, y)  # mean over the batch
        losses.append(float(loss))
        W -= lr * scale * (dlogits.T @ X)
        b -= lr * scale * dlogits.sum(axis=0)
    return Run(losses, W, b)


def main(n: int = 40, features: int = 4, steps: int = 12, lr: float = 0.5) -> dict[float, tuple[Run, Run]]:
    """Train both ways at logit scales 1 and 1000; print the losses; return the runs ``(value, array)``.

    The step size is ``lr / scale``: the same steps in ``W`` at both scales.
    """
    X, y = make_data(np.random.default_rng(42), n, features)
    runs = {}
    for scale in (1.0, 1000.0):
        value = train_value(X, y, steps=steps, lr=lr / scale, scale=scale)
        array = train_array(X, y, steps=steps, lr=lr / scale, scale=scale)
        runs[scale] = (value, array)
        logits = scale * (X @ array.W.T + array.b)
        with np.errstate(all="ignore"):  # the textbook formula overflows here; that is the point
            naive = stablesoftmax.naive.cross_entropy(logits, y).mean()
        print(
            f"scale {scale:g}: at the final weights the largest |logit| is {np.abs(logits).max():.4g}; "
            f"loss {float(stablesoftmax.cross_entropy(logits, y)):.6g}, textbook -log(softmax) {naive:.6g}"
        )
        print("  step  loss (Value)           loss (arrays)")
        for i, (lv, la) in enumerate(zip(value.losses, array.losses, strict=True)):
            print(f"  {i:4d}  {lv:<22.17g} {la:.17g}")
    return runs


if __name__ == "__main__":
    main()

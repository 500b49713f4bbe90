"""Vocab-parallel cross-entropy: the output layer's classes sharded over processes.

Run on a CPU with two processes::

    torchrun --nproc-per-node 2 examples/vocab_parallel.py

Each rank holds a contiguous block of the vocabulary's rows of the output layer
(uneven here: 1001 classes). Every rank computes the same loss, with label
smoothing over the whole vocabulary, and the gradient of its own block, three
ways: from its block of logits (``distributed.cross_entropy``), without forming
even those (``distributed.linear_cross_entropy``), and, to compare, one process's
``cross_entropy`` on the whole vocabulary. Row 3 holds a logit of 1e4, where
``exp`` overflows in every float type.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import stablesoftmax as ss
from stablesoftmax import distributed as sd

N, H, V = 8, 16, 1001
OPTIONS = {"label_smoothing": 0.1, "ignore_index": -100}


def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole problem, the same on every rank (seeded)."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, dtype=torch.float64, generator=gen)
    weight = torch.randn(V, H, dtype=torch.float64, generator=gen) * 0.5
    hidden[3] *= 2e3  # row 3's logits reach about 1e4
    target = torch.randint(0, V, (N,), generator=gen)
    target[0] = -100  # ignored
    return hidden, weight, target


def run(group: dist.ProcessGroup | None = None) -> dict[str, float]:
    """This rank's figures: the three losses and how far its gradients are from one process's."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    hidden, weight, target = problem()
    lo, hi = V * rank // world, V * (rank + 1) // world

    w_block = weight[lo:hi].clone().requires_grad_()  # a column-parallel layer's output: this rank's logits
    loss = sd.cross_entropy(hidden @ w_block.T, target, group=group, **OPTIONS)
    loss.backward()

    w_linear = weight[lo:hi].clone().requires_grad_()  # the same, never holding the (N, hi - lo) logits
    loss_linear = sd.linear_cross_entropy(hidden, w_linear, target, group=group, chunk_size=128, **OPTIONS)
    loss_linear.backward()

    w_full = weight.clone().requires_grad_()  # one process, the whole vocabulary
    loss_one = ss.cross_entropy(hidden @ w_full.T, target, **OPTIONS)
    loss_one.backward()
    ref = w_full.grad[lo:hi]
    return {
        "rank": rank,
        "lo": lo,
        "hi": hi,
        "loss": loss.item(),
        "linear": loss_linear.item(),
        "one_process": loss_one.item(),
        "grad_error": float((w_block.grad - ref).abs().max() / ref.abs().max()),
        "linear_grad_error": float((w_linear.grad - ref).abs().max() / ref.abs().max()),
    }


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    r = run()
    print(
        f"rank {r['rank']}: classes [{r['lo']}, {r['hi']}): loss {r['loss']:.17g}, linear {r['linear']:.17g}, "
        f"one process {r['one_process']:.17g}; d weight within {r['grad_error']:.1e} (linear "
        f"{r['linear_grad_error']:.1e}) of one process's, relative to its largest entry",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

r"""Hugging Face Transformers: a causal language model's loss computed by :func:`stablesoftmax.cross_entropy`.

``apply(model)`` sets the model's ``loss_function``, the hook every
``PreTrainedModel`` has: a causal LM's ``forward`` computes its loss as
``self.loss_function(logits=..., labels=..., vocab_size=..., **kwargs)``,
which is ``transformers.loss.loss_utils.ForCausalLMLoss`` by default (through
``LOSS_MAPPING``) for every architecture. The hook is set on the model
instance only, so no class and no other model changes.

:func:`causal_lm_loss` replaces ``ForCausalLMLoss`` and does what it does
(Transformers 5.25): labels are shifted left by one, the last position padded
with ``ignore_index`` (-100 by default), unless ``shift_labels`` are given;
logits and labels are flattened; without ``num_items_in_batch`` the loss is
the mean over the tokens that count, with it the sum divided by
``num_items_in_batch`` (the ``Trainer`` passes the number of tokens that
count in the whole gradient-accumulation step). 16-bit logits are upcast to
float32 first, as the library does. Two things differ, both where the
library's answer is worse:

* float64 logits stay float64 (the library's ``logits.float()`` rounds them
  to float32 and gives a float32 loss);
* a batch in which every label is ``ignore_index`` gives a mean of 0 with
  zero gradients, not NaN (pytorch#70348).

Tested with Transformers 5.25 (Llama, GPT-2 and Qwen2, randomly initialised,
and one ``Trainer`` epoch). The module needs PyTorch and Transformers
(``pip install 'stablesoftmax[transformers]'``) and is imported by name.

Examples
--------
>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from stablesoftmax.integrations import transformers as sst
>>> config = LlamaConfig(
...     vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
... )
>>> model = sst.apply(LlamaForCausalLM(config))
>>> ids = torch.tensor([[1, 2, 3, 4]])
>>> model(ids, labels=torch.full_like(ids, -100)).loss.item()  # nothing to predict: the default gives nan
0.0
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.loss.loss_utils import ForCausalLMLoss

from stablesoftmax import ArgumentError, cross_entropy

__all__ = ["apply", "causal_lm_loss"]

Model = TypeVar("Model", bound=PreTrainedModel)

_WIDENED = (torch.float16, torch.bfloat16)


def apply(model: Model, /) -> Model:
    """Make a loaded causal LM compute its loss with :func:`causal_lm_loss`; returns ``model``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM whose loss is the library's ``ForCausalLMLoss`` (every
        ``...ForCausalLM``, ``GPT2LMHeadModel`` and the like). Its
        ``loss_function`` is set; nothing else changes. Applying twice is the
        same as once.

    Returns
    -------
    transformers.PreTrainedModel
        ``model`` itself.

    Raises
    ------
    ArgumentError
        When ``model`` has no ``loss_function`` (not a Transformers model), or
        its loss is not the causal-LM cross-entropy (a classifier, a masked
        LM, a loss set by hand): those are left as they are.
    """
    current = getattr(model, "loss_function", None)
    if current is None:
        raise ArgumentError(
            f"model of type {type(model).__name__} has no loss_function; apply takes a transformers PreTrainedModel."
        )
    if current is not ForCausalLMLoss and current is not causal_lm_loss:
        raise ArgumentError(
            f"model {type(model).__name__} computes its loss with {getattr(current, '__name__', current)!r}, not "
            "transformers' ForCausalLMLoss; apply replaces only the causal-LM cross-entropy."
        )
    # PreTrainedModel.loss_function's setter: the instance's own hook, read by its forward.
    model.loss_function = causal_lm_loss
    return model


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor,
    vocab_size: int,
    num_items_in_batch: Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Transformers' ``ForCausalLMLoss``, computed by :func:`stablesoftmax.cross_entropy`.

    Parameters
    ----------
    logits : Tensor, shape ``[..., T, V]``
        The model's logits; 16-bit ones are upcast to float32, as the library does.
    labels : Tensor of int, shape ``[..., T]``
        The tokens to predict, unshifted (``labels = input_ids`` is the usual
        choice); position ``t`` of ``logits`` predicts ``labels[..., t + 1]``.
    vocab_size : int
        ``V``.
    num_items_in_batch : Tensor or int, optional
        When given, the loss is the sum over the tokens that count divided by
        it; otherwise their mean.
    ignore_index : int, default -100
        Labels equal to it count for nothing.
    shift_labels : Tensor of int, optional
        Labels already shifted (``labels`` is then unused), as the library takes them.
    **kwargs
        Whatever else the model passes; unused, as in the library.

    Returns
    -------
    Tensor
        A 0-d loss: float32, or float64 for float64 logits.
    """
    if logits.dtype in _WIDENED:
        logits = logits.float()
    if shift_labels is None:
        # Position t predicts token t + 1; the last position predicts nothing.
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return cross_entropy(logits, shift_labels, ignore_index=ignore_index)
    loss = cross_entropy(logits, shift_labels, ignore_index=ignore_index, reduction="sum")
    if isinstance(num_items_in_batch, Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch

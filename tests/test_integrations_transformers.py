"""stablesoftmax.integrations.transformers against the library's own loss, on small random models."""

import copy
import doctest
import os
import subprocess
import sys

import pytest

# Tiny models built from configs: nothing is downloaded. Set before huggingface_hub reads it at import.
os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sst = pytest.importorskip("stablesoftmax.integrations.transformers")

from transformers.loss.loss_utils import ForCausalLMLoss, fixed_cross_entropy  # noqa: E402

from stablesoftmax import ArgumentError  # noqa: E402

VOCAB = 64
ARCHS = ["llama", "gpt2", "qwen2"]
DTYPES = [torch.float32, torch.float64]
# The loss within these of the library's (relative), per dtype
LOSS_RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _eps(dtype):
    return torch.finfo(dtype).eps


def assert_near(ours, theirs, dtype):
    """``max|ours - theirs| <= 16 eps * max|theirs|``: the two cross-entropies round differently (ours to
    nearest), and the difference passes through the model's backward; nothing else may differ."""
    assert ours.dtype == theirs.dtype
    assert (ours - theirs).abs().max() <= 16 * _eps(dtype) * theirs.abs().max()


def _model(arch, dtype):
    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, max_position_embeddings=32)
    if arch == "gpt2":
        no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        config = transformers.GPT2Config(
            n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0, **no_dropout, **small
        )
        return transformers.GPT2LMHeadModel(config).to(dtype)
    sizes = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    if arch == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes, **small)).to(dtype)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**sizes, **small)).to(dtype)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 9), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[2, 7:] = -100  # padding
    return ids, labels


def _float64_reference(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, **kwargs):
    """The library's loss in float64: its ``fixed_cross_entropy`` on shifted slices.

    ``ForCausalLMLoss`` itself rounds float64 logits to float32 (``logits.float()``), so it has no
    float64 answer to compare with; the shift here is written by slicing, not padding.
    """
    flat = logits[..., :-1, :].reshape(-1, vocab_size)
    return fixed_cross_entropy(flat, labels[..., 1:].reshape(-1), num_items_in_batch, ignore_index)


def _pair(arch, dtype):
    """``(ours, reference)``: the same weights; the reference keeps the library's loss (float64: as above)."""
    reference = _model(arch, dtype)
    ours = sst.apply(copy.deepcopy(reference))
    if dtype == torch.float64:
        reference.loss_function = _float64_reference
    return ours, reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
class TestSameAsTheLibrary:
    @pytest.mark.parametrize("num_items", [None, 17])
    def test_loss_and_gradients(self, arch, dtype, num_items):
        ours, reference = _pair(arch, dtype)
        ids, labels = _batch()
        kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
        loss = ours(ids, labels=labels, **kwargs).loss
        ref = reference(ids, labels=labels, **kwargs).loss
        assert loss.dtype == dtype  # float64 stays float64, as the library's .float() would not
        torch.testing.assert_close(loss, ref.to(dtype), rtol=LOSS_RTOL[dtype], atol=0)
        loss.backward()
        ref.backward()
        for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
            assert p.grad is not None, name
            assert_near(p.grad, q.grad, dtype)

    def test_sgd_steps_give_the_same_parameters(self, arch, dtype):
        # SGD: the step is the gradient, scaled. Adam divides by sqrt(v), which turns the last-bit
        # differences of near-zero gradients into differences of the step's size, whatever the loss.
        ours, reference = _pair(arch, dtype)
        ids, labels = _batch()
        for model in (ours, reference):
            opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
            for _ in range(4):
                opt.zero_grad()
                model(ids, labels=labels).loss.backward()
                opt.step()
        start = _model(arch, dtype)
        moved = [(p - p0).abs().max() for p, p0 in zip(reference.parameters(), start.parameters(), strict=True)]
        assert max(moved) > 1e-2  # the steps moved the weights
        for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
            assert_near(p.detach(), q.detach(), dtype)


@pytest.mark.parametrize("num_items", [None, 11, "tensor"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_causal_lm_loss_equals_for_causal_lm_loss(num_items, ignore_index):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 10, generator=g).requires_grad_()
    labels = torch.randint(0, 10, (2, 6), generator=g)
    labels[0, :2] = ignore_index
    n = torch.tensor(11) if num_items == "tensor" else num_items
    kwargs = dict(num_items_in_batch=n, ignore_index=ignore_index, unused_by_both=True)
    loss = sst.causal_lm_loss(logits, labels, 10, **kwargs)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = ForCausalLMLoss(logits, labels, 10, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref, rtol=LOSS_RTOL[torch.float32], atol=0)
    assert_near(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_shift_labels_given_are_used_as_they_are(arch):
    ours, reference = _pair(arch, torch.float32)
    ids, labels = _batch()
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    loss = ours(ids, shift_labels=shifted, labels=torch.zeros_like(labels)).loss
    torch.testing.assert_close(loss, reference(ids, labels=labels).loss, rtol=LOSS_RTOL[torch.float32], atol=0)


def test_nothing_to_predict_is_zero_not_nan():
    ours, reference = _pair("llama", torch.float32)
    ids, _ = _batch()
    nothing = torch.full_like(ids, -100)
    loss = ours(ids, labels=nothing).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ours.parameters())
    assert reference(ids, labels=nothing).loss.isnan()


def test_bfloat16_logits_give_a_float32_loss():
    ours, reference = _pair("llama", torch.float32)
    ids, labels = _batch()
    ours.to(torch.bfloat16)
    reference.to(torch.bfloat16)
    loss, ref = ours(ids, labels=labels).loss, reference(ids, labels=labels).loss
    assert loss.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=LOSS_RTOL[torch.float32], atol=0)


class TestApply:
    def test_sets_the_instance_hook_only(self):
        model = _model("llama", torch.float32)
        assert sst.apply(model) is model
        assert model.loss_function is sst.causal_lm_loss
        assert _model("llama", torch.float32).loss_function is ForCausalLMLoss  # the class is untouched
        assert sst.apply(model) is model and model.loss_function is sst.causal_lm_loss  # twice is once

    def test_refuses_a_model_with_another_loss(self):
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
        classifier = transformers.LlamaForSequenceClassification(config)
        with pytest.raises(ArgumentError, match="LlamaForSequenceClassification computes its loss with"):
            sst.apply(classifier)
        assert classifier.loss_function is not sst.causal_lm_loss

    def test_refuses_a_plain_module(self):
        with pytest.raises(ArgumentError, match="model of type Linear has no loss_function"):
            sst.apply(torch.nn.Linear(2, 2))


def _train(model, tmp_path):
    ids = torch.randint(0, VOCAB, (8, 9), generator=torch.Generator().manual_seed(2))
    rows = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        num_train_epochs=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,  # the Trainer then passes num_items_in_batch
        optim="sgd",
        learning_rate=0.5,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=rows).train()


def test_trainer_runs_an_epoch(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")  # the Trainer's; stablesoftmax[transformers] brings it
    ours, reference = _pair("llama", torch.float32)
    reductions = []

    def spy(*args, **kwargs):
        reductions.append(kwargs.get("reduction", "mean"))
        return cross_entropy(*args, **kwargs)

    cross_entropy = sst.cross_entropy
    monkeypatch.setattr(sst, "cross_entropy", spy)
    result = _train(ours, tmp_path / "ours")
    ref = _train(reference, tmp_path / "reference")
    assert result.global_step == ref.global_step == 2
    assert reductions == ["sum"] * 4  # each micro-batch, divided by the step's num_items_in_batch
    assert result.training_loss == pytest.approx(ref.training_loss, rel=LOSS_RTOL[torch.float32])
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        assert_near(p.detach(), q.detach(), torch.float32)


def test_docstring_examples():
    result = doctest.testmod(sst, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_imported_only_by_name():
    code = (
        "import sys, stablesoftmax, stablesoftmax.integrations; "
        "print(sorted(m for m in ('torch', 'transformers', 'stablesoftmax.integrations.transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

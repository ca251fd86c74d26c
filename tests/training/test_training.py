"""Backward pass: gradients equal the reference's, with and without gradient checkpointing."""

import pytest
import torch
from reference_helpers import CASE_IDS, CASES, assert_close, reference_and_ours

from hf_recurrentgemma.convert import ours_to_reference

SEQ = 13


def _batch(case):
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, case.vocab_size, (2, SEQ), generator=g)
    positions = torch.tensor([list(range(SEQ)), [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0, 1]])
    return tokens, positions


def _our_grads(model, tokens, positions, labels):
    model.zero_grad()
    out = model(tokens, position_ids=positions, labels=labels, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads["lm_head.weight"] = model.lm_head.weight.grad  # tied: one tensor, one gradient
    return out.loss.detach(), grads


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_reference(case):
    ref, ours = reference_and_ours(case)
    ours.train()
    tokens, positions = _batch(case)
    logits, _ = ref(tokens, positions, return_cache=False)
    ref_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, case.vocab_size), tokens[:, 1:].reshape(-1))
    ref_loss.backward()
    loss, grads = _our_grads(ours, tokens, positions, tokens)
    assert_close(loss, ref_loss.detach(), tol=1e-5, what="loss")
    ours_as_ref = ours_to_reference({k: v for k, v in grads.items() if k != "lm_head.weight"}, ours.config)
    ref_grads = dict(ref.named_parameters())
    assert set(ours_as_ref) == set(ref_grads)
    for name, grad in ours_as_ref.items():
        assert_close(grad, ref_grads[name].grad, tol=5e-5, what=f"grad of {name}")


def test_gradient_checkpointing_gives_the_same_gradients():
    case = CASES[0]
    _, ours = reference_and_ours(case)
    ours.train()
    tokens, positions = _batch(case)
    loss, plain = _our_grads(ours, tokens, positions, tokens)
    ours.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, ckpt = _our_grads(ours, tokens, positions, tokens)
    assert torch.equal(loss, loss_ckpt)
    for name in plain:
        assert_close(ckpt[name], plain[name], tol=1e-6, what=f"checkpointed grad of {name}")


def test_a_few_optimizer_steps_lower_the_loss():
    case = CASES[1]
    _, ours = reference_and_ours(case)
    ours.train()
    tokens, positions = _batch(case)
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = ours(tokens, position_ids=positions, labels=tokens, use_cache=False).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_trainer_fine_tunes_with_gradient_checkpointing_and_padding(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_recurrentgemma import GriffinForCausalLM

    case = CASES[0]
    _, model = reference_and_ours(case)
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(16):
        ids = torch.randint(4, case.vocab_size, (12,), generator=g)
        mask = torch.ones(12, dtype=torch.long)
        mask[: i % 4] = 0  # left padding, ignored by the loss
        labels = ids.masked_fill(mask == 0, -100)
        examples.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3,
                             learning_rate=3e-3, logging_steps=4, report_to=[], save_strategy="no", use_cpu=True,
                             activation_checkpointing=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0], losses
    trainer.save_model(str(tmp_path / "final"))
    reloaded = GriffinForCausalLM.from_pretrained(tmp_path / "final").eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(examples[0]["input_ids"][None]).logits, model(examples[0]["input_ids"][None]).logits)


def test_peft_lora_trains_generates_and_merges():
    """Every projection is an nn.Linear, so LoRA can target them; the merged model computes the adapted one."""
    from peft import LoraConfig, get_peft_model

    _, model = reference_and_ours(CASES[0])
    ids = torch.randint(0, CASES[0].vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "linear_x", "linear_y", "linear_out", "gate_proj", "up_proj",
               "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits, base)  # LoRA's B starts at zero
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    generated = peft_model.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert_close(merged(ids).logits, adapted, tol=5e-5, what="merged LoRA logits")
    assert torch.equal(merged.generate(ids[:1], max_new_tokens=4, do_sample=False), generated)

"""Training and releasing the shipped model's draft: the distillation loss of training/train.py, the `hawk-draft`
preset of training/models.py, and the model card section training/release.py writes for it."""

import copy
import importlib
import math

import pytest
import torch

from hf_recurrentgemma import PRESETS, GriffinConfig, GriffinForCausalLM


@pytest.fixture(scope="module")
def training():
    """training/models.py, train.py and release.py (the `training` package)."""
    return {name: importlib.import_module(f"training.{name}") for name in ("models", "train", "release")}


def tiny_pair(seed: int = 0):
    torch.manual_seed(seed)
    config = GriffinConfig(vocab_size=64, hidden_size=32, intermediate_size=96, num_attention_heads=2,
                           block_types=["recurrent", "attention"], attention_window_size=8)
    return GriffinForCausalLM(config), GriffinForCausalLM(config)


def distillation_loss(train, student, teacher, weight: float, ids: torch.Tensor) -> torch.Tensor:
    trainer = train.DistillationTrainer.__new__(train.DistillationTrainer)  # compute_loss needs no Trainer state
    trainer.teacher, trainer.distill_weight = teacher.eval().requires_grad_(False), weight
    student.train()
    return trainer.compute_loss(student, {"input_ids": ids, "labels": ids})


def test_distillation_loss_is_kl_plus_cross_entropy(training):
    student, teacher = tiny_pair()
    ids = torch.randint(4, 64, (2, 12))
    with torch.no_grad():
        ce = student(input_ids=ids, labels=ids).loss
        p_teacher = torch.softmax(teacher(input_ids=ids).logits[:, :-1].double(), -1)
        log_q = torch.log_softmax(student(input_ids=ids).logits[:, :-1].double(), -1)
        kl = (p_teacher * (p_teacher.log() - log_q)).sum(-1).mean()
    loss = lambda w: distillation_loss(training["train"], student, teacher, w, ids)  # noqa: E731
    torch.testing.assert_close(loss(0.0).double(), ce.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(1.0).double(), kl, rtol=1e-4, atol=1e-6)
    mixed = loss(0.25)
    torch.testing.assert_close(mixed.double(), 0.25 * kl + 0.75 * ce.double(), rtol=1e-4, atol=1e-6)
    mixed.backward()  # the student learns; the teacher is frozen
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_distilling_from_itself_costs_nothing(training):
    student, _ = tiny_pair()
    ids = torch.randint(4, 64, (2, 12))
    loss = distillation_loss(training["train"], student, copy.deepcopy(student), 1.0, ids)
    assert abs(loss.item()) < 1e-5, loss.item()


def test_draft_preset_is_the_shipped_drafts_shape(training):
    models, release = training["models"], training["release"]
    model = models.build_model("hawk-draft", 4096)
    preset = PRESETS[release.DRAFT_PRESET]
    for field, value in preset.items():
        assert getattr(model.config, field) == getattr(GriffinConfig(**preset), field), field
    assert models.parameter_count(model) == 939_136


def test_release_rewrites_only_the_draft_section_of_the_card(training):
    release = training["release"]
    config = GriffinConfig(**PRESETS[release.DRAFT_PRESET])
    metrics = {"parameters": 939_136, "tokens_seen": 4096, "steps": 1, "batch_size": 8, "train_length": 512,
               "lr": 0.002, "heldout_loss": 5.0, "heldout_perplexity": math.exp(5.0), "heldout_tokens": 1024,
               "teacher": "runs/6m-hf", "distill_weight": 1.0}
    section = release.draft_section(metrics, config)
    assert section.startswith(release.DRAFT_HEADING) and "Hawk" in section and "--teacher runs/6m-hf" in section
    main_card = "# griffin-austen-6m\n\nThe main model.\n"
    card = main_card + "\n" + section
    assert release.split_card(card) == (main_card, section)
    assert release.split_card(main_card) == (main_card, "")

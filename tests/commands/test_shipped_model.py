"""The checkpoint this package ships (src/hf_recurrentgemma/assets/griffin-austen, trained by training/train.py) and
the main job on it: the release layout, its conversion, a short generation equal to the reference's, and the demo
command end to end; then its draft for speculative decoding (`draft-1m/`, beside it): layout, conversion, and
speculative greedy decoding (with the draft, and with prompt lookup) giving plain greedy's tokens."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece as spm
import torch
from recurrentgemma import jax as ref_jax
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_recurrentgemma import PRESETS, GriffinConfig
from hf_recurrentgemma.convert.pipeline import convert_checkpoint
from hf_recurrentgemma.commands.speculative import DRAFT_TOKENS, AcceptanceCounter
from hf_recurrentgemma.demo import (BUNDLED_CHECKPOINT, BUNDLED_DRAFT, BUNDLED_DRAFT_PRESET, BUNDLED_PRESET,
                                    BUNDLED_RELEASE, DEFAULT_PROMPT)

CHECKPOINT = BUNDLED_CHECKPOINT
DRAFT = BUNDLED_RELEASE / BUNDLED_DRAFT
TOKENIZER = BUNDLED_RELEASE / "tokenizer.model"
STEPS = 24
# A copy-heavy prompt (a passage, then its start again with one word changed). The 6M model does not copy it (it
# writes its own sentence), so prompt lookup finds little here; the draft still agrees with it on many tokens.
PASSAGE = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up any book but one."
COPY_PROMPT = f"{PASSAGE}\n\nSir Walter Elliot, of Kellynch Hall, in Devonshire, was"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "griffin-austen-hf"
    return convert_checkpoint(CHECKPOINT, out, preset=BUNDLED_PRESET, tokenizer=TOKENIZER, verify=True)


@pytest.fixture(scope="module")
def converted_draft(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped-draft") / "draft-hf"
    return convert_checkpoint(DRAFT, out, preset=BUNDLED_DRAFT_PRESET, tokenizer=TOKENIZER, verify=True)


def test_release_layout_is_the_original_one():
    assert TOKENIZER.is_file() and (BUNDLED_RELEASE / "README.md").is_file()
    assert (CHECKPOINT / "_METADATA").is_file() or (CHECKPOINT / "checkpoint").is_file(), "not an Orbax checkpoint"
    size = sum(p.stat().st_size for p in BUNDLED_RELEASE.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, f"the shipped release is {size / 2**20:.1f} MiB"
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    assert [sp.IdToPiece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert sp.GetPieceSize() == PRESETS[BUNDLED_PRESET]["vocab_size"]


def test_converts_in_bfloat16_equal_to_the_reference(converted):
    assert converted.source_format == "orbax" and converted.dtype == torch.bfloat16
    assert converted.verification.ok, converted.verification
    assert "reference" in converted.verification.against
    preset = GriffinConfig.from_preset(BUNDLED_PRESET)
    for field in PRESETS[BUNDLED_PRESET]:
        assert getattr(converted.config, field) == getattr(preset, field), field


def reference_greedy(prompt: str, steps: int) -> list[int]:
    """Google DeepMind's JAX sampler on the shipped Orbax checkpoint (float32): the continuation's token ids."""
    # (recurrentgemma.jax.utils.load_parameters passes restore args this Orbax version refuses: restore directly.)
    params = ocp.PyTreeCheckpointer().restore(str(CHECKPOINT))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    preset = PRESETS[BUNDLED_PRESET]
    config = ref_jax.GriffinConfig(
        vocab_size=preset["vocab_size"], width=preset["hidden_size"], mlp_expanded_width=preset["intermediate_size"],
        num_heads=preset["num_attention_heads"], lru_width=preset["lru_width"],
        block_types=tuple(ref_jax.TemporalBlockType.RECURRENT if t == "recurrent" else
                          ref_jax.TemporalBlockType.ATTENTION for t in preset["block_types"]),
        embeddings_scale_by_sqrt_dim=preset["embeddings_scale_by_sqrt_dim"],
        attention_window_size=preset["attention_window_size"], logits_soft_cap=preset["logits_soft_cap"],
    )
    vocab = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    sampler = ref_jax.Sampler(model=ref_jax.Griffin(config), vocab=vocab, params=params["params"])
    out = sampler([prompt], total_generation_steps=steps, end_sampling_at_eos_token=False)
    return [int(t) for t in np.asarray(out.tokens[0])][:steps]


def test_greedy_continuation_equals_the_reference_sampler(converted):
    model = AutoModelForCausalLM.from_pretrained(converted.out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted.out)
    inputs = tokenizer(DEFAULT_PROMPT, return_tensors="pt")
    ours = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS)
    ours = ours[0, inputs["input_ids"].shape[1]:].tolist()
    assert ours == reference_greedy(DEFAULT_PROMPT, STEPS)
    text = tokenizer.decode(ours, skip_special_tokens=True)
    words = text.split()
    assert len(words) >= STEPS // 3, text  # words, not fragments
    assert all(c.isalpha() or c in " ,.;:!?'\"-_()\n" for c in text), text


def test_main_job_end_to_end(tmp_path):
    env = {**os.environ, "HF_RECURRENTGEMMA_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.demo", "--max-new-tokens", "12", "--greedy"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "converting" in run.stdout and DEFAULT_PROMPT in run.stdout
    assert "tokens/s" in run.stdout and "recurrent state" in run.stdout
    assert "converting" in run.stderr  # the progress bar
    again = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.demo", "--max-new-tokens", "12", "--greedy"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "converted before" in again.stdout
    # Greedy decoding: the same continuation both times.
    assert run.stdout.split(DEFAULT_PROMPT)[1].split("tokens in")[0] == \
        again.stdout.split(DEFAULT_PROMPT)[1].split("tokens in")[0]


def test_main_job_takes_a_converted_folder_and_names_a_missing_model(converted, tmp_path):
    run = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.demo", str(converted.out), "--prompt", "Emma",
                          "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "a converted folder" in run.stdout and "converting" not in run.stdout
    quantized = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.demo", str(converted.out), "--prompt", "Emma",
                                "--max-new-tokens", "5", "--quantize", "int8"], capture_output=True, text=True,
                               timeout=300)
    assert quantized.returncode == 0 and "int8 weights" in quantized.stdout, quantized.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.demo", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "nope: no such checkpoint or folder" in missing.stderr


def test_draft_ships_beside_the_model_in_the_release_layout():
    assert (DRAFT / "_METADATA").is_file() or (DRAFT / "checkpoint").is_file(), "not an Orbax checkpoint"
    card = (BUNDLED_RELEASE / "README.md").read_text()
    assert f"`{BUNDLED_DRAFT}/`" in card and f"--preset {BUNDLED_DRAFT_PRESET}" in card
    draft, target = PRESETS[BUNDLED_DRAFT_PRESET], PRESETS[BUNDLED_PRESET]
    assert draft["vocab_size"] == target["vocab_size"]  # one tokenizer.model serves both
    assert set(draft["block_types"]) == {"recurrent"}  # a Hawk


def test_draft_converts_equal_to_the_reference(converted_draft):
    assert converted_draft.source_format == "orbax" and converted_draft.verification.ok, converted_draft.verification
    preset = GriffinConfig.from_preset(BUNDLED_DRAFT_PRESET)
    for field in PRESETS[BUNDLED_DRAFT_PRESET]:
        assert getattr(converted_draft.config, field) == getattr(preset, field), field
    model = AutoModelForCausalLM.from_pretrained(converted_draft.out, dtype=torch.float32)
    assert 0.8e6 <= sum(p.numel() for p in model.parameters()) <= 1.2e6


def test_speculative_greedy_equals_plain_greedy(converted, converted_draft):
    """Assisted decoding with the shipped draft and prompt lookup give plain greedy's tokens (float32, with the
    demo's repetition penalty), and the draft's proposals are accepted often enough to matter."""
    prompt = COPY_PROMPT
    model = AutoModelForCausalLM.from_pretrained(converted.out, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(converted_draft.out, dtype=torch.float32).eval()
    draft.generation_config.num_assistant_tokens = 5
    inputs = AutoTokenizer.from_pretrained(converted.out)(prompt, return_tensors="pt")
    greedy = dict(max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, repetition_penalty=1.1)
    plain = model.generate(**inputs, **greedy)
    accepted = {}
    for name, speculative in (("draft", dict(assistant_model=draft)), ("lookup", dict(prompt_lookup_num_tokens=5))):
        counter = AcceptanceCounter()
        with counter.watching(model):
            out = model.generate(**inputs, **greedy, **speculative)
        assert out.tolist() == plain.tolist(), name
        assert counter.rounds > 0, name
        accepted[name] = counter.accepted
    assert accepted["draft"] >= STEPS // 4, accepted  # the trained draft agrees with the model on some tokens


def test_demo_decodes_speculatively_with_the_same_text(tmp_path, monkeypatch, capsys):
    """The demo with the shipped draft and with prompt lookup (in this process: the end-to-end subprocess run is
    test_main_job_end_to_end): greedy text equal to plain decoding's, acceptance and speed-up printed."""
    from hf_recurrentgemma import demo

    monkeypatch.setenv("HF_RECURRENTGEMMA_CACHE", str(tmp_path))
    args = ["--prompt", COPY_PROMPT, "--max-new-tokens", "12", "--greedy"]
    assert demo.main(args + ["--assistant"]) == 0
    out = capsys.readouterr().out
    assert f"speculative decoding: a 0.9M-parameter draft (2 blocks) proposes up to {DRAFT_TOKENS} tokens" in out
    assert "acceptance:" in out and "the same text" in out and "speed-up" in out
    assert demo.main(args + ["--assistant", BUNDLED_DRAFT_PRESET, "--num-assistant-tokens", "2"]) == 0  # by name
    assert "proposes up to 2 tokens" in capsys.readouterr().out
    assert demo.main(args + ["--prompt-lookup", "4"]) == 0
    out = capsys.readouterr().out
    assert "prompt lookup proposes up to 4" in out and "the same text" in out
    for bad, message in ((["--prompt-lookup", "4", "--no-speculative"], "not --prompt-lookup and --no-speculative"),
                         (["--temperature", "0.5"], "--temperature only applies with --do-sample")):
        with pytest.raises(SystemExit):
            demo.main(args + bad)
        assert message in capsys.readouterr().err


def test_shipped_names_convert_to_a_chosen_folder_and_serve_as_model_and_assistant(converted, tmp_path):
    """`convert griffin-austen-draft-1m OUT` writes the draft where the user says; `generate griffin-austen-6m ...
    --assistant griffin-austen-draft-1m --stats` converts both once into the cache folder and prints plain greedy's
    text with the acceptance and the speed-up; the shipped checkpoint's own path works as its name does."""
    out = tmp_path / "my-draft"
    run = subprocess.run([sys.executable, "-m", "hf_recurrentgemma.cli", "convert", BUNDLED_DRAFT_PRESET, str(out),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    config = GriffinConfig.from_pretrained(out)
    assert config.block_types == PRESETS[BUNDLED_DRAFT_PRESET]["block_types"] and (out / "tokenizer.json").is_file()
    env = {**os.environ, "HF_RECURRENTGEMMA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_recurrentgemma.cli", "generate", BUNDLED_PRESET, DEFAULT_PROMPT,
               "--max-new-tokens", "12", "--dtype", "float32", "--stats", "--assistant"]
    run = subprocess.run(command + [BUNDLED_DRAFT_PRESET], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "converting the shipped griffin-austen-6m once" in run.stderr
    assert "acceptance: " in run.stderr and "the same text" in run.stderr and "speed-up" in run.stderr
    model = AutoModelForCausalLM.from_pretrained(converted.out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted.out)
    ids = tokenizer(DEFAULT_PROMPT, return_tensors="pt")
    plain = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert run.stdout == tokenizer.decode(plain[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) + "\n"
    again = subprocess.run(command + [str(DRAFT)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout == run.stdout, again.stderr[-2000:]
    assert "converting" not in again.stderr  # both conversions were kept

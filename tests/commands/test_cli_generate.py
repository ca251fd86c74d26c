"""`hf-recurrentgemma generate`: the command's output equals `model.generate` in-process, on our folders and on
Transformers' built-in recurrent_gemma folders; a prompts file runs as left-padded batches; bad flags are one-line
errors."""

import json

import pytest
import torch
from command_helpers import run_command, save_tiny_folder
from reference_helpers import run_cli
from transformers import set_seed

from hf_recurrentgemma import GriffinForCausalLM
from hf_recurrentgemma.convert.builtin import export_builtin

NEW = 12
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    ours = save_tiny_folder(root / "ours", seed=1)
    builtin = export_builtin(ours, root / "builtin")
    return ours, builtin


@pytest.fixture(scope="module")
def model_and_tokenizer(folders):
    from transformers import AutoTokenizer

    return GriffinForCausalLM.from_pretrained(folders[0]).eval(), AutoTokenizer.from_pretrained(folders[0])


def expected_completion(model, tokenizer, prompt, **kwargs) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW, pad_token_id=0, **{"do_sample": False, **kwargs})
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("which", ["ours", "builtin"])
def test_generate_prints_the_greedy_continuation(folders, model_and_tokenizer, which):
    folder = folders[0] if which == "ours" else folders[1]
    result = run_command("generate", folder, "the cat sat", "--max-new-tokens", NEW)
    assert result.returncode == 0, result.stderr
    expected = expected_completion(*model_and_tokenizer, "the cat sat")
    assert expected.strip(), "the tiny model should generate printable text for this prompt"
    assert result.stdout == expected + "\n"
    assert "tokens in" in result.stderr and "tokens/s" in result.stderr


def test_prompts_file_runs_left_padded_batches_equal_to_each_prompt_alone(folders, model_and_tokenizer, tmp_path):
    prompts = ["a", "the cat sat on", "longer prompt, with punctuation!", "two\\nlines"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts[:2]) + "\n\n" + "\n".join(prompts[2:]) + "\n")  # a blank line is skipped
    result = run_command("generate", folders[0], "--prompts-file", path, "--max-new-tokens", NEW, "--batch-size", 3)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["prompt"] for row in rows] == [p.replace("\\n", "\n") for p in prompts]
    for row in rows:  # batches of 3 then 1, left-padded to the longest prompt of each
        assert row["completion"] == expected_completion(*model_and_tokenizer, row["prompt"]), row["prompt"]


def test_sampling_flags_reach_generate_and_the_seed_makes_it_reproducible(folders, model_and_tokenizer):
    flags = ["--do-sample", "--seed", "5", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9",
             "--repetition-penalty", "1.3", "--max-new-tokens", str(NEW)]
    status, first, _ = run_cli("generate", folders[0], "hello", *flags)
    status2, second, _ = run_cli("generate", folders[0], "hello", *flags)
    assert status == status2 == 0 and first == second
    set_seed(5)
    expected = expected_completion(*model_and_tokenizer, "hello", do_sample=True, temperature=0.8, top_k=20,
                                   top_p=0.9, repetition_penalty=1.3)
    assert first == expected + "\n"
    set_seed(6)
    other = expected_completion(*model_and_tokenizer, "hello", do_sample=True, temperature=0.8, top_k=20,
                                top_p=0.9, repetition_penalty=1.3)
    assert other != expected  # the seed matters, so the equality above is not vacuous


@pytest.fixture(scope="module")
def draft_folder(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("draft") / "hawk", seed=4, block_types=["recurrent"] * 2)


@pytest.mark.parametrize("flags, expected_kwargs", [
    (["--assistant", "DRAFT", "--num-assistant-tokens", "3"], {"assistant_model": 3}),
    (["--prompt-lookup", "2"], {"prompt_lookup_num_tokens": 2}),
], ids=["assistant", "prompt-lookup"])
def test_speculative_flags_reach_generate_and_keep_the_greedy_output(folders, model_and_tokenizer, draft_folder,
                                                                    monkeypatch, flags, expected_kwargs):
    calls, original = [], GriffinForCausalLM.generate

    def recording_generate(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GriffinForCausalLM, "generate", recording_generate)
    flags = [str(draft_folder) if f == "DRAFT" else f for f in flags]
    prompt = "the cat sat on the mat; the cat sat"
    status, out, err = run_cli("generate", folders[0], prompt, "--max-new-tokens", NEW, *flags)
    assert status == 0, err
    assert out == expected_completion(*model_and_tokenizer, prompt) + "\n"
    for key, value in expected_kwargs.items():  # calls[0]: the model's; later ones are the assistant's drafts
        got = calls[0][key]
        if key == "assistant_model":  # the draft folder, drafting 3 tokens a round
            assert str(got.name_or_path) == str(draft_folder) and got.generation_config.num_assistant_tokens == value
            assert len(calls) > 1, "the assistant never drafted"
        else:
            assert got == value, key


def test_streams_token_by_token(folders, monkeypatch):
    from transformers import TextStreamer

    chunks = []
    original = TextStreamer.on_finalized_text
    monkeypatch.setattr(TextStreamer, "on_finalized_text",
                        lambda self, text, stream_end=False: (chunks.append(text), original(self, text, stream_end)))
    status, out, _ = run_cli("generate", folders[0], "the cat sat", "--max-new-tokens", NEW)
    assert status == 0
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) + "\n" == out


@pytest.mark.parametrize("args, message", [
    (["hello", "--temperature", "0.5"], "--temperature only applies with --do-sample"),
    (["hello", "--do-sample", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    ([], "give exactly one of PROMPT and --prompts-file"),
    (["hello", "--prompts-file", "x.txt"], "give exactly one of PROMPT and --prompts-file"),
    (["--prompts-file", "missing.txt"], "--prompts-file missing.txt: no such file"),
    (["--prompts-file", "EMPTY"], "no prompts (the file has no non-blank line)"),
    (["hello", "--assistant", "x", "--prompt-lookup", "2"], "give --assistant or --prompt-lookup, not both"),
    (["hello", "--num-assistant-tokens", "3"], "--num-assistant-tokens only applies with --assistant"),
    (["--prompts-file", "EMPTY", "--prompt-lookup", "2"], "one sequence at a time: add --batch-size 1"),
    (["hello", "--stats"], "--stats compares speculative with plain decoding: give --assistant or --prompt-lookup"),
    (["--prompts-file", "EMPTY", "--prompt-lookup", "2", "--batch-size", "1", "--stats"],
     "--stats applies to one PROMPT, not --prompts-file"),
    (["hello", "--assistant", "no-such-draft"], "--assistant no-such-draft: no such folder, and not a shipped model "
     "(griffin-austen-6m, griffin-austen-draft-1m) or a Hub id (user/repo)"),
])
def test_bad_arguments_are_one_line_errors(folders, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").write_text("\n  \n")
    status, out, err = run_cli("generate", folders[0], *args)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_folder_without_tokenizer_or_config_is_named(folders, tmp_path):
    bare = tmp_path / "bare"
    save_tiny_folder(bare)
    for f in bare.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    status, _, err = run_cli("generate", bare, "hello")
    assert status == 2 and f"{bare}: no tokenizer files" in err and "--tokenizer" in err
    status, _, err = run_cli("generate", bare, "hello", "--tokenizer", folders[0])
    assert status == 0, err
    status, _, err = run_cli("generate", tmp_path, "hello")
    assert status == 2 and f"{tmp_path}: not a model folder (no config.json)" in err

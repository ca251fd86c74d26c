"""Speculative decoding through the commands: `generate --stats` prints the acceptance and the speed-up as the demo
does, and an assisted run prints no Transformers warning in the middle of the streamed text (the draft is handed
one GenerationConfig a round: commands/speculative.py says why)."""

import os
import subprocess
import sys

import pytest
from command_helpers import ONE_THREAD, REPO, run_command, save_tiny_folder
from reference_helpers import run_cli

NEW = 12
pytestmark = pytest.mark.usefixtures("one_thread")
# What Transformers 5.19-5.24 print when the draft gets a config beside generation arguments and processors the
# config makes again (commands/speculative.py).
LIBRARY_NOISE = ("Passing `generation_config` together with generation-related arguments", "has been passed to "
                 "`.generate()`, but it was also created in `.generate()`")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("speculative-cli")
    return save_tiny_folder(root / "target", seed=1), save_tiny_folder(root / "draft", seed=4,
                                                                        block_types=["recurrent"] * 2)


SAMPLED = ["--do-sample", "--temperature", "0.8", "--top-k", "20", "--seed", "3"]


def test_unhooked_assisted_generate_prints_the_library_warnings(folders):
    """The control: Transformers' own assisted generate() with these settings prints both warnings, so their
    absence from the command's stderr below means the command avoided them."""
    target, draft = folders
    script = ("import sys, torch; from transformers import AutoModelForCausalLM as M, AutoTokenizer as T\n"
              f"m = M.from_pretrained({str(target)!r}); d = M.from_pretrained({str(draft)!r})\n"
              f"ids = T.from_pretrained({str(target)!r})('the cat sat', return_tensors='pt')\n"
              "m.generate(**ids, assistant_model=d, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20, "
              "repetition_penalty=1.2, pad_token_id=0)\n")
    run = subprocess.run([sys.executable, "-c", "import hf_recurrentgemma\n" + script], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env={**os.environ, **ONE_THREAD})
    assert run.returncode == 0, run.stderr[-2000:]
    for message in LIBRARY_NOISE:
        assert message in run.stderr, message


def test_assisted_sampling_prints_no_library_warning_and_its_stats(folders):
    """In a fresh process (Transformers' warnings are printed once per process): sampling with every sampling flag
    and a repetition penalty, the settings that made the draft's generate() warn."""
    target, draft = folders
    run = run_command("generate", target, "the cat sat on the mat; the cat sat", "--assistant", draft,
                      "--repetition-penalty", "1.2", "--max-new-tokens", NEW, "--stats", *SAMPLED)
    assert run.returncode == 0, run.stderr[-2000:]
    for message in LIBRARY_NOISE:
        assert message not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert any(line.startswith("acceptance: ") and " proposed tokens" in line and " rounds" in line for line in lines)
    comparison = [line for line in lines if line.startswith("plain decoding for comparison: ")]
    assert len(comparison) == 1 and "speed-up" in comparison[0], run.stderr
    assert "a different sample from the same distribution" in comparison[0]


@pytest.mark.parametrize("flags", [["--assistant", "DRAFT", "--num-assistant-tokens", "2"], ["--prompt-lookup", "3"]],
                         ids=["assistant", "prompt-lookup"])
def test_greedy_stats_compare_with_plain_decoding_of_the_same_text(folders, flags):
    target, draft = folders
    flags = [str(draft) if flag == "DRAFT" else flag for flag in flags]
    prompt = "abc abc abc abc the cat sat"
    status, out, err = run_cli("generate", target, prompt, "--max-new-tokens", NEW, "--stats", *flags)
    assert status == 0, err
    status, plain, _ = run_cli("generate", target, prompt, "--max-new-tokens", NEW)
    assert status == 0 and out == plain  # what streamed is plain greedy's text
    acceptance = [line for line in err.splitlines() if line.startswith("acceptance: ")]
    assert len(acceptance) == 1 and " rounds" in acceptance[0], err
    assert "plain decoding for comparison: " in err and "the same text" in err and "speed-up" in err

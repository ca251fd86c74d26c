"""Speculative decoding of Griffin in vLLM with n-gram drafts (prompt lookup): each request owns 1 + k state slots,
the verify step writes the recurrent state after every draft token into its own slot, and the next step starts from
the slot of the last accepted token (`GriffinRecurrentBlock._verify`).

In float32 the greedy tokens must be the reference package's (which vLLM's non-speculative greedy tokens equal:
tests/serving/test_vllm.py) and the chosen tokens' logprobs within `LOGPROB_TOL`, over prompts that copy a lot (drafts
accepted), prompts that do not (drafts rejected, the state rolled back), a one-token prompt, all in one batch; the
engine must really have accepted and rejected drafts (vLLM's spec-decode counters). One engine for the module,
`enforce_eager=True` (compiled mode is the prefix-caching test's; the verify path runs inside the same custom op).
"""

import gc

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; "
                                          "docs/serving.md)")

from reference_helpers import A, Case, R, reference_and_ours
from test_vllm import LOGPROB_TOL, _engine_env, reference_greedy

NEW_TOKENS = 24
DRAFTS = 3
CASE = Case("griffin", (R, R, A, R, A), width=64, mlp_width=96, num_heads=2, window=6)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(reference model, LLM with n-gram speculation, 3 drafts a step, vLLM's metrics on)."""
    _engine_env()
    ref, ours = reference_and_ours(CASE)
    folder = tmp_path_factory.mktemp("speculative")
    ours.save_pretrained(folder)
    llm = vllm.LLM(str(folder), dtype="float32", enforce_eager=True, max_model_len=256, skip_tokenizer_init=True,
                   max_num_seqs=8, max_num_batched_tokens=64, disable_log_stats=False, seed=0,
                   speculative_config={"method": "ngram", "num_speculative_tokens": DRAFTS,
                                       "prompt_lookup_min": 2, "prompt_lookup_max": 4})
    yield ref, llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    piece = torch.randint(3, CASE.vocab_size, (30,), generator=g).tolist()
    return [
        piece * 3 + piece[:10],  # copy-heavy: the continuation is in the prompt
        torch.randint(3, CASE.vocab_size, (40,), generator=g).tolist(),
        [5, 6, 7] * 4,
        [9],
        torch.randint(3, CASE.vocab_size, (90,), generator=g).tolist(),
    ]


def _counter(llm, name: str) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == name)


def test_ngram_speculation_equals_reference(served):
    ref, llm = served
    config = llm.llm_engine.vllm_config
    assert config.num_speculative_tokens == DRAFTS
    # The plugin switches prefix caching off under speculation (vLLM CPU cannot move the states: config.py).
    assert not config.cache_config.enable_prefix_caching
    prompts = _prompts()
    drafts_before = _counter(llm, "vllm:spec_decode_num_draft_tokens")
    accepted_before = _counter(llm, "vllm:spec_decode_num_accepted_tokens")
    params = vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False,
                                 logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    worst = 0.0
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        want_ids, want_logprobs = reference_greedy(ref, prompt, NEW_TOKENS)
        assert list(completion.token_ids) == want_ids, f"prompt of {len(prompt)} tokens"
        got = [step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids)]
        worst = max(worst, *(abs(a - b) for a, b in zip(got, want_logprobs)))
    assert worst < LOGPROB_TOL, f"logprobs differ from the reference's by up to {worst:.2e}"
    drafts = _counter(llm, "vllm:spec_decode_num_draft_tokens") - drafts_before
    accepted = _counter(llm, "vllm:spec_decode_num_accepted_tokens") - accepted_before
    assert accepted > 0, "no draft accepted: the multi-token verify path was not exercised"
    assert drafts > accepted, "no draft rejected: the state roll-back was not exercised"


def test_griffin_draft_model_is_refused_with_vllms_reason(tmp_path):
    """A Griffin draft (as the shipped draft-1m) is refused while vLLM builds its config, before any engine starts,
    naming where vLLM 0.32 fails (its drafter runs no state layers: vllm_plugin/config.py, STATE_DRAFT_REFUSAL)."""
    _, ours = reference_and_ours(CASE)
    ours.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"draft model with recurrent \(state\) layers.*llm_base_proposer\.py"):
        vllm.LLM(str(tmp_path), dtype="float32", enforce_eager=True, max_model_len=256, skip_tokenizer_init=True,
                 speculative_config={"method": "draft_model", "model": str(tmp_path), "num_speculative_tokens": 2})

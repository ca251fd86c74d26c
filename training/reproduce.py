"""The paper's central claims at our scale: Griffin, Hawk and a Transformer of equal size, trained on the same tokens.

    python -m training.reproduce --runs runs/ --corpus corpus/ --tokenizer src/hf_recurrentgemma/assets/griffin-austen/tokenizer.model \
        [--sample-length 16384] [--context 4096] [--out docs/data/reproduction.json] [--img docs/img]

Measures, for each model trained by training/train.py:
  1. held-out loss against tokens seen (from its metrics.json), plotted;
  2. a continuation of the same prompt (same seed, same sampling settings);
  3. sampling throughput and memory against generated length, up to --sample-length tokens, one sequence: the time
     of every decoding step, the process RSS, and the bytes of the returned cache;
  4. the longest generation whose cache fits a fixed memory budget (from the measured cache bytes per token);
  5. extrapolation: held-out loss per position over contexts of --context tokens, longer than the training length.
Needs quiet cores for the timings (nothing else running); prints tables and writes JSON and PNG plots.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList, set_seed

import hf_recurrentgemma  # noqa: F401  (registers "griffin" with the Auto classes)

from training.models import ARCHS, TRAIN_LENGTH
from training.train import documents

PROMPT = "Anne had not been two days at Uppercross before"
BUDGET_MIB = 64  # the fixed memory budget for the cache in claim 4
CHECKPOINTS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cache_bytes(cache) -> int:
    """Bytes held by a generate() cache: GriffinCache.nbytes(), or the key/value tensors of a Transformers cache."""
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.nbytes
    return total


class StepRecorder(LogitsProcessor):
    """Called once per generated token: records the time and, at the checkpoints, the RSS."""

    def __init__(self, prompt_length: int):
        self.prompt_length, self.times, self.rss = prompt_length, [], {}

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        generated = input_ids.shape[1] - self.prompt_length + 1  # the token being chosen now
        if generated in CHECKPOINTS or generated == 1:
            self.rss[generated] = rss_mib()
        return scores


def load(run: Path):
    model = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32).eval()
    return model


@torch.no_grad()
def sample(model, tokenizer, length: int, seed: int = 0) -> dict:
    """One sampled generation of `length` tokens; per-checkpoint throughput, RSS and final cache bytes."""
    ids = torch.tensor([[2] + tokenizer.encode(PROMPT)])
    recorder = StepRecorder(ids.shape[1])
    set_seed(seed)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=length, min_new_tokens=length, do_sample=True, temperature=0.8,
                         top_p=0.95, top_k=50, logits_processor=LogitsProcessorList([recorder]),
                         return_dict_in_generate=True, pad_token_id=0)
    times = [start] + recorder.times
    rows = []
    for n in [c for c in CHECKPOINTS if c <= length]:
        window = times[max(1, n // 2):n + 1]  # the second half of the tokens up to n: the rate at that length
        rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else float("nan")
        rows.append({"generated": n, "tokens_per_s_at": rate, "seconds_total": times[n] - times[0],
                     "rss_mib": recorder.rss.get(n)})
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return {"rows": rows, "cache_bytes_at_end": cache_bytes(cache), "length": length,
            "rss_start_mib": recorder.rss.get(1)}


def median_sampling(runs: list[dict]) -> dict:
    """Per-checkpoint median rate and time over repeated sampling runs (the cache is the same in every run)."""
    rows = []
    for i, row in enumerate(runs[0]["rows"]):
        rates = [r["rows"][i]["tokens_per_s_at"] for r in runs]
        totals = [r["rows"][i]["seconds_total"] for r in runs]
        rows.append({**row, "tokens_per_s_at": statistics.median(rates), "tokens_per_s_runs": rates,
                     "seconds_total": statistics.median(totals), "rss_mib": max(r["rows"][i]["rss_mib"] for r in runs)})
    return {**runs[0], "rows": rows, "repeats": len(runs)}


@torch.no_grad()
def continuation(model, tokenizer, tokens: int = 120, seed: int = 0) -> str:
    ids = torch.tensor([[2] + tokenizer.encode(PROMPT)])
    set_seed(seed)
    out = model.generate(ids, max_new_tokens=tokens, do_sample=True, temperature=0.8, top_p=0.95, top_k=50,
                         repetition_penalty=1.1, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


@torch.no_grad()
def loss_per_position(model, tokens: list[int], context: int, bucket: int) -> list[float]:
    """Mean held-out loss at each bucket of positions, over consecutive windows of `context` tokens."""
    sums, counts = torch.zeros(context - 1, dtype=torch.float64), 0
    for start in range(0, len(tokens) - context + 1, context):
        window = torch.tensor([tokens[start:start + context]])
        logits = model(input_ids=window).logits.float()
        losses = F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="none")
        sums += losses.double()
        counts += 1
    per_position = (sums / counts).tolist()
    return [statistics.fmean(per_position[i:i + bucket]) for i in range(0, context - 1, bucket)]


def plot(results: dict, img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, r in results["models"].items():
        evals = list({e["step"]: e for e in r["metrics"]["evals"]}.values())  # the final evaluation repeats the last
        ax.plot([e["tokens"] / 1e6 for e in evals], [e["loss"] for e in evals], marker="o", label=arch)
    ax.set(xlabel="training tokens (millions)", ylabel="held-out loss (nats/token)",
           title="Held-out loss (Persuasion) against tokens seen")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, img / "repro_heldout_loss.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arch, r in results["models"].items():
        rows = r["sampling"]["rows"]
        left.plot([x["generated"] for x in rows], [x["tokens_per_s_at"] for x in rows], marker="o", label=arch)
        right.plot([x["generated"] for x in rows], [r["cache_mib_at"][str(x["generated"])] for x in rows],
                   marker="o", label=arch)
    left.set(xscale="log", xlabel="tokens generated", ylabel="tokens/s at that length", title="Sampling throughput")
    right.set(xscale="log", yscale="log", xlabel="tokens generated", ylabel="cache (MiB)",
              title="Inference state memory")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    written.append(_save(fig, img / "repro_sampling.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, r in results["models"].items():
        curve = r["extrapolation"]
        ax.plot([(i + 0.5) * results["bucket"] for i in range(len(curve))], curve, label=arch)
    ax.axvline(TRAIN_LENGTH, color="grey", linestyle="--", label=f"training length {TRAIN_LENGTH}")
    ax.set(xlabel="position in context", ylabel="held-out loss (nats/token)",
           title=f"Extrapolation: loss per position, contexts of {results['context']}")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, img / "repro_extrapolation.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--sample-length", type=int, default=16384)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--bucket", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("docs/data/reproduction.json"))
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--repeats", type=int, default=3, help="sampling runs per model; rates are their median")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count())

    import sentencepiece as spm

    tokenizer = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    heldout = [t for doc in documents(args.corpus / "heldout.txt") for t in [2] + tokenizer.encode(doc) + [1]]
    results = {"prompt": PROMPT, "context": args.context, "bucket": args.bucket, "budget_mib": BUDGET_MIB,
               "torch_threads": torch.get_num_threads(), "models": {}}
    for arch in args.archs:
        run = args.runs / arch
        model = load(run)
        metrics = json.loads((run / "metrics.json").read_text())
        print(f"== {arch}: {metrics['parameters']:,} parameters, {metrics['tokens_seen']:,} tokens seen, "
              f"held-out loss {metrics['heldout_loss']:.3f} (perplexity {metrics['heldout_perplexity']:.1f})",
              flush=True)
        text = continuation(model, tokenizer)
        print(f"   {PROMPT}{text}\n", flush=True)
        runs = [sample(model, tokenizer, args.sample_length) for _ in range(args.repeats)]
        sampling = median_sampling(runs)
        per_token = sampling["cache_bytes_at_end"] / (args.sample_length + len(tokenizer.encode(PROMPT)) + 1)
        grows = arch == "transformer"
        cache_mib_at = {str(r["generated"]): (per_token * r["generated"] if grows else
                                              sampling["cache_bytes_at_end"]) / 2**20 for r in sampling["rows"]}
        longest = (int(BUDGET_MIB * 2**20 / per_token) if grows else None)  # None: no limit from the cache
        for r in sampling["rows"]:
            print(f"   {r['generated']:>6} tokens: {r['tokens_per_s_at']:7.1f} tokens/s, RSS {r['rss_mib']:.0f} MiB, "
                  f"cache {cache_mib_at[str(r['generated'])]:.2f} MiB", flush=True)
        extrapolation = loss_per_position(model, heldout, args.context, args.bucket)
        inside = statistics.fmean(extrapolation[: TRAIN_LENGTH // args.bucket])
        beyond = statistics.fmean(extrapolation[TRAIN_LENGTH // args.bucket:])
        last = statistics.fmean(extrapolation[-(1024 // args.bucket):])
        print(f"   loss at positions < {TRAIN_LENGTH}: {inside:.3f}; beyond: {beyond:.3f}; last 1024: {last:.3f}",
              flush=True)
        results["models"][arch] = {
            "metrics": {k: metrics[k] for k in ("parameters", "tokens_seen", "heldout_loss", "heldout_perplexity",
                                                "evals", "steps", "batch_size", "train_length")},
            "continuation": text, "sampling": sampling, "cache_mib_at": cache_mib_at,
            "cache_bytes_per_token": per_token if grows else 0.0,
            "longest_in_budget_tokens": longest, "extrapolation": extrapolation,
            "loss_inside_training_length": inside, "loss_beyond_training_length": beyond,
            "loss_last_1024": last,
        }
        del model
    results["plots"] = plot(results, args.img)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} and {', '.join(results['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

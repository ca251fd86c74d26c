"""What verifying a speculative draft costs: a forward over k + 1 tokens against a one-token forward, k = 1..15,
on the recurrentgemma-2b shape (26 layers, the 256k-token head included, random weights, bfloat16), with the CPU
kernels as they run by default and with lower variants forced (`HF_RECURRENTGEMMA_CPU_ISA`, read at every call).

    python -m benchmarks verify-cost [--layers 26] [--variants native,bf16-dot,fp32-fma-256] [--repeats 5]
        [--threads 1] [--json PATH] [--shape 2b|tiny]

Every forward starts from a copy (made outside the clock) of one cache holding an 8-token prompt, as a
verification does; sizes are taken in turn (1, 2, ..., 16, 1, 2, ...) so a change of load hits all of them, and the
first round warms up. Figures: the median seconds of each size and its ratio to one token. The run also checks, per
variant, that the 5- and 16-token forwards give bit for bit the logits of as many one-token forwards (the batch
invariance that makes greedy speculation equal plain greedy, docs/speculative.md).

Targets (issue 22): 5 tokens (k = 4) at most 1.3x one token in bfloat16 on AVX-512, at most 1.6x with the AVX2
variant forced.
"""

import argparse
import copy
import json
import os
import statistics
import time

import torch

from benchmarks.common import busy_warning, machine
from benchmarks.models import big_config, random_griffin
from hf_recurrentgemma.griffin.cache_griffin import GriffinCache
from hf_recurrentgemma.griffin.cpu_matvec_griffin import MAX_ROWS, matvec_variant

ISA_VARIABLE = "HF_RECURRENTGEMMA_CPU_ISA"
TARGETS = {"fp32-fma-256": 1.6}  # 5 tokens against one; every AVX-512 variant: 1.3
AVX512_TARGET = 1.3
PROMPT_TOKENS = 8



def forward_costs(model, cache: GriffinCache, tokens: torch.Tensor, repeats: int) -> dict[int, list[float]]:
    """Seconds of a forward over T = 1..MAX_ROWS new tokens, each from its own copy of `cache`."""
    runs = {t: [] for t in range(1, MAX_ROWS + 1)}
    for round_ in range(repeats + 1):
        for t in runs:
            state = copy.deepcopy(cache)
            start = time.perf_counter()
            model(tokens[:, :t], cache=state, use_cache=True, logits_to_keep=t)
            if round_:  # the first round warms up
                runs[t].append(time.perf_counter() - start)
    return runs


def invariant(model, cache: GriffinCache, tokens: torch.Tensor, t: int) -> bool:
    """Whether a T-token forward gives the logits of T one-token forwards, bit for bit."""
    together = model(tokens[:, :t], cache=copy.deepcopy(cache), use_cache=True, logits_to_keep=t).logits
    state, alone = copy.deepcopy(cache), []
    for i in range(t):
        alone.append(model(tokens[:, i : i + 1], cache=state, use_cache=True).logits)
    return torch.equal(together, torch.cat(alone, dim=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["2b", "tiny"], default="2b")
    parser.add_argument("--layers", type=int, default=26, help="depth at the 2B shape (26 is recurrentgemma-2b)")
    parser.add_argument("--variants", default="native,bf16-dot,fp32-fma-256",
                        help="comma list: 'native' (what this CPU runs by default) or a capability to cap at")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine("cpu")
    print(f"{info['cpu']} ({', '.join(info['cpu_flags'])}), {args.threads} thread(s), torch {info['torch']}, "
          f"load {info['load_average_at_start']:.2f} at start")
    warning = busy_warning(info)
    if warning:
        print(warning)

    config = big_config(args.layers, args.shape)
    model = random_griffin(config, torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{args.shape} shape, {args.layers} layers, bfloat16, random weights: {weights / 2**30:.2f} GiB")
    torch.manual_seed(1)
    prompt = torch.randint(4, config.vocab_size, (1, PROMPT_TOKENS))
    tokens = torch.randint(4, config.vocab_size, (1, MAX_ROWS))
    before = os.environ.get(ISA_VARIABLE)
    results = {"machine": info, "shape": args.shape, "layers": args.layers, "weight_bytes": weights, "variants": {}}
    try:
        with torch.inference_mode():
            for name in args.variants.split(","):
                if name == "native":
                    os.environ.pop(ISA_VARIABLE, None)
                else:
                    os.environ[ISA_VARIABLE] = name
                variant = matvec_variant("bf16")
                cache = GriffinCache(config, batch_size=1, dtype=torch.bfloat16)
                model(prompt, cache=cache, use_cache=True, logits_to_keep=1)
                load = os.getloadavg()[0]
                runs = forward_costs(model, cache, tokens, args.repeats)
                one = statistics.median(runs[1])
                sizes = {t: {"median_s": statistics.median(r), "runs_s": r,
                             "relative_to_one": statistics.median(r) / one} for t, r in runs.items()}
                checks = {t: invariant(model, cache, tokens, t) for t in (5, MAX_ROWS)}
                target = TARGETS.get(variant, AVX512_TARGET)
                ratio5 = sizes[5]["relative_to_one"]
                results["variants"][name] = {"variant": variant, "load_before": load, "load_after":
                                             os.getloadavg()[0], "sizes": sizes, "invariant": checks,
                                             "five_tokens_target": target, "five_tokens_met": ratio5 <= target}
                print(f"\n{name} (kernel variant {variant}), load {load:.2f} -> {os.getloadavg()[0]:.2f}: "
                      f"one token {one * 1e3:.1f} ms")
                print("  tokens  " + " ".join(f"{t:>5d}" for t in sizes))
                print("  x one   " + " ".join(f"{s['relative_to_one']:5.2f}" for s in sizes.values()))
                print(f"  5 tokens: {ratio5:.2f}x one token (target <= {target}x: "
                      f"{'met' if ratio5 <= target else 'missed'}); T-token logits equal T one-token steps: "
                      + ", ".join(f"T={t} {'yes' if ok else 'NO'}" for t, ok in checks.items()))
    finally:
        if before is None:
            os.environ.pop(ISA_VARIABLE, None)
        else:
            os.environ[ISA_VARIABLE] = before
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

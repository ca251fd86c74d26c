"""Speculative decoding on CPU (issue 14): what assisted and prompt-lookup decoding buy through `generate()`.

    python -m benchmarks speculative [--threads 1] [--repeats 3] [--json docs/data/speculative.json]
        [--img-dir docs/img] [--big-layers 26] [--skip-shipped] [--skip-big] [--isa native|avx2]

Two sections, one run, medians of `--repeats` runs taken in turn (a, b, c, a, b, c, ...):

- **shipped**: the model this package ships (`griffin-austen-6m`, float32, as the demo runs it) decoding greedily,
  plainly, with its trained draft (`draft-1m`, `assistant_model=`) and with prompt lookup
  (`prompt_lookup_num_tokens=`), on a copy-heavy task (the prompt gives a passage and starts it again with one word
  changed, so the continuation rewrites it) and on the demo's free-text prompt. Figures: tokens/s, the speed-up
  over plain greedy, the acceptance rate (accepted / proposed draft tokens), and whether the output is token for
  token plain greedy's.
- **big**: the recurrentgemma-2b shape with random weights in bfloat16 (`--big-weights int8|int4`: weight-only
  int8 or int4, torchao's formats, quantized as `quantize_model` does; issue 22). Random weights make any real draft
  useless, so acceptance is set by construction: an oracle candidate generator proposes plain greedy's own
  continuation, each token replaced by a wrong one with probability 1 - q. Figures: the oracle with q = 1 and k = 4
  against plain greedy, and the speed-up against the measured acceptance rate for k = 2..8, beside the cost of a
  (k+1)-token forward relative to a one-token step (which bounds the speed-up: at most (k+1) / cost).

The oracle is handed to `generate()` by overriding `_get_candidate_generator` on the model instance for the call:
5.24's `generate()` takes no candidate generator argument, and everything else (verification, acceptance,
`cache.crop`) is `generate()`'s own. The speed-up is "speculative tokens/s / plain tokens/s" in the same run:
above 1 means speculation is faster. `--isa avx2` sets HF_RECURRENTGEMMA_CPU_ISA=avx2 (forcing the AVX2 kernels)
where this package's kernels read it; the run reports whether they do.
"""

import argparse
import contextlib
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ISA_VARIABLE = "HF_RECURRENTGEMMA_CPU_ISA"
ISA_CAPS = {"avx2": "fp32-fma-256"}  # the kernels name variants by capability: AVX2 + FMA is 8-lane float32 FMA
if "--isa" in sys.argv[:-1]:  # set before the package is imported, for kernels that read it when they load
    choice = sys.argv[sys.argv.index("--isa") + 1]
    if choice in ISA_CAPS:
        os.environ[ISA_VARIABLE] = ISA_CAPS[choice]

import torch  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.generation.candidate_generator import CandidateGenerator  # noqa: E402

from benchmarks.common import busy_warning, greedy_kwargs, machine, time_interleaved  # noqa: E402
from benchmarks.models import big_config, random_griffin  # noqa: E402

from hf_recurrentgemma import GriffinCache  # noqa: E402
from hf_recurrentgemma.demo import (BUNDLED_DRAFT, BUNDLED_DRAFT_PRESET, BUNDLED_PRESET, BUNDLED_RELEASE,  # noqa: E402
                                    DEFAULT_PROMPT, SAMPLING_DEFAULTS, AcceptanceCounter)

ROOT = Path(__file__).resolve().parent.parent
# The opening of *Persuasion* (public domain), the novel the shipped model never saw. The copy-heavy task gives it,
# then starts it again with one word changed: the continuation is the rest of the passage, rewritten.
PASSAGE = ("Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took "
           "up any book but the Baronetage; there he found occupation for an idle hour, and consolation in a "
           "distressed one.")
COPY_PROMPT = f"{PASSAGE}\n\n{PASSAGE.replace('Somersetshire', 'Devonshire').split(' was ')[0]} was"
TARGETS = {"shipped_draft": 1.5, "shipped_lookup": 1.5, "big_oracle_k4": 3.0}


def cpu_kernel_isa() -> dict:
    """Which instruction-set variants this package's CPU kernels offer, and whether the forcing variable is read."""
    import hf_recurrentgemma

    package = Path(hf_recurrentgemma.__file__).parent
    source = "".join(path.read_text() for path in package.glob("*.py"))
    flags = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "avx2": "avx2" in flags,
            "isa_variable_supported": ISA_VARIABLE in source, "isa_forced": os.environ.get(ISA_VARIABLE)}


def isa_name(isa: dict) -> str:
    if isa["isa_forced"]:
        return f"{isa['isa_forced']} (forced by {ISA_VARIABLE}" + ("" if isa["isa_variable_supported"] else
                                                                    ", which these kernels do not read") + ")"
    return "AVX-512" + (" BF16" if isa["avx512_bf16"] else "") if isa["avx512f"] else (
        "AVX2" if isa["avx2"] else "neither AVX-512 nor AVX2")


class OracleCandidates(CandidateGenerator):
    """Proposes the next `k` tokens of a known continuation (plain greedy's), each replaced by a wrong token with
    probability `1 - q` (seeded), so that the acceptance rate is set by construction."""

    def __init__(self, prompt_length: int, continuation: list[int], k: int, q: float, vocab_size: int, seed: int):
        self.prompt_length, self.continuation, self.k, self.q = prompt_length, continuation, k, q
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs):
        done = input_ids.shape[1] - self.prompt_length
        # Room for the bonus token too, as Transformers' own draft leaves it: no proposal is cut by the length limit.
        proposed = self.continuation[done:done + min(self.k, len(self.continuation) - done - 1)]
        proposed = [t if self.rng.random() < self.q else (t + 1) % self.vocab_size for t in proposed]
        if not proposed:
            return input_ids, None
        return torch.cat([input_ids, torch.tensor([proposed], dtype=input_ids.dtype)], dim=1), None


@contextlib.contextmanager
def oracle_for(model, make):
    """`generate()` of `model` uses `make()` as its candidate generator inside the block (see the docstring)."""
    model._get_candidate_generator = lambda *args, **kwargs: make()
    try:
        yield
    finally:
        del model._get_candidate_generator


def continuation(model, input_ids: torch.Tensor, new_tokens: int, **kwargs) -> list[int]:
    out = model.generate(input_ids, **greedy_kwargs(new_tokens, **kwargs))
    return out[0, input_ids.shape[1]:].tolist()


def paired_speedup(plain_runs: list[float], runs: list[float]) -> float:
    """Median over rounds of plain's time / this method's time in the same round: the runs are taken in turn, so a
    change of the machine's load hits both members of a pair, and this ratio is steadier than a ratio of medians."""
    return statistics.median(p / r for p, r in zip(plain_runs, runs))


def measure(calls: dict, repeats: int) -> dict:
    """name -> {"median_s", "runs_s"}: `calls` timed in turn after one warm-up each."""
    timings = time_interleaved(calls, repeats=repeats)
    return {name: {"median_s": t.median, "runs_s": t.runs} for name, t in timings.items()}


# ---------------------------------------------------------------------------------------------------- shipped model
def converted(release: Path, checkpoint: str, preset: str, out: Path) -> Path:
    from hf_recurrentgemma.convert.pipeline import convert_checkpoint

    return convert_checkpoint(release / checkpoint, out, preset=preset, tokenizer=release / "tokenizer.model",
                              verify=False).out


def shipped_section(target, draft, tokenizer, args) -> dict:
    """Plain decoding, the trained draft and prompt lookup: greedy on the copy-heavy task and on the demo's prompt,
    and sampled with the demo's settings on the demo's prompt (the demo's default run; seeded, so each method
    draws the same sample every run, but speculation draws a different one than plain decoding)."""
    results = {"new_tokens": args.new_tokens, "lookup_tokens": args.lookup, "draft_tokens": args.draft_tokens,
               "draft_threshold": args.draft_threshold, "demo_sampling": SAMPLING_DEFAULTS, "tasks": {}}
    draft.generation_config.num_assistant_tokens = args.draft_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = args.draft_threshold
    methods = {
        "plain": {},
        "draft": dict(assistant_model=draft),
        "lookup": dict(prompt_lookup_num_tokens=args.lookup),
    }
    tasks = {"copy": (COPY_PROMPT, {}), "free": (DEFAULT_PROMPT, {}),
             "demo-sampled": (DEFAULT_PROMPT, dict(do_sample=True, **SAMPLING_DEFAULTS))}
    for task in args.tasks:
        prompt, sampling = tasks[task]
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]

        def run(extra, sampling=sampling, ids=ids):
            set_seed(0)
            return target.generate(ids, **greedy_kwargs(args.new_tokens, **sampling, **extra))

        outputs, counters = {}, {}
        for name, extra in methods.items():  # outputs and acceptance, once (every run is the same)
            counters[name] = AcceptanceCounter()
            with counters[name].watching(target):
                outputs[name] = run(extra)[0, ids.shape[1]:].tolist()
        timings = measure({name: (lambda extra=extra: run(extra)) for name, extra in methods.items()}, args.repeats)
        plain_rate = args.new_tokens / timings["plain"]["median_s"]
        rows = {}
        for name in methods:
            rate = args.new_tokens / timings[name]["median_s"]
            same = outputs[name] == outputs["plain"] if not sampling else None  # samples: not comparable
            rows[name] = {**timings[name], "tokens_per_s": rate, "speedup": rate / plain_rate,
                          "speedup_paired": paired_speedup(timings["plain"]["runs_s"], timings[name]["runs_s"]),
                          "identical_to_plain": same, **({} if name == "plain" else counters[name].as_dict())}
        results["tasks"][task] = {"prompt": prompt, "prompt_tokens": ids.shape[1], "sampling": sampling,
                                  "methods": rows,
                                  "plain_text": tokenizer.decode(outputs["plain"], skip_special_tokens=True)}
    return results


def same_text(identical: bool | None) -> str:
    return "n/a" if identical is None else ("yes" if identical else "NO")


def print_shipped(results: dict) -> None:
    print(f"\nshipped model, {results['new_tokens']} new tokens (draft proposes up to "
          f"{results['draft_tokens']}, prompt lookup up to {results['lookup_tokens']})")
    print(f"  {'task':<12} {'method':<8} {'tokens/s':>9} {'speed-up':>9} {'paired':>7} {'acceptance':>11} "
          f"{'proposed':>9} {'identical':>10}")
    for task, data in results["tasks"].items():
        for name, row in data["methods"].items():
            acc = "-" if row.get("acceptance_rate") is None else f"{row['acceptance_rate']:.2f}"
            print(f"  {task:<12} {name:<8} {row['tokens_per_s']:>9.1f} {row['speedup']:>8.2f}x "
                  f"{row['speedup_paired']:>6.2f}x {acc:>11} "
                  f"{row.get('drafted', '-'):>9} {same_text(row['identical_to_plain']):>10}")
    for task, data in results["tasks"].items():
        print(f"  {task}: plain decoding wrote {data['plain_text'][:150]!r}")


# ------------------------------------------------------------------------------------------------------- 2B shape

def forward_cost(model, prompt: torch.Tensor, tokens: list[int], ks: list[int], repeats: int) -> dict:
    """Seconds of one forward over T = 1 and T = k + 1 new tokens on a cache holding the prompt (each on its own
    copy of that cache, made outside the clock), median of `repeats` after a warm-up, sizes taken in turn."""
    with torch.inference_mode():
        cache = GriffinCache(model.config, batch_size=1, dtype=next(model.parameters()).dtype)
        model(prompt, cache=cache, use_cache=True, logits_to_keep=1)
        sizes = sorted({1, *(k + 1 for k in ks)})
        runs = {t: [] for t in sizes}
        for round_ in range(repeats + 1):
            for t in sizes:
                ids, state = torch.tensor([tokens[:t]]), copy.deepcopy(cache)
                start = time.perf_counter()
                model(ids, cache=state, use_cache=True, logits_to_keep=t)
                if round_:  # the first round warms up
                    runs[t].append(time.perf_counter() - start)
    one = statistics.median(runs[1])
    return {str(t): {"median_s": statistics.median(runs[t]), "runs_s": runs[t],
                     "relative_to_one": statistics.median(runs[t]) / one} for t in sizes}


def big_section(args) -> dict:
    config = big_config(args.big_layers, args.big_shape)
    model = random_griffin(config, torch.bfloat16)
    quantized = 0
    if args.big_weights != "bf16":
        from hf_recurrentgemma.quantization import quantize_model
        from hf_recurrentgemma.griffin.cpu_quant_griffin import is_quantized

        quantize_model(model, args.big_weights, args.big_group_size)
        quantized = sum(is_quantized(getattr(m, "weight", None)) for m in model.modules())
    torch.manual_seed(1)
    prompt = torch.randint(4, config.vocab_size, (1, args.big_prompt))
    n = args.big_new_tokens
    with torch.inference_mode():
        plain_tokens = continuation(model, prompt, n)

        def oracle_call(k, q, seed):
            make = lambda: OracleCandidates(prompt.shape[1], plain_tokens, k, q, config.vocab_size, seed)  # noqa: E731
            counter = AcceptanceCounter()

            def call():
                with oracle_for(model, lambda: counter.wrap(make())):
                    out = model.generate(prompt, **greedy_kwargs(n, prompt_lookup_num_tokens=k))
                return out
            return call, counter

        results = {"layers": args.big_layers, "shape": args.big_shape, "dtype": "bfloat16",
                   "weights": args.big_weights, "quantized_layers": quantized,
                   "group_size": args.big_group_size if args.big_weights == "int4" else None,
                   "prompt_tokens": args.big_prompt, "new_tokens": n,
                   "weight_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30}
        # Headline: plain greedy against the all-accepted oracle, k = 4.
        oracle, counter = oracle_call(4, 1.0, 0)
        out = oracle()
        identical = out[0, prompt.shape[1]:].tolist() == plain_tokens
        acceptance = counter.as_dict()  # of that one run (every run proposes the same)
        timings = measure({"plain": lambda: model.generate(prompt, **greedy_kwargs(n)), "oracle_k4": oracle},
                          args.repeats)
        plain_rate = n / timings["plain"]["median_s"]
        results["plain"] = {**timings["plain"], "tokens_per_s": plain_rate}
        results["oracle_k4"] = {**timings["oracle_k4"], "tokens_per_s": n / timings["oracle_k4"]["median_s"],
                                "speedup": timings["plain"]["median_s"] / timings["oracle_k4"]["median_s"],
                                "speedup_paired": paired_speedup(timings["plain"]["runs_s"],
                                                                 timings["oracle_k4"]["runs_s"]),
                                "identical_to_plain": identical, **acceptance}
        results["forward_cost"] = forward_cost(model, prompt, plain_tokens, args.ks, args.repeats)
        sweep = []
        for k in args.ks:
            for q in args.rates:
                call, counter = oracle_call(k, q, seed=1000 * k + int(100 * q))
                out = call()
                acceptance = counter.as_dict()  # of that one run (the seed is fixed: every run proposes the same)
                seconds = {"runs_s": []}  # the run above was the warm-up
                for _ in range(args.sweep_repeats):
                    start = time.perf_counter()
                    call()
                    seconds["runs_s"].append(time.perf_counter() - start)
                seconds["median_s"] = statistics.median(seconds["runs_s"])
                sweep.append({"k": k, "q": q, **seconds, "tokens_per_s": n / seconds["median_s"],
                              "speedup": timings["plain"]["median_s"] / seconds["median_s"],
                              "identical_to_plain": out[0, prompt.shape[1]:].tolist() == plain_tokens,
                              **acceptance})
                print(f"  big sweep k={k} q={q:.2f}: {sweep[-1]['speedup']:.2f}x, acceptance "
                      f"{sweep[-1]['acceptance_rate']:.2f}", flush=True)
        results["sweep"] = sweep
    return results


def print_big(results: dict) -> None:
    print(f"\n{results['shape']} shape, {results['layers']} layers, bfloat16, {results['weights']} random weights "
          f"({results['weight_gib']:.2f} GiB), {results['new_tokens']} new tokens after {results['prompt_tokens']}")
    p, o = results["plain"], results["oracle_k4"]
    print(f"  plain greedy {p['tokens_per_s']:.2f} tokens/s; oracle k=4 (all accepted) {o['tokens_per_s']:.2f} "
          f"tokens/s = {o['speedup']:.2f}x (paired runs: {o['speedup_paired']:.2f}x), acceptance "
          f"{o['acceptance_rate']:.2f}, identical {o['identical_to_plain']}")
    cost = results["forward_cost"]["5"]["relative_to_one"] if "5" in results["forward_cost"] else None
    if cost:
        per_round = (o["accepted"] + o["rounds"]) / o["rounds"]
        print(f"  from the forward costs: {per_round:.2f} tokens a round for {cost:.2f}x a one-token forward = "
              f"{per_round / cost:.2f}x")
    print("  forward over T new tokens / one-token step: " + ", ".join(
        f"T={t}: {v['relative_to_one']:.2f}x" for t, v in results["forward_cost"].items()))
    print("  sweep: q = probability that a proposed token is right; acceptance = accepted / proposed tokens")
    print(f"  {'k':>3} {'q':>5} {'acceptance':>11} {'tokens/round':>13} {'speed-up':>9} {'identical':>10}")
    for row in results["sweep"]:
        per_round = (row["accepted"] + row["rounds"]) / row["rounds"]
        print(f"  {row['k']:>3} {row['q']:>5.2f} {row['acceptance_rate']:>11.2f} {per_round:>13.2f} "
              f"{row['speedup']:>8.2f}x {same_text(row['identical_to_plain']):>10}")


# -------------------------------------------------------------------------------------------------------- plots
def plot(results: dict, img_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "shipped" in results:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        tasks = results["shipped"]["tasks"]
        names = ["plain", "draft", "lookup"]
        for i, (task, data) in enumerate(tasks.items()):
            rates = [data["methods"][m]["tokens_per_s"] for m in names]
            bars = ax.bar([j + 0.27 * i for j in range(len(names))], rates, width=0.26, label=task)
            ax.bar_label(bars, labels=[f"{data['methods'][m]['speedup']:.2f}x" for m in names], fontsize=8)
        ax.set_xticks([j + 0.27 for j in range(len(names))], ["plain", "trained draft", "prompt lookup"])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"griffin-austen-6m, float32, {results['machine']['threads']} CPU thread(s)")
        ax.legend()
        fig.tight_layout()
        path = img_dir / "speculative_shipped.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    if "big" in results:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        sweep = results["big"]["sweep"]
        for k in sorted({row["k"] for row in sweep}):
            rows = sorted((r for r in sweep if r["k"] == k), key=lambda r: r["q"])
            ax.plot([r["q"] for r in rows], [r["speedup"] for r in rows], marker="o", label=f"k={k}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("per-token acceptance probability (oracle draft with injected wrong tokens)")
        ax.set_ylabel("speed-up over plain greedy")
        big = results["big"]
        ax.set_title(f"{big['shape']} shape, {big['layers']} layers, bfloat16, random weights")
        ax.legend(ncol=2, fontsize=8)
        fig.tight_layout()
        path = img_dir / "speculative_big.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def checks(results: dict) -> list[dict]:
    out = []
    if "copy" in results.get("shipped", {}).get("tasks", {}):
        copy_task = results["shipped"]["tasks"]["copy"]["methods"]
        for name, key in (("draft", "shipped_draft"), ("lookup", "shipped_lookup")):
            row = copy_task[name]
            out.append({"check": f"shipped model, copy task, {name} >= {TARGETS[key]}x plain greedy, same output",
                        "value": row["speedup"], "target": TARGETS[key],
                        "passed": row["speedup"] >= TARGETS[key] and row["identical_to_plain"]})
    if "big" in results:
        o = results["big"]["oracle_k4"]
        out.append({"check": f"2B shape, oracle k=4 >= {TARGETS['big_oracle_k4']}x plain greedy, same output",
                    "value": o["speedup"], "target": TARGETS["big_oracle_k4"],
                    "passed": o["speedup"] >= TARGETS["big_oracle_k4"] and o["identical_to_plain"]})
    return out


def avx2_pass(argv: list[str]) -> dict:
    """This benchmark again in a fresh process with the AVX2 kernels forced (the kernels read the variable when
    they load); its results, printed as it runs."""
    import subprocess

    kept, skip = [], False
    for arg in argv:  # its own JSON and plots go to a scratch folder
        if skip:
            skip = False
        elif arg in ("--json", "--img-dir"):
            skip = True
        elif not arg.startswith(("--json=", "--img-dir=")):
            kept.append(arg)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"\n=== again with {ISA_VARIABLE}=avx2 ===", flush=True)
        subprocess.run([sys.executable, __file__, *kept, "--isa", "avx2", "--avx2-pass", "off", "--json",
                        f"{tmp}/avx2.json", "--img-dir", tmp], check=True, cwd=Path(__file__).parent)
        forced = json.loads(Path(f"{tmp}/avx2.json").read_text())
    forced.pop("plots", None)
    return forced


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "speculative.json")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--target", type=Path, help="converted target folder (default: the shipped 6m, converted)")
    parser.add_argument("--draft", type=Path, help="converted draft folder (default: the shipped draft, converted)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
    parser.add_argument("--draft-tokens", type=int, default=6, help="num_assistant_tokens of the draft")
    parser.add_argument("--draft-threshold", type=float, default=0.4, help="assistant_confidence_threshold")
    parser.add_argument("--tasks", default="copy,free,demo-sampled", help="tasks of the shipped section")
    parser.add_argument("--big-shape", choices=["2b", "tiny"], default="2b")
    parser.add_argument("--big-weights", choices=["bf16", "int8", "int4"], default="bf16",
                        help="big: the target's weights (int8/int4: weight-only, torchao's formats)")
    parser.add_argument("--big-group-size", type=int, default=128, help="big: int4's group size (32, 64, 128)")
    parser.add_argument("--big-layers", type=int, default=26, help="depth at the 2B shape (26 is recurrentgemma-2b)")
    parser.add_argument("--big-prompt", type=int, default=8)
    parser.add_argument("--big-new-tokens", type=int, default=32)
    parser.add_argument("--ks", default="2,3,4,5,6,8", help="draft lengths of the sweep")
    parser.add_argument("--rates", default="1.0,0.9,0.75,0.5", help="q: probability a proposed token is right")
    parser.add_argument("--sweep-repeats", type=int, default=1)
    parser.add_argument("--skip-shipped", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--avx2-pass", choices=["auto", "off"], default="auto",
                        help=f"auto: on a CPU with AVX-512, run again with the AVX2 kernels forced ({ISA_VARIABLE}), "
                             "where the kernels read it")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.rates = [float(q) for q in args.rates.split(",")]
    args.tasks = args.tasks.split(",")
    if unknown := set(args.tasks) - {"copy", "free", "demo-sampled"}:
        parser.error(f"--tasks: unknown task(s) {sorted(unknown)}; known: copy, free, demo-sampled")
    torch.set_num_threads(args.threads)

    info = machine("cpu")
    isa = cpu_kernel_isa()
    results = {"machine": info, "cpu_kernels": isa, "isa": isa_name(isa), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"CPU: {info['cpu']} ({isa_name(isa)}), {args.threads} thread(s), torch {info['torch']}, "
          f"transformers {info['transformers']}")
    if warning := busy_warning(info):
        print(warning)
    start = time.perf_counter()
    if not args.skip_shipped:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            target_dir = args.target or converted(BUNDLED_RELEASE, "6m", BUNDLED_PRESET, Path(tmp) / "6m")
            draft_dir = args.draft or converted(BUNDLED_RELEASE, BUNDLED_DRAFT, BUNDLED_DRAFT_PRESET,
                                                Path(tmp) / "draft")
            target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
            draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(target_dir)
        with torch.inference_mode():
            results["shipped"] = shipped_section(target, draft, tokenizer, args)
        results["shipped"]["parameters"] = {"target": sum(p.numel() for p in target.parameters()),
                                            "draft": sum(p.numel() for p in draft.parameters())}
        print_shipped(results["shipped"])
    if not args.skip_big:
        results["big"] = big_section(args)
        print_big(results["big"])
    results["checks"] = checks(results)
    if args.avx2_pass == "auto" and args.isa == "native" and isa["isa_variable_supported"] and isa["avx512f"]:
        results["avx2_forced"] = avx2_pass(sys.argv[1:] if argv is None else argv)
    results["wall_s"] = time.perf_counter() - start
    results["plots"] = plot(results, args.img_dir)
    print(f"\nTargets of issue 14 on {info['cpu']} ({isa_name(isa)}):")
    for c in results["checks"]:
        print(f"  [{'ok' if c['passed'] else 'MISSED'}] {c['check']}: {c['value']:.2f}x")
    if "avx2_forced" in results:
        print(f"with the AVX2 kernels forced ({ISA_VARIABLE}=avx2):")
        for c in results["avx2_forced"]["checks"]:
            print(f"  [{'ok' if c['passed'] else 'MISSED'}] {c['check']}: {c['value']:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    staged = args.json.with_name(f".{args.json.name}.tmp")
    staged.write_text(json.dumps(results, indent=2) + "\n")
    staged.replace(args.json)
    print(f"wrote {args.json} and {', '.join(results['plots'])} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()

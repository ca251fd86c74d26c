"""Latency against load in vLLM's OpenAI-compatible server: time to first token (TTFT) and time between tokens
(TBT) at 1, 4, 16 and 64 concurrent requests and prompts of 128, 1k and 4k tokens, Griffin (the shipped
griffin-austen-6m) against the equal-size Gemma of `bench_serving_long` (built by its `build_transformer`), same
engine, same flags. Medians and 90th percentiles over requests; a PNG of the curves and a Markdown table.

A cell sends `c` streamed requests at once (random-id prompts, distinct per request, greedy, `--new-tokens` each,
end-of-sequence ignored) and repeats that `max(2, 16 // c)` times, so every cell has at least 16 requests. TTFT is
the first token's arrival after the request was sent; TBT of a request is (last token - first token) / (tokens - 1),
vLLM's "time per output token" (streamed chunks can carry several tokens when the client lags, so single gaps are
not per token). Prefix caching is off for both (each prompt is new anyway).

Run in the vLLM environment (docs/serving.md), from the repository root; on one core:
    VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1 taskset -c 1 \\
        python -m benchmarks serving-latency --json out.json [--models griffin gemma] [--prompts 128 1024 4096]
`--json` merges into an existing file, so a grid too long for one run can be measured in parts. Plot and table
from that file (needs matplotlib, e.g. in the main environment):
    python -m benchmarks serving-latency --from-json out.json --png docs/img/serving-latency.png
"""

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

CONCURRENCY = (1, 4, 16, 64)
PROMPTS = (128, 1024, 4096)
MODELS = ("griffin", "gemma")
LABELS = {"griffin": "Griffin (griffin-austen-6m)", "gemma": "Gemma-style Transformer, equal size"}


def rounds(concurrency: int) -> int:
    return max(2, 16 // concurrency)


async def measure_cell(url: str, model: str, concurrency: int, prompt_tokens: int, new_tokens: int, vocab: int,
                       rng: random.Random) -> list[dict]:
    """Per request: ttft_s, tbt_s, tokens."""
    import aiohttp

    from benchmarks.serving_harness import stream_completion

    out = []
    timeout = aiohttp.ClientTimeout(total=1800)
    # A new connection per request: uvicorn closes idle keep-alive connections after 5 s, and a pooled one reused
    # just then fails on the client side ("Cannot write to closing transport") before the server sees the request.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for _ in range(rounds(concurrency)):
            payloads = [{"model": model, "prompt": [rng.randrange(3, vocab) for _ in range(prompt_tokens)],
                         "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}
                        for _ in range(concurrency)]
            got = await asyncio.gather(*(stream_completion(session, url, p) for p in payloads))
            for g in got:
                if g.status != 200 or g.error or len(g.token_ids) != new_tokens:
                    raise RuntimeError(f"a request failed: status {g.status}, {len(g.token_ids)} tokens, {g.error}")
                out.append({"ttft_s": g.ttft, "tokens": len(g.token_ids),
                            "tbt_s": (g.arrivals[-1] - g.arrivals[0]) / (len(g.token_ids) - 1)})
    return out


def summarise(samples: list[dict]) -> dict:
    def p90(values):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]

    ttft = [s["ttft_s"] for s in samples]
    tbt = [s["tbt_s"] for s in samples]
    return {"requests": len(samples), "ttft_median_s": statistics.median(ttft), "ttft_p90_s": p90(ttft),
            "tbt_median_s": statistics.median(tbt), "tbt_p90_s": p90(tbt)}


def run_model(name: str, folder: str, args, vocab: int, log_dir: Path) -> dict:
    """Every (concurrency, prompt) cell of one model on one server: {"c,P": summary}."""
    from benchmarks.serving_harness import vllm_server

    server_args = ["--dtype", args.dtype, "--max-model-len", str(max(args.prompts) + args.new_tokens),
                   "--max-num-seqs", str(max(args.concurrency)), "--no-enable-prefix-caching", *args.server_args]
    if args.enforce_eager:
        server_args.append("--enforce-eager")
    cells = {}
    rng = random.Random(args.seed)
    with vllm_server(folder, log_dir / f"{name}.log", server_args) as server:
        start = time.perf_counter()
        # Warm-up at every concurrency and prompt length: compiled mode compiles on the first shapes it meets (the
        # plugin's compiled decode step recompiles for new batch sizes until torch's recompile limit, 8, is hit).
        for c in sorted(args.concurrency):
            asyncio.run(measure_cell(server.url, server.model, c, min(args.prompts), 8, vocab, rng))
        for p in sorted(args.prompts):
            asyncio.run(measure_cell(server.url, server.model, 2, p, 4, vocab, rng))
        print(f"{name}: server up, warm-up {time.perf_counter() - start:.1f} s; flags {' '.join(server_args)}",
              flush=True)
        for p in args.prompts:
            for c in args.concurrency:
                start = time.perf_counter()
                samples = asyncio.run(measure_cell(server.url, server.model, c, p, args.new_tokens, vocab, rng))
                row = {**summarise(samples), "seconds": time.perf_counter() - start, "load": os.getloadavg()[0]}
                cells[f"{c},{p}"] = row
                print(f"{name:<8} c={c:<3} prompt={p:<5} TTFT median {1e3 * row['ttft_median_s']:8.1f} ms p90 "
                      f"{1e3 * row['ttft_p90_s']:8.1f} ms | TBT median {1e3 * row['tbt_median_s']:6.1f} ms p90 "
                      f"{1e3 * row['tbt_p90_s']:6.1f} ms ({row['requests']} requests, {row['seconds']:.1f} s, "
                      f"load {row['load']:.1f})", flush=True)
    return {"server_args": server_args, "cells": cells}


def table(figures: dict) -> str:
    """Markdown: one row per (prompt, concurrency), Griffin and Gemma side by side, '-' where not measured."""
    models = [m for m in MODELS if m in figures["models"]]
    head = "| prompt | concurrent | " + " | ".join(
        f"{m} TTFT median / p90 (ms) | {m} TBT median / p90 (ms)" for m in models) + " |"
    rows = [head, "| ---: | ---: | " + " | ".join("---: | ---:" for _ in models) + " |"]
    for p in PROMPTS:
        for c in CONCURRENCY:
            cells = []
            for m in models:
                row = figures["models"][m]["cells"].get(f"{c},{p}")
                cells += (["-", "-"] if row is None else
                          [f"{1e3 * row['ttft_median_s']:.1f} / {1e3 * row['ttft_p90_s']:.1f}",
                           f"{1e3 * row['tbt_median_s']:.1f} / {1e3 * row['tbt_p90_s']:.1f}"])
            if any(x != "-" for x in cells):
                rows.append(f"| {p} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(figures: dict, png: Path) -> None:
    """TTFT and TBT (medians, p90 dashed) against concurrency, one colour per prompt length, one marker per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = dict(zip(PROMPTS, ("tab:blue", "tab:orange", "tab:green")))
    styles = {"griffin": ("o", "-"), "gemma": ("s", ":")}
    for ax, key, title in ((axes[0], "ttft", "time to first token"), (axes[1], "tbt", "time between tokens")):
        for m, data in figures["models"].items():
            for p in PROMPTS:
                pts = [(c, data["cells"][f"{c},{p}"]) for c in CONCURRENCY if f"{c},{p}" in data["cells"]]
                if not pts:
                    continue
                xs = [c for c, _ in pts]
                marker, line = styles[m]
                ax.plot(xs, [1e3 * r[f"{key}_median_s"] for _, r in pts], marker=marker, linestyle=line,
                        color=colours[p], label=f"{m}, prompt {p}")
                ax.plot(xs, [1e3 * r[f"{key}_p90_s"] for _, r in pts], marker=marker, linestyle="none",
                        color=colours[p], alpha=0.35)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("ms (median; faint: p90)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"vLLM {figures.get('vllm', '')} on one CPU core, {figures.get('dtype', '')}: "
                 "Griffin (solid) against an equal-size Gemma (dotted)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted Griffin folder (default: the shipped model)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument("--prompts", nargs="+", type=int, default=list(PROMPTS))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM's eager mode (default: compiled)")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                        help="more server flags, for both models (last on the line)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="merge the figures into this file")
    parser.add_argument("--from-json", type=Path, help="only print the table and plot from this file")
    parser.add_argument("--png", type=Path, help="write the plot here (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.from_json:
        figures = json.loads(args.from_json.read_text())
        print(table(figures))
        if args.png:
            plot(figures, args.png)
        return 0
    if args.model is None:
        from hf_recurrentgemma.demo import prepare

        args.model = prepare(None, None, None, None)
    import vllm

    from benchmarks.bench_serving_long import build_transformer, stored_parameters
    from benchmarks.common import machine

    config = json.loads((args.model / "config.json").read_text())
    info = machine("cpu")
    figures = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"models": {}}
    figures.update(machine=info, dtype=args.dtype, new_tokens=args.new_tokens, vllm=vllm.__version__)
    log_dir = Path(tempfile.mkdtemp(prefix="serving-latency-"))
    print(f"{info['cpu']}; load {os.getloadavg()[0]:.2f}; logs {log_dir}")
    with tempfile.TemporaryDirectory(prefix="bench-latency-gemma-") as gemma_folder:
        folders = {"griffin": str(args.model)}
        if "gemma" in args.models:
            build_transformer(config, stored_parameters(args.model), max(args.prompts) + args.new_tokens + 64,
                              args.dtype, Path(gemma_folder))
            folders["gemma"] = gemma_folder
        for name in args.models:
            result = run_model(name, folders[name], args, config["vocab_size"], log_dir)
            old = figures["models"].get(name, {"cells": {}})
            figures["models"][name] = {"server_args": result["server_args"],
                                       "cells": {**old["cells"], **result["cells"]}}
            if args.json:
                tmp = args.json.with_suffix(args.json.suffix + ".tmp")
                tmp.write_text(json.dumps(figures, indent=2))
                os.replace(tmp, args.json)
    print(table(figures))
    if args.png:
        plot(figures, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

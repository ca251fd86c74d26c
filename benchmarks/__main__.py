"""The one benchmark runner: `python -m benchmarks SECTION [options]` (`--help` after a section shows its options).

    python -m benchmarks                       # lists the sections
    python -m benchmarks suite --quick         # the issue-6 suite (peaks, scan, prefill, decode, throughput,
                                               # training) on toy sizes, a smoke run
    python -m benchmarks speculative --repeats 3

Every section is a module of this package with `main(argv=None)`, registered below with the one line that says
what it measures; figures, ratios and targets are printed by the section itself, in one run.
"""

import importlib
import sys

# name: (module, what it measures). Modules are imported only when their section runs (some need vLLM).
SECTIONS = {
    "suite": ("run_all", "issue 6 in one process: machine peaks, scan backends, prefill, decode, throughput, "
                         "training (its own --only picks sub-sections)"),
    "inference": ("bench_inference", "prefill and decode of ours, the built-in port and the reference, small model"),
    "long-decode": ("bench_long_decode", "decoding far past the window: tokens/s and flat memory"),
    "conversion": ("bench_conversion", "converting a checkpoint: time and peak memory"),
    "verify": ("bench_verify", "a (k+1)-token forward against one token, the linears of a 2B block pair"),
    "verify-cost": ("bench_verify_cost", "a (k+1)-token forward against one token, the whole 2B shape, per variant"),
    "quantized": ("bench_quantized", "int8/int4 weight-only decoding against bfloat16 and the weight-read floor"),
    "speculative": ("bench_speculative", "assisted and prompt-lookup decoding through generate()"),
    "draft-length": ("bench_draft_length", "the shipped draft's speed-up and acceptance against its draft length"),
    "export": ("bench_export", "exported programs (ONNX, ExecuTorch, OpenVINO, Dynamo) against our own decoding"),
    "serving": ("bench_serving", "vLLM against generate() on mixed-length requests (needs vLLM)"),
    "serving-long": ("bench_serving_long", "long generations, Griffin against an equal-size Gemma in vLLM"),
    "serving-compile": ("bench_serving_compile", "vLLM's compiled mode against eager at many concurrent requests"),
    "serving-speculative": ("bench_serving_speculative", "n-gram speculative decoding in vLLM against plain, copy task"),
    "serving-prefix": ("bench_serving_prefix", "vLLM prefix caching: a shared 1k-token prefix, multi-turn chat"),
    "serving-latency": ("bench_serving_latency", "time to first token and between tokens at 1-64 concurrent requests, "
                                                 "prompts 128-4k, Griffin against an equal-size Gemma (needs vLLM)"),
    "soak": ("bench_soak", "the OpenAI server under 2,000 requests from 64 clients: no 5xx, 4xx for malformed, "
                           "greedy equal to alone, flat RSS (needs vLLM)"),
}


def usage() -> str:
    width = max(map(len, SECTIONS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in SECTIONS.items()]
    return "usage: python -m benchmarks SECTION [options]\n\nsections:\n" + "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SECTIONS:
        print(f"unknown section {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{SECTIONS[name][0]}")
    result = module.main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

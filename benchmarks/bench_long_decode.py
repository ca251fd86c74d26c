"""Decodes a long stream token by token through a GriffinCache and prints resident memory and latency as the
context grows: both should stay flat (the cache is fixed-size).

    python -m benchmarks long-decode [--tokens 100000] [--every 10000]

The model is a small random Griffin (width 256, 6 layers R R A R R A, window 128); the numbers show the shape of
the curves on this machine, not the speed of a released model.
"""

import argparse
import time

import torch

from benchmarks.common import rss_mib

from hf_recurrentgemma import GriffinCache, GriffinConfig, GriffinForCausalLM


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=2_000)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = GriffinConfig(vocab_size=1000, hidden_size=256, intermediate_size=768, num_attention_heads=4,
                           block_types=["recurrent", "recurrent", "attention"] * 2, attention_window_size=128)
    model = GriffinForCausalLM(config).eval()
    cache = GriffinCache(config)
    token = torch.tensor([[2]])
    print(f"{'context':>9} {'ms/token':>9} {'RSS MiB':>8} {'cache bytes':>12}")
    start_rss = None
    with torch.inference_mode():
        last = time.perf_counter()
        for step in range(1, args.tokens + 1):
            logits = model(token, cache=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            if step % args.every == 0:
                now = time.perf_counter()
                rss = rss_mib()
                start_rss = start_rss or rss
                print(f"{step:>9} {(now - last) / args.every * 1e3:>9.2f} {rss:>8.1f} {cache.nbytes():>12}", flush=True)
                last = now
    print(f"RSS growth from the first report to the last: {rss - start_rss:+.1f} MiB over {args.tokens} tokens")


if __name__ == "__main__":
    main()

"""Prefill time and decode latency of our model, the reference torch code and Transformers' built-in
`recurrent_gemma`, on the same weights, in one run (float32, CPU).

    python -m benchmarks inference [--width 512] [--layers 6] [--window 256] [--prompts 512,2048]

The built-in runs our weights converted as `export_to_builtin` does (window W + 1, so it computes our function).
Decode steps of ours and the built-in go through `generate()` (greedy); the reference has no such API and runs
its cached forward. Each figure is the median of `--repeats` runs; the ratio column is the other implementation's
time over ours (> 1: ours is faster). `run_all.py` measures all of this and more at the sizes of issue 6; this
script keeps the smaller table of docs/benchmarks.md.
"""

import argparse

import torch

from benchmarks.common import time_it
from benchmarks.models import build_trio, small_config


def median_seconds(fn, repeats: int) -> float:
    return time_it(fn, repeats).median


def build(args):
    trio = build_trio(small_config(args.width, args.layers, args.window, args.vocab))
    return trio.reference, trio.ours, trio.builtin


@torch.inference_mode()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompts", default="512,2048")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    reference, ours, builtin = build(args)
    print(f"width {args.width}, {args.layers} layers, window {args.window}, vocab {args.vocab}, "
          f"{torch.get_num_threads()} threads, float32")
    print(f"{'measure':<28}{'ours':>10}{'reference':>11}{'ratio':>7}{'built-in':>10}{'ratio':>7}")

    for length in map(int, args.prompts.split(",")):
        ids = torch.randint(0, args.vocab, (1, length), generator=torch.Generator().manual_seed(length))
        pos = torch.arange(length)[None]
        t_ours = median_seconds(lambda: ours(ids, use_cache=False), args.repeats)
        t_ref = median_seconds(lambda: reference(ids, pos, return_cache=False), args.repeats)
        t_builtin = median_seconds(lambda: builtin(ids, use_cache=False), args.repeats)
        print(f"{f'prefill {length} tokens (s)':<28}{t_ours:>10.3f}{t_ref:>11.3f}{t_ref / t_ours:>7.2f}"
              f"{t_builtin:>10.3f}{t_builtin / t_ours:>7.2f}")

        token = ids[:, -1:]
        steps = args.decode_steps

        def generate(model, new_tokens):  # greedy, cached; the built-in keeps its recurrent state on modules
            return lambda: model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                          do_sample=False, pad_token_id=0)

        def ref_decode():
            _, cache = reference(ids, pos)
            for step in range(steps):
                reference(token, pos[:, -1:] + 1 + step, cache)

        # Decode latency = (prefill + steps) - prefill, per step; ours and the built-in through generate().
        per_step = {
            "ours": median_seconds(generate(ours, steps + 1), args.repeats)
            - median_seconds(generate(ours, 1), args.repeats),
            "builtin": median_seconds(generate(builtin, steps + 1), args.repeats)
            - median_seconds(generate(builtin, 1), args.repeats),
            "ref": median_seconds(ref_decode, args.repeats) - t_ref,
        }
        per_step = {k: max(v, 0.0) / steps * 1e3 for k, v in per_step.items()}
        print(f"{f'decode after {length} (ms/tok)':<28}{per_step['ours']:>10.2f}{per_step['ref']:>11.2f}"
              f"{per_step['ref'] / per_step['ours']:>7.2f}{per_step['builtin']:>10.2f}"
              f"{per_step['builtin'] / per_step['ours']:>7.2f}")


if __name__ == "__main__":
    main()

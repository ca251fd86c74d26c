"""Section 3: prefill — one forward over a prompt of T tokens, logits at every position, no cache returned
(ours `use_cache=False`, built-in `use_cache=False`, reference `return_cache=False`; the reference always
computes every position's logits, so all three do). Same weights in all three; batch 1; their runs are taken in
turn, so that a change in the machine's load hits all three alike.

Model FLOP/s = (2·(non-embedding params + V·D head)·T + attention 4·D·pairs per attention layer) / seconds, and its
share of the matmul peak of the same dtype measured in section 1.
"""

import torch

from benchmarks.common import at_least, at_most, new_figure, plot_path, ratio, save_figure, time_interleaved
from benchmarks.models import parameter_counts, prefill_flops

NAME = "prefill"


def _target(seq_len: int) -> float | None:
    return 4.0 if seq_len >= 8192 else 2.0 if seq_len >= 2048 else None


def run(ctx) -> None:
    args, device, report = ctx.args, ctx.device, ctx.report
    data = report.section(NAME)["data"]
    config = ctx.config
    counts = parameter_counts(ctx.trio(torch.float32).ours)
    data["params"] = counts
    for dtype_name in args.dtypes:
        dtype = ctx.dtype(dtype_name)
        trio = ctx.trio(dtype)
        rows, per_token = [], {}
        for seq_len in args.prefill_lens:
            ids = torch.randint(0, config.vocab_size, (1, seq_len), device=device,
                                generator=torch.Generator(device=device).manual_seed(seq_len))
            pos = torch.arange(seq_len, device=device)[None]
            calls = {"ours": lambda: trio.ours(ids, use_cache=False)}
            if seq_len <= args.others_max_len:
                calls["builtin"] = lambda: trio.builtin(ids, use_cache=False)
                if trio.reference is not None:
                    calls["reference"] = lambda: trio.reference(ids, pos, return_cache=False)
            failed = lambda name, error: report.note(  # noqa: E731 - e.g. out of memory for T × T masks
                NAME, f"{name} {dtype_name} T={seq_len} failed: {type(error).__name__}: {error}")
            with torch.inference_mode():
                timings = time_interleaved(calls, args.repeats, device, args.max_seconds, on_error=failed)
            times = {name: t.median for name, t in timings.items()}
            if "ours" not in times:
                continue
            flops = prefill_flops(config, counts["non_embedding"], seq_len)
            ours = times["ours"]
            gflops = flops / ours / 1e9
            peak = ctx.peaks.get(f"matmul_{dtype_name}_gflops")
            share = gflops / peak if peak else None
            per_token[seq_len] = ours / seq_len
            entry = {"seconds": times, "model_gflops": gflops, "peak_share": share, "flops": flops}
            data[f"{dtype_name}/T{seq_len}"] = entry
            r_builtin, r_ref = ratio(times.get("builtin"), ours), ratio(times.get("reference"), ours)
            rows.append([str(seq_len), ours, times.get("builtin"), r_builtin, times.get("reference"), r_ref,
                         gflops, None if share is None else f"{100 * share:.0f}%", ours / seq_len * 1e6])
            target = _target(seq_len)
            if target and "builtin" in times:
                report.check(NAME, f"built-in / ours, {dtype_name}, T={seq_len}", r_builtin, f">= {target:g}x",
                             at_least(r_builtin, target))
            if dtype_name == "bf16" and seq_len >= 2048 and share is not None:
                report.check(NAME, f"bf16 model FLOP/s / bf16 matmul peak, T={seq_len}", share, ">= 0.6",
                             at_least(share, 0.6))
        first, last = min(per_token), max(per_token)
        if last != first:
            growth = per_token[last] / per_token[first]
            data[f"{dtype_name}/per_token_growth"] = {"from": first, "to": last, "ratio": growth}
            report.check(NAME, f"ours per-token cost T={last} / T={first}, {dtype_name}", growth, "<= 1.2",
                         at_most(growth, 1.2) if (first, last) == (2048, 32768) or first >= 2048 else None)
        report.table(NAME, f"Prefill, {dtype_name}, batch 1, W={config.attention_window_size}, "
                           f"D={config.hidden_size}, {config.num_hidden_layers} layers (s; ratio = other / ours)",
                     ["T", "ours s", "built-in s", "ratio", "reference s", "ratio", "GFLOP/s", "% peak",
                      "ours µs/token"], rows)


def plot(ctx) -> str | None:
    data = ctx.report.section(NAME)["data"]
    fig, axes = new_figure(len(ctx.args.dtypes))
    drawn = False
    for ax, dtype_name in zip(axes, ctx.args.dtypes):
        series = {}
        for seq_len in ctx.args.prefill_lens:
            for name, s in data.get(f"{dtype_name}/T{seq_len}", {}).get("seconds", {}).items():
                series.setdefault(name, []).append((seq_len, s / seq_len * 1e6))
        for name, points in series.items():
            ax.plot(*zip(*points), "o-", label=name)
            drawn = True
        ax.set(xscale="log", yscale="log", xlabel="prompt length T", ylabel="µs per token", title=dtype_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if not drawn:
        return None
    return save_figure(fig, plot_path(ctx.args.img_dir, "prefill.png"), f"Prefill, batch 1 — {ctx.machine_line}")

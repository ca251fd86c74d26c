"""Section 6: a training step — forward with the LM loss plus backward (no optimizer), fp32 weights, batch 1 —
for ours (plain, with gradient checkpointing, under bf16 autocast) and the built-in (up to
`--train-builtin-max-len`, 2k; it is very slow beyond), against our own inference forward (no grad, `use_cache=False`).
At each T the variants' runs are taken in turn, so that a change in the machine's load hits all of them alike.
"""

import contextlib

import torch

from benchmarks.common import at_least, at_most, new_figure, plot_path, ratio, save_figure, time_interleaved

NAME = "training"


def run(ctx) -> None:
    args, device, report = ctx.args, ctx.device, ctx.report
    data = report.section(NAME)["data"]
    trio = ctx.trio(torch.float32)
    autocast = lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)  # noqa: E731
    variants = {
        "ours": (trio.ours, False, contextlib.nullcontext),
        "ours+checkpointing": (trio.ours, True, contextlib.nullcontext),
        "ours+bf16 autocast": (trio.ours, False, autocast),
        "builtin": (trio.builtin, False, contextlib.nullcontext),
    }
    steps, forward = {}, {}
    for seq_len in args.train_lens:
        ids = torch.randint(3, ctx.config.vocab_size, (1, seq_len), device=device,
                            generator=torch.Generator(device=device).manual_seed(seq_len))
        calls = {name: _step(model, ids, checkpointing, context) for name, (model, checkpointing, context)
                 in variants.items() if name != "builtin" or seq_len <= args.train_builtin_max_len}
        calls["forward"] = _forward(trio.ours, ids)

        def failed(name, error, seq_len=seq_len):
            report.note(NAME, f"{name} T={seq_len} failed: {type(error).__name__}: {error}")

        for name, t in time_interleaved(calls, args.repeats, device, args.max_seconds, on_error=failed).items():
            if name == "forward":
                forward[seq_len] = t.median
            else:
                steps[(name, seq_len)] = t.median
    rows = []
    for seq_len in args.train_lens:
        ours = steps.get(("ours", seq_len))
        rows.append([str(seq_len), forward.get(seq_len), *(steps.get((n, seq_len)) for n in variants),
                     ratio(ours, forward.get(seq_len)), ratio(steps.get(("builtin", seq_len)), ours)])
        data[f"T{seq_len}"] = {"forward_s": forward.get(seq_len), **{n: steps.get((n, seq_len)) for n in variants}}
    report.table(NAME, f"Training step (forward+backward), {ctx.params_line}, fp32 weights, batch 1 (s)",
                 ["T", "ours fwd", *variants, "step/fwd", "built-in/ours"], rows)

    lens = sorted(args.train_lens)
    lo = 2048 if 2048 in lens else lens[0]
    hi = lens[-1]
    for name in ("ours", "ours+checkpointing", "ours+bf16 autocast"):
        if hi != lo and (name, lo) in steps and (name, hi) in steps:
            growth = steps[(name, hi)] / steps[(name, lo)]
            linear_bound = 4.5 * (hi / lo) / 4  # 8k <= 4.5x the 2k step: 12.5% over linear
            report.check(NAME, f"{name} step T={hi} / T={lo}", growth, f"<= {linear_bound:g}",
                         at_most(growth, linear_bound))
        if (name, lo) in steps and lo in forward:
            over_fwd = steps[(name, lo)] / forward[lo]
            report.check(NAME, f"{name} step / ours forward, T={lo}", over_fwd, "<= 4", at_most(over_fwd, 4.0))
            r = ratio(steps.get(("builtin", lo)), steps[(name, lo)])
            report.check(NAME, f"built-in step / {name} step, T={lo}", r, ">= 8x", at_least(r, 8.0))


def _forward(model, ids):
    def forward():
        with torch.inference_mode():
            model(ids, use_cache=False)
    return forward


def _step(model, ids, checkpointing: bool, context):
    """One training step as a call that leaves the model as it found it (eval mode, no checkpointing)."""
    def step():
        model.train()
        if checkpointing:  # the new name where Transformers has it (the old one warns)
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        try:
            with context():
                loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
        finally:
            if checkpointing:
                getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
            model.eval()
    return step


def plot(ctx) -> str | None:
    data = ctx.report.section(NAME)["data"]
    points = {}
    for seq_len in ctx.args.train_lens:
        for name, value in data.get(f"T{seq_len}", {}).items():
            if value is not None:
                points.setdefault(name.replace("forward_s", "ours forward (no grad)"), []).append((seq_len, value))
    if not points:
        return None
    fig, (ax,) = new_figure(1, width=7, height=4.5)
    for name, xy in points.items():
        ax.plot(*zip(*xy), "o-" if "forward" not in name else "s:", label=name)
    lens = ctx.args.train_lens
    ax.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="seconds", xticks=lens,
           xticklabels=[str(n) for n in lens])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, plot_path(ctx.args.img_dir, "training.png"),
                       f"Training step, {ctx.params_line}, batch 1 — {ctx.machine_line}")

"""Section 5: batch throughput of `generate()` — new tokens per second at each batch size as the generated
length grows, ours against a Gemma Transformer of equal width, depth, heads, MLP and vocabulary (global
attention, growing KV cache); and the largest batch whose state fits `--memory-budget-gb`.

One `generate()` per (model, batch) runs to the longest length; a logits processor stamps every step, so the
throughput at each shorter length N is B·N / (time to the N-th token, prefill of the short prompt included).
A generation that passes `--max-seconds` is stopped there and its longer lengths are reported as not reached.
Memory per row: ours `GriffinCache.nbytes()` (constant in length), Gemma's keys and values of every layer at
prompt + N tokens; budget minus the weights, divided by that.
"""

import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from benchmarks.common import StepClock, greedy_kwargs, new_figure, plot_path, save_figure
from benchmarks.models import gemma_kv_bytes, gemma_like, weight_bytes

NAME = "throughput"


class Deadline(StoppingCriteria):
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), time.perf_counter() > self.end, dtype=torch.bool,
                          device=input_ids.device)


def curve(model, batch, prompt_len, new_tokens, device, max_seconds, vocab) -> list[float]:
    """Seconds from the start of `generate()` to each new token."""
    ids = torch.randint(3, vocab, (batch, prompt_len), device=device,
                        generator=torch.Generator(device=device).manual_seed(batch))
    clock = StepClock(device)
    with torch.inference_mode():
        model.generate(ids, **greedy_kwargs(4))  # warm-up at the same shapes
        clock.reset()
        stop = StoppingCriteriaList([Deadline(max_seconds)])
        model.generate(ids, **greedy_kwargs(new_tokens, clock, stopping_criteria=stop))
    return [s - clock.start for s in clock.stamps]


def run(ctx) -> None:
    from hf_recurrentgemma import GriffinCache

    args, device, report = ctx.args, ctx.device, ctx.report
    data = report.section(NAME)["data"]
    ours = ctx.trio(torch.float32).ours
    gemma = gemma_like(ctx.config).to(device)
    models = {"ours": ours, "gemma": gemma}
    longest = max(args.tp_lens)
    curves = {}
    for batch in args.tp_batches:
        for name, model in models.items():
            stamps = curve(model, batch, args.tp_prompt, longest, device, args.max_seconds, ctx.config.vocab_size)
            curves[f"{name}/B{batch}"] = stamps
    data["curves"] = {k: [round(s, 5) for s in v] for k, v in curves.items()}
    rows = []
    for batch in args.tp_batches:
        for n in args.tp_lens:
            values = {}
            for name in models:
                stamps = curves[f"{name}/B{batch}"]
                values[name] = batch * n / stamps[n - 1] if len(stamps) >= n else None
            r = None if None in values.values() else values["ours"] / values["gemma"]
            data[f"B{batch}/N{n}"] = {**values, "ours_over_gemma": r}
            rows.append([str(batch), str(n), values["ours"], values["gemma"], r])
    report.table(NAME, f"generate() throughput, {ctx.params_line}, fp32, prompt {args.tp_prompt} "
                       "(new tokens/s; ratio = ours / Gemma, > 1 means ours faster; '-' = not reached in "
                       f"{args.max_seconds:g} s)", ["batch", "new tokens", "ours tok/s", "Gemma tok/s", "ours/Gemma"],
                 rows)

    # The largest batch within the memory budget, from the state each row holds.
    budget = args.memory_budget_gb * 1e9
    ours_row = GriffinCache(ctx.config, batch_size=1, dtype=torch.float32, device=device).nbytes()
    rows = []
    for n in args.tp_lens:
        gemma_row = gemma_kv_bytes(gemma, 1, args.tp_prompt + n)
        fit = {name: int(max(budget - weight_bytes(m), 0) // row) for name, m, row in
               (("ours", ours, ours_row), ("gemma", gemma, gemma_row))}
        data[f"max_batch/N{n}"] = {"ours_bytes_per_row": ours_row, "gemma_bytes_per_row": gemma_row, **fit}
        rows.append([str(args.tp_prompt + n), ours_row / 2**20, gemma_row / 2**20, fit["ours"], fit["gemma"]])
    report.table(NAME, f"Largest batch in {args.memory_budget_gb:g} GB (weights + state per row, fp32)",
                 ["tokens held", "ours MiB/row", "Gemma MiB/row", "ours max batch", "Gemma max batch"], rows)
    del gemma


def plot(ctx) -> str | None:
    curves = ctx.report.section(NAME)["data"].get("curves")
    if not curves:
        return None
    fig, (ax,) = new_figure(1, width=7, height=4.5)
    colors = {}
    for key, stamps in curves.items():
        name, batch = key.split("/")
        b = int(batch[1:])
        n = list(range(1, len(stamps) + 1))
        step = max(len(n) // 200, 1)  # a few hundred points per line is plenty
        xs, ys = n[::step], [b * k / s for k, s in zip(n[::step], stamps[::step])]
        color = colors.setdefault(batch, f"C{len(colors)}")
        ax.plot(xs, ys, "-" if name == "ours" else "--", color=color, label=f"{name} B={b}")
    ax.set(xscale="log", yscale="log", xlabel="generated tokens N", ylabel="new tokens / s",
           title="solid: ours (Griffin); dashed: Gemma (global attention, KV cache)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, plot_path(ctx.args.img_dir, "throughput.png"),
                       f"generate() throughput, {ctx.params_line}, fp32 — {ctx.machine_line}")

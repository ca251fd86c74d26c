"""Section 2: the RG-LRU scan `h_t = a_t·h_{t-1} + x_t` alone, every backend in `SCAN_BACKENDS` against
"sequential" (the reference loop): forward and forward+backward seconds at (B, T, L), a T sweep for the plot,
and each backend's max abs error against the sequential one (outputs, final state, gradients of x, a, h0).

Inputs are fp32, with a few document resets (`a_t = 0`). The sweep runs first, at batch 1 and increasing T;
where a power law through its last two measured points predicts more than `--max-seconds` (the sequential
backward is quadratic in T), the prediction is reported, marked "est.", instead of a run. The main table's batch-1
row is the sweep's point at its T; other batches run unless B × that time passes `--max-seconds`.
"""

import math

import torch

from benchmarks.common import at_least, fmt, new_figure, plot_path, ratio, save_figure, time_it

NAME = "scan"
TARGET = 10.0


def backends(device) -> dict:
    """The backends that run on `device` (a CUDA-only one is left out on CPU, and the other way round)."""
    from hf_recurrentgemma.griffin import ops_griffin

    device = torch.device(device)
    return {name: fn for name, fn in ops_griffin.SCAN_BACKENDS.items()
            if ops_griffin.scan_backend_available(name, device) is None}


def inputs(batch: int, seq_len: int, width: int, device, seed: int = 0, grad: bool = False):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, seq_len, width, device=device, generator=gen)
    a = torch.rand(batch, seq_len, width, device=device, generator=gen) * 0.1 + 0.89  # trained decays ~0.9..1
    a[:, :: max(seq_len // 4, 1)] = 0.0  # document resets
    h0 = torch.randn(batch, width, device=device, generator=gen)
    return [t.requires_grad_(grad) for t in (x, a, h0)]


def runner(fn, batch, seq_len, width, device, backward: bool):
    x, a, h0 = inputs(batch, seq_len, width, device, grad=backward)
    if not backward:
        def forward():
            with torch.no_grad():
                fn(x, a, h0)
        return forward
    gy, gh = torch.ones(batch, seq_len, width, device=device), torch.ones(batch, width, device=device)

    def forward_backward():
        y, h = fn(x, a, h0)
        torch.autograd.grad((y, h), (x, a, h0), (gy, gh))
    return forward_backward


def extrapolate(points: list[dict], seq_len: int) -> float | None:
    """Seconds at `seq_len` from the last two measured points of a series (power law, exponent at least 1; with
    one point, exponent 2 — the sequential backward is quadratic); None without points."""
    measured = [p for p in points if not p["estimated"]]
    if not measured:
        return None
    last = measured[-1]
    power = 2.0
    if len(measured) >= 2:
        prev = measured[-2]
        power = max(1.0, math.log(last["s"] / prev["s"]) / math.log(last["T"] / prev["T"]))
    return last["s"] * (seq_len / last["T"]) ** power


def series(fn, lens, batch, width, device, backward, repeats, max_seconds) -> list[dict]:
    """Timings at increasing T; once a power law through the last two points predicts more than `max_seconds`,
    the remaining lengths are that prediction, marked estimated, instead of a run."""
    points = []
    for n in lens:
        estimate = extrapolate(points, n)
        if estimate is not None and batch * estimate > max_seconds:
            points.append({"T": n, "s": estimate, "estimated": True})
            continue
        t = time_it(runner(fn, batch, n, width, device, backward), repeats, device, budget_s=max_seconds)
        points.append({"T": n, "s": t.median, "estimated": False, **t.as_dict()})
    return points


def errors(fn, reference, batch, seq_len, width, device) -> dict:
    """Max abs differences against the reference: outputs, final state and the three input gradients."""
    x, a, h0 = inputs(batch, seq_len, width, device, seed=1, grad=True)
    gen = torch.Generator(device=device).manual_seed(2)
    gy = torch.randn(batch, seq_len, width, device=device, generator=gen)
    gh = torch.randn(batch, width, device=device, generator=gen)
    out = {}
    results = []
    for f in (fn, reference):
        y, h = f(x, a, h0)
        results.append((y.detach(), h.detach(), *torch.autograd.grad((y, h), (x, a, h0), (gy, gh))))
    for name, got, want in zip(("y", "h_last", "dx", "da", "dh0"), *results):
        out[name] = (got.float() - want.float()).abs().max().item()
    return out


def run(ctx) -> None:
    args, device, report = ctx.args, ctx.device, ctx.report
    found = backends(device)
    sequential = found["sequential"]
    data = report.section(NAME)["data"]
    data["backends"] = list(found)
    width, seq_len = args.scan_width, args.scan_len
    for fn in found.values():  # first calls may compile or load a kernel: keep that out of every figure
        try:
            runner(fn, 1, 8, width, device, True)()
        except Exception:
            pass  # reported where the backend is timed

    # T sweep at batch 1 (the plot); it also decides which runs of the main table are affordable.
    lens = sorted(set(args.scan_sweep) | {seq_len})
    sweep = {}
    for name, fn in found.items():
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            try:
                sweep[f"{name}/{mode}"] = series(fn, lens, 1, width, device, backward, args.repeats,
                                                 args.max_seconds)
            except Exception as error:  # a backend that cannot run here (device, dtype, missing compiler)
                report.note(NAME, f"backend {name!r} {mode} failed: {type(error).__name__}: {error}")
    data["sweep"] = sweep
    rows = [[key] + [_seconds(p) for p in points] for key, points in sweep.items()]
    report.table(NAME, f"Scan T sweep, B=1, L={width}, fp32 (s)", ["backend/mode", *map(str, lens)], rows)

    # Main table: (B, T) of the issue; batch 1 is the sweep's point, larger batches run unless the sweep
    # predicts (linearly in B) more than --max-seconds.
    rows = []
    for batch in args.scan_batches:
        entries = {}
        for name, fn in found.items():
            entry = {}
            for mode, backward in (("fwd", False), ("fwd+bwd", True)):
                points = sweep.get(f"{name}/{mode}")
                if points is None:
                    continue
                at_len = next(p for p in points if p["T"] == seq_len)
                if batch == 1:
                    entry[mode] = at_len
                elif batch * at_len["s"] > args.max_seconds:
                    entry[mode] = {"T": seq_len, "s": batch * at_len["s"], "estimated": True}
                else:
                    t = time_it(runner(fn, batch, seq_len, width, device, backward), args.repeats, device,
                                budget_s=args.max_seconds)
                    entry[mode] = {"T": seq_len, "s": t.median, "estimated": False, **t.as_dict()}
            if entry:
                entries[name] = entry
                data[f"B{batch}/{name}"] = entry
        seq = entries.get("sequential", {})
        for name, entry in entries.items():
            row = [f"{name} B={batch}"]
            for mode in ("fwd", "fwd+bwd"):
                if mode not in entry:
                    row += ["-", "-"]
                    continue
                speedup = ratio(seq.get(mode, {}).get("s"), entry[mode]["s"])
                estimated = seq.get(mode, {}).get("estimated") or entry[mode]["estimated"]
                row += [_seconds(entry[mode]), fmt(speedup) + (" est." if estimated and speedup else "")]
                if name != "sequential":
                    report.check(NAME, f"{name} vs sequential, {mode}, B={batch} T={seq_len} L={width}"
                                       + (" (est.)" if estimated else ""), speedup, f">= {TARGET:g}x",
                                 at_least(speedup, TARGET))
            rows.append(row)
    report.table(NAME, f"RG-LRU scan, T={seq_len}, L={width}, fp32 (s; ratio = sequential / backend; est. = "
                       f"extrapolated from the sweep, not run, as a run would pass {args.max_seconds:g} s)",
                 ["backend", "fwd s", "seq/this", "fwd+bwd s", "seq/this"], rows)

    # Accuracy at a length where the sequential backward is affordable.
    grad_len = min(seq_len, args.scan_grad_len)
    rows = []
    for name, fn in found.items():
        if name == "sequential":
            continue
        try:
            err = errors(fn, sequential, 1, grad_len, width, device)
        except Exception as error:
            report.note(NAME, f"backend {name!r} accuracy check failed: {error!r}")
            continue
        data[f"errors/{name}"] = {"T": grad_len, **err}
        rows.append([name, grad_len, *(err[k] for k in ("y", "h_last", "dx", "da", "dh0"))])
    if rows:
        report.table(NAME, f"Max abs error vs sequential (B=1, L={width}, fp32, with resets)",
                     ["backend", "T", "y", "h_last", "dx", "da", "dh0"], rows)



def _seconds(entry: dict) -> str:
    return fmt(entry["s"]) + (" est." if entry.get("estimated") else "")


def plot(ctx) -> str | None:
    sweep = ctx.report.section(NAME)["data"].get("sweep")
    if not sweep:
        return None
    fig, (ax_f, ax_b) = new_figure(2)
    for key, points in sweep.items():
        name, mode = key.split("/")
        ax = ax_f if mode == "fwd" else ax_b
        measured = [p for p in points if not p["estimated"]]
        line, = ax.plot([p["T"] for p in measured], [p["s"] for p in measured], "o-", label=name)
        est = [p for p in points if p["estimated"]]
        if est:
            ax.plot([p["T"] for p in est], [p["s"] for p in est], "x--", color=line.get_color(),
                    label=f"{name} (estimated)")
    for ax, mode in ((ax_f, "forward"), (ax_b, "forward + backward")):
        ax.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="seconds", title=mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, plot_path(ctx.args.img_dir, "scan.png"),
                       f"RG-LRU scan, B=1, L={ctx.args.scan_width}, fp32 — {ctx.machine_line}")

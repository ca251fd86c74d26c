"""Section 4: decoding through `generate()` (greedy, a fixed number of new tokens, end-of-sequence off).

Per-token latency = the median interval between consecutive new tokens inside one `generate()` call (a logits
processor stamps each step), median over `--repeats` calls after a warm-up call; prefill is not included.

- small: the section-3 model, batch 1, fp32: ours eager, ours with `cache_implementation="static"` and
  generate's `compile_config` (inductor), the built-in; at each context length of `--decode-contexts`.
- large: a random model of the `--big-preset` shape in bf16, batch 1: ours, the built-in (sharing our tensors),
  ours with torchao weight-only int8; effective weight-reading GB/s (all parameter bytes / s per token) against
  the best rate of section 1; int8's max logit error and greedy-token agreement against bf16.
"""

import gc
import tempfile

import torch

from benchmarks.common import at_least, at_most, decode_latency, greedy_kwargs, new_figure, plot_path, ratio, save_figure
from benchmarks.models import builtin_from_ours, random_griffin

NAME = "decode"


def compile_config(device, backend: str = "inductor"):
    from transformers import CompileConfig

    cuda = torch.device(device).type == "cuda"
    config = CompileConfig(backend=backend, mode="reduce-overhead" if cuda and backend == "inductor" else None)
    config._compile_all_devices = True  # generate() compiles only on GPUs unless told
    return config


def run(ctx) -> None:
    small(ctx)
    if ctx.args.big_preset != "none":
        large(ctx)


def small(ctx) -> None:
    args, device, report = ctx.args, ctx.device, ctx.report
    data = report.section(NAME)["data"]
    trio = ctx.trio(torch.float32)
    variants = {"ours": (trio.ours, {})}
    if args.compile_backend != "none":
        variants["ours static+compile"] = (trio.ours, {"cache_implementation": "static",
                                                       "compile_config": compile_config(device, args.compile_backend)})
    variants["builtin"] = (trio.builtin, {})
    results = {}
    for context in args.decode_contexts:
        ids = torch.randint(3, ctx.config.vocab_size, (1, context), device=device,
                            generator=torch.Generator(device=device).manual_seed(context))
        for name, (model, kwargs) in variants.items():
            if name == "builtin" and context > args.others_max_len:
                continue
            try:
                with torch.inference_mode():
                    got = decode_latency(model, ids, args.decode_tokens, args.repeats, device, **kwargs)
            except Exception as error:
                report.note(NAME, f"{name} at context {context} failed: {type(error).__name__}: {error}")
                continue
            results[(name, context)] = got["per_token_s"]
            data[f"small/{name}/ctx{context}"] = got
    rows = []
    for context in args.decode_contexts:
        ours = results.get(("ours", context))
        row = [str(context)]
        for name in variants:
            value = results.get((name, context))
            row += [None if value is None else value * 1e3]
        row += [ratio(results.get(("builtin", context)), ours),
                ratio(results.get(("ours", context)), results.get(("ours static+compile", context)))]
        rows.append(row)
    report.table(NAME, f"Decode, {ctx.params_line}, batch 1, fp32, through generate() (ms/token)",
                 ["context", *variants, "built-in/ours", "eager/compiled"], rows)
    first, last = min(args.decode_contexts), max(args.decode_contexts)
    for name in [n for n in variants if n.startswith("ours")]:
        value = results.get((name, first))
        report.check(NAME, f"{name}, small model, ms/token at context {first}",
                     None if value is None else value * 1e3, "<= 3 ms", at_most(value, 3e-3))
        if last != first and (name, last) in results and value:
            growth = results[(name, last)] / value
            report.check(NAME, f"{name} per-token latency, context {last} / {first}", growth, "<= 1.1",
                         at_most(growth, 1.1))


def _bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter once, looking inside tensor subclasses (torchao keeps int8 data
    plus scales); the input embedding only where it is also the LM head (a step reads one row of it otherwise,
    as after quantization unties the head)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total, seen = 0, {id(embedding)} if embedding is not head else set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        inner = p.__tensor_flatten__()[0] if hasattr(p, "__tensor_flatten__") else None
        total += sum(getattr(p, n).nbytes for n in inner) if inner else p.numel() * p.element_size()
    return total


def large(ctx) -> None:
    from hf_recurrentgemma import GriffinConfig

    args, device, report = ctx.args, ctx.device, ctx.report
    data = report.section(NAME)["data"]
    config = GriffinConfig.from_preset(args.big_preset, **ctx.big_overrides)
    ids = torch.randint(3, config.vocab_size, (1, args.big_prompt), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    ours = random_griffin(config, torch.bfloat16, device)
    params = sum(p.numel() for p in ours.parameters())
    read_bytes = _bytes(ours)
    results, rows = {}, []

    def measure(name, model, nbytes):
        try:
            with torch.inference_mode():
                got = decode_latency(model, ids, args.big_tokens, args.repeats, device)
        except Exception as error:
            report.note(NAME, f"{name} failed: {type(error).__name__}: {error}")
            return
        got["read_gbs"] = nbytes / got["per_token_s"] / 1e9
        got["weight_bytes"] = nbytes
        results[name] = got
        data[f"large/{name}"] = got

    with torch.inference_mode():
        bf16_logits = ours(ids, use_cache=False).logits.float()
        bf16_tokens = ours.generate(ids, **greedy_kwargs(args.big_tokens))[:, ids.shape[1]:]
    measure("ours bf16", ours, read_bytes)
    builtin = builtin_from_ours(ours)
    measure("builtin bf16", builtin, read_bytes)
    del builtin
    gc.collect()
    quantized = int8_weight_only(ctx, ours)
    if quantized is not None:
        measure("ours int8 (torchao)", quantized, _bytes(quantized))
        with torch.inference_mode():
            q_logits = quantized(ids, use_cache=False).logits.float()
            q_tokens = quantized.generate(ids, **greedy_kwargs(args.big_tokens))[:, ids.shape[1]:]
        accuracy = {"max_abs_logit_error": (q_logits - bf16_logits).abs().max().item(),
                    "logit_scale": bf16_logits.abs().max().item(),
                    "greedy_agreement": (q_tokens == bf16_tokens).float().mean().item(),
                    "argmax_agreement_prompt": (q_logits.argmax(-1) == bf16_logits.argmax(-1)).float().mean().item()}
        data["large/int8_accuracy"] = accuracy
        report.note(NAME, "int8 vs bf16: max |logit error| {max_abs_logit_error:.3g} (max |logit| {logit_scale:.3g}); "
                          "greedy tokens equal {greedy_agreement:.0%}; prompt argmax equal "
                          "{argmax_agreement_prompt:.0%}".format(**accuracy))
    del ours, quantized
    gc.collect()

    best = ctx.peaks.get("best_read_gbs")
    builtin_s = results.get("builtin bf16", {}).get("per_token_s")
    for name, got in results.items():
        share = got["read_gbs"] / best if best else None
        rows.append([name, got["per_token_s"], ratio(builtin_s, got["per_token_s"]), got["weight_bytes"] / 1e9,
                     got["read_gbs"], None if share is None else f"{100 * share:.0f}%"])
    report.table(NAME, f"Decode, {args.big_preset} shape ({params / 1e6:,.0f}M params, random weights), batch 1, "
                       f"prompt {args.big_prompt} (s/token; ratio = built-in / this)",
                 ["model", "s/token", "built-in/this", "GB read", "GB/s", "% best read"], rows)
    ours_s = results.get("ours bf16", {}).get("per_token_s")
    r = ratio(builtin_s, ours_s)
    report.check(NAME, f"{args.big_preset} bf16: built-in / ours", r, ">= 1.5x", at_least(r, 1.5))
    if best and "ours bf16" in results:
        share = results["ours bf16"]["read_gbs"] / best
        report.check(NAME, f"{args.big_preset} bf16: weight GB/s / best read rate", share, ">= 0.8",
                     at_least(share, 0.8))
    if "ours int8 (torchao)" in results:
        r = ratio(builtin_s, results["ours int8 (torchao)"]["per_token_s"])
        report.check(NAME, f"{args.big_preset} int8: built-in bf16 / ours int8", r, ">= 2.5x", at_least(r, 2.5))


def int8_weight_only(ctx, model):
    """torchao weight-only int8 of every linear layer, in place (`quantize_`); also records whether Transformers'
    `TorchAoConfig` loads a saved Griffin folder. Returns None (with the reason noted) when torchao is missing or
    fails."""
    report, data = ctx.report, ctx.report.section(NAME)["data"]
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as error:
        report.note(NAME, f"torchao unavailable ({type(error).__name__}: {error}); int8 skipped. "
                          "Install: pip install -c constraints.txt -e '.[bench]'")
        data["torchao"] = {"quantize_": repr(error)}
        return None
    data["torchao"] = {"TorchAoConfig": torchao_config_check(ctx)}
    try:
        quantize_(model, Int8WeightOnlyConfig())
        data["torchao"]["quantize_"] = "ok"
        return model
    except Exception as error:
        data["torchao"]["quantize_"] = repr(error)
        report.note(NAME, f"torchao quantize_ failed: {type(error).__name__}: {error}")
        return None


def torchao_config_check(ctx) -> str:
    """Saves the small model in bf16 and loads it through `from_pretrained(..., quantization_config=
    TorchAoConfig(Int8WeightOnlyConfig()))`; returns "ok (max logit error ...)" or the error."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    from hf_recurrentgemma import GriffinForCausalLM

    small = ctx.trio(torch.bfloat16).ours
    ids = torch.randint(3, ctx.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as folder:
            small.save_pretrained(folder)
            loaded = GriffinForCausalLM.from_pretrained(
                folder, dtype=torch.bfloat16, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).to(ctx.device)
        kinds = sorted({type(m.weight).__name__ for m in loaded.modules() if isinstance(m, torch.nn.Linear)})
        with torch.inference_mode():
            err = (loaded(ids.to(ctx.device)).logits.float() - small(ids.to(ctx.device)).logits.float()).abs().max()
        result = f"ok (linear weights: {', '.join(kinds)}; max logit error vs bf16 {err.item():.3g})"
    except Exception as error:
        result = f"failed: {type(error).__name__}: {error}"
    finally:
        logging.enable_progress_bar()
    ctx.report.note(NAME, f"Transformers TorchAoConfig(Int8WeightOnlyConfig()) on a saved Griffin: {result}")
    return result


def plot(ctx) -> str | None:
    data = ctx.report.section(NAME)["data"]
    small = {}
    for key, value in data.items():
        if key.startswith("small/"):
            _, name, context = key.split("/")
            small.setdefault(name, {})[int(context[3:])] = value["per_token_s"] * 1e3
    large = {k[len("large/"):]: v["per_token_s"] for k, v in data.items()
             if k.startswith("large/") and isinstance(v, dict) and "per_token_s" in v}
    if not small and not large:
        return None
    fig, axes = new_figure(2 if small and large else 1)
    if small:
        ax = axes[0]
        contexts = sorted({c for values in small.values() for c in values})
        width = 0.8 / len(small)
        for i, (name, values) in enumerate(small.items()):
            xs = [j + i * width for j, c in enumerate(contexts) if c in values]
            ax.bar(xs, [values[c] for c in contexts if c in values], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(contexts))], [f"context {c}" for c in contexts])
        ax.set(ylabel="ms per token", title=f"{ctx.params_line}, batch 1, fp32")
        ax.legend(fontsize=8)
    if large:
        ax = axes[-1]
        ax.bar(range(len(large)), list(large.values()), color=[f"C{i}" for i in range(len(large))])
        ax.set_xticks(range(len(large)), list(large), fontsize=8)
        ax.set(ylabel="s per token", title=f"{ctx.args.big_preset} shape, batch 1")
    return save_figure(fig, plot_path(ctx.args.img_dir, "decode.png"),
                       f"Decode through generate() — {ctx.machine_line}")

"""Weight-only int8 and int4 decoding on CPU: what each path costs against the weight-read floor.

Sections (`--sections`, default all):

    linear   one 2560 -> 15360 linear (the 2B MLP's fused size) and one 2560 -> 2560, 1..16 rows: torch's bf16
             `F.linear`, the package's bf16 few-row kernel, torchao `Int8WeightOnlyConfig`'s own path, the package's
             int8 kernel, torchao 0.18's prototype int4 (torch's `_weight_int4pack_mm_for_cpu`), the package's
             int4 kernel (`cpu_quant_griffin.py`), and the read-rate ceiling (a float32 sum over 256 MB).
    decode   tokens/s at batch 1 at the recurrentgemma-2b shape (26 layers, head included, random weights) in
             bf16, int8 and int4: bytes read per token, the read rate measured in the same run, each figure as a
             fraction of its floor (bytes / read rate); and the (k+1)-token forward against one token, k = 1..15.
    prefill  one --prompt-tokens forward (torchao's and torch's own products) in each format against bfloat16.
    quality  held-out perplexity of the shipped 6M model (--heldout) in bf16, int8 and int4 per group size; logit
             error and greedy agreement against bf16 at the 2B shape.
    big      (not in the default list) --preset's shape, e.g. recurrentgemma-9b, from random weights written shard by
             shard, loaded quantized while loading in a fresh process: peak RSS and tokens/s.

Weights are held in enough copies to total --total-mb, so each call reads them from memory, not from the (large)
last-level cache. Every timing is a median of --repeats runs, the paths' runs interleaved so that other load on the
machine slows all alike; the load average is printed beside the figures.

    python -m benchmarks.bench_quantized --sections linear
    HF_RECURRENTGEMMA_CPU_ISA=fp32-fma-256 python -m benchmarks.bench_quantized --sections decode
"""

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import cpu_flags, cpu_model

LINEAR_SHAPES = ((15360, 2560), (2560, 2560))  # (out, in)
ROWS = (1, 2, 3, 4, 5, 8, 12, 16)


def load() -> float:
    return os.getloadavg()[0]


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls run in turn within each repeat (after one warm-up each)."""
    for fn in calls.values():
        fn()
    runs = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in runs.items()}


def read_rate(megabytes: int = 256, repeats: int = 7) -> float:
    """Bytes per second of a float32 sum over `megabytes` (the read-rate ceiling the floors are measured
    against)."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    seconds = interleaved_medians({"sum": lambda: buffer.sum()}, repeats)["sum"]
    return buffer.numel() * 4 / seconds


def quantized_linear(out_features: int, in_features: int, fmt: str, group_size: int = 128,
                     generator: torch.Generator | None = None) -> nn.Linear:
    """A bias-free random bfloat16 linear (std 0.02), quantized in place to `fmt` ("bf16", "int8", "int4") with
    torchao's weight-only configs (int4: the CPU prototype layout with `group_size`)."""
    layer = nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.02, generator=generator)
    if fmt != "bf16":
        from torchao.quantization import quantize_

        quantize_(layer, quant_config(fmt, group_size))
    return layer


def quant_config(fmt: str, group_size: int = 128):
    """torchao's weight-only config for `fmt` ("int8", "int4")."""
    if fmt == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    if fmt == "int4":
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=group_size)
    raise ValueError(f"unknown format {fmt!r}: use bf16, int8 or int4")


def weight_bytes(weight: torch.Tensor) -> int:
    """Bytes a product reads for this weight: the plain tensor, or a torchao tensor's inner tensors."""
    if type(weight) in (torch.Tensor, nn.Parameter):
        return weight.numel() * weight.element_size()
    names, _ = weight.__tensor_flatten__()
    inner = [getattr(weight, name) for name in names]
    return sum(t.numel() * t.element_size() for t in inner if t is not None)


def linear_section(args) -> dict:
    from hf_recurrentgemma.griffin.cpu_matvec_griffin import linear_cpu

    quant = _quant_module()
    rate = read_rate()
    print(f"read-rate ceiling (float32 sum over 256 MB): {rate / 1e9:.1f} GB/s   load {load():.2f}")
    results = {"read_rate_gbs": rate / 1e9, "shapes": {}}
    generator = torch.Generator().manual_seed(0)
    for n, k in LINEAR_SHAPES:
        fns = {
            "torch bf16 F.linear": ("bf16", lambda x, l: torch.nn.functional.linear(x, l.weight)),
            "ours bf16": ("bf16", lambda x, l: linear_cpu(x, l.weight)),
            "torchao int8 own": ("int8", lambda x, l: torch.nn.functional.linear(x, l.weight)),
            "ours int8 (gemv)": ("int8", lambda x, l: linear_cpu(x, l.weight)),
            "torch int4 (torchao prototype)": ("int4", lambda x, l: torch.nn.functional.linear(x, l.weight)),
        }
        if quant is not None:
            fns["ours int8 (quant)"] = ("int8", lambda x, l: quant.linear_quantized(x, l.weight))
            fns["ours int4 (quant)"] = ("int4", lambda x, l: quant.linear_quantized(x, l.weight))
        layers = {}
        for fmt in ("bf16", "int8", "int4"):
            first = quantized_linear(n, k, fmt, args.group_size, generator)
            copies = max(1, int(args.total_mb * 2**20 // weight_bytes(first.weight)))
            layers[fmt] = [first] + [quantized_linear(n, k, fmt, args.group_size, generator) for _ in range(copies - 1)]
        table = {}
        print(f"\n{n} x {k} (out x in), ms per call, medians of {args.repeats}; floor = weight bytes / read rate")
        names = list(fns)
        print("rows " + " ".join(f"{name[:22]:>23}" for name in names))
        for rows in ROWS:
            x = torch.randn(rows, k, generator=generator).bfloat16()
            calls = {}
            for name, (fmt, fn) in fns.items():
                copies = layers[fmt]
                if name == "torchao int8 own" and rows > 1:
                    copies = copies[:1]  # dequantizes first: ~30x slower than the rest, one copy is enough
                calls[name] = (lambda fn=fn, copies=copies: [fn(x, l) for l in copies])
            medians = interleaved_medians(calls, args.repeats)
            row = {}
            for name, (fmt, _) in fns.items():
                copies = len(layers[fmt]) if not (name == "torchao int8 own" and rows > 1) else 1
                seconds = medians[name] / copies
                floor = weight_bytes(layers[fmt][0].weight) / rate
                row[name] = {"ms": seconds * 1e3, "x_floor": seconds / floor}
            table[rows] = row
            print(f"{rows:4d} " + " ".join(f"{row[name]['ms']:9.3f} ({row[name]['x_floor']:4.2f}x)".rjust(23)
                                          for name in names), f"  load {load():.2f}")
        results["shapes"][f"{n}x{k}"] = table
        del layers
    return results


def model_bytes_per_token(model) -> int:
    """Bytes one decode step reads: every linear weight (a torchao weight's inner tensors) and bias, the head
    included, and every other parameter except the embedding (one row of it is read)."""
    seen, total = set(), 0
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for tensor in (module.weight, module.bias):
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += weight_bytes(tensor)
    for param in model.parameters():
        if id(param) not in seen and param is not embedding:
            seen.add(id(param))
            total += weight_bytes(param)
    return total


def build_model(preset: str, fmt: str, group_size: int, layers: int | None = None):
    """A random-weight model of `preset`'s shape in bfloat16 (`benchmarks.models.random_griffin`), quantized to
    `fmt` (head included, from its own copy of the embedding) unless bf16."""
    from benchmarks.models import random_griffin
    from hf_recurrentgemma import GriffinConfig
    from hf_recurrentgemma.quantization import quantize_model

    overrides = {} if layers is None else {"block_types": GriffinConfig.from_preset(preset).block_types[:layers]}
    model = random_griffin(GriffinConfig.from_preset(preset, **overrides), torch.bfloat16)
    if fmt != "bf16":
        quantize_model(model, fmt, group_size)
    return model


def decode_section(args) -> dict:
    """Tokens/s at batch 1 (one-token forwards with the cache after an 8-token prompt) for each format, and the
    (k+1)-token forward against one token; the read rate measured beside each format."""
    import gc

    from benchmarks.common import rss_mib

    results = {}
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    prompt = torch.randint(0, 256000, (1, 8), generator=torch.Generator().manual_seed(1))
    for fmt in formats:
        start = time.perf_counter()
        model = build_model(args.preset, fmt, args.group_size, args.layers)
        built = time.perf_counter() - start
        cache = model(prompt, use_cache=True).cache
        token = prompt[:, -1:]
        steps = []
        for _ in range(args.decode_steps + 1):
            begin = time.perf_counter()
            cache = model(token, cache=cache, use_cache=True).cache
            steps.append(time.perf_counter() - begin)
        per_token = statistics.median(steps[1:])
        sweep = {}
        for _ in range(args.repeats):
            for k in range(0, args.max_k + 1):
                ids = prompt[:, :1].expand(1, k + 1).contiguous()
                begin = time.perf_counter()
                cache = model(ids, cache=cache, use_cache=True).cache
                sweep.setdefault(k, []).append(time.perf_counter() - begin)
        sweep = {k: statistics.median(v) for k, v in sweep.items()}
        rate = read_rate()
        nbytes = model_bytes_per_token(model)
        floor = nbytes / rate
        results[fmt] = {"bytes_per_token": nbytes, "s_per_token": per_token, "tokens_per_s": 1 / per_token,
                        "read_rate_gbs": rate / 1e9, "floor_s": floor, "x_floor": per_token / floor,
                        "k_plus_1_over_1": {k: sweep[k] / sweep[0] for k in sweep if k}, "rss_mib": rss_mib(),
                        "build_s": built, "load": load()}
        print(f"{fmt}: {nbytes / 1e9:.2f} GB/token, {per_token * 1e3:.0f} ms/token ({1 / per_token:.2f} tokens/s), "
              f"read rate {rate / 1e9:.1f} GB/s, floor {floor * 1e3:.0f} ms: {per_token / floor:.2f}x the floor; "
              f"RSS {rss_mib() / 1024:.1f} GiB; load {load():.2f}")
        print("   (k+1)-token forward / one token: " +
              " ".join(f"k={k}:{sweep[k] / sweep[0]:.2f}" for k in sweep if k))
        del model, cache
        gc.collect()
    if "bf16" in results:
        base = results["bf16"]["tokens_per_s"]
        for fmt in results:
            results[fmt]["speedup_vs_bf16"] = results[fmt]["tokens_per_s"] / base
        print("tokens/s against bf16: " + ", ".join(f"{f} {r['speedup_vs_bf16']:.2f}x" for f, r in results.items()))
    return results


def prefill_section(args) -> dict:
    """Prompt cost with quantized weights against bfloat16: one forward over --prompt-tokens tokens (more rows than
    the few-row kernels take, so torchao's and torch's own products run), the next-token logits only, as generate()
    asks; medians of --repeats, formats interleaved within each repeat so load slows all alike."""
    import gc

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    models = {fmt: build_model(args.preset, fmt, args.group_size, args.layers) for fmt in formats}
    prompt = torch.randint(0, 256000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(3))
    calls = {fmt: (lambda m=model: m(prompt, use_cache=True, logits_to_keep=1)) for fmt, model in models.items()}
    with torch.no_grad():
        medians = interleaved_medians(calls, args.repeats)
    results = {fmt: {"s": seconds, "tokens_per_s": args.prompt_tokens / seconds} for fmt, seconds in medians.items()}
    base = medians.get("bf16")
    for fmt, seconds in medians.items():
        if base:
            results[fmt]["x_bf16_time"] = seconds / base
        print(f"prefill {args.prompt_tokens} tokens, {fmt}: {seconds:.2f} s"
              + (f" ({seconds / base:.2f}x bfloat16's time)" if base else "") + f"   load {load():.2f}")
    del models, calls
    gc.collect()
    return results


def quality_section(args) -> dict:
    """What a user gives up: held-out perplexity of the shipped 6M model (`--heldout`: Persuasion, written by
    `python -m training.corpus`) in bfloat16, int8 and int4 for each group size; and at the 2B shape (random
    weights, --layers) the logit error against bfloat16 and the greedy agreement (the bfloat16 model's greedy
    continuation fed to the quantized one: how often its argmax picks the same next token)."""
    import gc

    from transformers import AutoTokenizer

    from hf_recurrentgemma import GriffinForCausalLM
    from hf_recurrentgemma.commands.perplexity import stream_perplexity
    from hf_recurrentgemma.demo import prepare
    from hf_recurrentgemma.quantization import GROUP_SIZES, load_quantized

    results = {"perplexity": {}, "2b": {}}
    if args.heldout:
        folder = prepare(None, None, None, None)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with open(args.heldout) as f:
            text = f.read()
        docs = [text[: args.heldout_chars]] if args.heldout_chars else [text]
        variants = [("bf16", None)] + [("int8", None)] + [("int4", g) for g in GROUP_SIZES]
        for fmt, group in variants:
            if fmt == "bf16":
                model = GriffinForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
            else:
                model = load_quantized(folder, fmt, group or 128)
            result = stream_perplexity(model, tokenizer, docs, progress=False)
            name = fmt if group is None else f"{fmt} g{group}"
            results["perplexity"][name] = {"perplexity": result.perplexity, "tokens": result.tokens}
            print(f"6M held-out perplexity {name}: {result.perplexity:.3f} ({result.tokens} tokens)   load {load():.2f}")
        base = results["perplexity"]["bf16"]["perplexity"]
        for row in results["perplexity"].values():
            row["change_vs_bf16"] = row["perplexity"] / base - 1
    generator = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 256000, (1, 16), generator=generator)
    reference = None
    for fmt, group in [] if args.no_2b else [("bf16", None), ("int8", None)] + [("int4", g) for g in (32, 128)]:
        model = build_model(args.preset, fmt, group or 128, args.layers)
        if reference is None:
            sequence = model.generate(prompt, max_new_tokens=args.greedy_tokens, do_sample=False, pad_token_id=0,
                                      eos_token_id=None, min_new_tokens=args.greedy_tokens)
            reference = (sequence, model(sequence).logits.float())
        else:
            sequence, expected = reference
            logits = model(sequence).logits.float()
            picks = logits[0, prompt.shape[1] - 1:-1].argmax(-1)
            agree = float((picks == sequence[0, prompt.shape[1]:]).float().mean())
            error = (logits - expected).abs()
            name = fmt if group is None else f"{fmt} g{group}"
            results["2b"][name] = {"max_abs_logit_error": float(error.max()),
                                   "mean_abs_logit_error": float(error.mean()),
                                   "logit_std": float(expected.std()), "greedy_agreement": agree}
            print(f"2B shape {name}: logit error max {float(error.max()):.3f}, mean {float(error.mean()):.4f} "
                  f"(bf16 logits' std {float(expected.std()):.3f}); greedy agreement {agree:.1%} over "
                  f"{args.greedy_tokens} tokens   load {load():.2f}")
        del model
        gc.collect()
    return results


def write_random_folder(preset: str, folder: str, shard_bytes: int = 2 << 30) -> None:
    """A model folder of `preset`'s shape with random bfloat16 weights (N(0, 1/fan_in) matrices, small vectors,
    RG-LRU decays in the trained range, as `benchmarks.models.random_griffin`), written shard by shard: at most
    one shard (`shard_bytes`) is ever in memory, never the whole model."""
    import os

    from safetensors.torch import save_file

    from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM

    config = GriffinConfig.from_preset(preset)
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        skeleton = GriffinForCausalLM(config)
    names = [(name, p.shape) for name, p in skeleton.named_parameters()]  # the tied head is not a parameter twice
    os.makedirs(folder, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"part-{len(shards) + 1:05d}.safetensors"
            save_file(current, os.path.join(folder, name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    for name, shape in names:
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        if len(shape) >= 2:
            tensor.normal_(0.0, shape[-1] ** -0.5, generator=generator)
        elif name.endswith("a_param"):
            tensor.uniform_(0.5, 2.0, generator=generator)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        current[name] = tensor
        size += tensor.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    total = len(shards)
    weight_map = {}
    for index, (name, keys) in enumerate(shards, 1):
        final = f"model-{index:05d}-of-{total:05d}.safetensors"
        os.replace(os.path.join(folder, name), os.path.join(folder, final))
        weight_map.update({key: final for key in keys})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    config.save_pretrained(folder)


def big_section(args) -> dict:
    """The --preset shape (default recurrentgemma-9b with --preset) from random weights written shard by shard
    (`--folder`, written if absent), loaded with --big-format quantized while loading, decoding a few tokens:
    peak resident memory of the loading process and tokens/s."""
    import os
    import resource

    from hf_recurrentgemma.quantization import load_quantized

    folder = args.folder
    if not os.path.exists(os.path.join(folder, "config.json")):
        start = time.perf_counter()
        write_random_folder(args.preset, folder)
        print(f"wrote {folder} in {time.perf_counter() - start:.0f} s; peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
        if not args.in_process:  # the writer's memory must not count: load in a fresh process
            import subprocess
            import sys

            command = [sys.executable, "-m", "benchmarks.bench_quantized", "--sections", "big", "--folder", folder,
                       "--preset", args.preset, "--big-format", args.big_format, "--group-size",
                       str(args.group_size), "--decode-steps", str(args.decode_steps), "--in-process"]
            subprocess.run(command, check=True)
            return {"subprocess": command}
    start = time.perf_counter()
    model = load_quantized(folder, args.big_format, args.group_size)
    loaded = time.perf_counter() - start
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    cache = model(prompt, use_cache=True).cache
    token, steps = prompt[:, -1:], []
    for _ in range(args.decode_steps + 1):
        begin = time.perf_counter()
        out = model(token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        steps.append(time.perf_counter() - begin)
    per_token = statistics.median(steps[1:])
    nbytes = model_bytes_per_token(model)
    rate = read_rate()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    shape = f"width {model.config.hidden_size}, {model.config.num_hidden_layers} blocks"  # the folder's, not --preset
    result = {"folder": folder, "shape": shape, "format": args.big_format, "load_s": loaded, "peak_rss_gib_after_load": peak_load,
              "peak_rss_gib": peak, "s_per_token": per_token, "tokens_per_s": 1 / per_token,
              "bytes_per_token": nbytes, "read_rate_gbs": rate / 1e9, "x_floor": per_token / (nbytes / rate),
              "load": load()}
    print(f"{folder} ({shape}) {args.big_format}: loaded in {loaded:.0f} s, peak RSS {peak:.1f} GiB ({peak_load:.1f} after "
          f"loading); {per_token:.2f} s/token ({1 / per_token:.2f} tokens/s), {nbytes / 1e9:.2f} GB/token, read "
          f"rate {rate / 1e9:.1f} GB/s: {result['x_floor']:.2f}x the floor; load {load():.2f}")
    return result


def plot(runs: dict[str, dict], out: str) -> None:
    """tokens/s against GB read per token, one marker per format and run (label: the run's name), with each run's
    floor (read rate / bytes) drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (label, decode), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        gb = [r["bytes_per_token"] / 1e9 for r in decode.values()]
        rate = statistics.median(r["read_rate_gbs"] for r in decode.values())
        xs = [min(gb) * 0.8, max(gb) * 1.1]
        ax.plot(xs, [rate / x for x in xs], color=color, linestyle="--", linewidth=1,
                label=f"{label}: floor at {rate:.1f} GB/s")
        for fmt, r in decode.items():
            ax.scatter(r["bytes_per_token"] / 1e9, r["tokens_per_s"], color=color)
            # against the run's median read rate (the line drawn), not the one noisy rate measured beside it
            x_floor = rate / (r["bytes_per_token"] / 1e9) / r["tokens_per_s"]
            ax.annotate(f"{fmt} ({x_floor:.2f}x floor)", (r["bytes_per_token"] / 1e9, r["tokens_per_s"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("GB read per token")
    ax.set_ylabel("tokens/s (batch 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("recurrentgemma-2b shape, random weights, CPU decode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _quant_module():
    try:
        from hf_recurrentgemma.griffin import cpu_quant_griffin
    except ImportError:
        return None
    return cpu_quant_griffin


SECTIONS = {"linear": linear_section, "decode": decode_section, "prefill": prefill_section,
            "quality": quality_section, "big": big_section}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="linear,decode,quality", help=f"comma list of {list(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--total-mb", type=int, default=768, help="weight copies per path total about this much")
    parser.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64 or 128)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--preset", default="recurrentgemma-2b", help="decode: the model shape")
    parser.add_argument("--layers", type=int, default=None, help="decode: only the first N blocks (default all)")
    parser.add_argument("--formats", default="bf16,int8,int4", help="decode: comma list of bf16, int8, int4")
    parser.add_argument("--decode-steps", type=int, default=10, help="decode: one-token steps timed (median)")
    parser.add_argument("--heldout", default=None, help="quality: the held-out text (heldout.txt of training.corpus)")
    parser.add_argument("--heldout-chars", type=int, default=None, help="quality: only the first N characters")
    parser.add_argument("--no-2b", action="store_true", help="quality: the 6M perplexities only")
    parser.add_argument("--greedy-tokens", type=int, default=32, help="quality: greedy tokens at the 2B shape")
    parser.add_argument("--folder", default="/tmp/hf_rg_random_9b", help="big: where the random folder is written")
    parser.add_argument("--big-format", default="int4", choices=["int8", "int4"], help="big: the format to load in")
    parser.add_argument("--in-process", action="store_true", help="big: load here (the writer runs it this way)")
    parser.add_argument("--max-k", type=int, default=15, help="decode: (k+1)-token forwards for k = 1..max-k")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prefill: the prompt's length")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="instead of measuring: plot the decode sections of --plot-from (LABEL=JSON ...)")
    parser.add_argument("--plot-from", nargs="*", default=[], metavar="LABEL=JSON")
    args = parser.parse_args(argv)
    if args.plot:
        runs = {}
        for item in args.plot_from:
            label, _, path = item.partition("=")
            with open(path) as f:
                runs[label] = json.load(f)["decode"]
        plot(runs, args.plot)
        return {"plot": args.plot}
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
            "isa_cap": os.environ.get("HF_RECURRENTGEMMA_CPU_ISA"), "load_at_start": load()}
    print(json.dumps(info))
    results = {"machine": info}
    with torch.inference_mode():
        for section in sections:
            results[section] = SECTIONS[section](args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return results


if __name__ == "__main__":
    main()

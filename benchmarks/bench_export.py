"""Exported Griffin programs (Transformers' exporters, docs/export.md) against our own eager decoding: decode and
prefill tokens/s of each backend's runner, export time, file sizes, and agreement with our greedy tokens, on the
shipped 6M model (and optionally a ~100M mid shape with random weights), float32 and each quantized export.

    python -m benchmarks.bench_export                       # every installed format, the shipped model
    python -m benchmarks.bench_export --formats onnx dynamo --mid   # also the ~100M shape

Decode: the median time of one decode-program call (1 token, state in and out) over `--steps` steps after a
prefill, against one eager cached forward of one token (the CPU kernels as configured). Prefill: one call on a
`--prompt-tokens` prompt. Agreement: the exported greedy loop's `--new-tokens` tokens against generate()'s.
Target (issue 21): the fastest float32 backend's decode >= our eager decode on the shipped model.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import busy_warning, machine, render

# (format, --quantize) pairs measured when installed; quantized ones as offered by hf_recurrentgemma.export.
VARIANTS = (("onnx", None), ("onnx", "int8-dynamic"), ("executorch", None), ("executorch", "int8"),
            ("openvino", None), ("dynamo", None))


def shipped_model():
    from hf_recurrentgemma.convert.pipeline import convert_checkpoint
    from hf_recurrentgemma.demo import BUNDLED_CHECKPOINT, BUNDLED_PRESET, BUNDLED_RELEASE
    from hf_recurrentgemma import GriffinForCausalLM

    folder = Path(tempfile.mkdtemp()) / "griffin-austen-hf"
    convert_checkpoint(BUNDLED_CHECKPOINT, folder, preset=BUNDLED_PRESET,
                       tokenizer=BUNDLED_RELEASE / "tokenizer.model", progress=False)
    return GriffinForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def mid_model():
    """~100M parameters with random weights: width 768, 12 blocks (2 recurrent : 1 attention), vocab 32k."""
    from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM

    torch.manual_seed(0)
    config = GriffinConfig(vocab_size=32_000, hidden_size=768, intermediate_size=2304, num_attention_heads=6,
                           num_hidden_layers=12, attention_window_size=512)
    return GriffinForCausalLM(config).eval()


def median_step(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def eager_figures(model, prompt, steps: int) -> dict:
    out = model(prompt, use_cache=True)
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)

    def step():
        nonlocal cache
        cache = model(token, cache=cache, use_cache=True).cache

    step()
    decode = median_step(step, steps)
    prefill = median_step(lambda: model(prompt, use_cache=True), 3)
    return {"decode_tok_s": 1 / decode, "prefill_tok_s": prompt.shape[1] / prefill}


@torch.no_grad()
def exported_figures(model, exported, prompt, steps: int, new_tokens: int) -> dict:
    logits, cache = exported.step(prompt, 0, exported.new_cache())
    want_logits = model(prompt).logits[:, -1]
    token = logits.argmax(-1, keepdim=True)
    position = prompt.shape[1]

    def step():
        nonlocal cache
        _, cache = exported.step(token, position, cache)

    step()
    decode = median_step(step, steps)
    prefill = median_step(lambda: exported.step(prompt, 0, exported.new_cache()), 3)
    eos = model.generation_config.eos_token_id  # both stop there (or after new_tokens)
    want = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                          max_new_tokens=new_tokens)[0, prompt.shape[1]:]
    got = exported.generate(prompt, new_tokens, eos_token_id=eos)[0, prompt.shape[1]:]
    if want.shape != got.shape:
        return {"decode_tok_s": 1 / decode, "prefill_tok_s": prompt.shape[1] / prefill, "agree": 0,
                "logit_err": float((logits.float() - want_logits.float()).abs().max())}
    agree = int((want == got).cumprod(0).sum())  # tokens equal before the first difference
    return {"decode_tok_s": 1 / decode, "prefill_tok_s": prompt.shape[1] / prefill, "agree": agree,
            "logit_err": float((logits.float() - want_logits.float()).abs().max())}


def runner_threads(fmt: str, threads: int | None) -> dict:
    """Runner options giving the runtime `threads` intra-op threads (None: the runtime's default pool). ExecuTorch's
    XNNPACK thread pool is not set from Python: it keeps its default."""
    if threads is None:
        return {}
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        return {"session_options": options}
    if fmt == "openvino":
        return {"config": {"INFERENCE_NUM_THREADS": threads}}
    return {}


def run(model, name: str, args) -> list[dict]:
    from hf_recurrentgemma.export import ExportedGriffin, FORMATS, export_griffin

    torch.manual_seed(1)
    prompt = torch.randint(4, model.config.vocab_size, (1, args.prompt_tokens))
    rows = [{"model": name, "variant": "eager (ours)", **eager_figures(model, prompt, args.steps)}]
    print(json.dumps(rows[-1]), flush=True)
    for fmt, quantize in VARIANTS:
        if fmt not in args.formats or (quantize and not args.quantized) or FORMATS[fmt].missing():
            continue
        label = fmt + (f" {quantize}" if quantize else "")
        out = Path(tempfile.mkdtemp()) / "export"
        try:
            _, info = export_griffin(model, fmt, out, max_prefill=args.prompt_tokens, quantize=quantize)
            exported = ExportedGriffin.from_pretrained(out, **runner_threads(fmt, args.runtime_threads))
            figures = exported_figures(model, exported, prompt, args.steps, args.new_tokens)
        except Exception as error:  # a backend that fails is reported, the others still run
            rows.append({"model": name, "variant": label, "error": f"{type(error).__name__}: {error}"[:300]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        size = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".onnx", ".data", ".pte", ".pt2", ".xml",
                                                                           ".bin"))
        rows.append({"model": name, "variant": label, **figures, "export_s": info["export_seconds"],
                     "size_mib": size / 2**20})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=["onnx", "executorch", "openvino", "dynamo"])
    parser.add_argument("--no-quantized", dest="quantized", action="store_false", help="float32 exports only")
    parser.add_argument("--mid", action="store_true", help="also the ~100M mid shape (random weights)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (and the export's maximum)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="decode steps timed (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the runners' own pools "
                        "are the backends' defaults)")
    parser.add_argument("--runtime-threads", type=int, help="intra-op threads of ONNX Runtime and OpenVINO "
                        "(default: their own pools, every core)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and the machine as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine("cpu")
    warning = busy_warning(info)
    if warning:
        print(warning)
    rows = run(shipped_model(), "griffin-austen-6m", args)
    if args.mid:
        rows += run(mid_model(), "mid-100m", args)
    eager = {r["model"]: r for r in rows if r["variant"] == "eager (ours)"}
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["model"], r["variant"], "failed", "", "", "", "", "", r["error"][:60]])
            continue
        base = eager[r["model"]]
        table.append([r["model"], r["variant"], f"{r['decode_tok_s']:.0f}",
                      f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x", f"{r['prefill_tok_s']:.0f}",
                      f"{r['prefill_tok_s'] / base['prefill_tok_s']:.2f}x",
                      f"{r.get('agree', '-')}" if "agree" in r else "-",
                      f"{r['logit_err']:.1e}" if "logit_err" in r else "-",
                      f"{r['size_mib']:.1f} MiB, {r['export_s']:.0f}s" if "size_mib" in r else "-"])
    print(f"CPU: {info['cpu']}; torch threads {args.threads}, runtime threads {args.runtime_threads or 'default'}; "
          f"load average at start "
          f"{info['load_average_at_start']:.1f}")
    print(render(["model", "variant", "decode tok/s", "vs eager", "prefill tok/s", "vs eager",
                  f"agree/{args.new_tokens}", "logit err", "files, export"], table))
    shipped = [r for r in rows if r["model"] == "griffin-austen-6m" and "error" not in r]
    fp32 = [r for r in shipped if r["variant"] != "eager (ours)" and " " not in r["variant"]]
    if fp32:
        best = max(fp32, key=lambda r: r["decode_tok_s"])
        ratio = best["decode_tok_s"] / eager["griffin-austen-6m"]["decode_tok_s"]
        verdict = "PASS" if ratio >= 1 else "MISS"
        print(f"target: fastest float32 backend decode >= eager decode (shipped model): {best['variant']} "
              f"{ratio:.2f}x {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

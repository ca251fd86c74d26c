"""`hf-recurrentgemma export FOLDER OUT --format F`: programs for ONNX Runtime, ExecuTorch (XNNPACK), OpenVINO or
torch.export, made by Transformers' own exporters (hf_recurrentgemma/export, docs/export.md); and the generation
loop behind `hf-recurrentgemma generate OUT "PROMPT"` for such a folder.

OUT holds the prefill and decode programs, Transformers' `export.json`, the config, `griffin_export.json` (prompt
lengths, the state tensors) and the tokenizer. Nothing is left at OUT unless the export completed.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from .loading import CommandError, load_model, load_tokenizer



def _export_api():
    from .. import export

    return export


def add_parser(commands) -> None:
    from ..export.exporting import DEFAULT_MAX_PREFILL
    from ..export.formats import FORMATS

    sub = commands.add_parser("export", help="our folder -> prefill and decode programs (ONNX, ExecuTorch, "
                              "OpenVINO, torch.export)", description=__doc__.split("\n\n")[0])
    sub.add_argument("model", help="a folder written by `convert` (or save_pretrained)")
    sub.add_argument("out", help="output folder")
    sub.add_argument("--format", required=True, choices=list(FORMATS), help="; ".join(
        f"{f.name}: {f.what}" for f in FORMATS.values()))
    sub.add_argument("--quantize", metavar="Q", help="; ".join(
        f"{f.name}: {', '.join(f.quantizers)}" for f in FORMATS.values() if f.quantizers))
    sub.add_argument("--max-prefill", type=int, default=DEFAULT_MAX_PREFILL, metavar="N",
                     help=f"most prompt tokens per prefill call (default {DEFAULT_MAX_PREFILL}; longer prompts run in "
                          "chunks)")
    sub.add_argument("--force", action="store_true", help="replace OUT if it exists")
    sub.set_defaults(func=run_export)


def run_export(args) -> int:
    api = _export_api()
    fmt = api.get_format(args.format)
    try:
        fmt.require()
    except api.BackendNotInstalled as err:
        raise CommandError(str(err)) from None
    if args.quantize is not None and args.quantize not in fmt.quantizers:
        offered = ", ".join(fmt.quantizers) or "none"
        raise CommandError(f"--quantize {args.quantize} is not offered for the {fmt.name} format (offered: {offered})")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out} exists; pass --force to replace it")
    model = load_model(args.model, "float32")  # the programs run in float32 (export_griffin says why)
    api.prefill_limits(model.config, args.max_prefill)  # a bad --max-prefill fails before the slow part
    tokenizer = None
    try:
        tokenizer = load_tokenizer(args.model)
    except CommandError:
        pass  # a folder without a tokenizer still exports; `generate` then asks for --tokenizer
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / "out"
        _, info = api.export_griffin(model, fmt.name, staged, max_prefill=args.max_prefill, quantize=args.quantize)
        model.generation_config.save_pretrained(staged)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.suffix in (".onnx", ".data", ".pte", ".pt2",
                                                                                         ".xml", ".bin")}
    listing = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
    print(f"wrote {out} ({fmt.name}, {info['dtype']}{', ' + args.quantize if args.quantize else ''}; "
          f"{info['export_seconds']:.1f}s; {listing})", file=sys.stderr)
    return 0


def is_export_folder(path) -> bool:
    from ..export.exporting import INFO_FILE

    return (Path(path) / INFO_FILE).is_file()


def _logits_processor(args):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    # The order Transformers' generate() applies them in.
    processors = LogitsProcessorList()
    if args.repetition_penalty is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(args.repetition_penalty))
    if args.do_sample:
        if args.temperature is not None:
            processors.append(TemperatureLogitsWarper(args.temperature))
        if args.top_k is not None:
            processors.append(TopKLogitsWarper(args.top_k))
        if args.top_p is not None:
            processors.append(TopPLogitsWarper(args.top_p))
    return processors


def generate_exported(args, prompts: list[str]) -> int:
    """`generate` for an export folder: the same flags, one prompt at a time (the programs take batch 1). Called by
    `generate.run_generate` once it has checked the sampling and speculation flags."""
    import json

    if args.assistant or args.prompt_lookup:
        raise CommandError("--assistant and --prompt-lookup need a model folder; an exported folder decodes alone")
    if args.dtype != "auto" or args.device != "cpu":
        raise CommandError("--dtype and --device apply to a model folder; an exported folder runs in the dtype it "
                           "was exported in, on its backend's CPU runtime")
    api = _export_api()
    try:
        model = api.load_exported(args.model)
    except api.BackendNotInstalled as err:
        raise CommandError(str(err)) from None
    tokenizer = load_tokenizer(args.model, args.tokenizer)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    eos = model.config.eos_token_id
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, eos_token_id=eos,
                  logits_processor=_logits_processor(args))
    if args.prompts_file:
        start = time.perf_counter()
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            out = model.generate(ids, **kwargs)
            completion = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False), flush=True)
        print(f"{len(prompts)} prompts in {time.perf_counter() - start:.2f}s", file=sys.stderr)
        return 0
    from transformers import TextStreamer

    ids = tokenizer(prompts[0], return_tensors="pt")["input_ids"]
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, streamer=streamer, **kwargs)
    elapsed = time.perf_counter() - start
    new_tokens = out.shape[1] - ids.shape[1]
    print(f"{new_tokens} tokens in {elapsed:.2f}s ({new_tokens / elapsed:.1f} tokens/s, prompt {ids.shape[1]} tokens, "
          f"{model.info['format']})", file=sys.stderr)
    return 0


__all__ = ["add_parser", "generate_exported", "is_export_folder", "run_export"]

"""The main job: the whole user journey on a Griffin trained here, or on your own checkpoint.

    python -m hf_recurrentgemma.demo [MODEL] [--prompt "..."] [--max-new-tokens N] [--temperature T] [--seed S]

With no MODEL it takes the checkpoint this package ships, `griffin-austen-6m` (a 6M-parameter Griffin trained on
Jane Austen's novels, stored as the RecurrentGemma releases are: an Orbax checkpoint directory plus a SentencePiece
`tokenizer.model`), and
  1. converts it to a safetensors folder with a progress bar (kept in ~/.cache/hf_recurrentgemma/converted, so a
     second run skips this step),
  2. loads it with `AutoModelForCausalLM` and `AutoTokenizer`,
  3. streams a continuation of the prompt through `pipeline("text-generation")`,
  4. prints tokens/s and the size of the recurrent state, which is the same at any length.

MODEL may also be a folder converted by `hf-recurrentgemma convert` (loaded as is), a Transformers
`recurrent_gemma` folder, or an original checkpoint (Orbax directory or download folder, torch state-dict file):
those are converted first, with `--preset` naming the published model and `--tokenizer` its `tokenizer.model`
(found next to the checkpoint when not given).
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline, set_seed

from .cache_griffin import GriffinCache

BUNDLED_RELEASE = Path(__file__).with_name("assets") / "griffin-austen"
BUNDLED_PRESET = "griffin-austen-6m"
DEFAULT_PROMPT = "Anne had not been two days at Uppercross before"
CACHE_ROOT = Path(os.environ.get("HF_RECURRENTGEMMA_CACHE", Path.home() / ".cache" / "hf_recurrentgemma"))


class CountingStreamer(TextStreamer):
    """Prints the continuation as it is generated and counts the generated tokens and when they came."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.generated = 0
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:  # the first call carries the prompt
            self.generated += value.numel()
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        self._prompt_seen = True
        super().put(value)


def is_converted_folder(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "griffin"


def find_tokenizer(src: Path) -> Path | None:
    """A `tokenizer.model` inside a download folder or next to a checkpoint, as the releases lay them out."""
    for candidate in (src / "tokenizer.model", src.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def converted_location(src: Path) -> Path:
    """Where the conversion of `src` is kept: named after the checkpoint and a hash of its path and timestamps,
    so that a changed checkpoint is converted again."""
    stamp = f"{src.resolve()}:{src.stat().st_mtime_ns}:{sorted(p.stat().st_mtime_ns for p in src.rglob('*'))}"
    return CACHE_ROOT / "converted" / f"{src.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


def prepare(model: Path | None, preset: str | None, tokenizer: Path | None, out: Path | None) -> Path:
    """The folder to load: `model` itself when already converted, else its conversion (made once, then reused)."""
    from .convert.pipeline import convert_checkpoint  # conversion tools stay out of the model files

    if model is None:
        model, preset = BUNDLED_RELEASE, preset or BUNDLED_PRESET
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such checkpoint or folder")
    if model.is_dir() and is_converted_folder(model):
        print(f"model: {model} (a converted folder)")
        return model
    tokenizer = tokenizer or find_tokenizer(model)
    if tokenizer is None:
        raise FileNotFoundError(f"{model}: no tokenizer.model in or next to it; pass --tokenizer")
    out = out or converted_location(model)
    if out.is_dir() and is_converted_folder(out):
        print(f"model: {model}, converted before to {out}")
        return out
    print(f"converting {model} (+ {tokenizer.name}) to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(model, out, preset=preset, tokenizer=tokenizer, progress=True,
                       command=f"python -m hf_recurrentgemma.demo {model}")
    return out


def state_bytes(model) -> int:
    """Bytes of the recurrent state for one sequence: fixed, whatever the length."""
    cache = GriffinCache(model.config, batch_size=1, dtype=model.dtype, device=model.device)
    return cache.nbytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path,
                        help="converted folder, original checkpoint or recurrent_gemma folder (default: the shipped "
                             f"{BUNDLED_PRESET})")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--greedy", action="store_true", help="no sampling: the most likely token each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", help="published model of an original checkpoint (e.g. recurrentgemma-2b)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.model of an original checkpoint")
    parser.add_argument("--out", type=Path, help="where to write the converted folder (default: a cache folder)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32",
                        help="compute dtype (default float32)")
    args = parser.parse_args(argv)

    try:
        folder = prepare(args.model, args.preset, args.tokenizer, args.out)
    except (OSError, ValueError) as err:  # ConversionError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"loaded {type(model).__name__}: {params / 1e6:.1f}M parameters, {config.num_hidden_layers} blocks "
          f"({config.block_types.count('recurrent')} recurrent, {config.block_types.count('attention')} local "
          f"attention, window {config.attention_window_size}), {args.dtype}")

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    streamer = CountingStreamer(tokenizer)
    sampling = (dict(do_sample=False) if args.greedy else
                dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k))
    set_seed(args.seed)
    print(f"\n{args.prompt}", end="", flush=True)
    start = time.perf_counter()
    generator(args.prompt, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
              streamer=streamer, return_full_text=False, **sampling)
    elapsed = time.perf_counter() - start
    print()
    decode_time = elapsed - ((streamer.first_token_at or start) - start)
    rate = (streamer.generated - 1) / decode_time if streamer.generated > 1 and decode_time > 0 else float("nan")
    print(f"\n{streamer.generated} tokens in {elapsed:.2f} s ({rate:.0f} tokens/s after the first); "
          f"recurrent state {state_bytes(model) / 1024:.0f} KiB per sequence, the same at any length")
    return 0


if __name__ == "__main__":
    sys.exit(main())

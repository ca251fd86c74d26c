"""The main job: the whole user journey on a Griffin trained here, or on your own checkpoint.

    python -m hf_recurrentgemma.demo [MODEL] [--prompt "..."] [--max-new-tokens N] [--temperature T] [--seed S]
        [--greedy] [--assistant [DRAFT] | --prompt-lookup N | --no-speculative] [--dtype D] [--device cuda]

With no MODEL it takes the checkpoint this package ships, `griffin-austen-6m` (a 6M-parameter Griffin trained on
Jane Austen's novels, stored as the RecurrentGemma releases are: an Orbax checkpoint directory plus a SentencePiece
`tokenizer.model`), and
  1. converts it to a safetensors folder with a progress bar (kept in ~/.cache/hf_recurrentgemma/converted, so a
     second run skips this step),
  2. loads it with `AutoModelForCausalLM` and `AutoTokenizer`,
  3. streams a continuation of the prompt through `pipeline("text-generation")`,
  4. prints tokens/s and the size of the recurrent state, which is the same at any length.

Speculative decoding (docs/speculative.md): `--assistant DRAFT` lets a small model propose tokens that MODEL checks
in one forward (`--assistant` alone: the shipped draft, `griffin-austen-draft-1m`), `--prompt-lookup N` proposes up
to N tokens copied from the prompt instead, `--no-speculative` decodes plainly. The output is the one plain
decoding gives (greedy: the same tokens, on CPU in float32, bfloat16, int8 and int4 with the package's kernels); the demo then prints the acceptance rate and the speed-up over plain
decoding of the same tokens, measured right after (the lines `hf-recurrentgemma generate --stats` prints).

The sampling, speculation, --dtype and --device flags are those of `hf-recurrentgemma generate`, with the demo's
defaults: sampling on (`--greedy` turns it off; temperature 0.8, top-p 0.95, top-k 50), repetition penalty 1.1,
seed 0, 200 new tokens, float32.

MODEL may also be a folder converted by `hf-recurrentgemma convert` (loaded as is), a Transformers
`recurrent_gemma` folder, or an original checkpoint (Orbax directory or download folder, torch state-dict file):
those are converted first, with `--preset` naming the published model and `--tokenizer` its `tokenizer.model`
(found next to the checkpoint when not given).
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline, set_seed

from .commands.generate import add_sampling_arguments, add_speculation_arguments, check_sampling_arguments
from .commands.loading import DTYPES, add_loading_arguments
from .commands.speculative import AcceptanceCounter, install_draft_hook, prepare_assistant, sameness, speedup_summary
from .griffin.cache_griffin import GriffinCache
from .quantization import check_format, load_quantized
from .shipped import CHECKPOINTS, DRAFT, MODEL, RELEASE, converted_location, is_converted_folder

# The shipped release (shipped.py holds the facts; these names stay for the benchmarks that import them).
BUNDLED_RELEASE = RELEASE
BUNDLED_PRESET = MODEL
BUNDLED_CHECKPOINT = CHECKPOINTS[MODEL]
BUNDLED_DRAFT = CHECKPOINTS[DRAFT].name
BUNDLED_DRAFT_PRESET = DRAFT
# Speculation is the shipped model's default only where it measured faster (benchmarks/bench_speculative.py).
SPECULATIVE_BY_DEFAULT = False
DEFAULT_PROMPT = "Anne had not been two days at Uppercross before"
# The demo's sampling settings (also what benchmarks/bench_speculative.py measures as the demo's default run).
SAMPLING_DEFAULTS = dict(temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.1)


class CountingStreamer(TextStreamer):
    """Prints the continuation as it is generated and counts the generated tokens and when they came."""

    def __init__(self, tokenizer, quiet: bool = False):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.quiet = quiet
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

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if not self.quiet:
            super().on_finalized_text(text, stream_end)


def find_tokenizer(src: Path) -> Path | None:
    """A `tokenizer.model` inside a download folder or next to a checkpoint, as the releases lay them out."""
    for candidate in (src / "tokenizer.model", src.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def prepare(model: Path | str | None, preset: str | None, tokenizer: Path | None, out: Path | None) -> Path:
    """The folder to load: `model` itself when already converted, else its conversion (made once into
    `shipped.converted_location`, then reused; or into `out`). A shipped model's name brings its checkpoint and
    preset (`shipped.py`); no `model` means the shipped griffin-austen-6m."""
    from .convert.pipeline import convert_checkpoint  # conversion tools stay out of the model files
    from .shipped import shipped_name

    name = shipped_name(MODEL if model is None else model)
    if name is not None:
        model, preset = CHECKPOINTS[name], preset or name
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such checkpoint or folder (shipped models go by name: "
                                f"{', '.join(CHECKPOINTS)})")
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


def load_assistant(args, model):
    """The draft model of `--assistant` (a folder, an original checkpoint, or a shipped name; the shipped draft
    when given without a value, or by default for the shipped model where speculation is the default), converted
    like MODEL, in MODEL's dtype and on its device; None for plain decoding."""
    if args.no_speculative or args.prompt_lookup is not None:
        return None
    if args.assistant is None:
        if not (args.model is None and SPECULATIVE_BY_DEFAULT):
            return None
        args.assistant = DRAFT
    folder = prepare(args.assistant, args.assistant_preset, None, None)
    draft = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).to(model.device).eval()
    return prepare_assistant(draft, model, args.num_assistant_tokens, source=str(args.assistant))


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags: the sampling, speculation and loading flags are the commands' own
    (`commands/generate.py`, `commands/loading.py`), with the demo's defaults (sampling on, float32)."""
    parser = argparse.ArgumentParser(prog="python -m hf_recurrentgemma.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?",
                        help="converted folder, original checkpoint, recurrent_gemma folder or shipped model's name "
                             f"(default: the shipped {MODEL})")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    add_sampling_arguments(parser)
    parser.add_argument("--greedy", dest="do_sample", action="store_false",
                        help="no sampling: the most likely token each step")
    add_speculation_arguments(parser, bare_assistant=DRAFT)
    parser.add_argument("--no-speculative", action="store_true", help="plain decoding, one token a step")
    parser.add_argument("--assistant-preset", help="published model of an original --assistant checkpoint")
    add_loading_arguments(parser)
    parser.add_argument("--preset", help="published model of an original checkpoint (e.g. recurrentgemma-2b)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.model of an original checkpoint")
    parser.add_argument("--out", type=Path, help="where to write the converted folder (default: a cache folder)")
    parser.set_defaults(max_new_tokens=200, do_sample=True, seed=0, dtype="float32",
                        repetition_penalty=SAMPLING_DEFAULTS["repetition_penalty"])
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the flags (the commands' checks, plus the demo's own); sampling settings left unset take
    `SAMPLING_DEFAULTS` when sampling."""
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [flag for flag, given in (("--assistant", args.assistant is not None),
                                       ("--prompt-lookup", args.prompt_lookup is not None),
                                       ("--no-speculative", args.no_speculative)) if given]
    if len(chosen) > 1:
        parser.error(f"give one of --assistant, --prompt-lookup and --no-speculative, not {' and '.join(chosen)}")
    if args.num_assistant_tokens is not None and args.assistant is None:
        parser.error("--num-assistant-tokens only applies with --assistant")
    if args.quantize:
        try:
            check_format(args.quantize, args.group_size)
        except (ImportError, ValueError) as err:
            parser.error(f"--quantize: {err}")
    try:
        check_sampling_arguments(args)
    except ValueError as err:
        parser.error(str(err))
    if args.do_sample:
        for field, value in SAMPLING_DEFAULTS.items():
            if getattr(args, field) is None:
                setattr(args, field, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        folder = prepare(args.model, args.preset, args.tokenizer, args.out)
        if args.quantize:
            model = load_quantized(folder, args.quantize, args.group_size,
                                   dtype=torch.bfloat16 if args.quantize == "int4" else DTYPES.get(args.dtype, torch.bfloat16))
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES.get(args.dtype, "auto"))
        model = model.to(args.device).eval()
        draft = load_assistant(args, model)
    except (OSError, ValueError, RuntimeError) as err:  # ConversionError is a ValueError; a bad --device a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"loaded {type(model).__name__}: {params / 1e6:.1f}M parameters, {config.num_hidden_layers} blocks "
          f"({config.block_types.count('recurrent')} recurrent, {config.block_types.count('attention')} local "
          f"attention, window {config.attention_window_size}), {str(model.dtype).removeprefix('torch.')}"
          + (f", {args.quantize} weights" if args.quantize else ""))
    # One GenerationConfig holds every generation setting, passed alone (Transformers 5.19's pipeline warns when
    # its own config meets generation keyword arguments); clean_up_tokenization_spaces=False is what the tokenizer
    # says (5.19's pipeline defaults it to True, then ignores it for BPE with a warning after the streamed text).
    plain = copy.deepcopy(model.generation_config)
    plain.update(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                 do_sample=args.do_sample,
                 **(dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k) if args.do_sample else {}))
    options = dict(return_full_text=False, clean_up_tokenization_spaces=False)
    speculative = {}
    if draft is not None:
        speculative = dict(assistant_model=draft, generation_config=plain)
        print(f"speculative decoding: a {sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M-parameter draft "
              f"({draft.config.num_hidden_layers} blocks) proposes up to "
              f"{draft.generation_config.num_assistant_tokens} tokens a round")
    elif args.prompt_lookup is not None:
        lookup = copy.deepcopy(plain)
        lookup.prompt_lookup_num_tokens = args.prompt_lookup
        speculative = dict(generation_config=lookup)
        print(f"speculative decoding: prompt lookup proposes up to {args.prompt_lookup} tokens a round")

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    streamer = CountingStreamer(tokenizer)
    counter = install_draft_hook(model) if speculative else AcceptanceCounter()
    set_seed(args.seed)
    print(f"\n{args.prompt}", end="", flush=True)
    start = time.perf_counter()
    text = generator(args.prompt, streamer=streamer, **options, **(speculative or dict(generation_config=plain)))
    text = text[0]["generated_text"]
    elapsed = time.perf_counter() - start
    print()
    decode_time = elapsed - ((streamer.first_token_at or start) - start)
    rate = (streamer.generated - 1) / decode_time if streamer.generated > 1 and decode_time > 0 else float("nan")
    print(f"\n{streamer.generated} tokens in {elapsed:.2f} s ({rate:.0f} tokens/s after the first); "
          f"recurrent state {state_bytes(model) / 1024:.0f} KiB per sequence, the same at any length")
    if speculative:
        report_speculation(generator, args, dict(options, generation_config=plain), counter, streamer.generated,
                           elapsed, text)
    return 0


def report_speculation(generator, args, options: dict, counter: AcceptanceCounter, generated: int, elapsed: float,
                       text: str) -> None:
    """Prints the acceptance rate, then decodes the same prompt plainly (not shown) and prints the speed-up (the
    lines `generate --stats` prints, from the same functions)."""
    print(counter.summary())
    plain = CountingStreamer(generator.tokenizer, quiet=True)
    set_seed(args.seed)
    start = time.perf_counter()
    plain_text = generator(args.prompt, streamer=plain, **options)[0]["generated_text"]
    plain_elapsed = time.perf_counter() - start
    print(speedup_summary(generated, elapsed, plain.generated, plain_elapsed,
                          sameness(not args.do_sample, text, plain_text)))


if __name__ == "__main__":
    sys.exit(main())

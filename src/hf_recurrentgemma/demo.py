"""The main job: the whole user journey on a Griffin trained here, or on your own checkpoint.

    python -m hf_recurrentgemma.demo [MODEL] [--prompt "..."] [--max-new-tokens N] [--temperature T] [--seed S]
        [--assistant DRAFT | --prompt-lookup N | --no-speculative]

With no MODEL it takes the checkpoint this package ships, `griffin-austen-6m` (a 6M-parameter Griffin trained on
Jane Austen's novels, stored as the RecurrentGemma releases are: an Orbax checkpoint directory plus a SentencePiece
`tokenizer.model`), and
  1. converts it to a safetensors folder with a progress bar (kept in ~/.cache/hf_recurrentgemma/converted, so a
     second run skips this step),
  2. loads it with `AutoModelForCausalLM` and `AutoTokenizer`,
  3. streams a continuation of the prompt through `pipeline("text-generation")`,
  4. prints tokens/s and the size of the recurrent state, which is the same at any length.

Speculative decoding (docs/speculative.md): `--assistant DRAFT` lets a small model propose tokens that MODEL checks
in one forward (the shipped model's draft, `draft-1m`, is the default assistant for the shipped model),
`--prompt-lookup N` proposes up to N tokens copied from the prompt instead, `--no-speculative` decodes plainly. The
output is the one plain decoding gives (greedy: the same tokens); the demo then prints the acceptance rate and the
speed-up over plain decoding of the same tokens, measured right after.

MODEL may also be a folder converted by `hf-recurrentgemma convert` (loaded as is), a Transformers
`recurrent_gemma` folder, or an original checkpoint (Orbax directory or download folder, torch state-dict file):
those are converted first, with `--preset` naming the published model and `--tokenizer` its `tokenizer.model`
(found next to the checkpoint when not given).
"""

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline, set_seed

from .commands.loading import add_quantize_arguments
from .griffin.cache_griffin import GriffinCache
from .quantization import check_format, load_quantized

BUNDLED_RELEASE = Path(__file__).with_name("assets") / "griffin-austen"
BUNDLED_PRESET = "griffin-austen-6m"
BUNDLED_CHECKPOINT = BUNDLED_RELEASE / "6m"
# Its draft for speculative decoding, beside it in the release folder and sharing its tokenizer.model.
BUNDLED_DRAFT = "draft-1m"
BUNDLED_DRAFT_PRESET = "griffin-austen-draft-1m"
# Speculation is the shipped model's default only where it measured faster (benchmarks/bench_speculative.py).
SPECULATIVE_BY_DEFAULT = False
SHIPPED_ASSISTANT = "shipped"  # `--assistant` given without a path
DRAFT_TOKENS = 6  # num_assistant_tokens for the draft (5.24's default of 20 drafts far past what is accepted)
DEFAULT_PROMPT = "Anne had not been two days at Uppercross before"
# The demo's sampling settings (also what benchmarks/bench_speculative.py measures as the demo's default run).
SAMPLING_DEFAULTS = dict(temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.1)
CACHE_ROOT = Path(os.environ.get("HF_RECURRENTGEMMA_CACHE", Path.home() / ".cache" / "hf_recurrentgemma"))


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


class AcceptanceCounter:
    """Counts the draft tokens that assisted or prompt-lookup decoding proposed and how many the model accepted
    (`generate()` reports neither), by wrapping the candidate generator that `generate()` builds.

    >>> counter = AcceptanceCounter()
    >>> with counter.watching(model):  # doctest: +SKIP
    ...     model.generate(ids, prompt_lookup_num_tokens=10)
    >>> counter.acceptance_rate  # doctest: +SKIP
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.proposed = self.accepted = self.rounds = 0
        self._last_proposed = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed tokens; None while nothing was proposed."""
        return self.accepted / self.proposed if self.proposed else None

    def as_dict(self) -> dict:
        return {"acceptance_rate": self.acceptance_rate, "drafted": self.proposed, "accepted": self.accepted,
                "rounds": self.rounds}

    def wrap(self, generator):
        """Counts what `generator` (a Transformers `CandidateGenerator`) proposes and what is kept; returns it."""
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def counted_get_candidates(input_ids, *args, **kwargs):
            candidates, logits = get_candidates(input_ids, *args, **kwargs)
            self._last_proposed = candidates.shape[1] - input_ids.shape[1]
            return candidates, logits

        def counted_update(input_ids, scores, num_matches):
            self.proposed += self._last_proposed
            self.accepted += int(num_matches)
            self.rounds += 1
            return update(input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = counted_get_candidates, counted_update
        return generator

    @contextlib.contextmanager
    def watching(self, model):
        """Inside the block, every candidate generator `model.generate()` builds is counted."""
        build = model._get_candidate_generator
        model._get_candidate_generator = lambda *args, **kwargs: self.wrap(build(*args, **kwargs))
        try:
            yield self
        finally:
            del model._get_candidate_generator


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
        model, preset = BUNDLED_CHECKPOINT, preset or BUNDLED_PRESET
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


def load_assistant(args, model):
    """The draft model of `--assistant` (the shipped draft when given without a path, or by default for the shipped
    model where speculation is the default), converted like MODEL, in MODEL's dtype; None for plain decoding."""
    if args.no_speculative or args.prompt_lookup is not None:
        return None
    if args.assistant is None:
        if not (args.model is None and SPECULATIVE_BY_DEFAULT):
            return None
        args.assistant = SHIPPED_ASSISTANT
    source, preset = args.assistant, args.assistant_preset
    if source == SHIPPED_ASSISTANT:
        source, preset = BUNDLED_RELEASE / BUNDLED_DRAFT, BUNDLED_DRAFT_PRESET
    draft = AutoModelForCausalLM.from_pretrained(prepare(Path(source), preset, None, None), dtype=model.dtype).eval()
    if draft.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"{source}: the assistant's vocabulary has {draft.config.vocab_size} tokens, the model's "
                         f"{model.config.vocab_size}; an assistant must share the model's tokenizer")
    draft.generation_config.num_assistant_tokens = args.num_assistant_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    return draft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path,
                        help="converted folder, original checkpoint or recurrent_gemma folder (default: the shipped "
                             f"{BUNDLED_PRESET})")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=SAMPLING_DEFAULTS["temperature"])
    parser.add_argument("--top-p", type=float, default=SAMPLING_DEFAULTS["top_p"])
    parser.add_argument("--top-k", type=int, default=SAMPLING_DEFAULTS["top_k"])
    parser.add_argument("--repetition-penalty", type=float, default=SAMPLING_DEFAULTS["repetition_penalty"])
    parser.add_argument("--greedy", action="store_true", help="no sampling: the most likely token each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", help="published model of an original checkpoint (e.g. recurrentgemma-2b)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.model of an original checkpoint")
    parser.add_argument("--out", type=Path, help="where to write the converted folder (default: a cache folder)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32",
                        help="compute dtype (default float32)")
    speculation = parser.add_mutually_exclusive_group()
    speculation.add_argument("--assistant", nargs="?", const=SHIPPED_ASSISTANT, metavar="DRAFT",
                             help="speculative decoding with a draft model sharing MODEL's tokenizer (converted folder "
                                  f"or original checkpoint; without DRAFT: the shipped {BUNDLED_DRAFT}"
                                  + (", the default for the shipped model)" if SPECULATIVE_BY_DEFAULT else ")"))
    speculation.add_argument("--prompt-lookup", type=int, metavar="N",
                             help="speculative decoding with up to N tokens copied from the prompt")
    speculation.add_argument("--no-speculative", action="store_true", help="plain decoding, one token a step")
    parser.add_argument("--assistant-preset", help="published model of an original --assistant checkpoint")
    parser.add_argument("--num-assistant-tokens", type=int, default=DRAFT_TOKENS, metavar="K",
                        help=f"tokens the assistant drafts per round (default {DRAFT_TOKENS})")
    add_quantize_arguments(parser)
    args = parser.parse_args(argv)
    if args.quantize:
        try:
            check_format(args.quantize, args.group_size)
        except ImportError as err:
            parser.error(str(err))
    if args.prompt_lookup is not None and args.prompt_lookup < 1:
        parser.error(f"--prompt-lookup must be at least 1, got {args.prompt_lookup}")
    if args.num_assistant_tokens < 1:
        parser.error(f"--num-assistant-tokens must be at least 1, got {args.num_assistant_tokens}")

    try:
        folder = prepare(args.model, args.preset, args.tokenizer, args.out)
        if args.quantize:
            model = load_quantized(folder, args.quantize, args.group_size,
                                   dtype=torch.bfloat16 if args.quantize == "int4" else getattr(torch, args.dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
        draft = load_assistant(args, model)
    except (OSError, ValueError) as err:  # ConversionError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"loaded {type(model).__name__}: {params / 1e6:.1f}M parameters, {config.num_hidden_layers} blocks "
          f"({config.block_types.count('recurrent')} recurrent, {config.block_types.count('attention')} local "
          f"attention, window {config.attention_window_size}), {model.dtype}"
          + (f", {args.quantize} weights" if args.quantize else ""))
    speculative = {}
    if draft is not None:
        speculative = dict(assistant_model=draft)
        print(f"speculative decoding: a {sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M-parameter draft "
              f"({draft.config.num_hidden_layers} blocks) proposes up to {args.num_assistant_tokens} tokens a round")
    elif args.prompt_lookup is not None:
        speculative = dict(prompt_lookup_num_tokens=args.prompt_lookup)
        print(f"speculative decoding: prompt lookup proposes up to {args.prompt_lookup} tokens a round")

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    streamer = CountingStreamer(tokenizer)
    options = dict(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                   return_full_text=False,
                   **(dict(do_sample=False) if args.greedy else
                      dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)))
    set_seed(args.seed)
    print(f"\n{args.prompt}", end="", flush=True)
    counter = AcceptanceCounter()
    start = time.perf_counter()
    with counter.watching(model) if speculative else contextlib.nullcontext():
        text = generator(args.prompt, streamer=streamer, **options, **speculative)[0]["generated_text"]
    elapsed = time.perf_counter() - start
    print()
    decode_time = elapsed - ((streamer.first_token_at or start) - start)
    rate = (streamer.generated - 1) / decode_time if streamer.generated > 1 and decode_time > 0 else float("nan")
    print(f"\n{streamer.generated} tokens in {elapsed:.2f} s ({rate:.0f} tokens/s after the first); "
          f"recurrent state {state_bytes(model) / 1024:.0f} KiB per sequence, the same at any length")
    if speculative:
        report_speculation(generator, args, options, counter, streamer.generated, elapsed, text)
    return 0


def report_speculation(generator, args, options: dict, counter: "AcceptanceCounter", generated: int, elapsed: float,
                       text: str) -> None:
    """Prints the acceptance rate, then decodes the same prompt plainly (not shown) and prints the speed-up."""
    rate = "" if counter.acceptance_rate is None else f" ({counter.acceptance_rate:.0%})"
    print(f"acceptance: {counter.accepted} of {counter.proposed} proposed tokens{rate} in {counter.rounds} rounds")
    plain = CountingStreamer(generator.tokenizer, quiet=True)
    set_seed(args.seed)
    start = time.perf_counter()
    plain_text = generator(args.prompt, streamer=plain, **options)[0]["generated_text"]
    plain_elapsed = time.perf_counter() - start
    speculative_rate, plain_rate = generated / elapsed, plain.generated / plain_elapsed
    same = ("the same text" if plain_text == text else "a different text") if args.greedy else \
        "a different sample from the same distribution"
    print(f"plain decoding for comparison: {plain.generated} tokens in {plain_elapsed:.2f} s ({plain_rate:.0f} "
          f"tokens/s, {same}); speculative {speculative_rate:.0f} tokens/s, speed-up "
          f"{speculative_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    sys.exit(main())

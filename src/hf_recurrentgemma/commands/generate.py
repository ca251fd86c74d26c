"""`hf-recurrentgemma generate MODEL "PROMPT"`: stream a continuation; `--prompts-file` runs a batch.

One prompt streams its continuation to stdout token by token (statistics go to stderr). A prompts file holds one
prompt per line; they run in left-padded batches of `--batch-size` and each result is one JSON line on stdout,
`{"prompt": ..., "completion": ...}`, in the file's order. With `--assistant` or `--prompt-lookup`, `--stats`
prints the acceptance rate, then decodes the prompt again plainly (not shown) and prints the speed-up.
"""

import json
import sys
import time
from pathlib import Path

import torch

from ..griffin.modeling_griffin import MAX_DRAFT_TOKENS
from .loading import SHIPPED_NAMES, CommandError, add_model_arguments, load_model, load_tokenizer
from .speculative import DRAFT_TOKENS, install_draft_hook, prepare_assistant, sameness, speedup_summary


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise ValueError
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_sampling_arguments(parser) -> None:
    """The sampling flags shared by `generate` and `chat` (Transformers' GenerationConfig fields)."""
    parser.add_argument("--max-new-tokens", type=_positive(int), default=128, metavar="N",
                        help="stop after N new tokens (default 128)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=_positive(float), metavar="T", help="sampling temperature")
    parser.add_argument("--top-k", type=_positive(int), metavar="K", help="sample among the K likeliest tokens")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: smallest set with mass P")
    parser.add_argument("--repetition-penalty", type=_positive(float), metavar="R",
                        help="divide the logits of tokens already in the sequence by R (> 1 discourages repeats)")
    parser.add_argument("--seed", type=int, help="random seed (sampling is reproducible with the same seed)")


def add_speculation_arguments(parser, bare_assistant: str | None = None) -> None:
    """Speculative decoding flags shared by `generate`, `chat` and the demo (docs/speculative.md): the output is the
    one the model alone gives (greedy: the same tokens, on CPU in float32, bfloat16, int8 and int4 with the package's kernels;
    sampling: the same distribution), faster when drafts are
    accepted. `bare_assistant`: what `--assistant` given without a value means (the demo, whose prompt is a flag)."""
    parser.add_argument("--assistant", metavar="DRAFT", **({} if bare_assistant is None else
                                                           dict(nargs="?", const=bare_assistant)),
                        help="draft model (same tokenizer): a folder, or the shipped draft by name "
                        f"({SHIPPED_NAMES.split(', ')[-1]}); it proposes tokens, the model checks them at once"
                        + ("" if bare_assistant is None else f" (without DRAFT: {bare_assistant})"))
    parser.add_argument("--num-assistant-tokens", type=_positive(int), metavar="K",
                        help=f"tokens the assistant drafts per round (default {DRAFT_TOKENS}; at most "
                        f"{MAX_DRAFT_TOKENS} are checked)")
    parser.add_argument("--prompt-lookup", type=_positive(int), metavar="N",
                        help="draft N tokens by copying what followed the last n-gram's earlier occurrence (at "
                        f"most {MAX_DRAFT_TOKENS} are checked)")


def check_speculation_arguments(args) -> None:
    """Refuses flag combinations that would be ignored; runs before the model loads."""
    if args.assistant and args.prompt_lookup:
        raise CommandError("give --assistant or --prompt-lookup, not both")
    if args.num_assistant_tokens is not None and not args.assistant:
        raise CommandError("--num-assistant-tokens only applies with --assistant")


def speculation_kwargs(args, model=None) -> dict:
    """`generate()` keyword arguments from the speculation flags (loads the assistant, in the model's --dtype and
    on its --device). Given `model`, its candidate generators hand the draft one config from then on
    (`install_draft_hook`) and count what is accepted (`model.speculation_counter`)."""
    check_speculation_arguments(args)
    if args.prompt_lookup:
        kwargs = {"prompt_lookup_num_tokens": args.prompt_lookup}
    elif args.assistant:
        draft = load_model(args.assistant, args.dtype, args.device, flag="--assistant")
        if model is not None:
            try:
                prepare_assistant(draft, model, args.num_assistant_tokens)
            except ValueError as err:
                raise CommandError(f"{err}") from None
        kwargs = {"assistant_model": draft}
    else:
        return {}
    if model is not None:
        model.speculation_counter = install_draft_hook(model)
    return kwargs


def check_sampling_arguments(args) -> None:
    """Refuses sampling-only flags without --do-sample (Transformers would ignore them with a warning) and values
    out of range; runs before the model loads."""
    if not args.do_sample:
        given = [f for f in ("temperature", "top_k", "top_p") if getattr(args, f) is not None]
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} only applies with --do-sample")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")


def seed_from_flags(args) -> None:
    """Seeds the random generators when --seed is given (sampling is then reproducible)."""
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)


def generation_kwargs(args, tokenizer) -> dict:
    """`generate()` keyword arguments from the sampling flags (checked by `check_sampling_arguments`); seeds
    the random generators when --seed is given. (Plain keyword arguments, no `generation_config` beside them:
    Transformers 5.19-5.24 warn when both are given.)"""
    check_sampling_arguments(args)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, pad_token_id=tokenizer.pad_token_id)
    for flag in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if getattr(args, flag) is not None:
            kwargs[flag] = getattr(args, flag)
    seed_from_flags(args)
    return kwargs


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines are skipped; `\\n` in a line stands for a newline."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CommandError(f"--prompts-file {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise CommandError(f"--prompts-file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise CommandError(f"--prompts-file {path}: no prompts (the file has no non-blank line)")
    return prompts


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], batch_size: int = 8, **kwargs) -> list[str]:
    """Completions of `prompts` (without the prompts), run in left-padded batches of `batch_size`."""
    tokenizer.padding_side = "left"
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**batch, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        completions += tokenizer.batch_decode(new, skip_special_tokens=True)
    return completions


def run_generate(args) -> int:
    if (args.prompt is None) == (args.prompts_file is None):
        raise CommandError("give exactly one of PROMPT and --prompts-file")
    check_speculation_arguments(args)
    if (args.assistant or args.prompt_lookup) and args.prompts_file and args.batch_size != 1:
        raise CommandError("--assistant and --prompt-lookup decode one sequence at a time: add --batch-size 1")
    if args.stats and not (args.assistant or args.prompt_lookup):
        raise CommandError("--stats compares speculative with plain decoding: give --assistant or --prompt-lookup")
    if args.stats and args.prompts_file:
        raise CommandError("--stats applies to one PROMPT, not --prompts-file")
    prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
    check_sampling_arguments(args)
    from .export import generate_exported, is_export_folder

    if is_export_folder(args.model):  # `hf-recurrentgemma export` output: run by its backend (docs/export.md)
        return generate_exported(args, prompts)
    tokenizer = load_tokenizer(args.model, args.tokenizer)
    model = load_model(args.model, args.dtype, args.device, args.quantize, args.group_size)
    kwargs = {**generation_kwargs(args, tokenizer), **speculation_kwargs(args, model)}
    if args.prompts_file:
        start = time.perf_counter()
        completions = generate_batch(model, tokenizer, prompts, args.batch_size, **kwargs)
        for prompt, completion in zip(prompts, completions):
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False), flush=True)
        print(f"{len(prompts)} prompts in {time.perf_counter() - start:.2f}s", file=sys.stderr)
        return 0

    from transformers import TextStreamer

    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    if args.stats:  # one-time costs (kernel builds and loads, first allocations) go into neither timed run
        with torch.no_grad():
            model.generate(**inputs, **{**kwargs, "max_new_tokens": 2})
        model.speculation_counter.reset()
        seed_from_flags(args)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, streamer=streamer, **kwargs)
    elapsed = time.perf_counter() - start
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = out.shape[1] - prompt_length
    print(f"{new_tokens} tokens in {elapsed:.2f}s ({new_tokens / elapsed:.1f} tokens/s, prompt "
          f"{prompt_length} tokens)", file=sys.stderr)
    if args.stats:
        print(model.speculation_counter.summary(), file=sys.stderr)
        plain_kwargs = {key: value for key, value in kwargs.items()
                        if key not in ("assistant_model", "prompt_lookup_num_tokens")}
        seed_from_flags(args)  # the plain run samples under the same seed
        start = time.perf_counter()
        with torch.no_grad():
            plain = model.generate(**inputs, **plain_kwargs)
        plain_elapsed = time.perf_counter() - start
        same = sameness(not args.do_sample, out[0, prompt_length:].tolist(), plain[0, prompt_length:].tolist())
        print(speedup_summary(new_tokens, elapsed, plain.shape[1] - prompt_length, plain_elapsed, same),
              file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    sub = commands.add_parser("generate", help="stream a continuation of a prompt (or a file of prompts)",
                              description=__doc__.split("\n\n")[0])
    add_model_arguments(sub)  # MODEL may also be a folder written by `hf-recurrentgemma export`
    sub.add_argument("prompt", nargs="?", help="the prompt (or use --prompts-file)")
    sub.add_argument("--prompts-file", metavar="FILE", help="one prompt per line; prints one JSON line per prompt")
    sub.add_argument("--batch-size", type=_positive(int), default=8, metavar="B",
                     help="prompts per left-padded batch with --prompts-file (default 8)")
    add_sampling_arguments(sub)
    add_speculation_arguments(sub)
    sub.add_argument("--stats", action="store_true",
                     help="with --assistant or --prompt-lookup: print the acceptance rate, then decode plainly (not "
                     "shown) and print the speed-up")
    sub.set_defaults(func=run_generate)


__all__ = ["add_parser", "add_sampling_arguments", "add_speculation_arguments", "check_sampling_arguments",
           "check_speculation_arguments", "generation_kwargs", "generate_batch", "read_prompts",
           "run_generate", "seed_from_flags", "speculation_kwargs"]

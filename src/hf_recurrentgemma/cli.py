"""`hf-recurrentgemma`: convert the original RecurrentGemma / Griffin checkpoints to Transformers folders and back.

    hf-recurrentgemma convert SRC OUT --preset recurrentgemma-2b [--dtype bfloat16] [--tokenizer tokenizer.model]
                                      [--verify] [--allow-nonfinite] [--push-to-hub USER/REPO [--private]] [--force]
    hf-recurrentgemma convert griffin-austen-6m OUT  # a checkpoint this package ships, by name (shipped.py)
    hf-recurrentgemma export-orbax FOLDER OUT      # our folder -> Orbax checkpoint of the JAX release
    hf-recurrentgemma export-builtin FOLDER OUT    # our folder -> Transformers' built-in recurrent_gemma
    hf-recurrentgemma export FOLDER OUT --format F # prefill/decode programs: onnx, executorch, openvino, dynamo
    hf-recurrentgemma generate MODEL "PROMPT"      # stream a continuation (--prompts-file for a batch; MODEL may
                                                   # be an `export` folder)
    hf-recurrentgemma chat MODEL                   # talk to an instruction-tuned model; /save, /load, /reset
    hf-recurrentgemma perplexity MODEL --dataset D # exact perplexity of whole documents in constant memory

SRC is detected: an Orbax checkpoint directory (JAX release), a torch state-dict file (PyTorch release) or a
Transformers `recurrent_gemma` folder; or the name of a shipped checkpoint (griffin-austen-6m, its draft
griffin-austen-draft-1m), which brings its preset and tokenizer. MODEL of the inference commands and `--assistant`
take those names too (converted once into a cache folder). Errors are one line on stderr (`error: ...`) with exit
status 2; a failed `--verify` exits with 1. Nothing is left at OUT unless the conversion completed. A tensor holding
NaN or infinite values is refused, naming it, unless `--allow-nonfinite` is given (then one `warning: ...` line
names them).
"""

import argparse
import contextlib
import functools
import logging
import shlex
import sys
import warnings
from pathlib import Path

from .commands import chat, export, generate, perplexity
from .griffin.configuration_griffin import PRESETS
from .convert.builtin import export_builtin
from .convert.finite import NonFiniteWeightsWarning
from .convert.orbax_release import export_orbax
from .convert.pipeline import DTYPES, VerificationFailed, convert_checkpoint
from .convert.reference import UNINFERABLE
from .shipped import CHECKPOINTS, TOKENIZER, shipped_name


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-recurrentgemma", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="original checkpoint -> Transformers folder",
                                  description="Convert an original checkpoint (Orbax directory, torch state dict "
                                  "or Transformers recurrent_gemma folder) to a hf-recurrentgemma folder.")
    convert.add_argument("src", help="Orbax checkpoint directory, torch state-dict file or recurrent_gemma folder, or "
                         f"a shipped checkpoint's name ({', '.join(CHECKPOINTS)})")
    convert.add_argument("out", help="output folder (must not exist, unless --force)")
    convert.add_argument("--preset", choices=sorted(PRESETS),
                         help="published model whose hyperparameters the weights cannot tell (shapes are checked)")
    convert.add_argument("--embeddings-scale-by-sqrt-dim", type=_bool, metavar="{true,false}",
                         help="scale embeddings by sqrt(width) (RecurrentGemma: true)")
    convert.add_argument("--attention-window-size", type=int, metavar="W",
                         help="local attention window: a query sees itself and W previous tokens")
    convert.add_argument("--logits-soft-cap", type=float, metavar="C", help="logit soft cap, 0 for none")
    convert.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                         help="stored dtype (auto: the source's; the releases are bfloat16)")
    convert.add_argument("--max-shard-size", default="2GB",
                         help="largest safetensors shard, e.g. 2GB, 500MB (peak memory is about one shard)")
    convert.add_argument("--tokenizer", metavar="tokenizer.model", type=Path,
                         help="SentencePiece model to convert into fast-tokenizer files")
    convert.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                         help="add the Gemma chat template to the tokenizer (default: for -it presets)")
    convert.add_argument("--verify", action="store_true",
                         help="compare logits of the converted model with the source's; exit 1 above tolerance")
    convert.add_argument("--verify-tolerance", type=float, default=None, metavar="TOL",
                         help="max |logit diff| accepted by --verify (default 5e-5)")
    convert.add_argument("--allow-nonfinite", action="store_true",
                         help="convert tensors holding NaN or infinite values (with a warning naming them) instead "
                         "of refusing them")
    convert.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub repository")
    convert.add_argument("--private", action="store_true", help="create the Hub repository as private")
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")
    convert.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    convert.set_defaults(func=run_convert)

    for name, exporter, what in (("export-orbax", export_orbax, "Orbax checkpoint of the JAX release"),
                               ("export-builtin", export_builtin, "Transformers' built-in recurrent_gemma")):
        sub = commands.add_parser(name, help=f"our folder -> {what}")
        sub.add_argument("src", help="a folder written by `convert` (or save_pretrained)")
        sub.add_argument("out", help="output folder (or checkpoint directory)")
        sub.add_argument("--force", action="store_true", help="replace OUT if it exists")
        sub.set_defaults(func=functools.partial(run_export, exporter))
    for command in (export, generate, chat, perplexity):  # inference and export commands: hf_recurrentgemma/commands/
        command.add_parser(commands)
    return parser


def _public_command(args) -> str:
    """The command line for the model card, local directories stripped from the paths it names."""
    paths = {str(p): Path(p).name for p in (args.src, args.out, args.tokenizer) if p is not None}
    return "hf-recurrentgemma " + shlex.join(paths.get(a, a) for a in args.argv)


@contextlib.contextmanager
def _warnings_as_lines(category: type[Warning]):
    """Warnings of `category` printed as one `warning: ...` line on stderr (as errors are), others as usual."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def one_line(message, cat, filename, lineno, file=None, line=None):
            if issubclass(cat, category):
                print(f"warning: {message}", file=sys.stderr)
            else:
                show(message, cat, filename, lineno, file, line)

        warnings.showwarning = one_line
        warnings.simplefilter("always", category)
        yield


def run_convert(args) -> int:
    src, preset, tokenizer = args.src, args.preset, args.tokenizer
    name = shipped_name(src)
    if name is not None:  # a shipped checkpoint: its own preset and tokenizer unless given
        src, preset, tokenizer = CHECKPOINTS[name], preset or name, tokenizer or TOKENIZER
    with _warnings_as_lines(NonFiniteWeightsWarning):
        result = convert_checkpoint(
            src, args.out, preset=preset, overrides={name: getattr(args, name) for name in UNINFERABLE},
            dtype=args.dtype, max_shard_size=args.max_shard_size, tokenizer=tokenizer,
            chat_template=args.chat_template, verify=args.verify, push_to_hub=args.push_to_hub, private=args.private,
            verify_tolerance=args.verify_tolerance, allow_nonfinite=args.allow_nonfinite, force=args.force,
            progress=not args.quiet, command=_public_command(args),
        )
    if result.verification:
        print(result.verification.summary())
    return 0


def run_export(export, args) -> int:
    print(f"wrote {export(args.src, args.out, force=args.force)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 verification failed, 2 error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    # Orbax restores arrays in concurrent asyncio tasks; after one fails, asyncio would log the others' errors at
    # exit ("Task exception was never retrieved"). The one-line error already says what failed.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except VerificationFailed as err:
        print(err.verification.summary())
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # ConversionError included
        message = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

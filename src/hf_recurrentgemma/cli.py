"""`hf-recurrentgemma`: convert the original RecurrentGemma / Griffin checkpoints to Transformers folders and back.

    hf-recurrentgemma convert SRC OUT --preset recurrentgemma-2b [--dtype bfloat16] [--tokenizer tokenizer.model]
                                      [--verify] [--push-to-hub USER/REPO [--private]] [--force]
    hf-recurrentgemma export-orbax FOLDER OUT      # our folder -> Orbax checkpoint of the JAX release
    hf-recurrentgemma export-builtin FOLDER OUT    # our folder -> Transformers' built-in recurrent_gemma

SRC is detected: an Orbax checkpoint directory (JAX release), a torch state-dict file (PyTorch release) or a
Transformers `recurrent_gemma` folder. Errors are one line on stderr (`error: ...`) with exit status 2; a failed
`--verify` exits with 1. Nothing is left at OUT unless the conversion completed.
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch

from .configuration_griffin import PRESETS, GriffinConfig
from .convert.keymap import KeyMismatchError, expected_shapes
from .convert.sources import ConversionError, check_source, detect_format, open_source, our_tensors
from .convert.writer import OutputFolder, ShardWriter, parse_size, write_config_files, write_model_card

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
UNINFERABLE_FLAGS = ("embeddings_scale_by_sqrt_dim", "attention_window_size", "logits_soft_cap")


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
    convert.add_argument("src", help="Orbax checkpoint directory, torch state-dict file or recurrent_gemma folder")
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
    convert.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub repository")
    convert.add_argument("--private", action="store_true", help="create the Hub repository as private")
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")
    convert.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    convert.set_defaults(func=run_convert)

    orbax = commands.add_parser("export-orbax", help="our folder -> Orbax checkpoint of the JAX release")
    orbax.add_argument("src", help="a folder written by `convert` (or save_pretrained)")
    orbax.add_argument("out", help="output checkpoint directory")
    orbax.add_argument("--force", action="store_true", help="replace OUT if it exists")
    orbax.set_defaults(func=run_export_orbax)

    builtin = commands.add_parser("export-builtin", help="our folder -> Transformers' built-in recurrent_gemma")
    builtin.add_argument("src", help="a folder written by `convert` (or save_pretrained)")
    builtin.add_argument("out", help="output folder")
    builtin.add_argument("--force", action="store_true", help="replace OUT if it exists")
    builtin.set_defaults(func=run_export_builtin)
    return parser


def _say(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _refuse_overlap(src: Path, out: Path) -> None:
    src, out = src.absolute().resolve(), out.resolve()
    if src == out or out in src.parents:
        raise ConversionError(f"{out} holds the source {src}; choose another output folder")


def _config(source, args) -> GriffinConfig:
    """Shapes from the weights, the rest from --preset / explicit flags (explicit wins)."""
    overrides = {name: getattr(args, name) for name in UNINFERABLE_FLAGS}
    if source.format == "builtin":
        config = source.config
        checks = {**(PRESETS[args.preset] if args.preset else {}),
                  **{k: v for k, v in overrides.items() if v is not None}}
        for key, value in checks.items():
            if key != "vocab_size" and getattr(config, key) != value:
                raise ConversionError(f"{source.path}: {key} is {getattr(config, key)} in the folder's config, "
                                      f"not {value}")
        return config
    from .convert.reference import config_from_reference

    try:
        return config_from_reference(source.metas(), preset=args.preset, **overrides)
    except KeyMismatchError:
        raise
    except ValueError as err:
        raise ConversionError(f"{source.path}: {err}") from None


def _dtype(args, source, config) -> torch.dtype:
    if args.dtype != "auto":
        return DTYPES[args.dtype]
    if source.format == "builtin":
        stored = getattr(config, "dtype", None)
        stored = getattr(torch, stored, None) if isinstance(stored, str) else stored
        return stored if stored in DTYPES.values() else torch.float32
    dtypes = {t.dtype for t in source.metas().values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _write_weights(staged: Path, source, config, dtype, max_shard_bytes: int, quiet: bool) -> None:
    from tqdm.auto import tqdm

    shapes = expected_shapes(config)
    total = sum(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=quiet,
              file=sys.stderr) as bar:
        writer = ShardWriter(staged, max_shard_bytes, on_flush=source.release)
        for count, (name, tensor) in enumerate(our_tensors(source, config, dtype), start=1):
            writer.add(name, tensor)
            bar.update(tensor.numel() * tensor.element_size())
            bar.set_postfix_str(f"{count}/{len(shapes)} tensors", refresh=False)
        writer.close()


def run_convert(args) -> int:
    src = Path(args.src)
    output = OutputFolder(args.out, args.force)  # refuses an existing OUT before any work
    _refuse_overlap(src, output.out)
    max_shard_bytes = parse_size(args.max_shard_size)
    fmt, path = detect_format(src)
    if path != src:
        _say(args, f"reading the Orbax checkpoint in {path}")
    source = open_source(fmt, path)
    try:
        _convert(args, source, fmt, path, output, max_shard_bytes)
    finally:
        source.close()
    _say(args, f"wrote {output.out}")
    if args.push_to_hub:
        push_to_hub(output.out, args.push_to_hub, private=args.private)
        _say(args, f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0


def _public_command(args) -> str:
    """The command line for the model card, local directories stripped from the paths it names."""
    paths = {str(p): Path(p).name for p in (args.src, args.out, args.tokenizer) if p is not None}
    return "hf-recurrentgemma " + shlex.join(paths.get(a, a) for a in args.argv)


def _convert(args, source, fmt: str, path: Path, output: OutputFolder, max_shard_bytes: int) -> None:
    config = _config(source, args)
    if fmt != "builtin":
        check_source(source, config)
    dtype = _dtype(args, source, config)
    if args.chat_template and not args.tokenizer:
        raise ConversionError("--chat-template needs --tokenizer tokenizer.model")
    is_it = bool(args.preset and args.preset.endswith("-it"))
    chat = bool(args.tokenizer) and (args.chat_template if args.chat_template is not None else is_it)
    _say(args, f"{fmt} checkpoint {path}: {config.num_hidden_layers} blocks, width {config.hidden_size}, "
               f"vocabulary {config.vocab_size} -> {output.out} ({str(dtype).removeprefix('torch.')})")
    verification = None
    with output as staged:
        staged.mkdir()
        eos_ids = None
        if args.tokenizer:
            from .convert.tokenizer import convert_tokenizer

            turn_ids = convert_tokenizer(args.tokenizer, staged, vocab_size=config.vocab_size, chat_template=chat)
            if chat and "<end_of_turn>" in turn_ids:  # instruction-tuned models end their turn with it
                eos_ids = [config.eos_token_id, turn_ids["<end_of_turn>"]]
        _write_weights(staged, source, config, dtype, max_shard_bytes, args.quiet)
        write_config_files(staged, config, dtype, eos_token_ids=eos_ids)
        if args.verify:
            from .convert.verify import TOLERANCE, verify_folder

            tolerance = args.verify_tolerance if args.verify_tolerance is not None else TOLERANCE
            verification = verify_folder(staged, open_source(fmt, path), config, dtype, tolerance=tolerance)
            print(verification.summary())
            if not verification.ok:
                print(f"error: verification failed; nothing written to {output.out}", file=sys.stderr)
                raise _VerifyFailed()
        write_model_card(
            staged, source=path, source_format=fmt, config=config, dtype=dtype, preset=args.preset,
            command=_public_command(args), repo=args.push_to_hub,
            verification=f"Verified at conversion: {verification.summary()}." if verification else None,
            source_dtype=", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in source.metas().values()}))
            if fmt != "builtin" else "see source config",
        )


class _VerifyFailed(Exception):
    pass


def push_to_hub(folder: Path, repo: str, private: bool = False) -> None:
    """Creates `repo` (if needed) and uploads `folder` with huggingface_hub (credentials from `hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="Upload model converted with hf-recurrentgemma")
    except Exception as err:  # network, auth and offline-mode errors of huggingface_hub
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(f"push to {repo} failed ({message}); the converted folder is at {folder}") from None


def run_export_orbax(args) -> int:
    from .convert.orbax_export import export_orbax

    _refuse_overlap(Path(args.src), Path(args.out).absolute())
    out = export_orbax(args.src, args.out, force=args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_export_builtin(args) -> int:
    from .convert.builtin import export_to_builtin

    _refuse_overlap(Path(args.src), Path(args.out).absolute())
    export_to_builtin(args.src, args.out, force=args.force)
    print(f"wrote {Path(args.out).absolute()}", file=sys.stderr)
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
    except _VerifyFailed:
        return 1
    except (ConversionError, KeyMismatchError, ValueError) as err:
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

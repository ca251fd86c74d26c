"""`convert_checkpoint`: an original checkpoint (any format in `formats.FORMATS`) -> one of our folders.

The steps: detect the format, build the config (shapes from the checkpoint, the rest from a preset and
overrides), check every key and shape, convert the tokenizer, stream the tensors into safetensors shards, write
config files, optionally compare logits with the source, write the model card, move the folder into place, and
optionally push it to the Hub. The command line (`cli.py`) only maps its arguments onto this function.
"""

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..griffin.configuration_griffin import GriffinConfig
from .errors import ConversionError, first_line
from .finite import NonFiniteWeightsWarning
from .formats import detect_source
from .keymap import expected_shapes
from .sources import Source
from .tokenizer import convert_tokenizer
from .verify import TOLERANCE, Verification
from .writer import OutputFolder, ShardWriter, parse_size, refuse_overlap, write_config_files, write_model_card

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote."""

    out: Path  # the folder (absolute)
    files: list[str]  # the names of the files in it, sorted
    config: GriffinConfig
    dtype: torch.dtype  # the stored dtype
    source_format: str  # the format read: "torch", "orbax", "builtin", ...
    verification: Verification | None  # with verify=True


class VerificationFailed(ConversionError):
    """`verify=True` found the converted logits too far from the source's; nothing was written."""

    def __init__(self, message: str, verification: Verification):
        super().__init__(message)
        self.verification = verification


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    dtype: str | torch.dtype = "auto",
    max_shard_size: str | int = "2GB",
    tokenizer: str | Path | None = None,
    chat_template: bool | None = None,
    verify: bool = False,
    verify_tolerance: float | None = None,
    allow_nonfinite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    force: bool = False,
    progress: bool = False,
    command: str | None = None,
) -> ConversionResult:
    """Converts the checkpoint at `src` into our folder `out`, atomically: nothing is left at `out` (or beside it)
    unless the conversion completed. Errors are `ConversionError`s naming the file, key or shape at fault.

    Args:
        src: an Orbax checkpoint directory (or a download folder holding one), a torch state-dict file or a
            Transformers `recurrent_gemma` folder; the format is detected.
        out: the output folder; an existing one is refused unless `force`.
        preset: a name in `PRESETS` giving the hyperparameters the weights cannot tell (shapes are checked).
        overrides: config fields to set explicitly (e.g. `{"attention_window_size": 2048}`); they win over the
            preset; None values are ignored. For a built-in folder, preset and overrides are only checked.
        dtype: "auto" (the source's), "bfloat16", "float32" or a torch dtype.
        max_shard_size: the largest safetensors file ("2GB", "512MiB" or bytes); peak memory is about one shard.
        tokenizer: a SentencePiece `tokenizer.model` to convert into fast-tokenizer files.
        chat_template: add the Gemma chat template (default: for `-it` presets, when a tokenizer is given).
        verify: compare the converted logits with the source's; above `verify_tolerance` (default 5e-5) raise
            `VerificationFailed` and write nothing.
        allow_nonfinite: convert tensors holding NaN or infinite values (one `NonFiniteWeightsWarning` names them
            all); by default the first one is a `ConversionError` naming it and its counts, and nothing is written.
        push_to_hub: upload the finished folder to this Hub repository (`private` for a new one).
        progress: a progress bar and messages on stderr.
        command: the command line to record in the model card.

    Returns:
        A `ConversionResult` (the folder, its files, the config, the stored dtype, the verification).

    Example:
        >>> from hf_recurrentgemma.convert import convert_checkpoint
        >>> result = convert_checkpoint("2b.pt", "recurrentgemma-2b-hf", preset="recurrentgemma-2b")
        >>> result.files[:2]
        ['README.md', 'cache_griffin.py']
    """
    say = (lambda message: print(message, file=sys.stderr)) if progress else (lambda message: None)
    output = OutputFolder(out, force)  # refuses an existing OUT before any work
    refuse_overlap(src, output.out)
    max_shard_bytes = parse_size(max_shard_size)
    if chat_template and not tokenizer:
        raise ConversionError("--chat-template needs --tokenizer tokenizer.model")
    fmt, path = detect_source(src)
    if path != Path(src):
        say(f"reading the {fmt.title} checkpoint in {path}")
    with fmt(path) as source:
        config = source.config(preset, overrides)
        stored = source.default_dtype() if dtype == "auto" else DTYPES.get(dtype, dtype)
        if dtype != "auto" and stored not in DTYPES.values():
            raise ConversionError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {dtype!r}")
        nonfinite: list[str] = []  # with allow_nonfinite: the tensors that hold NaN or infinite values
        tensors = source.tensors(config, stored, on_nonfinite=nonfinite.append if allow_nonfinite else None)
        # (every key and shape is checked by the line above, before any work)
        say(f"{source.describe()}: {config.num_hidden_layers} blocks, width {config.hidden_size}, vocabulary "
            f"{config.vocab_size} -> {output.out} ({str(stored).removeprefix('torch.')})")
        chat_template = bool(preset and preset.endswith("-it")) if chat_template is None else chat_template
        with output as staged:
            staged.mkdir()
            eos_ids = None
            if tokenizer:
                turn_ids = convert_tokenizer(tokenizer, staged, config.vocab_size, chat_template=chat_template)
                if chat_template and "<end_of_turn>" in turn_ids:  # instruction-tuned models end their turn with it
                    eos_ids = [config.eos_token_id, turn_ids["<end_of_turn>"]]
            _write_weights(staged, source, tensors, config, stored, max_shard_bytes, progress)
            if nonfinite:
                warnings.warn(NonFiniteWeightsWarning(
                    f"{source.path}: converted {len(nonfinite)} tensor{'s' if len(nonfinite) > 1 else ''} holding "
                    f"NaN or infinite values (allow_nonfinite): {'; '.join(nonfinite)}"), stacklevel=2)
            write_config_files(staged, config, stored, eos_token_ids=eos_ids)
            verification = (_verify(staged, source, config, stored, verify_tolerance or TOLERANCE, output.out,
                                    allow_nonfinite) if verify else None)
            write_model_card(
                staged, source=source, config=config, dtype=stored, preset=preset, repo=push_to_hub,
                command=command or "hf_recurrentgemma.convert.convert_checkpoint(...)",
                verification=f"Verified at conversion: {verification.summary()}." if verification else None,
            )
    say(f"wrote {output.out}")
    if push_to_hub:
        upload(output.out, push_to_hub, private=private)
        say(f"pushed to https://huggingface.co/{push_to_hub}")
    return ConversionResult(out=output.out, files=sorted(p.name for p in output.out.iterdir()), config=config,
                            dtype=stored, source_format=source.name, verification=verification)


def _write_weights(staged: Path, source: Source, tensors, config, dtype, max_shard_bytes: int, progress: bool):
    from tqdm.auto import tqdm

    shapes = expected_shapes(config)
    total = sum(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=not progress,
              file=sys.stderr) as bar:
        writer = ShardWriter(staged, max_shard_bytes, on_flush=source.release)
        for count, (name, tensor) in enumerate(tensors, start=1):
            writer.add(name, tensor)
            bar.update(tensor.numel() * tensor.element_size())
            bar.set_postfix_str(f"{count}/{len(shapes)} tensors", refresh=False)
        writer.close()


def _verify(staged: Path, source: Source, config, dtype, tolerance: float, out: Path,
            allow_nonfinite: bool) -> Verification:
    from .verify import verify_folder

    with type(source)(source.path) as fresh:  # the first pass consumed the source
        verification = verify_folder(staged, fresh, config, dtype, tolerance=tolerance,
                                     allow_nonfinite=allow_nonfinite)
    if not verification.ok:
        raise VerificationFailed(f"verification failed; nothing written to {out}", verification)
    return verification


def upload(folder: Path, repo: str, private: bool = False) -> None:
    """Creates `repo` (if needed) and uploads `folder` with huggingface_hub (credentials from `hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="Upload model converted with hf-recurrentgemma")
    except Exception as err:  # network, auth and offline-mode errors of huggingface_hub
        raise ConversionError(f"push to {repo} failed ({first_line(err)}); the converted folder is at {folder}"
                              ) from None


__all__ = ["convert_checkpoint", "ConversionResult", "VerificationFailed", "upload"]

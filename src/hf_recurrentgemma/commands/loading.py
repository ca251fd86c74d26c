"""Loading a model folder and its tokenizer for the inference commands.

Both our folders and Transformers' built-in `recurrent_gemma` folders load as `GriffinForCausalLM`: the package
registers a checkpoint loader (`convert/builtin.py`) that converts a built-in folder in memory. The checkpoints
this package ships go by name (`griffin-austen-6m`, `griffin-austen-draft-1m`; `shipped.py`): converted once into
a cache folder, then loaded from it.
"""

import re
from pathlib import Path

import torch

from ..shipped import CHECKPOINTS, shipped_folder, shipped_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CommandError(ValueError):
    """A bad argument or input file; the CLI prints it as one line and exits with status 2."""


SHIPPED_NAMES = ", ".join(CHECKPOINTS)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/repo: left to from_pretrained


def add_loading_arguments(parser) -> None:
    """--dtype and --device, shared by the inference commands and the demo."""
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights' dtype in memory (auto: as stored)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    add_quantize_arguments(parser)


def add_quantize_arguments(parser) -> None:
    """--quantize and --group-size (the inference commands and the demo share them)."""
    from ..quantization import DEFAULT_GROUP_SIZE, FORMATS, GROUP_SIZES

    parser.add_argument("--quantize", choices=FORMATS, default=None,
                        help="weight-only quantization of every linear layer and the head while loading (torchao "
                             "formats; CPU decoding reads 2x (int8) or ~3.6x (int4) fewer bytes than bfloat16; "
                             "needs torchao)")
    parser.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=DEFAULT_GROUP_SIZE,
                        help=f"int4: inputs per scale and zero (default {DEFAULT_GROUP_SIZE})")


def add_model_arguments(parser) -> None:
    """The MODEL argument and the loading flags that every inference command shares."""
    parser.add_argument("model", help="a folder written by `convert`/save_pretrained, a recurrent_gemma folder, or "
                        f"a shipped model's name ({SHIPPED_NAMES})")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (default: the model folder)")
    add_loading_arguments(parser)


def resolve_model(path: str | Path, flag: str = "MODEL") -> str:
    """The folder to load for `path`: a shipped model's name (or its checkpoint directory) becomes its converted
    folder (converted once); a local path must be a model folder; a `user/repo` id is left to from_pretrained.

    Args:
        path: what the user gave.
        flag: how errors name the argument (MODEL, --assistant).
    """
    name = shipped_name(path)
    if name is not None:
        return str(shipped_folder(name))
    check_model_folder(path)
    if not Path(path).exists() and not _HUB_ID.match(str(path)):
        raise CommandError(f"{flag} {path}: no such folder, and not a shipped model ({SHIPPED_NAMES}) or a Hub id "
                           "(user/repo)")
    return str(path)


def check_model_folder(path: str | Path) -> None:
    """Refuses a local path that is not a model folder (a Hub repo id is left to from_pretrained)."""
    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise CommandError(f"{path}: not a model folder (no config.json); convert an original checkpoint first "
                           "(hf-recurrentgemma convert)")


def load_model(path: str | Path, dtype: str = "auto", device: str = "cpu", quantize: str | None = None,
               group_size: int = 128, flag: str = "MODEL"):
    """`GriffinForCausalLM` from our folder or a built-in `recurrent_gemma` folder, in eval mode.

    Args:
        path: a local folder with config.json, a shipped model's name (`resolve_model`), or a Hub repo id where the
            Hub can be reached.
        dtype: "auto" (as stored) or one of `DTYPES`.
        device: where the weights go.
        quantize: None, or "int8"/"int4": every linear layer and the head quantized while loading
            (`hf_recurrentgemma.quantization.load_quantized`); activations in bfloat16 unless `dtype` says otherwise
            (int4 always bfloat16, the dtype of its scales).
        group_size: int4's inputs per scale and zero.
        flag: how errors name the argument.
    """
    from ..griffin.modeling_griffin import GriffinForCausalLM

    path = resolve_model(path, flag)
    if dtype != "auto" and dtype not in DTYPES:
        raise CommandError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise CommandError(f"--device: {err}") from None
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the commands print their own progress; a loading bar is noise here
    try:
        if quantize is not None:
            from ..quantization import check_format, load_quantized

            try:
                check_format(quantize, group_size)
            except (ImportError, ValueError) as err:
                raise CommandError(f"--quantize: {err}") from None
            compute = torch.bfloat16 if quantize == "int4" or dtype == "auto" else DTYPES[dtype]
            model = load_quantized(path, quantize, group_size, dtype=compute)
        else:
            model = GriffinForCausalLM.from_pretrained(path, dtype="auto" if dtype == "auto" else DTYPES[dtype])
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    return model.to(torch_device).eval()


def load_tokenizer(model_path: str | Path, tokenizer_path: str | Path | None = None):
    """The tokenizer saved with the model (or at `tokenizer_path`); a clear error when there is none."""
    from transformers import AutoTokenizer

    model_path = resolve_model(model_path)
    where = str(tokenizer_path or model_path)
    folder = Path(where)
    if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                       "tokenizer.model")):
        flag = "--tokenizer" if tokenizer_path else "--tokenizer PATH (or convert with --tokenizer tokenizer.model)"
        raise CommandError(f"{where}: no tokenizer files (tokenizer.json, tokenizer_config.json); pass {flag}")
    tokenizer = AutoTokenizer.from_pretrained(where)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # batches need one; Gemma tokenizers have <pad>=0
    return tokenizer


__all__ = ["CommandError", "DTYPES", "SHIPPED_NAMES", "add_loading_arguments", "add_model_arguments",
           "add_quantize_arguments", "check_model_folder", "load_model", "load_tokenizer", "resolve_model"]

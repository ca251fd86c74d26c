"""Writing a converted model folder: atomically, shard by shard, with its config, remote code and model card.

Nothing appears at OUT until the folder is complete: everything is written into a hidden staging folder next to
OUT (same filesystem, so the final move is a rename) which is removed on any failure or interrupt.
"""

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..griffin.configuration_griffin import GriffinConfig
from .errors import ConversionError

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'2GB' -> 2 * 10**9 (decimal, as Transformers' max_shard_size), '512MiB' -> 512 * 2**20, 1000 -> 1000."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ConversionError(f"cannot parse size {text!r}; use e.g. 2GB, 500MB or 512MiB")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size <= 0:
        raise ConversionError(f"size must be positive, got {text!r}")
    return size


def refuse_overlap(src: str | Path, out: str | Path) -> None:
    """Refuses an output that is the source or holds it (replacing it would delete the input)."""
    src, out = Path(src).absolute().resolve(), Path(out).absolute().resolve()
    if src == out or out in src.parents:
        raise ConversionError(f"{out} holds the source {src}; choose another output folder")


class OutputFolder:
    """Context manager staging a new folder (or Orbax checkpoint) for OUT.

    `__enter__` returns a path that does not exist yet, inside a private temporary folder next to OUT; the caller
    creates it. On a clean exit it is renamed to OUT (an existing OUT is replaced only with `force`); on an error
    everything staged is deleted, and the error names OUT wherever it named a staging path (`name_output_in`). An
    existing OUT is refused at construction, before any work.
    """

    def __init__(self, out: str | Path, force: bool = False):
        self.out = Path(out).absolute()
        self.force = force
        if (self.out.exists() or self.out.is_symlink()) and not force:
            raise ConversionError(f"{self.out} already exists; pass --force to replace it")
        self.temp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.out.parent
        try:
            self.temp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=parent))
        except OSError as err:
            raise ConversionError(f"cannot write to {parent} for {self.out.name}: {err.strerror}") from None
        return self.temp / self.out.name

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._commit(self.temp / self.out.name)
        except BaseException as err:
            self.name_output_in(err)
            raise
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)
        if exc is not None:
            self.name_output_in(exc)
        return False

    def name_output_in(self, err: BaseException) -> None:
        """Rewrites, in place, every staging path in `err` (message, OSError file names) as OUT: the user asked
        for OUT, and the staging folder is gone by the time the message is read. The exception keeps its type."""
        staged = self.temp / self.out.name
        # Longest first: the staged folder (also as resolved through symlinks), the old OUT moved aside, the rest.
        spellings = [(re.escape(str(path)), str(self.out)) for path in {staged, staged.resolve()}]
        spellings += [(re.escape(str(self.temp)) + r"/old-[0-9a-f]{32}", str(self.out)),
                      (re.escape(str(self.temp.resolve())), str(self.out)), (re.escape(str(self.temp)), str(self.out))]

        def rewrite(value):
            if not isinstance(value, (str, os.PathLike)):
                return value
            text = os.fspath(value)
            if not isinstance(text, str):
                return value
            for pattern, replacement in spellings:
                text = re.sub(pattern, lambda match: replacement, text)
            return text if isinstance(value, str) else type(value)(text)

        if isinstance(err, OSError):  # its message is built from these, not from args
            err.filename, err.filename2, err.strerror = map(rewrite, (err.filename, err.filename2, err.strerror))
        else:
            err.args = tuple(rewrite(arg) for arg in err.args)

    def _commit(self, staged: Path) -> None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o777 & ~umask)  # mkdtemp's 0700 would make the published folder private
        old = None
        if self.out.exists() or self.out.is_symlink():
            if not self.force:
                raise ConversionError(f"{self.out} appeared while converting; pass --force to replace it")
            old = self.temp / f"old-{uuid.uuid4().hex}"
            os.rename(self.out, old)  # moved aside, removed with the staging folder
        try:
            os.rename(staged, self.out)
        except OSError:
            if old is not None:
                os.rename(old, self.out)
            raise


class ShardWriter:
    """Buffers tensors up to `max_shard_bytes`, then writes them with `safetensors.torch.save_file`.

    Shards get their final names (`model-00001-of-00003.safetensors`, or `model.safetensors` when there is one)
    when the count is known, plus `model.safetensors.index.json` when sharded. Peak memory is about one shard (a
    single tensor larger than the limit gets a shard of its own). `on_flush` runs after each shard is on disk.
    """

    def __init__(self, folder: Path, max_shard_bytes: int, on_flush: Callable[[], None] | None = None):
        self.folder, self.max_bytes, self.on_flush = folder, max_shard_bytes, on_flush
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0
        self.names: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.names:
            raise ConversionError(f"tensor {name!r} produced twice")
        self.names.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        self.buffer[name] = tensor
        self.buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self.shards)}.partial"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0
        if self.on_flush is not None:
            self.on_flush()

    def close(self) -> list[str]:
        """Writes the last shard, names the shards, writes the index; returns the file names."""
        if self.buffer or not self.shards:
            self._flush()
        count = len(self.shards)
        names = (["model.safetensors"] if count == 1
                 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        weight_map = {}
        for i, (keys, name) in enumerate(zip(self.shards, names)):
            os.rename(self.folder / f".shard-{i}.partial", self.folder / name)
            weight_map.update({key: name for key in keys})
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            names.append("model.safetensors.index.json")
        return names


def write_config_files(folder: Path, config: GriffinConfig, dtype: torch.dtype,
                       eos_token_ids: list[int] | None = None) -> None:
    """config.json (with auto_map), the remote-code .py files, generation_config.json (Gemma ids)."""
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    from ..griffin.modeling_griffin import GriffinForCausalLM

    config.architectures = ["GriffinForCausalLM"]
    config.dtype = dtype
    with torch.device("meta"):  # only its class is used: custom_object_save copies the module files
        model = GriffinForCausalLM(config)
    custom_object_save(model, folder, config=config)
    config.save_pretrained(folder)  # copies configuration_griffin.py and adds AutoConfig to auto_map
    generation = GenerationConfig(bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
                                  eos_token_id=eos_token_ids or config.eos_token_id)
    generation.save_pretrained(folder)


MODEL_CARD = """---
library_name: transformers
pipeline_tag: text-generation
tags:
- griffin
- recurrentgemma
- hf-recurrentgemma
{license}---

# {title}

{description}

## Provenance

| | |
|---|---|
| Source | `{source_name}` ({source_format}, {source_size}) |
{rows}
| Converted with | hf-recurrentgemma {version}, transformers {transformers_version}, torch {torch_version} |
| Converted on | {date} |

Command:

```
{command}
```

Every tensor of the source was mapped by the declarative key map of `hf_recurrentgemma.convert.keymap` (the MLP
input projection is split into gate and up projections, Flax kernels are transposed); every source key was
consumed and every parameter produced, with shapes checked. {verification}

## Usage

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
```

`attention_window_size` has the meaning of the original release: a query sees itself and the
{window} previous tokens.
"""


def write_model_card(folder: Path, *, source, config: GriffinConfig, dtype: torch.dtype, preset: str | None,
                     command: str, verification: str | None, repo: str | None) -> None:
    """README.md saying where the weights came from (`source`, a `Source`) and how they were converted."""
    import transformers

    from .. import __version__

    path = source.path
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    rows = [f"| Preset | `{preset}` |" if preset else "| Preset | none (hyperparameters given explicitly) |",
            f"| Source dtype | {', '.join(source.dtype_names())} |",
            f"| Stored dtype | {str(dtype).removeprefix('torch.')} |",
            f"| Architecture | {config.num_hidden_layers} blocks ({', '.join(sorted(set(config.block_types)))}), "
            f"width {config.hidden_size}, vocabulary {config.vocab_size} |",
            f"| Embedding scale / window / soft cap | {config.embeddings_scale_by_sqrt_dim} / "
            f"{config.attention_window_size} / {config.logits_soft_cap} |"]
    is_gemma = bool(preset and preset.startswith("recurrentgemma"))
    title = f"{preset} (converted)" if preset else "Griffin model (converted)"
    description = (f"{'RecurrentGemma' if is_gemma else 'Griffin'} weights converted from the original {source.title} "
                   "checkpoint to a Transformers folder for the `griffin` model of hf-recurrentgemma, whose numerics "
                   "equal Google DeepMind's reference implementation (`recurrentgemma`). The model code ships with "
                   "the folder (`trust_remote_code=True`).")
    if is_gemma:
        description += " Use of the weights is subject to the Gemma Terms of Use."
    card = MODEL_CARD.format(
        license="license: gemma\n" if is_gemma else "", title=title, description=description,
        source_name=path.name, source_format=source.name, source_size=f"{size / 1e9:.2f} GB" if size >= 1e8
        else f"{size} bytes", rows="\n".join(rows), version=__version__,
        transformers_version=transformers.__version__, torch_version=torch.__version__.split("+")[0],
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), command=command,
        verification=verification or "The logits were not compared at conversion time (`--verify` was not given).",
        repo=repo or "path/to/this/folder", window=config.attention_window_size,
    )
    (folder / "README.md").write_text(card)


__all__ = ["OutputFolder", "ShardWriter", "parse_size", "refuse_overlap", "write_config_files", "write_model_card"]

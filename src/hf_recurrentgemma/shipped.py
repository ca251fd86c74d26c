"""The checkpoints this package ships, by name, and the one rule for where their conversions are kept.

`assets/griffin-austen/` holds two original checkpoints laid out as the RecurrentGemma releases are (Orbax
directories beside one SentencePiece `tokenizer.model`): `griffin-austen-6m`, the model, and
`griffin-austen-draft-1m`, its draft for speculative decoding. Each is named by its preset, so the commands accept
the name wherever they take a model:

    hf-recurrentgemma convert griffin-austen-6m my-folder          # to a folder you choose
    hf-recurrentgemma generate griffin-austen-6m "Emma" --assistant griffin-austen-draft-1m

A path that exists always wins over a name. A name given where a converted folder is needed is converted once into
`converted_location(...)` (under `$HF_RECURRENTGEMMA_CACHE`, default `~/.cache/hf_recurrentgemma`) and reused.
"""

import hashlib
import os
import sys
from pathlib import Path

RELEASE = Path(__file__).with_name("assets") / "griffin-austen"
TOKENIZER = RELEASE / "tokenizer.model"
MODEL = "griffin-austen-6m"
DRAFT = "griffin-austen-draft-1m"
# Shipped name (= its preset in configuration_griffin.PRESETS) -> its Orbax checkpoint directory.
CHECKPOINTS = {MODEL: RELEASE / "6m", DRAFT: RELEASE / "draft-1m"}


def cache_root() -> Path:
    """Where conversions made on the user's behalf are kept (read at each call, so tests can point it elsewhere)."""
    return Path(os.environ.get("HF_RECURRENTGEMMA_CACHE", Path.home() / ".cache" / "hf_recurrentgemma"))


def converted_location(src: Path) -> Path:
    """Where the conversion of the checkpoint `src` is kept: named after it and a hash of its path and timestamps,
    so that a changed checkpoint is converted again."""
    src = Path(src)
    stamp = f"{src.resolve()}:{src.stat().st_mtime_ns}:{sorted(p.stat().st_mtime_ns for p in src.rglob('*'))}"
    return cache_root() / "converted" / f"{src.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


def shipped_name(text: str | Path) -> str | None:
    """The shipped checkpoint `text` names, or None: a shipped name that is not an existing path, or the path of a
    shipped checkpoint directory itself."""
    path = Path(text)
    if not path.exists():
        return str(text) if str(text) in CHECKPOINTS else None
    resolved = path.resolve()
    return next((name for name, checkpoint in CHECKPOINTS.items() if checkpoint.resolve() == resolved), None)


def is_converted_folder(path: Path) -> bool:
    import json

    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "griffin"


def convert_shipped(name: str, out: str | Path, *, force: bool = False, progress: bool = True, **options):
    """Converts the shipped checkpoint `name` (with its preset and tokenizer) to `out`; returns the
    `ConversionResult`. `options` go to `convert_checkpoint` (dtype, verify, push_to_hub, ...)."""
    from .convert.pipeline import convert_checkpoint

    if name not in CHECKPOINTS:
        raise ValueError(f"{name}: not a shipped checkpoint (shipped: {', '.join(CHECKPOINTS)})")
    options.setdefault("command", f"hf-recurrentgemma convert {name} {Path(out).name}")
    return convert_checkpoint(CHECKPOINTS[name], out, preset=name, tokenizer=TOKENIZER, force=force,
                              progress=progress, **options)


def shipped_folder(name: str, progress: bool = True) -> Path:
    """The converted folder of the shipped checkpoint `name`: converted into `converted_location` on first use
    (progress on stderr), then reused."""
    if name not in CHECKPOINTS:
        raise ValueError(f"{name}: not a shipped checkpoint (shipped: {', '.join(CHECKPOINTS)})")
    out = converted_location(CHECKPOINTS[name])
    if not is_converted_folder(out):
        if progress:
            print(f"converting the shipped {name} once, to {out}", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_shipped(name, out, force=out.exists(), progress=progress)
    return out


__all__ = ["CHECKPOINTS", "DRAFT", "MODEL", "RELEASE", "TOKENIZER", "cache_root", "convert_shipped",
           "converted_location", "is_converted_folder", "shipped_folder", "shipped_name"]

"""Model folders: their config.json, their safetensors weights (one `model.safetensors`, or shards with an index)
checked up front from the headers and then read one tensor at a time, and our own folders as the input of an
export."""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..griffin.configuration_griffin import GriffinConfig
from .errors import ConversionError, KeyMismatchError, first_line
from .keymap import check_keys, expected_shapes, tied_extras

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def folder_config(folder: str | os.PathLike) -> dict | None:
    """The folder's config.json as a dict; None when it has none. An unreadable one is an error naming it."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConversionError(f"{path}: not a readable JSON config ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return config


def safetensors_headers(folder: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{key: (file, shape, dtype)} from the safetensors headers of a folder. Every file is opened, so a truncated
    or foreign file is reported here, by name; an index that disagrees with its files is an error."""
    folder = str(folder)
    index_path, single = os.path.join(folder, INDEX), os.path.join(folder, SINGLE)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConversionError(f"{index_path}: not a safetensors index ({err!r})") from None
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        weight_map, files = None, [SINGLE]
    else:
        raise ConversionError(f"{folder}: no {SINGLE} or {INDEX}; not a safetensors checkpoint folder")
    found = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: listed in {INDEX} but missing")
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    header = f.get_slice(key)
                    if key in found:
                        raise KeyMismatchError(f"{key!r} is in both {found[key][0]} and {name}")
                    found[key] = (name, tuple(header.get_shape()), header.get_dtype())
        except SafetensorError as err:
            raise ConversionError(f"{path}: corrupt or not a safetensors file ({err})") from None
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in found or found[key][0] != name:
                raise KeyMismatchError(f"{INDEX} puts {key!r} in {name}, but that file does not hold it")
    return found


class FolderReader:
    """Reads single tensors of a safetensors folder, keeping each file open; `headers` as `safetensors_headers`."""

    def __init__(self, folder: str | os.PathLike, headers: dict | None = None):
        self.folder, self.handles = str(folder), {}
        self.headers = safetensors_headers(folder) if headers is None else headers

    def get(self, key: str) -> torch.Tensor:
        if key not in self.headers:
            raise KeyMismatchError(f"{self.folder}: missing key {key!r}")
        name = self.headers[key][0]
        if name not in self.handles:
            self.handles[name] = safe_open(os.path.join(self.folder, name), framework="pt")
        return self.handles[name].get_tensor(key)

    def close(self) -> None:
        self.handles.clear()


def read_griffin_folder(folder: str | os.PathLike) -> tuple[GriffinConfig, FolderReader]:
    """(config, reader) of one of our folders (what `save_pretrained` or `convert_checkpoint` wrote), with every
    key and shape checked against the config. The input of the exports."""
    raw = folder_config(folder)
    if raw is None:
        raise ConversionError(f"{folder}: no {CONFIG}; not a model folder")
    if raw.get("model_type") != GriffinConfig.model_type:
        raise ConversionError(f"{Path(folder) / CONFIG}: model_type is {raw.get('model_type')!r}, not 'griffin' "
                              "(convert it with `hf-recurrentgemma convert` first)")
    config = GriffinConfig.from_dict(raw)
    reader = FolderReader(folder)
    check_keys({k: v[1] for k, v in reader.headers.items()}, expected_shapes(config), "checkpoint",
               where=str(folder), files={k: v[0] for k, v in reader.headers.items()}, optional=tied_extras(config))
    return config, reader


__all__ = ["folder_config", "safetensors_headers", "FolderReader", "read_griffin_folder", "DTYPES"]

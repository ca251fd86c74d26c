"""Reading a folder of safetensors weights (one `model.safetensors`, or shards with an index), checked up front
from the headers and then read one tensor at a time."""

import json
import os

import torch
from safetensors import SafetensorError, safe_open

from .keymap import KeyMismatchError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


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
            raise ValueError(f"{index_path}: not a safetensors index ({err!r})") from None
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        weight_map, files = None, [SINGLE]
    else:
        raise FileNotFoundError(f"{folder}: no {SINGLE} or {INDEX}; not a safetensors checkpoint folder")
    found = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: listed in {INDEX} but missing")
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    header = f.get_slice(key)
                    if key in found:
                        raise KeyMismatchError(f"{key!r} is in both {found[key][0]} and {name}")
                    found[key] = (name, tuple(header.get_shape()), header.get_dtype())
        except SafetensorError as err:
            raise ValueError(f"{path}: corrupt or not a safetensors file ({err})") from None
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in found or found[key][0] != name:
                raise KeyMismatchError(f"{INDEX} puts {key!r} in {name}, but that file does not hold it")
    return found


class FolderReader:
    """Reads single tensors of a folder whose headers `safetensors_headers` returned, keeping each file open."""

    def __init__(self, folder: str | os.PathLike, headers: dict[str, tuple[str, tuple[int, ...], str]]):
        self.folder, self.headers, self.handles = str(folder), headers, {}

    def get(self, key: str) -> torch.Tensor:
        if key not in self.headers:
            raise KeyMismatchError(f"{self.folder}: missing key {key!r}")
        name = self.headers[key][0]
        if name not in self.handles:
            self.handles[name] = safe_open(os.path.join(self.folder, name), framework="pt")
        return self.handles[name].get_tensor(key)

    def close(self) -> None:
        self.handles.clear()

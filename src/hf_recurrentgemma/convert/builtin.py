"""Conversion between folders of Transformers' built-in `recurrent_gemma` format and ours, streaming.

`read_builtin_folder` checks every key, shape and file up front (from the safetensors headers), then yields our
tensors shard by shard. `export_to_builtin` writes our folder in the built-in format, one output shard in memory
at a time, into a temporary folder that replaces OUT only when complete. The config translation and what it
changes (the attention window off-by-one, the doubled `intermediate_size`, ...) live in `builtin_format`.
"""

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping

import torch
from safetensors import safe_open
from transformers import RecurrentGemmaConfig
from transformers.utils.hub import convert_file_size_to_int

from ..builtin_format import (
    builtin_dict_from_griffin,
    config_from_builtin,
    conv_kernel_to_builtin,
    conv_kernel_to_griffin,
    is_builtin_config,
)
from ..configuration_griffin import GriffinConfig
from .keymap import KeyMismatchError, Rule, expected_shapes, rename, rules_by_layer
from .safetensors_folder import INDEX, FolderReader, safetensors_headers

logger = logging.getLogger(__name__)

CONFIG = "config.json"


def _conv_forward(w):  # built-in (L, 1, K) -> ours (K, L)
    return (conv_kernel_to_griffin(w),)


# Built-in key (`{}` = layer index) -> our key, with the per-tensor transform. Checked against
# `builtin_format.BUILTIN_RENAMES` (what `from_pretrained` uses) by the tests.
BUILTIN_TOP_RULES = (
    rename("model.embed_tokens.weight", "model.embed_tokens.weight"),
    rename("model.final_norm.weight", "model.final_norm.weight"),
)
BUILTIN_COMMON_RULES = tuple(
    rename(f"model.layers.{{}}.{builtin}", f"model.layers.{{}}.{ours}")
    for builtin, ours in [
        ("temporal_pre_norm.weight", "temporal_pre_norm.weight"),
        ("channel_pre_norm.weight", "channel_pre_norm.weight"),
        ("mlp_block.gate_proj.weight", "mlp.gate_proj.weight"), ("mlp_block.gate_proj.bias", "mlp.gate_proj.bias"),
        ("mlp_block.up_proj.weight", "mlp.up_proj.weight"), ("mlp_block.up_proj.bias", "mlp.up_proj.bias"),
        ("mlp_block.down_proj.weight", "mlp.down_proj.weight"), ("mlp_block.down_proj.bias", "mlp.down_proj.bias"),
    ]
)
BUILTIN_RECURRENT_RULES = tuple(
    rename(f"model.layers.{{}}.temporal_block.{builtin}", f"model.layers.{{}}.temporal_block.{ours}")
    for builtin, ours in [
        ("linear_x.weight", "linear_x.weight"), ("linear_x.bias", "linear_x.bias"),
        ("linear_y.weight", "linear_y.weight"), ("linear_y.bias", "linear_y.bias"),
        ("linear_out.weight", "linear_out.weight"), ("linear_out.bias", "linear_out.bias"),
        ("conv_1d.bias", "conv_1d.bias"),
        ("rg_lru.recurrent_param", "rg_lru.a_param"),
        ("rg_lru.input_gate_weight", "rg_lru.input_gate.weight"), ("rg_lru.input_gate_bias", "rg_lru.input_gate.bias"),
        ("rg_lru.recurrent_gate_weight", "rg_lru.a_gate.weight"),
        ("rg_lru.recurrent_gate_bias", "rg_lru.a_gate.bias"),
    ]
) + (
    # nn.Conv1d(L, L, K, groups=L) weight (L, 1, K) <-> ours (K, L); tap K-1 is the current token in both.
    Rule("model.layers.{}.temporal_block.conv_1d.weight", ("model.layers.{}.temporal_block.conv_1d.weight",),
         _conv_forward, conv_kernel_to_builtin),
)
BUILTIN_ATTENTION_RULES = tuple(
    rename(f"model.layers.{{}}.temporal_block.{name}", f"model.layers.{{}}.temporal_block.{name}")
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "o_proj.bias")
)
BUILTIN_RULES = BUILTIN_TOP_RULES + BUILTIN_COMMON_RULES + BUILTIN_RECURRENT_RULES + BUILTIN_ATTENTION_RULES
LM_HEAD = "lm_head.weight"


def rules_for_builtin(config: GriffinConfig) -> list[Rule]:
    """The rules of a model with this config, layer index filled in (plus `lm_head.weight` when untied)."""
    rules = list(rules_by_layer(config, BUILTIN_TOP_RULES, BUILTIN_COMMON_RULES, BUILTIN_RECURRENT_RULES,
                                BUILTIN_ATTENTION_RULES))
    if not config.tie_word_embeddings:
        rules.append(rename(LM_HEAD, LM_HEAD))
    return rules


def _our_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    shapes = expected_shapes(config)
    if not config.tie_word_embeddings:
        shapes[LM_HEAD] = (config.vocab_size, config.hidden_size)
    return shapes


def builtin_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each built-in parameter for this config (found by running the backward transforms on meta)."""
    ours = _our_shapes(config)
    return {
        rule.source: tuple(rule.backward(*(torch.empty(ours[t], device="meta") for t in rule.targets)).shape)
        for rule in rules_for_builtin(config)
    }


# --- in-memory conversion (tests, small models) ---------------------------------------------------------------------

def builtin_to_ours(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Built-in state dict -> ours. A tied `lm_head.weight` is accepted and dropped. Checks keys and shapes."""
    _check({k: tuple(v.shape) for k, v in state_dict.items()}, builtin_shapes(config), config, "built-in checkpoint")
    out = {}
    for rule in rules_for_builtin(config):
        out.update(zip(rule.targets, rule.forward(state_dict[rule.source])))
    return out


def ours_to_builtin(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the built-in's (without a tied `lm_head.weight`). Checks keys and shapes."""
    _check({k: tuple(v.shape) for k, v in state_dict.items()}, _our_shapes(config), config, "checkpoint")
    return {rule.source: rule.backward(*(state_dict[t] for t in rule.targets)) for rule in rules_for_builtin(config)}


def _first(keys, what: str) -> str:
    keys = sorted(keys)
    return f"{keys[0]!r}" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "") + what


def _check(found: Mapping[str, tuple], expected: Mapping[str, tuple], config: GriffinConfig, where: str,
           files: Mapping[str, str] | None = None) -> None:
    """`found` ({key: shape}) holds every expected key with its shape, and nothing else (bar a tied lm_head).
    Errors name the key, the shapes and (with `files`) the file holding it."""
    missing = set(expected) - set(found)
    if missing:
        raise KeyMismatchError(f"missing key in {where}: {_first(missing, '')}")
    extra = set(found) - set(expected) - ({LM_HEAD} if config.tie_word_embeddings else set())
    if extra:
        raise KeyMismatchError(f"unexpected key in {where}: {_first(extra, '')}")
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            in_file = f" ({files[key]})" if files else ""
            raise KeyMismatchError(f"{key!r} in {where}{in_file} has shape {tuple(found[key])}, expected {shape}")


# --- folders --------------------------------------------------------------------------------------------------------

def _read_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; not a model folder")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    return config


def is_builtin_folder(path: str) -> bool:
    """Whether `path` is a folder whose config.json says `model_type: "recurrent_gemma"`."""
    try:
        return is_builtin_config(_read_config(str(path)))
    except (OSError, ValueError):
        return False


def read_builtin_folder(path: str) -> tuple[GriffinConfig, Iterator[tuple[str, torch.Tensor]]]:
    """A built-in `recurrent_gemma` folder -> (our config, iterator of (our key, tensor)).

    All keys, shapes and files are checked before this returns; the iterator then reads one shard at a time and
    yields each of our tensors once (dtype kept; a tied `lm_head.weight` is dropped).
    """
    path = str(path)
    raw = _read_config(path)
    if not is_builtin_config(raw):
        raise ValueError(f"{os.path.join(path, CONFIG)}: model_type is {raw.get('model_type')!r}, "
                         "not 'recurrent_gemma'")
    config = config_from_builtin(raw, where=os.path.join(path, CONFIG))
    found = safetensors_headers(path)
    _check({k: v[1] for k, v in found.items()}, builtin_shapes(config), config, path,
           {k: v[0] for k, v in found.items()})
    rules = {rule.source: rule for rule in rules_for_builtin(config)}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        produced = set()
        for name in sorted({file for file, _, _ in found.values()}):
            with safe_open(os.path.join(path, name), framework="pt") as f:
                for key in f.keys():
                    if key not in rules:
                        continue  # a tied lm_head
                    rule = rules[key]
                    for target, tensor in zip(rule.targets, rule.forward(f.get_tensor(key))):
                        produced.add(target)
                        yield target, tensor
        missing = set(_our_shapes(config)) - produced
        assert not missing, f"not produced: {sorted(missing)[:3]}"

    return config, tensors()


_NOT_COPIED = {CONFIG, INDEX}
_NOT_COPIED_SUFFIXES = (".py", ".safetensors", ".bin", ".pt", ".pth")  # weights, and our remote code


def export_to_builtin(src_folder: str, out_folder: str, force: bool = False, max_shard_size: int | str = "5GB") -> str:
    """Our saved folder -> a Transformers built-in `recurrent_gemma` folder computing the same function (as far
    as the built-in can: unpadded sequences, no beam search). Returns `out_folder`.

    Writes `attention_window_size = W + 1` (the built-in's window of W sees W - 1 previous tokens) and records our
    values under `griffin_export` in config.json, so reading the folder back gives our config exactly. Tensors keep
    their dtype; at most one output shard (`max_shard_size`, bytes or e.g. "5GB") is in memory. Everything is
    written to a temporary folder beside OUT and moved into place when complete; an existing OUT needs `force`.
    Other files (tokenizer, generation config) are copied; our remote-code `.py` files are not.
    """
    src_folder, out_folder = str(src_folder), os.path.abspath(str(out_folder))
    src_real, out_real = os.path.realpath(src_folder), os.path.realpath(out_folder)
    if src_real == out_real or src_real.startswith(out_real + os.sep):
        raise ValueError(f"{out_folder}: would replace the source folder {src_folder}; choose another OUT")
    if os.path.exists(out_folder) and not force:
        raise FileExistsError(f"{out_folder}: already exists; pass force=True to replace it")
    raw = _read_config(src_folder)
    if is_builtin_config(raw):
        raise ValueError(f"{os.path.join(src_folder, CONFIG)}: already in the built-in recurrent_gemma format")
    if raw.get("model_type") != GriffinConfig.model_type:
        raise ValueError(f"{os.path.join(src_folder, CONFIG)}: model_type is {raw.get('model_type')!r}, not 'griffin'")
    config = GriffinConfig.from_dict(raw)
    builtin_config = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(config))  # fails here, not at load
    found = safetensors_headers(src_folder)
    _check({k: v[1] for k, v in found.items()}, _our_shapes(config), config, src_folder,
           {k: v[0] for k, v in found.items()})
    from .writer import OutputFolder, ShardWriter  # here: writer -> sources -> builtin would be circular

    reader = FolderReader(src_folder, found)
    with OutputFolder(out_folder, force) as staged:
        staged.mkdir()
        writer = ShardWriter(staged, convert_file_size_to_int(max_shard_size))
        for rule in rules_for_builtin(config):
            ours = [reader.get(t) for t in rule.targets]
            writer.add(rule.source, rule.backward(*ours).contiguous())
        writer.close()
        reader.close()
        builtin_config.save_pretrained(staged)
        for entry in sorted(os.listdir(src_folder)):  # tokenizer, generation config, README, ...
            src = os.path.join(src_folder, entry)
            if os.path.isfile(src) and entry not in _NOT_COPIED and not entry.endswith(_NOT_COPIED_SUFFIXES):
                shutil.copy2(src, staged / entry)
    logger.warning(
        "Exported %s for Transformers' recurrent_gemma with attention_window_size=%d (our window %d + 1). The "
        "built-in port computes the same logits only for unpadded sequences: its recurrent blocks ignore the "
        "attention mask (left padding leaks into the RG-LRU and conv1d states), and it keeps recurrent states "
        "outside the cache, so beam search does not reorder them.",
        out_folder, config.attention_window_size + 1, config.attention_window_size,
    )
    return out_folder


__all__ = ["BUILTIN_RULES", "rules_for_builtin", "builtin_shapes", "builtin_to_ours", "ours_to_builtin",
           "is_builtin_folder", "read_builtin_folder", "export_to_builtin", "config_from_builtin"]

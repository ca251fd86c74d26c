"""Transformers' built-in `recurrent_gemma` format (the Hub's google/recurrentgemma-* repos): its configs, its key
map, reading its folders (`BuiltinSource`), writing ours in it (`export_builtin`) and `from_pretrained` of its
folders (`register_builtin_loader`, called by `hf_recurrentgemma/__init__.py`; Hub remote code never sees this file).

Two differences matter beyond names:

* Configs. Its `intermediate_size` is twice the MLP width (its MLP uses `intermediate_size // 2`); `block_types`
  is a pattern repeated over `num_hidden_layers`; embeddings are always scaled by `sqrt(hidden_size)` and logits
  always soft-capped. Configs written by 4.40 (when the Hub repos were made) carry `rope_theta` and
  `partial_rotary_factor` at top level and `torch_dtype`; today's carry `rope_parameters` and `dtype`.
* The attention window. Its `attention_window_size=W` lets a query see only `W - 1` previous tokens; the
  reference (and we) mean itself and `W` previous tokens. The Hub repos carry the window the models were trained
  with (2048), so a plain built-in config is read with the reference meaning. Our export writes `W + 1`, so that
  the built-in computes our function, and records what it changed under `griffin_export`; reading undoes it.

The key map is `BUILTIN_RENAMES` (name parts) plus the conv1d reshape: Transformers' loader applies it as weight
conversions, and `builtin_rules` turns it into `Rule`s over our parameter names for the streaming reader/export.
"""

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import RecurrentGemmaConfig
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming
from transformers.utils.hub import convert_file_size_to_int

from ..griffin.configuration_griffin import ATTENTION, PRESETS, RECURRENT, GriffinConfig
from ..griffin.modeling_griffin import GriffinPreTrainedModel
from .errors import ConversionError
from .keymap import Rule, expected_shapes, from_ours, rename, to_ours
from .safetensors_folder import CONFIG, DTYPES, INDEX, FolderReader, folder_config, read_griffin_folder
from .sources import Source, meta
from .writer import OutputFolder, ShardWriter, refuse_overlap

logger = logging.getLogger(__name__)

BUILTIN_MODEL_TYPE = "recurrent_gemma"
EXPORT_MARKER = "griffin_export"  # config key: our values of the fields an export changed
_MARKER_FIELDS = ("attention_window_size", "logits_soft_cap")
ACTIVATION = "gelu_pytorch_tanh"  # GELU, tanh approximation: the only one Griffin uses
# Transformers' cap is `c * tanh(x / c)` with no way to turn it off; at this `c`, `tanh(x / c) == x / c` in float32
# and bfloat16 (float16 overflows: a model without a cap cannot run there in the built-in).
NO_SOFT_CAP = 1e30

# Per-parameter renames, built-in name part -> ours (matched inside "model.layers.{i}.<...>"). Everything else has
# the same name in both formats; `conv_1d.weight` also changes shape, see `conv_kernel_to_griffin`.
BUILTIN_RENAMES = (
    ("mlp_block.", "mlp."),
    ("rg_lru.recurrent_param", "rg_lru.a_param"),
    ("rg_lru.input_gate_weight", "rg_lru.input_gate.weight"),
    ("rg_lru.input_gate_bias", "rg_lru.input_gate.bias"),
    ("rg_lru.recurrent_gate_weight", "rg_lru.a_gate.weight"),
    ("rg_lru.recurrent_gate_bias", "rg_lru.a_gate.bias"),
)


def conv_kernel_to_griffin(weight: torch.Tensor) -> torch.Tensor:
    """Built-in depthwise `nn.Conv1d` weight (L, 1, K) -> ours (K, L). Both put the current token's tap last
    (the built-in pads by K - 1 on the left and keeps the first T outputs)."""
    return weight[:, 0, :].T.contiguous()


def conv_kernel_to_builtin(weight: torch.Tensor) -> torch.Tensor:
    """Our conv1d weight (K, L) -> the built-in's `nn.Conv1d` weight (L, 1, K)."""
    return weight.T[:, None, :].contiguous()


class _ConvKernelOp(ConversionOps):
    """`conv_kernel_to_griffin` (or, reversed, `conv_kernel_to_builtin`) as a Transformers loading operation."""

    def __init__(self, to_griffin: bool = True):
        self.to_griffin = to_griffin

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        (tensors,) = input_dict.values()
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        fn = conv_kernel_to_griffin if self.to_griffin else conv_kernel_to_builtin
        return {target_patterns[0]: fn(tensor)}

    @property
    def reverse_op(self) -> ConversionOps:
        return _ConvKernelOp(not self.to_griffin)


def builtin_weight_conversions() -> list:
    """The built-in -> ours key map as Transformers loading transforms (renames, and the conv1d reshape)."""
    return [WeightRenaming(source, target) for source, target in BUILTIN_RENAMES] + [
        WeightConverter("conv_1d.weight", "conv_1d.weight", operations=[_ConvKernelOp()]),
    ]


# --- configs ------------------------------------------------------------------------------------------------------

# Built-in config keys with no counterpart in ours: derived values, training-only settings and bookkeeping.
_DROPPED = {"model_type", "architectures", "transformers_version", "_name_or_path", "head_dim",
            "final_w_init_variance_scale", "attention_dropout", "attention_bias", "hidden_activation",
            "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "block_types",
            "num_hidden_layers", "intermediate_size", "embeddings_scale_by_sqrt_dim", "layer_types",
            "sliding_window", "auto_map", EXPORT_MARKER}
# Fields with the same meaning in both, and the built-in's default when a config leaves them out.
_SAME = {"vocab_size": 256000, "hidden_size": 2560, "num_attention_heads": 10, "lru_width": None, "conv1d_width": 4,
         "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
         "w_init_variance_scale": 0.01, "tie_word_embeddings": True, "logits_soft_cap": 30.0,
         "attention_window_size": 2048, "num_key_value_heads": None}
# Our fields that the translation sets explicitly (the rest of a config passes through).
_OUR_FIELDS = set(_SAME) | {"intermediate_size", "block_types", "num_hidden_layers", "embeddings_scale_by_sqrt_dim",
                            "partial_rotary_factor", "rope_theta"}


def is_builtin_config(config_dict: dict) -> bool:
    return isinstance(config_dict, dict) and config_dict.get("model_type") == BUILTIN_MODEL_TYPE


def _rope(config_dict: dict, where: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor): today's `rope_parameters`, 4.4x's `rope_scaling` or top-level keys."""
    params = config_dict.get("rope_parameters") or config_dict.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConversionError(f"{where}: rope type {rope_type!r} is not supported (Griffin uses plain RoPE)")
    theta = params.get("rope_theta", config_dict.get("rope_theta", 10000.0))
    factor = params.get("partial_rotary_factor", config_dict.get("partial_rotary_factor", 0.5))
    return float(theta), float(factor)


def griffin_dict_from_builtin(config_dict: dict, where: str = "config.json") -> dict:
    """A built-in `recurrent_gemma` config dict (any Transformers version) -> our config dict (model_type
    "griffin"). Unknown keys (generation settings, dtype, ...) pass through. `where` names the file in errors."""
    if not is_builtin_config(config_dict):
        raise ConversionError(f"{where}: model_type is {config_dict.get('model_type')!r}, not {BUILTIN_MODEL_TYPE!r}")
    d = config_dict
    out = {k: v for k, v in d.items() if k not in _DROPPED and k not in _SAME}
    out.update({k: d.get(k, default) for k, default in _SAME.items()})
    out["model_type"] = GriffinConfig.model_type
    if out["num_key_value_heads"] is None:  # the built-in's default: one key/value head per query head
        out["num_key_value_heads"] = out["num_attention_heads"]
    if out["num_key_value_heads"] != 1:
        raise ConversionError(f"{where}: num_key_value_heads={out['num_key_value_heads']}; Griffin uses one "
                              "(multi-query)")
    if out["logits_soft_cap"] is None:
        out["logits_soft_cap"] = 0.0

    if d.get("intermediate_size", 3 * 2560) % 2:
        raise ConversionError(f"{where}: intermediate_size={d['intermediate_size']} is odd; the built-in MLP width is "
                         "intermediate_size // 2, so it must be even")
    out["intermediate_size"] = d.get("intermediate_size", 3 * 2560) // 2
    num_layers = d.get("num_hidden_layers", 26)
    pattern = list(d.get("block_types", (RECURRENT, RECURRENT, ATTENTION)))
    block_types = (pattern * 100)[:num_layers]  # the built-in's own expansion
    if len(block_types) != num_layers or not pattern:
        raise ConversionError(f"{where}: block_types {pattern} cannot fill num_hidden_layers={num_layers}")
    out["block_types"], out["num_hidden_layers"] = block_types, num_layers
    out["rope_theta"], out["partial_rotary_factor"] = _rope(d, where)

    activation = d.get("hidden_activation", ACTIVATION)
    if activation != ACTIVATION:
        raise ConversionError(f"{where}: hidden_activation={activation!r}; Griffin uses {ACTIVATION!r}")
    if d.get("attention_bias", False):
        raise ConversionError(f"{where}: attention_bias=true; Griffin's q/k/v projections have no bias")
    if d.get("attention_dropout", 0.0):
        logger.warning("%s: attention_dropout=%s is dropped (training only)", where, d["attention_dropout"])
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != out["hidden_size"] // out["num_attention_heads"]:
        raise ConversionError(f"{where}: head_dim={head_dim}, but Griffin's is hidden_size // num_attention_heads = "
                         f"{out['hidden_size'] // out['num_attention_heads']}")

    # The built-in always scales embeddings; a config saying otherwise contradicts the model it describes.
    if not d.get("embeddings_scale_by_sqrt_dim", True):
        raise ConversionError(f"{where}: embeddings_scale_by_sqrt_dim=false, but Transformers' recurrent_gemma always "
                         "scales embeddings by sqrt(hidden_size); these weights cannot be read unambiguously")
    out["embeddings_scale_by_sqrt_dim"] = True
    marker = d.get(EXPORT_MARKER) or {}
    if marker:
        # Undo our export exactly; a window that no longer fits the marker means the file was edited after export.
        unknown = set(marker) - set(_MARKER_FIELDS)
        if unknown:
            raise ConversionError(f"{where}: {EXPORT_MARKER} holds {sorted(unknown)}, which this version cannot undo")
        if "attention_window_size" in marker and out["attention_window_size"] != marker["attention_window_size"] + 1:
            raise ConversionError(
                f"{where}: {EXPORT_MARKER} says attention_window_size={marker['attention_window_size']} was exported "
                f"as {marker['attention_window_size'] + 1}, but the config has {out['attention_window_size']}; "
                f"fix attention_window_size or delete {EXPORT_MARKER}"
            )
        out.update(marker)
    return out


def config_from_builtin(config_dict: dict, where: str = "config.json") -> GriffinConfig:
    """A built-in `recurrent_gemma` config dict -> `GriffinConfig` (see `griffin_dict_from_builtin`)."""
    out = griffin_dict_from_builtin(config_dict, where)
    out.pop("model_type")
    return GriffinConfig(**out)


def builtin_dict_from_griffin(config: GriffinConfig) -> dict:
    """Our config -> a built-in `recurrent_gemma` config dict computing the same function, with the fields we had
    to change recorded under `griffin_export` (so `griffin_dict_from_builtin` gives back `config` exactly)."""
    if not config.embeddings_scale_by_sqrt_dim:
        raise ConversionError("embeddings_scale_by_sqrt_dim=False cannot be exported: Transformers' recurrent_gemma "
                         "always scales embeddings by sqrt(hidden_size)")
    if config.num_key_value_heads != 1:
        raise ConversionError(f"num_key_value_heads={config.num_key_value_heads}: Griffin uses one")
    marker = {"attention_window_size": config.attention_window_size}
    soft_cap = config.logits_soft_cap
    if not soft_cap:
        marker["logits_soft_cap"], soft_cap = soft_cap, NO_SOFT_CAP
    ours = config.to_diff_dict()  # our fields, plus any non-default generic ones (dtype, ...), which pass through
    out = {k: v for k, v in ours.items() if k not in _OUR_FIELDS and k not in _DROPPED}
    out.update({k: getattr(config, k) for k in _SAME})
    out.update(
        model_type=BUILTIN_MODEL_TYPE, architectures=["RecurrentGemmaForCausalLM"],
        intermediate_size=2 * config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        block_types=list(config.block_types), attention_window_size=config.attention_window_size + 1,
        logits_soft_cap=soft_cap, hidden_activation=ACTIVATION, attention_bias=False, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta,
                         "partial_rotary_factor": config.partial_rotary_factor},
    )
    out[EXPORT_MARKER] = marker
    return out


# --- key map --------------------------------------------------------------------------------------------------------

def _conv_forward(weight):
    return (conv_kernel_to_griffin(weight),)


def builtin_rules(config: GriffinConfig) -> list[Rule]:
    """The built-in -> ours key map of a model with this config (one rule per parameter, in our order), made from
    `BUILTIN_RENAMES` and the conv1d reshape. A tied `lm_head.weight` is not in it."""
    rules = []
    for ours in expected_shapes(config):
        theirs = ours
        for builtin, griffin in BUILTIN_RENAMES:
            theirs = theirs.replace(griffin, builtin)
        if ours.endswith("conv_1d.weight"):  # nn.Conv1d(L, L, K, groups=L) weight (L, 1, K) <-> ours (K, L)
            rules.append(Rule(theirs, (ours,), _conv_forward, conv_kernel_to_builtin))
        else:
            rules.append(rename(theirs, ours))
    return rules


def builtin_to_ours(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Built-in state dict -> ours. A tied `lm_head.weight` is accepted and dropped. Checks keys and shapes."""
    return to_ours(state_dict, builtin_rules(config), config, "built-in checkpoint")


def ours_to_builtin(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the built-in's (without a tied `lm_head.weight`). Checks keys and shapes."""
    return from_ours(state_dict, builtin_rules(config), config)


# --- folders --------------------------------------------------------------------------------------------------------

class BuiltinSource(Source):
    """A Transformers `recurrent_gemma` folder (config.json + safetensors), read one tensor at a time."""

    name, title, what = "builtin", "Transformers recurrent_gemma", "built-in checkpoint"

    @classmethod
    def detect(cls, path: Path) -> Path | None:
        return path if path.is_dir() and is_builtin_config(folder_config(path)) else None

    def __init__(self, path: Path):
        super().__init__(path)
        raw = folder_config(self.path)
        if raw is None:
            raise ConversionError(f"{self.path}: no {CONFIG}; not a model folder")
        try:
            self._config = config_from_builtin(raw, where=str(self.path / CONFIG))
        except (TypeError, StrictDataclassError) as err:  # the config's own error, without @strict's header line
            raise ConversionError(f"{self.path / CONFIG}: {err.__cause__ or err}") from None
        self.reader = FolderReader(self.path)

    def config(self, preset=None, overrides=None) -> GriffinConfig:
        """The folder's config; a preset or overrides may only agree with it (the vocabulary size aside)."""
        checks = {**(PRESETS[preset] if preset else {}),
                  **{k: v for k, v in (overrides or {}).items() if v is not None}}
        for key, value in checks.items():
            if key != "vocab_size" and getattr(self._config, key) != value:
                raise ConversionError(f"{self.path}: {key} is {getattr(self._config, key)} in the folder's config, "
                                      f"not {value}")
        return self._config

    def metas(self) -> dict[str, torch.Tensor]:
        try:
            return {k: meta(shape, DTYPES[dtype]) for k, (_, shape, dtype) in self.reader.headers.items()}
        except KeyError as err:
            raise ConversionError(f"{self.path}: a tensor has dtype {err.args[0]}, not a float type") from None

    def key_map(self, config: GriffinConfig) -> list[Rule]:
        return builtin_rules(config)

    def load(self, key: str) -> torch.Tensor:
        return self.reader.get(key)

    def close(self) -> None:
        self.reader.close()


_NOT_COPIED = {CONFIG, INDEX}
_NOT_COPIED_SUFFIXES = (".py", ".safetensors", ".bin", ".pt", ".pth")  # weights, and our remote code


def export_builtin(folder: str | Path, out: str | Path, *, force: bool = False,
                   max_shard_size: int | str = "5GB") -> Path:
    """Our saved `folder` -> a Transformers built-in `recurrent_gemma` folder at `out` computing the same function
    (as far as the built-in can: unpadded sequences, no beam search). Returns `out` (absolute).

    Writes `attention_window_size = W + 1` (the built-in's window of W sees W - 1 previous tokens) and records our
    values under `griffin_export` in config.json, so reading the folder back gives our config exactly. Tensors keep
    their dtype; at most one output shard (`max_shard_size`, bytes or e.g. "5GB") is in memory. Atomic: nothing is
    left at `out` on failure; an existing `out` needs `force`. Other files (tokenizer, generation config) are
    copied; our remote-code `.py` files are not.

    Example:
        >>> export_builtin("recurrentgemma-2b-hf", "2b-builtin")
    """
    refuse_overlap(folder, out)
    output = OutputFolder(out, force)
    raw = folder_config(folder)
    if is_builtin_config(raw):
        raise ConversionError(f"{Path(folder) / CONFIG}: already in the built-in recurrent_gemma format")
    config, reader = read_griffin_folder(folder)
    builtin_config = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(config))  # fails here, not at load
    with output as staged:
        staged.mkdir()
        writer = ShardWriter(staged, convert_file_size_to_int(max_shard_size))
        for rule in builtin_rules(config):
            writer.add(rule.source, rule.backward(*(reader.get(t) for t in rule.targets)).contiguous())
        writer.close()
        reader.close()
        builtin_config.save_pretrained(staged)
        _add_top_level_rope(staged / CONFIG, config)
        for entry in sorted(os.listdir(folder)):  # tokenizer, generation config, README, ...
            src = os.path.join(folder, entry)
            if os.path.isfile(src) and entry not in _NOT_COPIED and not entry.endswith(_NOT_COPIED_SUFFIXES):
                shutil.copy2(src, staged / entry)
    logger.warning(
        "Exported %s for Transformers' recurrent_gemma with attention_window_size=%d (our window %d + 1). The "
        "built-in port computes the same logits only for unpadded sequences: its recurrent blocks ignore the "
        "attention mask (left padding leaks into the RG-LRU and conv1d states), and it keeps recurrent states "
        "outside the cache, so beam search does not reorder them.",
        output.out, config.attention_window_size + 1, config.attention_window_size,
    )
    return output.out


export_to_builtin = export_builtin  # the name benchmarks/bench_inference.py uses


def _add_top_level_rope(config_file: Path, config: GriffinConfig) -> None:
    """Also writes `rope_theta` and `partial_rotary_factor` at the top level of the exported config.json, beside
    Transformers 5.x's `rope_parameters`: the Hub's recurrentgemma configs (written by 4.40) carry them there, and
    readers of the format other than Transformers require them there (mlx-lm's `ModelArgs.rope_theta`, candle's
    `Config.rope_theta` and `partial_rotary_factor` have no default; docs/interop.md)."""
    data = json.loads(config_file.read_text())
    data.update(rope_theta=config.rope_theta, partial_rotary_factor=config.partial_rotary_factor)
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

# --- from_pretrained ----------------------------------------------------------------------------------------------

_LOADERS: dict[type, type] = {}


def _loader_class(cls: type) -> type:
    """A subclass of `cls` under its own name, with the built-in key map registered for that name only: the map
    applies when loading a built-in folder, and never when our own folders load or any model saves."""
    if cls not in _LOADERS:
        name = f"{cls.__name__}FromRecurrentGemma"
        loader = type(name, (cls,), {"_griffin_builtin_loader": True, "__module__": cls.__module__})
        register_checkpoint_conversion_mapping(name, builtin_weight_conversions(), overwrite=True)
        _LOADERS[cls] = loader
    return _LOADERS[cls]


_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def load_builtin_if_builtin(cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """`cls.from_pretrained` for a built-in `recurrent_gemma` folder or Hub repo; None for anything else.

    The config is translated by `GriffinConfig.get_config_dict` (hooked to `griffin_dict_from_builtin`), the
    weights are renamed and reshaped by `builtin_weight_conversions` through Transformers' loader. The returned
    model is a plain `cls` that saves in our format.
    """
    if getattr(cls, "_griffin_builtin_loader", False) or pretrained_model_name_or_path is None:
        return None
    if kwargs.get("gguf_file") or kwargs.get("state_dict") is not None:
        return None
    download = {k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}
    try:
        raw, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **download)
    except OSError:
        return None  # no config to look at: let the ordinary loader report what is wrong
    if not is_builtin_config(raw):
        return None
    model = _loader_class(cls).from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    model.__class__ = cls
    # Transformers keeps the transforms it applied in order to reverse them on save; ours must save as ours.
    model._weight_conversions = None
    return model


def register_builtin_loader() -> None:
    """Lets `GriffinConfig.from_pretrained` and `Griffin*.from_pretrained` read built-in folders (the hooks of the
    model files, which stay empty in Hub remote code)."""
    GriffinConfig.config_translators[BUILTIN_MODEL_TYPE] = griffin_dict_from_builtin
    if load_builtin_if_builtin not in GriffinPreTrainedModel.checkpoint_loaders:
        GriffinPreTrainedModel.checkpoint_loaders.append(load_builtin_if_builtin)


__all__ = ["BUILTIN_RENAMES", "EXPORT_MARKER", "BuiltinSource", "builtin_rules", "builtin_to_ours", "ours_to_builtin",
           "conv_kernel_to_griffin", "conv_kernel_to_builtin", "is_builtin_config", "griffin_dict_from_builtin",
           "config_from_builtin", "builtin_dict_from_griffin", "export_builtin", "register_builtin_loader"]

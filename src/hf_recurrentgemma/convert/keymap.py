"""Key maps as data, and the one check of a checkpoint's keys and shapes.

A key map is a list of `Rule`s: one source key (`{}` = layer index in the tables) to one or more of our keys,
through a named per-tensor transform and its inverse. The reference's map (`recurrentgemma.torch` names; Orbax
sources are read under the same names) is here; the built-in `recurrent_gemma` map is in `builtin.py`. Our names
and shapes are read off a `GriffinForCausalLM` built on the meta device (`expected_shapes`); a format's own shapes
follow by running its inverse transforms on meta tensors (`source_shapes`). `check_keys` then asserts every key
present, none left over, every shape right, for every reader and export.
"""

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..griffin.configuration_griffin import ATTENTION, GriffinConfig
from ..griffin.modeling_griffin import GriffinForCausalLM
from .errors import KeyMismatchError


@dataclass(frozen=True)
class Rule:
    source: str  # reference key, `{}` is the layer index
    targets: tuple[str, ...]  # our keys
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]  # reference tensor -> our tensors
    backward: Callable[..., torch.Tensor]  # our tensors -> reference tensor


def _same(t):
    return (t,)


def _same_back(t):
    return t


def _split_ffw_up_w(w):  # (2, D, F) -> gate (F, D), up (F, D)
    return w[0].T.contiguous(), w[1].T.contiguous()


def _join_ffw_up_w(gate, up):
    return torch.stack([gate.T, up.T]).contiguous()


def _split_ffw_up_b(b):  # (2, 1, 1, F) -> (F,), (F,)
    return b[0].reshape(-1).contiguous(), b[1].reshape(-1).contiguous()


def _join_ffw_up_b(gate, up):
    return torch.stack([gate, up]).reshape(2, 1, 1, -1).contiguous()


def rename(source: str, target: str) -> Rule:
    """A rule that only renames: one tensor in, the same tensor out."""
    return Rule(source, (target,), _same, _same_back)


TOP_RULES = (
    rename("embedder.input_embedding", "model.embed_tokens.weight"),
    rename("final_norm.scale", "model.final_norm.weight"),
)

COMMON_BLOCK_RULES = (
    rename("blocks.{}.temporal_pre_norm.scale", "model.layers.{}.temporal_pre_norm.weight"),
    rename("blocks.{}.channel_pre_norm.scale", "model.layers.{}.channel_pre_norm.weight"),
    Rule("blocks.{}.mlp_block.ffw_up.w", ("model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"),
         _split_ffw_up_w, _join_ffw_up_w),
    Rule("blocks.{}.mlp_block.ffw_up.b", ("model.layers.{}.mlp.gate_proj.bias", "model.layers.{}.mlp.up_proj.bias"),
         _split_ffw_up_b, _join_ffw_up_b),
    rename("blocks.{}.mlp_block.ffw_down.weight", "model.layers.{}.mlp.down_proj.weight"),
    rename("blocks.{}.mlp_block.ffw_down.bias", "model.layers.{}.mlp.down_proj.bias"),
)

RECURRENT_RULES = tuple(
    rename(f"blocks.{{}}.recurrent_block.{name}", f"model.layers.{{}}.temporal_block.{ours}")
    for name, ours in [
        ("linear_x.weight", "linear_x.weight"), ("linear_x.bias", "linear_x.bias"),
        ("linear_y.weight", "linear_y.weight"), ("linear_y.bias", "linear_y.bias"),
        ("linear_out.weight", "linear_out.weight"), ("linear_out.bias", "linear_out.bias"),
        ("conv_1d.w", "conv_1d.weight"), ("conv_1d.b", "conv_1d.bias"),
        ("rg_lru.a_param", "rg_lru.a_param"),
        ("rg_lru.input_gate.w", "rg_lru.input_gate.weight"), ("rg_lru.input_gate.b", "rg_lru.input_gate.bias"),
        ("rg_lru.a_gate.w", "rg_lru.a_gate.weight"), ("rg_lru.a_gate.b", "rg_lru.a_gate.bias"),
    ]
)

ATTENTION_RULES = tuple(
    rename(f"blocks.{{}}.attention_block.{name}", f"model.layers.{{}}.temporal_block.{ours}")
    for name, ours in [
        ("proj_q.weight", "q_proj.weight"), ("proj_k.weight", "k_proj.weight"), ("proj_v.weight", "v_proj.weight"),
        ("proj_final.weight", "o_proj.weight"), ("proj_final.bias", "o_proj.bias"),
    ]
)


def rules_for(config: GriffinConfig) -> list[Rule]:
    """The reference key map of a model with this config, layer index filled in."""
    rules = list(TOP_RULES)
    for i, block_type in enumerate(config.block_types):
        for rule in COMMON_BLOCK_RULES + (ATTENTION_RULES if block_type == ATTENTION else RECURRENT_RULES):
            rules.append(Rule(rule.source.format(i), tuple(t.format(i) for t in rule.targets), rule.forward,
                              rule.backward))
    return rules


LM_HEAD = "lm_head.weight"


def expected_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of each of our parameters for this config (a tied lm_head excluded), in the model's order,
    read off a `GriffinForCausalLM(config)` on the meta device."""
    return dict(_model_shapes(config.to_json_string(use_diff=False)))


@functools.lru_cache(maxsize=8)
def _model_shapes(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    config = GriffinConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = GriffinForCausalLM(config)
    return tuple((name, tuple(p.shape)) for name, p in model.state_dict().items()
                 if not (name == LM_HEAD and config.tie_word_embeddings))


def source_shapes(rules: Iterable[Rule], config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    """{source key: shape} a checkpoint in the rules' format must have (the inverse transforms run on meta)."""
    ours = expected_shapes(config)
    return {rule.source: tuple(rule.backward(*(torch.empty(ours[t], device="meta") for t in rule.targets)).shape)
            for rule in rules}


def _first(keys) -> str:
    keys = sorted(keys)
    return f"{keys[0]!r}" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def check_keys(found: Mapping[str, tuple], expected: Mapping[str, tuple], what: str, where: str | None = None,
               files: Mapping[str, str] | None = None, optional: Iterable[str] = ()) -> None:
    """`found` ({key: shape}) holds every key of `expected` with its shape and nothing else (bar `optional` keys,
    e.g. a tied lm_head). Errors (`KeyMismatchError`) name the key, the shapes and, with `files`, the file holding
    it; `where` (a path) prefixes them and `what` says what was read ("reference checkpoint", ...)."""
    prefix = f"{where}: " if where else ""
    missing = set(expected) - set(found)
    if missing:
        raise KeyMismatchError(f"{prefix}missing key in {what}: {_first(missing)}")
    extra = set(found) - set(expected) - set(optional)
    if extra:
        raise KeyMismatchError(f"{prefix}unexpected key in {what}: {_first(extra)}")
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            in_file = f" ({files[key]})" if files else ""
            raise KeyMismatchError(f"{prefix}{key!r} in {what}{in_file} has shape {tuple(found[key])}, "
                                   f"expected {tuple(shape)}")


def tied_extras(config: GriffinConfig) -> set[str]:
    """Keys a checkpoint may hold beyond the map: a tied lm_head (a copy of the embeddings)."""
    return {LM_HEAD} if config.tie_word_embeddings else set()


def to_ours(state_dict: Mapping[str, torch.Tensor], rules: list[Rule], config: GriffinConfig,
            what: str) -> dict[str, torch.Tensor]:
    """A state dict in the rules' format -> ours (keys and shapes checked; a tied lm_head dropped)."""
    check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, source_shapes(rules, config), what,
               optional=tied_extras(config))
    return {key: tensor for rule in rules for key, tensor in zip(rule.targets, rule.forward(state_dict[rule.source]))}


def from_ours(state_dict: Mapping[str, torch.Tensor], rules: list[Rule], config: GriffinConfig) -> dict:
    """Our state dict -> the rules' format (keys and shapes checked; a tied lm_head accepted and dropped)."""
    check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_shapes(config), "checkpoint",
               optional=tied_extras(config))
    return {rule.source: rule.backward(*(state_dict[t] for t in rule.targets)) for rule in rules}


def reference_to_ours(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Reference torch state dict -> our state dict (without the tied lm_head). Checks keys and shapes."""
    return to_ours(state_dict, rules_for(config), config, "reference checkpoint")


def ours_to_reference(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the reference torch state dict. A tied `lm_head.weight` is accepted and dropped."""
    return from_ours(state_dict, rules_for(config), config)

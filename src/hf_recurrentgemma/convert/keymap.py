"""Declarative map between the reference's parameter names (`recurrentgemma.torch` state dict) and ours.

Each rule maps one reference key pattern (`{}` = layer index) to one or more of our keys through a named
per-tensor transform. `reference_to_ours` and `ours_to_reference` apply the rules in both directions and assert
that every source key is consumed and every target key produced, with the shapes the config implies.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from ..configuration_griffin import ATTENTION, GriffinConfig


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


def rules_by_layer(config: GriffinConfig, top, common, recurrent, attention) -> Iterator[Rule]:
    """`top` rules, then for each layer `common` plus its block type's rules, with the layer index filled in."""
    yield from top
    for i, block_type in enumerate(config.block_types):
        for rule in common + (attention if block_type == ATTENTION else recurrent):
            yield Rule(rule.source.format(i), tuple(t.format(i) for t in rule.targets), rule.forward, rule.backward)


def rules_for(config: GriffinConfig) -> Iterator[Rule]:
    """The reference-format rules of a model with this config, layer index filled in."""
    return rules_by_layer(config, TOP_RULES, COMMON_BLOCK_RULES, RECURRENT_RULES, ATTENTION_RULES)


def expected_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each of our parameters for this config (the tied lm_head excluded)."""
    d, f, l, h, k = (config.hidden_size, config.intermediate_size, config.lru_width, config.num_attention_heads,
                     config.conv1d_width)
    dh = config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d), "model.final_norm.weight": (d,)}
    for i, block_type in enumerate(config.block_types):
        p = f"model.layers.{i}."
        shapes.update({
            p + "temporal_pre_norm.weight": (d,), p + "channel_pre_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.gate_proj.bias": (f,),
            p + "mlp.up_proj.weight": (f, d), p + "mlp.up_proj.bias": (f,),
            p + "mlp.down_proj.weight": (d, f), p + "mlp.down_proj.bias": (d,),
        })
        t = p + "temporal_block."
        if block_type == ATTENTION:
            shapes.update({t + "q_proj.weight": (d, d), t + "k_proj.weight": (dh, d), t + "v_proj.weight": (dh, d),
                           t + "o_proj.weight": (d, d), t + "o_proj.bias": (d,)})
        else:
            shapes.update({
                t + "linear_x.weight": (l, d), t + "linear_x.bias": (l,), t + "linear_y.weight": (l, d),
                t + "linear_y.bias": (l,), t + "linear_out.weight": (d, l), t + "linear_out.bias": (d,),
                t + "conv_1d.weight": (k, l), t + "conv_1d.bias": (l,), t + "rg_lru.a_param": (l,),
                t + "rg_lru.input_gate.weight": (h, l // h, l // h), t + "rg_lru.input_gate.bias": (h, l // h),
                t + "rg_lru.a_gate.weight": (h, l // h, l // h), t + "rg_lru.a_gate.bias": (h, l // h),
            })
    return shapes


class KeyMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model; the message names them."""


def _check_consumed(source: Mapping[str, object], consumed: set[str], what: str) -> None:
    unexpected = sorted(set(source) - consumed)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise KeyMismatchError(f"unexpected key in {what}: {unexpected[0]!r}{more}")


def reference_to_ours(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Reference torch state dict -> our state dict (without the tied lm_head). Checks keys and shapes."""
    shapes = expected_shapes(config)
    out, consumed = {}, set()
    for rule in rules_for(config):
        if rule.source not in state_dict:
            raise KeyMismatchError(f"missing key in reference checkpoint: {rule.source!r}")
        for key, tensor in zip(rule.targets, rule.forward(state_dict[rule.source])):
            if tuple(tensor.shape) != shapes[key]:
                raise KeyMismatchError(
                    f"{rule.source!r} gives {key!r} the shape {tuple(tensor.shape)}, expected {shapes[key]}"
                )
            out[key] = tensor
        consumed.add(rule.source)
    _check_consumed(state_dict, consumed, "reference checkpoint")
    assert set(out) == set(shapes), sorted(set(shapes) ^ set(out))
    return out


def ours_to_reference(state_dict: Mapping[str, torch.Tensor], config: GriffinConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the reference torch state dict. A tied `lm_head.weight` is accepted and dropped."""
    shapes = expected_shapes(config)
    out, consumed = {}, set()
    for rule in rules_for(config):
        for key in rule.targets:
            if key not in state_dict:
                raise KeyMismatchError(f"missing key in checkpoint: {key!r}")
            if tuple(state_dict[key].shape) != shapes[key]:
                raise KeyMismatchError(f"{key!r} has shape {tuple(state_dict[key].shape)}, expected {shapes[key]}")
        out[rule.source] = rule.backward(*(state_dict[key] for key in rule.targets))
        consumed.update(rule.targets)
    if "lm_head.weight" in state_dict:
        consumed.add("lm_head.weight")
    _check_consumed(state_dict, consumed, "checkpoint")
    return out

"""The parallel plans on GriffinConfig name real modules of the right kind (a plan entry that matches nothing is
silently ignored by Transformers, so a renamed module would quietly stop being sharded). Runs in one process; the
two-process runs are in test_distributed.py."""

import re

import torch
from torch import nn

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM


def _matches(pattern: str, names) -> list[str]:
    regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
    return [n for n in names if regex.match(n)]


def test_every_tensor_parallel_entry_shards_linear_layers_of_both_block_types():
    config = GriffinConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                           block_types=["recurrent", "attention"], attention_window_size=4)
    model = GriffinForCausalLM(config)
    modules = dict(model.model.named_modules())
    plan = GriffinConfig.base_model_tp_plan
    for pattern, style in plan.items():
        found = _matches(pattern, modules)
        assert found, f"tp plan entry {pattern!r} matches no module"
        for name in found:
            assert isinstance(modules[name], nn.Linear), f"{name} ({type(modules[name]).__name__}) is not linear"
            if style.startswith("colwise") and "q_proj" in name:
                # Sharded by whole heads: the rows are heads x head_dim, split between processes.
                assert modules[name].out_features == config.num_attention_heads * config.head_dim
    # The parts that stay whole on every process (docs/scaling.md): the one key/value head, conv1d and RG-LRU.
    sharded = {n for p in plan for n in _matches(p, modules)}
    for kept in ("layers.1.temporal_block.k_proj", "layers.1.temporal_block.v_proj", "layers.0.temporal_block.conv_1d",
                 "layers.0.temporal_block.rg_lru"):
        assert kept in modules and kept not in sharded
    assert GriffinForCausalLM._tp_plan == {"lm_head": "colwise_gather_output"}


def test_fsdp_plan_names_modules_that_exist():
    model = GriffinForCausalLM(GriffinConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                             num_attention_heads=4, block_types=["recurrent"]))
    modules = dict(model.model.named_modules())
    for pattern in GriffinConfig.base_model_fsdp_plan:
        assert _matches(pattern, modules), f"fsdp plan entry {pattern!r} matches no module"


def test_key_value_groups_follow_the_query_heads_a_process_holds():
    """Under tensor parallelism q_proj keeps a slice of the heads; attention reads the count from its weight."""
    config = GriffinConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                           block_types=["attention"], attention_window_size=4)
    attention = GriffinForCausalLM(config).model.layers[0].temporal_block
    assert attention.num_key_value_groups == 4
    with torch.no_grad():
        attention.q_proj.weight = nn.Parameter(attention.q_proj.weight[: 2 * config.head_dim].clone())
    assert attention.num_key_value_groups == 2

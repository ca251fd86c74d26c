"""`GriffinCache` as a pytree node (hf_recurrentgemma/export/pytree.py) and the loop operators an exported
recurrence runs in (ops_griffin.rnn_scan_exported): fast checks, torch.export only."""

import json

import pytest
import torch

from hf_recurrentgemma import GriffinCache, GriffinForCausalLM
from hf_recurrentgemma.export import pytree
from hf_recurrentgemma.griffin.ops_griffin import EXPORT_LOOPS, export_loop, rnn_scan_exported, rnn_scan_sequential

from command_helpers import tiny_config
from export_helpers import TINY


def filled_cache():
    config = tiny_config(**TINY)
    model = GriffinForCausalLM(config).eval()
    with torch.no_grad():
        return model(torch.tensor([[5, 6, 7, 8, 9, 10]]), use_cache=True).cache


def test_leaves_in_the_order_the_exporters_name_onnx_inputs():
    """ONNX input names are given by position from the exporters' attribute walk; our flatten must list the same
    tensors in the same order, or a program would bind one state tensor to another's name."""
    from transformers.exporters.utils import get_leaf_tensors

    cache = filled_cache()
    leaves, context = pytree.flatten(cache)
    walked = list(get_leaf_tensors(cache).values())
    assert [(t.data_ptr(), t.shape) for t in leaves] == [(t.data_ptr(), t.shape) for t in walked]
    assert context["names"][:2] == ["layers.0.conv", "layers.0.rg_lru"]
    assert context["names"][-2:] == ["seen_tokens", "next_position"]


def test_round_trip_through_a_saved_tree_spec():
    cache = filled_cache()
    leaves, spec = torch.utils._pytree.tree_flatten({"cache": cache})
    spec = torch.utils._pytree.treespec_loads(torch.utils._pytree.treespec_dumps(spec))  # as a program saves it
    rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)["cache"]
    want, got = cache.state_dict(), rebuilt.state_dict()
    assert want["architecture"] == got["architecture"] and want["dtype"] == got["dtype"]
    assert list(want["tensors"]) == list(got["tensors"])
    for name, tensor in want["tensors"].items():
        assert torch.equal(tensor, got["tensors"][name]), name
    # A cache made elsewhere for the same model has the same spec: what a program checks its inputs against.
    other = GriffinCache(tiny_config(**TINY), batch_size=1, dtype=torch.float32)
    assert torch.utils._pytree.tree_flatten({"cache": other})[1] == spec
    json.dumps(pytree.flatten(cache)[1])  # the context is JSON


def test_an_empty_cache_has_no_leaves_and_recording_is_refused():
    empty = GriffinCache(tiny_config(**TINY))
    leaves, context = pytree.flatten(empty)
    assert leaves == [] and not pytree.unflatten([], context).is_initialized
    cache = filled_cache()
    cache.activate_past_recording()
    with pytest.raises(ValueError, match="without rollback recording"):
        pytree.flatten(cache)


@pytest.mark.parametrize("loop", EXPORT_LOOPS)
def test_exported_loops_equal_the_sequential_scan(loop):
    """An exported program runs the recurrence in a loop operator over a symbolic T: the same float32 steps as the
    sequential scan, so its outputs and final state are bit for bit the same at any length."""

    class Scan(torch.nn.Module):
        def forward(self, x, a, h0):
            return rnn_scan_exported(x, a, h0, loop)

    torch.manual_seed(0)
    x, a, h0 = torch.randn(1, 6, 8), torch.rand(1, 6, 8), torch.randn(1, 8)
    tokens = torch.export.Dim("tokens", min=2, max=64)
    with export_loop(loop):
        program = torch.export.export(Scan(), (x, a, h0), dynamic_shapes=({1: tokens}, {1: tokens}, None))
    for length in (2, 17, 64):
        x, a = torch.randn(1, length, 8), torch.rand(1, length, 8)
        y, h = program.module()(x, a, h0)
        want_y, want_h = rnn_scan_sequential(x, a, h0)
        assert torch.equal(y, want_y) and torch.equal(h, want_h), (loop, length)


def test_unknown_loop_is_refused():
    with pytest.raises(ValueError, match="unknown export loop 'map'"):
        with export_loop("map"):
            pass

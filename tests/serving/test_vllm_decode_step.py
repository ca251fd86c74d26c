"""The plugin's compiled decode step (vLLM's compiled mode): one graph for every decoding batch size, each result
within float32 rounding of the eager step. A graph per batch size (as the package's row-invariant routing once made)
stalls the server a few hundred ms at each new size and, past torch's recompile limit, falls back to eager."""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; docs/serving.md)")

from hf_recurrentgemma.vllm_plugin.layers import _RGLRU, _Conv1d, compiled_decode_step, decode_step  # noqa: E402

CHANNELS, HEADS, CONV_WIDTH = 64, 4, 4
BATCH_SIZES = (1, 2, 3, 5, 9, 16, 17, 24)  # one request, the row-invariant sizes, and past them


def test_compiled_decode_step_is_one_graph_for_every_batch_size(one_thread):
    torch.manual_seed(0)
    conv, rg_lru = _Conv1d(CONV_WIDTH, CHANNELS), _RGLRU(CHANNELS, HEADS)
    for param in (*conv.parameters(), *rg_lru.parameters()):
        torch.nn.init.normal_(param, std=0.3)
    step = compiled_decode_step()
    torch._dynamo.utils.counters.clear()
    graphs = []
    with torch.inference_mode():
        for n in BATCH_SIZES:
            x, tails = torch.randn(n, CHANNELS), torch.randn(n, CONV_WIDTH - 1, CHANNELS)
            h, reset = torch.randn(n, CHANNELS), torch.arange(n) % 3 == 0
            compiled = step(x, reset, tails, h, conv, rg_lru)
            eager = decode_step(x, reset, tails, h, conv, rg_lru)
            for got, want in zip(compiled, eager):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # n = 1 is specialised by torch (sizes 0 and 1 always are), then one graph for 2..16 (the row-invariant gates'
    # opaque op) and one past MAX_ROWS: nothing new after the first few sizes.
    assert graphs[-1] <= 3, graphs
    assert graphs[3:5] == [graphs[2]] * 2, graphs

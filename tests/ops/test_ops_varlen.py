"""Variable-length (packed) forms of the scan and the conv1d, as a serving engine calls them, against the padded
forms run one sequence at a time (their obviously-correct twin)."""

import pytest
import torch
from reference_helpers import assert_close

from hf_recurrentgemma.griffin.ops_griffin import (
    causal_conv1d,
    causal_conv1d_varlen,
    recurrent_state_shapes,
    rnn_scan,
    rnn_scan_varlen,
)

# (lengths, where each sequence's document starts, or None when it continues its state)
CASES = {
    "decode-only": ([1, 1, 1], [None, None, None]),
    "prefill-only": ([5, 2, 9], [0, 0, 0]),
    "mixed-continuations": ([1, 7, 2, 1, 3], [None, 0, None, 0, None]),
    "shorter-than-tail": ([1, 2, 6], [None, None, 2]),
}


def _packed(lengths, starts, width=6, k=4, pool=7, seed=0):
    torch.manual_seed(seed)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(int(cu[-1]), width)
    a = torch.rand(int(cu[-1]), width)
    reset = torch.zeros(int(cu[-1]), dtype=torch.bool)
    for n, start in enumerate(starts):
        if start is not None:
            reset[cu[n] + start] = True
    a = a * ~reset[:, None]
    slots = torch.randperm(pool)[: len(lengths)]
    return cu, x, a, reset, slots, torch.randn(pool, width), torch.randn(pool, k - 1, width)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_varlen_scan_and_conv_equal_per_sequence_calls(case):
    lengths, starts = CASES[case]
    cu, x, a, reset, slots, h_pool, tail_pool = _packed(lengths, starts)
    weight, bias = torch.randn(4, x.shape[1]), torch.randn(x.shape[1])
    y, h = rnn_scan_varlen(x, a, h_pool, cu, slots, backend="sequential")
    conv_y, tails = causal_conv1d_varlen(x, tail_pool, cu, slots, weight, bias, reset)
    for n in range(len(lengths)):
        part = slice(int(cu[n]), int(cu[n + 1]))
        want_y, want_h = rnn_scan(x[None, part], a[None, part], h_pool[slots[n]][None], backend="sequential")
        # Padding with x = 0, a = 1 carries the state exactly: equality, not closeness.
        assert torch.equal(y[part], want_y[0]) and torch.equal(h[n], want_h[0]), f"scan, sequence {n}"
        want_conv, want_tail = causal_conv1d(x[None, part], tail_pool[slots[n]][None], weight, bias,
                                             reset[None, part])
        assert_close(conv_y[part], want_conv[0], tol=1e-6, what=f"conv1d, sequence {n}")
        assert torch.equal(tails[n], want_tail[0]), f"conv1d tail, sequence {n}"


def test_varlen_scan_uses_the_fast_backend_like_the_padded_form():
    cu, x, a, _, slots, h_pool, _ = _packed([3, 40, 17], [0, 0, None])
    y_fast, h_fast = rnn_scan_varlen(x, a, h_pool, cu, slots)
    y_ref, h_ref = rnn_scan_varlen(x, a, h_pool, cu, slots, backend="sequential")
    assert_close(y_fast, y_ref, tol=1e-6, what="scan outputs")
    assert_close(h_fast, h_ref, tol=1e-6, what="final states")


def test_recurrent_state_shapes_divide_the_width_by_tensor_parallel_ranks():
    from hf_recurrentgemma import GriffinConfig

    config = GriffinConfig(vocab_size=32, hidden_size=16, lru_width=24, num_attention_heads=4,
                           intermediate_size=32, block_types=["recurrent"])
    assert recurrent_state_shapes(config) == ((3, 24), (24,))
    assert recurrent_state_shapes(config, tp_size=2) == ((3, 12), (12,))
    with pytest.raises(ValueError, match="lru_width=24 is not divisible by tensor_parallel_size=5"):
        recurrent_state_shapes(config, tp_size=5)

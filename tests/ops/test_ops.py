"""Ops against the reference's layers and against slow formulas."""

import pytest
import torch
from recurrentgemma.torch import layers as ref_layers
from recurrentgemma.torch import modules as ref_modules
from reference_helpers import assert_close, document_positions

from hf_recurrentgemma.griffin.ops_griffin import (
    SqrtBoundDerivative,
    apply_rope,
    causal_conv1d,
    local_attention_mask,
    rnn_scan,
    rnn_scan_sequential,
    sqrt_bound_derivative,
)


@pytest.mark.parametrize("starts", [(), (3,), (1, 2, 9), (10, 11)])
def test_conv1d_matches_reference_document_mask(starts):
    torch.manual_seed(0)
    batch, length, width, k = 2, 12, 5, 4
    ref = ref_layers.Conv1D(width=width, temporal_width=k)
    with torch.no_grad():
        ref.b.normal_()
    x = torch.randn(batch, length, width)
    segment_pos = document_positions(length, starts)[None].expand(batch, -1)
    expected, _ = ref(x.clone(), segment_pos)  # the reference masks its input in place
    tail = torch.zeros(batch, k - 1, width)
    actual, new_tail = causal_conv1d(x, tail, ref.w, ref.b, segment_pos == 0)
    assert_close(actual, expected, tol=1e-6, what="conv1d")
    # The tail keeps only inputs of the last document.
    last_start = max((0, *starts))
    for j in range(k - 1):
        t = length - (k - 1) + j
        want = x[:, t] if t >= last_start else torch.zeros_like(x[:, t])
        assert torch.equal(new_tail[:, j], want)


def test_scan_matches_closed_form_and_reference():
    torch.manual_seed(0)
    x, a = torch.randn(2, 7, 3), torch.rand(2, 7, 3)
    h0 = torch.randn(2, 3)
    y, h = rnn_scan_sequential(x, a, h0)
    expected, state = [], h0
    for t in range(7):
        state = a[:, t] * state + x[:, t]
        expected.append(state)
    assert_close(y, torch.stack(expected, 1), tol=1e-6, what="scan")
    assert_close(h, expected[-1], tol=1e-6, what="final state")
    ref_y, ref_h = ref_layers.rnn_scan(x, a, torch.zeros(2, 7, dtype=torch.bool), h0)
    assert_close(y, ref_y, tol=1e-6, what="reference scan")
    assert h.dtype == torch.float32


def test_scan_accumulates_in_float32_for_bfloat16_inputs():
    torch.manual_seed(0)
    x, a = torch.randn(1, 50, 4).bfloat16(), torch.rand(1, 50, 4).bfloat16()
    y, h = rnn_scan(x, a, torch.zeros(1, 4))
    ref_y, ref_h = ref_layers.rnn_scan(x, a, torch.zeros(1, 50, dtype=torch.bool), torch.zeros(1, 4))
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)


def test_unknown_scan_backend_is_named():
    with pytest.raises(ValueError, match="unknown scan backend 'nope'"):
        rnn_scan(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1), backend="nope")


def test_sqrt_gradient_is_clipped():
    x = torch.tensor([0.0, 1e-12, 0.25, 1.0], requires_grad=True)
    SqrtBoundDerivative.apply(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1000.0, 1000.0, 1.0, 0.5]))


def test_rope_matches_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 16)  # reference layout (B, T, N, Dh)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 0, 1, 2, 30]])
    expected = ref_modules._apply_rope(x, positions)
    actual = apply_rope(x.transpose(1, 2), positions, rope_fraction=0.5, theta=10_000.0).transpose(1, 2)
    assert_close(actual, expected, tol=1e-6, what="rope")


@pytest.mark.parametrize("window", [1, 3, 20])
def test_attention_mask_matches_reference_forward_mask(window):
    length = 12
    segment_pos = torch.stack([document_positions(length, ()), document_positions(length, (4, 5, 9))])
    expected = ref_modules._compute_forward_pass_mask(segment_pos, window)  # (B, T, T)
    past_valid = torch.zeros(2, window, dtype=torch.bool)
    mask, _ = local_attention_mask(past_valid, torch.ones(2, length, dtype=torch.bool), segment_pos == 0, window)
    assert torch.equal(mask[:, 0, :, window:], expected)
    assert not mask[:, 0, :, :window].any()


def test_sqrt_bound_derivative_is_plain_sqrt_without_autograd():
    x = torch.tensor([0.0, 0.25, 1.0], requires_grad=True)
    with torch.no_grad():
        assert torch.equal(sqrt_bound_derivative(x), torch.sqrt(x))
    sqrt_bound_derivative(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1000.0, 1.0, 0.5]))

"""What every compiled RG-LRU scan backend shares: the reverse-scan backward wired into autograd, and the choice
between the inference and the training forward.

A backend provides three `torch.library` custom ops with the contract of `ops_griffin.rnn_scan_sequential`:
    plain(x, a, h0) -> (y in x.dtype, h_last float32)                  inference
    states(x, a, h0) -> (every state float32 (B, T, L), h_last float32)  training forward
    backward(a, states, h0, dstates, dh_last) -> (dx, da, dh0) float32   the reverse scan
The backward of `h_t = a_t h_{t-1} + x_t` is the same recurrence run backwards, g_t = dstates_t + a_{t+1} g_{t+1}
(plus dh_last at the end), with dx_t = g_t, da_t = g_t h_{t-1} and dh0 = a_0 g_0, which is why the training forward
keeps the float32 states.
"""

import torch


def register_reverse_scan_autograd(states_op, backward_op) -> None:
    """Makes `states_op` differentiable in x, a and h0 through `backward_op`; gradients in the inputs' dtypes."""

    def setup_context(ctx, inputs, output):
        x, a, h0 = inputs
        states, _ = output
        ctx.save_for_backward(a, states, h0)
        ctx.dtypes = (x.dtype, a.dtype, h0.dtype)

    def backward(ctx, dstates, dh_last):
        a, states, h0 = ctx.saved_tensors
        if dstates is None:
            dstates = torch.zeros_like(states)
        if dh_last is None:
            dh_last = torch.zeros_like(h0, dtype=torch.float32)
        dx, da, dh0 = backward_op(a, states, h0, dstates, dh_last)
        x_dtype, a_dtype, h0_dtype = ctx.dtypes
        return dx.to(x_dtype), da.to(a_dtype), dh0.to(h0_dtype)

    states_op.register_autograd(backward, setup_context=setup_context)


def scan_with_backend(plain_op, states_op, x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor):
    """The training forward (float32 states kept for the backward) when autograd records, else the inference one."""
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or h0.requires_grad):
        states, h_last = states_op(x, a, h0)
        return states.to(x.dtype), h_last
    return plain_op(x, a, h0)

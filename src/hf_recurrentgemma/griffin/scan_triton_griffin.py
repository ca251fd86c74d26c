"""The RG-LRU scan as a Triton kernel for CUDA tensors: `h_t = a_t * h_{t-1} + x_t`, forward and backward, one
program per (batch row, block of channels), sequential over time, accumulated in float32.

Why a sequential loop per channel block: the recurrence does one multiply-add per element read, so it is bound by
memory, not arithmetic. Each program keeps its block's state in registers and walks the T steps in order; a step
reads `x_t` and `a_t` for BLOCK_L adjacent channels (contiguous, so the loads of a warp coalesce) and writes `y_t`.
The backward is the same recurrence run in reverse (see `_scan_bwd_kernel`), from the float32 states that the
training forward keeps. The design follows flash-linear-attention's `fused_recurrent_hgrn`; the launches are
registered as `torch.library` custom ops with their backward, like the CPU kernel's, so autograd and
`torch.compile` see one opaque op.

Floating-point contraction is off (`enable_fp_fusion=False`): `a * h + x` is rounded twice, like the two tensor
ops of the sequential reference in `ops_griffin.py`, so in float32 the results can match it bit for bit.

Triton is optional (`pip install -e ".[gpu]" in a clone of hf-recurrentgemma`): without it this module still imports and
`triton_error` says why the backend is unavailable. With `TRITON_INTERPRET=1` set before this module is first
imported, Triton's interpreter runs the kernels on CPU tensors; that is how tests/ops/test_scan_triton.py checks them
on machines without a GPU.
"""


import torch

from .kernel_build_griffin import op_namespace
from .scan_autograd_griffin import register_reverse_scan_autograd, scan_with_backend

try:
    import triton
    import triton.language as tl
except ImportError as error:  # the package must import (and the other backends run) without triton
    triton = None
    _IMPORT_ERROR = f"triton is not installed ({error}); install it with: pip install triton (or pip install -e '.[gpu]' in a clone of hf-recurrentgemma)"
else:
    _IMPORT_ERROR = None


def triton_error(device: torch.device) -> str | None:
    """None if the Triton scan runs on `device` (a CUDA device, with triton importable), else the reason."""
    if device.type != "cuda":
        return f"the triton backend runs on CUDA tensors, not {device.type}"
    return _IMPORT_ERROR


if triton is not None:

    @triton.jit
    def _scan_fwd_kernel(x_ptr, a_ptr, h0_ptr, y_ptr, h_last_ptr, T, L, BLOCK_L: tl.constexpr):
        """x, a: (B, T, L) contiguous; y: (B, T, L) in its own dtype; h0, h_last: (B, L) float32."""
        b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B * T * L may pass 2**31
        cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = cols < L
        h = tl.load(h0_ptr + b * L + cols, mask=mask, other=0.0)
        offsets = b * T * L + cols
        for _ in range(T):
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            h = a * h + x
            tl.store(y_ptr + offsets, h.to(y_ptr.dtype.element_ty), mask=mask)
            offsets += L
        tl.store(h_last_ptr + b * L + cols, h, mask=mask)

    @triton.jit
    def _scan_bwd_step(a_ptr, dy_ptr, dx_ptr, da_ptr, offsets, mask, carried, h_prev):
        """One step t of the reverse scan; returns the gradient carried to h_{t-1}, a_t g_t."""
        g = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + carried
        a = tl.load(a_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offsets, g.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(da_ptr + offsets, (g * h_prev).to(da_ptr.dtype.element_ty), mask=mask)
        return a * g

    @triton.jit
    def _scan_bwd_kernel(a_ptr, states_ptr, h0_ptr, dy_ptr, dh_last_ptr, dx_ptr, da_ptr, dh0_ptr, T, L,
                         BLOCK_L: tl.constexpr):
        """The reverse scan. g_t = dy_t + a_{t+1} g_{t+1} (+ dh_last at t = T-1); dx_t = g_t;
        da_t = g_t h_{t-1} with h_{-1} = h0; dh0 = a_0 g_0. states: (B, T, L) float32 forward states; a and dy in
        any float dtype; dx, da (B, T, L) and dh0 (B, L) float32."""
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = cols < L
        carried = tl.load(dh_last_ptr + b * L + cols, mask=mask, other=0.0)  # gradient reaching h_t from t+1 on
        offsets = (b * T + T - 1) * L + cols  # int64 throughout, like b
        for _ in range(T - 1):  # t = T-1 .. 1
            h_prev = tl.load(states_ptr + offsets - L, mask=mask, other=0.0)
            carried = _scan_bwd_step(a_ptr, dy_ptr, dx_ptr, da_ptr, offsets, mask, carried, h_prev)
            offsets -= L
        h0 = tl.load(h0_ptr + b * L + cols, mask=mask, other=0.0)  # t = 0: the state before it is h0
        carried = _scan_bwd_step(a_ptr, dy_ptr, dx_ptr, da_ptr, offsets, mask, carried, h0)
        tl.store(dh0_ptr + b * L + cols, carried, mask=mask)


def _block_width(batch: int, width: int, device: torch.device) -> int:
    """Channels per program. Every program walks all T steps, so the time is about T times the latency of one
    step, whatever the block width; what helps is enough programs to keep memory requests in flight on every SM.
    So the widest block (longest coalesced runs) that still gives at least one program per SM, down to one warp's
    worth. (A reasoned default, not a measured one: no GPU was available when it was written.)"""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    for block in (128, 64):
        if batch * triton.cdiv(width, block) >= sms:
            return block
    return 32


def _launch_config(x: torch.Tensor) -> tuple[tuple[int, int], int]:
    batch, _, width = x.shape
    block = _block_width(batch, width, x.device)
    return (batch, triton.cdiv(width, block)), block


_NS = op_namespace(__name__)


@torch.library.custom_op(f"{_NS}::rnn_scan", mutates_args=())
def _rnn_scan_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, T, L) in x.dtype and h_last (B, L) float32."""
    batch, seq_len, width = x.shape
    x, a, h0 = x.contiguous(), a.contiguous(), h0.float().contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h_last = torch.empty(batch, width, dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        h_last.copy_(h0)
        return y, h_last
    grid, block = _launch_config(x)
    with torch.cuda.device_of(x):  # Triton launches on the current device
        _scan_fwd_kernel[grid](x, a, h0, y, h_last, seq_len, width, BLOCK_L=block, num_warps=1,
                               enable_fp_fusion=False)
    return y, h_last


@_rnn_scan_op.register_fake
def _(x, a, h0):
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[2], dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::rnn_scan_states", mutates_args=())
def _rnn_scan_states_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward for training: every state in float32 (B, T, L), which the backward needs for `da`, and the last.
    The kernel reads x and a in their own dtype; only its output is float32."""
    states = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    h_last = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        h_last.copy_(h0)
        return states, h_last
    grid, block = _launch_config(x)
    with torch.cuda.device_of(x):
        _scan_fwd_kernel[grid](x.contiguous(), a.contiguous(), h0.float().contiguous(), states, h_last,
                               x.shape[1], x.shape[2], BLOCK_L=block, num_warps=1, enable_fp_fusion=False)
    return states, h_last


@_rnn_scan_states_op.register_fake
def _(x, a, h0):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape[0], x.shape[2], dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::rnn_scan_backward", mutates_args=())
def _rnn_scan_backward_op(
    a: torch.Tensor, states: torch.Tensor, h0: torch.Tensor, dy: torch.Tensor, dh_last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, da (B, T, L) and dh0 (B, L), all float32, from the float32 states (B, T, L)."""
    dx, da = torch.empty_like(states), torch.empty_like(states)
    dh0 = torch.empty_like(h0, dtype=torch.float32)
    if states.numel() == 0:  # dx and da are empty too
        dh0.copy_(dh_last)
        return dx, da, dh0
    grid, block = _launch_config(states)
    with torch.cuda.device_of(states):
        _scan_bwd_kernel[grid](a.contiguous(), states.contiguous(), h0.float().contiguous(), dy.contiguous(),
                               dh_last.float().contiguous(), dx, da, dh0, states.shape[1], states.shape[2],
                               BLOCK_L=block, num_warps=1, enable_fp_fusion=False)
    return dx, da, dh0


@_rnn_scan_backward_op.register_fake
def _(a, states, h0, dy, dh_last):
    return torch.empty_like(states), torch.empty_like(states), torch.empty_like(h0, dtype=torch.float32)


register_reverse_scan_autograd(_rnn_scan_states_op, _rnn_scan_backward_op)


def rnn_scan_triton(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `ops_griffin.rnn_scan_sequential`, on CUDA tensors; differentiable in x, a and h0.

    Without autograd the kernel writes `y` in `x.dtype` directly. With autograd it writes the float32 states
    (for float32 inputs they are `y` itself, no copy) and the backward runs the reverse scan on them. Arguments and
    results (shapes, dtypes) are those of `rnn_scan_sequential`.

    Example (on a machine with a CUDA GPU and triton):
        >>> x, a = torch.randn(2, 8, 16, device="cuda"), torch.rand(2, 8, 16, device="cuda")
        >>> y, h = rnn_scan_triton(x, a, torch.zeros(2, 16, device="cuda"))
        >>> y.shape, h.dtype
        (torch.Size([2, 8, 16]), torch.float32)
    """
    if triton is None:
        raise RuntimeError(_IMPORT_ERROR)
    return scan_with_backend(_rnn_scan_op, _rnn_scan_states_op, x, a, h0)

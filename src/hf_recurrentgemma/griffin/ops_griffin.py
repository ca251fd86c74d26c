"""Stateless tensor operations of Griffin: the RG-LRU linear scan, the causal conv1d with document resets,
half-dimension RoPE and the local-attention mask.

Shape letters used throughout the package:
    B batch, T time (tokens in this call), D model width, L RG-LRU width, H query heads, Dh head dim,
    W attention window (previous tokens a query may see), K conv1d temporal width, C query chunk.

Every function here takes the state it needs and returns the new one; nothing is stored between calls.
"""

import contextlib
import contextvars
import logging
import warnings
from typing import Callable, NamedTuple

import torch

from . import configuration_griffin
from .cpu_scan_griffin import rnn_scan_cpu, scan_kernel_error
from .scan_triton_griffin import rnn_scan_triton, triton_error

logger = logging.getLogger(__name__)

# The reference clips the gradient of sqrt(1 - a^2) at this value so that bfloat16 training never sees inf/NaN.
MAX_SQRT_GRADIENT = 1000.0


class SqrtBoundDerivative(torch.autograd.Function):
    """`sqrt(x)` whose gradient is clipped at `MAX_SQRT_GRADIENT` (at x -> 0 the true gradient is infinite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        clipped_x_times_4 = torch.clip(4.0 * x, min=1 / (MAX_SQRT_GRADIENT**2))
        return grad_output / torch.sqrt(clipped_x_times_4)


def sqrt_bound_derivative(x: torch.Tensor) -> torch.Tensor:
    """`sqrt(x)` with the clipped gradient when autograd records, plain `sqrt` otherwise (same values; the custom
    Function only costs time at inference)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return SqrtBoundDerivative.apply(x)
    return torch.sqrt(x)


def rnn_scan_sequential(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear recurrence `h_t = a_t * h_{t-1} + x_t`, one step at a time, accumulated in float32.

    This is the slow, obviously-correct reference; faster scans must match it (outputs, final state, gradients).

    Args:
        x: (B, T, L) inputs, any float dtype.
        a: (B, T, L) decay, same dtype as `x`; document resets are already folded in as `a_t = 0`.
        h0: (B, L) float32 state before the first step.

    Returns:
        y: (B, T, L) every state, cast to `x.dtype`.
        h: (B, L) float32 state after the last step.
    """
    h = h0
    ys = []
    for t in range(x.shape[1]):
        h = a[:, t].float() * h + x[:, t].float()
        ys.append(h.to(x.dtype))
    return torch.stack(ys, dim=1), h


# How an exported program (torch.export) runs the recurrence over a prompt. A Python loop over T would fix the prompt
# length in the program, so the steps go into one of torch's loop operators, each step the sequential scan's own
# `a * h + x` in float32: "scan" (lowered by ONNX and ExecuTorch) or "while_loop" (lowered by ONNX and OpenVINO, which
# has no rule for scan). Chosen per export by `export_loop` (hf_recurrentgemma/export picks it per backend).
EXPORT_LOOPS = ("scan", "while_loop")
_export_loop = contextvars.ContextVar("hf_recurrentgemma_export_loop", default="scan")


@contextlib.contextmanager
def export_loop(kind: str):
    """Within the block, programs exported from this model run the RG-LRU recurrence in loop operator `kind`."""
    if kind not in EXPORT_LOOPS:
        raise ValueError(f"unknown export loop {kind!r}; available: {list(EXPORT_LOOPS)}")
    token = _export_loop.set(kind)
    try:
        yield
    finally:
        _export_loop.reset(token)


def rnn_scan_exported(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor,
                      loop: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`rnn_scan_sequential` as one loop operator whose trip count is the symbolic T (`EXPORT_LOOPS`): the same
    float32 steps in the same order, so an exported program gives the sequential scan's values.
    x, a: (B, T, L); h0: (B, L) float32 -> y (B, T, L) in x.dtype, h (B, L) float32."""
    loop = loop or _export_loop.get()
    xs, decays = x.transpose(0, 1).float().contiguous(), a.transpose(0, 1).float().contiguous()  # (T, B, L)
    if loop == "scan":
        from torch._higher_order_ops.scan import scan

        def step(h, inputs):
            x_t, a_t = inputs
            h = a_t * h + x_t
            return h, h.clone()  # a loop output may not alias its carry

        h, ys = scan(step, h0, (xs, decays))
    elif loop == "while_loop":
        from torch._higher_order_ops.while_loop import while_loop

        def more(t, h, ys, xs, decays):
            return t < xs.shape[0]

        def step(t, h, ys, xs, decays):
            index = t.reshape(1)
            h = decays.index_select(0, index)[0] * h + xs.index_select(0, index)[0]
            # The inputs travel as carries, returned as they came: OpenVINO's loop takes no other operands.
            return t + 1, h, ys.index_copy(0, index, h[None]), xs.clone(), decays.clone()

        start = torch.zeros((), dtype=torch.long, device=x.device)
        _, h, ys, _, _ = while_loop(more, step, (start, h0, torch.zeros(xs.shape, device=x.device), xs, decays))
    else:
        raise ValueError(f"unknown export loop {loop!r}; available: {list(EXPORT_LOOPS)}")
    return ys.transpose(0, 1).to(x.dtype), h


def rnn_scan_step(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step (T = 1) of the recurrence in plain tensor ops: what every backend computes for a decoding step,
    with no dispatch or kernel call, so a compiled decode step traces straight through it."""
    h = a[:, 0].float() * h0 + x[:, 0].float()
    return h.to(x.dtype)[:, None], h


class ScanBackend(NamedTuple):
    """One RG-LRU scan implementation, with the contract of `rnn_scan_sequential`."""

    name: str
    fn: Callable
    unavailable: Callable[[torch.device], str | None]  # None if it runs on that device, else the reason
    auto_for: str | None = None  # the device type on which `auto` prefers it
    fix: str | None = None  # how to make it available, said when `auto` falls back (None: its module warns itself)


def _cpu_kernel_unavailable(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpu_kernel backend runs on CPU tensors, not {device.type}"
    return scan_kernel_error()


# The one list of scan backends: the config validates against it, `auto` chooses from it, the tests iterate it.
SCAN_BACKEND_REGISTRY = (
    ScanBackend("sequential", rnn_scan_sequential, lambda device: None),
    # The C kernel's build module warns once by itself when no compiler works (kernel_build_griffin.py).
    ScanBackend("cpu_kernel", rnn_scan_cpu, _cpu_kernel_unavailable, auto_for="cpu"),
    ScanBackend("triton", rnn_scan_triton, triton_error, auto_for="cuda",
                fix="pip install triton (or pip install -e '.[gpu]' in a clone of hf-recurrentgemma) to fix"),
)
SCAN_BACKENDS = {backend.name: backend.fn for backend in SCAN_BACKEND_REGISTRY}
if tuple(SCAN_BACKENDS) != configuration_griffin.SCAN_BACKENDS:
    raise ImportError(f"ops_griffin's scan registry {tuple(SCAN_BACKENDS)} differs from the names a config accepts "
                      f"{configuration_griffin.SCAN_BACKENDS} (configuration_griffin.SCAN_BACKENDS)")
SCAN_BACKEND_NAMES = configuration_griffin.SCAN_BACKEND_NAMES
_BY_NAME = {backend.name: backend for backend in SCAN_BACKEND_REGISTRY}
_auto_choice: dict[tuple, str] = {}


def scan_backend_available(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else the reason it cannot."""
    if name not in _BY_NAME:
        return f"unknown scan backend {name!r}; available: {list(SCAN_BACKEND_NAMES)}"
    return _BY_NAME[name].unavailable(device)


@torch.compiler.assume_constant_result  # decided in Python once; a compiled graph only sees the answer
def resolve_scan_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that `rnn_scan` uses: `backend` itself, or for "auto" the fastest one available for this device
    and dtype (chosen once per device type, dtype and setting of the CPU kernel switches, logged once; a missing
    compiled kernel warns once, a kernel the user switched off does not)."""
    if backend != "auto":
        reason = scan_backend_available(backend, device)
        if reason is not None:
            raise ValueError(f"scan backend {backend!r} cannot run here: {reason}")
        return backend
    key = (device.type, dtype, scan_kernel_error() if device.type == "cpu" else None)
    if key not in _auto_choice:
        choice = "sequential"
        for fast in (b for b in SCAN_BACKEND_REGISTRY if b.auto_for == device.type):
            reason = fast.unavailable(device)
            if reason is None:
                choice = fast.name
                break
            if fast.fix is not None:
                warnings.warn(
                    f"hf_recurrentgemma: the {fast.name} RG-LRU scan is unavailable ({reason}); falling back to the "
                    f"sequential scan, which is correct but much slower ({fast.fix})", RuntimeWarning, stacklevel=3,
                )
        _auto_choice[key] = choice
        logger.info("RG-LRU scan backend for %s/%s: %s", device.type, dtype, choice)
    return _auto_choice[key]


def rnn_scan(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor, backend: str = "auto"):
    """Dispatches the RG-LRU scan to a backend (`auto` picks the fastest available one); same contract as
    `rnn_scan_sequential`. A single step (T = 1, decoding) is computed inline whatever the backend."""
    if backend not in SCAN_BACKEND_NAMES:
        raise ValueError(f"unknown scan backend {backend!r}; available: {list(SCAN_BACKEND_NAMES)}")
    if x.shape[1] == 1:
        return rnn_scan_step(x, a, h0)
    if torch.compiler.is_exporting():  # another runtime runs the program: no kernel of ours, T stays symbolic
        return rnn_scan_exported(x, a, h0)
    return SCAN_BACKENDS[resolve_scan_backend(backend, x.device, x.dtype)](x, a, h0)


def rnn_scan_recording(x, a, h0, backend: str, record: int):
    """`rnn_scan`, also returning the float32 state before each of the last `record` steps (B, record, L).

    In bfloat16 the scan's per-step outputs are rounded, so those states are not in its output: the scan runs up to
    the last `record` steps, and those steps run one at a time from its float32 final state (`rnn_scan_step`).
    Every backend equals the sequential scan to the bit on CPU (tests/ops/test_scan_backends.py), so the output is the
    one plain `rnn_scan` gives, and the states are exactly those it passes through."""
    split = x.shape[1] - record
    ys, h = [], h0
    if split > 0:
        y, h = rnn_scan(x[:, :split], a[:, :split], h0, backend=backend)
        ys.append(y)
    before = []
    for t in range(split, x.shape[1]):
        before.append(h)
        y, h = rnn_scan_step(x[:, t : t + 1], a[:, t : t + 1], h)
        ys.append(y)
    return torch.cat(ys, dim=1), h, torch.stack(before, dim=1)


def rg_lru_gated_inputs(
    x: torch.Tensor, input_gate_logits: torch.Tensor, a_gate_logits: torch.Tensor, a_param: torch.Tensor,
    reset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The RG-LRU's gates (Griffin paper, eq. 1-4): the inputs `x_t` and decays `a_t` of the linear scan.

    `a_t = exp(-8 * sigmoid(a_gate) * softplus(a_param))`, `x_t = x * sigmoid(input_gate) * sqrt(1 - a_t^2)`; at a
    document start `a_t = 0` (the state is forgotten) and the input is not rescaled, as in the reference.

    Args:
        x: (..., L) the conv1d output; input_gate_logits, a_gate_logits: (..., L) the block-diagonal gates' outputs.
        a_param: (L,) the recurrence parameter. reset: (...) bool, true where a document starts.

    Returns:
        normalized_x: (..., L) in `x.dtype`; a: (..., L) the decay, zero where a document starts.
    """
    gate_x = torch.sigmoid(input_gate_logits)
    gate_a = torch.sigmoid(a_gate_logits)
    log_a = -8.0 * gate_a * torch.nn.functional.softplus(a_param)
    a = torch.exp(log_a)
    a_square = torch.exp(2 * log_a)
    gated_x = x * gate_x
    # sqrt(1 - a^2) keeps the state's scale; its gradient is clipped so bfloat16 training stays finite.
    multiplier = sqrt_bound_derivative(1 - a_square)
    multiplier = reset[..., None] + ~reset[..., None] * multiplier
    normalized_x = gated_x * multiplier.to(x.dtype)
    return normalized_x, a * ~reset[..., None]


def soft_cap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """The logit soft cap `cap * tanh(logits / cap)` (cap 0: logits unchanged), in the logits' dtype."""
    if not cap:
        return logits
    return torch.tanh(logits / cap) * cap


def scale_embeddings(embeds: torch.Tensor, config) -> torch.Tensor:
    """Token embeddings times `config.embedding_scale` (sqrt(D) rounded to bfloat16, as the reference trained) when
    `config.embeddings_scale_by_sqrt_dim`, else unchanged. embeds: (..., D)."""
    return embeds * config.embedding_scale if config.embeddings_scale_by_sqrt_dim else embeds


def recurrent_state_shapes(config, tp_size: int = 1) -> tuple[tuple[int, int], tuple[int]]:
    """Per-sequence state of one recurrent block, on one of `tp_size` tensor-parallel ranks (the RG-LRU and the
    conv1d are split by channel): the conv1d tail (K-1, L/tp) in the model dtype and the RG-LRU state (L/tp,) in
    float32 (`RECURRENT_STATE_DTYPE`). `GriffinCache` and the vLLM plugin both allocate from this."""
    if config.lru_width % tp_size:
        raise ValueError(f"lru_width={config.lru_width} is not divisible by tensor_parallel_size={tp_size}")
    width = config.lru_width // tp_size
    return (config.conv1d_width - 1, width), (width,)


# The RG-LRU state is always float32, whatever the model dtype (the reference's choice: bfloat16 state drifts).
RECURRENT_STATE_DTYPE = torch.float32


def attention_span(window: int) -> int:
    """Tokens a query of local attention sees with window `W`: itself and the `W` previous ones. Engines that count
    the window this way (vLLM's `sliding_window`) take this number; Transformers' built-in takes it too."""
    return window + 1


def _varlen_layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For packed sequences with start offsets `cu_seqlens` (N+1,): the row and column of each token in an
    (N, T_max) left-padded batch, and T_max (the one host read of a varlen call)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # (N,)
    longest = int(lengths.max()) if lengths.numel() else 0
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)
    offsets = torch.arange(rows.numel(), device=cu_seqlens.device) - cu_seqlens[rows]
    cols = longest - lengths[rows] + offsets
    return rows, cols, longest


def rnn_scan_varlen(
    x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor, cu_seqlens: torch.Tensor, state_indices: torch.Tensor,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rnn_scan` over packed sequences (as flash-linear-attention's varlen ops take them).

    Sequences are left-padded into one batch with `x = 0, a = 1`, which carries each initial state unchanged to
    the first real token, so the padded scan computes exactly the per-sequence function.

    Args:
        x, a: (N_tok, L) the tokens of N sequences back to back; resets already folded into `a`.
        h0: (S, L) float32 pool of states; sequence `n` starts from `h0[state_indices[n]]` (zero that row first
            for a sequence with no history: a reset hides it anyway, but `0 * NaN` would not).
        cu_seqlens: (N+1,) long start offsets, `cu_seqlens[0] = 0`, `cu_seqlens[N] = N_tok`.
        state_indices: (N,) long rows of `h0`.

    Returns:
        y: (N_tok, L) in `x.dtype`; h: (N, L) float32 state after each sequence's last token.
    """
    rows, cols, longest = _varlen_layout(cu_seqlens)
    count = cu_seqlens.numel() - 1
    x_pad = x.new_zeros(count, longest, x.shape[-1])
    a_pad = a.new_ones(count, longest, a.shape[-1])
    x_pad[rows, cols] = x
    a_pad[rows, cols] = a
    y, h = rnn_scan(x_pad, a_pad, h0[state_indices], backend=backend)
    return y[rows, cols], h


def causal_conv1d_varlen(
    x: torch.Tensor, tails: torch.Tensor, cu_seqlens: torch.Tensor, state_indices: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor, reset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_conv1d` over packed sequences.

    Each sequence's tail and tokens are laid end to end and left-padded into one batch, so the padded form sees,
    for every real token, exactly the K-1 inputs the sequence alone would give it.

    Args:
        x: (N_tok, L) the tokens of N sequences back to back; reset: (N_tok,) bool, true where a document starts.
        tails: (S, K-1, L) pool of conv tails; sequence `n` continues `tails[state_indices[n]]`.
        cu_seqlens: (N+1,) long; state_indices: (N,) long. weight: (K, L); bias: (L,).

    Returns:
        y: (N_tok, L) in `x.dtype`; new_tails: (N, K-1, L), each sequence's last K-1 inputs as `causal_conv1d`
        leaves them.
    """
    rows, cols, longest = _varlen_layout(cu_seqlens)
    count, width = cu_seqlens.numel() - 1, weight.shape[0]
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ext = x.new_zeros(count, width - 1 + longest, x.shape[-1])  # (N, K-1+T_max, L): [pad | tail | tokens]
    ext[rows, cols + width - 1] = x
    tail_cols = (longest - lengths)[:, None] + torch.arange(width - 1, device=x.device)  # (N, K-1)
    ext[torch.arange(count, device=x.device)[:, None], tail_cols] = tails[state_indices].to(x.dtype)
    reset_pad = torch.zeros(count, longest, dtype=torch.bool, device=x.device)
    reset_pad[rows, cols] = reset
    y, new_tails = causal_conv1d(ext[:, width - 1 :], ext[:, : width - 1], weight, bias, reset_pad)
    return y[rows, cols], new_tails


def causal_conv1d(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution that never looks back across a document start.

    `y_t = b + sum_{s=0}^{K-1} weight[K-1-s] * x_{t-s}`, where `x_{t-s}` is left out when a document starts in
    `(t-s, t]` (the reference's document mask). The accumulation order matches the reference.

    Args:
        x: (B, T, L) inputs.
        tail: (B, K-1, L) the previous K-1 inputs, zeros where unknown or before a document start.
        weight: (K, L); bias: (L,).
        reset: (B, T) bool, true where a document starts.

    Returns:
        y: (B, T, L) in `x.dtype`.
        new_tail: (B, K-1, L) the last K-1 inputs, zeroed where a later document start hides them.
    """
    width = weight.shape[0]
    seq_len = x.shape[1]
    if seq_len == 1:
        return _causal_conv1d_step(x, tail, weight, bias, reset)
    x_ext = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, K-1+T, L)
    y = x * weight[width - 1]
    keep = torch.ones_like(reset)
    for shift in range(1, width):
        # x_{t-shift} survives only if no document starts at t, t-1, ..., t-shift+1.
        keep = keep & ~_shift_right(reset, shift - 1)
        window = x_ext[:, width - 1 - shift : width - 1 - shift + seq_len]
        y = y + window * keep[..., None].to(x.dtype) * weight[width - 1 - shift]
    y = y + bias

    # Entries of the new tail that a later document start hides are zeroed, so decoding never looks past it.
    reset_ext = torch.cat([torch.zeros_like(reset[:, :1]).expand(-1, width - 1), reset], dim=1)
    visible = _visible_inputs(reset_ext[:, -(width - 1) :])[..., None]
    new_tail = x_ext[:, -(width - 1) :] * visible.to(x.dtype)
    return y, new_tail


def _visible_inputs(starts: torch.Tensor) -> torch.Tensor:
    """Which of N consecutive conv inputs a conv tail keeps: those after which no document starts among them.
    starts: (B, N) bool, a document starts at the input -> (B, N) bool. The one rule behind `causal_conv1d`'s new
    tail and `conv_tails_before`."""
    count = starts.int()
    return count.flip(1).cumsum(1).flip(1) - count == 0  # no start in (m, end]


def conv_tails_before(x: torch.Tensor, tail: torch.Tensor, reset: torch.Tensor, record: int) -> torch.Tensor:
    """The conv1d tail before each of the last `record` tokens: what `causal_conv1d` returns for a call that ends
    just before that token (its K-1 previous inputs, zeroed where a document start after them hides them).
    x: (B, T, L) conv inputs; tail: (B, K-1, L); reset: (B, T) bool -> (B, record, K-1, L)."""
    width1, seq_len = tail.shape[1], x.shape[1]
    x_ext = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, K-1+T, L)
    reset_ext = torch.cat([torch.zeros_like(reset[:, :1]).expand(-1, width1), reset], dim=1)
    tails = []
    for j in range(seq_len - record, seq_len):
        visible = _visible_inputs(reset_ext[:, j : j + width1])  # (B, K-1), as the call ending at token j-1 leaves it
        tails.append(x_ext[:, j : j + width1] * visible[..., None].to(x.dtype))
    return torch.stack(tails, dim=1)


def _causal_conv1d_step(x, tail, weight, bias, reset):
    """`causal_conv1d` for one token (decoding), with the same operations in the same order and fewer of them:
    a document start at this token hides the whole tail."""
    width = weight.shape[0]
    tail = tail.to(x.dtype)
    keep = (~reset)[..., None].to(x.dtype)  # (B, 1, 1)
    y = x * weight[width - 1]
    for shift in range(1, width):
        y = y + tail[:, width - 1 - shift : width - shift] * keep * weight[width - 1 - shift]
    y = y + bias
    return y, torch.cat([tail[:, 1:] * keep, x], dim=1)


def _shift_right(mask: torch.Tensor, shift: int) -> torch.Tensor:
    """(B, T) bool -> the same mask delayed by `shift` steps along T, padded with False."""
    if shift == 0:
        return mask
    return torch.cat([torch.zeros_like(mask[:, :shift]), mask[:, :-shift]], dim=1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rope_fraction: float, theta: float) -> torch.Tensor:
    """Rotary embedding of the first `rope_fraction` of each head's dimensions, as in the reference.

    Args:
        x: (B, H, T, Dh) queries or keys.
        positions: (B, T) integer position of each token in its document.

    Returns:
        (B, H, T, Dh) in `x.dtype`; the rotated part comes first, the rest is unchanged.
    """
    return rotate_half_dims(x, *rope_tables(positions, int(x.shape[-1] * rope_fraction), theta, x.dtype))


def rope_tables(positions: torch.Tensor, rope_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos (B, 1, T, rope_dim/2) in `dtype` for `rotate_half_dims`; computed once, used for queries and
    keys alike. The angles are float32, as in the reference."""
    freq = torch.arange(rope_dim // 2, device=positions.device)
    timescale = theta ** (2 * freq / rope_dim)
    inv_frequencies = 1.0 / timescale
    sinusoid = positions[:, None, :, None] * inv_frequencies  # (B, 1, T, rope_dim/2) float32
    return torch.sin(sinusoid).to(dtype), torch.cos(sinusoid).to(dtype)


def rotate_half_dims(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh) with its first `2 * sin.shape[-1]` dimensions rotated by the angles of `rope_tables`."""
    rope_dim = 2 * sin.shape[-1]
    x_rope, x_pass = x[..., :rope_dim], x[..., rope_dim:]
    first, second = x_rope.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin, x_pass], dim=-1)


def key_documents(window: int, reset: torch.Tensor) -> torch.Tensor:
    """The document of each key slot `[W carried | T new]`, counted from the one current before the T tokens (0):
    reset (B, T) bool -> (B, W + T) long. A key is visible to a query only when both are of one document: the one
    rule behind `local_attention_mask`, the window a call leaves (`GriffinLocalAttention`), and the visibility
    rollback records (`attention_steps`)."""
    carried = torch.zeros(reset.shape[0], window, dtype=torch.long, device=reset.device)
    return torch.cat([carried, reset.long().cumsum(1)], dim=1)


def local_attention_mask(
    past_valid: torch.Tensor, key_valid: torch.Tensor, reset: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query of a chunk may see, given the `W` keys held from before the chunk.

    Keys are laid out as `[W past slots | C chunk tokens]`, oldest first. Query `i` (key index `W + i`) sees key
    `j` when `i <= j <= W + i` (itself and the `W` previous tokens), the key is valid (a real token of the
    current document) and no document starts between them. A query always sees itself, so rows of padding
    never become all-masked.

    Args:
        past_valid: (B, W) bool, which past slots hold tokens of the document current at the chunk start.
        key_valid: (B, C) bool, which chunk tokens are real (not padding).
        reset: (B, C) bool, where a document starts.

    Returns:
        mask: (B, 1, C, W + C) bool, true where attention is allowed.
        doc: (B, W + C) long, document index of each key relative to the chunk start (0 = current at start).
    """
    chunk = key_valid.shape[1]
    doc = key_documents(window, reset)  # (B, W + C)
    q_doc = doc[:, window:]  # (B, C)
    valid = torch.cat([past_valid, key_valid], dim=1)
    q_idx = torch.arange(chunk, device=reset.device)[:, None] + window
    k_idx = torch.arange(window + chunk, device=reset.device)[None, :]
    in_window = (k_idx <= q_idx) & (k_idx >= q_idx - window)  # (C, W + C)
    mask = in_window & valid[:, None, :] & (q_doc[:, :, None] == doc[:, None, :])
    mask = mask | (k_idx == q_idx)
    return mask[:, None], doc

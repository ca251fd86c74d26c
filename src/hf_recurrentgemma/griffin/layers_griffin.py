"""Griffin's layers: RMSNorm, gated MLP, the recurrent block (conv1d + RG-LRU) and local multi-query attention.

Each temporal block is called as `block(x, seq, state) -> (y, new_state, steps)`: `seq` describes the tokens of
this call (positions, document starts, padding) and `state` is what the cache held before it (None: start from
scratch). `steps` is None unless `seq.record` asks for the state before each of the call's last tokens (rollback
recording, cache_griffin.py): then it holds them, computed from the very values the forward used.
Numerics follow `recurrentgemma.torch` (the reference) step by step, including where it casts.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from .cache_griffin import (
    AttentionState,
    AttentionSteps,
    RecurrentState,
    RecurrentSteps,
    empty_attention_state,
    empty_recurrent_state,
)
from .compat_griffin import ALL_ATTENTION_FUNCTIONS, init
from .configuration_griffin import GriffinConfig
from .cpu_matvec_griffin import bmm_rows, linear_cpu, row_invariant_call
from .cpu_quant_griffin import is_quantized, linear_quantized
from .ops_griffin import (
    causal_conv1d,
    conv_tails_before,
    key_documents,
    local_attention_mask,
    rg_lru_gated_inputs,
    rnn_scan,
    rnn_scan_recording,
    rope_tables,
    rotate_half_dims,
)

def query_chunk_size(window: int) -> int:
    """Long prompts are attended in query chunks of C tokens against W + C keys: cost O(T (W + C)), never a T x T
    mask. Of the W + C keys a query may see W + 1, so small chunks waste less work and large ones fewer calls;
    W/4 clamped to [256, 1024] was fastest on CPU for W = 2048 (docs/performance.md)."""
    return max(256, min(1024, window // 4))


class SequenceInfo(NamedTuple):
    """What the temporal blocks need to know about the tokens of one forward call."""

    positions: torch.Tensor  # (B, T) long: position in the document (0 starts a document)
    reset: torch.Tensor  # (B, T) bool: a document starts here (state and attention do not look back)
    key_valid: torch.Tensor  # (B, T) bool: a real token (false for padding, which no token may see)
    # Rollback recording: return the state before each of the last `record` tokens (0: no recording, no cost).
    record: int = 0

    def segment(self, part: slice, record: int = 0) -> "SequenceInfo":
        """The tokens `part` of this call, recording the state before each of their last `record`."""
        return SequenceInfo(self.positions[:, part], self.reset[:, part], self.key_valid[:, part], record)


class GriffinLinear(nn.Linear):
    """`nn.Linear` (same parameters, so PEFT, quantizers and checkpoints treat it as one) whose forward takes the
    few-row matrix kernel when decoding one sequence on CPU (`cpu_matvec_griffin.linear_cpu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_quantized(self.weight):  # torchao int8/int4 weights (quantize_, TorchAoConfig): cpu_quant_griffin.py
            return linear_quantized(x, self.weight, self.bias)
        return linear_cpu(x, self.weight, self.bias)


def linear(in_features: int, out_features: int, std: float, bias: bool = True) -> nn.Linear:
    """A `GriffinLinear` that records the normal std it is initialised with (the reference's scale for its role);
    `GriffinPreTrainedModel._init_weights` reads it. Biases start at zero."""
    layer = GriffinLinear(in_features, out_features, bias=bias)
    layer.init_std = std
    return layer


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, as in JAX and the reference."""
    return nn.functional.gelu(x, approximate="tanh")


class GriffinRMSNorm(nn.Module):
    """RMS norm whose scale is `1 + weight` (zero-initialised), computed in the input dtype like the reference."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def reset_parameters(self, config: GriffinConfig) -> None:
        init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.mean(torch.square(x), dim=-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * (self.weight + 1)


class GriffinMLP(nn.Module):
    """Gated MLP: `down(gelu(gate(x)) * up(x))` (the reference's `ffw_up` holds gate and up stacked)."""

    def __init__(self, config: GriffinConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = linear(d, f, std=math.sqrt(1.0 / d))
        self.up_proj = linear(d, f, std=math.sqrt(1.0 / d))
        self.down_proj = linear(f, d, std=math.sqrt(config.final_w_init_variance_scale / f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.down_proj(gelu(self.gate_proj(x)) * self.up_proj(x))


class BlockDiagonalLinear(nn.Module):
    """Linear map with H independent (L/H x L/H) blocks, plus bias: the RG-LRU gates."""

    def __init__(self, width: int, num_blocks: int):
        super().__init__()
        self.num_blocks = num_blocks
        block_width = width // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, block_width, block_width))  # (H, i, j)
        self.bias = nn.Parameter(torch.empty(num_blocks, block_width))  # (H, j)

    def reset_parameters(self, config: GriffinConfig) -> None:
        init.normal_(self.weight, std=math.sqrt(config.w_init_variance_scale / self.weight.shape[1]))
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., L) -> (..., L)
        # One batched GEMM over the H blocks: equal to the reference's einsum "... h i, h i j -> ... h j" to the
        # bit, and fewer copies than einsum makes.
        blocks = x.reshape(-1, self.num_blocks, x.shape[-1] // self.num_blocks).transpose(0, 1)  # (H, N, i)
        if row_invariant_call(x):
            # A few rows (a speculative verification): each through the one-row product a decoding step runs, so
            # the call equals that many decoding steps bit for bit (docs/speculative.md).
            y = bmm_rows(blocks, self.weight)
        else:
            y = torch.bmm(blocks, self.weight)  # (H, N, j)
        y = y.transpose(0, 1) + self.bias  # (N, H, j)
        return y.reshape(x.shape)


class GriffinRGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit (Griffin paper, eq. 1-4), state in float32."""

    def __init__(self, config: GriffinConfig):
        super().__init__()
        self.a_param = nn.Parameter(torch.empty(config.lru_width))
        self.input_gate = BlockDiagonalLinear(config.lru_width, config.num_attention_heads)
        self.a_gate = BlockDiagonalLinear(config.lru_width, config.num_attention_heads)

    def reset_parameters(self, config: GriffinConfig) -> None:
        # `a = sigmoid(-softplus(a_param))**8` starts uniform on the ring [0.9, 0.999] (area-proportional).
        with torch.no_grad():
            a_param = torch.empty_like(self.a_param).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8)
            a_param = a_param.log_().mul_(0.5).neg_().exp_().sub_(1.0).log_()
        init.copy_(self.a_param, a_param)

    def forward(
        self, x: torch.Tensor, reset: torch.Tensor, h0: torch.Tensor, scan_backend: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, L); reset: (B, T) bool; h0: (B, L) float32 -> y (B, T, L), h (B, L) float32."""
        return rnn_scan(*self.scan_inputs(x, reset), h0, backend=scan_backend)

    def scan_inputs(self, x: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and decays (B, T, L) of the recurrence `h_t = a_t * h_{t-1} + x_t`, in `x.dtype`
        (the formula: `ops_griffin.rg_lru_gated_inputs`)."""
        return rg_lru_gated_inputs(x, self.input_gate(x), self.a_gate(x), self.a_param, reset)


class GriffinConv1d(nn.Module):
    """Causal depthwise temporal convolution of width K (weight (K, L): `weight[K-1]` multiplies the current
    token), with the reference's document mask."""

    def __init__(self, config: GriffinConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.conv1d_width, config.lru_width))
        self.bias = nn.Parameter(torch.empty(config.lru_width))

    def reset_parameters(self, config: GriffinConfig) -> None:
        init.normal_(self.weight, std=math.sqrt(config.w_init_variance_scale / config.conv1d_width))
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, reset: torch.Tensor, tail: torch.Tensor):
        return causal_conv1d(x, tail, self.weight, self.bias, reset)


class GriffinRecurrentBlock(nn.Module):
    """`linear_out(rg_lru(conv1d(linear_x(x))) * gelu(linear_y(x)))`."""

    def __init__(self, config: GriffinConfig):
        super().__init__()
        self.config = config
        d, l = config.hidden_size, config.lru_width
        self.linear_y = linear(d, l, std=math.sqrt(1.0 / d))
        self.linear_x = linear(d, l, std=math.sqrt(1.0 / d))
        self.linear_out = linear(l, d, std=math.sqrt(config.final_w_init_variance_scale / l))
        self.conv_1d = GriffinConv1d(config)
        self.rg_lru = GriffinRGLRU(config)

    def forward(self, x: torch.Tensor, seq: SequenceInfo, state: RecurrentState | None):
        """x: (B, T, D) -> (B, T, D), new RecurrentState, RecurrentSteps of the last `seq.record` tokens or None."""
        if state is None:
            state = empty_recurrent_state(self.config, x.shape[0], x.dtype, x.device)
        y = gelu(self.linear_y(x))
        x = self.linear_x(x)
        conv_in = x
        x, conv_state = self.conv_1d(x, seq.reset, state.conv)
        if not seq.record:
            x, rg_lru_state = self.rg_lru(x, seq.reset, state.rg_lru, self.config.scan_backend)
            return self.linear_out(x * y), RecurrentState(conv=conv_state, rg_lru=rg_lru_state), None
        x, rg_lru_state, h_before = rnn_scan_recording(*self.rg_lru.scan_inputs(x, seq.reset), state.rg_lru,
                                                       self.config.scan_backend, seq.record)
        steps = RecurrentSteps(conv_tails_before(conv_in, state.conv, seq.reset, seq.record), h_before)
        return self.linear_out(x * y), RecurrentState(conv=conv_state, rg_lru=rg_lru_state), steps


def _first_visible_slot(valid: torch.Tensor) -> int:
    """Index of the first carried key slot that some row may see (W if none): at the start of a prompt, and for
    the first chunks of one, the carried slots are empty and attending to them would only be masked work.
    valid: (B, W) bool. Inside a compiled graph it keeps every slot (0) rather than read a value back."""
    if torch.compiler.is_compiling():
        return 0
    seen = valid.any(0)
    return int(seen.int().argmax()) if bool(seen.any()) else valid.shape[1]


def eager_local_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention: logits in the input dtype, softmax in float32 (as the reference)."""
    key = key.expand(-1, query.shape[1], -1, -1)
    value = value.expand(-1, query.shape[1], -1, -1)
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    logits = logits.masked_fill(~attention_mask, torch.finfo(logits.dtype).min)
    probs = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class GriffinLocalAttention(nn.Module):
    """Local multi-query attention over the W previous tokens, with RoPE on half of each head."""

    is_causal = True

    def __init__(self, config: GriffinConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.rope_dim = int(self.head_dim * config.partial_rotary_factor)
        d = config.hidden_size
        self.q_proj = linear(d, d, std=math.sqrt(1.0 / d), bias=False)
        self.k_proj = linear(d, self.head_dim, std=math.sqrt(1.0 / d), bias=False)
        self.v_proj = linear(d, self.head_dim, std=math.sqrt(1.0 / d), bias=False)
        self.o_proj = linear(d, d, std=math.sqrt(config.final_w_init_variance_scale / d))

    @property
    def num_key_value_groups(self) -> int:
        """Query heads per key/value head, as Transformers' attention functions read it: all of this module's
        query heads share the one key/value head. Under tensor parallelism q_proj holds a shard of the heads
        (a DTensor whose local rows are this rank's), so the count is read from the weight, not the config."""
        weight = self.q_proj.weight
        rows = weight.to_local().shape[0] if hasattr(weight, "to_local") else weight.shape[0]
        return rows // self.head_dim

    def forward(self, x: torch.Tensor, seq: SequenceInfo, state: AttentionState | None):
        """x: (B, T, D) -> (B, T, D), new AttentionState, AttentionSteps of the last `seq.record` tokens or None."""
        batch, seq_len, _ = x.shape
        if state is None:
            state = empty_attention_state(self.config, batch, x.dtype, x.device)
        # -1 heads: under tensor parallelism q_proj is column-sharded and a rank holds H / tp of them.
        q = self.q_proj(x).view(batch, seq_len, -1, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(batch, seq_len, 1, self.head_dim).transpose(1, 2)  # (B, 1, T, Dh)
        v = self.v_proj(x).view(batch, seq_len, 1, self.head_dim).transpose(1, 2)
        sin, cos = rope_tables(seq.positions, self.rope_dim, self.config.rope_theta, q.dtype)
        q, k = rotate_half_dims(q, sin, cos), rotate_half_dims(k, sin, cos)

        implementation = self.config._attn_implementation or "sdpa"
        attend = eager_local_attention if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        steps = attention_steps(state, k, v, seq) if seq.record else None
        if seq_len == 1:
            out, state = self._attend_one_token(attend, q, k, v, seq, state)
        elif row_invariant_call(x):
            out, state = self._attend_tokens(attend, q, k, v, seq, state)
        else:
            out, state = self._attend_chunks(attend, q, k, v, seq, state)
        out = out.reshape(batch, seq_len, -1)
        return self.o_proj(out), state, steps

    def _attend_chunks(self, attend, q, k, v, seq: SequenceInfo, state: AttentionState):
        """Queries in chunks of C against the W carried keys plus the chunk's own: O(T (W + C)), no T x T mask.
        q (B, H, T, Dh), k and v (B, 1, T, Dh) -> out (B, T, H, Dh), new state."""
        window = self.config.attention_window_size
        chunk = query_chunk_size(window)
        outputs = []
        # One chunk without `range`: an exported program keeps the prompt length symbolic (docs/export.md).
        for start in range(0, q.shape[2], chunk) if chunk < q.shape[2] else (0,):
            part = slice(start, start + chunk)
            keys = torch.cat([state.keys, k[:, :, part]], dim=2)  # (B, 1, W + C, Dh)
            values = torch.cat([state.values, v[:, :, part]], dim=2)
            mask, doc = local_attention_mask(state.valid, seq.key_valid[:, part], seq.reset[:, part], window)
            first = _first_visible_slot(state.valid)  # carried slots before it are invisible to every query
            out, _ = attend(self, q[:, :, part], keys[:, :, first:], values[:, :, first:], mask[..., first:],
                            scaling=self.scaling, dropout=0.0)
            outputs.append(out)
            # Keep the last W keys; those before the chunk's last document start become invisible for good.
            valid = torch.cat([state.valid, seq.key_valid[:, part]], dim=1) & (doc == doc[:, -1:])
            state = AttentionState(keys[:, :, -window:], values[:, :, -window:], valid[:, -window:])
        return torch.cat(outputs, dim=1), state

    def _attend_one_token(self, attend, q, k, v, seq: SequenceInfo, state: AttentionState):
        """`_attend_chunks` for one token (decoding), with its mask written out: the query sees itself and the
        valid carried keys, unless a document starts at it."""
        past_valid = state.valid & ~seq.reset  # (B, W)
        keys = torch.cat([state.keys, k], dim=2)  # (B, 1, W + 1, Dh)
        values = torch.cat([state.values, v], dim=2)
        itself = torch.ones_like(past_valid[:, :1])
        mask = torch.cat([past_valid, itself], dim=1)[:, None, None, :]  # (B, 1, 1, W + 1)
        out, _ = attend(self, q, keys, values, mask, scaling=self.scaling, dropout=0.0)
        valid = torch.cat([past_valid, seq.key_valid], dim=1)
        return out, AttentionState(keys[:, :, 1:], values[:, :, 1:], valid[:, 1:])


    def _attend_tokens(self, attend, q, k, v, seq: SequenceInfo, state: AttentionState):
        """`_attend_one_token` for each of a few tokens in turn (a speculative verification): every query sees the
        W + 1 keys a decoding step would give it, in the same order and with the same mask, so the call equals T
        decoding steps bit for bit. (`_attend_chunks` reduces over the W + C keys of the whole chunk, which rounds
        differently.) The keys are views into one [W carried | T new] buffer: no copy per token.
        q (B, H, T, Dh), k and v (B, 1, T, Dh) -> out (B, T, H, Dh), new state."""
        window = state.keys.shape[2]
        keys = torch.cat([state.keys, k], dim=2)  # (B, 1, W + T, Dh)
        values = torch.cat([state.values, v], dim=2)
        valid = state.valid
        itself = torch.ones_like(valid[:, :1])
        outputs = []
        for t in range(q.shape[2]):
            past_valid = valid & ~seq.reset[:, t : t + 1]  # (B, W): the rule of `_attend_one_token`
            mask = torch.cat([past_valid, itself], dim=1)[:, None, None, :]  # (B, 1, 1, W + 1)
            out, _ = attend(self, q[:, :, t : t + 1], keys[:, :, t : t + window + 1],
                            values[:, :, t : t + window + 1], mask, scaling=self.scaling, dropout=0.0)
            outputs.append(out)
            valid = torch.cat([past_valid, seq.key_valid[:, t : t + 1]], dim=1)[:, 1:]
        return torch.cat(outputs, dim=1), AttentionState(keys[:, :, -window:], values[:, :, -window:], valid)


def attention_steps(state: AttentionState, k: torch.Tensor, v: torch.Tensor, seq: SequenceInfo) -> AttentionSteps:
    """For each of the last `seq.record` tokens of a call: the key/value slot it pushes out of the window, and the
    key visibility before it, as a call ending just before it leaves it (a slot is visible when it holds a real
    token and no document starts after it; the rule of `_attend_chunks` and `_attend_one_token`).
    state: the window before the call; k, v: (B, 1, T, Dh) the call's keys and values (RoPE applied)."""
    window, seq_len, record = state.valid.shape[1], k.shape[2], seq.record
    # The slots in order are [W carried | T new]; token j pushes out slot j.
    first, end = seq_len - record, seq_len
    keys = torch.cat([state.keys[:, 0, first:end], k[:, 0, max(first - window, 0) : max(end - window, 0)]], dim=1)
    values = torch.cat([state.values[:, 0, first:end], v[:, 0, max(first - window, 0) : max(end - window, 0)]],
                       dim=1)
    valid = torch.cat([state.valid, seq.key_valid], dim=1)  # (B, W + T)
    doc = key_documents(window, seq.reset)  # (B, W + T)
    slots = torch.arange(first, end, device=valid.device)[:, None] + torch.arange(window, device=valid.device)
    current_doc = doc[:, window - 1 + torch.arange(first, end, device=valid.device)]  # (B, r): doc of token j-1
    visible = valid[:, slots] & (doc[:, slots] == current_doc[..., None])  # (B, r, W)
    return AttentionSteps(keys, values, visible)

"""Griffin's blocks as vLLM layers: the recurrent block as a state layer (conv1d tail and float32 RG-LRU state per
sequence slot), local attention through vLLM's paged `Attention` with its sliding window, and the gated MLP, all
tensor-parallel. The math is the package's own (`ops_griffin`, `BlockDiagonalLinear`); only the plumbing is here.

Tokens arrive packed, (N, D): vLLM puts the decoding requests (one token each) first, then the prefill chunks.
"""

import functools

import torch
from torch import nn
from vllm.compilation.breakable_cudagraph import eager_break_during_capture
from vllm.config import CompilationMode, get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.activation import GeluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.model_loader.weight_utils import sharded_weight_loader
from vllm.model_executor.utils import set_weight_attrs
from vllm.utils.torch_utils import direct_register_custom_op
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from ..griffin.configuration_griffin import GriffinConfig
from ..griffin.layers_griffin import BlockDiagonalLinear, gelu
from ..griffin.ops_griffin import (
    RECURRENT_STATE_DTYPE,
    attention_span,
    causal_conv1d,
    causal_conv1d_varlen,
    conv_tails_before,
    recurrent_state_shapes,
    rg_lru_gated_inputs,
    rnn_scan,
    rnn_scan_recording,
    rnn_scan_step,
    rnn_scan_varlen,
)

# Inductor computes fused bfloat16 arithmetic in float32 and rounds once at the end; this rounds every intermediate
# result where eager (and the reference) round, so compiled bfloat16 serving keeps the reference's numerics
# (docs/serving.md, "bfloat16"). The plugin's config hook sets it for vLLM's graph too.
INDUCTOR_NUMERICS = {"emulate_precision_casts": True}


def _shard(param: nn.Parameter, axis: int) -> nn.Parameter:
    """Marks `param` to be loaded as this rank's slice along `axis` (the RG-LRU and conv1d split by channel)."""
    set_weight_attrs(param, {"weight_loader": sharded_weight_loader(axis)})
    return param


def _heads_per_rank(config: GriffinConfig, role: str) -> int:
    """This rank's share of the `num_attention_heads` heads (`role` says what they are in the calling layer)."""
    tp = get_tensor_model_parallel_world_size()
    if config.num_attention_heads % tp:
        raise ValueError(f"num_attention_heads={config.num_attention_heads}{role} is not divisible by "
                         f"tensor_parallel_size={tp}")
    return config.num_attention_heads // tp


class GriffinMLP(nn.Module):
    """`down(gelu(gate(x)) * up(x))` with gate and up stacked in one column-parallel GEMM."""

    def __init__(self, config: GriffinConfig, prefix: str):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(d, [f, f], bias=True, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(f, d, bias=True, prefix=f"{prefix}.down_proj")
        self.act = GeluAndMul(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, D)
        gate_up, _ = self.gate_up_proj(x)
        out, _ = self.down_proj(self.act(gate_up))
        return out


class GriffinAttention(nn.Module):
    """Local multi-query attention: RoPE on the first `partial_rotary_factor` of each head (vLLM's `get_rope`, whose
    tables and rotation are `ops_griffin.rope_tables` / `rotate_half_dims`'s), keys and values in vLLM's paged
    cache, a window of `attention_span(W)` tokens (itself and the W previous, the reference's)."""

    def __init__(self, config: GriffinConfig, max_positions: int, cache_config, prefix: str):
        super().__init__()
        self.num_heads = _heads_per_rank(config, "")
        self.head_dim = config.head_dim
        d = config.hidden_size
        # One key/value head (multi-query): QKVParallelLinear replicates it on every rank.
        self.qkv_proj = QKVParallelLinear(d, self.head_dim, config.num_attention_heads, 1, bias=False,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(d, d, bias=True, prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=max_positions, is_neox_style=True,
                                   rope_parameters={"rope_theta": config.rope_theta,
                                                    "partial_rotary_factor": config.partial_rotary_factor})
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=1,
                              cache_config=cache_config,
                              per_layer_sliding_window=attention_span(config.attention_window_size),
                              prefix=f"{prefix}.attn")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (N, D), (N,) -> (N, D)
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.num_heads * self.head_dim, self.head_dim, self.head_dim], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v.contiguous()))
        return out


class _Conv1d(nn.Module):
    """Holds the conv1d parameters under our names: weight (K, L/tp), bias (L/tp,)."""

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.weight = _shard(nn.Parameter(torch.empty(width, channels)), 1)
        self.bias = _shard(nn.Parameter(torch.empty(channels)), 0)


class _RGLRU(nn.Module):
    """Holds the RG-LRU parameters under our names; the gates are the package's `BlockDiagonalLinear`, split by
    head across ranks."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.a_param = _shard(nn.Parameter(torch.empty(channels)), 0)
        self.input_gate = BlockDiagonalLinear(channels, heads)
        self.a_gate = BlockDiagonalLinear(channels, heads)
        for gate in (self.input_gate, self.a_gate):
            _shard(gate.weight, 0)
            _shard(gate.bias, 0)

    def gated_inputs(self, x: torch.Tensor, reset: torch.Tensor):
        return rg_lru_gated_inputs(x, self.input_gate(x), self.a_gate(x), self.a_param, reset)


class GriffinRecurrentBlock(MambaBase, nn.Module):
    """`linear_out(rg_lru(conv1d(linear_x(x))) * gelu(linear_y(x)))` with the conv tail and the RG-LRU state kept
    in vLLM's per-sequence state slots.

    The projections run in the model's (compiled) graph; the stateful middle, conv1d then RG-LRU, is the custom op
    `torch.ops.vllm.griffin_recurrent` writing into an `output` argument (vLLM's state layers' contract: the op is
    opaque to torch.compile and reads the step's metadata at run time). Inside it decodes take a one-token update
    with no host read (under speculative decoding a multi-token verify, `_verify`); prefill chunks take the packed
    (varlen) path.

    A token at position 0 starts a document: the state is reset there, by position (a slot is read as zeros for a
    request that starts in this step, so nothing left by an earlier request can leak in). A prefill chunk that
    continues a request (chunked prefill, or a prefix-cache hit: vLLM has copied the cached block's state into the
    request's slot) starts from its slot's state.
    """

    def __init__(self, config: GriffinConfig, model_config, cache_config, prefix: str):
        super().__init__()
        heads = _heads_per_rank(config, " (the RG-LRU's gate blocks)")
        self.config = config
        self.model_config = model_config
        self.cache_config = cache_config
        self.prefix = prefix
        d, width = config.hidden_size, config.lru_width
        local = width // get_tensor_model_parallel_world_size()
        self.linear_y = ColumnParallelLinear(d, width, bias=True, prefix=f"{prefix}.linear_y")
        self.linear_x = ColumnParallelLinear(d, width, bias=True, prefix=f"{prefix}.linear_x")
        self.linear_out = RowParallelLinear(width, d, bias=True, prefix=f"{prefix}.linear_out")
        self.conv_1d = _Conv1d(config.conv1d_width, local)
        self.rg_lru = _RGLRU(local, heads)

        vllm_config = get_current_vllm_config()
        contexts = vllm_config.compilation_config.static_forward_context
        if prefix in contexts:
            raise ValueError(f"duplicate layer name: {prefix}")
        contexts[prefix] = self  # vLLM binds this layer's state slots through this table
        self.kv_cache = (torch.tensor([]),)
        # Under vLLM's compiled mode the decode step is compiled too (one graph shared by every layer, dynamic in
        # the number of requests): inside the custom op it would otherwise run ~30 small eager ops per layer.
        compiled = vllm_config.compilation_config.mode != CompilationMode.NONE
        self._decode_step = compiled_decode_step() if compiled else decode_step

    # --- the state-layer contract (MambaBase) -----------------------------------------------------------------
    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        # Short-conv metadata (token counts, start offsets, state slots of prefills and decodes) is all we read.
        return MambaAttentionBackendEnum.SHORT_CONV

    def get_state_shape(self):
        return recurrent_state_shapes(self.config, get_tensor_model_parallel_world_size())

    def get_state_dtype(self):
        return self.model_config.dtype, RECURRENT_STATE_DTYPE

    # --- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (N, D), (N,) -> (N, D)
        y, _ = self.linear_y(x)
        branch, _ = self.linear_x(x)
        mixed = torch.empty_like(branch)
        torch.ops.vllm.griffin_recurrent(branch, positions, mixed, self.prefix)
        out, _ = self.linear_out(mixed * gelu(y))
        return out

    def temporal(self, x: torch.Tensor, positions: torch.Tensor, out: torch.Tensor) -> None:
        """conv1d then RG-LRU over the packed tokens `x` (N, L/tp), written into `out` (the custom op's body);
        state slots updated in place. Rows past the step's real tokens (padding) are written as zeros."""
        metadata = get_forward_context().attn_metadata
        metadata = metadata.get(self.prefix) if isinstance(metadata, dict) else None
        reset = positions == 0
        if metadata is None:  # profiling / dummy run: one sequence from a zero state, nothing kept
            out.copy_(self._one_sequence(x, reset))
            return
        conv_pool, h_pool = self.kv_cache
        num_decode_tokens, num_prefill_tokens = metadata.num_decode_tokens, metadata.num_prefill_tokens
        if num_decode_tokens:
            part = slice(0, num_decode_tokens)
            if metadata.num_accepted_tokens is None:  # one token per request
                slots = _first_column(metadata.state_indices_tensor_d)[:num_decode_tokens].long()
                out[part] = self._decode(x[part], reset[part], slots, conv_pool, h_pool)
            else:  # speculative decoding: up to 1 + drafts tokens per request, verified at once
                out[part] = self._verify(x[part], reset[part], metadata, conv_pool, h_pool)
        if num_prefill_tokens:
            slots = _first_column(metadata.state_indices_tensor_p)[: metadata.num_prefills]
            starts = metadata.query_start_loc_p.long()
            part = slice(num_decode_tokens, num_decode_tokens + num_prefill_tokens)
            out[part] = self._sequences(x[part], reset[part], starts, slots, conv_pool, h_pool)
        out[num_decode_tokens + num_prefill_tokens :] = 0

    def _decode(self, x, reset, slots, conv_pool, h_pool) -> torch.Tensor:
        """One token per request (n, L/tp) through `decode_step`; slots gathered and written back by index, no
        host read."""
        y, tails, h = self._decode_step(x, reset, conv_pool[slots], h_pool[slots], self.conv_1d, self.rg_lru)
        conv_pool[slots] = tails.to(conv_pool.dtype)
        h_pool[slots] = h
        return y

    def _verify(self, x, reset, metadata, conv_pool, h_pool) -> torch.Tensor:
        """Speculative decoding's verify step on per-draft state slots, as vLLM's own state layers: request r brings
        q_r <= 1 + k tokens (its last token and its drafts) and owns 1 + k slots (`state_indices_tensor_d`, (n, 1+k));
        it starts from the state after its last accepted token, in slot column `num_accepted_tokens - 1` (vLLM
        counts the bonus token), and the state after its i-th token here is written to column i. The sampler then
        accepts a prefix of the drafts; the next step reads the state of the last accepted one. No host read: the
        tokens are laid out (n, 1+k) by index arithmetic on the device.

        x: (N_d, L/tp) the decode tokens, packed; reset: (N_d,) bool. Returns y (N_d, L/tp).
        """
        n = metadata.num_decodes
        columns = metadata.state_indices_tensor_d[:n].long()  # (n, 1+k)
        width = columns.shape[1]
        starts = metadata.query_start_loc_d[: n + 1].long()  # (n+1,)
        lengths = starts[1:] - starts[:-1]
        step = torch.arange(width, device=x.device)
        valid = step[None] < lengths[:, None]  # (n, 1+k)
        token = (starts[:-1, None] + step).clamp(max=x.shape[0] - 1)  # (n, 1+k) packed index of each (r, i)
        accepted = metadata.num_accepted_tokens[:n].long()
        src = columns.gather(1, (accepted - 1).clamp(min=0)[:, None])[:, 0]  # (n,)
        y, tails, h = verify_steps(x[token], reset[token], valid, conv_pool[src], h_pool[src], self.conv_1d,
                                   self.rg_lru)
        # Columns past a request's tokens keep what they hold (they belong to the request and are not read).
        keep = ~valid
        conv_pool[columns] = torch.where(keep[..., None, None], conv_pool[columns], tails.to(conv_pool.dtype))
        h_pool[columns] = torch.where(keep[..., None], h_pool[columns], h)
        # Packed token j belongs to request r = #starts <= j (excluding the first), at step j - starts[r].
        j = torch.arange(x.shape[0], device=x.device)
        r = torch.searchsorted(starts[1:], j, right=True).clamp(max=n - 1)
        return y[r, j - starts[r]]

    def _sequences(self, x, reset, starts, slots, conv_pool, h_pool) -> torch.Tensor:
        """Packed prefill chunks (start offsets `starts`, state `slots`) through conv1d and RG-LRU; slots
        updated."""
        slots = slots.long()
        fresh = slots[reset[starts[:-1]]]  # requests whose first token here starts the document
        conv_pool[fresh] = 0
        h_pool[fresh] = 0
        conv_y, tails = causal_conv1d_varlen(x, conv_pool, starts, slots, self.conv_1d.weight, self.conv_1d.bias,
                                             reset)
        normalized, a = self.rg_lru.gated_inputs(conv_y, reset)
        y, h = rnn_scan_varlen(normalized, a, h_pool, starts, slots, backend=self.config.scan_backend)
        conv_pool[slots] = tails.to(conv_pool.dtype)
        h_pool[slots] = h
        return y

    def _one_sequence(self, x: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        width = self.conv_1d.weight.shape[1]
        tail = x.new_zeros(1, self.config.conv1d_width - 1, width)
        conv_y, _ = causal_conv1d(x[None], tail, self.conv_1d.weight, self.conv_1d.bias, reset[None])
        normalized, a = self.rg_lru.gated_inputs(conv_y, reset[None])
        h0 = torch.zeros(1, width, dtype=RECURRENT_STATE_DTYPE, device=x.device)
        y, _ = rnn_scan(normalized, a, h0, backend=self.config.scan_backend)
        return y[0]


def decode_step(x, reset, tails, h, conv, rg_lru) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding token per request through conv1d and the RG-LRU: the package's one-token conv step
    (`causal_conv1d` with T = 1) and `rnn_scan_step`.

    A request starting here (a one-token prompt, `reset`) reads its state as zeros whatever an earlier request left
    in the slot (`where`, not a multiply: a never-written slot may hold NaN).

    Args:
        x: (n, L/tp) the conv1d inputs; reset: (n,) bool. tails: (n, K-1, L/tp) state dtype; h: (n, L/tp) float32.
        conv: holds weight (K, L/tp), bias (L/tp,); rg_lru: `_RGLRU`.

    Returns:
        y: (n, L/tp) in `x.dtype`; new tails (n, K-1, L/tp) in `x.dtype`; new h (n, L/tp) float32.
    """
    fresh = reset[:, None]  # (n, 1)
    tails = torch.where(fresh[..., None], 0, tails).to(x.dtype)
    h = torch.where(fresh, 0, h)
    conv_y, new_tails = causal_conv1d(x[:, None], tails, conv.weight, conv.bias, fresh)
    normalized, a = rg_lru.gated_inputs(conv_y, fresh)
    y, h = rnn_scan_step(normalized, a, h)
    return y[:, 0], new_tails, h


def verify_steps(x, reset, valid, tails, h, conv, rg_lru) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to T tokens per request from one state, with the state after every token: the package's conv1d
    (`causal_conv1d`, `conv_tails_before`) and RG-LRU (`rnn_scan_recording`, one `rnn_scan_step` per token: the
    steps a non-speculative decode takes, so accepted tokens see the same numbers).

    Args:
        x: (n, T, L/tp); reset: (n, T) bool (a document start); valid: (n, T) bool, false past a request's tokens
            (those are computed on a copy of the last token and ignored). tails: (n, K-1, L/tp); h: (n, L/tp) float32.
        conv: holds weight (K, L/tp), bias (L/tp,); rg_lru: `_RGLRU`.

    Returns:
        y: (n, T, L/tp) in `x.dtype`; tails after each token (n, T, K-1, L/tp) in `x.dtype`; h after each token
        (n, T, L/tp) float32.
    """
    reset = reset & valid
    fresh = reset[:, :1]  # (n, 1) a one-token prompt would start here
    tails = torch.where(fresh[..., None], 0, tails).to(x.dtype)
    h = torch.where(fresh, 0, h)
    seq_len = x.shape[1]
    conv_y, last_tail = causal_conv1d(x, tails, conv.weight, conv.bias, reset)
    tails_after = torch.cat([conv_tails_before(x, tails, reset, seq_len)[:, 1:], last_tail[:, None]], dim=1)
    normalized, a = rg_lru.gated_inputs(conv_y, reset)
    y, last_h, h_before = rnn_scan_recording(normalized, a, h, "sequential", seq_len)
    h_after = torch.cat([h_before[:, 1:], last_h[:, None]], dim=1)
    return y, tails_after, h_after


@functools.cache
def compiled_decode_step():
    """`decode_step` under torch.compile, made once per process, rounding where eager rounds (`INDUCTOR_NUMERICS`),
    dynamic in the number of requests: one graph for every decoding batch size (no recompile stalls mid-serving)."""
    return torch.compile(decode_step, dynamic=True, options=INDUCTOR_NUMERICS)


@eager_break_during_capture
def griffin_recurrent(x: torch.Tensor, positions: torch.Tensor, output: torch.Tensor, layer_name: str) -> None:
    """The custom op: layer `layer_name`'s conv1d and RG-LRU over the step's tokens, into `output` (as vLLM's
    `short_conv` op). x, output: (N, L/tp); positions: (N,) long."""
    get_forward_context().no_compile_layers[layer_name].temporal(x, positions, output)


if not hasattr(torch.ops.vllm, "griffin_recurrent"):  # registered once per process
    direct_register_custom_op(op_name="griffin_recurrent", op_func=griffin_recurrent, mutates_args=["output"])


def _first_column(indices: torch.Tensor) -> torch.Tensor:
    """State-slot indices (n,) or (n, 1 + drafts) -> (n,): the slot each request reads and writes."""
    return indices[:, 0] if indices.dim() > 1 else indices

"""`GriffinCache`: all inference state of a Griffin model, in fixed-size buffers.

Per recurrent layer: the RG-LRU state (B, L) in float32 and the conv1d tail (B, K-1, L).
Per attention layer: keys and values of the last W tokens (B, 1, W, Dh) and which of those slots are visible
(B, W) bool (filled, real, and of the current document).
Per sequence: the position of the next token in its document (B,), and the number of tokens seen.

Nothing grows with the sequence. Layers receive their state as a value and return the new one; the cache is the
only place it is kept, so two generations can interleave on one model.
"""

from typing import NamedTuple

import torch

from .compat_griffin import Cache
from .configuration_griffin import ATTENTION, GriffinConfig
from .ops_griffin import RECURRENT_STATE_DTYPE, recurrent_state_shapes


class RecurrentState(NamedTuple):
    """State of one recurrent block."""

    conv: torch.Tensor  # (B, K-1, L) model dtype: the last K-1 conv inputs, zeroed before a document start
    rg_lru: torch.Tensor  # (B, L) float32


class AttentionState(NamedTuple):
    """State of one local-attention block: the last W keys/values, oldest first."""

    keys: torch.Tensor  # (B, 1, W, Dh)
    values: torch.Tensor  # (B, 1, W, Dh)
    valid: torch.Tensor  # (B, W) bool


def empty_recurrent_state(config: GriffinConfig, batch_size: int, dtype, device) -> RecurrentState:
    conv_shape, rg_lru_shape = recurrent_state_shapes(config)
    return RecurrentState(
        conv=torch.zeros(batch_size, *conv_shape, dtype=dtype, device=device),
        rg_lru=torch.zeros(batch_size, *rg_lru_shape, dtype=RECURRENT_STATE_DTYPE, device=device),
    )


def empty_attention_state(config: GriffinConfig, batch_size: int, dtype, device) -> AttentionState:
    shape = (batch_size, 1, config.attention_window_size, config.head_dim)
    return AttentionState(
        keys=torch.zeros(shape, dtype=dtype, device=device),
        values=torch.zeros(shape, dtype=dtype, device=device),
        valid=torch.zeros(batch_size, config.attention_window_size, dtype=torch.bool, device=device),
    )


class GriffinCacheLayer:
    """The state of one residual block; `state` is None until the first forward fills it."""

    is_compileable = True
    is_croppable = False
    supports_early_init = True

    def __init__(self, block_type: str):
        self.block_type = block_type
        self.is_sliding = block_type == ATTENTION
        self.state: RecurrentState | AttentionState | None = None

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def store(self, new_state) -> None:
        """Keeps `new_state`, in place when possible so buffer addresses stay fixed (CUDA graphs). When autograd
        is recording, the old buffers may be saved for backward, so they are replaced instead."""
        old = self.state
        if old is None or torch.is_grad_enabled() or any(o.shape != n.shape for o, n in zip(old, new_state)):
            self.state = new_state
            return
        for o, n in zip(old, new_state):
            o.copy_(n)

    def map_batch(self, fn) -> None:
        if self.state is not None:
            self.state = type(self.state)(*(fn(t) for t in self.state))

    def reset(self) -> None:
        if self.state is not None:
            for t in self.state:
                t.zero_()

    def get_max_length(self) -> int:
        return -1

    def __repr__(self) -> str:
        return f"GriffinCacheLayer({self.block_type})"


class GriffinCache(Cache):
    """Recurrent cache of a Griffin model, usable with `generate()` (greedy, sampling, beam search, continuation,
    chunked prefill, compiled decoding).

    Args:
        config: the model's `GriffinConfig`.
        batch_size, dtype, device: allocate buffers now; otherwise they are allocated by the first forward.

    Example:
        >>> cache = GriffinCache(model.config)
        >>> out = model(input_ids, cache=cache, use_cache=True)  # prefill
        >>> out = model(next_ids, cache=out.cache, use_cache=True)  # one decoding step
    """

    def __init__(self, config: GriffinConfig, batch_size: int | None = None, dtype=None, device=None):
        super().__init__(layers=[GriffinCacheLayer(block_type) for block_type in config.block_types])
        self.config = config
        # Tokens seen, as a 0-d tensor updated in place: a compiled decode step then reads no Python number that
        # changes every step (which would make torch.compile specialise on it and compile again).
        self._seen_tokens: torch.Tensor | None = None
        self.next_position: torch.Tensor | None = None  # (B,) long
        if batch_size is not None:
            self.allocate(batch_size, dtype or torch.float32, device)

    def allocate(self, batch_size: int, dtype, device) -> None:
        """Creates empty buffers for every layer (all slots invisible, states zero)."""
        for layer in self.layers:
            make = empty_attention_state if layer.block_type == ATTENTION else empty_recurrent_state
            layer.state = make(self.config, batch_size, dtype, device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._seen_tokens = torch.zeros((), dtype=torch.long, device=device)

    def fits(self, config: GriffinConfig) -> bool:
        """Whether this cache's buffers have the shapes a model with `config` needs."""
        fields = ("block_types", "lru_width", "conv1d_width", "attention_window_size", "head_dim")
        return all(getattr(self.config, f) == getattr(config, f) for f in fields)

    def early_initialization(self, batch_size: int, num_heads=None, head_dim=None, dtype=None, device=None, **_):
        self.allocate(batch_size, dtype, device)

    def layer_state(self, layer_idx: int):
        return self.layers[layer_idx].state

    def update_state(self, layer_idx: int, new_state) -> None:
        self.layers[layer_idx].store(new_state)

    def advance(self, last_positions: torch.Tensor, num_tokens: int) -> None:
        """Records that `num_tokens` more tokens were seen, the last of each row at `last_positions` (B,)."""
        self._seen_tokens.add_(num_tokens)
        next_position = last_positions.to(torch.long) + 1
        if self.next_position is None or torch.is_grad_enabled() or self.next_position.shape != next_position.shape:
            self.next_position = next_position
        else:
            self.next_position.copy_(next_position)

    @property
    def seen_tokens(self) -> int:
        """Tokens processed so far, padding included (reads the counter back from its device)."""
        return 0 if self._seen_tokens is None else int(self._seen_tokens)

    @property
    def has_previous_state(self) -> bool:  # noqa: D401 - matches the Transformers attribute's meaning
        return self.seen_tokens > 0

    # --- Transformers Cache API -----------------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (padding included), as `generate()` expects; not the buffer size."""
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.config.attention_window_size + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row `i` takes the state of row `beam_idx[i]`."""
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices])

    def _map_batch(self, fn) -> None:
        for layer in self.layers:
            layer.map_batch(fn)
        if self.next_position is not None:
            self.next_position = fn(self.next_position)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        if self.next_position is not None:
            self.next_position.zero_()
        if self._seen_tokens is not None:
            self._seen_tokens.zero_()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "GriffinCache cannot be cropped: the RG-LRU state of removed tokens cannot be undone"
        )

    @property
    def batch_size(self) -> int:
        return -1 if self.next_position is None else self.next_position.shape[0]

    @property
    def is_compileable(self) -> bool:
        return True

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return all(layer.is_initialized for layer in self.layers)

    @property
    def is_linear(self) -> list[bool]:
        return [layer.block_type != ATTENTION for layer in self.layers]

    @property
    def is_sliding(self) -> list[bool]:
        return [layer.is_sliding for layer in self.layers]

    @property
    def is_dummy(self) -> list[bool]:
        return [False for _ in self.layers]

    def nbytes(self) -> int:
        """Bytes held by all state buffers (constant in sequence length)."""
        total = 0 if self.next_position is None else self.next_position.nbytes
        for layer in self.layers:
            if layer.state is not None:
                total += sum(t.nbytes for t in layer.state)
        return total

    def __repr__(self) -> str:
        return f"GriffinCache(layers={len(self.layers)}, seen_tokens={self.seen_tokens}, batch_size={self.batch_size})"


__all__ = ["GriffinCache", "RecurrentState", "AttentionState"]

"""`GriffinCache`: all inference state of a Griffin model, in fixed-size buffers, and its rollback history.

Per recurrent layer: the RG-LRU state (B, L) in float32 and the conv1d tail (B, K-1, L).
Per attention layer: keys and values of the last W tokens (B, 1, W, Dh) and which of those slots are visible
(B, W) bool (filled, real, and of the current document).
Per sequence: the position of the next token in its document (B,), and the number of tokens seen.

Nothing grows with the sequence. Layers receive their state as a value and return the new one; the cache is the
only place it is kept, so two generations can interleave on one model.

Rollback (speculative decoding, docs/speculative.md): after `activate_past_recording()`, every forward also hands
the cache, per layer, what the state was before each of the call's last R tokens (`RecurrentSteps`,
`AttentionSteps`, computed by the layers from the values the forward itself used). The cache keeps them for the
last R tokens across calls in fixed ring buffers, and `crop(-n)` puts back the state from before the last n tokens,
bit for bit. With recording off none of this runs.
"""

from typing import NamedTuple

import torch

from .compat_griffin import Cache
from .configuration_griffin import ATTENTION, RECURRENT, GriffinConfig
from .ops_griffin import RECURRENT_STATE_DTYPE, recurrent_state_shapes

# Tokens `crop` can undo while recording unless the cache is told otherwise: Transformers' assisted decoding undoes
# at most `num_assistant_tokens` (20 by default) per round, prompt lookup `prompt_lookup_num_tokens` (10).
DEFAULT_ROLLBACK_TOKENS = 64
# The config fields that shape the state buffers (`fits`), and with them those that give a saved state's token ids
# and positions their meaning: a saved state must agree on all of them with the model that loads it.
SHAPE_FIELDS = ("block_types", "lru_width", "conv1d_width", "attention_window_size", "head_dim")
ARCHITECTURE_FIELDS = (*SHAPE_FIELDS, "hidden_size", "vocab_size", "num_hidden_layers")


class RecurrentState(NamedTuple):
    """State of one recurrent block."""

    conv: torch.Tensor  # (B, K-1, L) model dtype: the last K-1 conv inputs, zeroed before a document start
    rg_lru: torch.Tensor  # (B, L) float32


class AttentionState(NamedTuple):
    """State of one local-attention block: the last W keys/values, oldest first."""

    keys: torch.Tensor  # (B, 1, W, Dh)
    values: torch.Tensor  # (B, 1, W, Dh)
    valid: torch.Tensor  # (B, W) bool


class RecurrentSteps(NamedTuple):
    """A recurrent block's state before each of the last r tokens of a call (recorded for rollback)."""

    conv: torch.Tensor  # (B, r, K-1, L) model dtype
    rg_lru: torch.Tensor  # (B, r, L) float32


class AttentionSteps(NamedTuple):
    """What undoes each of the last r tokens of a call in an attention block: the slot the token pushed out of the
    window, and the key visibility before it (a document start hides earlier keys for good, so it is kept)."""

    keys: torch.Tensor  # (B, r, Dh)
    values: torch.Tensor  # (B, r, Dh)
    valid: torch.Tensor  # (B, r, W) bool


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
    """The state of one residual block; `state` is None until the first forward fills it. While the cache records,
    `history` holds ring buffers with the per-token steps (`steps_type`) of the last R tokens.

    One subclass per block kind (`CACHE_LAYER_KINDS`) owns what differs between kinds: its empty state, the shapes
    of its history, and how `restore` puts back the state from before a recorded token. `GriffinCache` only loops
    over its layers, so a new block kind is one subclass here and one entry in `CACHE_LAYER_KINDS`."""

    block_type: str
    state_type: type
    steps_type: type
    is_sliding = False
    is_compileable = True
    supports_early_init = True

    def __init__(self, config: GriffinConfig, capacity: int = DEFAULT_ROLLBACK_TOKENS):
        self.config = config
        self.capacity = capacity  # tokens the history's ring buffers hold (the cache's `rollback_tokens`)
        self.state = None
        self.history = None

    @classmethod
    def empty_state(cls, config: GriffinConfig, batch_size: int, dtype, device):
        """A state with nothing seen yet: zeros, every key slot invisible."""
        raise NotImplementedError

    @classmethod
    def history_shapes(cls, config: GriffinConfig, batch_size: int, tokens: int, dtype) -> list:
        """[(shape, dtype)] of the rollback ring buffers for `tokens` tokens (token dimension 1), in the field
        order of `steps_type`."""
        raise NotImplementedError

    def restore(self, first: int, dropped: torch.Tensor) -> None:
        """Puts back the state from before the recorded token in ring slot `first`; `dropped` (n,) are the ring
        slots of the tokens undone, oldest first."""
        raise NotImplementedError

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def is_croppable(self) -> bool:
        """Whether `restore` has something to restore from (a history was recorded)."""
        return self.history is not None

    def record(self, slots: torch.Tensor, steps) -> None:
        """Writes a call's per-token `steps` (token dimension 1) into ring `slots`, allocating the ring buffers
        for `capacity` tokens on first use."""
        if self.history is None:
            batch, capacity = steps[0].shape[0], self.capacity
            shapes = self.history_shapes(self.config, batch, capacity, steps[0].dtype)
            self.history = self.steps_type(*(torch.zeros(s, dtype=d, device=steps[0].device) for s, d in shapes))
        for ring, new in zip(self.history, steps):
            ring.index_copy_(1, slots.to(ring.device), new)

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
        if self.history is not None:
            self.history = type(self.history)(*(fn(t) for t in self.history))

    def reset(self) -> None:
        if self.state is not None:
            for t in self.state:
                t.zero_()

    def get_max_length(self) -> int:
        return -1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RecurrentCacheLayer(GriffinCacheLayer):
    """A recurrent block: the conv1d tail and the float32 RG-LRU state, and per recorded token both as they were
    before it."""

    block_type = RECURRENT
    state_type = RecurrentState
    steps_type = RecurrentSteps

    @classmethod
    def empty_state(cls, config, batch_size, dtype, device) -> RecurrentState:
        return empty_recurrent_state(config, batch_size, dtype, device)

    @classmethod
    def history_shapes(cls, config, batch_size, tokens, dtype) -> list:
        conv_shape, rg_lru_shape = recurrent_state_shapes(config)
        return [((batch_size, tokens, *conv_shape), dtype),
                ((batch_size, tokens, *rg_lru_shape), RECURRENT_STATE_DTYPE)]

    def restore(self, first, dropped) -> None:
        self.store(RecurrentState(self.history.conv[:, first].clone(), self.history.rg_lru[:, first].clone()))


class AttentionCacheLayer(GriffinCacheLayer):
    """A local-attention block: the last W keys and values with their visibility, and per recorded token the slot
    it pushed out of the window and the visibility before it."""

    block_type = ATTENTION
    state_type = AttentionState
    steps_type = AttentionSteps
    is_sliding = True

    @classmethod
    def empty_state(cls, config, batch_size, dtype, device) -> AttentionState:
        return empty_attention_state(config, batch_size, dtype, device)

    @classmethod
    def history_shapes(cls, config, batch_size, tokens, dtype) -> list:
        slot = ((batch_size, tokens, config.head_dim), dtype)
        return [slot, slot, ((batch_size, tokens, config.attention_window_size), torch.bool)]

    def restore(self, first, dropped) -> None:
        # The window before the dropped tokens: the slots they pushed out, oldest first, then the kept keys.
        window = self.config.attention_window_size
        history, state = self.history, self.state
        keys, values = (torch.cat([ring[:, dropped.to(ring.device)][:, None], kept], dim=2)[:, :, :window]
                        for ring, kept in ((history.keys, state.keys), (history.values, state.values)))
        self.store(AttentionState(keys, values, self.history.valid[:, first].clone()))


CACHE_LAYER_KINDS = {kind.block_type: kind for kind in (RecurrentCacheLayer, AttentionCacheLayer)}


class GriffinCache(Cache):
    """Recurrent cache of a Griffin model, usable with `generate()` (greedy, sampling, beam search, continuation,
    chunked prefill, compiled decoding, assisted and prompt-lookup decoding).

    Args:
        config: the model's `GriffinConfig`.
        batch_size, dtype, device: allocate buffers now; otherwise they are allocated by the first forward.
        rollback_tokens: how many of the latest tokens `crop` can undo once recording is on (R).

    Example:
        >>> cache = GriffinCache(model.config)
        >>> out = model(input_ids, cache=cache, use_cache=True)  # prefill
        >>> out = model(next_ids, cache=out.cache, use_cache=True)  # one decoding step
        >>> snapshot = cache.clone()  # an independent copy; cache.state_dict() to save one
    """

    def __init__(self, config: GriffinConfig, batch_size: int | None = None, dtype=None, device=None,
                 rollback_tokens: int = DEFAULT_ROLLBACK_TOKENS):
        super().__init__(layers=[CACHE_LAYER_KINDS[block_type](config) for block_type in config.block_types])
        self.config = config
        # Tokens seen, as a 0-d tensor updated in place: a compiled decode step then reads no Python number that
        # changes every step (which would make torch.compile specialise on it and compile again).
        self._seen_tokens: torch.Tensor | None = None
        self.next_position: torch.Tensor | None = None  # (B,) long
        self._set_rollback_tokens(rollback_tokens)
        self.recording = False
        self._positions_history: torch.Tensor | None = None  # (B, R) long: next_position before each token
        self._recorded = 0  # tokens `crop` can undo now (<= R)
        self._head = 0  # ring slot the next recorded token goes to
        if batch_size is not None:
            self.allocate(batch_size, dtype or torch.float32, device)

    def _set_rollback_tokens(self, tokens) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"rollback_tokens must be a positive int, got {tokens!r}")
        self.rollback_tokens = tokens
        for layer in self.layers:
            layer.capacity = tokens  # the ring buffers' length in tokens

    def allocate(self, batch_size: int, dtype, device) -> None:
        """Creates empty buffers for every layer (all slots invisible, states zero)."""
        for layer in self.layers:
            layer.state = layer.empty_state(self.config, batch_size, dtype, device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._seen_tokens = torch.zeros((), dtype=torch.long, device=device)

    def fits(self, config: GriffinConfig) -> bool:
        """Whether this cache's buffers have the shapes a model with `config` needs."""
        return all(getattr(self.config, f) == getattr(config, f) for f in SHAPE_FIELDS)

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

    @property
    def dtype(self) -> torch.dtype | None:
        """The model dtype the buffers were made for (None before the first forward)."""
        state = next((layer.state for layer in self.layers if layer.state is not None), None)
        return None if state is None else state[0].dtype

    # --- State API: copies, saving and loading ------------------------------------------------------------------
    def clone(self) -> "GriffinCache":
        """An independent copy: the same state in new buffers, the same recording setting and rollback history."""
        copy = GriffinCache(self.config, rollback_tokens=self.rollback_tokens)
        copy._copy_from(self, lambda t: t.clone())
        return copy

    def _copy_from(self, other: "GriffinCache", fn) -> None:
        for mine, theirs in zip(self.layers, other.layers):
            mine.state = None if theirs.state is None else type(theirs.state)(*(fn(t) for t in theirs.state))
            mine.history = None if theirs.history is None else type(theirs.history)(*(fn(t) for t in theirs.history))
        for name in ("next_position", "_seen_tokens", "_positions_history"):
            value = getattr(other, name)
            setattr(self, name, None if value is None else fn(value))
        self.recording, self._recorded, self._head = other.recording, other._recorded, other._head

    def state_dict(self) -> dict:
        """The state, as `{"architecture": {field: value}, "dtype": "bfloat16" | None, "tensors": {name: tensor}}`:
        tensors `next_position` (B,), `seen_tokens` (1,) and `layers.{i}.{field}` (the fields of `RecurrentState`
        / `AttentionState`), the cache's own tensors (not copies; `clone()` first to keep a snapshot). No tensors
        before the first forward. The rollback history is not part of it."""
        tensors = {}
        if self.is_initialized:
            tensors["next_position"] = self.next_position
            tensors["seen_tokens"] = self._seen_tokens.reshape(1)
            for idx, layer in enumerate(self.layers):
                for field, tensor in layer.state._asdict().items():
                    tensors[f"layers.{idx}.{field}"] = tensor
        dtype = self.dtype
        return {"architecture": {f: getattr(self.config, f) for f in ARCHITECTURE_FIELDS},
                "dtype": None if dtype is None else str(dtype).removeprefix("torch."), "tensors": tensors}

    @classmethod
    def from_state_dict(cls, config: GriffinConfig, state: dict, dtype: torch.dtype | None = None, device=None,
                        **kwargs) -> "GriffinCache":
        """A cache holding `state` (from `state_dict()`, possibly written to and read back from a file), after
        checking that it was made by a model of `config`'s architecture (`ARCHITECTURE_FIELDS`) and, when given,
        in `dtype`. Raises ValueError naming the field or tensor that does not fit. `kwargs` go to the
        constructor (`rollback_tokens`)."""
        saved = state.get("architecture") or {}
        as_saved = lambda value: list(value) if isinstance(value, tuple) else value  # noqa: E731 - JSON has lists
        for field in ARCHITECTURE_FIELDS:
            if as_saved(saved.get(field)) != as_saved(getattr(config, field)):
                raise ValueError(f"state was saved by a model with {field}={saved.get(field)}, this model has "
                                 f"{getattr(config, field)}")
        saved_dtype = state.get("dtype")
        if dtype is not None and saved_dtype is not None and saved_dtype != str(dtype).removeprefix("torch."):
            raise ValueError(f"state was saved from a {saved_dtype} model, this one is "
                             f"{str(dtype).removeprefix('torch.')}")
        tensors = state.get("tensors") or {}
        cache = cls(config, **kwargs)
        if not tensors:
            return cache
        if "next_position" not in tensors or "seen_tokens" not in tensors:
            raise ValueError("state lacks the tensor next_position or seen_tokens")
        next_position = tensors["next_position"]
        batch = next_position.shape[0]
        model_dtype = getattr(torch, saved_dtype) if saved_dtype else None
        for idx, layer in enumerate(cache.layers):
            expected = layer.empty_state(config, batch, model_dtype or torch.float32, "meta")
            fields = []
            for field, want in zip(layer.state_type._fields, expected):
                key = f"layers.{idx}.{field}"
                if key not in tensors:
                    raise ValueError(f"state lacks the tensor {key}")
                got = tensors[key]
                if got.shape != want.shape or (model_dtype is not None and got.dtype != want.dtype):
                    raise ValueError(f"state tensor {key} is {got.dtype} {tuple(got.shape)}; this model needs "
                                     f"{want.dtype} {tuple(want.shape)}")
                fields.append(got.to(device) if device is not None else got)
            layer.state = layer.state_type(*fields)
        cache.next_position = next_position.to(device) if device is not None else next_position
        seen = tensors["seen_tokens"].reshape(())
        cache._seen_tokens = seen.to(device) if device is not None else seen
        return cache

    # --- Rollback ------------------------------------------------------------------------------------------------
    def activate_past_recording(self, rollback_tokens: int | None = None) -> None:
        """From the next forward on, keep what `crop` needs to undo any of the last R tokens (R =
        `rollback_tokens`, default the constructor's). Costs ring buffers of `recording_nbytes` bytes and, per
        recording forward, the per-token states of its last R tokens; forwards without recording do none of it."""
        if rollback_tokens is not None:
            self._set_rollback_tokens(rollback_tokens)
            self._free_history()
        self.recording = True
        self._recorded = 0

    def deactivate_past_recording(self) -> None:
        """Stops recording and frees the history."""
        self.recording = False
        self._recorded = 0
        self._free_history()

    def _free_history(self) -> None:
        for layer in self.layers:
            layer.history = None
        self._positions_history = None

    def tokens_to_record(self, num_tokens: int) -> int:
        """How many of a call's `num_tokens` last tokens the layers must return per-token states for."""
        return min(num_tokens, self.rollback_tokens) if self.recording else 0

    def record(self, steps: list, positions: torch.Tensor, next_position: torch.Tensor) -> None:
        """Keeps the per-token states of a segment's last r tokens, as the model hands them over (before
        `update_state` overwrites the old state).

        Args:
            steps: per layer, the `RecurrentSteps` / `AttentionSteps` of the segment's last r tokens (token dimension
                1).
            positions: (B, T) the segment's positions (-1 for padding).
            next_position: (B,) long, the next position before the segment's first token.
        """
        r = steps[0][0].shape[1]
        capacity = self.rollback_tokens
        before = torch.cat([next_position[:, None], positions.to(torch.long) + 1], dim=1)[:, -r - 1 : -1]
        slots = (self._head + torch.arange(r)) % capacity
        for layer, layer_steps in zip(self.layers, steps):
            layer.record(slots, layer_steps)
        if self._positions_history is None:
            self._positions_history = torch.zeros(before.shape[0], capacity, dtype=torch.long, device=before.device)
        self._positions_history.index_copy_(1, slots.to(before.device), before)
        self._head = (self._head + r) % capacity
        self._recorded = min(capacity, self._recorded + r)

    def crop(self, tokens_to_remove: int) -> None:
        """Undoes the last `-tokens_to_remove` tokens (Transformers' convention: a count <= 0), restoring every
        buffer to what the forward computed before them, bit for bit. Needs recording (see
        `activate_past_recording`), and at most the `rollback_tokens` latest tokens can be undone."""
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int) or tokens_to_remove > 0:
            raise ValueError(f"GriffinCache.crop takes the number of tokens to drop as a negative int, got "
                             f"{tokens_to_remove!r}")
        n = -tokens_to_remove
        if n == 0:
            return
        if not self.recording:
            raise ValueError("GriffinCache.crop needs a recording cache: call cache.activate_past_recording() "
                             "before the forward passes it should undo")
        if n > self._recorded:
            raise ValueError(f"GriffinCache.crop({tokens_to_remove}): only the last {self._recorded} tokens are "
                             f"recorded (rollback_tokens={self.rollback_tokens}; pass a larger one to "
                             "GriffinCache(config, rollback_tokens=...) or activate_past_recording)")
        capacity = self.rollback_tokens
        first = (self._head - n) % capacity  # ring slot of the first token dropped
        dropped = (first + torch.arange(n)) % capacity
        for layer in self.layers:
            layer.restore(first, dropped)
        self.next_position.copy_(self._positions_history[:, first])
        self._seen_tokens.sub_(n)
        self._head = first
        self._recorded -= n

    @staticmethod
    def recording_nbytes(config: GriffinConfig, rollback_tokens: int = DEFAULT_ROLLBACK_TOKENS,
                         batch_size: int = 1, dtype=torch.bfloat16) -> int:
        """Bytes of the rollback ring buffers for `rollback_tokens` tokens (from their shapes; nothing allocated)."""
        total = batch_size * rollback_tokens * torch.tensor([], dtype=torch.long).element_size()
        for block_type in config.block_types:
            kind = CACHE_LAYER_KINDS[block_type]
            for shape, dt in kind.history_shapes(config, batch_size, rollback_tokens, dtype):
                total += torch.Size(shape).numel() * torch.tensor([], dtype=dt).element_size()
        return total

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
        if self._positions_history is not None:
            self._positions_history = fn(self._positions_history)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        if self.next_position is not None:
            self.next_position.zero_()
        if self._seen_tokens is not None:
            self._seen_tokens.zero_()
        self._recorded = 0

    @property
    def batch_size(self) -> int:
        return -1 if self.next_position is None else self.next_position.shape[0]

    @property
    def is_compileable(self) -> bool:
        return True

    @property
    def is_croppable(self) -> bool:
        """True while recording (`crop` can then undo up to `rollback_tokens` tokens; before the first recorded
        forward there is nothing to undo, and `crop(0)`, all `generate()` asks then, is allowed)."""
        return self.recording

    @property
    def is_initialized(self) -> bool:
        return all(layer.is_initialized for layer in self.layers)

    @property
    def is_linear(self) -> list[bool]:
        return [layer.block_type == RECURRENT for layer in self.layers]

    @property
    def is_sliding(self) -> list[bool]:
        return [layer.is_sliding for layer in self.layers]

    @property
    def is_dummy(self) -> list[bool]:
        return [False for _ in self.layers]

    def nbytes(self) -> int:
        """Bytes held by all state buffers (constant in sequence length), the rollback history excluded."""
        total = 0 if self.next_position is None else self.next_position.nbytes
        for layer in self.layers:
            if layer.state is not None:
                total += sum(t.nbytes for t in layer.state)
        return total

    def __repr__(self) -> str:
        return f"GriffinCache(layers={len(self.layers)}, seen_tokens={self.seen_tokens}, batch_size={self.batch_size})"


__all__ = ["GriffinCache", "GriffinCacheLayer", "RecurrentCacheLayer", "AttentionCacheLayer", "CACHE_LAYER_KINDS",
           "RecurrentState", "AttentionState", "RecurrentSteps", "AttentionSteps", "DEFAULT_ROLLBACK_TOKENS",
           "SHAPE_FIELDS", "ARCHITECTURE_FIELDS"]

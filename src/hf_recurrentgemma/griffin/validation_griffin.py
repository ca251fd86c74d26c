"""Checks of what callers pass to a Griffin model on every call, before any state is written (what is checked once,
when a checkpoint loads, is in `load_checks_griffin.py`).

Every refusal is a `ValueError` (a `TypeError` for a wrong kind of object) whose one-line message names the
argument, what was expected and what was given. Shape, dtype and device checks read only metadata. Checks of
values (token ids in the vocabulary, a 0/1 mask, positions that continue their document) read the tensors: on CPU
at once (a read-back costs nothing there), elsewhere gathered into one boolean per check and read back together, so
an eager call pays one host sync for all of them.
A compiled step skips the value checks (`torch.compiler.is_compiling()`): it has no host sync to spend and its
inputs come from `generate`, which produces them in range.

This file ships as Hub remote code with the model files; it imports nothing from this package but its siblings.
"""

import torch

from .cache_griffin import GriffinCache


class ValueChecks:
    """Data-dependent checks, read back in one sync: `add(bad, message)` with `bad` a bool tensor (any shape) that
    is True where the input is wrong and `message(bad)` the error for it; `raise_first()` raises for the first."""

    def __init__(self):
        self.checks: list = []

    @staticmethod
    def enabled() -> bool:
        return not torch.compiler.is_compiling()

    def add(self, bad: torch.Tensor, message) -> None:
        if self.enabled():
            self.checks.append((bad, message))

    def add_range(self, values: torch.Tensor, low: int, high: int, message) -> None:
        """Values must lie in [low, high]; cheaper than `add` for the per-step checks (one reduction)."""
        if not self.enabled() or values.numel() == 0:
            return
        smallest, largest = torch.aminmax(values)
        if values.device.type == "cpu":
            if smallest.item() < low or largest.item() > high:
                raise ValueError(message((values < low) | (values > high)))
        else:
            flag = (smallest < low) | (largest > high)
            self.checks.append((flag, lambda _: message((values < low) | (values > high))))

    def raise_first(self) -> None:
        if not self.checks:
            return
        flags = torch.stack([bad.any() for bad, _ in self.checks])
        if not bool(flags.any()):  # the one host sync of a valid call
            return
        for (bad, message), flag in zip(self.checks, flags.tolist()):
            if flag:
                raise ValueError(message(bad))


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (int, float, str)) else type(value).__name__


def check_token_inputs(input_ids, inputs_embeds, hidden_size: int, embed_dtype: torch.dtype) -> tuple[int, int]:
    """Kinds, shapes and dtypes of `input_ids` (B, T) integer or `inputs_embeds` (B, T, D) in the model's dtype.
    Returns (B, T)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or not _is_integer(input_ids):
            raise ValueError(
                f"input_ids must be an integer tensor of shape (batch, sequence), got {_describe(input_ids)}"
            )
        batch, seq_len = input_ids.shape
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3:
            raise ValueError(f"inputs_embeds must be a tensor of shape (batch, sequence, {hidden_size}), "
                             f"got {_describe(inputs_embeds)}")
        if inputs_embeds.shape[-1] != hidden_size:
            raise ValueError(f"inputs_embeds must have width hidden_size={hidden_size}, "
                             f"got shape {tuple(inputs_embeds.shape)}")
        if inputs_embeds.dtype != embed_dtype and not torch.is_autocast_enabled(inputs_embeds.device.type):
            raise ValueError(f"inputs_embeds must have the model's dtype {embed_dtype}, got {inputs_embeds.dtype}")
        batch, seq_len = inputs_embeds.shape[:2]
    if seq_len == 0:
        raise ValueError("the input has no tokens (sequence length 0); pass at least one token per row")
    return batch, seq_len


def check_token_ids(checks: ValueChecks, input_ids, vocab_size: int) -> None:
    """Token ids within [0, vocab_size): an id outside would be an index error deep inside the embedding."""
    if input_ids is None or not checks.enabled():
        return
    def message(bad):
        row, col = _first(bad)
        return (f"input_ids must be token ids in [0, {vocab_size}) (the vocabulary), got {int(input_ids[row, col])} "
                f"at row {row}, position {col}")

    checks.add_range(input_ids, 0, vocab_size - 1, message)


def check_attention_mask(checks: ValueChecks, attention_mask, batch: int, seq_len: int) -> None:
    """A (B, >= T) padding mask of 0/1, bool or integer: a float mask is refused (it is a common sign of an
    additive -inf mask meant for another model, which would silently read as 'every token real')."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        raise ValueError(
            f"attention_mask must be a 2D (batch, sequence) padding mask of 0/1, got {_describe(attention_mask)}"
        )
    if attention_mask.dtype != torch.bool and not _is_integer(attention_mask):
        raise ValueError(f"attention_mask must hold 0/1 as a bool or integer tensor, got dtype {attention_mask.dtype}")
    if attention_mask.shape[0] != batch or attention_mask.shape[1] < seq_len:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, >= {seq_len})")
    if attention_mask.dtype != torch.bool:

        def message(bad):
            row, col = _first(bad)
            value = int(attention_mask[row, col])
            return f"attention_mask must hold only 0 and 1, got {value} at row {row}, column {col}"

        checks.add_range(attention_mask, 0, 1, message)


def check_position_ids_shape(position_ids, batch: int, seq_len: int) -> None:
    if position_ids is None:
        return
    if not isinstance(position_ids, torch.Tensor) or not _is_integer(position_ids):
        raise ValueError(f"position_ids must be an integer tensor of shape ({batch}, {seq_len}), "
                         f"got {_describe(position_ids)}")
    ok = (position_ids.ndim == 1 and position_ids.shape[0] == seq_len) or (
        position_ids.ndim == 2 and position_ids.shape[0] in (1, batch) and position_ids.shape[1] == seq_len)
    if not ok:
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({batch}, {seq_len})")


def check_positions(checks: ValueChecks, positions, real, before_padding, before_next) -> None:
    """Given positions (B, T) of real tokens (`real` (B, T) bool) start a document (0) or continue the one before
    (previous position + 1). `before_padding` (B,) bool: the token just before this call was padding, so the first
    real token must start a document. `before_next` (B,) long or None: the position the cache expects next (from
    the previous call's last real token; 0 means nothing is known), which the first token may continue."""
    batch, seq_len = positions.shape
    negative = real & (positions < 0)
    # Within the call: the token before each one.
    prev_real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    prev_pad = torch.cat([before_padding[:, None], ~real[:, :-1]], dim=1)
    continues = torch.cat([positions[:, :1], positions[:, :-1] + 1], dim=1) == positions
    jump = real & prev_real & (positions != 0) & ~continues
    after_pad = real & prev_pad & (positions != 0)
    if before_next is not None:  # the first token against what the cache holds
        first = real[:, 0] & ~before_padding & (before_next > 0)
        first_bad = first & (positions[:, 0] != 0) & (positions[:, 0] != before_next)
        jump = jump | torch.cat([first_bad[:, None], torch.zeros_like(jump[:, 1:])], dim=1)

    def expected(row, col):
        if col > 0:
            return f"0 or {int(positions[row, col - 1]) + 1}"
        return f"0 or {int(before_next[row])} (where the cache stands)"

    checks.add(negative, lambda bad: "position_ids must be >= 0 for real tokens, got {} at row {}, position {}".format(
        int(positions[_first(bad)]), *_first(bad)))
    checks.add(after_pad, lambda bad: (
        "position_ids contradict attention_mask: the token at row {1}, position {2} follows padding, so it starts a "
        "document at position 0, got {0}".format(int(positions[_first(bad)]), *_first(bad))))
    checks.add(jump, lambda bad: (
        "position_ids must continue a document by 1 or start a new one at 0: at row {1}, position {2} expected {3}, "
        "got {0}".format(int(positions[_first(bad)]), *_first(bad), expected(*_first(bad)))))


def check_cache(cache, config, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """A `GriffinCache` made for this architecture, and, once allocated, for this batch, dtype and device."""
    if cache is None:
        return
    if not isinstance(cache, GriffinCache):
        raise TypeError(f"cache must be a GriffinCache, got {type(cache).__name__}")
    # `fits` reads five config fields (~40 us through PreTrainedConfig's attribute lookup): skip it per decode step
    # for the usual cache, made from this very config object.
    if cache.config is not config and not cache.fits(config):
        raise ValueError(
            "cache was made for another architecture (block_types, widths or attention_window_size differ); "
            "make it with GriffinCache(model.config)"
        )
    if cache.next_position is None:
        return
    if cache.batch_size != batch:
        raise ValueError(f"cache holds {cache.batch_size} sequences but the inputs have batch size {batch}")
    state = next(layer.state for layer in cache.layers if layer.state is not None)
    if state[0].dtype != dtype:
        raise ValueError(f"cache holds {state[0].dtype} states but the model computes in {dtype}; make a new "
                         "GriffinCache for this model")
    if state[0].device != device:
        raise ValueError(f"cache is on {state[0].device} but the inputs are on {device}")


def check_lm_arguments(labels, logits_to_keep, batch: int, seq_len: int, vocab_size: int) -> None:
    """`labels` (B, T) integer ids in [0, vocab_size) or -100; `logits_to_keep` an int in [0, T] (0 keeps all)
    or a 1D integer tensor of positions in [-T, T)."""
    checks = ValueChecks()
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or not _is_integer(labels):
            raise ValueError(f"labels must be an integer tensor of shape ({batch}, {seq_len}), got {_describe(labels)}")
        if tuple(labels.shape) != (batch, seq_len):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({batch}, {seq_len}), one per token")
        if checks.enabled():
            bad = ((labels < 0) & (labels != -100)) | (labels >= vocab_size)
            checks.add(bad, lambda bad: "labels must be token ids in [0, {}) or -100 (ignored), got {} at row {}, "
                       "position {}".format(vocab_size, int(labels[_first(bad)]), *_first(bad)))
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, torch.Tensor)):
        raise ValueError(f"logits_to_keep must be an int or a tensor of positions, got {_describe(logits_to_keep)}")
    if isinstance(logits_to_keep, int):
        if not 0 <= logits_to_keep <= seq_len:
            raise ValueError(f"logits_to_keep must be in [0, {seq_len}] (0 keeps all), got {logits_to_keep}")
    else:
        if logits_to_keep.ndim != 1 or not _is_integer(logits_to_keep):
            raise ValueError(
                f"logits_to_keep must be a 1D integer tensor of positions, got {_describe(logits_to_keep)}"
            )
        if checks.enabled():
            bad = (logits_to_keep < -seq_len) | (logits_to_keep >= seq_len)
            checks.add(bad, lambda bad: f"logits_to_keep positions must be in [{-seq_len}, {seq_len}), got "
                       f"{int(logits_to_keep[_first(bad)])}")
    checks.raise_first()


__all__ = ["ValueChecks", "check_token_inputs", "check_token_ids", "check_attention_mask", "check_position_ids_shape",
           "check_positions", "check_cache", "check_lm_arguments"]

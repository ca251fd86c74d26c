"""Griffin / Hawk / RecurrentGemma as a Transformers model (arXiv 2402.19427, 2404.07839).

`GriffinModel` embeds tokens, runs residual blocks (temporal block: RG-LRU recurrence or local attention, then a
gated MLP) and a final norm; `GriffinForCausalLM` adds the tied LM head and the logit soft cap. All inference state
lives in a `GriffinCache`, so `generate()` works in every mode, memory stays flat and generations can interleave.

Document semantics (those of the reference): a position id of 0 starts a document; the RG-LRU resets there, the
conv1d does not look back across it and attention does not cross it. Padding (attention_mask 0) is visible to
no token. Without position ids, each row's first real token (per the attention mask) starts a document.
"""

import math
import os

import torch
from torch import nn

from .cache_griffin import GriffinCache
from .compat_griffin import (  # Transformers internals, checked against the installed version in one place
    CACHE_NAME,
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    GenerationMixin,
    GradientCheckpointingLayer,
    PreTrainedModel,
    can_return_tuple,
    cap_draft_length,
    compile_on_all_devices,
    init,
    move_generation_cache,
    take_cache,
)
from .configuration_griffin import ATTENTION, GriffinConfig
from .cpu_matvec_griffin import MAX_ROWS
from .layers_griffin import (
    BlockDiagonalLinear,
    GriffinConv1d,
    GriffinLinear,
    GriffinLocalAttention,
    GriffinMLP,
    GriffinRecurrentBlock,
    GriffinRGLRU,
    GriffinRMSNorm,
    SequenceInfo,
)
from .ops_griffin import scale_embeddings, soft_cap_logits
from .load_checks_griffin import check_loaded_weights, check_stored_dtypes
from .validation_griffin import (
    ValueChecks,
    check_attention_mask,
    check_cache,
    check_lm_arguments,
    check_position_ids_shape,
    check_positions,
    check_token_ids,
    check_token_inputs,
)


# Inference prompts longer than this run through the layers in segments of this many tokens.
PREFILL_SEGMENT = 2048
# The most tokens a draft may propose per round of assisted decoding (Transformers' default is 20): the target
# verifies them with the last accepted token in one forward of MAX_DRAFT_TOKENS + 1 <= MAX_ROWS tokens, the sizes at
# which that forward equals as many one-token steps bit for bit on CPU, so greedy speculation gives plain greedy's
# tokens in every dtype (docs/speculative.md). Longer drafts are rarely accepted whole anyway.
MAX_DRAFT_TOKENS = MAX_ROWS - 1


class GriffinDecoderLayer(GradientCheckpointingLayer):
    """Residual block: `x + temporal(norm(x))`, then `+ mlp(norm(.))`."""

    def __init__(self, config: GriffinConfig, layer_idx: int):
        super().__init__()
        self.block_type = config.block_types[layer_idx]
        self.temporal_pre_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.block_type == ATTENTION:
            self.temporal_block = GriffinLocalAttention(config, layer_idx)
        else:
            self.temporal_block = GriffinRecurrentBlock(config)
        self.channel_pre_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GriffinMLP(config)

    def forward(self, x: torch.Tensor, seq: SequenceInfo, state):
        """x: (B, T, D) -> (B, T, D), the temporal block's new state, its recorded steps (None unless recording)."""
        y, new_state, steps = self.temporal_block(self.temporal_pre_norm(x), seq, state)
        residual = y + x
        return self.mlp(self.channel_pre_norm(residual)) + residual, new_state, steps


class GriffinPreTrainedModel(PreTrainedModel):
    config_class = GriffinConfig
    config: GriffinConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GriffinDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = True
    # Not `_is_stateful`: that makes `generate` refuse assisted decoding, which a recording GriffinCache can undo
    # exactly (cache_griffin.py, docs/speculative.md).

    # Loaders of checkpoints in other formats, `loader(cls, path, *args, **kwargs) -> model or None`, tried in order
    # by from_pretrained. The installed package registers one for Transformers' built-in recurrent_gemma folders
    # (hf_recurrentgemma/convert/builtin.py); in Hub remote code the list stays empty.
    checkpoint_loaders: list = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True,
                        nonfinite: str = "error", **kwargs):
        """Transformers' `from_pretrained`, refusing a checkpoint with missing, unexpected or mis-shaped tensors
        (`strict=False`: warn and initialise, as Transformers does) or with NaN/Inf values (`nonfinite="warn"`:
        warn naming the tensor). Configs are validated before anything is allocated."""
        for loader in GriffinPreTrainedModel.checkpoint_loaders:
            model = loader(cls, pretrained_model_name_or_path, *model_args, **kwargs)
            if model is not None:
                return model
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder):
            check_stored_dtypes(folder)
        want_info = kwargs.pop("output_loading_info", False)
        # Mis-shaped tensors come back in the loading info, so the error can name them (Transformers' own says
        # only "look at the above report").
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **kwargs)
        if ignore_mismatched:
            info = {**info, "mismatched_keys": set()}
        check_loaded_weights(model, info, pretrained_model_name_or_path, strict=strict, nonfinite=nonfinite)
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        # The reference's initialisation. Transformers visits modules that hold parameters directly, so each one
        # initialises itself; Linear and Embedding layers carry the std their owner chose (`init_std`).
        if isinstance(module, (GriffinRMSNorm, BlockDiagonalLinear, GriffinRGLRU, GriffinConv1d)):
            module.reset_parameters(self.config)
        elif isinstance(module, (nn.Linear, nn.Embedding)) and hasattr(module, "init_std"):
            init.normal_(module.weight, std=module.init_std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class GriffinModel(GriffinPreTrainedModel):
    """The Griffin trunk: embeddings, residual blocks, final norm. Returns hidden states (B, T, D)."""

    def __init__(self, config: GriffinConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.embed_tokens.init_std = math.sqrt(1.0 / config.hidden_size)
        self.layers = nn.ModuleList(GriffinDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: GriffinCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """
        Args:
            input_ids: (B, T) token ids, or `inputs_embeds` (B, T, D) instead.
            attention_mask: (B, T_total) padding mask, 1 for real tokens; its last T columns belong to this call
                (generate passes the whole history).
            position_ids: (B, T) positions within each document; 0 starts a document. Derived when omitted.
            cache: a `GriffinCache` to continue from and update (created when `use_cache` and none is given).

        Every argument is checked before any state is written (validation_griffin.py): a refused call leaves the
        cache as it was.
        """
        batch, seq_len = check_token_inputs(input_ids, inputs_embeds, self.config.hidden_size,
                                            self.embed_tokens.weight.dtype)
        cache = take_cache(cache, kwargs)  # `past_key_values=` where this Transformers' generate() passes that
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions=True is not supported: Griffin's local attention returns no weights")
        device = (input_ids if input_ids is not None else inputs_embeds).device
        dtype = inputs_embeds.dtype if inputs_embeds is not None else self.embed_tokens.weight.dtype
        check_cache(cache, self.config, batch, dtype, device)
        checks = ValueChecks()
        check_attention_mask(checks, attention_mask, batch, seq_len)
        check_position_ids_shape(position_ids, batch, seq_len)
        check_token_ids(checks, input_ids, self.embed_tokens.num_embeddings)
        seq = self._sequence_info(batch, seq_len, attention_mask, position_ids, cache, device, checks)
        checks.raise_first()

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False
        if use_cache and cache is None:
            cache = GriffinCache(self.config)
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if cache is not None and not cache.is_initialized:
            cache.allocate(batch, inputs_embeds.dtype, inputs_embeds.device)

        # The reference multiplies by sqrt(D) rounded to bfloat16, as in training.
        x = scale_embeddings(inputs_embeds, self.config)
        all_hidden = [] if output_hidden_states else None
        states = [cache.layer_state(idx) if cache is not None else None for idx in range(len(self.layers))]
        # Without autograd, a long prompt goes through the whole stack in segments, the state carried from one to
        # the next exactly as a cache carries it: each segment's activations stay in the CPU's caches, so the cost
        # per token does not grow with the prompt (docs/performance.md). One segment otherwise.
        whole = torch.is_grad_enabled() or all_hidden is not None or seq_len <= PREFILL_SEGMENT
        segment = seq_len if whole else PREFILL_SEGMENT
        # A recording cache (rollback, docs/speculative.md) keeps the state before each of the last `record` tokens.
        record = cache.tokens_to_record(seq_len) if cache is not None else 0
        outputs = []
        # One segment without `range`: an exported program keeps the prompt length symbolic (docs/export.md).
        for start in (0,) if whole else range(0, seq_len, segment):
            part = slice(start, start + segment)
            end = min(start + segment, seq_len)
            h, seq_part = x[:, part], seq.segment(part, max(0, min(end - start, end - (seq_len - record))))
            steps = []
            for idx, layer in enumerate(self.layers):
                if all_hidden is not None:
                    all_hidden.append(h)
                h, states[idx], layer_steps = layer(h, seq_part, states[idx])
                steps.append(layer_steps)
            if seq_part.record:  # this segment's share of the last `record` tokens goes to the cache as it comes
                before = cache.next_position if start == 0 else seq.positions[:, start - 1].to(torch.long) + 1
                cache.record(steps, seq_part.positions, before)
            outputs.append(self.final_norm(h))
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        if all_hidden is not None:
            all_hidden.append(x)
        if cache is not None:
            for idx, state in enumerate(states):
                cache.update_state(idx, state)
            cache.advance(seq.positions[:, -1], seq_len)
        return BaseModelOutputWithPast(
            last_hidden_state=x, cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )

    @staticmethod
    def _sequence_info(batch, seq_len, attention_mask, position_ids, cache, device, checks=None) -> SequenceInfo:
        """Positions, document starts and padding of the T tokens of this call. Given `position_ids` are checked
        against the mask and the cache through `checks` (a `ValueChecks`), when there is one."""
        # What the cache knows, read from tensors only (no host sync, nothing for a compiled step to specialise on):
        # the next position of each row, and whether a real token came before this call.
        allocated = cache is not None and cache.next_position is not None
        mask = None
        if attention_mask is not None:
            full = attention_mask.to(device=device, dtype=torch.bool)
            mask = full[:, -seq_len:]
            if full.shape[1] > seq_len:
                before = full[:, -seq_len - 1]
            elif allocated:
                before = cache.next_position > 0
            else:
                before = torch.zeros(batch, dtype=torch.bool, device=device)
            after_padding = mask & ~torch.cat([before[:, None], mask[:, :-1]], dim=1)

        start = cache.next_position if allocated else torch.zeros(batch, dtype=torch.long, device=device)
        if position_ids is None:
            if mask is not None:
                positions = start[:, None] + mask.long().cumsum(1) - 1
                positions = positions.masked_fill(~mask, -1)
            else:
                positions = start[:, None] + torch.arange(seq_len, device=device)
        else:
            positions = position_ids.to(device=device, dtype=torch.long).expand(batch, seq_len)
            if checks is not None and checks.enabled():
                real = mask if mask is not None else torch.ones(batch, seq_len, dtype=torch.bool, device=device)
                before_padding = (~before if mask is not None and full.shape[1] > seq_len
                                  else torch.zeros(batch, dtype=torch.bool, device=device))
                check_positions(checks, positions, real, before_padding, cache.next_position if allocated else None)
        reset = positions == 0
        if mask is not None:
            reset = reset | after_padding  # the first real token after padding starts a document
        key_valid = mask if mask is not None else torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        return SequenceInfo(positions=positions, reset=reset, key_valid=key_valid)


class GriffinForCausalLM(GriffinPreTrainedModel, GenerationMixin):
    """Griffin with the (tied) LM head and the logit soft cap `c * tanh(logits / c)`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Tensor parallelism: the head is sharded over the vocabulary like the tied embedding, logits gathered.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: GriffinConfig):
        super().__init__(config)
        self.model = GriffinModel(config)
        self.lm_head = GriffinLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: GriffinCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Same arguments as `GriffinModel.forward`, plus `labels` (B, T) for the shifted LM loss (-100 ignored)
        and `logits_to_keep` (keep the last N positions' logits, or those indexed by a tensor)."""
        kwargs.pop("return_dict", None)
        batch, seq_len = check_token_inputs(input_ids, inputs_embeds, self.config.hidden_size,
                                            self.model.embed_tokens.weight.dtype)
        check_lm_arguments(labels, logits_to_keep, batch, seq_len, self.lm_head.out_features)
        if (isinstance(cache, GriffinCache) and cache.recording and labels is None and not output_hidden_states
                and isinstance(logits_to_keep, int) and 1 < logits_to_keep < seq_len):
            return self._prompt_then_draft(logits_to_keep - 1, input_ids, attention_mask, position_ids, cache,
                                           inputs_embeds, use_cache, **kwargs)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.compute_logits(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states)

    def _prompt_then_draft(self, drafted: int, input_ids, attention_mask, position_ids, cache, inputs_embeds,
                           use_cache, **kwargs) -> CausalLMOutputWithPast:
        """The first verification of assisted decoding: a recording forward over the prompt followed by `drafted`
        draft tokens, asking for the logits of the prompt's last token and the draft's (Transformers passes
        `logits_to_keep = drafted + 1` and runs no prefill of its own). It runs as plain greedy runs the same
        tokens: the prompt's prefill, then the draft as one few-token call, which equals that many one-token
        steps bit for bit (docs/speculative.md). One forward over all of them would round the prompt's states
        differently (other matrix-product shapes), and greedy speculation could then drift from plain greedy."""

        def cut(tensor, part):
            return None if tensor is None else tensor[:, part]

        prompt, draft = slice(None, -drafted), slice(-drafted, None)
        common = dict(cache=cache, use_cache=use_cache, **kwargs)
        # `forward`, not `self(...)`: hooks on this module see one call, as generate() made it.
        first = self.forward(input_ids=cut(input_ids, prompt), position_ids=cut(position_ids, prompt),
                             inputs_embeds=cut(inputs_embeds, prompt), logits_to_keep=1,
                             attention_mask=None if attention_mask is None else attention_mask[:, :-drafted],
                             **common)
        second = self.forward(input_ids=cut(input_ids, draft), position_ids=cut(position_ids, draft),
                              inputs_embeds=cut(inputs_embeds, draft), logits_to_keep=drafted,
                              attention_mask=attention_mask, **common)
        return CausalLMOutputWithPast(logits=torch.cat([first.logits, second.logits], dim=1), cache=second.cache)

    # --- generate() integration -----------------------------------------------------------------------------
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head then the reference's logit soft cap: hidden (..., D) -> logits (..., V) in the model dtype.
        The one place logits are made: `forward`, the perplexity command and the engine integrations call it."""
        return soft_cap_logits(self.lm_head(hidden), self.config.logits_soft_cap)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):
        """Every generation uses a `GriffinCache`: it is fixed-size already, so `cache_implementation` "static"
        (compiled decoding) and "dynamic" both get one."""
        user_cache = move_generation_cache(model_kwargs)
        if user_cache is not None:
            if not isinstance(user_cache, GriffinCache):
                raise TypeError(f"cache must be a GriffinCache, got {type(user_cache).__name__}")
            if generation_config.cache_implementation is not None:
                raise ValueError("pass either `cache` or `cache_implementation`, not both")
            user_cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic", "static"):
            raise ValueError(
                f"cache_implementation={implementation!r} is not supported by Griffin; use 'static' or 'dynamic' "
                "(both give the fixed-size GriffinCache)"
            )
        model_kwargs[CACHE_NAME] = GriffinCache(self.config)
        if generation_config.is_assistant:  # a draft model's cache is cut back after every verification
            model_kwargs[CACHE_NAME].activate_past_recording()

    def _get_candidate_generator(self, generation_config, *args, **kwargs):
        """Transformers' candidate generator for assisted decoding (a draft model, prompt lookup, ...), capped at
        MAX_DRAFT_TOKENS tokens a round (see there for why)."""
        generator = super()._get_candidate_generator(generation_config, *args, **kwargs)
        return cap_draft_length(generator, MAX_DRAFT_TOKENS)

    def _valid_auto_compile_criteria(self, model_kwargs, generation_config) -> bool:
        """Compile the decode step when asked: `cache_implementation="static"` (as for Transformers' static caches;
        a GriffinCache is fixed-size either way, so it is not taken as a request by itself) or a `compile_config`,
        which on CPU also counts as a request (Transformers alone compiles only on accelerators)."""
        if generation_config.cache_implementation != "static" and generation_config.compile_config is None:
            return False
        cache = model_kwargs.get(CACHE_NAME)
        if isinstance(cache, GriffinCache) and cache.recording:
            return False  # assisted decoding: verification forwards change length every round, not worth compiling
        config = generation_config.compile_config
        if config is not None and self.device.type == "cpu":
            generation_config.compile_config = compile_on_all_devices(config)
        return super()._valid_auto_compile_criteria(model_kwargs, generation_config)

    def _prepare_attention_mask_for_generation(self, inputs_tensor, generation_config, model_kwargs):
        """As a draft model (assisted decoding), no mask means no padding: the target dropped its all-ones mask,
        and Transformers would otherwise take every generated pad token id for padding, which for Griffin starts a
        new document in the middle of the draft's input."""
        if generation_config.is_assistant:
            inputs = model_kwargs.get("input_ids", inputs_tensor)
            return torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        return super()._prepare_attention_mask_for_generation(inputs_tensor, generation_config, model_kwargs)

    def create_masks_for_generate(self, config=None, inputs_embeds=None, attention_mask=None, **kwargs):
        """Griffin builds its local masks itself from the 2D padding mask, so `generate` passes that on."""
        return attention_mask

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, attention_mask=None, **kwargs):
        # The cache travels in kwargs under the name this Transformers' generate() gives it (CACHE_NAME).
        # Continuing from a filled cache, `generate` passes the whole sequence (and a mask as long, or none) but
        # does not always say how much is new: not in assisted decoding's first verification, nor in the prefill of
        # a cache whose layers are all recurrent (Hawk). Feed only the tokens the cache has not seen.
        cache = kwargs.get(CACHE_NAME)
        if next_sequence_length is None and isinstance(cache, GriffinCache) and input_ids is not None:
            seen = cache.seen_tokens
            mask_length = attention_mask.shape[1] if isinstance(attention_mask, torch.Tensor) else input_ids.shape[1]
            if 0 < seen < input_ids.shape[1] == mask_length:
                next_sequence_length = input_ids.shape[1] - seen
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, attention_mask=attention_mask, **kwargs,
        )
        # Only the mask of this call's tokens and the one before them is read: a fixed shape while decoding.
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            num_tokens = inputs["input_ids"].shape[1] if inputs.get("input_ids") is not None else inputs["inputs_embeds"].shape[1]
            inputs["attention_mask"] = mask[:, -(num_tokens + 1):]
        return inputs


__all__ = ["GriffinModel", "GriffinForCausalLM", "GriffinPreTrainedModel"]

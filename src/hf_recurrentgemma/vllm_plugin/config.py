"""What the plugin decides about vLLM's configuration: our `GriffinConfig` for either folder format, the KV block
size, and when prefix caching must stay off."""

import logging

from ..griffin.configuration_griffin import GriffinConfig

logger = logging.getLogger(__name__)

# Prefix caching follows vLLM's default (on for hybrid models, in its "align" mode: the recurrent state is kept at
# every block boundary a prefill chunk ends on, and a request that hits the cache starts from the state of its last
# cached block). With speculative decoding vLLM 0.32 carries those states through fused Triton kernels that its CPU
# build has no CPU version of, so the engine dies at the first step; the plugin says so and switches it off.
SPECULATIVE_PREFIX_CACHING_OFF_REASON = (
    "prefix caching is switched off for Griffin while speculative decoding is on: vLLM 0.32 moves recurrent states "
    "between cached blocks under speculation with Triton kernels its CPU build cannot run "
    "(vllm/v1/worker/mamba_utils.py:549 precopy_mamba_align_fused_kernel, launched at :1226, and :1177 "
    "postprocess_mamba_fused_kernel; vllm/platforms/cpu.py:717 gives a CPU version of batch_memcpy_kernel only)"
)

# A draft model with state layers (the shipped Griffin draft, any Griffin or Hawk) cannot serve as vLLM's drafter:
# vLLM 0.32's proposer builds the draft's state-layer metadata without the prefill flags state layers need (the
# engine dies in its first drafting step, vllm/v1/attention/backends/mamba_attn.py:418 `assert is_prefilling is not
# None`, reached from vllm/v1/spec_decode/llm_base_proposer.py:994), and it keeps no per-draft state slots for the
# draft, whose state could not be rolled back after a rejection (vLLM's own code says "draft models have no mamba
# layers": vllm/v1/core/kv_cache_coordinator.py:863).
STATE_DRAFT_REFUSAL = (
    "a draft model with recurrent (state) layers ({draft}) cannot draft for Griffin in vLLM 0.32: vLLM's drafter "
    "runs a draft's state layers without the metadata they need (vllm/v1/attention/backends/mamba_attn.py:418 from "
    "vllm/v1/spec_decode/llm_base_proposer.py:994) and keeps no per-draft state for the draft to roll back "
    "(vllm/v1/core/kv_cache_coordinator.py:863: 'draft models have no mamba layers'). Use n-gram speculation "
    "(speculative_config={{'method': 'ngram', ...}}) or an attention-only draft"
)


def refuse_state_draft(speculative_config) -> None:
    """Raises `ValueError` (`STATE_DRAFT_REFUSAL`) when speculation drafts with a model that has state layers."""
    draft = getattr(speculative_config, "draft_model_config", None)
    if speculative_config is None or draft is None or speculative_config.method == "ngram":
        return
    if draft.is_hybrid or draft.is_attention_free:
        raise ValueError(STATE_DRAFT_REFUSAL.format(draft=draft.model))


# The KV block size the plugin chooses when the user gives none (vLLM's CPU default is 128 tokens). vLLM pads each
# state page up to one attention page and frees a sliding window's blocks whole, so a small block holds the state
# and the window with less waste: 3.0x the equal-size Transformer's logged concurrency at 4k tokens instead of
# 2.75x, and with RECOMMENDED_CHUNK 26x instead of 16.5x (docs/serving.md, "Concurrency").
GRIFFIN_BLOCK_SIZE = 32
# vLLM charges each request W - 1 + max_num_batched_tokens tokens in a sliding-window layer (max_in_flight_tokens):
# the chunk size, not the window, sets Griffin's concurrency. vLLM gives a model no way to default it (the engine
# arguments fill it in before any model hook runs), so the plugin recommends it in the log.
RECOMMENDED_CHUNK = 256


def griffin_config(hf_config) -> GriffinConfig:
    """Our config for the config vLLM read: a `GriffinConfig` as is, a built-in `recurrent_gemma` config translated
    with the reference's meaning of every field (hf_recurrentgemma/convert/builtin.py: window W means itself plus W
    previous tokens, soft cap and bfloat16-rounded embedding scale as the reference)."""
    if isinstance(hf_config, GriffinConfig):
        return hf_config
    if getattr(hf_config, "model_type", None) == "recurrent_gemma":
        from ..convert.builtin import config_from_builtin

        return config_from_builtin(hf_config.to_dict(), where=f"{type(hf_config).__name__}")
    raise ValueError(f"the Griffin plugin serves model_type 'griffin' or 'recurrent_gemma', got "
                     f"{getattr(hf_config, 'model_type', None)!r}")


def _make_hook():
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    class GriffinVllmConfig(VerifyAndUpdateConfig):
        """Runs while vLLM builds its config, before the hybrid-model defaults (which then pick the state cache's
        mode) and the platform's defaults (which keep ours): a draft model with state layers refused, prefix
        caching off under speculation (said once), inductor rounding where eager rounds
        (`layers.INDUCTOR_NUMERICS`), `GRIFFIN_BLOCK_SIZE` unless the user chose a block size, a hint when the
        chunk size is above `RECOMMENDED_CHUNK`."""

        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            from .layers import INDUCTOR_NUMERICS

            vllm_config.compilation_config.inductor_compile_config.update(INDUCTOR_NUMERICS)
            cache_config = vllm_config.cache_config
            if not cache_config.user_specified_block_size:
                cache_config.block_size = GRIFFIN_BLOCK_SIZE
                cache_config.user_specified_block_size = True  # else the platform puts its own default in
            chunk = vllm_config.scheduler_config.max_num_batched_tokens
            if chunk > RECOMMENDED_CHUNK:
                logger.warning("Griffin: vLLM charges each request W - 1 + max_num_batched_tokens (%d) tokens of KV "
                            "cache per attention layer; --max-num-batched-tokens %d admits several times more "
                            "concurrent requests (docs/serving.md)", chunk, RECOMMENDED_CHUNK)
            refuse_state_draft(vllm_config.speculative_config)
            if cache_config.enable_prefix_caching and vllm_config.num_speculative_tokens:
                logger.warning(SPECULATIVE_PREFIX_CACHING_OFF_REASON)
                cache_config.enable_prefix_caching = False

    return GriffinVllmConfig


def register_config_hooks(architectures) -> None:
    """Adds the hook to vLLM's per-architecture table (`MODELS_CONFIG_MAP`, the one place vLLM asks a model for
    its config defaults; not a public API, checked by tests/serving/test_vllm.py on every run)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    hook = None
    for arch in architectures:
        if arch not in MODELS_CONFIG_MAP:
            hook = hook or _make_hook()
            MODELS_CONFIG_MAP[arch] = hook

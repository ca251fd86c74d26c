"""What the plugin decides about vLLM's configuration: our `GriffinConfig` for either folder format, and the
switch that keeps prefix caching off for Griffin."""

import logging

from ..griffin.configuration_griffin import GriffinConfig

logger = logging.getLogger(__name__)

PREFIX_CACHING_OFF_REASON = (
    "prefix caching is switched off for Griffin: a cached prefix would need the RG-LRU and conv1d state at the "
    "block boundary ('align' mode), which this plugin does not save yet; every prompt is computed in full"
)


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
        """Runs while vLLM builds its config, before the hybrid-model defaults (which then pick the plain state
        cache) and the platform's compilation defaults (which keep ours): prefix caching off, said once; inductor
        rounding where eager rounds (`layers.INDUCTOR_NUMERICS`)."""

        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            from .layers import INDUCTOR_NUMERICS

            vllm_config.compilation_config.inductor_compile_config.update(INDUCTOR_NUMERICS)
            cache_config = vllm_config.cache_config
            if cache_config.enable_prefix_caching:
                logger.warning(PREFIX_CACHING_OFF_REASON)
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

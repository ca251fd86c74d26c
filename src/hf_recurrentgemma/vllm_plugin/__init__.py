"""Griffin / RecurrentGemma in vLLM, as a plugin (docs/serving.md).

vLLM calls `register()` through the `vllm.general_plugins` entry point in every process it starts (engine, workers,
the registry's inspection subprocess), so registration is idempotent. The model files shipped as Hub remote code
never import this subpackage.
"""

import logging

logger = logging.getLogger(__name__)

# Architecture names in config.json -> the vLLM model class serving them.
ARCHITECTURES = {
    "GriffinForCausalLM": "hf_recurrentgemma.vllm_plugin.model:GriffinForCausalLM",  # our converted folders
    "RecurrentGemmaForCausalLM": "hf_recurrentgemma.vllm_plugin.model:RecurrentGemmaForCausalLM",  # the Hub's
}


def register() -> None:
    """Registers the `griffin` config with AutoConfig (importing the package does it), the two architectures with
    vLLM's ModelRegistry, and the per-architecture config hook (block size; prefix caching off under speculative
    decoding)."""
    import hf_recurrentgemma  # noqa: F401  (registers model_type "griffin" with AutoConfig, once per process)
    from vllm import ModelRegistry

    from .config import register_config_hooks

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)
    register_config_hooks(ARCHITECTURES)

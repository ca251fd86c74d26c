"""hf-recurrentgemma: Google DeepMind's Griffin / RecurrentGemma as a Transformers model.

Importing the package registers `model_type="griffin"` with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM`, and lets `from_pretrained` read Transformers' built-in `recurrent_gemma` folders.
"""

import contextlib
import logging


@contextlib.contextmanager
def _quiet_torchao_import():
    """Transformers imports torchao with its model code where torchao is installed (its torchao quantizer).
    torchao 0.18's wheel carries CUDA-only extensions (`_C_mxfp8`, `_C_cutlass_90a`) that fail to load on a CPU
    build of torch, and registering its enums warns through torch's pytree logger: four lines of noise before any
    output, about libraries a CPU user never calls. Only those two loggers, only during this import, are raised to
    ERROR; every later message, and every error, still shows."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


with _quiet_torchao_import():
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .convert.builtin import register_builtin_loader
    from .griffin.cache_griffin import GriffinCache
    from .griffin.configuration_griffin import PRESETS, GriffinConfig
    from .griffin.modeling_griffin import GriffinForCausalLM, GriffinModel, GriffinPreTrainedModel

__version__ = "0.1.0"


def _register() -> None:
    # No exist_ok: if Transformers ever ships its own "griffin", registering fails loudly instead of hijacking it.
    AutoConfig.register("griffin", GriffinConfig)
    AutoModel.register(GriffinConfig, GriffinModel)
    AutoModelForCausalLM.register(GriffinConfig, GriffinForCausalLM)
    # save_pretrained writes `auto_map` and copies the model files, so folders load without this package.
    GriffinConfig.register_for_auto_class("AutoConfig")
    GriffinModel.register_for_auto_class("AutoModel")
    GriffinForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    # from_pretrained also reads Transformers' built-in recurrent_gemma folders (not in Hub remote code).
    register_builtin_loader()


_register()

__all__ = ["GriffinConfig", "GriffinModel", "GriffinForCausalLM", "GriffinPreTrainedModel", "GriffinCache", "PRESETS"]

"""hf-recurrentgemma: Google DeepMind's Griffin / RecurrentGemma as a Transformers model.

Importing the package registers `model_type="griffin"` with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM`, and lets `from_pretrained` read Transformers' built-in `recurrent_gemma` folders.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .griffin.cache_griffin import GriffinCache
from .griffin.configuration_griffin import PRESETS, GriffinConfig
from .convert.builtin import register_builtin_loader
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

"""Every Transformers name the model files use beyond the stable top-level API, imported in this one place.

The model code depends on Transformers internals that change between minor releases: module paths of helpers
(`initialization`, `modeling_layers`, `utils.generic`), the output field `cache` (named `past_key_values` before
5.24, when `generate()` also began passing the cache as `cache=`), and generation hooks it overrides or reads
(`_prepare_cache_for_generation`, `_valid_auto_compile_criteria`, `_prepare_attention_mask_for_generation`,
`CompileConfig._compile_all_devices`). Each is
checked here at import, so an unsupported Transformers fails with one error naming the missing piece and the
version range tested (docs/compatibility.md), instead of a TypeError deep inside `generate()`.

This file is shipped as Hub remote code with the other model files; it imports nothing from this package.
"""

import copy
import dataclasses
import inspect

import transformers

# The Transformers releases the test suite passed on (scripts/test_versions.sh re-runs it on others).
TESTED_TRANSFORMERS = "5.24"
MIN_TRANSFORMERS = (5, 24)


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _unsupported(what: str) -> ImportError:
    return ImportError(
        f"hf-recurrentgemma's model code needs {what}, which Transformers {transformers.__version__} lacks; "
        f"install a supported Transformers (tested: {TESTED_TRANSFORMERS}.x; "
        f"pip install 'transformers>={MIN_TRANSFORMERS[0]}.{MIN_TRANSFORMERS[1]},<5.25')"
    )


if _version_tuple(transformers.__version__) < MIN_TRANSFORMERS:
    raise _unsupported("Transformers >= 5.24 (generate() passes the cache as `cache=` and model outputs carry "
                       "a `cache` field from 5.24 on)")

try:
    from transformers import initialization as init
    from transformers.cache_utils import Cache
    from transformers.generation import CompileConfig, GenerationMixin
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise _unsupported(f"`{error.name or error}`") from error

if "cache" not in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}:
    raise _unsupported("the `cache` field of BaseModelOutputWithPast")
for _hook, _params in (("_prepare_cache_for_generation", ("generation_config", "model_kwargs", "generation_mode",
                                                          "batch_size", "max_cache_length")),
                       ("_valid_auto_compile_criteria", ("model_kwargs", "generation_config")),
                       # overridden for draft models (assisted decoding, docs/speculative.md)
                       ("_prepare_attention_mask_for_generation", ("inputs_tensor", "generation_config",
                                                                   "model_kwargs"))):
    _found = getattr(GenerationMixin, _hook, None)
    if _found is None or tuple(inspect.signature(_found).parameters)[1:] != _params:
        raise _unsupported(f"GenerationMixin.{_hook}{_params}")
if not hasattr(CompileConfig, "_compile_all_devices"):
    raise _unsupported("CompileConfig._compile_all_devices")


def compile_on_all_devices(config: CompileConfig) -> CompileConfig:
    """A copy of `config` that lets `generate()` compile the decode step on CPU too (Transformers alone compiles
    only on accelerators), unless the user already chose."""
    if config._compile_all_devices is not None:
        return config
    config = copy.copy(config)
    config._compile_all_devices = True  # a class attribute, not a dataclass field: set on the copy
    return config


__all__ = ["ALL_ATTENTION_FUNCTIONS", "BaseModelOutputWithPast", "Cache", "CausalLMOutputWithPast", "CompileConfig",
           "GenerationMixin", "GradientCheckpointingLayer", "PreTrainedModel", "can_return_tuple",
           "compile_on_all_devices", "init", "TESTED_TRANSFORMERS"]

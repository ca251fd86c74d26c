"""The cache's two names (`past_key_values` before Transformers 5.24, `cache` from 5.24) are bridged in
compat_griffin.py alone: on whichever supported release is installed, `generate()` hands the model its GriffinCache
under that release's name, the outputs answer to both `.cache` and that name, and a continuation gives the same
logits whichever name the user passes where the release accepts it. Runs on both ends of the range
(scripts/test_floor.sh runs it at the oldest)."""

import pytest
import torch
from reference_helpers import CASES, assert_close, prompt_ids, reference_and_ours

from hf_recurrentgemma import GriffinCache
from hf_recurrentgemma.griffin.compat_griffin import CACHE_NAME, move_generation_cache, take_cache

NEW = 4


@pytest.fixture(scope="module")
def model():
    _, ours = reference_and_ours(CASES[0], seed=5)
    return ours


def test_outputs_carry_the_cache_under_both_names(model):
    with torch.no_grad():
        out = model(prompt_ids(7, 0), use_cache=True)
        base = model.model(prompt_ids(7, 0), use_cache=True)
    for output in (out, base):
        assert isinstance(output.cache, GriffinCache)
        assert getattr(output, CACHE_NAME) is output.cache
        assert CACHE_NAME in output.keys()  # what generate() reads back between steps


def test_generate_passes_one_cache_under_this_releases_name(model):
    seen = []

    def record(module, args, kwargs):
        seen.append({name: value for name, value in kwargs.items() if name in ("cache", "past_key_values")})

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = model.generate(prompt_ids(9, 1), max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    finally:
        handle.remove()
    assert len(seen) == NEW
    caches = [step.pop(CACHE_NAME) for step in seen]
    assert all(not step or all(v is None for v in step.values()) for step in seen), seen  # no second name
    assert all(isinstance(c, GriffinCache) for c in caches) and all(c is caches[0] for c in caches)
    assert getattr(out, CACHE_NAME) is caches[0]


def test_users_cache_argument_reaches_generate_on_every_release(model):
    """generate(cache=...) continues the user's cache (filed under this release's name) and returns it."""
    prompt = prompt_ids(8, 2)
    with torch.no_grad():
        cache = model(prompt, use_cache=True).cache
    follow = torch.cat([prompt, prompt_ids(3, 3)], dim=1)
    continued = model.generate(follow, cache=cache, max_new_tokens=NEW, do_sample=False,
                               return_dict_in_generate=True)
    assert getattr(continued, CACHE_NAME) is cache
    assert torch.equal(continued.sequences, model.generate(follow, max_new_tokens=NEW, do_sample=False))


def test_continuation_through_either_accepted_name(model):
    prompt, more = prompt_ids(8, 4), prompt_ids(3, 5)
    with torch.no_grad():
        full = model(torch.cat([prompt, more], dim=1)).logits[:, -3:]
        by_cache = model(more, cache=model(prompt, use_cache=True).cache, use_cache=True).logits
        assert_close(by_cache, full)
        if CACHE_NAME == "past_key_values":
            legacy = model(more, past_key_values=model(prompt, use_cache=True).cache, use_cache=True).logits
            assert_close(legacy, full)
        else:
            with pytest.raises(TypeError, match="pass the GriffinCache as `cache=`"):
                model(more, past_key_values=model(prompt, use_cache=True).cache, use_cache=True)


def test_the_cache_given_twice_is_refused():
    one, two = object(), object()
    if CACHE_NAME == "past_key_values":
        with pytest.raises(TypeError, match="once"):
            take_cache(one, {"past_key_values": two})
        with pytest.raises(TypeError, match="once"):
            move_generation_cache({"cache": one, "past_key_values": two})
        kwargs = {"cache": one}
        assert move_generation_cache(kwargs) is one and kwargs == {"past_key_values": one}
    else:
        with pytest.raises(TypeError, match="past_key_values"):
            take_cache(one, {"past_key_values": two})
        kwargs = {"cache": one}
        assert move_generation_cache(kwargs) is one and kwargs == {"cache": one}
    assert take_cache(one, {}) is one and move_generation_cache({}) is None

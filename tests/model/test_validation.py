"""Hostile or mistaken model inputs: every one is refused with a one-line error that names the argument, the expected
and the actual value, before any state is written (the cache is bit-for-bit what it was)."""

import pytest
import torch
from reference_helpers import CASES, KERNEL_TOL, assert_close, our_config
from transformers import DynamicCache

from hf_recurrentgemma import GriffinCache, GriffinConfig, GriffinForCausalLM

VOCAB, WIDTH, PREFILL = 97, 32, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GriffinForCausalLM(our_config(CASES[0])).eval()


def _ids(batch=2, length=3, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _prefilled(model):
    with torch.no_grad():
        return model(_ids(length=PREFILL, seed=1), use_cache=True).cache


def _snapshot(cache: GriffinCache):
    return list(cache.clone().state_dict()["tensors"].values())


def _assert_same(before, cache):
    after = list(cache.state_dict()["tensors"].values())
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and torch.equal(a, b), "a refused call changed the cache"


def _emb(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


# (id, keyword arguments of model(...) besides cache=, error type, pattern the one-line message must match)
BAD_CALLS = [
    ("id-too-large", dict(input_ids=torch.tensor([[1, 2, 97], [0, 0, 0]])), ValueError,
     r"input_ids must be token ids in \[0, 97\) .*got 97 at row 0, position 2"),
    ("id-negative", dict(input_ids=torch.tensor([[1, 2, 3], [0, -4, 0]])), ValueError,
     r"input_ids .*\[0, 97\).*got -4 at row 1, position 1"),
    ("ids-float", dict(input_ids=torch.ones(2, 3)), ValueError, r"input_ids must be an integer tensor .*float32"),
    ("ids-1d", dict(input_ids=torch.ones(3, dtype=torch.long)), ValueError, r"input_ids .*shape \(3,\)"),
    ("ids-empty", dict(input_ids=torch.ones(2, 0, dtype=torch.long)), ValueError, r"no tokens \(sequence length 0\)"),
    ("ids-and-embeds", dict(input_ids=_ids(), inputs_embeds=_emb(2, 3, WIDTH)), ValueError,
     r"exactly one of input_ids and inputs_embeds"),
    ("mask-float", dict(input_ids=_ids(), attention_mask=torch.ones(2, 3)), ValueError,
     r"attention_mask must hold 0/1 as a bool or integer tensor, got dtype torch.float32"),
    ("mask-shape", dict(input_ids=_ids(), attention_mask=torch.ones(3, 3, dtype=torch.long)), ValueError,
     r"attention_mask has shape \(3, 3\); expected \(2, >= 3\)"),
    ("mask-3d", dict(input_ids=_ids(), attention_mask=torch.ones(2, 1, 3, dtype=torch.long)), ValueError,
     r"attention_mask must be a 2D .*shape \(2, 1, 3\)"),
    ("mask-value", dict(input_ids=_ids(), attention_mask=torch.tensor([[1, 1, 1], [1, 2, 1]])), ValueError,
     r"attention_mask must hold only 0 and 1, got 2 at row 1, column 1"),
    ("positions-backwards", dict(input_ids=_ids(), position_ids=torch.tensor([[5, 6, 7], [5, 6, 6]])), ValueError,
     r"position_ids must continue a document .* at row 1, position 2 expected 0 or 7, got 6"),
    ("positions-skip-cache", dict(input_ids=_ids(), position_ids=torch.tensor([[3, 4, 5], [5, 6, 7]])), ValueError,
     r"position_ids .* at row 0, position 0 expected 0 or 5 \(where the cache stands\), got 3"),
    ("positions-after-padding", dict(input_ids=_ids(), attention_mask=torch.tensor([[1, 0, 1], [1, 1, 1]]),
                                     position_ids=torch.tensor([[5, 6, 7], [5, 6, 7]])), ValueError,
     r"position_ids contradict attention_mask: .* row 0, position 2 follows padding, .* position 0, got 7"),
    ("positions-after-mask-column", dict(input_ids=_ids(), attention_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]),
                                         position_ids=torch.tensor([[5, 6, 7], [5, 6, 7]])), ValueError,
     r"position_ids contradict attention_mask: .* row 1, position 0 follows padding"),
    ("positions-negative", dict(input_ids=_ids(), position_ids=torch.tensor([[5, 6, 7], [-1, 0, 1]])), ValueError,
     r"position_ids must be >= 0 for real tokens, got -1 at row 1, position 0"),
    ("positions-float", dict(input_ids=_ids(), position_ids=torch.zeros(2, 3)), ValueError,
     r"position_ids must be an integer tensor of shape \(2, 3\), got a float32 tensor"),
    ("positions-shape", dict(input_ids=_ids(), position_ids=torch.zeros(2, 4, dtype=torch.long)), ValueError,
     r"position_ids has shape \(2, 4\); expected \(2, 3\)"),
    ("cache-batch", dict(input_ids=_ids(batch=3)), ValueError, r"cache holds 2 sequences .* batch size 3"),
    ("embeds-width", dict(inputs_embeds=_emb(2, 3, 16)), ValueError,
     r"inputs_embeds must have width hidden_size=32, got shape \(2, 3, 16\)"),
    ("embeds-dtype", dict(inputs_embeds=_emb(2, 3, WIDTH, dtype=torch.float64)), ValueError,
     r"inputs_embeds must have the model's dtype torch.float32, got torch.float64"),
    ("embeds-2d", dict(inputs_embeds=_emb(3, WIDTH)), ValueError, r"inputs_embeds must be a tensor of shape"),
    ("labels-shape", dict(input_ids=_ids(), labels=_ids(length=4)), ValueError,
     r"labels has shape \(2, 4\); expected \(2, 3\)"),
    ("labels-range", dict(input_ids=_ids(), labels=torch.tensor([[1, -100, 2], [3, 4, 97]])), ValueError,
     r"labels must be token ids in \[0, 97\) or -100 .*got 97 at row 1, position 2"),
    ("labels-float", dict(input_ids=_ids(), labels=torch.zeros(2, 3)), ValueError, r"labels must be an integer"),
    ("keep-too-many", dict(input_ids=_ids(), logits_to_keep=4), ValueError,
     r"logits_to_keep must be in \[0, 3\] \(0 keeps all\), got 4"),
    ("keep-negative", dict(input_ids=_ids(), logits_to_keep=-1), ValueError, r"logits_to_keep .* got -1"),
    ("keep-index", dict(input_ids=_ids(), logits_to_keep=torch.tensor([0, 3])), ValueError,
     r"logits_to_keep positions must be in \[-3, 3\), got 3"),
    ("keep-float", dict(input_ids=_ids(), logits_to_keep=1.5), ValueError, r"logits_to_keep must be an int .*1.5"),
    ("past-key-values", dict(input_ids=_ids(), past_key_values=DynamicCache()), TypeError, r"past_key_values"),
]


@pytest.mark.parametrize("kwargs, error, pattern", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_named_and_leaves_the_cache_unchanged(model, kwargs, error, pattern):
    cache = _prefilled(model)
    before = _snapshot(cache)
    with torch.no_grad(), pytest.raises(error, match=pattern) as info:
        model(cache=cache, use_cache=True, **kwargs)
    assert "\n" not in str(info.value), "not a one-line error"
    _assert_same(before, cache)


def _other_caches(model):
    other = GriffinConfig(**{**model.config.to_dict(), "attention_window_size": 9})
    return [
        ("another-architecture", GriffinCache(other), ValueError, r"cache was made for another architecture"),
        ("another-dtype", GriffinCache(model.config, batch_size=2, dtype=torch.bfloat16), ValueError,
         r"cache holds torch.bfloat16 states but the model computes in torch.float32"),
        ("another-device", GriffinCache(model.config, batch_size=2, device="meta"), ValueError,
         r"cache is on meta but the inputs are on cpu"),
        ("not-a-griffin-cache", DynamicCache(), TypeError, r"cache must be a GriffinCache, got DynamicCache"),
    ]


@pytest.mark.parametrize("which", range(4), ids=["another-architecture", "another-dtype", "another-device",
                                                 "not-a-griffin-cache"])
def test_cache_of_another_model_is_refused_untouched(model, which):
    _, cache, error, pattern = _other_caches(model)[which]
    before = _snapshot(cache) if isinstance(cache, GriffinCache) else None
    with torch.no_grad(), pytest.raises(error, match=pattern):
        model(_ids(), cache=cache, use_cache=True)
    if before is not None:
        if cache.next_position is None:
            assert not cache.is_initialized, "a refused call allocated the cache"
        elif cache.next_position.device.type != "meta":
            _assert_same(before, cache)


def test_refused_call_on_a_fresh_cache_allocates_nothing(model):
    cache = GriffinCache(model.config)
    with torch.no_grad(), pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[1, 200]]), cache=cache, use_cache=True)
    assert not cache.is_initialized and cache.next_position is None


def test_decoding_after_a_refused_call_equals_decoding_without_it(model):
    """The strong form: the next step's logits are those of a run in which the bad call never happened."""
    step = _ids(length=1, seed=7)
    with torch.no_grad():
        clean = _prefilled(model)
        expected = model(step, cache=clean, use_cache=True).logits
        cache = _prefilled(model)
        for kwargs, _, _ in [c[1:] for c in BAD_CALLS]:
            with pytest.raises((ValueError, TypeError)):
                model(cache=cache, use_cache=True, **kwargs)
        actual = model(step, cache=cache, use_cache=True).logits
    assert torch.equal(actual, expected)


def test_valid_variants_are_accepted(model):
    """What the checks must not refuse: bool and int32 masks, int32 ids, (T,) and (1, T) position ids that start a
    document or continue the cache, logits_to_keep as a tensor, labels with -100."""
    ids = _ids()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        assert_close(model(ids.int(), attention_mask=torch.ones(2, 3, dtype=torch.bool), use_cache=False).logits,
                     full, tol=0)
        assert_close(model(ids, attention_mask=torch.ones(2, 3, dtype=torch.int32), position_ids=torch.arange(3),
                           use_cache=False).logits, full, tol=0)
        assert_close(model(ids, position_ids=torch.arange(3)[None], logits_to_keep=torch.tensor([0, -1]),
                           use_cache=False).logits, full[:, [0, -1]], tol=KERNEL_TOL)  # a smaller GEMM
        cache = _prefilled(model)
        model(ids, position_ids=torch.tensor([[5, 6, 0], [0, 1, 2]]), cache=cache, use_cache=True)
        # A left-padded row: padding positions are ignored, the first real token starts at 0.
        model(ids, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), position_ids=torch.tensor([[1, 0, 1],
                                                                                                    [0, 1, 2]]),
              use_cache=False)
    labels = ids.clone()
    labels[0, 0] = -100
    assert torch.isfinite(model(ids, labels=labels, use_cache=False).loss)


def test_compiled_step_skips_value_checks_but_keeps_shape_checks(model):
    """Inside torch.compile the value checks (a host sync) are off, so a decode step stays one graph; shape
    checks still run at trace time."""
    with torch.no_grad():
        cache = _prefilled(model)
        step = torch.compile(model, backend="eager", fullgraph=True)
        step(_ids(length=1), cache=cache, use_cache=True)
        with pytest.raises(Exception, match="labels has shape"):
            step(_ids(length=1), labels=_ids(length=2), cache=cache, use_cache=True)

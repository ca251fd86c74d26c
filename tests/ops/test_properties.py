"""Property-based equivalences (hypothesis): every scan backend equals the sequential reference on random shapes,
resets and initial states (values and gradients, to the last bit); a left-padded row equals the row alone; a
prefill split anywhere, or fed token by token, equals one prefill. Logits are compared, not argmax tokens, so a bug
shared by both sides of a comparison cannot hide behind an unchanged argmax.

Deterministic (`derandomize`); `HF_RG_FUZZ=long` multiplies the number of cases by 40."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_helpers import CASES, LOGIT_TOL, assert_close, reference_and_ours

from hf_recurrentgemma.griffin.cpu_scan_griffin import scan_kernel_error as kernel_error
from hf_recurrentgemma.griffin.ops_griffin import SCAN_BACKEND_REGISTRY, SCAN_BACKENDS, rnn_scan_sequential

# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = pytest.mark.kernels

LONG = os.environ.get("HF_RG_FUZZ") == "long"
FAST_BACKENDS = [b.name for b in SCAN_BACKEND_REGISTRY if b.auto_for == "cpu"]  # triton: CUDA tensors only


def prop_settings(ci_examples: int):
    return settings(max_examples=ci_examples * (40 if LONG else 1), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    # Window 6: prompts below run across it.
    return reference_and_ours(CASES[0], seed=11)[1]


def _run(backend, x, a, h0, dy, dh):
    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    y, h = backend(*leaves)
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    return [y, h] + [t.grad for t in leaves]


@pytest.mark.skipif(kernel_error() is not None, reason="no C compiler for the CPU kernel")
@pytest.mark.parametrize("name", FAST_BACKENDS)
@prop_settings(30)
@given(batch=st.integers(1, 3), seq_len=st.integers(1, 48), width=st.integers(1, 80),
       reset_p=st.sampled_from([0.0, 0.1, 0.5, 1.0]), h0_scale=st.sampled_from([0.0, 1.0, 1e3]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_scan_backend_equals_sequential(name, batch, seq_len, width, reset_p, h0_scale, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, width, generator=gen).to(dtype)
    a = torch.rand(batch, seq_len, width, generator=gen)
    a = a.masked_fill(torch.rand(batch, seq_len, 1, generator=gen) < reset_p, 0.0).to(dtype)  # document starts
    h0 = torch.randn(batch, width, generator=gen) * h0_scale
    dy, dh = torch.randn(batch, seq_len, width, generator=gen), torch.randn(batch, width, generator=gen)
    ref, fast = _run(rnn_scan_sequential, x, a, h0, dy, dh), _run(SCAN_BACKENDS[name], x, a, h0, dy, dh)
    for what, r, f in zip(("y", "h_last", "grad x", "grad a", "grad h0"), ref, fast):
        assert f.dtype == r.dtype and f.shape == r.shape, what
        assert torch.equal(f, r), f"{what}: max error {(f.float() - r.float()).abs().max().item():.3g}"


@prop_settings(15)
@given(lengths=st.lists(st.integers(1, 11), min_size=2, max_size=3), extra_pad=st.integers(0, 3),
       steps=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_left_padded_rows_equal_each_row_alone(model, lengths, extra_pad, steps, seed):
    """Prompts of random lengths left-padded into one batch (plus `extra_pad` columns of padding for all), then
    `steps` decoding steps: every row's logits equal that row run alone."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 97, (1, n + steps), generator=gen) for n in lengths]
    width = max(lengths) + extra_pad
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        ids[i, width - n :], mask[i, width - n :] = row[0, :n], 1
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        batched = [out.logits]
        for s in range(steps):
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
            step = torch.stack([row[0, n + s] for row, n in zip(rows, lengths)])[:, None]
            out = model(step, attention_mask=mask, cache=out.cache, use_cache=True)
            batched.append(out.logits)
        batched = torch.cat(batched, dim=1)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            alone = model(row, use_cache=False).logits
            assert_close(batched[i : i + 1, width - n :], alone, what=f"row {i} (length {n})")


@prop_settings(20)
@given(length=st.integers(1, 16), data=st.data(), seed=st.integers(0, 2**16))
def test_prefill_split_anywhere_equals_one_prefill(model, length, data, seed):
    """A prompt of 1-16 tokens fed in chunks split at random points (token by token included) gives the logits
    of one prefill, and the same next-step logits from the cache it leaves."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 97, (2, length + 1), generator=gen)
    prompt, nxt = tokens[:, :length], tokens[:, length:]
    if data.draw(st.booleans(), label="token by token"):
        cuts = list(range(1, length))
    else:
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, length - 1)), max_size=4), label="cuts") - {length})
    with torch.no_grad():
        one = model(prompt, use_cache=True)
        one_next = model(nxt, cache=one.cache, use_cache=True).logits
        cache, parts = None, []
        for start, end in zip([0] + cuts, cuts + [length]):
            out = model(prompt[:, start:end], cache=cache, use_cache=True)
            cache = out.cache
            parts.append(out.logits)
        split_next = model(nxt, cache=cache, use_cache=True).logits
    assert_close(torch.cat(parts, dim=1), one.logits, what=f"prefill split at {cuts}")
    assert_close(split_next, one_next, tol=LOGIT_TOL, what=f"next step after split at {cuts}")


@prop_settings(10)
@given(length=st.integers(6, 40), data=st.data(), seed=st.integers(0, 2**16))
def test_rg_lru_state_stays_float32_across_calls(model, length, data, seed):
    """In a bfloat16 model, an RG-LRU run split into two calls (the state handed from one to the next, as the
    cache does) equals one call to the last bit: the state between calls is float32, never rounded to the model
    dtype (rounding it would lose ~3 decimal digits of state at every call boundary)."""
    split = data.draw(st.integers(1, length - 5), label="split")
    lru = model.model.layers[0].temporal_block.rg_lru
    gen = torch.Generator().manual_seed(seed)
    width = lru.a_param.shape[0]
    x = torch.randn(2, length, width, generator=gen).to(torch.bfloat16)
    reset = torch.zeros(2, length, dtype=torch.bool)
    reset[:, 0] = True
    h0 = torch.zeros(2, width)
    lru_bf16 = __import__("copy").deepcopy(lru).to(torch.bfloat16)
    with torch.no_grad():
        y, h = lru_bf16(x, reset, h0)
        y1, h1 = lru_bf16(x[:, :split], reset[:, :split], h0)
        y2, h2 = lru_bf16(x[:, split:], reset[:, split:], h1)
    assert h1.dtype == torch.float32 and h.dtype == torch.float32
    assert torch.equal(torch.cat([y1, y2], dim=1), y) and torch.equal(h2, h), f"split at {split} of {length}"

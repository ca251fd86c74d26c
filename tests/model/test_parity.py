"""Parity of our model with the reference package (`recurrentgemma.torch`) on random weights, float32.

For each architecture: full forward, prefill + token-by-token decode, a left-padded batch, packed documents.
"""

import pytest
import torch
from reference_helpers import (
    CASE_IDS,
    CASES,
    assert_close,
    document_positions,
    max_error,
    prefill_then_decode,
    reference_and_ours,
    reference_logits,
)

import hf_recurrentgemma.griffin.layers_griffin as layers_griffin
import hf_recurrentgemma.griffin.modeling_griffin as modeling_griffin

# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = pytest.mark.kernels

SEQ = 19  # longer than every test window, so the sliding window is exercised


@pytest.fixture(params=CASES, ids=CASE_IDS, scope="module")
def models(request):
    case = request.param
    ref, ours = reference_and_ours(case)
    return case, ref, ours


def _tokens(case, batch=2, length=SEQ, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, case.vocab_size, (batch, length), generator=g)


@torch.no_grad()
def test_full_forward(models):
    case, ref, ours = models
    tokens = _tokens(case)
    positions = torch.arange(SEQ)[None].expand(2, -1)
    expected = reference_logits(ref, tokens, positions)
    assert_close(ours(tokens).logits, expected)
    assert_close(ours(tokens, position_ids=positions).logits, expected)


@torch.no_grad()
def test_long_prompt_in_query_chunks(models, monkeypatch):
    """Attention over a prompt split into several query chunks equals the one-chunk result."""
    case, ref, ours = models
    tokens = _tokens(case, length=3 * SEQ)
    positions = torch.arange(3 * SEQ)[None].expand(2, -1)
    monkeypatch.setattr(layers_griffin, "query_chunk_size", lambda window: 5)
    assert_close(ours(tokens).logits, reference_logits(ref, tokens, positions))


@torch.no_grad()
def test_long_prompt_in_segments(models, monkeypatch):
    """An inference prompt run through the stack in segments (state carried between them) equals the reference,
    and so does decoding from the cache it leaves; a left-padded batch whose padding crosses a segment boundary
    gives the same logits segmented or not."""
    case, ref, ours = models
    tokens = _tokens(case, length=3 * SEQ)
    positions = torch.arange(3 * SEQ)[None].expand(2, -1)
    mask = torch.ones_like(tokens)
    mask[0, :9] = 0
    whole_padded = ours(tokens, attention_mask=mask).logits
    monkeypatch.setattr(modeling_griffin, "PREFILL_SEGMENT", 7)
    expected = reference_logits(ref, tokens, positions)
    assert_close(ours(tokens).logits, expected)
    assert_close(prefill_then_decode(ours, tokens, None, 2 * SEQ), expected)
    assert_close(ours(tokens, attention_mask=mask).logits, whole_padded)


@pytest.mark.parametrize("prefill", [1, 4, 11])
@torch.no_grad()
def test_prefill_then_decode(models, prefill):
    case, ref, ours = models
    tokens = _tokens(case)
    positions = torch.arange(SEQ)[None].expand(2, -1)
    expected = reference_logits(ref, tokens, positions)

    assert_close(prefill_then_decode(ours, tokens, None, prefill), expected)  # positions from the cache

    # The reference's own cached decoding gives the same numbers.
    _, ref_cache = ref(tokens[:, :prefill], positions[:, :prefill])
    ref_steps = []
    for t in range(prefill, SEQ):
        step, ref_cache = ref(tokens[:, t : t + 1], positions[:, t : t + 1], ref_cache)
        ref_steps.append(step)
    assert_close(torch.cat(ref_steps, dim=1), expected[:, prefill:])


@torch.no_grad()
def test_left_padded_batch(models):
    """Each left-padded row gives the logits of that row alone, with the mask alone or with positions too."""
    case, ref, ours = models
    lengths = [SEQ, 7, 2]
    rows = [_tokens(case, batch=1, length=n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    batch = torch.zeros(len(rows), SEQ, dtype=torch.long)
    mask = torch.zeros(len(rows), SEQ, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, SEQ - len(row) :] = row + 0
        batch[i, : SEQ - len(row)] = 5  # a real token id used as padding: it must not leak
        mask[i, SEQ - len(row) :] = 1
    from_mask = ours(batch, attention_mask=mask).logits
    ref_positions = (mask.cumsum(1) - 1).clamp(min=-1)  # the reference sampler's convention
    for i, row in enumerate(rows):
        alone = reference_logits(ref, row[None], torch.arange(len(row))[None])
        assert_close(from_mask[i : i + 1, SEQ - len(row) :], alone, what=f"row {i} (mask only)")
    ref_batch = reference_logits(ref, batch, ref_positions)
    assert_close(from_mask * mask[..., None], ref_batch * mask[..., None], what="batch vs reference batch")


@torch.no_grad()
def test_left_padded_prefill_then_decode(models):
    """Short rows (fewer real tokens than the conv width) decode as if alone: no padding in the conv tail."""
    case, ref, ours = models
    lengths = [9, 2, 1]
    total = 9
    steps = 6
    rows = [_tokens(case, batch=1, length=n + steps, seed=20 + i)[0] for i, n in enumerate(lengths)]
    prompt = torch.full((3, total), 7, dtype=torch.long)
    mask = torch.zeros(3, total, dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        prompt[i, total - n :] = row[:n]
        mask[i, total - n :] = 1
    out = ours(prompt, attention_mask=mask, use_cache=True)
    cache, logits = out.cache, [out.logits[:, -1:]]
    for s in range(steps - 1):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        step_tokens = torch.stack([row[n + s] for row, n in zip(rows, lengths)])[:, None]
        out = ours(step_tokens, attention_mask=mask, cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    logits = torch.cat(logits, dim=1)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        alone = reference_logits(ref, row[None], torch.arange(len(row))[None])
        assert_close(logits[i : i + 1], alone[:, n - 1 : n - 1 + steps], what=f"row {i}")


PACKED_STARTS = [(0, 5, 6, 14), (0, 3, 17)]


@torch.no_grad()
def test_packed_documents(models):
    case, ref, ours = models
    tokens = _tokens(case)
    positions = torch.stack([document_positions(SEQ, starts) for starts in PACKED_STARTS])
    expected = reference_logits(ref, tokens, positions)
    assert_close(ours(tokens, position_ids=positions).logits, expected)
    # Each document alone gives the same logits as inside the pack.
    for b, row_starts in enumerate(PACKED_STARTS):
        bounds = list(row_starts) + [SEQ]
        for start, end in zip(bounds[:-1], bounds[1:]):
            alone = ours(tokens[b : b + 1, start:end]).logits
            assert_close(alone, expected[b : b + 1, start:end], what=f"row {b} document {start}:{end}")


@pytest.mark.parametrize("prefill", [7, 15])
@torch.no_grad()
def test_packed_documents_decode(models, prefill):
    """Documents that start inside the prompt's last tokens, or while decoding, are respected by the cache.

    (The reference's own cached decoding lets the conv1d look back across a document start that lies within
    its last K-1 inputs; its full forward does not. We equal its full forward.)"""
    case, ref, ours = models
    tokens = _tokens(case)
    positions = torch.stack([document_positions(SEQ, starts) for starts in PACKED_STARTS])
    expected = reference_logits(ref, tokens, positions)
    assert_close(prefill_then_decode(ours, tokens, positions, prefill), expected)


@torch.no_grad()
def test_chunked_prefill_equals_one_prefill(models):
    case, ref, ours = models
    tokens = _tokens(case)
    positions = torch.arange(SEQ)[None].expand(2, -1)
    expected = reference_logits(ref, tokens, positions)
    cache, logits = None, []
    for start in range(0, SEQ, 5):
        out = ours(tokens[:, start : start + 5], cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    assert_close(torch.cat(logits, dim=1), expected)
    assert cache.get_seq_length() == SEQ


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bfloat16_differs_from_the_reference_by_bfloat16_noise_only(case):
    """In bfloat16 our casts follow the reference's; what remains is rounding in a different order, so the gap to
    the bfloat16 reference stays within twice the reference's own bfloat16-vs-float32 error (a real mistake
    moves logits by O(1))."""
    ref, ours = reference_and_ours(case)
    tokens = _tokens(case)
    positions = torch.arange(SEQ)[None].expand(2, -1)
    with torch.no_grad():
        exact = reference_logits(ref, tokens, positions)
        ref_bf16 = reference_logits(ref.to(torch.bfloat16), tokens, positions).float()
        ours_bf16 = ours.to(torch.bfloat16)(tokens).logits
    assert ours_bf16.dtype == torch.bfloat16
    noise = max_error(ref_bf16, exact)
    assert_close(ours_bf16.float(), ref_bf16, tol=2 * noise, what=f"bfloat16 logits (reference noise {noise:.3f})")


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=[CASES[0].name, CASES[2].name])
def test_flax_parameters_match_the_jax_reference(case):
    """The JAX reference with its own (perturbed) Flax parameters gives our logits, packed documents included."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from recurrentgemma.jax import griffin as jax_griffin

    from hf_recurrentgemma.convert import griffin_from_reference

    tokens = _tokens(case)
    positions = torch.stack([document_positions(SEQ, starts) for starts in PACKED_STARTS])
    module = jax_griffin.Griffin(case.reference_config())
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(tokens.numpy()), jnp.asarray(positions.numpy()))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [leaf + 0.2 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    )
    expected, _ = module.apply({"params": params}, jnp.asarray(tokens.numpy()), jnp.asarray(positions.numpy()))
    ours = griffin_from_reference({"params": params}, **case.uninferable())
    with torch.no_grad():
        actual = ours(tokens, position_ids=positions).logits
    assert_close(actual, torch.from_numpy(np.array(expected)))

"""Speculative decoding on a recurrent state: exact rollback of `GriffinCache` and `generate()`'s assisted and
prompt-lookup decoding (docs/speculative.md).

Rollback is held to equality: at call boundaries the restored buffers are bit-for-bit the ones the forward left
there (clones taken then); inside a call, the per-token states the layers hand the cache are bit-for-bit those a
call ending at that token computes (the ops compared directly: the scan, the conv tail, the attention window).
A whole forward over fewer tokens is not a bit-exact reference for a state inside a longer call (the matrix products
round differently for another number of rows), so the model-level check inside a call uses the parity tolerance.
Greedy assisted decoding must give plain greedy's tokens exactly (float32); sampling must keep the target's
distribution, checked on the first token's empirical distribution with a tolerance derived from the sample count.
"""

import copy

import pytest
import torch
from reference_helpers import CASES, CASE_IDS, assert_close, document_positions, reference_and_ours

from hf_recurrentgemma import GriffinCache
from hf_recurrentgemma.griffin.cache_griffin import DEFAULT_ROLLBACK_TOKENS, empty_attention_state
from hf_recurrentgemma.griffin.configuration_griffin import GriffinConfig
from hf_recurrentgemma.griffin.cpu_matvec_griffin import MAX_ROWS
from hf_recurrentgemma.griffin.layers_griffin import (GriffinLocalAttention, SequenceInfo, attention_steps,
                                                     eager_local_attention)
from hf_recurrentgemma.griffin.modeling_griffin import MAX_DRAFT_TOKENS
from hf_recurrentgemma.griffin.ops_griffin import causal_conv1d, conv_tails_before, rnn_scan, rnn_scan_recording

# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.kernels]
VOCAB = 97


@pytest.fixture(scope="module")
def target():
    # Griffin with a window of 6 (generation crosses it) and a document start wherever a position is 0.
    return reference_and_ours(CASES[0], seed=3)[1]


@pytest.fixture(scope="module")
def target_copy(target):
    """The target as its own draft (a copy, so the spies below can tell the two caches apart): every token is
    accepted."""
    return _full_drafts(copy.deepcopy(target))


@pytest.fixture(scope="module")
def hawk_draft():
    return _full_drafts(reference_and_ours(CASES[2], seed=5)[1])


@pytest.fixture(scope="module")
def close_draft(target):
    """The target with slightly perturbed weights: it agrees with the target most of the time, not always, so
    drafts are rejected in the middle."""
    draft = reference_and_ours(CASES[0], seed=3)[1]
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.03)
    return _full_drafts(draft)


@pytest.fixture(scope="module")
def gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(7)
    config = GemmaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256)
    return GemmaForCausalLM(config).eval()


def _full_drafts(draft):
    """Drafts of exactly `num_assistant_tokens` (Transformers' default stops a draft when the assistant's
    confidence drops below 0.4, which would make most drafts one token long)."""
    draft.generation_config.assistant_confidence_threshold = 0.0
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    return draft


def _assist(draft, tokens):
    """`generate()` arguments for drafts of `tokens` tokens (Transformers reads the length from the assistant's
    generation config, not from the call)."""
    draft.generation_config.num_assistant_tokens = tokens
    return {"assistant_model": draft}


def _ids(length, seed):
    return torch.randint(4, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def _tensors(cache):
    return cache.state_dict()["tensors"]


def _assert_bit_equal(cache, expected, what):
    got, want = _tensors(cache), _tensors(expected)
    assert got.keys() == want.keys(), what
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), \
            f"{what}: {name} differs by {(got[name].float() - tensor.float()).abs().max().item():.3g}"


# --- rollback --------------------------------------------------------------------------------------------------

def test_recorded_tokens_spanning_prompt_segments_crop_like_a_shorter_prompt(monkeypatch):
    """A long prompt runs in segments (PREFILL_SEGMENT, here 8 tokens), each handing its share of the recorded
    tokens to the cache as it comes: cropping into the last two segments gives the state of the shorter prompt,
    bit for bit at a segment boundary (the same computations), and within float32 rounding inside a segment (there
    the shorter prompt's last segment multiplies fewer rows at once; an off-by-one token would differ by ~1)."""
    import hf_recurrentgemma.griffin.modeling_griffin as modeling

    model = reference_and_ours(CASES[0], seed=1)[1]
    ids = _ids(21, seed=4)
    monkeypatch.setattr(modeling, "PREFILL_SEGMENT", 8)
    cache = GriffinCache(model.config, rollback_tokens=12)
    cache.activate_past_recording()
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)  # segments 0-7, 8-15, 16-20; the last 12 tokens recorded
        for keep in (9, 13, 16, 18):
            expected = GriffinCache(model.config)
            model(ids[:, :keep], cache=expected, use_cache=True)
            cropped = cache.clone()
            cropped.crop(-(21 - keep))
            assert cropped.seen_tokens == keep
            if keep == 16:
                _assert_bit_equal(cropped, expected, f"crop to {keep} tokens")
            for name, tensor in _tensors(expected).items():
                assert_close(_tensors(cropped)[name].float(), tensor.float(), 1e-5, f"crop to {keep}: {name}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_block_kind_has_its_cache_layer_class_with_its_history_shapes(case):
    """One cache-layer class per block kind: the cache builds them from `block_types`; each kind's declared history
    shapes are those of what its layers actually record; a layer is croppable once it holds a history."""
    from hf_recurrentgemma.griffin.cache_griffin import CACHE_LAYER_KINDS

    model = reference_and_ours(case, seed=1)[1]
    assert set(model.config.block_types) <= set(CACHE_LAYER_KINDS)
    cache = GriffinCache(model.config, rollback_tokens=4)
    assert [type(layer) for layer in cache.layers] == [CACHE_LAYER_KINDS[t] for t in model.config.block_types]
    cache.activate_past_recording()
    assert not any(layer.is_croppable for layer in cache.layers)  # nothing recorded yet: nothing to restore
    with torch.no_grad():
        model(_ids(6, seed=2), cache=cache, use_cache=True)
    for layer in cache.layers:
        declared = type(layer).history_shapes(model.config, 1, 4, torch.float32)
        assert [(tuple(t.shape), t.dtype) for t in layer.history] == [(tuple(s), d) for s, d in declared], layer
        assert layer.is_croppable
    assert cache.recording_nbytes(model.config, 4, 1, torch.float32) == cache._positions_history.nbytes + sum(
        t.nbytes for layer in cache.layers for t in layer.history)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_crop_restores_every_earlier_call_boundary_bit_for_bit(case, dtype):
    model = reference_and_ours(case, seed=1)[1].to(dtype)
    # Calls of 5, 3, 1, 1, 4, 1, 2 tokens (17 in all: past every window), a document start inside the 4-token call
    # and one at a single-token call.
    calls = [5, 3, 1, 1, 4, 1, 2]
    ids = _ids(sum(calls), seed=2)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 0, 1, 2]])
    cache = GriffinCache(model.config, rollback_tokens=12)
    cache.activate_past_recording()
    boundaries, start = {}, 0
    with torch.no_grad():
        for n in calls:
            model(ids[:, start:start + n], position_ids=positions[:, start:start + n], cache=cache, use_cache=True)
            start += n
            boundaries[start] = cache.clone()
    for end in sorted(boundaries)[:-1]:
        if start - end > 12:
            continue
        cropped = boundaries[start].clone()
        cropped.crop(-(start - end))
        _assert_bit_equal(cropped, boundaries[end], f"crop({end - start})")
        assert cropped.seen_tokens == end
    # Several crops in a row reach the same state as one.
    stepwise = boundaries[start].clone()
    for _ in range(start - 8):
        stepwise.crop(-1)
    _assert_bit_equal(stepwise, boundaries[8], "nine crop(-1)")
    with pytest.raises(ValueError, match="only the last 12 tokens are recorded"):
        boundaries[start].clone().crop(-13)


def test_crop_inside_a_call_and_into_the_prompt_continues_like_a_shorter_prompt(target):
    """The prompt's last tokens are undone (the target's first verification cuts into its prefill call); the next
    logits equal those of a forward that never saw them, within the parity tolerance (different row counts)."""
    ids = _ids(14, seed=4)
    with torch.no_grad():
        for n in range(1, 9):
            cache = GriffinCache(target.config, rollback_tokens=8)
            cache.activate_past_recording()
            target(ids, cache=cache, use_cache=True)
            cache.crop(-n)
            assert cache.seen_tokens == 14 - n
            resumed = target(ids[:, 14 - n:], cache=cache, use_cache=True).logits
            plain = target(ids, use_cache=False).logits[:, 14 - n:]
            assert_close(resumed, plain, what=f"logits after crop(-{n})")
            reference = GriffinCache(target.config)
            target(ids[:, :14 - n], cache=reference, use_cache=True)
            target(ids[:, 14 - n:], cache=reference, use_cache=True)
            for name, tensor in _tensors(reference).items():
                assert_close(_tensors(cache)[name], tensor, tol=1e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_recorded_steps_inside_a_call_equal_a_call_that_ends_there(dtype):
    """The layers' per-token states for rollback, against the same ops run on the prefix: bit for bit."""
    generator = torch.Generator().manual_seed(0)
    batch, seq_len, width, record = 2, 11, 8, 7
    x = torch.randn(batch, seq_len, width, generator=generator).to(dtype)
    a = torch.rand(batch, seq_len, width, generator=generator).to(dtype)
    h0 = torch.randn(batch, width, generator=generator)
    reset = torch.zeros(batch, seq_len, dtype=torch.bool)
    reset[0, 6] = reset[1, 9] = True
    y, h, before = rnn_scan_recording(x, a, h0, "auto", record)
    y_plain, h_plain = rnn_scan(x, a, h0)
    assert torch.equal(y, y_plain) and torch.equal(h, h_plain), "recording changed the scan's output"
    tail = torch.randn(batch, 3, width, generator=generator).to(dtype)
    tails = conv_tails_before(x, tail, reset, record)
    weight, bias = torch.randn(4, width).to(dtype), torch.randn(width).to(dtype)
    for j in range(seq_len - record, seq_len):
        slot = j - (seq_len - record)
        h_j = h0 if j == 0 else rnn_scan(x[:, :j], a[:, :j], h0)[1]
        assert before[:, slot].dtype == torch.float32 and torch.equal(before[:, slot], h_j), f"rg_lru before {j}"
        tail_j = tail if j == 0 else causal_conv1d(x[:, :j], tail, weight, bias, reset[:, :j])[1]
        assert torch.equal(tails[:, slot], tail_j), f"conv tail before {j}"

    # Attention: the window a call ending just before token j leaves, rebuilt from the evicted slots, over a
    # window of 4 and 11 tokens (most slots are pushed out by the call's own tokens).
    config = GriffinConfig(vocab_size=VOCAB, hidden_size=16, num_attention_heads=2, attention_window_size=4,
                           block_types=["attention"])
    attention = GriffinLocalAttention(config, 0).eval()
    state = empty_attention_state(config, batch, dtype, "cpu")
    state = state._replace(keys=torch.randn(state.keys.shape, generator=generator).to(dtype),
                           values=torch.randn(state.values.shape, generator=generator).to(dtype),
                           valid=torch.rand(state.valid.shape, generator=generator) > 0.3)
    key_valid = torch.ones(batch, seq_len, dtype=torch.bool)
    key_valid[1, 2] = False
    positions = torch.arange(seq_len).expand(batch, -1)
    seq = SequenceInfo(positions, reset, key_valid, record)
    k = torch.randn(batch, 1, seq_len, config.head_dim, generator=generator).to(dtype)
    v = torch.randn(batch, 1, seq_len, config.head_dim, generator=generator).to(dtype)
    steps = attention_steps(state, k, v, seq)
    q = torch.randn(batch, 2, seq_len, config.head_dim, generator=generator).to(dtype)
    attend = eager_local_attention
    _, final = attention._attend_chunks(attend, q, k, v, seq._replace(record=0), state)
    for j in range(seq_len - record, seq_len):
        slot = j - (seq_len - record)
        if j == 0:
            expected = state
        else:
            part = SequenceInfo(positions[:, :j], reset[:, :j], key_valid[:, :j])
            _, expected = attention._attend_chunks(attend, q[:, :, :j], k[:, :, :j], v[:, :, :j], part, state)
        # The window before token j = the slots tokens j.. pushed out, then the final window's oldest slots.
        evicted = steps.keys[:, slot:][:, None]
        window = torch.cat([evicted, final.keys], dim=2)[:, :, :4]
        assert torch.equal(window, expected.keys), f"keys before {j}"
        assert torch.equal(steps.valid[:, slot], expected.valid), f"valid before {j}"


def test_recording_off_changes_nothing_and_recording_keeps_outputs(target):
    ids = _ids(12, seed=6)
    with torch.no_grad():
        plain = GriffinCache(target.config)
        logits = [target(ids[:, :8], cache=plain, use_cache=True).logits]
        recording = GriffinCache(target.config)
        recording.activate_past_recording()
        rec_logits = [target(ids[:, :8], cache=recording, use_cache=True).logits]
        for t in range(8, 12):
            logits.append(target(ids[:, t:t + 1], cache=plain, use_cache=True).logits)
            rec_logits.append(target(ids[:, t:t + 1], cache=recording, use_cache=True).logits)
    assert all(layer.history is None for layer in plain.layers) and not plain.is_croppable
    assert recording.is_croppable
    for a, b in zip(logits, rec_logits):
        assert torch.equal(a, b), "recording changed the logits"
    _assert_bit_equal(recording, plain, "recording vs plain")


def test_crop_refusals_name_the_problem(target):
    cache = GriffinCache(target.config)
    with torch.no_grad():
        target(_ids(3, 0), cache=cache, use_cache=True)
    cache.crop(0)  # Transformers calls it with 0 after a fully accepted draft
    with pytest.raises(ValueError, match="needs a recording cache"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="negative int"):
        cache.crop(2)
    with pytest.raises(ValueError, match="rollback_tokens must be a positive int"):
        GriffinCache(target.config, rollback_tokens=0)
    cache.activate_past_recording(rollback_tokens=4)
    with torch.no_grad():
        target(_ids(2, 1), cache=cache, use_cache=True)
    cache.crop(-2)
    with pytest.raises(ValueError, match="only the last 0 tokens are recorded"):
        cache.crop(-1)  # the two recorded tokens are undone; the three before recording started never were
    cache.deactivate_past_recording()
    assert not cache.is_croppable and all(layer.history is None for layer in cache.layers)


def test_recording_memory_at_the_2b_shape():
    config = GriffinConfig.from_preset("recurrentgemma-2b")
    assert config.block_types.count("attention") == 8 and len(config.block_types) == 26
    assert config.head_dim == 256 and config.conv1d_width == 4
    # Per token: recurrent 3 * 2560 bf16 + 2560 float32; attention 2 * 256 bf16 + 2048 bool; one position.
    per_token = 18 * (3 * 2560 * 2 + 2560 * 4) + 8 * (2 * 256 * 2 + 2048) + 8
    for tokens in (8, 32, DEFAULT_ROLLBACK_TOKENS):
        assert GriffinCache.recording_nbytes(config, tokens) == tokens * per_token


# --- generate(): greedy equals plain greedy --------------------------------------------------------------------

def _plain(model, ids, **kwargs):
    return model.generate(ids, do_sample=False, **kwargs)


def _spy_target(monkeypatch, model):
    """Records, per verification round of `model`, the forward's length and the tokens its cache drops (a forward
    hook, so `generate` still sees the real `forward` signature; the draft's cache belongs to another config)."""
    rounds, crops = [], []

    def count_forward(module, args, kwargs):
        cache = kwargs.get("cache")
        if isinstance(cache, GriffinCache) and cache.recording:
            rounds.append(kwargs["input_ids"].shape[1])

    crop = GriffinCache.crop

    def counting_crop(self, n):
        if self.config is model.config:
            crops.append(-n)
        return crop(self, n)

    handle = model.register_forward_pre_hook(count_forward, with_kwargs=True)
    monkeypatch.setattr(GriffinCache, "crop", counting_crop)
    return rounds, crops, handle


def _accepted(rounds, crops, prompt_len):
    """(draft length, tokens accepted) per round: the first forward holds the prompt, later ones one token more
    than their draft."""
    drafts = [rounds[0] - prompt_len] + [n - 1 for n in rounds[1:]]
    return [(k, k - c) for k, c in zip(drafts, crops)]


@pytest.mark.parametrize("draft_name", ["target", "close", "hawk"])
def test_assisted_greedy_equals_plain_greedy(target, target_copy, hawk_draft, close_draft, draft_name, monkeypatch):
    draft = {"target": target_copy, "close": close_draft, "hawk": hawk_draft}[draft_name]
    outcomes = []
    for seed, length in ((0, 9), (1, 4), (2, 13)):
        ids = _ids(length, seed)
        plain = _plain(target, ids, max_new_tokens=14)
        rounds, crops, handle = _spy_target(monkeypatch, target)
        out = target.generate(ids, do_sample=False, max_new_tokens=14, **_assist(draft, 5))
        handle.remove()
        monkeypatch.undo()
        assert torch.equal(out, plain), f"prompt {seed}: {out.tolist()} != {plain.tolist()}"
        outcomes += _accepted(rounds, crops, length)
    accepted = [n for k, n in outcomes if k]
    if draft_name == "target":
        assert all(n == k for k, n in outcomes), outcomes  # all accepted
    elif draft_name == "close":
        assert any(0 < n < k for k, n in outcomes), outcomes  # a rejection in the middle of a draft
    else:
        assert 0 in accepted, outcomes  # none accepted


@pytest.mark.parametrize("case", CASES[1:], ids=CASE_IDS[1:])
def test_a_copy_of_the_target_as_draft_has_every_token_accepted(case, monkeypatch):
    """Also for Hawk, whose all-recurrent cache Transformers' prefill does not slice (modeling_griffin.py does):
    every proposal accepted means the draft's own cache was cropped and continued exactly."""
    model = reference_and_ours(case, seed=2)[1]
    draft = _full_drafts(copy.deepcopy(model))
    ids = _ids(8, seed=3)
    plain = _plain(model, ids, max_new_tokens=13)
    rounds, crops, handle = _spy_target(monkeypatch, model)
    out = model.generate(ids, do_sample=False, max_new_tokens=13, **_assist(draft, 4))
    handle.remove()
    monkeypatch.undo()
    assert torch.equal(out, plain)
    outcomes = _accepted(rounds, crops, 8)
    assert len(outcomes) >= 3 and all(n == k for k, n in outcomes), outcomes


def test_max_new_tokens_reached_mid_draft_and_eos_inside_a_draft(target, target_copy):
    ids = _ids(9, seed=0)
    for max_new in (1, 2, 7):
        plain = _plain(target, ids, max_new_tokens=max_new)
        out = target.generate(ids, do_sample=False, max_new_tokens=max_new, **_assist(target_copy, 5))
        assert torch.equal(out, plain), max_new
    continuation = _plain(target, ids, max_new_tokens=12)[0, 9:]
    eos = int(continuation[4])  # generated 5th: inside the first draft of 6
    first = int((continuation == eos).nonzero()[0])
    plain = _plain(target, ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert plain.shape[1] == 9 + first + 1
    out = target.generate(ids, do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0,
                          **_assist(target_copy, 6))
    assert torch.equal(out, plain)


@pytest.mark.parametrize("start", [8, 11])
def test_drafts_across_the_window_and_a_document_start(target, hawk_draft, close_draft, start):
    """A prompt whose last document starts at token `start` (position ids given): the continuation is that of the
    last document alone, and the window (6) is crossed by the drafts. With the start at the prompt's last token,
    the draft's first crop (into its prefill) undoes tokens across it."""
    ids = _ids(12, seed=8)
    positions = document_positions(12, [start])[None]
    plain = target.generate(ids, position_ids=positions, do_sample=False, max_new_tokens=16)
    assert torch.equal(plain[:, start:], _plain(target, ids[:, start:], max_new_tokens=16))
    for draft in (close_draft, hawk_draft):
        out = target.generate(ids, position_ids=positions, do_sample=False, max_new_tokens=16, **_assist(draft, 7))
        assert torch.equal(out, plain)


def test_griffin_draft_for_a_transformer_target_and_back(target, hawk_draft, gemma):
    ids = _ids(9, seed=3)
    plain = _plain(gemma, ids, max_new_tokens=12)
    for draft in (target, hawk_draft):
        assert torch.equal(gemma.generate(ids, do_sample=False, max_new_tokens=12, **_assist(draft, 4)), plain)
    plain = _plain(target, ids, max_new_tokens=12)
    assert torch.equal(target.generate(ids, do_sample=False, max_new_tokens=12, **_assist(gemma, 4)), plain)


def test_prompt_lookup_equals_greedy(target, monkeypatch):
    # A prompt that repeats itself, so lookup finds n-grams and proposes their continuations.
    base = _ids(6, seed=9)
    ids = torch.cat([base, base, base[:, :3]], dim=1)
    plain = _plain(target, ids, max_new_tokens=15)
    rounds, crops, handle = _spy_target(monkeypatch, target)
    out = target.generate(ids, do_sample=False, max_new_tokens=15, prompt_lookup_num_tokens=4)
    handle.remove()
    monkeypatch.undo()
    assert torch.equal(out, plain)
    assert any(k > 0 for k, _ in _accepted(rounds, crops, ids.shape[1])), "lookup never proposed a draft"


def test_drafts_are_capped_at_the_row_invariant_verification_size(target, target_copy, monkeypatch):
    """Transformers' default draft length (20), its "heuristic" schedule (which grows it without bound) and a
    30-token prompt lookup are cut to MAX_DRAFT_TOKENS: every verification holds at most MAX_ROWS tokens, the sizes
    at which it equals as many decoding steps bit for bit (tests/model/test_batch_invariance.py)."""
    assert MAX_DRAFT_TOKENS + 1 == MAX_ROWS
    ids = _ids(9, seed=0)
    plain = _plain(target, ids, max_new_tokens=40)
    target_copy.generation_config.num_assistant_tokens_schedule = "heuristic"
    try:
        rounds, crops, handle = _spy_target(monkeypatch, target)
        out = target.generate(ids, do_sample=False, max_new_tokens=40, **_assist(target_copy, 20))
        handle.remove()
        monkeypatch.undo()
    finally:
        target_copy.generation_config.num_assistant_tokens_schedule = "constant"
    assert torch.equal(out, plain)
    drafts = [k for k, _ in _accepted(rounds, crops, ids.shape[1])]
    assert drafts[:2] == [MAX_DRAFT_TOKENS] * 2, drafts  # every token accepted: full drafts, at the cap
    base = _ids(6, seed=9)
    ids = torch.cat([base] * 5 + [base[:, :3]], dim=1)
    plain = _plain(target, ids, max_new_tokens=20)
    rounds, crops, handle = _spy_target(monkeypatch, target)
    out = target.generate(ids, do_sample=False, max_new_tokens=20, prompt_lookup_num_tokens=30)
    handle.remove()
    monkeypatch.undo()
    assert torch.equal(out, plain)
    drafts = [k for k, _ in _accepted(rounds, crops, ids.shape[1])]
    assert max(drafts) == MAX_DRAFT_TOKENS, drafts


# --- generate(): sampling keeps the target's distribution ------------------------------------------------------

def test_speculative_sampling_keeps_the_target_distribution(target):
    """The second new token of `samples` seeded runs with one-token drafts: when the first draft is rejected, the
    target's cache is cropped and the second token is drawn from the restored state, so rollback is covered.
    Its exact marginal under the target is sum_a p(a) p(x | a) (one batched forward over every first token a).
    The draft is the target with its logits scaled by 1/4 (final norm): it proposes the target's likely tokens too
    often and the rest too rarely, so about 40% of first drafts are accepted. Tolerance: three times the bound
    E[TV] <= 1/2 sum_x sqrt(p_x (1 - p_x) / N) on the total-variation distance of an N-sample empirical
    distribution; the draft's own marginal must lie well outside it, so a sampler that kept draft tokens fails."""
    draft = copy.deepcopy(target)
    with torch.no_grad():
        draft.model.final_norm.weight.copy_((1 + draft.model.final_norm.weight) * 0.25 - 1)
    ids = _ids(7, seed=12)
    samples, temperature = 240, 0.3

    @torch.no_grad()
    def marginal_of_second(model):
        first = torch.softmax(model(ids).logits[0, -1].float() / temperature, -1)  # (V,)
        rows = torch.cat([ids.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], dim=1)
        second = torch.softmax(model(rows).logits[:, -1].float() / temperature, -1)  # (V, V)
        return first @ second

    p, q = marginal_of_second(target), marginal_of_second(draft)
    counts = torch.zeros(VOCAB)
    for seed in range(samples):
        torch.manual_seed(seed)
        out = target.generate(ids, do_sample=True, top_k=0, top_p=1.0, temperature=temperature, max_new_tokens=2,
                              **_assist(draft, 1))
        counts[out[0, 8]] += 1
    tv = 0.5 * (counts / samples - p).abs().sum().item()
    tolerance = 3 * 0.5 * torch.sqrt(p * (1 - p) / samples).sum().item()
    draft_tv = 0.5 * (q - p).abs().sum().item()
    assert draft_tv > 2 * tolerance, f"the test cannot tell the draft from the target ({draft_tv:.3f})"
    assert tv <= tolerance, f"TV(empirical, target) {tv:.3f} > {tolerance:.3f} (draft's TV {draft_tv:.3f})"


# --- the state API ---------------------------------------------------------------------------------------------

def test_state_dict_round_trip_and_refusals(target):
    cache = GriffinCache(target.config)
    with torch.no_grad():
        target(_ids(9, 1), cache=cache, use_cache=True)
    snapshot = cache.clone()
    state = snapshot.state_dict()
    restored = GriffinCache.from_state_dict(target.config, state, dtype=torch.float32)
    _assert_bit_equal(restored, cache, "from_state_dict")
    with torch.no_grad():  # the clone is independent: advancing the original leaves it as it was
        target(_ids(1, 2), cache=cache, use_cache=True)
    _assert_bit_equal(restored, snapshot, "clone")
    assert cache.seen_tokens == 10 and snapshot.seen_tokens == 9

    other = GriffinConfig(**{**target.config.to_dict(), "attention_window_size": 5})
    with pytest.raises(ValueError, match="saved by a model with attention_window_size=6, this model has 5"):
        GriffinCache.from_state_dict(other, state)
    with pytest.raises(ValueError, match="saved from a float32 model, this one is bfloat16"):
        GriffinCache.from_state_dict(target.config, state, dtype=torch.bfloat16)
    broken = {**state, "tensors": {k: v for k, v in state["tensors"].items() if k != "layers.2.valid"}}
    with pytest.raises(ValueError, match="lacks the tensor layers.2.valid"):
        GriffinCache.from_state_dict(target.config, broken)
    broken["tensors"]["layers.2.valid"] = torch.zeros(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"layers.2.valid is torch.bool \(1, 5\); this model needs torch.bool \(1, 6\)"):
        GriffinCache.from_state_dict(target.config, broken)

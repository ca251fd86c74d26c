"""`generate()` with GriffinCache: every decoding mode equals the uncached / unbatched computation."""

import pytest
import torch
from reference_helpers import CASES, assert_close, prompt_ids, reference_and_ours
from transformers.generation.streamers import BaseStreamer

from hf_recurrentgemma import GriffinCache
from hf_recurrentgemma.griffin.compat_griffin import CACHE_NAME

# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = pytest.mark.kernels

PROMPT = 9
NEW = 8


@pytest.fixture(scope="module")
def model():
    # The Griffin case with a window (6) shorter than prompt + generation, so generation crosses the window.
    _, ours = reference_and_ours(CASES[0], seed=3)
    return ours


def _left_pad(rows, pad_id=0):
    width = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1] :] = r[0]
        mask[i, width - r.shape[1] :] = 1
    return ids, mask


@torch.no_grad()
def _uncached_greedy(model, ids, steps):
    for _ in range(steps):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_greedy_equals_uncached_argmax(model):
    prompt = prompt_ids(PROMPT, 0)
    out = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(out, _uncached_greedy(model, prompt, NEW))


def test_left_padded_batch_equals_each_prompt_alone(model):
    rows = [prompt_ids(n, seed) for n, seed in [(PROMPT, 1), (3, 2), (1, 3), (7, 4)]]
    ids, mask = _left_pad(rows)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
    for i, row in enumerate(rows):
        alone = model.generate(row, max_new_tokens=NEW, do_sample=False, output_scores=True,
                               return_dict_in_generate=True)
        assert torch.equal(batched.sequences[i, ids.shape[1] :], alone.sequences[0, row.shape[1] :]), f"row {i}"
        for step, (b, a) in enumerate(zip(batched.scores, alone.scores)):
            assert_close(b[i : i + 1], a, what=f"row {i} step {step} scores")


def test_sampling_with_cache_equals_without(model):
    prompt = prompt_ids(PROMPT, 5)
    torch.manual_seed(123)
    cached = model.generate(prompt, max_new_tokens=NEW, do_sample=True, top_k=20)
    torch.manual_seed(123)
    uncached = model.generate(prompt, max_new_tokens=NEW, do_sample=True, top_k=20, use_cache=False)
    assert torch.equal(cached, uncached)


def test_beam_search_cached_equals_uncached(model):
    rows = [prompt_ids(PROMPT, 6), prompt_ids(4, 7)]
    ids, mask = _left_pad(rows)
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW, num_beams=3, num_return_sequences=2, do_sample=False,
                  output_scores=True, return_dict_in_generate=True)
    cached = model.generate(ids, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert_close(cached.sequences_scores, uncached.sequences_scores, what="beam scores")


def test_chunked_prefill_equals_one_prefill(model):
    prompt = prompt_ids(20, 8)
    one = model.generate(prompt, max_new_tokens=NEW, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    chunked = model.generate(prompt, max_new_tokens=NEW, do_sample=False, prefill_chunk_size=6, output_scores=True,
                             return_dict_in_generate=True)
    assert torch.equal(one.sequences, chunked.sequences)
    for a, b in zip(one.scores, chunked.scores):
        assert_close(b, a, what="scores")


def test_continue_from_returned_cache(model):
    prompt = prompt_ids(PROMPT, 9)
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    returned = getattr(first, CACHE_NAME)  # generate()'s output names the cache as the installed Transformers does
    assert isinstance(returned, GriffinCache)
    follow_up = torch.cat([first.sequences, prompt_ids(3, 10)], dim=1)
    continued = model.generate(follow_up, cache=returned, max_new_tokens=NEW, do_sample=False)
    from_scratch = model.generate(follow_up, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(continued, from_scratch)


def test_interleaved_generations_on_one_model(model):
    """Two caches advanced in turns give what each gives alone: no state is kept on the model."""
    a, b = prompt_ids(PROMPT, 11), prompt_ids(5, 12)
    with torch.no_grad():
        out_a, out_b = model(a, use_cache=True), model(b, use_cache=True)
        cache_a, cache_b = out_a.cache, out_b.cache
        seq_a, seq_b = a, b
        for _ in range(NEW):
            next_a = out_a.logits[:, -1].argmax(-1, keepdim=True)
            next_b = out_b.logits[:, -1].argmax(-1, keepdim=True)
            seq_a, seq_b = torch.cat([seq_a, next_a], 1), torch.cat([seq_b, next_b], 1)
            out_a = model(next_a, cache=cache_a, use_cache=True)
            out_b = model(next_b, cache=cache_b, use_cache=True)
    assert torch.equal(seq_a, _uncached_greedy(model, a, NEW))
    assert torch.equal(seq_b, _uncached_greedy(model, b, NEW))


def test_eos_stops_generation(model):
    prompt = prompt_ids(PROMPT, 13)
    free = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    generated = free[0, PROMPT:].tolist()
    eos = generated[-1]
    first = generated.index(eos)  # generation stops at the first occurrence
    stopped = model.generate(prompt, max_new_tokens=NEW, do_sample=False, eos_token_id=eos)
    assert stopped[0, PROMPT:].tolist() == generated[: first + 1]


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []
        self.ended = False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


def test_streaming_yields_each_token(model):
    prompt = prompt_ids(PROMPT, 14)
    streamer = _Collect()
    out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, streamer=streamer)
    assert streamer.ended
    streamed = torch.cat([c.reshape(-1) for c in streamer.chunks[1:]])
    assert torch.equal(streamed, out[0, PROMPT:])


def test_prompt_longer_than_window_and_cache_is_fixed_size(model):
    window = model.config.attention_window_size
    short, long = prompt_ids(window - 2, 15), prompt_ids(5 * window, 16)
    sizes = []
    for prompt in (short, long):
        out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.sequences, _uncached_greedy(model, prompt, NEW))
        sizes.append(getattr(out, CACHE_NAME).nbytes())
    assert sizes[0] == sizes[1]


def test_static_cache_implementation_and_compiled_decode_step(model):
    prompt = prompt_ids(PROMPT, 17)
    static = model.generate(prompt, max_new_tokens=NEW, do_sample=False, cache_implementation="static")
    assert torch.equal(static, _uncached_greedy(model, prompt, NEW))

    # The decode step traces into one graph (no graph breaks) and updates the cache buffers in place.
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache = out.cache
        buffers = [t.data_ptr() for t in cache.state_dict()["tensors"].values()]
        step = torch.compile(model, backend="eager", fullgraph=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([prompt, token], 1)
        for _ in range(3):
            logits = step(token, cache=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, token], 1)
    assert torch.equal(seq, _uncached_greedy(model, prompt, 4))
    assert buffers == [t.data_ptr() for t in cache.state_dict()["tensors"].values()]


def test_compiled_decode_step_compiles_once(model):
    """Nothing a decode step reads changes type or Python value from step to step (the token counter is a
    tensor), so torch.compile builds one graph and never recompiles."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    prompt = prompt_ids(PROMPT, 23)
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        step = torch.compile(model, backend=counting_backend, fullgraph=True)
        for _ in range(5):
            token = step(token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
    assert len(graphs) == 1
    assert cache.seen_tokens == prompt.shape[1] + 5


def test_wrong_cache_type_is_refused(model):
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="GriffinCache"):
        model(prompt_ids(3, 0), cache=DynamicCache(), use_cache=True)


def test_generate_compiles_the_decode_step_with_a_static_cache(model):
    """generate()'s own compile path, asked for with a compile_config on CPU (eager backend, one graph), gives the
    uncompiled tokens; without a compile_config nothing is compiled."""
    from transformers import CompileConfig, GenerationConfig

    from hf_recurrentgemma import GriffinCache

    cache = {CACHE_NAME: GriffinCache(model.config)}  # generate()'s model kwargs
    assert not model._valid_auto_compile_criteria(cache, GenerationConfig())
    assert not model._valid_auto_compile_criteria(cache, GenerationConfig(cache_implementation="static"))
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    assert model._valid_auto_compile_criteria(cache, GenerationConfig(compile_config=config))
    assert config._compile_all_devices is None  # the user's object is left as it was
    assert model._valid_auto_compile_criteria(cache, GenerationConfig(compile_config=config, disable_compile=True)) is False

    prompt = prompt_ids(PROMPT, 19)
    compiled = model.generate(prompt, max_new_tokens=NEW, do_sample=False, cache_implementation="static",
                              compile_config=config)
    assert model.__dict__.get("_compiled_call") is not None
    assert torch.equal(compiled, _uncached_greedy(model, prompt, NEW))


def test_stop_strings():
    import dataclasses

    from reference_helpers import our_config

    from hf_recurrentgemma import GriffinForCausalLM
    from reference_helpers import word_tokenizer

    tokenizer = word_tokenizer()
    torch.manual_seed(1)
    model = GriffinForCausalLM(our_config(dataclasses.replace(CASES[0], vocab_size=len(tokenizer)))).eval()
    inputs = tokenizer("the old ship", return_tensors="pt")
    # Random tied embeddings mostly repeat the last word; forbidding repeats makes every step a new word.
    kwargs = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0, no_repeat_ngram_size=1)
    free = model.generate(**inputs, **kwargs)
    prompt_ids = inputs["input_ids"][0].tolist()
    new = free[0, len(prompt_ids) :].tolist()

    def first_hit(i):  # a whole word whose text first appears in the output at step i
        word = tokenizer.decode([new[i]])
        return (new[i] > 3 and not word.startswith("##") and word not in tokenizer.decode(prompt_ids + new[:i])
                and word in tokenizer.decode(prompt_ids + new[: i + 1]))

    stop_at = next(i for i in range(2, len(new)) if first_hit(i))
    stop = tokenizer.decode([new[stop_at]])
    stopped = model.generate(**inputs, **kwargs, stop_strings=[stop], tokenizer=tokenizer)
    assert stopped[0, inputs["input_ids"].shape[1] :].tolist() == new[: stop_at + 1]


def test_cache_of_another_architecture_is_refused(model):
    other = model.config.to_dict()
    other["attention_window_size"] += 1
    cache = GriffinCache(type(model.config).from_dict(other))
    with pytest.raises(ValueError, match="another architecture"):
        model(prompt_ids(3, 0), cache=cache, use_cache=True)


def test_assisted_and_prompt_lookup_greedy_equal_plain_greedy_on_this_release():
    """Speculative decoding through generate() on every supported Transformers (this file is in the core that CI
    also runs at the oldest one, where a draft's generate() is handed its cache as `past_key_values=`)."""
    model = reference_and_ours(CASES[0], seed=3)[1]
    draft = reference_and_ours(CASES[0], seed=4)[1]
    ids = torch.randint(4, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    plain = model.generate(ids, max_new_tokens=10, do_sample=False)
    for kwargs in (dict(assistant_model=draft), dict(prompt_lookup_num_tokens=3)):
        out = model.generate(ids, max_new_tokens=10, do_sample=False, **kwargs)
        assert torch.equal(out, plain), kwargs

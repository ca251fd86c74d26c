"""Long runs: a streamed generation keeps memory flat and the cache a fixed size; bfloat16 and float16 stay finite
and within a stated distance of float32 over long prompts and decoding.

The default run streams 2k tokens and checks 2k-token prompts; `pytest -m slow` runs the lengths of the issue
(100k streamed tokens, 32k-token prompts), and `HF_RG_SOAK=1` with `-m slow` streams 1M tokens. Figures are
printed (`-s`) and recorded in docs/reliability.md."""

import copy
import os

import pytest
import torch
from reference_helpers import CASES, reference_and_ours
from transformers.generation.streamers import BaseStreamer

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssProbe(BaseStreamer):
    """Counts streamed tokens and records the process RSS and the cache size at the given counts."""

    def __init__(self, at, cache_size):
        self.at, self.cache_size, self.count, self.seen, self.prompt_seen = set(at), cache_size, 0, {}, False

    def put(self, value):
        if not self.prompt_seen:  # generate streams the prompt first
            self.prompt_seen = True
            return
        self.count += value.numel()
        if self.count in self.at:
            self.seen[self.count] = (rss_bytes(), self.cache_size())

    def end(self):
        pass


def stream(model, tokens: int, checkpoints):
    """Greedy generation of `tokens` new tokens through a streamer; {count: (rss, cache bytes)}."""
    from hf_recurrentgemma import GriffinCache

    cache = GriffinCache(model.config)
    probe = RssProbe(checkpoints, cache.nbytes)
    prompt = torch.randint(4, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=probe,
                       cache=cache)
    return probe.seen


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return reference_and_ours(CASES[0], seed=2)[1]


def _report_stream(seen):
    base = min(seen)
    for n in sorted(seen):
        rss, cache = seen[n]
        print(f"  {n:>8} tokens: RSS {rss / 2**20:8.1f} MiB ({(rss - seen[base][0]) / 2**20:+.1f} MiB), "
              f"cache {cache} bytes")


def test_streamed_generation_keeps_memory_flat(model):
    seen = stream(model, 2000, [500, 1000, 2000])
    _report_stream(seen)
    assert len({cache for _, cache in seen.values()}) == 1, "the cache grew"
    growth = seen[2000][0] - seen[500][0]
    # generate's own output ids and mask grow by 16 bytes a token (24 KiB here); everything else must stay put.
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB from 500 to 2000 tokens"


@pytest.mark.slow
def test_streamed_generation_100k_or_soak(model):
    total = 1_000_000 if os.environ.get("HF_RG_SOAK") else 100_000
    checkpoints = [1_000, 10_000, 100_000] + ([1_000_000] if total > 100_000 else [])
    seen = stream(model, total, checkpoints)
    _report_stream(seen)
    assert len({cache for _, cache in seen.values()}) == 1
    growth = seen[total][0] - seen[10_000][0]
    # The output ids (8 bytes a token) and the attention mask generate keeps (8 bytes a token) grow linearly.
    assert growth < 16 * total + 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB from 10k to {total} tokens"


def low_precision_errors(model, dtype, prompt_len: int, decode_steps: int):
    """Max |logit - float32 logit| over a prompt of `prompt_len` tokens and `decode_steps` decoding steps fed the
    same tokens (teacher forcing), with the model in `dtype` (the RG-LRU state stays float32 in every dtype)."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 97, (1, prompt_len + decode_steps), generator=gen)
    results = {}
    for dt in (torch.float32, dtype):
        # A cast copy: casting the shared model down and back would leave its weights rounded for later tests.
        m = model if dt == torch.float32 else copy.deepcopy(model).to(dt)
        with torch.no_grad():
            out = m(tokens[:, :prompt_len], use_cache=True, logits_to_keep=256)
            logits = [out.logits.float()]
            for t in range(prompt_len, prompt_len + decode_steps):
                out = m(tokens[:, t : t + 1], cache=out.cache, use_cache=True)
                logits.append(out.logits.float())
            results[dt] = torch.cat(logits, dim=1)
            state = out.cache.state_dict()["tensors"]
            state_dtypes = {t.dtype for name, t in state.items() if name.endswith(".rg_lru")}
            assert state_dtypes == {torch.float32}, state_dtypes
    low = results[dtype]
    assert torch.isfinite(low).all(), f"{dtype}: NaN or Inf in logits"
    return (low - results[torch.float32]).abs().max().item()


# Stated bounds on |logit - float32 logit| (logits soft-capped at 30): about twice the error measured on a 2k
# prompt (bfloat16 0.50, float16 0.115: 8 and 11 bits of mantissa); the 32k run must stay within the same bound,
# i.e. the error does not grow with length, because the recurrent state is float32 (docs/reliability.md). The
# float16 figure was 0.050 while this test cast the shared model to bfloat16 and back: float16 then ran on weights
# already rounded to 8 bits, which it holds exactly.
BOUNDS = {torch.bfloat16: 1.0, torch.float16: 0.25}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_low_precision_2k_prompt_and_decode(model, dtype):
    err = low_precision_errors(model, dtype, 2048, 16)
    print(f"\n  {dtype}: max |logit error| vs float32 over 2k prompt + 16 steps: {err:.3g}")
    assert err <= BOUNDS[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_low_precision_32k_prompt_and_decode(model, dtype):
    err = low_precision_errors(model, dtype, 32768, 256)
    print(f"\n  {dtype}: max |logit error| vs float32 over 32k prompt + 256 steps: {err:.3g}")
    assert err <= BOUNDS[dtype]

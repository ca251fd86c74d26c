"""Big-model inference through accelerate: `from_pretrained(device_map="auto", max_memory=..., offload_folder=...)`
splits the model at `_no_split_modules` boundaries (whole `GriffinDecoderLayer`s) and streams offloaded weights
in from CPU memory or disk for each layer. The split model must compute what the plain one does: the same
functions on the same device, with weights read from the offload files at other addresses, where a BLAS may take
another code path and sum in another order (seen on an AVX2 CPU: 1.5e-6), so within KERNEL_TOL, not bit for bit.

This machine has no accelerator, so the split here is CPU memory vs disk (accelerate's offload hooks run in both
cases; only the execution device differs). The state a layer returns is moved with its inputs by the same hooks.
"""

import pytest
import torch
from accelerate.utils import compute_module_sizes

from hf_recurrentgemma import GriffinCache, GriffinConfig, GriffinForCausalLM
from reference_helpers import KERNEL_TOL, assert_close

# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = pytest.mark.kernels


def _config() -> GriffinConfig:
    return GriffinConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4, attention_window_size=6,
        block_types=["recurrent", "recurrent", "attention", "recurrent", "attention", "recurrent"],
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A perturbed tiny model (so zero-initialised norms and biases matter) and its saved folder."""
    torch.manual_seed(0)
    model = GriffinForCausalLM(_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp("griffin")
    model.save_pretrained(folder)
    return model, folder


def _split(folder, tmp_path, fraction: float):
    """The saved model loaded with `fraction` of its bytes allowed in CPU memory, the rest offloaded to disk."""
    size = compute_module_sizes(GriffinForCausalLM(_config()))[""]
    model = GriffinForCausalLM.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": int(size * fraction)}, offload_folder=tmp_path / "offload",
    )
    return model.eval()


def test_auto_device_map_splits_at_decoder_layers(saved, tmp_path):
    _, folder = saved
    model = _split(folder, tmp_path, 0.5)
    placement = model.hf_device_map
    # Both kinds of offload in one model, and never a split inside a decoder layer.
    assert {"cpu", "disk"} <= set(placement.values()), placement
    assert all(".layers." not in name or name.count(".") == 2 for name in placement), placement


def test_everything_on_disk_gives_the_plain_logits(saved, tmp_path):
    plain, folder = saved
    model = _split(folder, tmp_path, 0.0)
    assert set(model.hf_device_map.values()) == {"disk"}
    tokens = torch.randint(0, 97, (2, 20))  # longer than the window (6): attention state rolls over
    with torch.no_grad():
        assert_close(model(tokens).logits, plain(tokens).logits, tol=KERNEL_TOL)


def test_offloaded_logits_and_generations_equal_plain(saved, tmp_path):
    plain, folder = saved
    model = _split(folder, tmp_path, 0.5)  # some layers in CPU memory, the rest on disk
    tokens = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert_close(model(tokens).logits, plain(tokens).logits, tol=KERNEL_TOL)

    # Greedy and beam search go through the cache (reorder_cache moves state between rows); left padding too.
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    for kwargs in (dict(do_sample=False), dict(do_sample=False, num_beams=3)):
        expected = plain.generate(tokens[:, :8], attention_mask=mask, max_new_tokens=12, **kwargs)
        actual = model.generate(tokens[:, :8], attention_mask=mask, max_new_tokens=12, **kwargs)
        assert torch.equal(actual, expected), kwargs


def test_offloaded_cache_continues_like_plain(saved, tmp_path):
    """Prefill, then decode step by step through a returned GriffinCache: every state tensor the offloaded model
    leaves in the cache sits where its layer computes (CPU here) and equals the plain model's."""
    plain, folder = saved
    model = _split(folder, tmp_path, 0.5)
    tokens = torch.randint(0, 97, (1, 14))
    caches = []
    for m in (plain, model):
        with torch.no_grad():
            out = m(tokens[:, :9], use_cache=True)
            for t in range(9, 14):
                out = m(tokens[:, t : t + 1], cache=out.cache, use_cache=True)
        assert isinstance(out.cache, GriffinCache)
        caches.append(out)
    assert_close(caches[1].logits, caches[0].logits, tol=KERNEL_TOL)
    plain_state, split_state = (c.cache.state_dict()["tensors"] for c in caches)
    assert plain_state.keys() == split_state.keys()
    for name, a in plain_state.items():
        b = split_state[name]
        assert b.device.type == "cpu", name
        if a.dtype == torch.bool:  # which window slots are visible: no arithmetic, so exact
            assert torch.equal(a, b), name
        else:
            assert_close(b, a, tol=KERNEL_TOL, what=name)

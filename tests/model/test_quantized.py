"""Quantized Griffin models (torchao int8 / int4 weight-only, `hf_recurrentgemma.quantization`): the Transformers
way (`from_pretrained(..., quantization_config=TorchAoConfig(...))`) and `quantize_()` give the same model, every
linear layer and the head run through `cpu_quant_griffin` when decoding, the embedding stays exact, int8 folders
save and load back unchanged, and the quantized model stays near the bfloat16 one."""

import pytest
import torch
from command_helpers import tiny_model

pytest.importorskip("torchao")
from hf_recurrentgemma import GriffinForCausalLM  # noqa: E402
from hf_recurrentgemma.griffin import cpu_quant_griffin as Q  # noqa: E402
from hf_recurrentgemma.quantization import load_quantized, quantization_config, quantize_model  # noqa: E402

SHAPE = dict(hidden_size=64, intermediate_size=128, vocab_size=128)  # every linear fits int4 groups of 32
IDS = torch.tensor([[2, 40, 41, 42, 43, 50, 60, 7]])
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16") / "model"
    tiny_model(seed=2, **SHAPE).bfloat16().save_pretrained(path)
    return path


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_loading_quantized_equals_quantize_after_loading(folder, fmt):
    loaded = load_quantized(folder, fmt, 32)
    after = quantize_model(GriffinForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval(), fmt, 32)
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    assert type(loaded.model.embed_tokens.weight) is torch.nn.Parameter
    linears = [m for m in loaded.modules() if isinstance(m, torch.nn.Linear)]
    assert all(Q.quant_format(m.weight) == fmt for m in linears), "every linear and the head are quantized"
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, after(IDS).logits)


def test_transformers_torchao_config_quantizes_the_linear_layers(folder):
    model = GriffinForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                               quantization_config=quantization_config(
                                                   GriffinForCausalLM.config_class.from_pretrained(folder), "int8"))
    blocks = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    assert blocks and all(Q.quant_format(m.weight) == "int8" for m in blocks)


@pytest.mark.kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_a_decode_step_runs_every_linear_and_the_head_through_the_kernel(folder, fmt, monkeypatch):
    from kernel_helpers import force_variant

    variant = Q.supported_variants()[-1]
    if variant == "scalar":
        pytest.skip("no vector variant on this CPU: the quantized products run torchao's own paths")
    force_variant(monkeypatch, variant)
    model = load_quantized(folder, fmt, 32)
    calls = []
    real = Q.linear_rows
    monkeypatch.setattr(Q, "linear_rows", lambda x, w, b, v: calls.append(w) or real(x, w, b, v))
    with torch.no_grad():
        out = model(IDS[:, :4], use_cache=True)
        calls.clear()
        step = model(IDS[:, 4:5], cache=out.cache, use_cache=True).logits
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(calls) == len(linears) and {id(w) for w in calls} == {id(w) for w in linears}
    assert step.dtype == torch.bfloat16 and bool(torch.isfinite(step).all())


def test_int8_folder_saves_and_loads_back_unchanged(folder, tmp_path):
    model = load_quantized(folder, "int8")
    model.save_pretrained(tmp_path / "int8")
    back = GriffinForCausalLM.from_pretrained(tmp_path / "int8")
    assert Q.quant_format(back.lm_head.weight) == "int8"
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("fmt,tolerance", [("int8", 0.05), ("int4", 0.5)])
def test_quantized_logits_stay_near_bfloat16(folder, fmt, tolerance):
    """Not a quality figure (docs/performance.md has those): a gross layout or routing mistake would move the
    logits by their own size (~4 here); int8 per-row and int4 groups of 32 move them by a few hundredths / tenths."""
    reference = GriffinForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        expected = reference(IDS).logits.float()
        got = load_quantized(folder, fmt, 32)(IDS).logits.float()
    error = float((got - expected).abs().max())
    assert error < tolerance * float(expected.abs().max()), f"{fmt}: max logit error {error:.3f}"


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantizing_in_row_chunks_equals_quantizing_whole(fmt):
    """`quantize_rows` (how the head is quantized: no full-precision copy, small temporaries) joins torchao tensors
    that equal the whole weight's quantization: same codes and scales, same products."""
    from torchao.quantization import quantize_

    from hf_recurrentgemma.griffin import cpu_quant_griffin as Q
    from hf_recurrentgemma.quantization import quantize_rows, torchao_config

    weight = torch.randn(640, 256, dtype=torch.bfloat16)
    whole = torch.nn.Linear(256, 640, bias=False, dtype=torch.bfloat16)
    whole.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    quantize_(whole, torchao_config(fmt, 64))
    joined = quantize_rows(weight, fmt, 64, chunk_rows=192)  # 192, 192, 192 and a last chunk of 64 rows
    assert type(joined) is type(whole.weight) and joined.shape == whole.weight.shape
    assert torch.equal(Q.dequantize(joined), Q.dequantize(whole.weight))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(Q.linear_quantized(x, joined), Q.linear_quantized(x, whole.weight))
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_rows(weight, fmt, 64, chunk_rows=100)


def test_streaming_load_reads_shard_by_shard_and_names_a_bad_tensor(folder, tmp_path):
    """A plain local folder is read shard by shard (`_load_streaming`, which closes each shard's map): the same
    model as through Transformers' loader; an unknown or misshapen tensor is an error naming it and its file, and
    the folder is left as it was."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hf_recurrentgemma import quantization

    config = GriffinForCausalLM.config_class.from_pretrained(folder)
    assert quantization._plain_shards(str(folder), config)  # the streaming path is taken for this folder
    streamed = load_quantized(folder, "int8")
    through_transformers = load_quantized(folder, "int8", trust_remote_code=False)  # any option: from_pretrained
    with torch.no_grad():
        assert torch.equal(streamed(IDS).logits, through_transformers(IDS).logits)
    for change, message in ((lambda t: {**t, "model.extra.weight": torch.zeros(2)}, "model.extra.weight"),
                            (lambda t: {**t, "model.final_norm.weight": torch.zeros(3)}, "has shape")):
        bad = tmp_path / message.replace(" ", "_")
        shutil.copytree(folder, bad)
        tensors = change(load_file(bad / "model.safetensors"))
        save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
        before = (bad / "model.safetensors").read_bytes()
        with pytest.raises(ValueError, match=message) as error:
            load_quantized(bad, "int8")
        assert "model.safetensors" in str(error.value)
        assert (bad / "model.safetensors").read_bytes() == before

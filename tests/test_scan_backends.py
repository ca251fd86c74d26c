"""Every fast RG-LRU scan backend against the sequential reference: outputs, final state and the gradients of
x, a and h0, with document resets, in float32 and bfloat16; plus how `auto` chooses and falls back."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from hf_recurrentgemma import ops_griffin
from hf_recurrentgemma.ops_griffin import SCAN_BACKENDS, rnn_scan, rnn_scan_sequential
from hf_recurrentgemma.cpu_kernels_griffin import kernel_error

# The CPU backends; "triton" runs on CUDA tensors only and is tested in test_scan_triton.py (interpreter and GPU).
FAST_BACKENDS = [name for name in SCAN_BACKENDS if name not in ("sequential", "triton")]
SHAPES = [(1, 2, 3), (2, 37, 300), (3, 129, 257)]  # odd sizes: partial channel blocks, one-token and short runs


def scan_inputs(batch, seq_len, width, dtype, reset_every=11):
    x = torch.randn(batch, seq_len, width).to(dtype)
    a = torch.rand(batch, seq_len, width).to(dtype)
    a[:, ::reset_every] = 0  # document starts
    h0 = torch.randn(batch, width)
    return x, a, h0


def run(backend, x, a, h0, dy, dh):
    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    y, h = backend(*leaves)
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    return y, h, [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}-T{t}-L{l}" for b, t, l in SHAPES])
@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_backend_equals_sequential_reference(name, shape, dtype):
    x, a, h0 = scan_inputs(*shape, dtype)
    dy, dh = torch.randn(shape), torch.randn(shape[0], shape[2])
    ref = run(rnn_scan_sequential, x, a, h0, dy, dh)
    fast = run(SCAN_BACKENDS[name], x, a, h0, dy, dh)
    # Same float32 operations in the same order, so equal to the last bit (no tolerance to hide a bug behind).
    for what, r, f in [("y", ref[0], fast[0]), ("h_last", ref[1], fast[1])] + [
        (f"grad {n}", r, f) for n, r, f in zip(("x", "a", "h0"), ref[2], fast[2])
    ]:
        assert f.dtype == r.dtype and f.shape == r.shape, what
        assert torch.equal(f, r), f"{what}: max error {(f.float() - r.float()).abs().max().item():.3g}"


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_backend_inference_mode_and_no_grad_outputs(name):
    x, a, h0 = scan_inputs(2, 50, 70, torch.float32)
    ref_y, ref_h = rnn_scan_sequential(x, a, h0)
    with torch.inference_mode():
        y, h = SCAN_BACKENDS[name](x, a, h0)
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)
    assert h.dtype == torch.float32


def test_cpu_kernel_op_registration_is_consistent():
    """torch.library's own checks of the custom ops: fake (meta) kernels, autograd registration, schema."""
    from hf_recurrentgemma import cpu_kernels_griffin as k

    x, a, h0 = scan_inputs(2, 9, 5, torch.float32)
    torch.library.opcheck(k._rnn_scan_op, (x, a, h0))
    torch.library.opcheck(k._rnn_scan_states_op, (x.requires_grad_(), a.requires_grad_(), h0.requires_grad_()))


def test_cpu_kernel_traces_under_torch_compile():
    x, a, h0 = scan_inputs(1, 16, 8, torch.float32)
    compiled = torch.compile(lambda *t: rnn_scan(*t, backend="cpu_kernel"), backend="aot_eager", fullgraph=True)
    y, h = compiled(x, a, h0)
    ref_y, ref_h = rnn_scan_sequential(x, a, h0)
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)


def test_single_step_is_inline_and_equal():
    x, a, h0 = scan_inputs(3, 1, 10, torch.bfloat16)
    for name in ["auto", *SCAN_BACKENDS]:
        y, h = rnn_scan(x, a, h0, backend=name)
        ref_y, ref_h = rnn_scan_sequential(x, a, h0)
        assert torch.equal(y, ref_y) and torch.equal(h, ref_h), name


def test_auto_picks_the_cpu_kernel_when_it_builds():
    assert kernel_error() is None, f"the kernel should build on the test machines: {kernel_error()}"
    assert ops_griffin.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "cpu_kernel"


def test_auto_falls_back_to_sequential_with_one_warning(monkeypatch):
    monkeypatch.setattr(ops_griffin, "kernel_error", lambda: "no C compiler found")
    monkeypatch.setattr(ops_griffin, "_auto_choice", {})
    x, a, h0 = scan_inputs(1, 5, 4, torch.float32)
    with pytest.warns(RuntimeWarning, match="no C compiler found.*sequential"):
        y, h = rnn_scan(x, a, h0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        rnn_scan(x, a, h0)
    assert torch.equal(y, rnn_scan_sequential(x, a, h0)[0])


def test_explicit_backend_that_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(ops_griffin, "kernel_error", lambda: "no C compiler found")
    x, a, h0 = scan_inputs(1, 5, 4, torch.float32)
    with pytest.raises(ValueError, match="'cpu_kernel' cannot run here: no C compiler found"):
        rnn_scan(x, a, h0, backend="cpu_kernel")


def test_broken_compiler_gives_a_named_error(tmp_path):
    """A compiler that fails: the kernel reports why, and the model still runs on the sequential scan."""
    code = (
        "import warnings, torch\n"
        "from hf_recurrentgemma.cpu_kernels_griffin import kernel_error\n"
        "from hf_recurrentgemma.ops_griffin import rnn_scan\n"
        "print('ERROR:', kernel_error())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y, h = rnn_scan(torch.ones(1, 3, 2), torch.ones(1, 3, 2), torch.zeros(1, 2))\n"
        "print('WARNINGS:', len(w), 'H:', h.tolist())\n"
    )
    env = {**os.environ, "CC": "false", "HF_RECURRENTGEMMA_KERNEL_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "ERROR: " in out and "failed to build the scan kernel" in out
    assert "WARNINGS: 1 H: [[3.0, 3.0]]" in out


def test_config_names_an_unknown_scan_backend():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from hf_recurrentgemma import GriffinConfig

    with pytest.raises(StrictDataclassClassValidationError, match="scan_backend must be one of"):
        GriffinConfig(hidden_size=64, intermediate_size=96, num_attention_heads=2, vocab_size=32,
                      num_hidden_layers=1, scan_backend="fast")


# --- the bfloat16 matrix-vector kernel of decode-time linear layers ----------------------------------------------

from hf_recurrentgemma import cpu_kernels_griffin  # noqa: E402
from hf_recurrentgemma.cpu_kernels_griffin import (  # noqa: E402
    gemv_applies,
    gemv_avx512_available,
    gemv_bf16_available,
    gemv_kind,
    linear_cpu,
)

needs_gemv = pytest.mark.skipif(not gemv_bf16_available(), reason="this CPU has no AVX-512 BF16")


@needs_gemv
@pytest.mark.parametrize("out_features,in_features", [(1, 1), (5, 31), (7, 33), (96, 64), (130, 700)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gemv_equals_float32_linear_rounded_once(out_features, in_features, bias):
    """Row counts that are not multiples of 4 and widths that are not multiples of 32 take the tail paths."""
    x = torch.randn(1, 1, in_features).bfloat16()
    weight = torch.randn(out_features, in_features).bfloat16()
    b = torch.randn(out_features).bfloat16() if bias else None
    with torch.inference_mode():
        assert gemv_applies(x, weight)
        y = linear_cpu(x, weight, b)
    exact = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    assert y.dtype == torch.bfloat16 and y.shape == (1, 1, out_features)
    # float32 accumulation, one rounding to bfloat16: within one bfloat16 ulp of the exact result.
    ulp = exact.abs().clamp_min(1e-30) * 2.0**-7
    assert ((y.double() - exact).abs() <= ulp + 1e-6 * in_features).all()


def test_gemv_only_where_it_applies():
    w = torch.randn(8, 64).bfloat16()
    with torch.inference_mode():
        assert not gemv_applies(torch.randn(2, 64).bfloat16(), w)  # two rows: torch's GEMM
        assert not gemv_applies(torch.randn(1, 64), w)  # mixed dtypes: F.linear says what it thinks
        assert not gemv_applies(torch.randn(1, 64).bfloat16(), w.t().contiguous().t())  # not contiguous
        assert gemv_kind(torch.randn(1, 1, 64), w.float()) == ("f32" if gemv_avx512_available() else None)
    w.requires_grad_()
    assert not gemv_applies(torch.randn(1, 64).bfloat16(), w)  # training: autograd through F.linear


needs_avx512 = pytest.mark.skipif(not gemv_avx512_available(), reason="this CPU has no AVX-512F")


@needs_avx512
@pytest.mark.parametrize("out_features,in_features", [(1, 1), (5, 31), (7, 33), (130, 700)], ids=lambda v: str(v))
def test_float32_gemv_equals_linear(out_features, in_features):
    x, w, b = torch.randn(1, 1, in_features), torch.randn(out_features, in_features), torch.randn(out_features)
    with torch.inference_mode():
        assert gemv_kind(x, w) == "f32"
        y = linear_cpu(x, w, b)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
    # float32 accumulation in another order than torch's: a few float32 ulps of the terms' magnitude.
    bound = 4 * in_features * 2.0**-24 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    assert ((y.double() - exact).abs() <= bound).all()


@needs_avx512
@pytest.mark.parametrize("zero_point", [False, True], ids=["symmetric", "zero-point"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_int8_gemv_kernel(dtype, zero_point):
    """y = x (scale (q - zero))^T + bias, within one rounding to x's dtype (float32 accumulation)."""
    qdata = torch.randint(-127, 128, (130, 700), dtype=torch.int8)
    scale = torch.rand(130, 1) * 0.01
    zero = torch.randint(-3, 4, (130, 1), dtype=torch.int8) if zero_point else None
    x, bias = torch.randn(1, 1, 700).to(dtype), torch.randn(130).to(dtype)
    with torch.inference_mode():
        y = cpu_kernels_griffin._gemv_int8_op(x, qdata, scale, zero, bias)
    weight = (qdata.double() - (zero.double() if zero_point else 0)) * scale.double()
    exact = torch.nn.functional.linear(x.double(), weight, bias.double())
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 1e-5
    assert y.dtype == dtype and (y.double() - exact).abs().max() <= ulp * exact.abs().max()


@needs_avx512
def test_torchao_int8_layer_decodes_through_the_kernel():
    """torchao's weight-only int8 (one scale per row) is recognised, and gives torchao's own result within one
    bfloat16 rounding."""
    torchao = pytest.importorskip("torchao.quantization")
    from hf_recurrentgemma.layers_griffin import GriffinLinear

    layer = GriffinLinear(700, 130).to(torch.bfloat16)
    torchao.quantize_(layer, torchao.Int8WeightOnlyConfig())
    x = torch.randn(1, 1, 700).to(torch.bfloat16)
    with torch.inference_mode():
        assert gemv_kind(x, layer.weight) == "int8"
        ours = layer(x)
        theirs = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert (ours.float() - theirs.float()).abs().max() <= 2 * 2.0**-7 * theirs.abs().max()

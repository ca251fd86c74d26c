"""Every fast RG-LRU scan backend of the registry against the sequential reference: outputs, final state and the
gradients of x, a and h0, with document resets, in float32 and bfloat16, the C kernel in every variant this CPU
runs; plus how `auto` chooses and falls back (no compiler, kernels switched off)."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from kernel_helpers import SCAN_VARIANTS_HERE, force_variant

from hf_recurrentgemma.griffin import ops_griffin
from hf_recurrentgemma.griffin.cpu_scan_griffin import scan_kernel_error, scan_variant
from hf_recurrentgemma.griffin.ops_griffin import SCAN_BACKEND_REGISTRY, SCAN_BACKENDS, rnn_scan, rnn_scan_sequential

pytestmark = pytest.mark.kernels

# The CPU backends of the registry, the C kernel once per variant this CPU runs ("triton" is the CUDA backend,
# tested in test_scan_triton.py).
CASES = [(b.name, v) for b in SCAN_BACKEND_REGISTRY if b.auto_for == "cpu" for v in SCAN_VARIANTS_HERE]
CASE_IDS = [f"{name}-{variant}" for name, variant in CASES]
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
@pytest.mark.parametrize("name,variant", CASES, ids=CASE_IDS)
def test_backend_equals_sequential_reference(name, variant, shape, dtype, monkeypatch):
    force_variant(monkeypatch, variant)
    assert scan_variant() == variant
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


@pytest.mark.parametrize("name,variant", CASES, ids=CASE_IDS)
def test_backend_inference_mode_and_no_grad_outputs(name, variant, monkeypatch):
    force_variant(monkeypatch, variant)
    x, a, h0 = scan_inputs(2, 50, 70, torch.float32)
    ref_y, ref_h = rnn_scan_sequential(x, a, h0)
    with torch.inference_mode():
        y, h = SCAN_BACKENDS[name](x, a, h0)
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)
    assert h.dtype == torch.float32


def test_cpu_kernel_op_registration_is_consistent(monkeypatch):
    """torch.library's own checks of the custom ops: fake (meta) kernels, autograd registration, schema."""
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    from hf_recurrentgemma.griffin import cpu_scan_griffin as k

    x, a, h0 = scan_inputs(2, 9, 5, torch.float32)
    torch.library.opcheck(k._rnn_scan_op, (x, a, h0))
    torch.library.opcheck(k._rnn_scan_states_op, (x.requires_grad_(), a.requires_grad_(), h0.requires_grad_()))


def test_cpu_kernel_traces_under_torch_compile(monkeypatch):
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
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


def test_auto_picks_the_cpu_kernel_when_it_builds(monkeypatch):
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    assert scan_kernel_error() is None, f"the kernel should build on the test machines: {scan_kernel_error()}"
    assert ops_griffin.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "cpu_kernel"


def test_auto_falls_back_to_sequential_with_one_warning(monkeypatch, tmp_path):
    """No compiler in this process (a new build configuration): one warning, from the build, then the
    sequential scan."""
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # nor cc, gcc or clang
    monkeypatch.setattr(ops_griffin, "_auto_choice", {})
    x, a, h0 = scan_inputs(1, 5, 4, torch.float32)
    with pytest.warns(RuntimeWarning, match="cannot be built here .scan: no C compiler found.*torch paths"):
        y, h = rnn_scan(x, a, h0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        rnn_scan(x, a, h0)
    assert torch.equal(y, rnn_scan_sequential(x, a, h0)[0])
    with pytest.raises(ValueError, match="'cpu_kernel' cannot run here: no C compiler found"):
        rnn_scan(x, a, h0, backend="cpu_kernel")


@pytest.mark.parametrize("switch", ["off", "scan", "scan,gemv"])
def test_switched_off_kernel_falls_back_silently(monkeypatch, switch):
    """HF_RECURRENTGEMMA_CPU_KERNELS: `auto` takes the sequential scan without a warning (the user asked), a named
    cpu_kernel is refused with the reason, and switching back on takes effect in the same process."""
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", switch)
    x, a, h0 = scan_inputs(2, 9, 5, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops_griffin.resolve_scan_backend("auto", x.device, x.dtype) == "sequential"
        y, h = rnn_scan(x, a, h0)
    assert torch.equal(y, rnn_scan_sequential(x, a, h0)[0])
    with pytest.raises(ValueError, match="cannot run here: switched off by HF_RECURRENTGEMMA_CPU_KERNELS"):
        rnn_scan(x, a, h0, backend="cpu_kernel")
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", "gemv")  # only the other kernel off
    assert ops_griffin.resolve_scan_backend("auto", x.device, x.dtype) == "cpu_kernel"


def test_registry_is_the_one_list_of_backends():
    """The config accepts exactly the registry's names (and auto); each entry says why it cannot run on a device."""
    from hf_recurrentgemma.griffin import configuration_griffin

    assert configuration_griffin.SCAN_BACKEND_NAMES == ("auto", *(b.name for b in SCAN_BACKEND_REGISTRY))
    assert list(SCAN_BACKENDS) == [b.name for b in SCAN_BACKEND_REGISTRY]
    assert ops_griffin.scan_backend_available("triton", torch.device("cpu")) == (
        "the triton backend runs on CUDA tensors, not cpu")
    assert "unknown scan backend 'nope'" in ops_griffin.scan_backend_available("nope", torch.device("cpu"))


def test_broken_compiler_gives_a_named_error(tmp_path):
    """A compiler that fails: the kernel reports why, and the model still runs on the sequential scan."""
    code = (
        "import warnings, torch\n"
        "from hf_recurrentgemma.griffin.cpu_scan_griffin import scan_kernel_error\n"
        "from hf_recurrentgemma.griffin.cpu_matvec_griffin import linear_cpu\n"
        "from hf_recurrentgemma.griffin.ops_griffin import rnn_scan\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y, h = rnn_scan(torch.ones(1, 3, 2), torch.ones(1, 3, 2), torch.zeros(1, 2))\n"
        "    with torch.inference_mode():\n"
        "        linear_cpu(torch.ones(1, 4), torch.ones(2, 4))  # the other kernel fails too: no second warning\n"
        "print('ERROR:', scan_kernel_error())\n"
        "print('WARNINGS:', len(w), 'H:', h.tolist())\n"
    )
    env = {**os.environ, "CC": "false", "HF_RECURRENTGEMMA_KERNEL_DIR": str(tmp_path)}
    env.pop("HF_RECURRENTGEMMA_CPU_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "ERROR: " in out and "failed to build the scan kernel" in out
    assert "WARNINGS: 1 H: [[3.0, 3.0]]" in out


def test_config_names_an_unknown_scan_backend():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from hf_recurrentgemma import GriffinConfig

    with pytest.raises(StrictDataclassClassValidationError, match="scan_backend must be one of"):
        GriffinConfig(hidden_size=64, intermediate_size=96, num_attention_heads=2, vocab_size=32,
                      num_hidden_layers=1, scan_backend="fast")

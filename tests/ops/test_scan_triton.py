"""The Triton scan backend (`scan_triton_griffin.py`) against the sequential reference: outputs, final state and
the gradients of x, a and h0, with document resets and odd sizes, in float32 and bfloat16; and how the dispatcher
offers it (CUDA only, `auto` on CUDA, one warning when triton is missing).

Without a GPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`, which must be set before the kernels
are decorated, hence a subprocess). With a GPU, `test_cuda_kernel_equals_sequential_reference` runs the compiled
kernels.
"""

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch

from hf_recurrentgemma.griffin import ops_griffin, scan_triton_griffin
from hf_recurrentgemma.griffin.ops_griffin import rnn_scan, rnn_scan_sequential

needs_triton = pytest.mark.skipif(scan_triton_griffin.triton is None, reason="triton is not installed")

# (B, T, L, dtype, with autograd). L = 130 and 200 on CPU: two channel blocks of 128, the second partial.
CASES = [
    (1, 2, 3, torch.float32, True),
    (2, 37, 200, torch.float32, True),
    (2, 37, 200, torch.bfloat16, True),
    (3, 23, 130, torch.bfloat16, True),
    (2, 19, 130, torch.float32, False),
    (2, 19, 130, torch.bfloat16, False),
]
CASE_IDS = [f"B{b}-T{t}-L{l}-{str(d)[6:]}-{'grad' if g else 'nograd'}" for b, t, l, d, g in CASES]


def scan_inputs(batch, seq_len, width, dtype, seed=0, reset_every=11, device="cpu"):
    """x, a with document starts every `reset_every` steps (a = 0), h0, and the upstream gradients dy, dh."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, width, generator=gen).to(dtype)
    a = torch.rand(batch, seq_len, width, generator=gen).to(dtype)
    a[:, ::reset_every] = 0
    h0 = torch.randn(batch, width, generator=gen)
    dy, dh = torch.randn(batch, seq_len, width, generator=gen), torch.randn(batch, width, generator=gen)
    return [t.to(device) for t in (x, a, h0, dy, dh)]


def run(scan, x, a, h0, dy, dh, grad=True):
    """(y, h_last, dx, da, dh0) of `scan`, or (y, h_last) without autograd."""
    if not grad:
        with torch.no_grad():
            return scan(x, a, h0)
    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    y, h = scan(*leaves)
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    return (y, h, *[t.grad for t in leaves])


def assert_matches(results, reference, float32_tol):
    """float32 tensors within `float32_tol` of the reference (relative to its largest magnitude); bfloat16 tensors
    within one bfloat16 ulp of it, element by element. Returns the errors measured, by name."""
    errors = {}
    for what, fast, ref in zip(("y", "h_last", "dx", "da", "dh0"), results, reference):
        assert fast.dtype == ref.dtype and fast.shape == ref.shape, what
        diff = (fast.float() - ref.float()).abs()
        if ref.dtype == torch.bfloat16:
            _, exponent = torch.frexp(ref.float())
            ulps = (diff / torch.ldexp(torch.ones_like(diff), exponent - 8)).max().item()
            errors[what] = f"{ulps:.2g} ulp"
            assert ulps <= 1, f"{what}: {ulps:.3g} bfloat16 ulps from the reference"
        else:
            err = diff.max().item() / max(1.0, ref.abs().max().item())
            errors[what] = f"{err:.2g}"
            assert err <= float32_tol, f"{what}: relative error {err:.3g} > {float32_tol:.1g}"
    return errors


# Runs in the subprocess: `run` above, repeated because importing this file would import the package.
_INTERPRETER_SCRIPT = """
import importlib, os, sys, types, torch
# The model files as a bare package of flat siblings, as Hub remote code loads them (no hf_recurrentgemma import).
package = types.ModuleType("griffin_files")
package.__path__ = [os.path.dirname(sys.argv[1])]
sys.modules["griffin_files"] = package
module = importlib.import_module("griffin_files.scan_triton_griffin")
results = {}
for name, ((x, a, h0, dy, dh), grad) in torch.load(sys.argv[2]).items():
    if not grad:
        results[name] = module.rnn_scan_triton(x, a, h0)
        continue
    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    y, h = module.rnn_scan_triton(*leaves)
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    results[name] = (y, h, *[t.grad for t in leaves])
# torch.library's own checks of the custom ops (fake kernels, autograd registration, schema), interpreted.
x, a, h0 = torch.randn(2, 5, 7), torch.rand(2, 5, 7), torch.randn(2, 7)
torch.library.opcheck(module._rnn_scan_op, (x, a, h0))
torch.library.opcheck(module._rnn_scan_states_op, (x.requires_grad_(), a.requires_grad_(), h0.requires_grad_()))
results["opcheck"] = "passed"
torch.save(results, sys.argv[3])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Every case run through the Triton kernels in the interpreter, in one subprocess (startup costs seconds).
    The module is loaded from its file, without the package (which imports Transformers): it imports only torch
    and triton, as Hub remote code must."""
    folder = tmp_path_factory.mktemp("triton")
    cases = {name: (scan_inputs(b, t, l, d), g) for name, (b, t, l, d, g) in zip(CASE_IDS, CASES)}
    torch.save(cases, folder / "inputs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-c", _INTERPRETER_SCRIPT, scan_triton_griffin.__file__, str(folder / "inputs.pt"),
               str(folder / "outputs.pt")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return cases, torch.load(folder / "outputs.pt")


@needs_triton
@pytest.mark.parametrize("name", CASE_IDS)
def test_interpreted_kernel_equals_sequential_reference(interpreted, name):
    cases, results = interpreted
    tensors, grad = cases[name]
    reference = run(rnn_scan_sequential, *tensors, grad=grad)
    # The same float32 operations in the same order (no fused multiply-add), so equal to the last bit, except one
    # case: without autograd the kernel writes bfloat16 y itself, and the interpreter's float32 -> bfloat16 cast
    # truncates where torch (and the GPU) round to nearest, so y may be one ulp off there; the float32 state
    # before that cast, which h_last shows, is exact. (With autograd the kernel writes float32 states and torch
    # casts them, so bfloat16 results are exact too.)
    errors = assert_matches(results[name], reference, float32_tol=0.0)
    print(name, errors)


@needs_triton
def test_interpreted_custom_ops_pass_opcheck(interpreted):
    assert interpreted[1]["opcheck"] == "passed"


# --- the dispatcher -------------------------------------------------------------------------------------------------


def test_explicit_triton_backend_is_refused_on_cpu():
    x, a, h0, _, _ = scan_inputs(1, 5, 4, torch.float32)
    with pytest.raises(ValueError, match="'triton' cannot run here: the triton backend runs on CUDA tensors, not cpu"):
        rnn_scan(x, a, h0, backend="triton")


def test_module_imports_without_triton_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("hf_recurrentgemma.griffin.scan_triton_without_triton",
                                                  scan_triton_griffin.__file__)
    module = importlib.util.module_from_spec(spec)  # a sibling in the package, so its relative imports resolve
    spec.loader.exec_module(module)
    assert module.triton is None
    assert "triton is not installed" in module.triton_error(torch.device("cuda"))
    assert "'.[gpu]' in a clone of hf-recurrentgemma" in module.triton_error(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="triton is not installed"):
        module.rnn_scan_triton(*scan_inputs(1, 3, 2, torch.float32)[:3])


@needs_triton
def test_auto_picks_triton_on_cuda(monkeypatch):
    """Needs no GPU: `auto` decides from the device type and whether triton imports."""
    monkeypatch.setattr(ops_griffin, "_auto_choice", {})
    assert ops_griffin.scan_backend_available("triton", torch.device("cuda")) is None
    assert ops_griffin.resolve_scan_backend("auto", torch.device("cuda"), torch.bfloat16) == "triton"


def test_auto_on_cuda_without_triton_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(scan_triton_griffin, "_IMPORT_ERROR", "triton is not installed (test)")
    monkeypatch.setattr(ops_griffin, "_auto_choice", {})
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=r"triton RG-LRU scan is unavailable \(triton is not installed.*sequential"):
        assert ops_griffin.resolve_scan_backend("auto", cuda, torch.float32) == "sequential"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert ops_griffin.resolve_scan_backend("auto", cuda, torch.float32) == "sequential"
    with pytest.raises(ValueError, match="'triton' cannot run here: triton is not installed"):
        ops_griffin.resolve_scan_backend("triton", cuda, torch.float32)


# --- the compiled kernels, on a GPU ---------------------------------------------------------------------------------

CUDA_SHAPES = [(2, 300, 1000), (1, 1024, 2560), (16, 64, 2560)]  # blocks of 32 and 128 channels (see _block_width)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=[f"B{b}-T{t}-L{l}" for b, t, l in CUDA_SHAPES])
def test_cuda_kernel_equals_sequential_reference(shape, dtype):
    tensors = scan_inputs(*shape, dtype, device="cuda")
    assert ops_griffin.resolve_scan_backend("auto", tensors[0].device, dtype) == "triton"
    reference = run(rnn_scan_sequential, *tensors)
    # Built without fused multiply-add, so bit-identical results are expected; 1e-6 leaves room for a compiler
    # that contracts anyway, and the error printed says which happened.
    print(shape, dtype, assert_matches(run(lambda *t: rnn_scan(*t, backend="triton"), *tensors), reference, 1e-6))
    assert_matches(run(ops_griffin.SCAN_BACKENDS["triton"], *tensors, grad=False), reference[:2], 1e-6)

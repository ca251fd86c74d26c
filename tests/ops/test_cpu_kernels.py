"""The few-row matrix kernels (`cpu_matvec_griffin.py`) in every variant this CPU runs, against float64 products
within one rounding; when `linear_cpu` takes them; the switches; and builds for other targets (a generic x86-64
build with the scalar variants only, and an aarch64 cross-compile where a cross compiler is installed).

Tolerance, from the numerics: every variant accumulates K products in float32 (each product exact for bfloat16
inputs, rounded once for float32 ones), in its own order, then rounds once to the output dtype. So
|y - exact| <= u_out |exact| + 2 (K + 2) 2^-24 sum_k |x_k w_k| (+ |bias|), with u_out = 2^-8 for bfloat16 and 2^-24
for float32 outputs (the standard gamma_K bound of a float32 sum, doubled for the final rounding's effect on it)."""

import shutil
import subprocess

import pytest
import torch
from kernel_helpers import force_variant, matvec_variants_here

from hf_recurrentgemma.griffin import cpu_matvec_griffin as mv
from hf_recurrentgemma.griffin import cpu_scan_griffin
from hf_recurrentgemma.griffin.cpu_matvec_griffin import MAX_ROWS, gemv_kind, linear_cpu, linear_rows, matvec_variant
from hf_recurrentgemma.griffin.kernel_build_griffin import CompiledKernel, compile_check, kernel_settings
from hf_recurrentgemma.griffin.layers_griffin import BlockDiagonalLinear
from hf_recurrentgemma.griffin.ops_griffin import rnn_scan_sequential

# Not marked `kernels`: every test here sets the variant or switch it tests itself (force_variant, monkeypatch),
# so re-running the file with the kernels off or capped (.ci/run) would repeat the same runs.

SHAPES = [(1, 1), (5, 31), (7, 33), (130, 700)]  # rows not a multiple of 4, widths not a multiple of 8/16/32
ROWS = [1, 2, 3, 5, 9, 16]  # register blocks of 1..4 input rows, and several blocks
UNIT = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def _bound(exact, magnitude, k, dtype):
    return UNIT[dtype] * exact.abs() + 2 * (k + 2) * 2.0**-24 * magnitude


def _cases(kind):
    return [pytest.param(v, id=v) for v in matvec_variants_here(kind)]


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"M{r}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-K{s[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("variant", _cases("f32"))
def test_float_kernels_equal_exact_product_within_one_rounding(variant, dtype, shape, rows):
    n, k = shape
    x, w, b = torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    with torch.inference_mode():
        y = linear_rows(x, w, b, variant)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
    magnitude = x.double().abs() @ w.double().abs().T + b.double().abs()
    assert y.dtype == dtype and y.shape == (rows, n)
    err = (y.double() - exact).abs()
    assert (err <= _bound(exact, magnitude, k, dtype)).all(), f"{variant}: max error {err.max().item():.3g}"


@pytest.mark.parametrize("rows", [1, 2, 5, 16], ids=lambda r: f"M{r}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("variant", _cases("bf16"))
def test_bfloat16_kernels_with_and_without_bias(variant, bias, rows):
    """The bf16-dot variant (bfloat16 weights only) and the widening ones, on an odd shape."""
    x, w = torch.randn(rows, 1, 75).bfloat16(), torch.randn(37, 75).bfloat16()
    b = torch.randn(37).bfloat16() if bias else None
    with torch.inference_mode():
        y = linear_rows(x, w, b, variant)
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    magnitude = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert y.shape == (rows, 1, 37)
    assert ((y.double() - exact).abs() <= _bound(exact, magnitude, 75, torch.bfloat16)).all()


ODD_SHAPES = [(37, 75), (130, 700), (20, 2560)]  # K tails for every lane count; N tails for 4-row and 16-row tiles


def _row_by_row(product, x):
    """The product of each row of x alone, stacked: what M one-row calls give."""
    return torch.cat([product(x[m : m + 1]) for m in range(x.shape[0])])


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"N{s[0]}-K{s[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("variant", _cases("bf16"))
def test_each_row_equals_its_one_row_product(variant, dtype, shape):
    """Row invariance, bit for bit: for 2..MAX_ROWS rows every variant gives each row exactly what that row alone
    gives, because each output is accumulated in an order that depends on K only (lanes, then the K tail), never
    on how many rows share the weight tile. A speculative verification of k tokens then equals k decoding steps
    (tests/model/test_batch_invariance.py). float32 weights run the best float variant at or below `variant`."""
    if dtype == torch.float32 and variant.startswith("bf16"):
        pytest.skip("bf16-dot and bf16-tile take bfloat16 weights only (float32 ones run fp32-fma-512, tested)")
    n, k = shape
    w, b = torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    with torch.inference_mode():
        for rows in range(2, MAX_ROWS + 1):
            x = torch.randn(rows, k).to(dtype)
            together = linear_rows(x, w, b, variant)
            alone = _row_by_row(lambda r: linear_rows(r, w, b, variant), x)
            assert torch.equal(together, alone), f"{variant}, {rows} rows: {(together - alone).abs().max():.3g}"


def test_row_invariance_check_catches_a_changed_accumulation_order():
    """The check above fails for a product whose summation order depends on the row count: rows computed
    together with 8-lane sums (fp32-fma-256), one row alone with 16-lane ones (fp32-fma-512)."""
    variants = [v for v in ("fp32-fma-256", "fp32-fma-512") if v in matvec_variants_here("f32")]
    if len(variants) < 2:
        pytest.skip("needs the AVX2 and AVX-512 variants (an AVX-512 CPU)")
    w, x = torch.randn(130, 700), torch.randn(5, 700)
    with torch.inference_mode():
        together = linear_rows(x, w, None, "fp32-fma-256")
        alone = _row_by_row(lambda r: linear_rows(r, w, None, "fp32-fma-512"), x)
    assert not torch.equal(together, alone)
    assert (together - alone).abs().max() < 1e-3  # the same product: only the rounding differs


def test_a_variant_this_cpu_cannot_run_is_refused(monkeypatch):
    missing = [v for v in mv.BF16_VARIANTS if v not in matvec_variants_here("bf16")]
    if not missing:
        pytest.skip("this CPU runs every variant")
    with pytest.raises(ValueError, match=f"the '{missing[-1]}' variant does not run on this CPU"):
        linear_rows(torch.randn(1, 8).bfloat16(), torch.randn(4, 8).bfloat16(), None, missing[-1])


# --- when linear_cpu takes the kernel --------------------------------------------------------------------------------

VECTOR_VARIANTS = [v for v in matvec_variants_here("bf16") if v != "scalar"]


@pytest.mark.parametrize("variant", VECTOR_VARIANTS)
def test_linear_takes_the_kernel_only_where_it_applies(variant, monkeypatch):
    """With the best variant capped at `variant`, linear_cpu runs that variant for 1..MAX_ROWS rows of inference,
    and F.linear otherwise."""
    force_variant(monkeypatch, variant)
    w = torch.randn(8, 64).bfloat16()
    # bfloat16 weights run the variant itself; float32 ones the best float variant at or below it.
    assert matvec_variant("bf16") == variant
    assert matvec_variant("f32") == ("fp32-fma-512" if variant.startswith("bf16") else variant)
    with torch.inference_mode():
        # Every variant up to MAX_ROWS (verification sizes stay in the row-invariant kernel, bf16-dot included).
        for rows in (1, 2, 5, MAX_ROWS):
            assert gemv_kind(torch.randn(rows, 64).bfloat16(), w) == "bf16", rows
        assert gemv_kind(torch.randn(MAX_ROWS + 1, 64).bfloat16(), w) is None
        assert gemv_kind(torch.randn(1, 3, 64), w.float()) == "f32"
        assert gemv_kind(torch.randn(MAX_ROWS, 64), w.float()) == "f32"
        assert gemv_kind(torch.randn(MAX_ROWS + 1, 64), w.float()) is None  # a prompt: torch's GEMM
        assert gemv_kind(torch.randn(1, 64), w) is None  # mixed dtypes: F.linear says what it thinks
        assert gemv_kind(torch.randn(1, 64).bfloat16(), w.t().contiguous().t()) is None  # not contiguous
        x = torch.randn(3, 64).bfloat16()
        assert torch.equal(linear_cpu(x, w), linear_rows(x, w, None, variant))
    w.requires_grad_()
    assert gemv_kind(torch.randn(1, 64).bfloat16(), w) is None  # training: autograd through F.linear


@pytest.mark.parametrize("switch", [("HF_RECURRENTGEMMA_CPU_KERNELS", "off"), ("HF_RECURRENTGEMMA_CPU_KERNELS", "gemv"),
                                    ("HF_RECURRENTGEMMA_CPU_ISA", "scalar")], ids=["off", "gemv-off", "cap-scalar"])
def test_switches_send_linear_to_torch(switch, monkeypatch):
    """Off, or capped at scalar (torch's product beats scalar C, so the scalar variant is only run when asked by
    name): F.linear, bit for bit."""
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    monkeypatch.setenv(*switch)
    x, w, b = torch.randn(2, 64).bfloat16(), torch.randn(8, 64).bfloat16(), torch.randn(8).bfloat16()
    with torch.inference_mode():
        assert gemv_kind(x, w) is None and matvec_variant("bf16") is None
        assert torch.equal(linear_cpu(x, w, b), torch.nn.functional.linear(x, w, b))


def test_bad_switch_values_are_named(monkeypatch):
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_ISA", "avx512")
    with pytest.raises(ValueError, match="HF_RECURRENTGEMMA_CPU_ISA must be one of .*'avx512'"):
        kernel_settings()
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_ISA")
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", "scan,fast")
    with pytest.raises(ValueError, match=r"HF_RECURRENTGEMMA_CPU_KERNELS names unknown kernels \['fast'\]"):
        kernel_settings()


def test_compiled_linear_is_one_graph(monkeypatch):
    """The variant is decided in Python once; the compiled graph holds the opaque kernel op, no graph break."""
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_ISA", raising=False)
    w, b = torch.randn(8, 64).bfloat16(), torch.randn(8).bfloat16()
    compiled = torch.compile(lambda x: linear_cpu(x, w, b), backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 2, 64).bfloat16()
    with torch.inference_mode():
        assert torch.equal(compiled(x), linear_cpu(x, w, b))


def test_compiled_block_diagonal_gates_are_row_invariant_in_one_graph():
    """The RG-LRU gates under torch.compile with dynamic shapes (vLLM's compiled decode step sees every batch size):
    2..MAX_ROWS rows give each row's one-row product bit for bit, from one graph with no recompile per row count."""
    torch.manual_seed(0)
    gate = BlockDiagonalLinear(64, 4)
    torch.nn.init.normal_(gate.weight, std=0.2)
    torch.nn.init.normal_(gate.bias)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(gate, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.inference_mode():
        for rows in (2, 3, 7, MAX_ROWS):
            x = torch.randn(rows, 64)
            one_rows = torch.cat([gate(x[n : n + 1]) for n in range(rows)])
            assert torch.equal(compiled(x), one_rows), rows
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# --- builds for other targets -------------------------------------------------------------------------------------------


def test_generic_x86_build_runs_the_scalar_variants(monkeypatch, tmp_path):
    """`-march=x86-64` with the x86 variants compiled out (what any other CPU builds): only `scalar` is there, and
    it is right (the scan bit for bit)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    monkeypatch.setenv("HF_RECURRENTGEMMA_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_RECURRENTGEMMA_CFLAGS", "-O2 -march=x86-64 -DHF_RG_SCALAR_ONLY")
    assert mv.MATVEC_KERNEL.error() is None and mv.MATVEC_KERNEL.supported() == ["scalar"]
    assert cpu_scan_griffin.scan_variant() == "scalar"
    x, a, h0 = torch.randn(2, 37, 70), torch.rand(2, 37, 70), torch.randn(2, 70)
    y, h = cpu_scan_griffin.rnn_scan_cpu(x, a, h0)
    ref_y, ref_h = rnn_scan_sequential(x, a, h0)
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)
    xr, w = torch.randn(3, 33), torch.randn(7, 33)
    exact = xr.double() @ w.double().T
    bound = _bound(exact, xr.double().abs() @ w.double().abs().T, 33, torch.float32)
    assert ((linear_rows(xr, w, None, "scalar").double() - exact).abs() <= bound).all()
    assert matvec_variant("f32") is None  # scalar only: linear layers keep torch's product


@pytest.mark.parametrize("kernel", [cpu_scan_griffin.SCAN_KERNEL, mv.MATVEC_KERNEL], ids=lambda k: k.name)
def test_aarch64_cross_compile_exports_the_scalar_variants(kernel: CompiledKernel, tmp_path):
    """Each source compiles for aarch64 (the x86 variants guarded out) and exports every function's scalar
    variant and nothing else."""
    compiler, nm = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("aarch64-linux-gnu-nm")
    if compiler is None or nm is None:
        pytest.skip("no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    if compile_check("#include <stdint.h>\n", compiler, [], tmp_path / "probe.o").returncode != 0:
        pytest.skip("the aarch64 cross compiler has no C library headers (apt-get install libc6-dev-arm64-cross)")
    obj = tmp_path / "kernel.o"
    result = compile_check(kernel.source, compiler, ["-O2", "-fPIC", "-fopenmp", "-ffp-contract=off", "-Wall",
                                                      "-Werror"], obj)
    assert result.returncode == 0, result.stderr[:2000]
    symbols = set(subprocess.run([nm, "--defined-only", "--extern-only", "-j", str(obj)], capture_output=True,
                                 text=True, check=True).stdout.split())
    assert symbols == {"hfrg_capability"} | {f"{name}_scalar" for name in kernel.functions}


# --- bfloat16 prompts on CPUs without native bfloat16: float32 tiles -----------------------------------------------

from hf_recurrentgemma.griffin import cpu_widen_griffin  # noqa: E402


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(17, 64, 40), (33, 700, 130), (300, 2560, 200)], ids=lambda s: f"M{s[0]}-K{s[1]}-N{s[2]}")
def test_widened_bfloat16_product_within_one_rounding(shape, bias, monkeypatch):
    """Float32 products and sums, one rounding: the contract of torch's bfloat16 GEMM. Several weight tiles
    (TILE_BYTES shrunk), and linear_cpu takes this path when capped below bf16-dot."""
    monkeypatch.setattr(cpu_widen_griffin, "TILE_BYTES", 4 * shape[1] * 7)  # tiles of 7 rows: a partial last one
    m, k, n = shape
    x, w = torch.randn(1, m, k).bfloat16(), torch.randn(n, k).bfloat16()
    b = torch.randn(n).bfloat16() if bias else None
    with torch.inference_mode():
        y = cpu_widen_griffin.linear_widened(x, w, b)
        force_variant(monkeypatch, "fp32-fma-256")
        assert cpu_widen_griffin.widen_applies(x, w) and not mv.native_bf16()
        assert torch.equal(linear_cpu(x, w, b), y)
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    magnitude = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert y.dtype == torch.bfloat16 and y.shape == (1, m, n)
    assert ((y.double() - exact).abs() <= _bound(exact, magnitude, k, torch.bfloat16)).all()


def test_widened_path_only_without_native_bfloat16(monkeypatch):
    x, w = torch.randn(20, 64).bfloat16(), torch.randn(8, 64).bfloat16()
    force_variant(monkeypatch, "bf16-dot")
    with torch.inference_mode():
        if mv.MATVEC_KERNEL.capability() >= 3:  # this CPU has bfloat16 dot products: torch's own GEMM
            assert torch.equal(linear_cpu(x, w), torch.nn.functional.linear(x, w))
        monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_ISA", "fp32-fma-512")
        assert not mv.native_bf16()
        monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", "widen")  # switched off
        assert not cpu_widen_griffin.widen_applies(x, w)
        assert torch.equal(linear_cpu(x, w), torch.nn.functional.linear(x, w))
        monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS")
        assert not cpu_widen_griffin.widen_applies(x[:16], w)  # few rows: the few-row kernels
        assert not cpu_widen_griffin.widen_applies(x.float(), w.float())  # float32: torch's GEMM already

"""The weight-only int8 and int4 few-row kernels (`griffin/cpu_quant_griffin.py`) on torchao's layouts: every
variant this CPU runs, forced in turn, against a float64 product of the dequantized weights within a bound derived
from the kernel's arithmetic; k rows equal k one-row products bit for bit (and a copy of the kernel whose
accumulation order depends on the row count fails that check); the layout reading (`dequantize`) against torch's
own int4 product; the dispatch with the kernels off."""

import pytest
import torch
from kernel_helpers import force_variant
from torch import nn

pytest.importorskip("torchao")
from torchao.quantization import Int8WeightOnlyConfig, quantize_  # noqa: E402
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig  # noqa: E402

from hf_recurrentgemma.griffin import cpu_quant_griffin as Q  # noqa: E402

pytestmark = [pytest.mark.kernels, pytest.mark.usefixtures("one_thread")]
VARIANTS = [v for v in Q.supported_variants() if v in Q.VARIANTS]  # the float32 variants both formats have
# (format, variant) pairs this CPU runs: int8 also has AMX `bf16-tile`, int4 AVX-512 BF16 `bf16-dot`, both for
# bfloat16 inputs only; both have AMX-INT8 `int8-tile` (any float inputs, fixed-point digits summed exactly).
FORMAT_VARIANTS = [(fmt, v) for fmt in ("int8", "int4") for v in Q.supported_variants(fmt)]
U = 2.0**-24  # float32 unit roundoff
# (format, N, K, group): N = 112 puts a 48-row tail block after a full 64-row int4 block; int8's N = 202 and
# K = 100 leave partial 4-row and 16-lane tiles.
CASES = [("int8", 202, 100, None), ("int8", 64, 256, None), ("int4", 112, 256, 32), ("int4", 64, 256, 64),
         ("int4", 128, 384, 128)]
IDS = [f"{fmt}-N{n}-K{k}" + (f"-G{g}" if g else "") for fmt, n, k, g in CASES]


def quantized(fmt: str, n: int, k: int, group: int | None, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(k, n, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.bias.normal_(0, 0.5)
    quantize_(layer, Int8WeightOnlyConfig() if fmt == "int8" else PrototypeInt4WeightOnlyConfig(group_size=group))
    return layer


def kernel_output(fmt: str, variant: str, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """The compiled variant's float32 result for x (M, K) (what `linear_rows` rounds to x's dtype)."""
    function, w, tile = Q.QUANT_KERNEL.function(f"matmul_{fmt}", variant), layer.weight, variant in Q.BF16_INPUT
    if fmt == "int8":
        return Q.run_int8(function, x, w.qdata, w.scale, w.zero_point, layer.bias, bf16_input=tile)
    return Q.run_int4(function, x, w.qdata, w.scale_and_zero, w.block_size[1], layer.bias, bf16_input=tile)


def input_dtypes(variant: str) -> tuple[torch.dtype, ...]:
    return (torch.bfloat16,) if variant in Q.BF16_INPUT else (torch.float32, torch.bfloat16)


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def int4_per_k(w) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An int4 weight's codes, scales and zeros, each (N, K) float64 (scale and zero repeated over their group)."""
    n, k = w.shape
    group = w.block_size[1]
    sz = w.scale_and_zero.double()  # (K/G, N, 2)
    scale, zero = (sz[..., i].T.repeat_interleave(group, 1) for i in (0, 1))
    return Q.unpack_int4(w.qdata, n, k).double(), scale, zero


def fixed_point_step(x: torch.Tensor, block: int) -> torch.Tensor:
    """(M, K) bound on |x - its fixed-point value| in `int8-tile`: per row and block of `block` k, x 2^e rounded to
    an integer with e = 21 - floor(log2 max |x|), so half of 2^-e = 2^(floor(log2 max |x|) - 22)."""
    top = x.float().abs().view(x.shape[0], -1, block).amax(-1)  # (M, K / block)
    _, exponent = torch.frexp(top)  # top = mantissa 2^exponent, mantissa in [0.5, 1): floor(log2 top) = exponent - 1
    step = torch.where(top > 0, torch.ldexp(torch.ones_like(top, dtype=torch.float64), exponent - 23), 0.0)
    return step.repeat_interleave(block, 1)


def tile_error_bound(fmt: str, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """(M, N) bound for `int8-tile` (cpu_quant_digits_griffin.py): the tile sums of the fixed-point x are exact, so
    the error is x's fixed-point rounding (`fixed_point_step` d per element, times the weight's magnitude) plus
    float32 roundings, terms with |x| + d: int8 one of S 2^-e, then scale and bias (3); int4 per group the
    rounding of t = c0 + 256 c1 - lo (|t| < 2^16 sum |q - 8| units of 2^-e, so within 2^-7 d sum |q - 8|: the
    2^-6 margin on the d term), the FMA forming S, the FMA into the total, a2 and its FMA, then the bias
    (2 groups + 6)."""
    w = layer.weight
    bias = layer.bias.detach().double().abs()
    n, k = w.shape
    if fmt == "int8":
        zero = w.zero_point.double().reshape(-1, 1)
        weights = (w.qdata.double() - zero).abs() * w.scale.double().reshape(-1, 1).abs()  # (N, K)
        step, depth = fixed_point_step(x, k), 3
    else:
        group = w.block_size[1]
        codes, scale, zero = int4_per_k(w)
        weights = (codes - 8).abs() * scale.abs() + zero.abs()
        step, depth = fixed_point_step(x, group), 2 * (k // group) + 6
    magnitude = (x.double().abs() + step) @ weights.T + bias
    return (1 + 2.0**-6) * (step @ weights.T) + gamma(depth + 1) * magnitude


def error_bound(fmt: str, x: torch.Tensor, layer: nn.Linear, variant: str = "scalar") -> torch.Tensor:
    """(M, N) bound on |kernel - float64 product| from the arithmetic in the module docstring. Every float32
    operation rounds once (FMA) or twice (scalar C multiplies and adds separately, -ffp-contract=off); a value
    formed by a chain of d such operations over terms t_i is within gamma(2 d) sum |t_i| of exact (Higham 3.1).
    int8: chain depth K (lanes, reduction tree and tail together; AMX tiles accumulate pair products, a chain no
    deeper) + 3 (zero point, scale, bias); terms x q scale, zero x scale, bias. int4: depth G (the group's sum) + 2
    per group + 2 (zero - 8 scale, bias); terms x q scale and x (zero - 8 scale) per group, and the bias.
    int4 `bf16-dot`: x is bfloat16 and q - 8 is exact in bfloat16, so each product (at most 8 + 4 significant
    bits) is exact in float32; `vdpbf16ps` adds a row's two products of a k pair to its sum one after the other
    (Intel SDM: two rounded additions), so the group's sum is again a chain of G roundings, then fma(scale, acc)
    and fma(zero, xsum) per group (the sum of x a chain of G); the same depth, with terms x (q - 8) scale and x zero.
    (`vdpbf16ps` also flushes subnormals; the inputs here are normal and every partial sum is far from 2^-126.)"""
    if variant == "int8-tile":
        return tile_error_bound(fmt, x, layer)
    xa = x.double().abs()
    bias = layer.bias.detach().double().abs()
    w = layer.weight
    if fmt == "int8":
        k = w.qdata.shape[1]
        scale = w.scale.double().reshape(1, -1).abs()
        zero = w.zero_point.double().reshape(1, -1).abs()
        magnitude = scale * (xa @ w.qdata.double().abs().T + zero * xa.sum(1, keepdim=True)) + bias
        return gamma(2 * (k + 3)) * magnitude
    n, k = w.shape
    group = w.block_size[1]
    codes, scale, zero = int4_per_k(w)
    shifted = zero - 8 * scale
    if variant == "bf16-dot":
        codes, shifted = (codes - 8).abs(), zero
    magnitude = xa @ (codes * scale.abs()).T + xa @ shifted.abs().T + bias
    return gamma(2 * (group + 2 * (k // group) + 2)) * magnitude


def _format_cases(cases, ids):
    return [pytest.param(variant, *case, id=f"{variant}-{name}") for case, name in zip(cases, ids)
            for fmt, variant in FORMAT_VARIANTS if fmt == case[0]]


@pytest.mark.parametrize("variant,fmt,n,k,group", _format_cases(CASES, IDS))
def test_each_variant_within_the_derived_bound_of_the_float64_product(fmt, n, k, group, variant, monkeypatch):
    force_variant(monkeypatch, variant)
    layer = quantized(fmt, n, k, group)
    assert Q.quant_format(layer.weight) == fmt
    x = torch.randn(16, k).to(input_dtypes(variant)[0]).float()  # bf16-tile: inputs bfloat16 already
    with torch.no_grad():
        y = kernel_output(fmt, variant, x.to(input_dtypes(variant)[0]), layer).double()
    exact = x.double() @ Q.dequantize(layer.weight).T + layer.bias.detach().double()
    bound = error_bound(fmt, x, layer, variant)
    error = (y - exact).abs()
    worst = float((error / bound).max())
    assert bool((error <= bound).all()), f"{variant}: error up to {worst:.2f}x the bound, max {float(error.max()):.3g}"
    assert float(error.max()) > 0  # the comparison sees float32 rounding, not a float64 copy


@pytest.mark.parametrize("variant,fmt,n,k,group", _format_cases(CASES[:1] + CASES[2:3], IDS[:1] + IDS[2:3]))
def test_k_rows_equal_k_one_row_products_bit_for_bit(fmt, n, k, group, variant, monkeypatch):
    """Each row is accumulated in the same order whatever the row count, so a (k+1)-token verification equals
    k+1 one-token steps exactly (float32 and bfloat16 inputs)."""
    force_variant(monkeypatch, variant)
    layer = quantized(fmt, n, k, group)
    for dtype in input_dtypes(variant):  # inputs over a wide range of magnitudes: sums that round
        x = (torch.randn(Q.MAX_ROWS, k) * 2.0 ** torch.randint(-12, 13, (Q.MAX_ROWS, k))).to(dtype)
        with torch.no_grad():
            ones = torch.cat([Q.linear_rows(x[i:i + 1], layer.weight, layer.bias, variant) for i in range(len(x))])
            for rows in range(2, Q.MAX_ROWS + 1):  # every tile split (bf16-dot: 5 rows a tile)
                assert torch.equal(Q.linear_rows(x[:rows], layer.weight, layer.bias, variant), ones[:rows]), \
                    f"{variant} {dtype}: {rows} rows differ from one-row products"


def rows_match_one_row(function, fmt: str, layer: nn.Linear, x: torch.Tensor, tile: bool = False) -> bool:
    w = layer.weight
    if fmt == "int8":
        def run(rows):
            return Q.run_int8(function, rows, w.qdata, w.scale, w.zero_point, layer.bias, bf16_input=tile)
    else:
        def run(rows):
            return Q.run_int4(function, rows, w.qdata, w.scale_and_zero, w.block_size[1], layer.bias, bf16_input=tile)
    ones = torch.cat([run(x[i:i + 1]) for i in range(len(x))])
    return torch.equal(run(x), ones)


# The accumulation loops, and a replacement that walks k backwards when more than one row runs: same sums,
# another rounding order, so the row-invariance check must catch it.
MUTATIONS = {
    "int8": ("for (; k + LANES <= K; k += LANES) {  /* ORDER: k ascending, one partial sum per lane */",
             "for (int64_t kk = 0; kk + LANES <= K; kk += LANES) { k = mb > 1 ? K / LANES * LANES - LANES - kk : kk;"),
    "int4": ("for (int64_t k = g * G; k < (g + 1) * G; k++) {  /* ORDER: k ascending within the group */",
             "for (int64_t kk = g * G; kk < (g + 1) * G; kk++) { int64_t k = mb > 1 ? (2 * g + 1) * G - 1 - kk : kk;"),
}


@pytest.mark.parametrize("fmt,n,k,group", CASES[1:3], ids=IDS[1:3])
def test_a_row_dependent_accumulation_order_fails_the_invariance_check(fmt, n, k, group, monkeypatch):
    """The check above is able to fail: the same source with the k loop reversed when several rows run (the same
    sums in another rounding order) is caught."""
    variant = VARIANTS[-1]
    force_variant(monkeypatch, variant)
    source = Q.QUANT_KERNEL.source
    original, mutated = MUTATIONS[fmt]
    assert source.count(original) == 3  # one loop per variant: the mutation reaches the one tested
    kernel = Q.make_kernel(Q._source().replace(original, mutated))
    layer = quantized(fmt, n, k, group)
    x = torch.randn(4, k) * 2.0 ** torch.randint(-12, 13, (4, k))  # magnitudes over a wide range: sums that round
    name = f"matmul_{fmt}"
    assert rows_match_one_row(Q.QUANT_KERNEL.function(name, variant), fmt, layer, x)
    assert not rows_match_one_row(kernel.function(name, variant), fmt, layer, x)


AMX_LOOP = "for (int64_t k = 0; k < K32; k += 32) {  /* ORDER: k ascending, 32 at a time */"


@pytest.mark.skipif("bf16-tile" not in Q.supported_variants("int8"), reason="no AMX on this CPU")
def test_a_row_dependent_order_in_the_amx_int8_kernel_fails_the_invariance_check(monkeypatch):
    """The same for `bf16-tile`: its 32-k tile products walked backwards when several rows run are caught."""
    force_variant(monkeypatch, "bf16-tile")
    assert Q.QUANT_KERNEL.source.count(AMX_LOOP) == 1
    mutated = "for (int64_t kk = 0; kk < K32; kk += 32) { int64_t k = M > 1 ? K32 - 32 - kk : kk;"
    kernel = Q.make_kernel(Q._source().replace(AMX_LOOP, mutated))
    layer = quantized("int8", 64, 256, None)
    x = (torch.randn(4, 256) * 2.0 ** torch.randint(-12, 13, (4, 256))).bfloat16()
    assert rows_match_one_row(Q.QUANT_KERNEL.function("matmul_int8", "bf16-tile"), "int8", layer, x, tile=True)
    assert not rows_match_one_row(kernel.function("matmul_int8", "bf16-tile"), "int8", layer, x, tile=True)


DOT_LOOP = "for (int64_t k = g * G; k < (g + 1) * G; k += 2) {  /* ORDER: k pairs ascending within the group */"


@pytest.mark.skipif("bf16-dot" not in Q.supported_variants("int4"), reason="no AVX-512 BF16 on this CPU")
def test_a_row_dependent_order_in_the_bf16_dot_int4_kernel_fails_the_invariance_check(monkeypatch):
    """The same for int4 `bf16-dot`: its k pairs walked backwards within each group when a tile holds several rows
    are caught (7 rows: tiles of 5 and 2, a 48-row tail block in scalar C)."""
    force_variant(monkeypatch, "bf16-dot")
    assert Q.QUANT_KERNEL.source.count(DOT_LOOP) == 1
    mutated = ("for (int64_t kk = g * G; kk < (g + 1) * G; kk += 2) { "
               "int64_t k = mb > 1 ? (2 * g + 1) * G - 2 - kk : kk;")
    kernel = Q.make_kernel(Q._source().replace(DOT_LOOP, mutated))
    layer = quantized("int4", 112, 256, 32)
    x = (torch.randn(7, 256) * 2.0 ** torch.randint(-12, 13, (7, 256))).bfloat16()
    assert rows_match_one_row(Q.QUANT_KERNEL.function("matmul_int4", "bf16-dot"), "int4", layer, x, tile=True)
    assert not rows_match_one_row(kernel.function("matmul_int4", "bf16-dot"), "int4", layer, x, tile=True)


def test_int4_takes_bf16_dot_for_bfloat16_inputs_only_without_amx(monkeypatch):
    """The variant depends on the format, the input dtype and the capability, never on the row count: `bf16-dot`
    for int4 with bfloat16 inputs where the best capability allowed is exactly AVX-512 BF16 (no AMX; forced here
    by the cap where the CPU has more), `fp32-fma-512` on AMX CPUs (measured faster there), never under an AVX2
    cap or for float32 inputs."""
    layer = quantized("int4", 64, 256, 64)
    for rows in (1, 5, Q.MAX_ROWS):
        x = torch.randn(rows, 256, dtype=torch.bfloat16)
        if "bf16-dot" in Q.supported_variants("int4"):
            force_variant(monkeypatch, "bf16-dot")
            assert Q.variant_for(x, layer.weight) == "bf16-dot"
            assert Q.variant_for(x.float(), layer.weight) == "fp32-fma-512"
            with torch.no_grad():  # the dispatch reaches the kernel: equal to forcing it
                assert torch.equal(Q.linear_quantized(x, layer.weight, layer.bias),
                                   Q.linear_rows(x, layer.weight, layer.bias, "bf16-dot"))
        if "bf16-tile" in Q.QUANT_KERNEL.supported():
            force_variant(monkeypatch, "bf16-tile")
            assert Q.variant_for(x, layer.weight) == "fp32-fma-512"
        if "fp32-fma-256" in Q.supported_variants("int4"):
            force_variant(monkeypatch, "fp32-fma-256")
            assert Q.variant_for(x, layer.weight) == "fp32-fma-256"


INT_TILE = pytest.mark.skipif("int8-tile" not in Q.supported_variants("int8"), reason="no AMX-INT8 on this CPU")


@INT_TILE
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_amx_int8_cpus_take_int8_tile_for_every_input_dtype_and_row_count(fmt, monkeypatch):
    """Where the CPU has AMX-INT8 both formats run `int8-tile` for float32 and bfloat16 inputs and every row count;
    capped at `bf16-tile` they run what they ran before it existed."""
    layer = quantized(fmt, 64, 256, 64 if fmt == "int4" else None)
    force_variant(monkeypatch, "int8-tile")
    for rows in (1, 5, Q.MAX_ROWS):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, 256, dtype=dtype)
            assert Q.variant_for(x, layer.weight) == "int8-tile"
            with torch.no_grad():  # the dispatch reaches the kernel: equal to forcing it
                assert torch.equal(Q.linear_quantized(x, layer.weight, layer.bias),
                                   Q.linear_rows(x, layer.weight, layer.bias, "int8-tile"))
    force_variant(monkeypatch, "bf16-tile")
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    assert Q.variant_for(x, layer.weight) == ("bf16-tile" if fmt == "int8" else "fp32-fma-512")


@INT_TILE
@pytest.mark.parametrize("fmt,n,k,group", [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
def test_int8_tile_gives_nan_for_a_row_with_an_infinity_or_nan_and_leaves_other_rows(fmt, n, k, group):
    """A non-finite input cannot be written in fixed point: its row's outputs are all NaN, the other rows equal
    their one-row results (tail rows and tail blocks included)."""
    layer = quantized(fmt, n, k, group)
    x = torch.randn(3, k)
    x[1, 7] = float("inf")
    x[2, 0] = float("nan")
    function = Q.QUANT_KERNEL.function(f"matmul_{fmt}", "int8-tile")
    y = kernel_output(fmt, "int8-tile", x, layer)
    assert bool(y[1:].isnan().all())
    assert torch.equal(y[:1], kernel_output(fmt, "int8-tile", x[:1], layer))
    assert rows_match_one_row(function, fmt, layer, x[:1].repeat(2, 1))


@INT_TILE
@pytest.mark.parametrize("fmt,n,k,group", [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
def test_a_fixed_point_exponent_shared_across_rows_fails_the_invariance_check(fmt, n, k, group, monkeypatch):
    """`int8-tile`'s sums are exact, so its row invariance rests on each row's own fixed-point exponent: a copy
    whose rows share the first row's block maximum (as a per-tensor activation scale would) is caught."""
    force_variant(monkeypatch, "int8-tile")
    original = "const int e = top == 0 ? 0 : 21 - ((int)(top >> 23) - 127);"
    shared = ("static uint32_t first = 0; if (x == first_row) first = top; else if (first > top) top = first; "
              + original)
    source = Q._source()
    assert source.count(original) == 1
    mutated = source.replace(original, shared).replace(
        "static int to_fixed(", "static const float *first_row; static int to_fixed(").replace(
        "    for (int64_t m = 0; m < M; m++) {\n        finite[m] = ", "    first_row = x;\n    for (int64_t m = 0; m < M; m++) {\n        finite[m] = ")
    assert mutated.count("first_row = x;") == 2
    kernel = Q.make_kernel(mutated)
    layer = quantized(fmt, n, k, group)
    x = torch.randn(4, k) * torch.tensor([[64.0], [1.0], [1.0], [1.0]])  # row 0 the largest
    name = f"matmul_{fmt}"
    assert rows_match_one_row(Q.QUANT_KERNEL.function(name, "int8-tile"), fmt, layer, x)
    assert not rows_match_one_row(kernel.function(name, "int8-tile"), fmt, layer, x)


def test_dequantize_reads_the_int4_layout_as_torch_does():
    """`unpack_int4`/`dequantize` against torch's own int4 product (which knows its pack): the identity matrix
    through `F.linear` gives the dequantized weights, rounded to bfloat16."""
    layer = quantized("int4", 112, 128, 32)
    with torch.no_grad():
        seen = torch.nn.functional.linear(torch.eye(128, dtype=torch.bfloat16), layer.weight).T.double()
    expected = Q.dequantize(layer.weight).to(torch.bfloat16).double()
    assert (seen - expected).abs().max() <= 2**-8 * expected.abs().max()


def test_kernels_off_or_scalar_cap_fall_back_to_torchao(monkeypatch):
    layer = quantized("int8", 64, 64, None)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", "off")
    assert not Q.kernel_applies(x, layer.weight)
    with torch.no_grad():
        assert torch.equal(Q.linear_quantized(x, layer.weight, layer.bias), torch.nn.functional.linear(x, layer.weight, layer.bias))
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_KERNELS", "on")
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_ISA", "scalar")
    assert Q.quant_variant() is None
    if VARIANTS[-1] != "scalar":
        monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_ISA", VARIANTS[-1])
        assert Q.kernel_applies(x, layer.weight) and not Q.kernel_applies(torch.randn(17, 64), layer.weight)


@pytest.mark.parametrize("fmt,n,k,group", [CASES[0], CASES[1], CASES[4]], ids=[IDS[0], IDS[1], IDS[4]])
def test_prompts_multiply_the_dequantized_weights_rounded_to_bfloat16(fmt, n, k, group):
    """More than MAX_ROWS bfloat16 rows take `linear_prompt` (weights widened tile by tile, torch's bfloat16
    product). Each weight is rounded once to bfloat16 (2^-9 relative), each output once (2^-9), the sums in float32:
    within (2^-8 + gamma(K)) (|x| |w|^T + |bias|) of the float64 product, tiles past PROMPT_TILE_ROWS included."""
    if Q.quant_variant() is None:
        pytest.skip("the quantized kernels are off here: prompts take torchao's own products")
    layer = quantized(fmt, n, k, group)
    if fmt == "int4":  # several prompt tiles and whole int4 blocks: N = 640
        layer = quantized(fmt, 2 * Q.PROMPT_TILE_ROWS + 128, k, group)
    x = torch.randn(Q.MAX_ROWS + 9, k).bfloat16()
    assert Q.prompt_applies(x, layer.weight) and not Q.kernel_applies(x, layer.weight)
    with torch.no_grad():
        y = Q.linear_quantized(x, layer.weight, layer.bias).double()
    w = Q.dequantize(layer.weight)
    exact = x.double() @ w.T + layer.bias.detach().double()
    bound = (2.0**-8 + gamma(k)) * (x.double().abs() @ w.abs().T + layer.bias.detach().double().abs())
    assert bool(((y - exact).abs() <= bound).all()), float(((y - exact).abs() / bound).max())


def test_float32_prompts_and_partial_int4_blocks_keep_torchaos_own_product():
    x = torch.randn(Q.MAX_ROWS + 1, 256)
    assert not Q.prompt_applies(x, quantized("int8", 64, 256, None).weight)  # float32 inputs
    assert not Q.prompt_applies(x.bfloat16(), quantized("int4", 112, 256, 32).weight)  # a 48-row last block

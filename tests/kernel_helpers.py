"""How tests choose which optional CPU kernel runs: `force_variant` sets the switches of
`hf_recurrentgemma.griffin.kernel_build_griffin` for one test (they are read at every call), whatever the environment the
suite runs under (`HF_RECURRENTGEMMA_CPU_KERNELS=off` or a `HF_RECURRENTGEMMA_CPU_ISA` cap, see .ci/run), so each
variant this CPU can run is tested in every run."""

import pytest

from hf_recurrentgemma.griffin.cpu_matvec_griffin import supported_variants
from hf_recurrentgemma.griffin.cpu_scan_griffin import SCAN_KERNEL, SCAN_VARIANTS

SCAN_VARIANTS_HERE = [v for v in SCAN_KERNEL.supported() if v in SCAN_VARIANTS]


def force_variant(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    """Every kernel on, capped at capability `variant` (the best it runs, since the CPU supports it)."""
    monkeypatch.delenv("HF_RECURRENTGEMMA_CPU_KERNELS", raising=False)
    monkeypatch.setenv("HF_RECURRENTGEMMA_CPU_ISA", variant)


def matvec_variants_here(kind: str) -> list[str]:
    """The matrix-product variants for weights of `kind` that this CPU runs (scalar included)."""
    return supported_variants(kind)

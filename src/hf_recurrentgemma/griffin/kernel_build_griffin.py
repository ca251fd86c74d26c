"""Building and loading the optional C kernels for CPU (`cpu_scan_griffin.py`, `cpu_matvec_griffin.py`): compiler
discovery, flags, the on-disk cache, `ctypes` loading, the choice of instruction-set variant, and the switches.

One build runs on any x86 CPU: no `-march=native`. Each vector kernel is compiled several times, each copy with a
per-function `__attribute__((target(...)))`, and the copy to run is chosen at run time from what the CPU supports
(`__builtin_cpu_supports`). Variants are named by the capability they use, in increasing order:

    scalar        portable C, on every CPU (the only one compiled off x86, e.g. aarch64)
    fp32-fma-256  8-lane float32 fused multiply-add (x86 AVX2 + FMA)
    fp32-fma-512  16-lane float32 fused multiply-add (x86 AVX-512F)
    bf16-dot      bfloat16 pair dot products accumulated in float32 (x86 AVX-512 BF16)
    bf16-tile     bfloat16 tile matrix products accumulated in float32 (x86 AMX-BF16; Linux grants the tile
                  state to the process on first use)
    int8-tile     int8 tile matrix products summed exactly in int32 (x86 AMX-INT8 and AVX-512 VBMI, on top of
                  bf16-tile's features; the weight-only int8 and int4 kernels only)

Environment switches, read at every call (not frozen at import), so tests and users can switch in-process:

    HF_RECURRENTGEMMA_CPU_KERNELS=off      no optional C kernel at all: the scan backend `auto` takes the
                                           sequential scan, linear layers call `F.linear`. A comma list of kernel
                                           names (`scan`, `gemv`, `widen`) turns off only those.
    HF_RECURRENTGEMMA_CPU_ISA=<capability> the best variant any kernel may use (e.g. `fp32-fma-256` makes an
                                           AVX-512 machine run what an AVX2 one runs; `scalar` the portable path).
    HF_RECURRENTGEMMA_CFLAGS="..."         replaces the optimisation and target flags (default `-O3
                                           -fno-math-errno`); the flags the kernels' numerics and loading depend
                                           on (`-ffp-contract=off -fPIC -shared -fopenmp`) are always added after
                                           them. `-DHF_RG_SCALAR_ONLY` compiles the scalar variants only.
    HF_RECURRENTGEMMA_KERNEL_DIR=<dir>     where built libraries are cached (default
                                           `~/.cache/hf_recurrentgemma/kernels`).
    CC                                     the C compiler (default: Python's, then cc, gcc, clang).

Where no compiler exists or a build fails, one `RuntimeWarning` says so (once per process and build
configuration) and every caller falls back to its torch path; `CompiledKernel.error()` gives the reason.

Floating-point contraction stays off in every variant (`-ffp-contract=off` comes last on the command line, and a
target attribute does not change it): the scan rounds `a * h + x` twice, exactly like the sequential reference.
"""

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

# Capability names, weakest first; a variant's index is its rank.
CAPABILITIES = ("scalar", "fp32-fma-256", "fp32-fma-512", "bf16-dot", "bf16-tile", "int8-tile")
# The compiler target of each capability, for the `__attribute__((target(...)))` of the functions built for it:
# the one table every kernel module takes its variants' attributes from (`target_attribute`).
TARGETS = {"scalar": None, "fp32-fma-256": "avx2,fma", "fp32-fma-512": "avx512f",
           "bf16-dot": "avx512f,avx512bf16", "bf16-tile": "avx512f,avx512bf16,amx-tile,amx-bf16",
           "int8-tile": "avx512f,avx512bw,avx512dq,avx512vbmi,fma,amx-tile,amx-int8"}
# Rows (tokens) the few-row matrix kernels take in one call: one decoding step up to a 15-token draft plus its
# bonus token. Every row is accumulated in the same order whatever the row count (docs/speculative.md), so a call
# of up to MAX_ROWS rows equals that many one-row calls; longer inputs go to the prompt paths.
MAX_ROWS = 16
KERNEL_NAMES = ("scan", "gemv", "widen")  # cpu_scan_griffin, cpu_matvec_griffin, cpu_widen_griffin
DEFAULT_CFLAGS = ("-O3", "-fno-math-errno")
REQUIRED_CFLAGS = ("-ffp-contract=off", "-fPIC", "-shared", "-fopenmp")

# Prepended to every kernel source: bfloat16 conversions and the run-time capability check.
C_PRELUDE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && !defined(HF_RG_SCALAR_ONLY)
#define HF_RG_X86 1
#include <immintrin.h>
#endif
#if defined(HF_RG_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* bfloat16 <-> float32, round to nearest even (as torch). */
static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = ((uint32_t)v) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(HF_RG_X86)
/* AMX, shared by every tile kernel: the LDTILECFG memory layout (palette 1), zeroed with palette 1 set by
   `amx_config_init`; `amx_pack_pairs` lays bfloat16 inputs x (M, K) out as a B tile of k pairs,
   out[(p M + m) 2 + i] = x[m, 2 p + i] for 2 p < K32 (the caller frees it); `amx_bf16_config` loads the bfloat16
   tile products' shapes: C (tile 0) 16 weight rows x M float32 sums, A (1) 16 weight rows x 32 bfloat16, B (2)
   16 k pairs x M inputs x 2. */
struct amx_tile_config { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };
static inline void amx_config_init(struct amx_tile_config *config) {
    memset(config, 0, sizeof(*config));
    config->palette = 1;
}
static uint16_t *amx_pack_pairs(const uint16_t *x, int64_t M, int64_t K, int64_t K32) {
    uint16_t *packed = (uint16_t *)malloc(sizeof(uint16_t) * (K32 + 2) * M);
    for (int64_t p = 0; p < K32 / 2; p++)
        for (int64_t m = 0; m < M; m++) {
            packed[(p * M + m) * 2] = x[m * K + 2 * p];
            packed[(p * M + m) * 2 + 1] = x[m * K + 2 * p + 1];
        }
    return packed;
}
__attribute__((target("amx-tile"))) static inline void amx_bf16_config(int64_t M) {
    struct amx_tile_config config;
    amx_config_init(&config);
    config.rows[0] = 16; config.colsb[0] = (uint16_t)(M * 4);
    config.rows[1] = 16; config.colsb[1] = 64;
    config.rows[2] = 16; config.colsb[2] = (uint16_t)(M * 4);
    _tile_loadconfig(&config);
}
#endif

/* Rank (index in CAPABILITIES) of the best variant this CPU runs and this build contains; found once. */
static int find_capability(void);
int hfrg_capability(void) {
    static int rank = -1;
    if (rank < 0) rank = find_capability();
    return rank;
}
static int find_capability(void) {
#if defined(HF_RG_X86)
    __builtin_cpu_init();
#if defined(__linux__)
    /* AMX tiles need the kernel's permission for their 8 KiB register state (ARCH_REQ_XCOMP_PERM, XTILEDATA). */
    if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("amx-bf16") &&
        __builtin_cpu_supports("amx-tile") && syscall(SYS_arch_prctl, 0x1023, 18) == 0)
        return __builtin_cpu_supports("amx-int8") && __builtin_cpu_supports("avx512vbmi") ? 5 : 4;
#endif
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) return 3;
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}
"""


def target_attribute(capability: str) -> str:
    """The C attribute that compiles a function for `capability` ("" for scalar code)."""
    target = TARGETS[capability]
    return f'__attribute__((target("{target}")))' if target else ""


def symbol_suffix(capability: str) -> str:
    """The C identifier suffix of a variant: "fp32-fma-256" -> "fp32_fma_256"."""
    return capability.replace("-", "_")


def op_namespace(module_name: str) -> str:
    """The `torch.library` namespace of a kernel module's ops: its module name made an identifier, so the package
    and a copy shipped as Hub remote code (another module name) can both register their ops in one process."""
    return re.sub(r"\W", "_", module_name)


class KernelSettings(NamedTuple):
    """The switches as read from the environment now."""

    off: frozenset  # kernel names switched off
    isa_cap: int  # rank of the best capability allowed
    cflags: tuple  # full flag list for the compiler
    compiler: str | None


_SWITCHES = ("HF_RECURRENTGEMMA_CPU_KERNELS", "HF_RECURRENTGEMMA_CPU_ISA", "HF_RECURRENTGEMMA_CFLAGS", "CC")
_parsed: dict[tuple, KernelSettings] = {}
# `os.environ.get` encodes the key and decodes the value on every call (about a microsecond each on a busy core,
# four per linear layer call); CPython's POSIX `os.environ` keeps the encoded mapping in `_data`, always in sync,
# so the switches are looked up there when it exists.
_ENCODED = getattr(os.environ, "_data", None)
if not (isinstance(_ENCODED, dict) and all(isinstance(key, bytes) for key in list(_ENCODED)[:1])):
    _ENCODED = None
_ENCODED_SWITCHES = tuple(name.encode() for name in _SWITCHES)


def _raw_switches() -> tuple:
    if _ENCODED is not None:
        return tuple(_ENCODED.get(name) for name in _ENCODED_SWITCHES)
    return tuple(os.environ.get(name) for name in _SWITCHES)


def kernel_settings() -> KernelSettings:
    """Reads the switches (see the module docstring); a bad value raises a one-line error naming the variable.
    Called on every kernel call, so the parsing is cached by the raw values."""
    raw = _raw_switches()
    if raw not in _parsed:
        _parsed[raw] = _parse_settings(*(None if v is None else os.fsdecode(v) for v in raw))
    return _parsed[raw]


def _parse_settings(raw_off, raw_cap, raw_flags, _cc) -> KernelSettings:
    raw_off = (raw_off or "").strip().lower()
    if raw_off in ("", "on", "1", "all"):
        off = frozenset()
    elif raw_off in ("off", "0", "none"):
        off = frozenset(KERNEL_NAMES)
    else:
        off = frozenset(name.strip() for name in raw_off.split(",") if name.strip())
        unknown = sorted(off - set(KERNEL_NAMES))
        if unknown:
            raise ValueError(f"HF_RECURRENTGEMMA_CPU_KERNELS names unknown kernels {unknown}; use 'off' or a comma "
                             f"list of {list(KERNEL_NAMES)}")
    raw_cap = (raw_cap or "").strip().lower()
    if raw_cap and raw_cap not in CAPABILITIES:
        raise ValueError(f"HF_RECURRENTGEMMA_CPU_ISA must be one of {list(CAPABILITIES)}, got {raw_cap!r}")
    cap = CAPABILITIES.index(raw_cap) if raw_cap else len(CAPABILITIES) - 1
    flags = tuple(raw_flags.split()) if raw_flags is not None else DEFAULT_CFLAGS
    return KernelSettings(off, cap, flags + REQUIRED_CFLAGS, _compiler())


def kernel_enabled(name: str) -> bool:
    """Whether kernel `name` (one of KERNEL_NAMES) is allowed by HF_RECURRENTGEMMA_CPU_KERNELS."""
    return name not in kernel_settings().off


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if candidate:
            path = shutil.which(candidate.split()[0])
            if path:
                return path
    return None


def kernel_dir() -> Path:
    root = os.environ.get("HF_RECURRENTGEMMA_KERNEL_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hf_recurrentgemma" / "kernels"


_warned_configs: set = set()
_warn_lock = threading.Lock()


def _warn_once(config: tuple, name: str, reason: str) -> None:
    with _warn_lock:
        if config in _warned_configs:
            return
        _warned_configs.add(config)
    first_line = reason.splitlines()[0] if reason else reason
    warnings.warn(f"hf_recurrentgemma: the optional C kernels cannot be built here ({name}: {first_line}); "
                  f"falling back to the torch paths, which are correct but slower (install a C compiler with "
                  f"OpenMP to fix, or set HF_RECURRENTGEMMA_CPU_KERNELS=off to silence)", RuntimeWarning,
                  stacklevel=4)


def kernel_argtypes(pointers: int) -> list:
    """The ctypes signature every kernel entry point shares: `pointers` data pointers, then three sizes (int64)
    and the thread count (int)."""
    return [ctypes.c_void_p] * pointers + [ctypes.c_int64] * 3 + [ctypes.c_int]


class CompiledKernel:
    """One C source, built on first use for each build configuration (compiler and flags) and kept loaded.

    `functions` maps each C function to (its variants, its ctypes argument types). A variant is exported as
    `<function>_<capability with '-' as '_'>`; `symbol` picks the best one allowed here."""

    def __init__(self, name: str, source: str, functions: dict[str, tuple[tuple[str, ...], list]]):
        self.name, self.source, self.functions = name, C_PRELUDE + source, functions
        self._loaded: dict[tuple, tuple[ctypes.CDLL | None, str | None]] = {}
        self._functions: dict[tuple, object] = {}  # (compiler, flags, name, variant) -> the ctypes function
        self._lock = threading.Lock()

    def _load(self) -> tuple[ctypes.CDLL | None, str | None]:
        settings = kernel_settings()
        config = (settings.compiler, settings.cflags)
        if config in self._loaded:
            library, error = self._loaded[config]
            if error is None:
                return library, error
        with self._lock:
            if config not in self._loaded:
                try:
                    self._loaded[config] = (self._build(settings.compiler, settings.cflags), None)
                except (RuntimeError, OSError, AttributeError) as error:  # AttributeError: a symbol is missing
                    self._loaded[config] = (None, str(error))
        library, error = self._loaded[config]
        if error is not None:
            _warn_once(config, self.name, error)
        return library, error

    def library(self) -> ctypes.CDLL | None:
        """The loaded library for the current build configuration, or None if it cannot be built (see `error`)."""
        return self._load()[0]

    def error(self) -> str | None:
        """Why the library cannot be built here, or None."""
        return self._load()[1]

    def capability(self) -> int | None:
        """Rank of the best variant allowed now: what the CPU and the build support, capped by
        HF_RECURRENTGEMMA_CPU_ISA; None without a library."""
        library = self.library()
        if library is None:
            return None
        return min(library.hfrg_capability(), kernel_settings().isa_cap)

    def supported(self) -> list[str]:
        """Capability names this CPU and build can run (whatever the cap), weakest first."""
        library = self.library()
        return [] if library is None else list(CAPABILITIES[: library.hfrg_capability() + 1])

    def best_variant(self, variants: tuple[str, ...]) -> str | None:
        """The best of `variants` allowed now, or None without a library."""
        rank = self.capability()
        if rank is None:
            return None
        return max((v for v in variants if CAPABILITIES.index(v) <= rank), key=CAPABILITIES.index)

    def function(self, name: str, variant: str):
        """Variant `variant` of C function `name`; a variant this CPU cannot run is a named error. Found once per
        build configuration: the kernels call this on every product, so the lookup is kept."""
        settings = kernel_settings()
        key = (settings.compiler, settings.cflags, name, variant)
        found = self._functions.get(key)
        if found is None:
            library = self.library()
            if library is None:
                raise RuntimeError(f"the CPU {self.name} kernel is unavailable: {self.error()}")
            if variant not in self.supported():
                raise ValueError(f"the {variant!r} variant does not run on this CPU (it runs {self.supported()})")
            found = self._functions[key] = getattr(library, f"{name}_{symbol_suffix(variant)}")
        return found

    def _build(self, compiler: str | None, flags: tuple) -> ctypes.CDLL:
        if compiler is None:
            raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
        key = hashlib.sha256("\0".join([self.source, *flags, compiler, sys.platform]).encode())
        target = kernel_dir() / f"griffin_{self.name}_{key.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                source = Path(tmp) / f"griffin_{self.name}.c"
                source.write_text(self.source)
                built = Path(tmp) / target.name
                result = subprocess.run([compiler, *flags, str(source), "-o", str(built)], capture_output=True,
                                        text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{compiler} failed to build the {self.name} kernel:\n"
                                       f"{result.stderr.strip()[:2000]}")
                os.replace(built, target)  # atomic: concurrent builders never see a partial file
        library = ctypes.CDLL(str(target))
        library.hfrg_capability.restype = ctypes.c_int
        rank = library.hfrg_capability()  # variants beyond it are not compiled (off x86) or never called here
        for function, (variants, argtypes) in self.functions.items():
            for variant in variants:
                if CAPABILITIES.index(variant) <= rank:
                    getattr(library, f"{function}_{variant.replace('-', '_')}").argtypes = argtypes
        return library


def compile_check(source: str, compiler: str, flags: list[str], output: Path) -> subprocess.CompletedProcess:
    """Compiles a kernel's full source (`CompiledKernel.source`) to the object file `output`: the portability
    tests build with a cross compiler or a generic `-march` this way. Returns the compiler's result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.c"
        path.write_text(source)
        return subprocess.run([compiler, *flags, "-c", str(path), "-o", str(output)], capture_output=True,
                              text=True)

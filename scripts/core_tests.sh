# The core test files, run at the oldest supported Transformers by scripts/test_floor.sh and on any other release
# by scripts/test_versions.sh (sourced by both): parity with the reference, generate() in every mode, cache
# continuation, save/load and the Hub code, conversion from the PyTorch release and to and from the built-in
# format, and both compat files. What stays at the top only, and why: docs/compatibility.md.
core_tests=(tests/test_parity.py tests/test_generation.py tests/test_model_io.py tests/test_conversion_torch.py
            tests/test_conversion_builtin.py tests/test_compat.py tests/test_compat_cache.py)

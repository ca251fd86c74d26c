# The core test files, run at the oldest supported Transformers by scripts/test_floor.sh and on any other release
# by scripts/test_versions.sh (sourced by both): parity with the reference, generate() in every mode, cache
# continuation, save/load and the Hub code, conversion from the PyTorch release and to and from the built-in
# format, and both compat files. What stays at the top only, and why: docs/compatibility.md.
core_tests=(tests/model/test_parity.py tests/model/test_generation.py tests/model/test_model_io.py tests/conversion/test_conversion_torch.py
            tests/conversion/test_conversion_builtin.py tests/model/test_compat.py tests/model/test_compat_cache.py
            # the JAX reference's own Flax parameters through our conversion: no Transformers code beyond what the
            # other parity tests run, and a fifth of the core's time
            --deselect "tests/model/test_parity.py::test_flax_parameters_match_the_jax_reference")

#!/usr/bin/env bash
# Runs the core test files against other Transformers releases, each in a throwaway virtual environment, and
# prints one line per release: the pytest summary, or the first error. Usage:
#
#   scripts/test_versions.sh 5.24.0 5.25.0          # releases to try (default: the range's ends, 5.24.0)
#   TORCH_SPEC="torch==2.13.0" scripts/test_versions.sh 5.24.0
#
# torch is pinned by TORCH_SPEC (default: the CPU wheel constraints.txt pins) so pip does not pull a CUDA build.
# Nothing in the repository or its .venv is touched; the environments live under a temporary folder, removed at
# the end (KEEP=1 keeps them). docs/compatibility.md records what this found.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("${@:-5.24.0}")
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
core_tests=(tests/test_parity.py tests/test_generation.py tests/test_model_io.py tests/test_training.py
            tests/test_compat.py)
work="$(mktemp -d /tmp/hf-recurrentgemma-versions.XXXXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
printf '%s\nnumpy<2.4\n' "$torch_spec" > "$work/constraints.txt"
# The test extra without the package's own Transformers pin (the release under test replaces it).
test_deps=$(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"];
print("\n".join([x for x in d["dependencies"] if not x.startswith("transformers")] + d["optional-dependencies"]["test"]))')
for version in "${versions[@]}"; do
    env="$work/venv-$version"
    python3 -m venv "$env"
    mapfile -t deps <<< "$test_deps"
    if ! "$env/bin/pip" install -q -c "$work/constraints.txt" "transformers==$version" "${deps[@]}" \
            > "$work/install-$version.log" 2>&1; then
        echo "transformers $version: install failed (see $work/install-$version.log with KEEP=1)"
        continue
    fi
    "$env/bin/pip" install -q --no-deps -e . > /dev/null
    summary=$("$env/bin/python" -m pytest -q -p no:logging -x "${core_tests[@]}" 2>&1 | tail -n 1 || true)
    first_error=$("$env/bin/python" -c 'import hf_recurrentgemma' 2>&1 | tail -n 1 || true)
    echo "transformers $version (torch $("$env/bin/python" -c 'import torch; print(torch.__version__)')): $summary"
    [[ -z "$first_error" ]] || echo "    import: $first_error"
done

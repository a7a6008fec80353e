#!/usr/bin/env bash
# Set up (with test tools) and run the whole test suite, the notebook included.
# The slowest tests are listed at the end (suite speed is a CI requirement: well under 10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One BLAS/OpenMP thread unless told otherwise: on a shared 2-core machine two spinning threads
# per process made the suite ~5x slower (14 min vs 3). Other counts: OMP_NUM_THREADS=2 bash ...
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
# Two worker processes (pytest-xdist), one per core, each test module on one worker so its
# fixtures are built once: the suite's wall time is about halved on 2 cores. PYTEST_WORKERS=0
# runs everything in this process (e.g. for a debugger).
workers=${PYTEST_WORKERS:-2}
parallel=()
[ "$workers" != "0" ] && parallel=(-n "$workers" --dist loadscope)
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "${parallel[@]}" "$@"

#!/usr/bin/env bash
# Set up (with test tools) and run the whole test suite, the notebook included.
# The slowest tests are listed at the end (suite speed is a CI requirement: well under 10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"

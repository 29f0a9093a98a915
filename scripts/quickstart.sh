#!/usr/bin/env bash
# The main job: P2D sparse head adaptation of SmolLM2-135M-Instruct on the offline demo data set.
# Sets everything up on a fresh machine, runs offline, ~10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
p2d-prepare                               # model folder + demo data (reused when already there)
llamafactory-cli train yaml_examples/quickstart_smollm2_p2d_heads.yaml "$@"
echo "[quickstart] results in saves/smollm2-135m/p2d_heads/quickstart (adapter, p2d_heads.json, p2d_heads.png)"

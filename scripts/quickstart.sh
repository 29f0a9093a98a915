#!/usr/bin/env bash
# The main job: P2D sparse head adaptation of SmolLM2-135M-Instruct on the offline demo data set, then the
# untrained and the trained model's exact match on 50 held-out problems, side by side.
# Sets everything up on a fresh machine, runs offline, ~10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
p2d-prepare                               # model folder + demo data (reused when already there)
YAML=yaml_examples/quickstart_smollm2_p2d_heads.yaml
RUN=saves/smollm2-135m/p2d_heads/quickstart
BASE=saves/smollm2-135m/untrained
llamafactory-cli train "$YAML" "$@"
if [ ! -f "$BASE/generated_predictions.jsonl" ]; then  # the untrained model on the same problems, once
  llamafactory-cli train "$YAML" do_train=false output_dir="$BASE"
fi
p2d-eval "$RUN" --baseline "$BASE" --baseline-label untrained
echo "[quickstart] results in $RUN (adapter, p2d_heads.json, p2d_heads.png, p2d_eval.json)"

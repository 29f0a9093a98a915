#!/usr/bin/env bash
# Keep the small result records of finished CPU-twin runs in the repository, and put them back into saves/ in a new
# checkout, so that p2d-sweep counts those runs as finished (their AER reference and heads files included) and does
# not train them again; tuning runs (tune__*, finished with p2d_eval.json alone) too, so that a later session can
# regenerate the tuning report. Model weights, predictions (they hold the data set's answers) and checkpoints stay out.
#   bash scripts/results_archive.sh save      # saves/smollm2-cpu/**/ -> docs/results/runs/smollm2-cpu/**/
#   bash scripts/results_archive.sh restore   # the reverse; never overwrites a file in saves/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FILES="p2d_eval.json p2d_aer.json p2d_timings.json all_results.json trainer_log.jsonl p2d_heads.json p2d_run.json p2d_data_scores.json"
ARCHIVE=docs/results/runs
case "${1:-}" in
  save)
    for run in saves/smollm2-cpu/*/*/; do
      [ -f "$run/p2d_eval.json" ] || continue                     # finished runs only:
      case "$(basename "$run")" in tune__*) ;; *) [ -f "$run/p2d_aer.json" ] || continue ;; esac   # results runs need an AER
      target="$ARCHIVE/${run#saves/}"
      mkdir -p "$target"
      for f in $FILES; do [ -f "$run/$f" ] && cp "$run/$f" "$target/$f"; done
      echo "archived $run"
    done ;;
  restore)
    [ -d "$ARCHIVE" ] || exit 0
    (cd "$ARCHIVE" && find . -type f) | while read -r f; do
      mkdir -p "saves/$(dirname "$f")"
      [ -e "saves/$f" ] || cp "$ARCHIVE/$f" "saves/$f"
    done
    echo "restored the archived run records into saves/" ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac

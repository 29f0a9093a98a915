#!/usr/bin/env bash
# The test suite: sets everything up on a fresh machine, then runs ruff and pytest offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
ruff check .
python -m pytest "$@"

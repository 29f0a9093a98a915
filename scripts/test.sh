#!/usr/bin/env bash
# The test suite: sets everything up on a fresh machine, then runs ruff and pytest offline, in two legs:
#   1. LLaMA-Factory from PyPI (0.9.5, .venv): every test;
#   2. LLaMA-Factory main built from source (.venv-main, from ../shared/vendor): the unit tests and the `core`
#      end-to-end set. Without the source archive this leg is skipped, and says so.
# Arguments go to pytest in both legs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MAIN_SOURCE="${P2D_LLAMAFACTORY_MAIN:-$ROOT/../shared/vendor/llamafactory-main-ff6d4d1.tar.gz}"
source scripts/setup.sh
# The LLaMA-Board test drives Debian's chromium with Playwright; where it cannot be installed, that test is skipped
# and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "test.sh: installing chromium for the LLaMA-Board browser test"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the browser test will be skipped"
fi
# The Slurm test runs the sweep's job array on a local single-node Slurm (Debian's slurmctld, slurmd and munge);
# where they cannot be installed, that test is skipped and says why.
if ! command -v slurmctld >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "test.sh: installing Slurm for the sweep's job-array test"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurmctld slurmd munge) \
    >/dev/null 2>&1 || echo "test.sh: could not install Slurm; the job-array test will be skipped"
fi
ruff check .
echo "test.sh: leg 1 of 2, $(python -c 'from importlib.metadata import version; print("llamafactory", version("llamafactory"))')"
python -m pytest "$@"

if [ ! -f "$MAIN_SOURCE" ]; then
  echo "test.sh: leg 2 of 2 SKIPPED: the LLaMA-Factory main source archive $MAIN_SOURCE is absent"
  exit 0
fi
P2D_VENV="$ROOT/.venv-main" P2D_LLAMAFACTORY_SOURCE="$MAIN_SOURCE" source scripts/setup.sh
echo "test.sh: leg 2 of 2, $(python -c 'from importlib.metadata import version; print("llamafactory", version("llamafactory"))') from $MAIN_SOURCE"
python -m pytest -m "not slow or core" "$@"

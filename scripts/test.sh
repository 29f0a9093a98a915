#!/usr/bin/env bash
# The test suite: sets everything up on a fresh machine, then runs ruff and pytest offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
# The LLaMA-Board test drives Debian's chromium with Playwright; where it cannot be installed, that test is skipped
# and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "test.sh: installing chromium for the LLaMA-Board browser test"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the browser test will be skipped"
fi
ruff check .
python -m pytest "$@"

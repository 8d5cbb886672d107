#!/usr/bin/env bash
# CI: headless Chromium for the playground test (tests/test_serve_live.py). Idempotent: installs only when missing.
# Playwright (Python) comes with the dev extra and drives this system Chromium; `playwright install` is never run.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
/usr/bin/chromium --version

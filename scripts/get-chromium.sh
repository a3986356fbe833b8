#!/usr/bin/env bash
# Install Debian's `chromium` for the playground's browser tests
# (tests/e2e/test_playground_browser.py drives it with Playwright; they skip, with the reason,
# where it is missing). Nothing else needs it, and no browser is ever downloaded by Playwright.
#
# 1. Already at /usr/bin/chromium: nothing to do.
# 2. apt available (as root, or with password-less sudo): apt-get install chromium.
# 3. Otherwise: say so and fail (callers treat that as "the browser tests will skip").
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install Chromium at /usr/bin/chromium to run the browser tests" >&2
  exit 1
fi
sudo=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "installing chromium needs root (apt-get install chromium)" >&2
    exit 1
  fi
fi
echo "installing Debian package chromium ..." >&2
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null 2>&1; }
install || { $sudo apt-get update -q >/dev/null 2>&1 && install; }
[[ -x /usr/bin/chromium ]]

#!/usr/bin/env bash
# Install Debian's `chromium` for the playground's browser tests
# (tests/e2e/test_playground_browser.py drives it with Playwright; they skip, with the reason,
# where it is missing). Nothing else needs it, and no browser is ever downloaded by Playwright.
set -euo pipefail
[[ -x /usr/bin/chromium ]] && exit 0
"$(dirname "$0")/apt-install.sh" chromium
[[ -x /usr/bin/chromium ]]

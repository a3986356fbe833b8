#!/usr/bin/env bash
# Install the C load generator `wrk` (Debian package `wrk`) for `exitwise bench http --client
# wrk` and `exitwise bench peer`; their tests skip, with the reason, where it is missing.
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
"$(dirname "$0")/apt-install.sh" wrk
command -v wrk >/dev/null 2>&1

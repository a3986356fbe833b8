#!/usr/bin/env bash
# Install Debian packages when apt is available: as root, or with password-less sudo.
# Tries the package index as it is, then once more after `apt-get update`.
#
#   scripts/apt-install.sh PACKAGE...     exit 0 when installed, 1 (saying why) otherwise
set -euo pipefail

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install $* by other means" >&2
  exit 1
fi
sudo=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "installing $* needs root (apt-get install $*)" >&2
    exit 1
  fi
fi
echo "installing Debian package(s) $* ..." >&2
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null 2>&1; }
install "$@" || { $sudo apt-get update -q >/dev/null 2>&1 && install "$@"; } || {
  echo "could not install $* with apt-get" >&2
  exit 1
}

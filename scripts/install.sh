#!/usr/bin/env bash
# Install exitwise and its dependencies into a Python environment.
# Used by the Makefile (into .venv) and by the Dockerfiles (into the image), so that what CI
# exercises is what the images run.
#
#   scripts/install.sh [EXTRAS]         EXTRAS defaults to "all,dev"
#
# Environment:
#   PYTHON           interpreter to install with (default: python3)
#   TORCH_INDEX_URL  optional index for the torch wheels (e.g. the CPU-only index)
#   EDITABLE         1 (default) installs the project editable; 0 installs a normal copy
set -euo pipefail

extras="${1:-all,dev}"
python="${PYTHON:-python3}"
torch_pins=(torch==2.14.1 torchvision==0.29.1)

pip_args=(--disable-pip-version-check --no-input)
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  "$python" -m pip install "${pip_args[@]}" --index-url "$TORCH_INDEX_URL" "${torch_pins[@]}"
else
  "$python" -m pip install "${pip_args[@]}" "${torch_pins[@]}"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${EDITABLE:-1}" == "1" ]]; then
  "$python" -m pip install "${pip_args[@]}" -e "$here[$extras]"
else
  "$python" -m pip install "${pip_args[@]}" "$here[$extras]"
fi

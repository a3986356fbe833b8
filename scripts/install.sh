#!/usr/bin/env bash
# Install exitwise and its dependencies into a Python environment.
# Used by the Makefile (into .venv) and by the Dockerfiles (into the image), so that what CI
# exercises is what the images run.
#
#   scripts/install.sh [EXTRAS]                   install; EXTRAS defaults to "all,dev"
#   scripts/install.sh --torch-only [EXTRAS]      install torch (and torchvision if EXTRAS use
#                                                 it) alone: the images' first, heavy layer
#   scripts/install.sh --wheelhouse DIR [EXTRAS]  fill DIR with wheels of everything an install of
#                                                 EXTRAS needs (for WHEELHOUSE=DIR, offline)
#
# Environment:
#   PYTHON           interpreter to install (or fill the wheelhouse) with (default: python3); a
#                    wheelhouse holds wheels for this interpreter's Python version and platform
#   TORCH_VERSION    torch release to pin (default 2.14.1; with WHEELHOUSE: the wheelhouse's torch)
#   TORCH_INDEX_URL  optional index for the torch wheels (e.g. the CPU-only index)
#   EDITABLE         1 (default) installs the project editable; 0 installs a normal copy
#   WHEELHOUSE       install from this directory of wheels alone (pip --no-index): no network
#
# torchvision (pinned to 0.29.1, the release built for torch 2.14.1) is installed only with the
# extras that use it (train, all): a server needs torch alone.
set -euo pipefail

wheelhouse_out=""
torch_only=0
if [[ "${1:-}" == "--wheelhouse" ]]; then
  wheelhouse_out="${2:?usage: scripts/install.sh --wheelhouse DIR [EXTRAS]}"
  shift 2
elif [[ "${1:-}" == "--torch-only" ]]; then
  torch_only=1
  shift
fi
extras="${1:-all,dev}"
python="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

torch_pins=()
if [[ -n "${WHEELHOUSE:-}" && -z "${TORCH_VERSION:-}" ]]; then
  torch_pins+=(torch)  # the one torch the wheelhouse was filled with
else
  torch_pins+=("torch==${TORCH_VERSION:-2.14.1}")
fi
if [[ ",$extras," =~ ,(train|all), ]]; then
  torch_pins+=(torchvision==0.29.1)
fi

pip_args=(--disable-pip-version-check --no-input)
torch_index=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  torch_index=(--index-url "$TORCH_INDEX_URL")
fi

if [[ -n "$wheelhouse_out" ]]; then
  # Wheels, not sdists (`pip wheel` builds any sdist here), so that the install needs no
  # compiler; setuptools too: pip builds the project itself from source with it, offline.
  mkdir -p "$wheelhouse_out"
  wheelhouse_out="$(cd "$wheelhouse_out" && pwd)"
  "$python" -m pip wheel "${pip_args[@]}" --wheel-dir "$wheelhouse_out" \
    ${torch_index[@]+"${torch_index[@]}"} "${torch_pins[@]}"
  # The second resolution must keep the torch just saved (not the index's newest): pin the
  # exact release, local label (+cpu) included, and let pip take it from the wheelhouse.
  saved=("$wheelhouse_out"/torch-[0-9]*.whl)
  if [[ ${#saved[@]} != 1 ]]; then
    echo "error: $wheelhouse_out holds ${#saved[@]} torch wheels; empty it first" >&2
    exit 1
  fi
  exact="$(basename "${saved[0]}" | cut -d- -f2)"
  "$python" -m pip wheel "${pip_args[@]}" --wheel-dir "$wheelhouse_out" \
    --find-links "$wheelhouse_out" "torch==${exact//%2B/+}" "${torch_pins[@]:1}" \
    "${here}[$extras]" "setuptools>=68" wheel
  rm -f "$wheelhouse_out"/exitwise-*.whl  # the project is installed from its sources
  exit 0
fi

if [[ -n "${WHEELHOUSE:-}" ]]; then
  # Environment rather than flags: pip's isolated build of the project reads them too.
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"
  torch_index=()
fi
"$python" -m pip install "${pip_args[@]}" ${torch_index[@]+"${torch_index[@]}"} "${torch_pins[@]}"
if [[ "$torch_only" == "1" ]]; then
  exit 0
fi
if [[ "${EDITABLE:-1}" == "1" ]]; then
  "$python" -m pip install "${pip_args[@]}" -e "${here}[$extras]"
else
  "$python" -m pip install "${pip_args[@]}" "${here}[$extras]"
fi

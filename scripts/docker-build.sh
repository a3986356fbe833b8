#!/usr/bin/env bash
# Build exitwise:cpu or exitwise:gpu on a machine that reaches no image registry (and, with the
# default wheelhouse, no network during the build). What the docker tests and `make test-docker`
# run; docs/deployment.md, "Offline builds".
#
#   scripts/docker-build.sh cpu|gpu [-- DOCKER BUILD ARGUMENTS...]
#
# 1. The base image from Debian packages (scripts/docker-base.sh), unless it exists.
# 2. PACKAGES=wheelhouse (default): build/wheelhouse/VARIANT filled on this host with
#    `scripts/install.sh --wheelhouse` (the host's pip settings: its index, proxy, local wheels),
#    filled again only when pyproject.toml, scripts/install.sh or the torch choice change.
#    PACKAGES=index: no wheelhouse; pip in the build reads the index over the network, with this
#    host's index URLs and CA certificate passed as BuildKit secrets (never stored in a layer).
# 3. docker build with the Dockerfile's base-image and PACKAGES build arguments. Docker keeps
#    every layer, so a second build after a code change redoes only the small last install step.
#
# Environment:
#   TAG                   image to build (default exitwise:VARIANT)
#   BASE_IMAGE            base image (default exitwise-base:bookworm, made by docker-base.sh)
#   PACKAGES              wheelhouse (default) or index
#   CPU_TORCH_VERSION,    torch of the CPU image (default 2.14.1 from
#   CPU_TORCH_INDEX_URL     https://download.pytorch.org/whl/cpu; an empty URL means PyPI and the
#                           host's pip settings, e.g. a +cpu wheel in its find-links)
#   GPU_TORCH_VERSION,    torch of the GPU image (default 2.14.1 from PyPI: the CUDA 13 build)
#   GPU_TORCH_INDEX_URL
#   PYTHON                interpreter that fills the wheelhouse (default python3); its Python
#                         version must be the base image's (3.11 for Debian 12)
#   DOCKER                docker client (default: /usr/bin/docker when present, else `docker`)
set -euo pipefail

variant="${1:-}"
case "$variant" in
  cpu) dockerfile=docker/Dockerfile.cpu base_arg=PYTHON_IMAGE extras=serve,onnx-cpu
       torch_version="${CPU_TORCH_VERSION:-2.14.1}"
       torch_index="${CPU_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" ;;
  gpu) dockerfile=docker/Dockerfile base_arg=CUDA_IMAGE extras=serve,onnx
       torch_version="${GPU_TORCH_VERSION:-2.14.1}"
       torch_index="${GPU_TORCH_INDEX_URL-}" ;;
  *) echo "usage: scripts/docker-build.sh cpu|gpu [-- DOCKER BUILD ARGUMENTS...]" >&2; exit 2 ;;
esac
shift
[[ "${1:-}" == "--" ]] && shift

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tag="${TAG:-exitwise:$variant}"
base="${BASE_IMAGE:-exitwise-base:bookworm}"
packages="${PACKAGES:-wheelhouse}"
python="${PYTHON:-python3}"
docker="${DOCKER:-}"
if [[ -z "$docker" ]]; then
  if [[ -x /usr/bin/docker ]]; then docker=/usr/bin/docker; else docker=docker; fi
fi
export DOCKER="$docker"

log() { echo "docker-build.sh: $*" >&2; }
now() { date +%s; }
t0="$(now)"

BASE_IMAGE="$base" scripts/docker-base.sh

build_args=(--build-arg "$base_arg=$base" --build-arg "PACKAGES=$packages")
secrets=()
tmp=""
trap '[[ -n "$tmp" ]] && rm -rf "$tmp"' EXIT

if [[ "$packages" == wheelhouse ]]; then
  wheelhouse="build/wheelhouse/$variant"
  # What the wheels depend on: the project's requirements (not the rest of pyproject.toml),
  # install.sh, the torch choice and the Python version. The stamp lies beside the wheelhouse,
  # not in it, so that wheels filled again unchanged keep Docker's cached layers valid.
  stamp="$wheelhouse.filled"
  key="$("$python" - "$extras" "$torch_version" "$torch_index" <<'EOF'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
parts = [project.get("dependencies"), project.get("optional-dependencies"), sys.argv[1:],
         list(sys.version_info[:2]), open("scripts/install.sh").read()]
print(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest())
EOF
)"
  if [[ ! -d "$wheelhouse" || ! -f "$stamp" || "$(cat "$stamp")" != "$key" ]]; then
    log "filling $wheelhouse (torch $torch_version${torch_index:+ from $torch_index}) ..."
    rm -rf "$wheelhouse" "$stamp"
    mkdir -p "$(dirname "$wheelhouse")"  # build/ itself is missing from a fresh clone
    PYTHON="$python" TORCH_VERSION="$torch_version" TORCH_INDEX_URL="$torch_index" \
      scripts/install.sh --wheelhouse "$wheelhouse" "$extras" >"build/wheelhouse-$variant.log" 2>&1 \
      || { tail -n 20 "build/wheelhouse-$variant.log" >&2; log "filling $wheelhouse failed"; exit 1; }
    echo "$key" >"$stamp"
  fi
  log "$wheelhouse: $(du -sh "$wheelhouse" | cut -f1) ($(( $(now) - t0 )) s so far)"
else
  build_args+=(--build-arg "TORCH_VERSION=$torch_version" --build-arg "TORCH_INDEX_URL=$torch_index")
  # This host's pip settings that mean something inside a build: index URLs (http or https; not
  # its local file:// indexes or find-links) and the CA certificate of a TLS-inspecting proxy.
  tmp="$(mktemp -d)"
  "$python" -m pip config list 2>/dev/null | "$python" -c '
import sys
out, cert = ["[global]"], ""
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    value = value.strip("\x27\"")
    name = key.split(".", 1)[-1]
    if name in ("index-url", "extra-index-url", "trusted-host"):
        kept = " ".join(v for v in value.split() if name == "trusted-host" or v.startswith("http"))
        if kept:
            out.append(f"{name} = {kept}")
    elif name == "cert":
        cert = value
print("\n".join(out + (["cert = /run/secrets/pip-ca.crt"] if cert else [])))
print(cert, file=sys.stderr)
' >"$tmp/pip.conf" 2>"$tmp/cert"
  secrets+=(--secret "id=pip.conf,src=$tmp/pip.conf")
  cert="$(cat "$tmp/cert")"
  if [[ -n "$cert" ]]; then
    secrets+=(--secret "id=pip-ca.crt,src=$cert")
  fi
fi

log "building $tag from $dockerfile ($base, packages from the $packages) ..."
DOCKER_BUILDKIT=1 "$docker" build -f "$dockerfile" -t "$tag" "${build_args[@]}" "${secrets[@]}" "$@" .
log "$tag built in $(( $(now) - t0 )) s: $("$docker" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1 / 1e9}')"

#!/usr/bin/env bash
# A base image for docker/Dockerfile and docker/Dockerfile.cpu made from Debian packages alone, for
# machines that reach a Debian mirror but no image registry (no `FROM python:...` pull):
# debootstrap a minimal Debian with python3 and its venv module, then `docker import` it.
#
#   scripts/docker-base.sh            build exitwise-base:bookworm unless it exists
#   scripts/docker-base.sh --force    build it again (e.g. for Debian's security updates)
#
# Use it through the Dockerfiles' base-image build arguments (scripts/docker-build.sh does):
#   --build-arg PYTHON_IMAGE=exitwise-base:bookworm   (CPU image)
#   --build-arg CUDA_IMAGE=exitwise-base:bookworm     (GPU image: CUDA comes from torch's wheels)
#
# Environment:
#   BASE_IMAGE  tag to create (default exitwise-base:$SUITE)
#   SUITE       Debian release (default bookworm: Python 3.11, the release of this project's CI)
#   MIRROR      Debian mirror (default: the first one this machine's apt uses, else deb.debian.org)
#   DOCKER      docker client (default: /usr/bin/docker when present, since a client without
#               BuildKit may come first on PATH, else `docker`)
# Needs root (debootstrap), debootstrap and a running Docker engine. About a minute here.
set -euo pipefail

suite="${SUITE:-bookworm}"
tag="${BASE_IMAGE:-exitwise-base:$suite}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

docker="${DOCKER:-}"
if [[ -z "$docker" ]]; then
  if [[ -x /usr/bin/docker ]]; then docker=/usr/bin/docker; else docker=docker; fi
fi

die() { echo "docker-base.sh: $*" >&2; exit 1; }

if [[ "$force" == 0 ]] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag exists (scripts/docker-base.sh --force builds it again)"
  exit 0
fi
[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
"$docker" info >/dev/null 2>&1 || die "no Docker engine answers $docker (is dockerd running?)"

apt_mirror() {
  # deb822 (Debian 12: /etc/apt/sources.list.d/debian.sources) or one-line sources; the first
  # URI that serves the plain Debian archive (not security, not a third-party repository).
  local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  local f
  for f in "${files[@]}"; do
    [[ -f "$f" ]] || continue
    grep -hoE '(URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)(https?://[^[:space:]]+)' "$f" \
      | grep -oE 'https?://[^[:space:]]+' | grep -E '/debian/?$' | head -n 1 && return 0
  done
  return 1
}
mirror="${MIRROR:-$(apt_mirror || echo http://deb.debian.org/debian)}"

work="$(mktemp -d /var/tmp/exitwise-base.XXXXXX)"
root="$work/root"
cleanup() {
  # debootstrap mounts /proc and /sys inside the tree; never delete through a mount.
  local m
  awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "debootstrap $suite from $mirror into $root ..."
# minbase: essential packages and apt; python3-venv brings ensurepip (pip for the venv);
# ca-certificates lets pip reach an HTTPS index from a build.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# What an image does not need: downloaded packages and package lists (apt-get update fetches
# them again), as in the official slim images.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
python_version="$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

tar -C "$root" --numeric-owner -c . | "$docker" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.description=\"Debian $suite (debootstrap minbase) with Python $python_version and venv\"" \
  --message "scripts/docker-base.sh: debootstrap $suite from $mirror" \
  - "$tag" >/dev/null
echo "$tag: Debian $suite, Python $python_version ($("$docker" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}'))"

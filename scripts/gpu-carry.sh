#!/usr/bin/env bash
# Prepare what scripts/gpu-check.sh needs on a lent GPU machine that has no network: one folder,
# .gpu-carry/ (git-ignored), that the device tool's `run` carries beside the working tree. Then
# print the exact `run` call. Run it here, where PyPI and apt work (docs/gpu-check.md).
#
#   scripts/gpu-carry.sh            # fill .gpu-carry/ (idempotent; about 45 MB)
#   make gpu-carry                  # the same
#
# .gpu-carry/
#   wheels/                the Python packages the GPU image lacks (or may hold older), for
#                          CPython 3.12 manylinux x86-64, at the versions this project's .venv
#                          runs (--no-deps each)
#   wrk/                   Debian's wrk and libluajit, unpacked with dpkg -x (not installed)
#   data/fashion-mnist/    the four idx.gz files (about 30 MB)
#   bundles/demo/          the demo bundle (`make demo`: trained, calibrated, exported), trimmed
#                          to what serving reads: manifest, weights, held-out split, calibration,
#                          onnx/ (about 2.5 MB); without it the check trains one there (~1 min)
#
# Environment: PYTHON (default .venv/bin/python), CARRY (default .gpu-carry), DEMO (the bundle to
# carry, default runs/demo), FASHION_MNIST (default: data/fashion-mnist, then Debian's).
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-.venv/bin/python}"
carry="${CARRY:-.gpu-carry}"
demo="${DEMO:-runs/demo}"
limit_mib=60 # the tool carries 64 MiB with the working tree; keep room for the tree itself

# What the GPU image (KINDS.md: CPython 3.12, torch 2.11, onnxruntime CPU) lacks for serving and
# the serving benchmarks; everything else the project imports is there.
# typing-extensions and annotated-doc are there, but pydantic and fastapi may need newer ones:
# gpu-check.sh installs a carried wheel where the machine's version is missing or older.
packages=(pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv
  fastapi starlette uvicorn httptools python-multipart opentelemetry-api typing-extensions
  annotated-doc)

mkdir -p "$carry/wheels" "$carry/wrk" "$carry/data/fashion-mnist" "$carry/bundles"

echo "== wheels (CPython 3.12, manylinux x86-64) into $carry/wheels"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
for name in "${packages[@]}"; do
  version="$("$py" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
  if [[ -z "$version" ]]; then
    echo "error: $name is not installed in $py's environment (run make venv first)" >&2
    exit 1
  fi
  stem="$(echo "$name" | tr '-' '_')"
  if compgen -G "$carry/wheels/${stem}-${version}-*.whl" >/dev/null \
    || compgen -G "$carry/wheels/${name}-${version}-*.whl" >/dev/null; then
    continue
  fi
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$carry/wheels" \
    "$name==$version" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
done
ls "$carry/wheels"

echo "== wrk (Debian packages, unpacked) into $carry/wrk"
if [[ ! -x "$carry/wrk/usr/bin/wrk" ]]; then
  debs="$(mktemp -d)"
  (cd "$debs" && apt-get download wrk libluajit-5.1-2 >/dev/null) || {
    apt-get update -q >/dev/null && (cd "$debs" && apt-get download wrk libluajit-5.1-2 >/dev/null)
  }
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$carry/wrk"; done
  rm -rf "$carry/wrk/usr/share" "$debs"
fi
LD_LIBRARY_PATH="$PWD/$carry/wrk/usr/lib/x86_64-linux-gnu" "$carry/wrk/usr/bin/wrk" --version 2>&1 \
  | head -1 || true

echo "== Fashion-MNIST into $carry/data/fashion-mnist"
src=""
for dir in "${FASHION_MNIST:-}" data/fashion-mnist /usr/share/datasets/fashion-mnist; do
  if [[ -n "$dir" && -f "$dir/train-images-idx3-ubyte.gz" ]]; then
    src="$dir"
    break
  fi
done
if [[ -z "$src" ]]; then
  echo "error: no Fashion-MNIST (idx .gz files) found; run scripts/get-fashion-mnist.sh" >&2
  exit 1
fi
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
  t10k-labels-idx1-ubyte; do
  cp -u "$src/$f.gz" "$carry/data/fashion-mnist/"
done

echo "== the demo bundle ($demo) into $carry/bundles/demo"
if [[ -f "$demo/calibration.json" && -f "$demo/onnx/manifest.json" ]]; then
  rm -rf "$carry/bundles/demo"
  mkdir -p "$carry/bundles/demo"
  cp "$demo"/{manifest.json,weights.safetensors,heldout_indices.json,calibration.json} \
    "$carry/bundles/demo/"
  cp -r "$demo/onnx" "$carry/bundles/demo/"
else
  echo "note: $demo is not a calibrated, exported bundle (make demo); the check will train one"
fi

total_kib="$(du -sk "$carry" | cut -f1)"
tree_kib="$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null \
  | tail -1 | cut -f1)"
echo "== $carry: $((total_kib / 1024)) MiB; the working tree: $((tree_kib / 1024)) MiB"
if ((total_kib + tree_kib > limit_mib * 1024)); then
  echo "error: more than $limit_mib MiB would travel; the device tool carries 64 MiB in all" >&2
  exit 1
fi

cat <<EOF

The device tool's call (one command; docs/gpu-check.md):
  run(command="bash scripts/gpu-check.sh \$OUT/gpu-check --pack",
      carry=["$carry"], timeout_s=600)
Afterwards, here:  scripts/gpu-unpack.sh FILES_AT/gpu-check   (then review and commit)
EOF

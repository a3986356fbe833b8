#!/usr/bin/env bash
# Make Fashion-MNIST available without any download at run time.
#
# 1. Already there (Debian's dataset-fashion-mnist, or data/fashion-mnist): nothing to do.
# 2. apt available: install Debian's package dataset-fashion-mnist
#    (files land in /usr/share/datasets/fashion-mnist).
# 3. Otherwise, when ALLOW_DOWNLOAD=1 (make demo sets it): torchvision downloads the idx files
#    into data/fashion-mnist.
set -euo pipefail

debian_dir=/usr/share/datasets/fashion-mnist
local_dir="${FMNIST_DIR:-data/fashion-mnist}"

have() { [[ -f "$1/train-images-idx3-ubyte.gz" || -f "$1/train-images-idx3-ubyte" ]]; }

if have "$debian_dir" || have "$local_dir"; then
  exit 0
fi

if "$(dirname "$0")/apt-install.sh" dataset-fashion-mnist && have "$debian_dir"; then
  exit 0
fi

if [[ "${ALLOW_DOWNLOAD:-0}" == "1" ]]; then
  echo "downloading Fashion-MNIST with torchvision into $local_dir ..." >&2
  "${PYTHON:-python3}" - "$local_dir" <<'PY'
import shutil, sys
from pathlib import Path
from torchvision.datasets import FashionMNIST
dest = Path(sys.argv[1])
tmp = dest.parent / (dest.name + ".download")
for train in (True, False):
    FashionMNIST(str(tmp), train=train, download=True)
dest.mkdir(parents=True, exist_ok=True)
for f in (tmp / "FashionMNIST" / "raw").glob("*.gz"):
    shutil.copy2(f, dest / f.name)
shutil.rmtree(tmp)
PY
  have "$local_dir" && exit 0
fi

echo "Fashion-MNIST not found in $debian_dir or $local_dir; install Debian's dataset-fashion-mnist" \
  "(apt-get install dataset-fashion-mnist) or copy the four idx files into $local_dir" >&2
exit 1

#!/usr/bin/env bash
# Fill .gpu-carry/ with what bench/gpu_check.sh's "fast" part needs on the device machine, which
# reaches no network and has neither the developers' data nor tensorboardX (the trainer's event
# files): the JPEG archive and make-cifar10 from ../shared (the image has Pillow, which
# make-cifar10 needs), and the tensorboardX wheel from the package index (pure Python; its needs,
# numpy, packaging and protobuf, are in the image). About 17 MB, under the 64 MiB a run carries.
# The folder is ignored through .git/info/exclude, so it is never committed.
# Usage: bench/gpu_carry.sh [SHARED]   (default ../shared), then run with carry [".gpu-carry"]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
shared=${1:-../shared}
dest=.gpu-carry
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx "/$dest/" "$exclude" 2>/dev/null || echo "/$dest/" >> "$exclude"
mkdir -p "$dest/data" "$dest/tools" "$dest/whl"
cp "$shared/data/cifar10-train-jpeg.tar.gz" "$dest/data/"
cp "$shared/tools/make-cifar10" "$dest/tools/"
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$dest/whl" "tensorboardX==2.6.5"
git check-ignore -q "$dest" || { echo "error: $dest is not ignored by git" >&2; exit 1; }
du -sh "$dest"

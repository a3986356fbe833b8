#!/usr/bin/env bash
# Put what scripts/gpu-check.sh --pack brought back from a GPU machine into the repository:
# docs/benchmarks/gpu-<gpu>/, docs/RESULTS-gpu.md and docs/results-gpu/ (to review and commit),
# and the logs under runs/gpu-check/ (git-ignored). Prints the summary and the commit to make.
#
#   scripts/gpu-unpack.sh DIR      # DIR holds summary.md and gpu-check.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: scripts/gpu-unpack.sh DIR (holding gpu-check.tar.gz)}"
archive="$dir/gpu-check.tar.gz"
[[ -f "$archive" ]] || {
  echo "error: $archive not found" >&2
  exit 1
}
# Only these two trees, relative, nothing else (an archive is data, not instructions).
if tar -tzf "$archive" | grep -v -e '^docs/' -e '^logs/' -e '^docs$' -e '^logs$' | grep -q .; then
  echo "error: $archive holds paths outside docs/ and logs/; not unpacked" >&2
  exit 1
fi
mkdir -p runs/gpu-check
rm -rf runs/gpu-check/logs
tar -xzf "$archive" --no-same-owner -C runs/gpu-check logs
tar -xzf "$archive" --no-same-owner docs
cat "$dir/summary.md"
new=$(tar -tzf "$archive" | grep '^docs/' | grep -v '/$' | sort)
echo
echo "Written (review, then commit with explicit paths):"
while read -r file; do echo "  $file"; done <<<"$new"
paths=$(echo "$new" | sed -e 's#^\(docs/benchmarks/gpu-[^/]*\)/.*#\1#' \
  -e 's#^\(docs/results-gpu\)/.*#\1#' | sort -u | tr '\n' ' ')
echo "  git add $paths"
echo "  git commit -m 'GPU check on <GPU>: <what it showed>' -- $paths"

#!/usr/bin/env bash
# Re-measure every benchmark table of docs/BENCHMARKS.md on this machine, on the demo bundle
# (`make demo` first: trained with configs/demo.yaml, calibrated at 3, 5 and 8 MFLOPs, exported).
# Each benchmark writes its files under docs/benchmarks/ (and ITEM.cmd, the commands it ran);
# then scripts/benchmarks_report.py assembles docs/BENCHMARKS.md from them. Ratios inside a
# table always come from workloads interleaved in one invocation. Run it on an idle machine.
#
#   scripts/benchmarks.sh            # all of them (about 8 minutes on a 2-core CPU)
#   scripts/benchmarks.sh engine     # or a subset: engine backends http calibration train
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-.venv/bin/python}"
bundle="${BENCH_BUNDLE:-runs/demo}"
out=docs/benchmarks
port="${BENCH_PORT:-8090}"
what=("$@")
[[ ${#what[@]} -gt 0 ]] || what=(engine backends http calibration train)

# Runs `exitwise ARGS` and records the command line in $out/$item.cmd for the report.
ew() {
  echo "\$ exitwise $*" >&2
  echo "exitwise $*" >>"$out/$item.cmd"
  "$py" -m exitwise "$@"
}

if [[ ! -f "$bundle/calibration.json" || ! -f "$bundle/onnx/manifest.json" ]]; then
  echo "error: $bundle is not a calibrated and exported bundle; run \`make demo\` first" >&2
  exit 1
fi
mkdir -p "$out"

for item in "${what[@]}"; do
  : >"$out/$item.cmd"
  case "$item" in
    engine)
      ew bench engine "$bundle" --batch-sizes 1,32 --images 2000 --batch1-images 300 --repeats 3 \
        --json "$out/engine.json" --markdown "$out/engine.md"
      ;;
    backends)
      ew bench backends "$bundle" --batch-sizes 1,32 --images 512 --repeats 3 --out "$out/backends.md"
      ;;
    http)
      log="$(mktemp)"
      # One torch thread for the server: the load client runs on the same machine and takes
      # the other core (two threads would spin against it).
      echo "exitwise serve $bundle --port $port --torch-threads 1   # in the background" \
        >>"$out/$item.cmd"
      "$py" -m exitwise serve "$bundle" --port "$port" --torch-threads 1 >"$log" 2>&1 &
      server=$!
      trap 'kill -INT $server 2>/dev/null || true' EXIT
      for _ in $(seq 1 240); do
        "$py" - "$port" <<'PY' && break
import sys, httpx
try:
    sys.exit(0 if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status_code == 200 else 1)
except httpx.TransportError:
    sys.exit(1)
PY
        sleep 0.5
      done
      ew bench engine "$bundle" --batch-sizes 1,32 --images 1000 --batch1-images 200 --repeats 2 \
        --threads 1 --json "$out/engine-oracle.json" >/dev/null
      ew bench http --url "http://127.0.0.1:$port" --concurrency 1,16 --requests 600 --duration 60 \
        --rounds 2 --dataset fashion-mnist --oracle "$out/engine-oracle.json" \
        --json "$out/http.json" --markdown "$out/http.md"
      ew bench http --url "http://127.0.0.1:$port" --concurrency 4 --images-per-request 16 \
        --requests 200 --duration 60 --rounds 2 --dataset fashion-mnist \
        --json "$out/http-batched.json" --markdown "$out/http-batched.md"
      kill -INT "$server"; wait "$server" || true
      trap - EXIT
      rm -f "$log"
      ;;
    calibration)
      ew bench calibration --repeat 7 --json >"$out/calibration.json"
      ;;
    train)
      ew bench train --config configs/fmnist.yaml --set cpu_threads=1 --steps 5 --warmup 1 --rounds 3 --device cpu \
        --double-backward --markdown "$out/train.md" --json >"$out/train.json"
      ;;
    *)
      rm -f "$out/$item.cmd"
      echo "error: unknown benchmark '$item' (engine backends http calibration train)" >&2
      exit 2
      ;;
  esac
done

"$py" scripts/benchmarks_report.py

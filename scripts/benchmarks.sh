#!/usr/bin/env bash
# Re-measure every benchmark table of docs/BENCHMARKS.md on this machine. Each benchmark writes
# its files under docs/benchmarks/ (and ITEM.cmd, the commands it ran); then
# scripts/benchmarks_report.py assembles docs/BENCHMARKS.md from them. Ratios inside a table
# always come from workloads interleaved in one invocation. Run it on an idle machine: a process
# left running (another server, a training job) skews every figure on 2 cores.
#
# Bundles: runs/demo (`make demo`: configs/demo.yaml, calibrated at 1.8, 2.4 and 4 MFLOPs, exported)
# and, for the heavier model, runs/fmnist-rgb-bench (configs/fmnist-rgb-bench.yaml, calibrated
# at 10, 15 and 25 MFLOPs). The HTTP benchmarks pin the server to one core and the C load client
# (wrk, Debian package `wrk`) to the other, the shape of a 1-vCPU replica.
#
#   scripts/benchmarks.sh                   # all of them (about 40 minutes on a 2-core CPU)
#   scripts/benchmarks.sh engine http       # or a subset: demo engine http peer drift load
#                                           #   heavy backends calibration train
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-.venv/bin/python}"
bundle="${BENCH_BUNDLE:-runs/demo}"
heavy="${BENCH_HEAVY:-runs/fmnist-rgb-bench}"
out=docs/benchmarks
port="${BENCH_PORT:-8090}"
server_cpu="${BENCH_SERVER_CPU:-1}"
client_cpu="${BENCH_CLIENT_CPU:-0}"
what=("$@")
[[ ${#what[@]} -gt 0 ]] || what=(demo engine http peer drift load heavy backends calibration train)

# Runs `exitwise ARGS` (under `taskset` when `pin` is set) and records the command line in
# $out/$item.cmd for the report.
pin=()
ew() {
  local shown="exitwise $*"
  [[ ${#pin[@]} -eq 0 ]] || shown="${pin[*]} $shown"
  echo "\$ $shown" >&2
  echo "$shown" >>"$out/$item.cmd"
  "${pin[@]}" "$py" -m cli "$@"
}

server_pid=""
# Starts `exitwise serve BUNDLE ARGS` pinned to the server core, in its own process group.
serve() {
  local b=$1
  shift
  echo "taskset -c $server_cpu exitwise serve $b --port $port --torch-threads 1 $*   # in the background" \
    >>"$out/$item.cmd"
  setsid taskset -c "$server_cpu" "$py" -m cli serve "$b" --port "$port" --torch-threads 1 \
    --log-level warning "$@" >"$out/.server.log" 2>&1 &
  server_pid=$!
  trap stop_server EXIT
  for _ in $(seq 1 240); do
    "$py" - "$port" <<'PY' && return 0
import sys, httpx
try:
    sys.exit(0 if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status_code == 200 else 1)
except httpx.TransportError:
    sys.exit(1)
PY
    sleep 0.5
  done
  echo "error: the server did not become ready (see $out/.server.log)" >&2
  exit 1
}

# Stops the server's whole process group and waits until it is gone.
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 -- "-$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  rm -f "$out/.server.log"
  trap - EXIT
}

need() {
  if [[ ! -f "$1/calibration.json" || ! -f "$1/onnx/manifest.json" ]]; then
    echo "error: $1 is not a calibrated and exported bundle (see the header of $0)" >&2
    exit 1
  fi
}

need "$bundle"
mkdir -p "$out"
command -v wrk >/dev/null || scripts/get-wrk.sh

for item in "${what[@]}"; do
  : >"$out/$item.cmd"
  case "$item" in
    demo)
      # `make demo` in a fresh clone of HEAD, timed (its own .venv, training, calibration,
      # export, serving); the clone is removed afterwards.
      echo "python scripts/demo_fresh.py --port $port" >>"$out/demo.cmd"
      "$py" scripts/demo_fresh.py --out "$out" --port "$port"
      ;;
    engine)
      # One torch thread on the server's core, as `exitwise serve --torch-threads 1` runs there.
      pin=(taskset -c "$server_cpu")
      ew bench engine "$bundle" --batch-sizes 1,32 --images 2000 --batch1-images 300 --repeats 3 \
        --threads 1 --json "$out/engine.json" --markdown "$out/engine.md"
      pin=()
      ;;
    http)
      [[ -f "$out/engine.json" ]] || { echo "error: run the engine benchmark first" >&2; exit 1; }
      serve "$bundle"
      ew bench http --url "http://127.0.0.1:$port" --client wrk --client-cpus "$client_cpu" \
        --concurrency 1,16 --duration 10 --rounds 3 --dataset fashion-mnist \
        --oracle "$out/engine.json" --json "$out/http.json" --markdown "$out/http.md"
      ew bench http --url "http://127.0.0.1:$port" --concurrency 4 --images-per-request 16 \
        --requests 200 --duration 60 --rounds 2 --dataset fashion-mnist \
        --json "$out/http-batched.json" --markdown "$out/http-batched.md"
      stop_server
      ;;
    peer)
      "$py" -c "import litserve" 2>/dev/null || "$py" -m pip install -q 'litserve==0.2.19'
      ew bench peer "$bundle" --connections 1,16 --duration 10 --rounds 2 \
        --server-cpus "$server_cpu" --client-cpus "$client_cpu" \
        --json "$out/peer.json" --markdown "$out/peer.md"
      ;;
    drift)
      ew bench drift "$bundle" --threads 1 \
        --json "$out/drift.json" --markdown "$out/drift.md" --figure "$out/drift.png"
      ;;
    load)
      # Open loop: up to 2000 connections at once on each side.
      ulimit -n 8192 2>/dev/null || true
      # A bounded queue, so that an overloaded server without degradation sheds (503). 64 images
      # rather than 128: past even exit 1's capacity (4x) the default deadline_policy=late still
      # queues each request and answers it from exit 1, so the queue bound is what caps the wait
      # of those answers; 64 images of exit-1 work (about 1.1 ms each here) stay inside the 100 ms
      # deadline, 128 would not.
      serve "$bundle" --max-queue-images 64
      ew bench http --url "http://127.0.0.1:$port" --overload 1,2,4 --overload-deadline-ms 100 \
        --duration 10 --client-cpus "$client_cpu" --dataset fashion-mnist \
        --json "$out/overload.json" --markdown "$out/overload.md" --figure "$out/overload.png"
      stop_server
      # A fresh server with the default queue: the sweep stays below capacity, and a run without
      # a deadline at 0.9x may queue more than 64 images in a burst.
      serve "$bundle"
      ew bench http --url "http://127.0.0.1:$port" --deadlines 5,10,20,50 --deadline-loads 0.5,0.9 \
        --duration 10 --client-cpus "$client_cpu" --dataset fashion-mnist \
        --json "$out/deadlines.json" --markdown "$out/deadlines.md"
      stop_server
      ;;
    heavy)
      need "$heavy"
      pin=(taskset -c "$server_cpu")
      ew bench engine "$heavy" --batch-sizes 1,32 --images 1000 --batch1-images 200 --repeats 2 \
        --threads 1 --json "$out/heavy-engine.json" --markdown "$out/heavy-engine.md"
      pin=()
      serve "$heavy"
      ew bench http --url "http://127.0.0.1:$port" --client wrk --client-cpus "$client_cpu" \
        --concurrency 1,16 --duration 10 --rounds 2 --dataset fashion-mnist \
        --oracle "$out/heavy-engine.json" --json "$out/heavy-http.json" \
        --markdown "$out/heavy-http.md"
      stop_server
      ;;
    backends)
      ew bench backends "$bundle" --batch-sizes 1,32 --images 512 --repeats 3 --out "$out/backends.md"
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
      echo "error: unknown benchmark '$item' (demo engine http peer drift load heavy backends calibration train)" >&2
      exit 2
      ;;
  esac
done

"$py" scripts/benchmarks_report.py

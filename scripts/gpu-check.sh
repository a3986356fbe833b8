#!/usr/bin/env bash
# Every CUDA path and the paper-scale L2W comparison in one command that fits a short GPU lease
# (docs/gpu-check.md is the run book). Each part runs under its own time box, so a slow part is
# cut and reported, never allowed to eat the rest; the whole script keeps within GPU_CHECK_BUDGET_S.
#
#   scripts/gpu-check.sh OUTDIR [--pack]
#
# OUTDIR receives logs/ (one log per part, status.tsv) and docs/ (results laid out as in the repo:
# docs/benchmarks/gpu-<gpu>/, docs/RESULTS-gpu.md, docs/results-gpu/), and summary.md, which is
# also printed last. --pack leaves only summary.md and gpu-check.tar.gz (the device tool brings
# back at most 8 files). Re-running redoes the measurements and resumes an interrupted comparison.
#
# Parts (GPU_CHECK_PARTS, default all, in this order):
#   tests     the tests marked `cuda`
#   serving   bench engine + bench http (wrk) on the demo bundle: torch fp32, bf16, fp16, onnx CUDA
#   train     bench train on the comparison's recipe (L2W vs uniform, AMP on), and the same by as
#             many processes at once as the comparison has runs (how much sharing the GPU costs)
#   compare   L2W and uniform x 3 seeds + uniform with He init, concurrently, fitted to the box;
#             calibration and docs/RESULTS-gpu.md (scripts/results.py)
#
# Environment:
#   GPU_CHECK_DRY=1       tiny sizes, any machine (the CPU dry run: tests/e2e/test_gpu_check_dry.py)
#   GPU_CHECK_CARRY=DIR   the carried folder (default .gpu-carry; scripts/gpu-carry.sh fills it)
#   GPU_CHECK_DATA=DIR    Fashion-MNIST (default: DIR/data/fashion-mnist of the carry, else the
#                         project's default places)
#   GPU_CHECK_WORK=DIR    bulky work files: installed wheels, bundles, comparison runs
#                         (default /tmp/gpu-check-work)
#   GPU_CHECK_BUDGET_S    wall-clock budget of the whole script (default 560; the device tool's
#                         limit per command is 600)
#   GPU_CHECK_BOXES       per-part boxes overriding the defaults, e.g. "serving=120 train=60"
#   PYTHON                interpreter (default .venv/bin/python if present, else python3)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo="$PWD"
me="$repo/scripts/gpu-check.sh"

# ---------------------------------------------------------------------------------------------
# Parts. Each runs in its own process (re-invoked as `gpu-check.sh --part NAME`) under `timeout`,
# with the state main() exported. A part's one-line notes go to logs/NAME.note.

note() { echo "$*" | tee -a "$logs/${note_part:-$part}.note"; }

ew() { # exitwise ARGS, echoed into the part's log
  echo "[$(date +%T)] \$ exitwise $*" >&2
  "$py" -m cli "$@"
}

# A sub-step in its own box. `timeout` makes itself a process-group leader, out of reach of the
# part's own box, so its group is recorded (logs/pg.PID) for main to end if the part is cut.
boxed() { # BOX CMD...
  local box=$1 pid rc
  shift
  timeout -k 5 "$box" "$@" &
  pid=$!
  touch "$logs/pg.$pid"
  wait "$pid"
  rc=$?
  rm -f "$logs/pg.$pid"
  return $rc
}

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

part_tests() {
  if [[ "$has_cuda" != 1 ]]; then
    # (`make test` collects these files everywhere: they cannot rot unseen.)
    note "skipped: no CUDA"
    echo "skipped: no CUDA ($cuda_test_files)" >"$res/tests.txt"
    return
  fi
  local files
  read -ra files <<<"$cuda_test_files"
  if [[ "$onnx_cuda" != 1 ]]; then
    read -ra files <<<"$(printf '%s\n' "${files[@]}" | grep -v test_onnx_cuda.py | tr '\n' ' ')"
    note "onnx CUDA tests not run: onnxruntime $ort_version has no CUDA provider"
  fi
  "$py" -m pytest -m cuda -q -p no:cacheprovider --timeout 120 "${files[@]}" 2>&1 \
    | tee "$res/tests.txt"
  return "${PIPESTATUS[0]}"
}

demo_bundle() { # the bundle the serving part measures: carried, or trained here
  local out="$work/demo"
  [[ -f "$carry/bundles/demo/calibration.json" ]] && out="$carry/bundles/demo"
  if [[ ! -f "$out/calibration.json" ]]; then
    echo "training the demo bundle (none was carried)" >&2
    ew train --config configs/demo.yaml --out "$out" --overwrite "${data_args[@]}" \
      "${demo_sets[@]}" >&2 || return 1
    ew calibrate "$out" --fractions 0.25,0.4,0.65 "${data_args[@]}" >&2 || return 1
  fi
  # The graphs only where onnxruntime can run them on the GPU (the only onnx variant measured).
  if [[ "$onnx_cuda" == 1 && ! -f "$out/onnx/manifest.json" ]]; then
    ew export "$out" "${data_args[@]}" >&2 || return 1
  fi
  echo "$out"
}

serve_and_load() { # VARIANT BUNDLE PRECISION BACKEND: start a server, load it with wrk, stop it
  local v=$1 bundle=$2 precision=$3 backend=$4 port log pid
  if ! command -v wrk >/dev/null; then
    note "$v http: skipped: no wrk"
    return 0
  fi
  port=$(free_port)
  log="$logs/serve-$v.log"
  local pin=() gpu=()
  if [[ $ncpu -gt 1 ]] && command -v taskset >/dev/null; then pin=(taskset -c "1-$((ncpu - 1))"); fi
  [[ "$backend" == onnx && "$device" == cuda ]] && gpu=(--require-gpu)
  EXITWISE_PRECISION=$precision setsid "${pin[@]}" "$py" -m cli serve "$bundle" \
    --port "$port" --device "$device" --backend "$backend" "${gpu[@]}" >"$log" 2>&1 &
  pid=$! # setsid: the server leads its own session and group (ended below, or by main)
  touch "$logs/pg.$pid"
  for _ in $(seq 1 120); do
    "$py" -c "import sys,urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:$port/readyz',timeout=1).status!=200)" \
      2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  local rc=0
  ew bench http --url "http://127.0.0.1:$port" --client wrk --client-cpus 0 \
    --concurrency "$http_concurrency" --duration "$http_duration" --requests 1000000 \
    --dataset fashion-mnist "${data_args[@]}" --oracle "$res/engine-$v.json" \
    --json "$res/http-$v.json" --markdown "$res/http-$v.md" || rc=$?
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$logs/pg.$pid"
  return $rc
}

part_serving() {
  local bundle failed=0
  bundle=$(demo_bundle) || return 1
  echo "bundle: $bundle" >&2
  # variant precision backend: torch on CUDA in three precisions, then onnxruntime's CUDA provider
  local variants=("fp32 fp32 torch" "bf16 bf16 torch" "fp16 fp16 torch" "onnx-cuda fp32 onnx")
  for spec in "${variants[@]}"; do
    read -r v precision backend <<<"$spec"
    if [[ "$has_cuda" != 1 && "$v" != fp32 ]]; then
      note "$v: skipped: no CUDA"
      continue
    fi
    if [[ "$v" == onnx-cuda && "$onnx_cuda" != 1 ]]; then
      note "$v: unavailable: onnxruntime $ort_version has no CUDA provider ($ort_providers)"
      continue
    fi
    echo "== $v" >&2
    if ! boxed "$engine_box" env EXITWISE_PRECISION="$precision" "$py" -m cli bench engine \
      "$bundle" --device "$device" --backend "$backend" "${data_args[@]}" "${engine_args[@]}" \
      --json "$res/engine-$v.json" --markdown "$res/engine-$v.md"; then
      note "$v engine: failed or cut at ${engine_box}s"
      failed=1
      continue
    fi
    if ! boxed "$http_box" env note_part=serving bash "$me" --part serve_and_load "$v" "$bundle" \
      "$precision" "$backend"; then
      note "$v http: failed or cut at ${http_box}s"
      failed=1
    fi
  done
  return $failed
}

part_train() {
  local recipe=configs/fmnist-rgb-paper.yaml
  ew bench train --config "$recipe" --device "$device" --batch-size "$train_batch" \
    "${bench_train_args[@]}" "${compare_sets_args[@]}" --markdown "$res/train.md" --json \
    >"$res/train.json" || return 1
  cat "$res/train.md"
  # The comparison runs $compare_runs processes at once: time the same iterations that way.
  echo "== $compare_runs processes at once" >&2
  local pids=() i
  for i in $(seq 1 "$compare_runs"); do
    "$py" -m cli bench train --config "$recipe" --device "$device" \
      --batch-size "$train_batch" "${probe_args[@]}" "${compare_sets_args[@]}" --json \
      >"$res/train-shared-$i.json" 2>"$logs/train-shared-$i.log" &
    pids+=($!)
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

part_compare() {
  local box=$1 epochs probes=()
  for f in "$res"/train-shared-*.json; do [[ -s "$f" ]] && probes+=(--probe "$f"); done
  if [[ -s "$res/train.json" ]]; then
    epochs=$("$py" scripts/gpu_check.py fit --solo "$res/train.json" "${probes[@]}" --box "$box" \
      --runs "$compare_runs" --config configs/fmnist-rgb-paper.yaml "${compare_sets[@]/#/--set=}" \
      --out "$res/fit.json") || return 1
  else
    epochs=$fallback_epochs
    note "no bench train result: $epochs epoch(s), not fitted"
  fi
  [[ -n "$max_epochs" && $epochs -gt $max_epochs ]] && epochs=$max_epochs
  note "comparison: $epochs epoch(s) for a ${box}s box (fit.json)"
  "$py" scripts/results.py all --config configs/fmnist-rgb-paper.yaml --device "$device" \
    --runs "$work/compare-e$epochs" --docs "$out/docs" --name RESULTS-gpu --seeds "$seeds" \
    --jobs "$compare_runs" --epochs "$epochs" --init-arm he --budgets "$budgets" \
    "${data_args[@]}" "${compare_sets[@]/#/--set=}"
  local rc=$?
  # The runs' own records (small) travel with the results.
  mkdir -p "$logs/compare"
  for run in "$work/compare-e$epochs"/*/; do
    [[ -d "$run" ]] || continue
    mkdir -p "$logs/compare/$(basename "$run")"
    cp "$run"/{manifest.json,calibration.json,recipe.yaml,train_log.jsonl} \
      "$logs/compare/$(basename "$run")/" 2>/dev/null
  done
  cp "$work/compare-e$epochs"/*.log "$logs/compare/" 2>/dev/null
  return $rc
}

if [[ "${1:-}" == --part ]]; then
  part=$2
  shift 2
  # Arrays do not travel through the environment: rebuilt from main's strings (no spaces in paths).
  read -ra data_args <<<"$S_data_args"
  read -ra compare_sets <<<"$S_compare_sets"
  read -ra bench_train_args <<<"$S_bench_train_args"
  read -ra probe_args <<<"$S_probe_args"
  read -ra demo_sets <<<"$S_demo_sets"
  read -ra engine_args <<<"$S_engine_args"
  compare_sets_args=()
  for s in "${compare_sets[@]}"; do compare_sets_args+=(--set "$s"); done
  if [[ "$part" == serve_and_load ]]; then
    serve_and_load "$@"
  else
    "part_$part" "$@"
  fi
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# main: set up (offline install, GPU and driver), then the parts in their boxes, then the summary.

out="${1:?usage: scripts/gpu-check.sh OUTDIR [--pack]}"
pack=0
[[ "${2:-}" == --pack ]] && pack=1
start=$SECONDS
budget=${GPU_CHECK_BUDGET_S:-560}
dry=${GPU_CHECK_DRY:-0}
carry=${GPU_CHECK_CARRY:-.gpu-carry}
[[ -d "$carry" ]] && carry=$(cd "$carry" && pwd)
work=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
parts=${GPU_CHECK_PARTS:-tests serving train compare}
py=${PYTHON:-}
[[ -z "$py" && -x .venv/bin/python ]] && py="$repo/.venv/bin/python"
py=${py:-python3}
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)
logs="$out/logs"
rm -rf "$logs" "$out/docs" "$out/summary.md" "$out/gpu-check.tar.gz"
mkdir -p "$logs"
part=setup
exec 3>&1 4>&2
exec > >(tee -a "$logs/gpu-check.log") 2>&1
tee_pid=$!
echo "gpu-check: $(date -u +%FT%TZ), budget ${budget}s, dry=$dry, parts: $parts"

# Offline install: the wheels the machine lacks, into the work folder; the machine's own torch,
# torchvision and onnxruntime are never touched. The project runs from this source tree.
t0=$SECONDS
site="$work/site"
if [[ -d "$carry/wheels" ]]; then
  mapfile -t wanted < <("$py" scripts/gpu_check.py missing "$carry/wheels" | grep .)
  if [[ ${#wanted[@]} -gt 0 ]]; then
    echo "installing ${#wanted[@]} wheel(s) into $site: ${wanted[*]##*/}"
    timeout 120 "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --no-cache-dir --upgrade --target "$site" "${wanted[@]}" \
      || echo "warning: the wheel install failed; see above"
  fi
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v wrk >/dev/null && [[ -x "$carry/wrk/usr/bin/wrk" ]]; then
  mkdir -p "$work/bin"
  # shellcheck disable=SC2016 # the wrapper expands $LD_LIBRARY_PATH and $@ when it runs
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
    "$carry/wrk/usr/lib/x86_64-linux-gnu" "$carry/wrk/usr/bin/wrk" >"$work/bin/wrk"
  chmod +x "$work/bin/wrk"
  export PATH="$work/bin:$PATH"
fi
command -v wrk >/dev/null && wrk --version 2>&1 | head -1
data_root=${GPU_CHECK_DATA:-}
[[ -z "$data_root" && -f "$carry/data/fashion-mnist/train-images-idx3-ubyte.gz" ]] \
  && data_root="$carry/data/fashion-mnist"
data_args=()
[[ -n "$data_root" ]] && data_args=(--data-root "$data_root")

# The GPU and driver, and what this machine can run.
echo "== environment"
nvidia-smi 2>/dev/null | head -15 || echo "nvidia-smi: not available"
env_out=$("$py" scripts/gpu_check.py env "$logs/environment.json") || {
  echo "error: cannot import torch with $py"
  exit 1
}
echo "$env_out"
has_cuda=$(grep -q '^has_cuda=True' <<<"$env_out" && echo 1 || echo 0)
onnx_cuda=$(grep -q '^onnx_cuda=True' <<<"$env_out" && echo 1 || echo 0)
ort_version=$(sed -n 's/^onnxruntime=//p' <<<"$env_out")
ort_providers=$(sed -n 's/^onnxruntime_providers=//p' <<<"$env_out")
gpu_slug=$(sed -n 's/^slug=//p' <<<"$env_out")
grep -q '^project_import=ok' <<<"$env_out" \
  || echo "warning: the project does not import completely (see above): parts will fail"
res="$out/docs/benchmarks/gpu-$gpu_slug"
mkdir -p "$res"
cp "$logs/environment.json" "$res/environment.json"
ncpu=$(nproc)
device=cpu
[[ "$has_cuda" == 1 ]] && device=cuda
cuda_test_files=$(grep -rl --include='test_*.py' -e 'pytest.mark.cuda' tests | sort | tr '\n' ' ')
printf 'setup\tok\t%s\t-\t\n' "$((SECONDS - t0))" >"$logs/status.tsv"

# Sizes: the real ones (GPU), or tiny ones for the dry run (seconds on a CPU).
tiny=(--set model.kwargs.channels=4 --set model.kwargs.growth_rate=2 --set model.kwargs.head_channels=8)
if [[ "$dry" == 1 ]]; then
  seeds=0
  compare_runs=2 # processes at once (3 runs: 1 seed x 2 arms + the init run)
  budgets=0.6,1.2
  compare_sets=(data.train_subset=64 data.heldout_size=100 batch_size=32 precision=fp32
    channels_last=false meta.hidden_size=16 model.kwargs.channels=4 model.kwargs.growth_rate=2
    model.kwargs.head_channels=8 model.kwargs.num_blocks=3 eval.batch_size=100 cpu_threads=1)
  max_epochs=1
  fallback_epochs=1
  train_batch=32
  bench_train_args=(--steps 1 --warmup 0 --rounds 1)
  probe_args=(--steps 1 --warmup 0 --rounds 1)
  demo_sets=("${tiny[@]}" --set data.train_subset=64 --set data.heldout_size=100 --set epochs=1
    --set batch_size=32 --set meta.hidden_size=16 --set device=cpu --set log.tensorboard=false)
  engine_args=(--batch-sizes "1,8" --images 16 --batch1-images 4 --repeats 1)
  http_concurrency=2
  http_duration=0.3
  engine_box=40
  http_box=40
  boxes=(tests=40 serving=80 train=40 compare=120)
else
  seeds=0,1,2
  compare_runs=7 # 3 seeds x 2 arms + the init run, all at once
  budgets=10,15,20,30
  compare_sets=()
  max_epochs=""
  fallback_epochs=3
  train_batch=1024
  bench_train_args=(--steps 5 --warmup 2 --rounds 2)
  probe_args=(--steps 3 --warmup 1 --rounds 1)
  demo_sets=(--set device=auto)
  engine_args=(--batch-sizes "1,32" --images 1000 --batch1-images 100 --repeats 2)
  http_concurrency=16
  http_duration=3
  engine_box=40
  http_box=60
  boxes=(tests=90 serving=170 train=80 compare=0) # compare: whatever is left
fi
# GPU_CHECK_BOXES="serving=120 train=60" overrides boxes (seconds; compare=0: what is left).
read -ra extra_boxes <<<"${GPU_CHECK_BOXES:-}"
boxes+=("${extra_boxes[@]}")
export py repo out logs res work carry data_root has_cuda onnx_cuda ort_version ort_providers
export device ncpu cuda_test_files seeds compare_runs budgets max_epochs fallback_epochs
export train_batch http_concurrency http_duration engine_box http_box
# Arrays do not cross exec: the parts rebuild them from these strings.
export S_data_args="${data_args[*]}" S_compare_sets="${compare_sets[*]}"
export S_bench_train_args="${bench_train_args[*]}" S_probe_args="${probe_args[*]}"
export S_demo_sets="${demo_sets[*]}" S_engine_args="${engine_args[*]}"

reserve=15 # for the summary and the pack
for name in $parts; do
  box=0
  for b in "${boxes[@]}"; do [[ "${b%%=*}" == "$name" ]] && box=${b#*=}; done # last one wins
  left=$((budget - (SECONDS - start) - reserve))
  [[ $box -eq 0 || $box -gt $left ]] && box=$left
  echo
  echo "== part $name (box ${box}s, $((SECONDS - start))s elapsed)"
  if [[ $left -lt 10 ]]; then
    printf '%s\tskipped\t0\t%s\tno time left in the budget\n' "$name" "$box" >>"$logs/status.tsv"
    continue
  fi
  t0=$SECONDS
  timeout -k 10 "$box" bash "$me" --part "$name" "$box" >"$logs/$name.log" 2>&1
  rc=$?
  # What a cut part left in groups of their own (a server, a boxed sub-step) goes with it.
  for f in "$logs"/pg.*; do
    [[ -e "$f" ]] || continue
    kill -KILL -- "-${f##*.}" 2>/dev/null
    rm -f "$f"
  done
  case $rc in
    0) status=ok ;;
    124 | 137) status="cut at its box" ;;
    *) status="failed (exit $rc)" ;;
  esac
  notes=""
  [[ -f "$logs/$name.note" ]] && notes=$(tr '\n' ';' <"$logs/$name.note" | sed 's/;$//')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$box" "$notes" \
    >>"$logs/status.tsv"
  echo "$name: $status in $((SECONDS - t0))s${notes:+ ($notes)}"
  tail -3 "$logs/$name.log"
done

echo
printf 'total\t-\t%s\t%s\t\n' "$((SECONDS - start))" "$budget" >>"$logs/status.tsv"
# Exit status: 0 when every part ended ok (a part may say it skipped something, and why), else 1.
failed=$(cut -f2 "$logs/status.tsv" | grep -c -e '^failed' -e '^cut' -e '^skipped')
"$py" scripts/gpu_check.py summary "$out" || echo "warning: the summary failed"
echo
echo "== status (also at the top of summary.md)"
column -t -s $'\t' "$logs/status.tsv" 2>/dev/null || cat "$logs/status.tsv"
cp "$out/summary.md" "$res/summary.md" 2>/dev/null
exec 1>&3 2>&4 # the log is complete: let tee finish before it is packed
wait "$tee_pid" 2>/dev/null || sleep 1
if [[ $pack == 1 ]]; then
  tar -czf "$out/gpu-check.tar.gz" -C "$out" docs logs && rm -rf "$out/docs" "$out/logs"
  ls -l "$out"
fi
[[ $failed == 0 ]]

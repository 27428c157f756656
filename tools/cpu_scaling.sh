#!/usr/bin/env bash
# CPU thread scaling of eoq (and llama.cpp's llama-bench beside it) on the random-weight Llama
# shapes: pp512 and tg32 at 1, 2, 4, 8 and 16 threads for the 1B model in Q4_0 and Q4_K_M-like,
# and the 8B Q4_0 model at 16 threads (f16 caches, depth 0). Written for a fresh many-core Linux
# box (the device machine), run from anywhere in the checkout:
#
#   bash tools/cpu_scaling.sh                      # every stage below, in order
#   bash tools/cpu_scaling.sh build peer models    # some stages
#   bash tools/cpu_scaling.sh bench-1b-q4_0 bench-1b-q4_k_m bench-8b-q4_0
#
# Stages (each skips work already done, so a run cut short can be repeated):
#   build   eoq's CPU build in build-cpu-scaling/ (-DEOQ_CUDA=OFF)
#   peer    llama-bench from .peer/llama.cpp-*-src.tar.xz (llama-cpp-python 0.3.36's vendored
#           tree, trimmed), in build-peer/, with GGML_NATIVE=OFF and the AVX2/AVX-512 flags
#           named (NATIVE crashes on CPUs with AMX); skipped when the archive is absent
#   models  the 1B Q4_0 / Q4_K_M-like and 8B Q4_0 files in models/ (tools/gen_llama_gguf.py)
#   bench-1b-q4_0, bench-1b-q4_k_m   eoq-bench -t 1,2,4,8,16 (with llama-bench when built)
#   bench-8b-q4_0                    the same at 16 threads (THREADS_8B overrides)
# Tables go to stdout and $OUT/cpu-scaling-<model>.md ($OUT defaults to /tmp/eoq-cpu-scaling).
# Knobs: THREADS (default 1,2,4,8,16), REPS (default 2), PY (default /opt/torch/.venv/bin/python3
# when present, else python3), BUILD / PEER_BUILD (the build folders, relative to the checkout). Needs cmake, ninja, a C++17 compiler, pybind11 and numpy for PY;
# the gguf package from the wheel in .whl/ when PY lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/eoq-cpu-scaling}
mkdir -p "$OUT" models
THREADS=${THREADS:-1,2,4,8,16}
THREADS_8B=${THREADS_8B:-16}
REPS=${REPS:-2}
if [ -z "${PY:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
NPROC=$(nproc)
BUILD=${BUILD:-build-cpu-scaling}
PEER_BUILD=${PEER_BUILD:-build-peer}
export PYTHONUNBUFFERED=1

site_packages() {
  if ! "$PY" -c "import gguf" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/eoq-site .whl/*.whl
    export PYTHONPATH=/tmp/eoq-site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

stage_build() {
  local t0=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DEOQ_CUDA=OFF -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
    >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  cmake --build "$BUILD" -j"$NPROC" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
  echo "eoq build: $(( $(date +%s) - t0 )) s ($NPROC cores)"
}

stage_peer() {
  local tarball
  tarball=$(ls .peer/llama.cpp-*-src.tar.xz 2>/dev/null | head -1 || true)
  if [ -z "$tarball" ]; then echo "peer: no .peer/llama.cpp-*-src.tar.xz, eoq only"; return; fi
  if [ -x "$PEER_BUILD/bin/llama-bench" ]; then echo "peer: $PEER_BUILD/bin/llama-bench is built"; return; fi
  local t0=$(date +%s)
  mkdir -p "$PEER_BUILD"
  [ -d "$PEER_BUILD/src/llama.cpp" ] || tar -xJf "$tarball" -C "$PEER_BUILD" --one-top-level=src
  cmake -S "$PEER_BUILD/src/llama.cpp" -B "$PEER_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
    -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$OUT/peer-cmake.log" 2>&1 || { tail -30 "$OUT/peer-cmake.log"; exit 1; }
  cmake --build "$PEER_BUILD" -j"$NPROC" --target llama-bench >"$OUT/peer-build.log" 2>&1 ||
    { grep -E "error|Error" -A3 "$OUT/peer-build.log" | head -60; exit 1; }
  echo "peer build: $(( $(date +%s) - t0 )) s"
}

gen() {  # gen SHAPE TYPE FILE
  if [ -s "$3" ]; then echo "model: $3 exists"; return; fi
  site_packages
  "$PY" tools/gen_llama_gguf.py --shape "$1" --type "$2" --threads "$NPROC" -o "$3.part" | tail -2
  mv "$3.part" "$3"
}

stage_models() {
  gen llama3.2-1b q4_0 models/cpu-scaling-l1b-q4_0.gguf
  gen llama3.2-1b q4_k_m models/cpu-scaling-l1b-q4_k_m.gguf
  gen llama3.1-8b q4_0 models/cpu-scaling-l8b-q4_0.gguf
}

bench() {  # bench NAME THREADS
  local model=models/cpu-scaling-$1.gguf
  [ -s "$model" ] || { echo "$model is missing: run the models stage"; exit 1; }
  [ -d "$BUILD/eoq" ] || { echo "$BUILD is missing: run the build stage"; exit 1; }
  local peer=()
  [ -x "$PEER_BUILD/bin/llama-bench" ] && peer=(--llama-bench "$ROOT/$PEER_BUILD/bin/llama-bench")
  echo "== $1: pp512 / tg32, threads $2, f16 cache, $REPS repetitions; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  PYTHONPATH="$ROOT/$BUILD:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m eoq.bench -m "$model" -p 512 -n 32 \
    -t "$2" -r "$REPS" --kv f16 "${peer[@]}" | tee "$OUT/cpu-scaling-$1.md"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build peer models bench-1b-q4_0 bench-1b-q4_k_m bench-8b-q4_0)
for s in "${stages[@]}"; do
  case "$s" in
    build) stage_build ;;
    peer) stage_peer ;;
    models) stage_models ;;
    bench-1b-q4_0) bench l1b-q4_0 "$THREADS" ;;
    bench-1b-q4_k_m) bench l1b-q4_k_m "$THREADS" ;;
    bench-8b-q4_0) bench l8b-q4_0 "$THREADS_8B" ;;
    *) echo "unknown stage '$s' (build, peer, models, bench-1b-q4_0, bench-1b-q4_k_m, bench-8b-q4_0)"; exit 2 ;;
  esac
done

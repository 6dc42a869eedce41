#!/usr/bin/env bash
# Runs on a GPU machine, from the bundle made by scripts/gpu-bundle.sh:
#
#   tar -xJf gpu-bundle/candle-norm-gpu.tar.xz -C /tmp/cn && /tmp/cn/run.sh STEP...
#
# STEPs, in the order given: `info` (GPU, driver, libraries), `test` (every test
# binary), `sanitize` (compute-sanitizer memcheck, racecheck and synccheck over the GPU
# tests),
# `table` (the bandwidth table of benches/gpu_table.rs, also as $OUT/table.csv),
# `table=FILTER` (only the ops whose name holds FILTER, as $OUT/table-FILTER.{log,csv}:
# several bundles' runs, alternated, resolve a change smaller than the spread between
# runs),
# `criterion` (the criterion benches, GPU groups only). Logs go to $OUT (default ./gpu-out); the run goes on after
# a failing step and exits non-zero if any failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"

# cudarc opens libcublas/libcurand/libcudart/libnvrtc by name: find them wherever this
# machine's CUDA install or its Python wheels put them. The driver's libcuda is found
# by the loader.
libdirs=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  if ! ldconfig -p | grep -q "$lib"; then
    f=$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
    [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")"
  fi
done
libdirs=${libdirs#:}
export LD_LIBRARY_PATH="$libdirs${libdirs:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-}"
sanitizer=$(command -v compute-sanitizer || find /usr/local/cuda*/ /opt -name compute-sanitizer -type f 2>/dev/null | head -1)

failed=()
step() {
  local name=$1
  shift
  echo "== $name: $*"
  if "$@" > >(tee "$out/$name.log") 2>&1; then
    echo "== $name: ok"
  else
    echo "== $name: FAILED"
    failed+=("$name")
  fi
}

for s in "$@"; do
  case $s in
    info)
      {
        echo "commit: $(cat "$here/commit")"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        echo "compute-sanitizer: ${sanitizer:-none}"
      } 2>&1 | tee "$out/info.log"
      ;;
    test)
      for t in "$here"/bin/test-*; do
        step "$(basename "$t")" "$t" --test-threads=1 --nocapture
      done
      ;;
    sanitize)
      step sanitize-memcheck "$sanitizer" --tool memcheck --error-exitcode 1 \
        "$here/bin/test-kernels" --test-threads=1
      # racecheck instruments every shared-memory access, about 100x slower than the
      # tests: only this crate's kernels (every name holds "norm") are instrumented,
      # and so by synccheck.
      for tool in racecheck synccheck; do
        step "sanitize-$tool" "$sanitizer" --tool "$tool" --kernel-name kns=norm \
          --error-exitcode 1 "$here/bin/test-kernels" --test-threads=1
      done
      ;;
    table | table=*)
      # `table=FILTER` runs the ops whose name holds FILTER, as table-FILTER.
      f=${s#table}
      f=${f#=}
      name=table${f:+-$f}
      GPU_TABLE_CSV="$out/$name.csv" step "$name" "$here/bin/bench-gpu_table" ${f:+"$f"}
      ;;
    criterion)
      step criterion "$here/bin/bench-norms" --bench cuda/
      ;;
    *)
      echo "unknown step $s" >&2
      failed+=("$s")
      ;;
  esac
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }

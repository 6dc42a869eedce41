#!/usr/bin/env bash
# Installs a build-only CUDA 13.0 toolchain from PyPI into a cache directory outside
# the repository, so that `--features cuda` builds on a machine with no CUDA (CI's).
#
#   eval "$(scripts/cuda-toolchain.sh)"    # installs once, then prints the exports
#
# It prints the environment the build needs (PATH with nvcc, CUDA_HOME/CUDA_ROOT/
# CUDA_PATH, CUDA_COMPUTE_CAP when unset, CUDAFORGE_THREADS) plus CUDA_STUB_LIBS, the
# LD_LIBRARY_PATH under which a cuda-feature binary runs on a machine without a GPU
# (the driver stub answers CUDA_ERROR_STUB_LIBRARY, so GPU tests skip themselves).
# The cache is $CANDLE_NORM_CUDA_CACHE, default ~/.cache/candle-norm/cuda-13.0.
set -euo pipefail

cache=${CANDLE_NORM_CUDA_CACHE:-$HOME/.cache/candle-norm/cuda-13.0}
# Every package pinned: an unpinned nvcc 13.0 pulls 13.x runtime/nvvm whose PTX a
# CUDA 13.0 driver cannot load.
packages=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
  # Only for linking candle's cuda backend:
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
)
stamp="$cache/.installed-$(echo "${packages[*]}" | sha256sum | cut -c1-16)"

if [ ! -f "$stamp" ]; then
  echo "installing a build-only CUDA 13.0 toolchain into $cache" >&2
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  cuda=$(echo "$cache"/venv/lib/python3*/site-packages/nvidia/cu13)
  ln -sfn "$cuda" "$cache/cuda"
  # nvcc.profile links from lib64.
  [ -e "$cuda/lib64" ] || ln -s lib "$cuda/lib64"
  # Unversioned names for the linker.
  for lib in libcudart libcublas libcublasLt libnvrtc; do
    ln -sf "$lib.so.13" "$cuda/lib/$lib.so"
  done
  ln -sf libcurand.so.10 "$cuda/lib/libcurand.so"
  # PyPI has no driver: a stub libcuda whose every entry point returns
  # CUDA_ERROR_STUB_LIBRARY (34), for linking and for running without a GPU.
  mkdir -p "$cuda/lib/stubs"
  {
    grep -ohE '\bcu[A-Za-z0-9_]+\s*\(' "$cuda/include/cuda.h" | sed -E 's/\s*\($//'
    grep -ohE '#define\s+cu[A-Za-z0-9_]+\s+cu[A-Za-z0-9_]+' "$cuda/include/cuda.h" | awk '{print $3}'
    printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop
  } | sort -u | awk '{print "int " $1 "(void){return 34;}"}' > "$cache/libcuda-stub.c"
  gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$cache/libcuda-stub.c"
  ln -sf libcuda.so "$cuda/lib/stubs/libcuda.so.1"
  touch "$stamp"
fi

cuda=$(readlink -f "$cache/cuda")
cat <<ENV
export PATH="$cuda/bin:\$PATH"
export CUDA_HOME="$cuda" CUDA_ROOT="$cuda" CUDA_PATH="$cuda"
export LIBRARY_PATH="$cuda/lib:$cuda/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}" CUDAFORGE_THREADS="\${CUDAFORGE_THREADS:-2}"
export CUDA_STUB_LIBS="$cuda/lib/stubs:$cuda/lib"
ENV

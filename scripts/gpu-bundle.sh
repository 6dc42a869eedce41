#!/usr/bin/env bash
# Builds everything a GPU run needs and packs it for a GPU machine that has the CUDA
# driver and libraries but need not have cargo or nvcc:
#
#   scripts/gpu-bundle.sh [ARCH]    # ARCH: compute capability, default 90 (H100/H200)
#
# It writes gpu-bundle/candle-norm-gpu.tar.xz (git-ignored): the release test binaries
# that touch the GPU (tests/kernels.rs, tests/errors.rs) and the bench binaries, built
# with `--features cuda` and stripped (each carries candle's kernels: ~40 MiB before
# compression), plus scripts/gpu-run.sh, the runner that executes them there.
# docs/gpu.md says how to run it.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-90}
eval "$(scripts/cuda-toolchain.sh)"
export CUDA_COMPUTE_CAP=$arch

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" gpu-bundle

# One JSON line per artifact; keep the executables of test and bench targets.
cargo build --release --features cuda --tests --benches --message-format=json-render-diagnostics \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["package_id"].find("candle-norm") >= 0 \
            and (m["target"]["kind"][0] == "bench" or m["target"]["name"] in ("kernels", "errors")):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
' | while read -r kind name exe; do
  cp "$exe" "$stage/bin/$kind-$name"
done
strip "$stage"/bin/*
cp scripts/gpu-run.sh "$stage/run.sh"
git rev-parse --short HEAD > "$stage/commit" 2>/dev/null || echo unknown > "$stage/commit"
git diff --quiet 2>/dev/null || echo "(with uncommitted changes)" >> "$stage/commit"
tar -C "$stage" -cf - . | xz -T0 -6 > gpu-bundle/candle-norm-gpu.tar.xz
ls -l gpu-bundle/candle-norm-gpu.tar.xz
ls "$stage/bin"

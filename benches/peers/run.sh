#!/usr/bin/env bash
# The CPU peer comparison in one command: this crate and candle-nn (benches/peers.rs)
# against PyTorch's eager CPU kernels and JAX/XLA (benches/peers/peers.py) on the same
# rows, shapes and dtypes, one side after the other, then one markdown table
# (benches/peers/combine.py). The first run makes a virtual environment under
# ${CANDLE_NORM_CACHE:-~/.cache/candle-norm}/peers-venv with the pinned versions of
# requirements.txt (a few GB, PyTorch's wheel carrying its CUDA libraries).
#
# Both sides run with glibc's trim and mmap thresholds raised (GLIBC_TUNABLES below),
# so that neither maps fresh memory on every call; PEERS_MALLOC=default keeps glibc's
# defaults instead. An argument keeps the cases whose name contains it.
#
# The two sides take turns PEERS_ROUNDS times (3 unless set), and the table keeps each
# time's best round: on a shared machine a neighbour's load comes and goes within
# minutes, and one side timed only while it lasts would lose rows it would win.
#
# Writes target/peers/python.N.csv, rust.N.csv (N = 1..rounds) and table.md, and prints
# the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
filter=${1:-}
venv=${CANDLE_NORM_CACHE:-$HOME/.cache/candle-norm}/peers-venv
if ! "$venv/bin/python" -c "import torch, jax" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r benches/peers/requirements.txt
fi
if [ "${PEERS_MALLOC:-kept}" != default ]; then
  export GLIBC_TUNABLES=glibc.malloc.trim_threshold=1000000000:glibc.malloc.mmap_threshold=1000000000
fi
out=target/peers
mkdir -p "$out"
rounds=${PEERS_ROUNDS:-3}
cargo build --release --bench peers
rm -f "$out"/python.*.csv "$out"/rust.*.csv
for n in $(seq "$rounds"); do
  "$venv/bin/python" benches/peers/peers.py "$out/python.$n.csv" "$filter"
  cargo bench --bench peers -- "$out/rust.$n.csv" "$filter"
done
"$venv/bin/python" benches/peers/combine.py "$out"/python.*.csv "$out"/rust.*.csv | tee "$out/table.md"

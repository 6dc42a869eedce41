#!/usr/bin/env bash
# Fetches Fashion-MNIST (Zalando, MIT licence) for examples/norm_comparison from the
# Debian package `dataset-fashion-mnist`, without root: `apt-get download` and
# `dpkg -x` into a cache directory, of which the four `*-ubyte.gz` files are kept.
# Prints the directory holding them (the example's default `--data`).
set -euo pipefail
cache=${CANDLE_NORM_CACHE:-$HOME/.cache/candle-norm}/fashion-mnist
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_all() {
  for f in "${files[@]}"; do [ -s "$cache/$f" ] || return 1; done
}

if ! have_all; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download dataset-fashion-mnist >&2)
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
  mkdir -p "$cache"
  for f in "${files[@]}"; do
    cp "$tmp/root/usr/share/datasets/fashion-mnist/$f" "$cache/$f"
  done
  have_all || { echo "fashion-mnist.sh: the package did not hold the expected files" >&2; exit 1; }
fi
echo "$cache"

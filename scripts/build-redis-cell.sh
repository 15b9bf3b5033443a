#!/usr/bin/env bash
# Builds the redis-cell Redis module (CL.THROTTLE, GCRA in Rust) from its crates.io package, for
# `keel bench limit`'s redis-cell baseline. None of its code is kept in this repository: cargo
# fetches the package into its own registry cache through a throwaway crate, the source is
# copied to a temporary directory and built there, and only the module lands in the cache dir.
#
#   scripts/build-redis-cell.sh            # prints the path of libredis_cell.so on its last line
#   redis-server --port 16430 --save '' --loadmodule "$(scripts/build-redis-cell.sh | tail -1)"
#   keel bench limit --redis redis://127.0.0.1:16430   # adds the CL.THROTTLE baselines
#
# Environment: KEEL_REDIS_CELL_VERSION (default 0.2.2), KEEL_REDIS_CELL_DIR (the cache dir,
# default ${XDG_CACHE_HOME:-~/.cache}/keel/redis-cell/VERSION). A module already built there is
# reused.
set -euo pipefail
version="${KEEL_REDIS_CELL_VERSION:-0.2.2}"
cache="${KEEL_REDIS_CELL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keel/redis-cell/$version}"
module="$cache/libredis_cell.so"
if [[ -f "$module" ]]; then
  echo "build-redis-cell: already built" >&2
  echo "$module"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A throwaway crate whose only purpose is to make cargo download the package.
mkdir -p "$work/fetch/src"
cat >"$work/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-redis-cell"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
redis-cell = "=$version"

[workspace]
EOF
: >"$work/fetch/src/lib.rs"
(cd "$work/fetch" && cargo fetch --quiet) >&2
manifest=$(cd "$work/fetch" && cargo metadata --format-version 1 |
  jq -r --arg v "$version" '.packages[] | select(.name == "redis-cell" and .version == $v) | .manifest_path')
if [[ -z "$manifest" || ! -f "$manifest" ]]; then
  echo "build-redis-cell: cargo did not fetch redis-cell $version" >&2
  exit 1
fi
# Build a copy outside any workspace, with its own target dir (whatever CARGO_TARGET_DIR says).
cp -r "$(dirname "$manifest")" "$work/redis-cell"
(cd "$work/redis-cell" && cargo build --release --target-dir "$work/target") >&2
mkdir -p "$cache"
cp -f "$work/target/release/libredis_cell.so" "$module.tmp"
mv -f "$module.tmp" "$module"
echo "build-redis-cell: built redis-cell $version" >&2
echo "$module"

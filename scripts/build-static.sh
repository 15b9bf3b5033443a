#!/usr/bin/env bash
# Builds the static release `keel` (glibc +crt-static) that the FROM-scratch image carries, and
# copies it to deploy/build/keel. `--target` keeps build scripts and proc macros dynamic, so only
# the final binary is static. `getrandom_backend="linux_getrandom"`: a scratch image has no
# /dev/urandom. Prints the path of the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
export RUSTFLAGS="${KEEL_STATIC_RUSTFLAGS:--C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"}"
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --target "$target" -p keel >&2
bin="$target_dir/$target/release/keel"
if command -v file >/dev/null 2>&1; then
  kind=$(file -b "$bin")
else
  kind=$(ldd "$bin" 2>&1 || true)
fi
if ! grep -Eq 'statically linked|static-pie linked|not a dynamic executable' <<<"$kind"; then
  echo "build-static: $bin is not statically linked: $kind" >&2
  exit 1
fi
mkdir -p deploy/build
cp -f "$bin" deploy/build/keel.tmp && mv -f deploy/build/keel.tmp deploy/build/keel
echo "build-static: $(cut -d, -f1-4 <<<"$kind")" >&2
echo "build-static: $(stat -c %s deploy/build/keel) bytes" >&2
echo deploy/build/keel

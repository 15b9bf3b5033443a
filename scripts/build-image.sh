#!/usr/bin/env bash
# Builds the Keel image from deploy/Dockerfile: FROM scratch, the static binary built outside
# Docker by scripts/build-static.sh. Tags it `keel:<rev>` and `keel:latest`, and prints
# `keel:<rev>` on its last line.
#
# Images are immutable: a revision is never rebuilt into a different image. `<rev>` is the commit
# (12 hex digits); a tree with uncommitted changes gets `<rev>-dirty-<hash of the changes>`. When
# `keel:<rev>` exists already, nothing is built (not even the binary) and the tag is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0

commit=$(git rev-parse HEAD)
rev=$(git rev-parse --short=12 HEAD)
# Changes to tracked files plus untracked, not-ignored files (their names and contents).
dirty=$( { git diff HEAD --binary; git ls-files --others --exclude-standard -z | xargs -0r sha256sum; } | sha256sum | cut -c1-12)
if [ -n "$(git status --porcelain)" ]; then
  rev="$rev-dirty-$dirty"
fi
image="keel:$rev"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-image: $image exists already: not rebuilt (images are immutable)" >&2
else
  bin=$(bash scripts/build-static.sh | tail -n1)
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nkeel:x:10001:10001:keel:/tmp:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nkeel:x:10001:\n' >"$ctx/rootfs/etc/group"
  printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
  cp "$bin" "$ctx/keel"
  cp deploy/Dockerfile "$ctx/Dockerfile"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
  revision="$commit"
  [ "$rev" = "${rev%-dirty-*}" ] || revision="$commit-dirty-$dirty"
  docker build -q \
    --build-arg REVISION="$revision" \
    --build-arg VERSION="$version" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -t "$image" "$ctx" >&2
fi
docker tag "$image" keel:latest
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "build-image: $image, $size bytes ($(( size / 1024 / 1024 )) MiB), revision $(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$image")" >&2
echo "$image"

#!/usr/bin/env bash
# Assembles the Compose stack's Redis image FROM scratch out of this machine's own redis-server and
# redis-cli (apt `redis-server`, installed by scripts/install-deps.sh) plus exactly the shared
# libraries `ldd` lists and the dynamic loader: no registry is reachable, so nothing is pulled.
#
# Prints the image to use on its last line:
#   - $KEEL_REDIS_IMAGE if set (and present locally: it is never pulled),
#   - else `redis:7` when such an image is already present locally,
#   - else `keel-redis:7`, built here unless it already exists (pass --force to rebuild it).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0
force=0
[ "${1:-}" = "--force" ] && force=1

if [ -n "${KEEL_REDIS_IMAGE:-}" ] && [ "$KEEL_REDIS_IMAGE" != "keel-redis:7" ]; then
  if ! docker image inspect "$KEEL_REDIS_IMAGE" >/dev/null 2>&1; then
    echo "build-redis-image: KEEL_REDIS_IMAGE=$KEEL_REDIS_IMAGE is not present locally (nothing can be pulled here)" >&2
    exit 1
  fi
  echo "$KEEL_REDIS_IMAGE"
  exit 0
fi
if [ -z "${KEEL_REDIS_IMAGE:-}" ] && docker image inspect redis:7 >/dev/null 2>&1; then
  echo "build-redis-image: using the local redis:7 image" >&2
  echo redis:7
  exit 0
fi
image=keel-redis:7
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-redis-image: $image already exists" >&2
  echo "$image"
  exit 0
fi

bash scripts/install-deps.sh >&2
server=$(readlink -f "$(command -v redis-server)")
cli=$(readlink -f "$(command -v redis-cli)")
version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp" "$ctx/data"
# Copied under the names the image runs: redis-server picks its mode from argv[0], and Debian's
# /usr/bin/redis-server is a symlink to redis-check-rdb.
cp -L "$server" "$root/usr/bin/redis-server"
cp -L "$cli" "$root/usr/bin/redis-cli"

# Every library ldd lists for either binary, plus the loader, each at the path ldd names
# (the loader at the absolute path the ELF interpreter field holds).
for bin in "$server" "$cli"; do
  ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

printf 'root:x:0:0:root:/:/sbin/nologin\nredis:x:999:999:redis:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nredis:x:999:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
# The legacy builder copies files as root: /data must belong to the redis user.
COPY --chown=999:999 data/ /data/
ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
USER 999:999
WORKDIR /data
VOLUME /data
EXPOSE 6379
LABEL org.opencontainers.image.title="keel-redis" \\
      org.opencontainers.image.description="redis-server ${version} from this machine's Debian package, on scratch" \\
      org.opencontainers.image.version="${version}" \\
      org.opencontainers.image.created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD ["redis-cli", "ping"]
# No ENTRYPOINT: like the official redis image, the command starts with redis-server, so
# deploy/compose.yaml runs either image with the same command.
CMD ["redis-server", "--appendonly", "yes", "--dir", "/data", "--protected-mode", "no"]
DOCKERFILE
docker build -q -t "$image" "$ctx" >&2
echo "build-redis-image: built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes, redis $version)" >&2
echo "$image"

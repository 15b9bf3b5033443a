#!/usr/bin/env bash
# Drives the Compose stack (deploy/compose.yaml) with whichever of `docker compose` and
# `docker-compose` is installed.
#
#   scripts/stack.sh up      build the static binary and the images (skipped when this revision's
#                            image exists), start the stack, wait until every service is healthy
#   scripts/stack.sh down    stop and remove containers, networks and volumes
#   scripts/stack.sh ps|logs|compose ARGS...
#
# Environment: KEEL_PROJECT (Compose project, default `keel`), KEEL_IMAGE (use this image instead
# of building one), KEEL_REDIS_IMAGE, KEEL_PUBLISH_ADDR (127.0.0.1), KEEL_LIMIT_PORT (8081),
# KEEL_MASTER_PORT (8080), KEEL_IRC_PORT (6667), KEEL_CHAT_PORT (8082), KEEL_WORKER_REPLICAS (3),
# KEEL_WORKER_LEASE (30s),
# KEEL_PROFILES (roles under a profile to start; default: those the image's binary has),
# KEEL_UP_TIMEOUT (seconds to wait for health, 180).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0
project="${KEEL_PROJECT:-keel}"
file=deploy/compose.yaml

if [ -n "${KEEL_COMPOSE:-}" ]; then
  read -r -a compose <<<"$KEEL_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "stack: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
  exit 1
fi
c() { "${compose[@]}" -p "$project" -f "$file" "$@"; }

# The profiles whose role the image's binary has (`keel master --help` succeeds, etc.).
profiles_for() {
  local image=$1 found=()
  if docker run --rm "$image" master --help >/dev/null 2>&1 &&
     docker run --rm "$image" worker --help >/dev/null 2>&1; then
    found+=(jobs)
  fi
  if docker run --rm "$image" chat serve --help >/dev/null 2>&1; then
    found+=(chat)
  fi
  (IFS=,; echo "${found[*]:-}")
}

# Waits until every container of the project is running and healthy; fails on one that exited.
wait_healthy() {
  local deadline=$((SECONDS + ${KEEL_UP_TIMEOUT:-180})) ids id state health bad
  while :; do
    ids=$(c ps -q)
    bad=""
    for id in $ids; do
      state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.Name}}' "$id")
      case "$state" in
        "running healthy "* | "running none "*) ;;
        *) bad="$bad ${state}" ;;
      esac
    done
    if [ -n "$ids" ] && [ -z "$bad" ]; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "stack: not healthy after ${KEEL_UP_TIMEOUT:-180}s:$bad" >&2
      c ps >&2 || true
      c logs --tail 30 >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

cmd="${1:-up}"
shift || true
case "$cmd" in
  up)
    KEEL_REDIS_IMAGE=$(bash scripts/build-redis-image.sh | tail -n1)
    if [ -n "${KEEL_IMAGE:-}" ]; then
      docker image inspect "$KEEL_IMAGE" >/dev/null
    else
      KEEL_IMAGE=$(bash scripts/build-image.sh | tail -n1)
    fi
    export KEEL_IMAGE KEEL_REDIS_IMAGE
    if [ -z "${KEEL_PROFILES+x}" ]; then
      KEEL_PROFILES=$(profiles_for "$KEEL_IMAGE")
    fi
    export COMPOSE_PROFILES="$KEEL_PROFILES"
    echo "stack: project $project, image $KEEL_IMAGE, redis $KEEL_REDIS_IMAGE, profiles '${COMPOSE_PROFILES}'" >&2
    start=$(date +%s%N)
    c up -d --remove-orphans "$@"
    wait_healthy
    end=$(date +%s%N)
    c ps
    ms=$(( (end - start) / 1000000 ))
    printf 'stack: up to all healthy in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
    ;;
  down)
    # Every profile, so that no role's containers are left behind.
    COMPOSE_PROFILES=jobs,chat KEEL_IMAGE="${KEEL_IMAGE:-keel:latest}" c down -v --remove-orphans --timeout "${KEEL_DOWN_TIMEOUT:-20}" "$@"
    ;;
  ps | logs)
    COMPOSE_PROFILES=jobs,chat c "$cmd" "$@"
    ;;
  compose)
    c "$@"
    ;;
  *)
    echo "usage: scripts/stack.sh up|down|ps|logs|compose ARGS..." >&2
    exit 2
    ;;
esac

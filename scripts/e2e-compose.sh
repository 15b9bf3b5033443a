#!/usr/bin/env bash
# End-to-end test of the Compose stack (deploy/compose.yaml) on a real Docker engine: part of
# `make test`. Without a Docker engine it is skipped, unless KEEL_REQUIRE_DOCKER=1 (set by .ci/run),
# which makes that a failure.
#
# Own Compose project and free published ports on 127.0.0.1, so it never collides with `make up`.
# Builds the binary and images (a revision's image is reused when it exists), brings the stack up
# and waits until every service is healthy (timed), asserts the image (size <= 15 MB, labels,
# non-root), gets decisions from the limit service through its port, restarts Redis (AOF keeps the
# limiter's state; the service recovers without a restart) and, when the image has the job roles,
# submits 2,000 jobs through the master's port, SIGKILLs a worker and restarts Redis mid-run, and
# waits until every job has succeeded. Tears everything down, volumes included, whatever happens.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "e2e-compose: ok: $*"; }
fail() {
  failed=$((failed + 1))
  echo "e2e-compose: FAILED: $*" >&2
  exit 1
}

compose_found=0
if [ -n "${KEEL_COMPOSE:-}" ] || docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
  compose_found=1
fi
if ! docker info >/dev/null 2>&1 || [ "$compose_found" = 0 ]; then
  if [ "${KEEL_REQUIRE_DOCKER:-0}" = 1 ]; then
    echo "e2e-compose: FAILED: KEEL_REQUIRE_DOCKER=1 but no Docker engine (or no Compose) is usable" >&2
    echo "e2e-compose: 0 passed, 1 failed"
    exit 1
  fi
  echo "e2e-compose: skipped: no Docker engine (KEEL_REQUIRE_DOCKER=1 makes this a failure)"
  exit 0
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export KEEL_PROJECT="keel-e2e-$$"
export KEEL_PUBLISH_ADDR=127.0.0.1
export KEEL_LIMIT_PORT="${KEEL_E2E_LIMIT_PORT:-$(free_port)}"
export KEEL_MASTER_PORT="${KEEL_E2E_MASTER_PORT:-$(free_port)}"
export KEEL_IRC_PORT="${KEEL_E2E_IRC_PORT:-$(free_port)}"
export KEEL_CHAT_PORT="${KEEL_E2E_CHAT_PORT:-$(free_port)}"
export KEEL_IRC2_PORT="${KEEL_E2E_IRC2_PORT:-$(free_port)}"
export KEEL_CHAT2_PORT="${KEEL_E2E_CHAT2_PORT:-$(free_port)}"
export KEEL_WORKER_REPLICAS="${KEEL_E2E_WORKERS:-3}"
# A SIGKILLed worker's jobs come back when their lease expires: 10 s instead of 30 s (heartbeats
# every 500 ms keep live leases).
export KEEL_WORKER_LEASE="${KEEL_E2E_WORKER_LEASE:-10s}"
unset KEEL_PROFILES
stack() { bash scripts/stack.sh "$@"; }
# jget FIELD JSON: one field of a JSON object, as jq -r would print it (no jq needed).
jget() { python3 -c 'import json,sys; v=json.loads(sys.argv[2]).get(sys.argv[1]); print("null" if v is None else str(v).lower() if isinstance(v,bool) else v)' "$1" "$2" 2>/dev/null; }
log=$(mktemp)

cleanup() {
  local code=$?
  if [ "$code" != 0 ] || [ "$failed" != 0 ]; then
    echo "e2e-compose: service logs (last 40 lines each):" >&2
    stack logs --tail 40 >&2 2>&1 || true
  fi
  stack down >/dev/null 2>&1 || stack down || true
  if docker volume ls -q | grep -q "^${KEEL_PROJECT}_"; then
    echo "e2e-compose: FAILED: volumes left behind: $(docker volume ls -q | grep "^${KEEL_PROJECT}_")" >&2
    code=1
    failed=$((failed + 1))
  fi
  rm -f "$log"
  if [ "$code" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
  echo "e2e-compose: $passed passed, $failed failed"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- up ----------------------------------------------------------------------------------------
echo "e2e-compose: project $KEEL_PROJECT, ports limit $KEEL_LIMIT_PORT master $KEEL_MASTER_PORT irc $KEEL_IRC_PORT chat $KEEL_CHAT_PORT"
stack up 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" = 0 ] || fail "the stack did not come up healthy"
up_time=$(sed -n 's/^stack: up to all healthy in \(.*\) s$/\1/p' "$log")
image=$(sed -n "s/^stack: project [^,]*, image \([^,]*\), .*/\1/p" "$log")
profiles=$(sed -n "s/^stack: project .*, profiles '\(.*\)'$/\1/p" "$log")
ok "stack healthy in ${up_time} s (image $image, profiles '${profiles}')"
cid() { stack compose ps -q "$1" | head -n1; }

# --- the image ---------------------------------------------------------------------------------
size=$(docker image inspect -f '{{.Size}}' "$image")
[ "$size" -le 15000000 ] || fail "image $image is $size bytes, over 15 MB"
ok "image $image is $size bytes ($((size / 1000)) kB) <= 15 MB"
revision=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$image")
case "$revision" in
  "$(git rev-parse HEAD)"*) ok "image label org.opencontainers.image.revision=$revision" ;;
  *) fail "image revision label '$revision' is not HEAD $(git rev-parse HEAD)" ;;
esac
user=$(docker image inspect -f '{{.Config.User}}' "$image")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image runs as '$user'"
ok "image runs as user $user"

# --- rate limiter through its published port ---------------------------------------------------
limit="http://127.0.0.1:$KEEL_LIMIT_PORT"
check() { curl -fsS --max-time 5 "$limit/v1/check" -H 'content-type: application/json' -d "{\"rule\": \"$1\", \"key\": \"$2\"}"; }
# `source`: `fallback` (Redis unreachable: the rule's policy) or `deny_cache` (answered locally
# until retry_after) are local; anything else came from the Redis engine.
from_redis() { case "$(jget source "$1")" in fallback | deny_cache | null | "") return 1 ;; esac; }
decision=$(check api "e2e-$$") || fail "POST /v1/check failed"
[ "$(jget allowed "$decision")" = true ] && from_redis "$decision" || fail "unexpected decision: $decision"
ok "limit service decision through port $KEEL_LIMIT_PORT: $decision"
for key in "a-$$" "b-$$"; do
  for i in 1 2 3 4 5; do
    d=$(check login "$key") || fail "POST /v1/check"
    [ "$(jget allowed "$d")" = true ] && from_redis "$d" || fail "login attempt $i for $key: $d"
  done
done
denied=$(check login "a-$$")
[ "$(jget allowed "$denied")" = false ] && from_redis "$denied" || fail "6th login attempt at once: $denied"
ok "rule login (GCRA, burst 5, then 1 per 3 min): 5 allowed, the 6th denied by Redis: $denied"

# Service names resolve inside the FROM-scratch image (static glibc: /etc/hosts, Docker's DNS).
docker exec "$(cid limit)" keel health http://limit:8081/healthz || fail "keel health http://limit:8081/healthz inside the limit container"
docker exec "$(cid limit)" keel health "http://${KEEL_PROJECT}_limit_1:8081/healthz" 2>/dev/null ||
  docker exec "$(cid limit)" keel health "http://${KEEL_PROJECT}-limit-1:8081/healthz" ||
  fail "container name does not resolve"
ok "service and container names resolve inside the scratch image"

# --- Redis SIGKILLed and started again: AOF keeps state, the limit service recovers by itself ---
# Key b used its 5 attempts but was never denied, so no local deny cache knows it: only Redis can
# say that the 6th attempt is over the limit. SIGKILL leaves no time for a snapshot on shutdown:
# only the AOF (fsync every second, on the named volume) can have kept it.
[ "$(docker exec "$(cid redis)" redis-cli config get appendonly | tail -n1)" = yes ] || fail "Redis runs without AOF"
sleep 1.5
t0=$SECONDS
docker kill "$(cid redis)" >/dev/null || fail "docker kill redis"
docker start "$(cid redis)" >/dev/null || fail "docker start redis"
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid redis)")" = healthy ]; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "Redis not healthy 60 s after a restart"
  sleep 0.5
done
after=""
until [ -n "$after" ] && from_redis "$after"; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "limit service not back on Redis 60 s after a Redis restart: $after"
  after=$(check login "b-$$") || after=""
  [ -n "$after" ] && from_redis "$after" || sleep 0.5
done
[ "$(jget allowed "$after")" = false ] || fail "the limiter's state did not survive a Redis restart: $after"
ok "Redis SIGKILLed and started: the service is back on Redis after $((SECONDS - t0)) s and key b is still limited (AOF volume): $after"

# --- jobs: 2,000 through the master, a worker SIGKILLed and Redis restarted mid-run -------------
case ",$profiles," in
  *,jobs,*)
    workers=$(stack compose ps -q worker | wc -l)
    [ "$workers" = "$KEEL_WORKER_REPLICAS" ] || fail "$workers workers running, expected $KEEL_WORKER_REPLICAS"
    victim=$(stack compose ps -q worker | head -n1)
    python3 scripts/e2e_jobs.py "http://127.0.0.1:$KEEL_MASTER_PORT" --jobs 2000 \
      --kill-cmd "docker kill $victim >/dev/null" \
      --restart-cmd "docker restart $(cid redis) >/dev/null" || fail "jobs phase"
    ok "2,000 jobs succeeded through the master with a worker SIGKILLed and Redis restarted mid-run"
    ;;
  *)
    echo "e2e-compose: note: the image has no master/worker roles yet: the jobs phase is not run"
    ;;
esac

# --- chat: two IRC clients on two chat nodes (one Redis) exchange messages ----------------------
case ",$profiles," in
  *,chat,*)
    python3 - "$KEEL_IRC_PORT" "$KEEL_IRC2_PORT" <<'PY' || fail "chat phase"
import socket, sys, time
port1, port2 = int(sys.argv[1]), int(sys.argv[2])
def client(nick, port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    return s, s.makefile("r", encoding="utf-8", newline="\r\n")
def wait(f, s, pred, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        line = f.readline()
        if not line:
            break
        if line.startswith("PING"):
            s.sendall(("PONG" + line[4:]).encode())
        if pred(line):
            return line
    sys.exit(f"chat: no {what}")
a, fa = client("e2ealice", port1)
wait(fa, a, lambda l: " 001 " in l, "001 for alice")
b, fb = client("e2ebob", port2)
wait(fb, b, lambda l: " 001 " in l, "001 for bob")
a.sendall(b"JOIN #e2e\r\n"); wait(fa, a, lambda l: " 366 " in l, "JOIN for alice")
b.sendall(b"JOIN #e2e\r\n"); wait(fb, b, lambda l: " 366 " in l, "JOIN for bob")
a.sendall(b"PRIVMSG #e2e :hello through compose\r\n")
wait(fb, b, lambda l: "PRIVMSG #e2e :hello through compose" in l, "message for bob")
b.sendall(b"PRIVMSG e2ealice :direct across nodes\r\n")
wait(fa, a, lambda l: "PRIVMSG e2ealice :direct across nodes" in l, "direct message for alice")
b.sendall(b"QUIT :bye\r\n")
wait(fa, a, lambda l: l.startswith(":e2ebob!") and " QUIT " in l, "QUIT of bob for alice")
print("chat: alice on node 1 and bob on node 2 joined #e2e, exchanged channel and direct messages, bob's QUIT reached alice")
PY
    # The page is read whole before grep looks at it: `curl | grep -q` lets grep exit at the first
    # match, and curl, still writing, fails with "(23) Failed writing body" under pipefail.
    page=$(curl -fsS --max-time 5 "http://127.0.0.1:$KEEL_CHAT_PORT/") || fail "chat web client page"
    grep -qi "<html" <<<"$page" || fail "chat web client page"
    ok "chat: two nodes on one Redis (IRC ports $KEEL_IRC_PORT and $KEEL_IRC2_PORT: register, join, messages, QUIT across nodes) and the web client through port $KEEL_CHAT_PORT"
    ;;
esac

# --- every service still healthy ---------------------------------------------------------------
sleep 1
for id in $(stack compose ps -q); do
  state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
  case "$state" in
    *" running healthy" | *" exited "*) ;;
    *) echo "e2e-compose: warning: $state" ;;
  esac
done
echo "e2e-compose: up to all healthy: ${up_time} s; image $image: $size bytes"

#!/usr/bin/env bash
# Keel's job scheduler side by side with the installable peers (apalis, dramatiq, Celery, RQ):
# the workload of `keel bench jobs` (enqueue N no-op jobs in bulk, process them with M workers,
# jobs/s from the first enqueue to the last ack) on each peer's own Redis backend, on one private
# redis-server, in one run: Keel first, then each peer right after. Run by hand, not in CI.
#
#   scripts/bench-jobs-peers.sh [--json] [--keel PATH] [--jobs N] [--workers M] [--port P]
#       [--peers apalis,dramatiq,celery,rq] [--apalis-jobs N] [--dramatiq-jobs N]
#       [--celery-jobs N] [--rq-jobs N] [--keep-logs]
#
# Each peer gets its own N, sized so that its run takes seconds (the Python peers run a few
# hundred to a few thousand jobs per second here, Keel ~100,000s): jobs/s is a rate, N only
# has to be large enough to dwarf the start. Setup (cached under ${XDG_CACHE_HOME:-~/.cache}/keel):
# a venv with the pinned docs/bench/peers/requirements.txt, and the apalis peer
# (docs/bench/peers/apalis, its own Cargo.lock, outside the Keel workspace) built with
# `nice -n 19`. The measuring part holds /tmp/keel-bench.lock so that benches never overlap.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=$ROOT/docs/bench/peers
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/keel
VENV=$CACHE/peers-venv
APALIS_TARGET=$CACHE/peers-apalis-target
LOCK=${KEEL_BENCH_LOCK:-/tmp/keel-bench.lock}

JSON=0
KEEL=""
JOBS=200000
WORKERS=4
PORT=""
PEERS="apalis,dramatiq,celery,rq"
APALIS_JOBS=100000
DRAMATIQ_JOBS=10000
CELERY_JOBS=3000
RQ_JOBS=2000
KEEP_LOGS=0

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON=1 ;;
    --keel) KEEL=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --port) PORT=$2; shift ;;
    --peers) PEERS=$2; shift ;;
    --apalis-jobs) APALIS_JOBS=$2; shift ;;
    --dramatiq-jobs) DRAMATIQ_JOBS=$2; shift ;;
    --celery-jobs) CELERY_JOBS=$2; shift ;;
    --rq-jobs) RQ_JOBS=$2; shift ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Messages go to the script's own stderr (fd 3), also from the trap, which may run while a
# command's stderr is redirected into a log.
exec 3>&2
say() { echo "bench-jobs-peers: $*" >&3; }
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool not found (scripts/install-deps.sh installs Redis)"; exit 1; }
done

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-peers.XXXXXX")
mkdir -p "$RUN_DIR/pids"
REDIS_PID=""
CHILD=""
# Runs a command in the background and waits for it, so that a signal to this script is
# handled at once (bash defers traps until a foreground command ends).
run_child() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return $rc
}
cleanup() {
  local rc=$?
  # Worker processes of the Python peers: each driver writes the process group of every
  # worker it starts into $RUN_DIR/pids (and removes it once it has stopped it).
  local f
  for f in "$RUN_DIR"/pids/pg.*; do
    [ -e "$f" ] || continue
    kill -KILL -- "-$(cat "$f")" 2>/dev/null || true
  done
  # A peer driver or the Keel bench still running (timeout passes the TERM on).
  if [ -n "$CHILD" ]; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  for f in "$RUN_DIR"/pids/pg.*; do
    [ -e "$f" ] || continue
    kill -KILL -- "-$(cat "$f")" 2>/dev/null || true
  done
  [ -z "$REDIS_PID" ] && [ -s "$RUN_DIR/redis.pid" ] && REDIS_PID=$(cat "$RUN_DIR/redis.pid")
  if [ -n "$REDIS_PID" ]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$KEEP_LOGS" = 1 ] || [ $rc -ne 0 ]; then
    say "logs kept in $RUN_DIR"
  else
    rm -rf "$RUN_DIR"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

declare -A SKIPPED=()
want() { case ",$PEERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- setup (outside the lock: builds are not measured) ---------------------------------------
if want rq || want dramatiq || want celery; then
  REQ=$PEERS_DIR/requirements.txt
  STAMP=$VENV/.keel-requirements.sha256
  SUM=$(sha256sum "$REQ" | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$SUM" ]; then
    say "creating $VENV (pinned $REQ)"
    mkdir -p "$CACHE"
    if python3 -m venv --clear "$VENV" >"$RUN_DIR/venv.log" 2>&1 \
      && nice -n 19 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >>"$RUN_DIR/venv.log" 2>&1; then
      echo "$SUM" >"$STAMP"
    else
      say "venv setup failed (see $RUN_DIR/venv.log): skipping the Python peers"
      for p in rq dramatiq celery; do SKIPPED[$p]="venv setup failed"; done
    fi
  fi
fi

APALIS_BIN=$APALIS_TARGET/release/keel-peer-apalis
if want apalis; then
  if ! command -v cargo >/dev/null 2>&1; then
    SKIPPED[apalis]="cargo not found"
  else
    say "building the apalis peer (docs/bench/peers/apalis, target $APALIS_TARGET)"
    if ! (cd "$PEERS_DIR/apalis" && CARGO_TARGET_DIR=$APALIS_TARGET nice -n 19 cargo build --release --locked -q) \
      >"$RUN_DIR/apalis-build.log" 2>&1; then
      say "apalis peer build failed (see $RUN_DIR/apalis-build.log): skipping it"
      SKIPPED[apalis]="build failed"
    fi
  fi
fi

if [ -z "$KEEL" ]; then
  KEEL=${CARGO_TARGET_DIR:-$ROOT/target}/release/keel
  if [ ! -x "$KEEL" ]; then
    say "building keel (release) into ${CARGO_TARGET_DIR:-$ROOT/target}"
    (cd "$ROOT" && nice -n 19 cargo build --release -p keel -q)
  fi
fi
[ -x "$KEEL" ] || { say "no keel binary at $KEEL (build it, or pass --keel PATH)"; exit 1; }

# --- a private Redis ----------------------------------------------------------------------------
if [ -z "$PORT" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
URL=redis://127.0.0.1:$PORT
# Daemonized, as in docs/bench/jobs.md: its own session, so its own scheduler autogroup (the same
# for Keel and every peer); every client (Keel's bench, the peers' workers) stays in this one.
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log"
for _ in $(seq 100); do
  redis-cli -p "$PORT" ping >/dev/null 2>&1 && [ -s "$RUN_DIR/redis.pid" ] && break
  sleep 0.05
done
redis-cli -p "$PORT" ping >/dev/null 2>&1 || { say "redis-server did not start on port $PORT"; exit 1; }
REDIS_PID=$(cat "$RUN_DIR/redis.pid")
REDIS_VERSION=$(redis-cli -p "$PORT" info server | sed -n 's/^redis_version:\([^\r]*\).*/\1/p')

# --- measure: Keel, then each peer, under the bench lock ----------------------------------------
exec 9>"$LOCK"
if ! flock -n 9; then
  say "waiting for $LOCK (another bench is running)"
  flock 9
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average $LOAD_BEFORE; Keel: $JOBS jobs, $WORKERS workers ($KEEL)"
KEEL_LOG=${KEEL_LOG:-warn} run_child "$KEEL" bench jobs --redis "$URL" --jobs "$JOBS" --workers "$WORKERS" --json >"$RUN_DIR/keel.json"

PEER_ARGS=()
run_peer() { # name jobs command...
  local name=$1 jobs=$2
  shift 2
  if [ -n "${SKIPPED[$name]:-}" ]; then
    return 0
  fi
  redis-cli -p "$PORT" flushall >/dev/null
  say "$name: $jobs jobs, $WORKERS workers"
  if KEEL_PEER_PIDDIR=$RUN_DIR/pids KEEL_PEER_LOG=$RUN_DIR/$name-workers.log \
    run_child timeout --signal=TERM --kill-after=10 600 "$@" --redis "$URL" --jobs "$jobs" --workers "$WORKERS" \
    >"$RUN_DIR/$name.json" 2>"$RUN_DIR/$name.err"; then
    PEER_ARGS+=(--peer "$name=$RUN_DIR/$name.json")
  else
    say "$name failed: $(tail -n 3 "$RUN_DIR/$name.err" | tr '\n' ' ')"
    SKIPPED[$name]="run failed: $(tail -n 1 "$RUN_DIR/$name.err" | cut -c1-200)"
  fi
}
PY=$VENV/bin/python
want apalis && run_peer apalis "$APALIS_JOBS" "$APALIS_BIN"
want dramatiq && run_peer dramatiq "$DRAMATIQ_JOBS" "$PY" "$PEERS_DIR/dramatiq_bench.py"
want celery && run_peer celery "$CELERY_JOBS" "$PY" "$PEERS_DIR/celery_bench.py"
want rq && run_peer rq "$RQ_JOBS" "$PY" "$PEERS_DIR/rq_bench.py"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
flock -u 9

SKIP_ARGS=()
for name in "${!SKIPPED[@]}"; do
  want "$name" && SKIP_ARGS+=(--skipped "$name=${SKIPPED[$name]}")
done
REPORT_ARGS=(--keel "$RUN_DIR/keel.json" "${PEER_ARGS[@]}" "${SKIP_ARGS[@]}"
  --meta "redis=$REDIS_VERSION" --meta "workers=$WORKERS"
  --meta "load_before=$LOAD_BEFORE" --meta "load_after=$LOAD_AFTER"
  --meta "keel_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)")
if [ "$JSON" = 1 ]; then
  python3 "$PEERS_DIR/report.py" --json "${REPORT_ARGS[@]}"
else
  python3 "$PEERS_DIR/report.py" "${REPORT_ARGS[@]}"
fi

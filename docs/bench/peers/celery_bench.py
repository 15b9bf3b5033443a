"""Celery peer: one `celery worker` with the prefork pool, concurrency M, Redis broker,
acks late (at-least-once, as Keel), no result backend, no gossip/mingle/heartbeat. Celery has
no bulk publish: one apply_async (one LPUSH) per message, on one producer connection.
Done when every task has run (a per-process counter flushed to Redis every 5 ms by INCRBY)
and the broker holds no message: the queue list and kombu's `unacked` hash are both empty."""

import os
import sys
import threading
import time

import redis
from celery import Celery

import peerlib

QUEUE = "bench"
DONE_KEY = "keel-peer:celery:done"
URL = peerlib.redis_url()

app = Celery("celery_bench", broker=URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("KEEL_PEER_CELERY_PREFETCH", "16")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_disable_rate_limits=True,
)

_lock = threading.Lock()
_ran = 0
_pid = None


def _flusher():
    r = redis.Redis.from_url(URL)
    sent = 0
    while True:
        time.sleep(0.005)
        n = _ran
        if n > sent:
            r.incrby(DONE_KEY, n - sent)
            sent = n


@app.task(name="noop")
def noop(t):
    global _ran, _pid
    with _lock:
        if _pid != os.getpid():  # first task in this pool process
            _pid = os.getpid()
            threading.Thread(target=_flusher, daemon=True).start()
        _ran += 1
    return None


def main():
    def extra(p):
        p.add_argument("--prefetch", type=int, default=64, help="worker_prefetch_multiplier (Celery's default: 4)")

    a = peerlib.parse_args("celery", 10_000, extra)
    r = redis.Redis.from_url(a.redis)
    r.delete(DONE_KEY)
    env = peerlib.worker_env(a.redis, KEEL_PEER_CELERY_PREFETCH=a.prefetch)

    def enqueue(count):
        t = time.time()
        with app.producer_pool.acquire(block=True) as producer:  # one connection per thread
            for i in range(count):
                if i % a.batch == 0:
                    t = time.time()
                noop.apply_async((t,), producer=producer)

    with peerlib.Workers() as w:
        w.spawn([sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "-P", "prefork",
                 "-c", str(a.workers), "-Q", QUEUE, "-n", f"bench{os.getpid()}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-l", "warning"], env)
        peerlib.wait_until(lambda: bool(app.control.ping(timeout=0.5)), 60, "the Celery worker to answer ping", 0.1, w)
        start = time.perf_counter()
        peerlib.produce(a, enqueue)
        enqueued = time.perf_counter()

        def done():
            return int(r.get(DONE_KEY) or 0) >= a.jobs and r.llen(QUEUE) == 0 and r.hlen("unacked") == 0

        peerlib.wait_until(done, a.timeout, "Celery tasks to be acked", 0.005, w)
        end = time.perf_counter()
    peerlib.report("celery", a, start, enqueued, end, pool="prefork", concurrency=a.workers,
                   prefetch_multiplier=a.prefetch, acks_late=True,
                   enqueue="apply_async per message (no bulk API)", version=peerlib.versions("celery", "kombu", "redis"))


if __name__ == "__main__":
    main()

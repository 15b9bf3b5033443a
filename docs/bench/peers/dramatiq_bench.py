"""dramatiq peer: `dramatiq` with M processes x T threads on its Redis broker. dramatiq has
no bulk enqueue: one `send` (one Lua call) per message. Done when the queue's message hash
is empty: dramatiq's Redis broker keeps a message there until it is acked."""

import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import peerlib

QUEUE = "bench"
NAMESPACE = "dramatiq"

broker = RedisBroker(url=peerlib.redis_url(), namespace=NAMESPACE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def noop(t):
    return None


def main():
    def extra(p):
        p.add_argument("--threads", type=int, default=8, help="threads per worker process (dramatiq's default: 8)")

    a = peerlib.parse_args("dramatiq", 10_000, extra)
    r = broker.client
    env = peerlib.worker_env(a.redis, dramatiq_queue_prefetch=0)
    msgs = f"{NAMESPACE}:{QUEUE}.msgs"

    def enqueue(count):
        # The broker's client is a connection pool: each thread gets its own connection.
        t = time.time()
        for i in range(count):
            if i % a.batch == 0:
                t = time.time()
            noop.send(t)

    heartbeats = f"{NAMESPACE}:__heartbeats__"
    with peerlib.Workers() as w:
        w.spawn([sys.executable, "-m", "dramatiq", "dramatiq_bench", "--processes", str(a.workers),
                 "--threads", str(a.threads), "--queues", QUEUE], env)
        # Each worker process's consumer registers in the heartbeat set at its first fetch.
        peerlib.wait_until(lambda: r.zcard(heartbeats) >= a.workers, 60, "dramatiq workers to fetch", 0.05, w)
        start = time.perf_counter()
        peerlib.produce(a, enqueue)
        enqueued = time.perf_counter()
        peerlib.wait_until(lambda: r.hlen(msgs) == 0, a.timeout, "dramatiq messages to be acked", 0.005, w)
        end = time.perf_counter()
    peerlib.report("dramatiq", a, start, enqueued, end, processes=a.workers, threads=a.threads,
                   enqueue="send per message (no bulk API)", version=peerlib.versions("dramatiq", "redis"))


if __name__ == "__main__":
    main()

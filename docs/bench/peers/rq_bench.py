"""RQ peer: M SimpleWorker processes (RQ's no-fork worker; the default Worker forks a work
horse per job), jobs enqueued with Queue.enqueue_many in one pipeline per batch; done when
RQ's finished-job registry holds N jobs (RQ writes it when it records the job's success)."""

import os
import sys
import time

import redis
from rq import Queue, Worker

import peerlib

QUEUE = "bench"


def noop(t):
    return None


def main():
    a = peerlib.parse_args("rq", 10_000)
    r = redis.Redis.from_url(a.redis)
    q = Queue(QUEUE, connection=r)
    finished = q.finished_job_registry.key
    env = peerlib.worker_env(a.redis)

    def enqueue(count):
        conn = redis.Redis.from_url(a.redis)
        queue = Queue(QUEUE, connection=conn)
        while count > 0:
            n = min(count, a.batch)
            t = time.time()
            with conn.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data("rq_bench.noop", (t,), result_ttl=60) for _ in range(n)],
                                   pipeline=pipe)
                pipe.execute()
            count -= n

    with peerlib.Workers() as w:
        for i in range(a.workers):
            w.spawn([sys.executable, "-m", "rq.cli", "worker", "--worker-class", "rq.worker.SimpleWorker",
                     "--url", a.redis, "--name", f"bench-{os.getpid()}-{i}", "--quiet", "--disable-job-desc-logging",
                     QUEUE], env)
        peerlib.wait_until(lambda: Worker.count(connection=r, queue=q) >= a.workers, 60,
                           "RQ workers to register", 0.05, w)
        start = time.perf_counter()
        peerlib.produce(a, enqueue)
        enqueued = time.perf_counter()
        peerlib.wait_until(lambda: r.zcard(finished) >= a.jobs, a.timeout, "RQ jobs to finish", 0.005, w)
        end = time.perf_counter()
    peerlib.report("rq", a, start, enqueued, end, worker_class="SimpleWorker", enqueue="enqueue_many, pipeline per batch",
                   batch=a.batch, version=peerlib.versions("rq", "redis"))


if __name__ == "__main__":
    main()

"""Shared plumbing of the Python peer drivers of scripts/bench-jobs-peers.sh.

Each driver starts its peer's worker processes (each in its own process group, its group id
written to $KEEL_PEER_PIDDIR so that the calling script's trap can kill them whatever happens),
waits until they are ready, then starts the clock, enqueues N no-op jobs and stops the clock
when the peer's own Redis state says every job has been acked. It prints one JSON object.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def redis_url():
    """The peer's Redis: $KEEL_PEER_REDIS in a worker process, --redis in the driver."""
    url = os.environ.get("KEEL_PEER_REDIS")
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--redis" and i + 1 < len(argv):
            url = argv[i + 1]
        elif arg.startswith("--redis="):
            url = arg.split("=", 1)[1]
    return url or "redis://127.0.0.1:6379"


def parse_args(name, default_jobs, extra=None):
    p = argparse.ArgumentParser(description=f"{name} peer of scripts/bench-jobs-peers.sh")
    p.add_argument("--redis", default="redis://127.0.0.1:6379")
    p.add_argument("--jobs", type=int, default=default_jobs)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=500, help="enqueue batch (where the peer has a bulk API)")
    p.add_argument("--producers", type=int, default=4,
                   help="producer threads, each with its own connection (keel bench jobs: 4 producers)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    if extra:
        extra(p)
    a = p.parse_args()
    if min(a.jobs, a.workers, a.batch, a.producers) <= 0:
        p.error("--jobs, --workers, --batch and --producers must be > 0")
    return a


def worker_env(redis_url, **more):
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env["KEEL_PEER_REDIS"] = redis_url
    env.update({k: str(v) for k, v in more.items()})
    return env


class Workers:
    """Worker processes, each in its own process group; always stopped on exit."""

    def __init__(self):
        self.procs = []
        # A SIGTERM (timeout, the calling script's trap) unwinds through __exit__ too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))

    def spawn(self, argv, env):
        log = open(os.environ.get("KEEL_PEER_LOG", os.devnull), "ab")
        # Its own process group (so that it and its children can be killed together), but the
        # caller's session: a new session would also be a new scheduler autogroup, a CPU share
        # of its own that Keel's bench process does not get on a loaded machine.
        p = subprocess.Popen(argv, env=env, cwd=HERE, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log, preexec_fn=os.setpgrp)
        log.close()
        self.procs.append(p)
        piddir = os.environ.get("KEEL_PEER_PIDDIR")
        if piddir:
            with open(os.path.join(piddir, f"pg.{p.pid}"), "w") as f:
                f.write(str(p.pid))
        return p

    def check_alive(self):
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.args!r} exited with {p.returncode} (see $KEEL_PEER_LOG)")

    def stop(self, grace=3.0):
        for p in self.procs:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            _killpg(p.pid, signal.SIGKILL)  # children of a pool too
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
            piddir = os.environ.get("KEEL_PEER_PIDDIR")
            if piddir:
                try:
                    os.unlink(os.path.join(piddir, f"pg.{p.pid}"))
                except FileNotFoundError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def split(total, parts):
    """`total` jobs over `parts` producers, as `keel bench jobs` splits them."""
    per = -(-total // parts)
    return [c for c in (min(per, max(0, total - i * per)) for i in range(parts)) if c > 0]


def produce(args, enqueue):
    """Runs `enqueue(count)` on --producers threads (each opens its own connection) and
    waits for them; an exception in one is raised here."""
    import threading

    errors = []

    def run(count):
        try:
            enqueue(count)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    # Daemon threads: a SIGTERM (SystemExit in the main thread) must not wait for them.
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in split(args.jobs, args.producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def wait_until(pred, timeout, what, interval=0.005, workers=None):
    deadline = time.monotonic() + timeout
    while not pred():
        if workers is not None:
            workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def report(name, args, start, enqueued, end, **extra):
    out = {
        "name": name,
        "ops_per_sec": round(args.jobs / (end - start)),
        "enqueue_per_sec": round(args.jobs / (enqueued - start)),
        "seconds": round(end - start, 3),
        "jobs": args.jobs,
        "workers": args.workers,
        "producers": args.producers,
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


def versions(*dists):
    from importlib.metadata import version

    return " + ".join(f"{d} {version(d)}" for d in dists) + f" (Python {sys.version.split()[0]})"

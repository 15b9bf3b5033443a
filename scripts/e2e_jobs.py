#!/usr/bin/env python3
"""Jobs phase of scripts/e2e-compose.sh: submits N shell jobs through the master's published port
in batches, SIGKILLs one worker and restarts Redis while jobs are being submitted and run, then
waits until every job is `succeeded`. Exits non-zero with the reason on the first failure.

The image is FROM scratch, so there is no /bin/true: each job runs `keel --version` (a real
process spawned by the worker, from the image's PATH)."""

import argparse
import http.client
import json
import subprocess
import sys
import time
import urllib.parse


class Master:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def request(self, method, path, body=None, attempts=60):
        """One request, retried (reconnecting) while the master or Redis is restarting."""
        last = None
        for _ in range(attempts):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                data = json.dumps(body).encode() if body is not None else None
                headers = {"content-type": "application/json"} if data else {}
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read()
                if resp.status >= 500:
                    last = f"{method} {path}: {resp.status} {text[:200]!r}"
                    time.sleep(0.5)
                    continue
                return resp.status, (json.loads(text) if text else None)
            except (OSError, http.client.HTTPException) as e:
                last = f"{method} {path}: {e}"
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(0.5)
        raise SystemExit(f"e2e jobs: giving up: {last}")


def run(cmd):
    print(f"e2e jobs: $ {cmd}", flush=True)
    subprocess.run(cmd, shell=True, check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("master")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--kill-cmd", required=True, help="run after a quarter of the batches")
    p.add_argument("--restart-cmd", required=True, help="run after half of the batches")
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    m = Master(a.master)
    run_id = str(int(time.time() * 1000))
    per = a.jobs // a.batches
    ids = []
    started = time.time()
    for b in range(a.batches):
        if b == a.batches // 4:
            run(a.kill_cmd)
        if b == a.batches // 2:
            run(a.restart_cmd)
        jobs = [
            {
                "kind": "shell",
                "payload": {"argv": ["keel", "--version"]},
                # A retried batch (master or Redis restarting) must not enqueue twice.
                "unique_key": f"e2e-{run_id}-{b * per + i}",
                "max_attempts": 10,
            }
            for i in range(per)
        ]
        status, body = m.request("POST", "/v1/jobs/batch", {"jobs": jobs})
        if status != 201:
            raise SystemExit(f"e2e jobs: batch {b}: {status} {body}")
        ids.extend(j["id"] for j in body["jobs"])
    unique = set(ids)
    if len(unique) != a.jobs:
        raise SystemExit(f"e2e jobs: {len(unique)} distinct ids for {a.jobs} jobs")
    print(f"e2e jobs: {a.jobs} jobs submitted in {time.time() - started:.1f} s", flush=True)

    # Spot check of the single-job API: POST /v1/jobs answers 201 {"id"}, GET has a state.
    status, body = m.request("POST", "/v1/jobs", {"kind": "shell", "payload": {"argv": ["keel", "--version"]}})
    if status != 201 or "id" not in body:
        raise SystemExit(f"e2e jobs: POST /v1/jobs: {status} {body}")
    unique.add(body["id"])

    pending = set(unique)
    deadline = time.time() + a.timeout
    states = {}
    rerun = 0  # jobs that needed more than one attempt (the killed worker's, Redis outage)
    while pending:
        states = {}
        for job_id in list(pending):
            status, job = m.request("GET", f"/v1/jobs/{job_id}")
            if status != 200:
                raise SystemExit(f"e2e jobs: GET /v1/jobs/{job_id}: {status} {job}")
            state = job.get("state")
            states[state] = states.get(state, 0) + 1
            if state == "succeeded":
                pending.discard(job_id)
                if job.get("attempts", 1) > 1:
                    rerun += 1
            elif state in ("dead", "cancelled"):
                raise SystemExit(f"e2e jobs: job {job_id} is {state}: {job}")
        if not pending:
            break
        if time.time() > deadline:
            raise SystemExit(f"e2e jobs: {len(pending)} jobs not succeeded after {a.timeout:.0f} s: {states}")
        print(f"e2e jobs: waiting for {len(pending)} jobs: {states}", flush=True)
        time.sleep(1)
    status, body = m.request("GET", "/v1/dead")
    dead = body.get("jobs", []) if isinstance(body, dict) else []
    if dead:
        raise SystemExit(f"e2e jobs: {len(dead)} dead jobs: {dead[:3]}")
    print(
        f"e2e jobs: all {len(unique)} jobs succeeded ({rerun} after more than one attempt), "
        f"{time.time() - started:.1f} s after the first submit",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

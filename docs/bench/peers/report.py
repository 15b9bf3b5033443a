"""Table and JSON of scripts/bench-jobs-peers.sh (standard library only).

usage: report.py --keel KEEL.json [--peer NAME=FILE.json ...] [--skipped NAME=REASON ...]
                 [--meta KEY=VALUE ...] [--json]

KEEL.json is the output of `keel bench jobs --json`; each peer file is the one JSON object a
peer driver prints. The JSON output follows the brief's shape: one object per scenario with
name, ops_per_sec (Keel's), p50_us, p99_us (Keel's) and baseline_ops_per_sec (the peer's).
"""

import argparse
import json
import sys

GOAL = 5.0


def keel_figures(keel_out):
    """Keel's own scenario from `keel bench jobs --json` (an array of scenario objects)."""
    for s in keel_out:
        if s.get("name") == "jobs_noop_end_to_end":
            return s
    raise ValueError("no jobs_noop_end_to_end scenario in Keel's output")


def build(keel_out, peers, skipped, meta):
    """Returns the list of scenario objects: Keel against the fastest peer, then each peer."""
    keel = keel_figures(keel_out)
    kops = float(keel["ops_per_sec"])

    def vs(name, peer):
        pops = float(peer["ops_per_sec"])
        return {
            "name": name,
            "ops_per_sec": round(kops),
            "p50_us": keel.get("p50_us"),
            "p99_us": keel.get("p99_us"),
            "baseline_ops_per_sec": round(pops),
            "ratio": round(kops / pops, 2) if pops > 0 else None,
            "baseline": peer["name"],
            "jobs": keel.get("jobs"),
            "baseline_jobs": peer.get("jobs"),
            "workers": keel.get("workers"),
            "peer": peer,
        }

    out = []
    ran = [p for p in peers if float(p.get("ops_per_sec", 0)) > 0]
    if ran:
        fastest = max(ran, key=lambda p: float(p["ops_per_sec"]))
        top = vs("jobs_noop_vs_fastest_peer", fastest)
        top["goal_ratio"] = GOAL
        top["goal_met"] = top["ratio"] is not None and top["ratio"] >= GOAL
        top["naive_baseline_ops_per_sec"] = round(keel_naive(keel_out))
        top["meta"] = meta
        out.append(top)
    for p in ran:
        out.append(vs(f"jobs_noop_vs_{p['name']}", p))
    for name, reason in skipped:
        out.append({"name": f"jobs_noop_vs_{name}", "ops_per_sec": round(kops), "skipped": reason})
    return out


def table(keel_out, scenarios, meta):
    keel = keel_figures(keel_out)
    lines = []
    if meta:
        lines.append("  ".join(f"{k}: {v}" for k, v in meta.items()))
    lines.append(f"{'system':<10} {'jobs':>8} {'jobs/s':>10} {'enqueue/s':>10} {'Keel/peer':>9}  setup")
    lines.append(
        f"{'Keel':<10} {keel.get('jobs', ''):>8} {round(keel['ops_per_sec']):>10,} "
        f"{round(keel.get('enqueue_per_sec', 0)):>10,} {'':>9}  {keel.get('workers')} workers x "
        f"concurrency {keel.get('concurrency')}; naive BLMOVE/LREM baseline "
        f"{round(keel_naive(keel_out)):,}/s"
    )
    for s in scenarios:
        if s["name"] == "jobs_noop_vs_fastest_peer":
            continue
        if "skipped" in s:
            lines.append(f"{s['name'][len('jobs_noop_vs_'):]:<10} {'':>8} {'skipped':>10}  {s['skipped']}")
            continue
        p = s["peer"]
        lines.append(
            f"{p['name']:<10} {p.get('jobs', ''):>8} {round(p['ops_per_sec']):>10,} "
            f"{round(p.get('enqueue_per_sec', 0)):>10,} {s['ratio']:>8.1f}x  {setup(p)}"
        )
    top = [s for s in scenarios if s["name"] == "jobs_noop_vs_fastest_peer"]
    if top:
        t = top[0]
        verdict = "met" if t["goal_met"] else "NOT met"
        lines.append(
            f"Keel vs the fastest peer ({t['baseline']}): {t['ratio']:.1f}x "
            f"(goal >= {GOAL:g}x: {verdict}); Keel {t['ops_per_sec']:,} jobs/s (goal >= 100,000: "
            f"{'met' if t['ops_per_sec'] >= 100_000 else 'NOT met'})"
        )
    return "\n".join(lines)


def keel_naive(keel_out):
    for s in keel_out:
        if s.get("name") == "naive_blmove_lrem_baseline":
            return float(s["ops_per_sec"])
    return 0.0


def setup(p):
    keys = ("processes", "threads", "concurrency", "fetch_batch", "lock_tasks", "pool", "prefetch_multiplier",
            "worker_class", "producers", "enqueue")
    parts = [f"{k} {str(p[k]).lower() if isinstance(p[k], bool) else p[k]}" for k in keys if k in p]
    return "; ".join(parts)


def _pairs(items):
    out = []
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        out.append((k, v))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", required=True)
    ap.add_argument("--peer", action="append")
    ap.add_argument("--skipped", action="append")
    ap.add_argument("--meta", action="append")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with open(a.keel) as f:
        keel_out = json.load(f)
    peers = []
    for _, path in _pairs(a.peer):
        with open(path) as f:
            peers.append(json.load(f))
    meta = dict(_pairs(a.meta))
    scenarios = build(keel_out, peers, _pairs(a.skipped), meta)
    if a.json:
        json.dump(scenarios, sys.stdout, indent=2)
        print()
    else:
        print(table(keel_out, scenarios, meta))


if __name__ == "__main__":
    main()

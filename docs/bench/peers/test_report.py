"""Pure checks of report.py: python3 -m unittest discover -s docs/bench/peers -p 'test_*.py'"""

import unittest

import report

KEEL = [
    {"name": "jobs_noop_end_to_end", "ops_per_sec": 150000.0, "p50_us": 12000, "p99_us": 20000,
     "enqueue_per_sec": 151000.0, "jobs": 200000, "workers": 4, "concurrency": 500},
    {"name": "naive_blmove_lrem_baseline", "ops_per_sec": 40000.0},
]


class ReportTest(unittest.TestCase):
    def test_ratios_and_fastest_peer(self):
        peers = [{"name": "apalis", "ops_per_sec": 20000, "jobs": 100000},
                 {"name": "rq", "ops_per_sec": 200, "jobs": 3000}]
        out = report.build(KEEL, peers, [("celery", "venv failed")], {"load": "1.0"})
        self.assertEqual([s["name"] for s in out],
                         ["jobs_noop_vs_fastest_peer", "jobs_noop_vs_apalis", "jobs_noop_vs_rq", "jobs_noop_vs_celery"])
        top = out[0]
        self.assertEqual(top["baseline"], "apalis")
        self.assertEqual(top["ops_per_sec"], 150000)
        self.assertEqual(top["baseline_ops_per_sec"], 20000)
        self.assertEqual(top["ratio"], 7.5)
        self.assertTrue(top["goal_met"])
        self.assertEqual(top["naive_baseline_ops_per_sec"], 40000)
        self.assertEqual(out[2]["ratio"], 750.0)
        self.assertEqual(out[3]["skipped"], "venv failed")
        text = report.table(KEEL, out, {"load": "1.0"})
        self.assertIn("7.5x (goal >= 5x: met)", text)
        self.assertIn("skipped", text)

    def test_goal_not_met_and_no_peer(self):
        out = report.build(KEEL, [{"name": "apalis", "ops_per_sec": 50000}], [], {})
        self.assertFalse(out[0]["goal_met"])
        self.assertEqual(report.build(KEEL, [], [("rq", "x")], {})[0]["name"], "jobs_noop_vs_rq")

    def test_missing_keel_scenario(self):
        with self.assertRaises(ValueError):
            report.build([{"name": "other", "ops_per_sec": 1}], [], [], {})


if __name__ == "__main__":
    unittest.main()

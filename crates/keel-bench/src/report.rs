//! Scenario results: the human summary and the JSON array of the brief.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
    /// The baseline measured in the same run, when the scenario has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ops_per_sec: Option<f64>,
    /// What the baseline is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// `ops_per_sec / baseline_ops_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Operations done.
    pub ops: u64,
    /// Extra facts (batch size, keys, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Scenario {
    /// A scenario from an op count, wall time and latency histogram (µs).
    pub fn new(
        name: impl Into<String>,
        ops: u64,
        elapsed: Duration,
        latency: &Histogram<u64>,
    ) -> Self {
        Self {
            name: name.into(),
            ops_per_sec: ops as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: latency.value_at_quantile(0.5) as f64,
            p99_us: latency.value_at_quantile(0.99) as f64,
            baseline_ops_per_sec: None,
            baseline: None,
            ratio: None,
            ops,
            extra: serde_json::Map::new(),
        }
    }

    /// Attaches the baseline and computes the ratio.
    pub fn with_baseline(mut self, what: impl Into<String>, ops_per_sec: f64) -> Self {
        self.baseline = Some(what.into());
        self.baseline_ops_per_sec = Some(ops_per_sec);
        self.ratio = Some(self.ops_per_sec / ops_per_sec.max(1e-9));
        self
    }

    /// Adds an extra fact.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// A fresh latency histogram (1 µs to 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

/// Prints the scenarios: JSON (an array) or a table.
pub fn print_report(scenarios: &[Scenario], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(scenarios).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!(
        "{:<34} {:>12} {:>9} {:>9} {:>12} {:>7}  baseline",
        "scenario", "ops/s", "p50 µs", "p99 µs", "baseline/s", "ratio"
    );
    for s in scenarios {
        println!(
            "{:<34} {:>12.0} {:>9.0} {:>9.0} {:>12} {:>7}  {}",
            s.name,
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            s.baseline_ops_per_sec
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into()),
            s.ratio
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into()),
            s.baseline.as_deref().unwrap_or("")
        );
    }
}

//! Structured logs and Prometheus metrics, installed once per process.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured: the default on a terminal.
    Pretty,
    /// One JSON object per line: the default everywhere else (containers, CI).
    Json,
}

impl LogFormat {
    /// Reads `pretty` / `json`; anything else (or nothing) picks by whether stdout is a terminal.
    pub fn from_setting(setting: Option<&str>) -> Self {
        match setting.map(str::to_ascii_lowercase).as_deref() {
            Some("pretty") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            _ if std::io::stdout().is_terminal() => LogFormat::Pretty,
            _ => LogFormat::Json,
        }
    }
}

/// Installs the global `tracing` subscriber. `filter` uses `EnvFilter` syntax (`info`,
/// `keel_limit=debug`). Calling it twice is harmless: the second call does nothing.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Pretty => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    let _ = result;
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns the handle that renders
/// the text exposition. Later calls return the same handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_formats_win() {
        assert_eq!(LogFormat::from_setting(Some("json")), LogFormat::Json);
        assert_eq!(LogFormat::from_setting(Some("PRETTY")), LogFormat::Pretty);
    }

    #[test]
    fn recorder_renders_counters() {
        let handle = metrics_handle();
        metrics::counter!("keel_core_test_total").increment(3);
        let text = handle.render();
        assert!(text.contains("keel_core_test_total 3"), "{text}");
    }
}

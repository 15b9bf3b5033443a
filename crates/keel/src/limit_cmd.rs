//! Wiring of `keel limit serve` and `keel bench limit`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_core::{Readiness, Shutdown};
use keel_limit::{Limiter, LimiterOptions};
use keel_limit_service::proxy::Upstream;
use keel_limit_service::{AppState, RuleSet, RulesWatcher};

use crate::cli::{Engine, RedisArgs};

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Rate-limit service: decision API, or a 429-answering reverse proxy with --upstream.
    Serve(LimitServeArgs),
}

#[derive(Debug, Args, Clone)]
pub struct LimitServeArgs {
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, env = "KEEL_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: String,
    /// Where limiter state lives.
    #[arg(long, env = "KEEL_ENGINE", value_enum, default_value = "redis")]
    pub engine: Engine,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Rules file (TOML, reloaded when it changes). Without one: rule "default", 100/s per IP.
    #[arg(long, env = "KEEL_LIMIT_RULES")]
    pub rules: Option<PathBuf>,
    /// Reverse-proxy mode: forward admitted requests to this http:// URL.
    #[arg(long, env = "KEEL_LIMIT_UPSTREAM")]
    pub upstream: Option<String>,
    /// Longest a decision waits on Redis before the rule's failure policy decides.
    #[arg(long, env = "KEEL_LIMIT_TIMEOUT", default_value = "50ms", value_parser = keel_core::parse_duration)]
    pub timeout: Duration,
    /// One script call per decision instead of coalescing concurrent decisions.
    #[arg(long, env = "KEEL_LIMIT_NO_BATCHING")]
    pub no_batching: bool,
    /// How often the rules file is checked for changes.
    #[arg(long, env = "KEEL_LIMIT_RELOAD_INTERVAL", default_value = "1s", value_parser = keel_core::parse_duration)]
    pub reload_interval: Duration,
}

#[derive(Debug, Args)]
pub struct LimitBenchArgs {
    /// Redis to bench (its figures beside redis-benchmark / a raw client running the same script).
    #[arg(long, env = "KEEL_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Only the memory-engine scenarios (against governor).
    #[arg(long)]
    pub memory_only: bool,
    /// Length of each scenario.
    #[arg(long, default_value = "5s", value_parser = keel_core::parse_duration)]
    pub duration: Duration,
    /// Concurrent callers for the Redis scenarios.
    #[arg(long, default_value_t = 50)]
    pub callers: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Builds the limiter for `args`.
pub fn limiter(args: &LimitServeArgs) -> anyhow::Result<(Limiter, Readiness)> {
    match args.engine {
        Engine::Memory => Ok((Limiter::memory(), Readiness::always())),
        Engine::Redis => {
            let redis = args.redis.handle()?;
            let options = LimiterOptions {
                timeout: args.timeout,
                batching: if args.no_batching {
                    None
                } else {
                    Some(Default::default())
                },
                ..LimiterOptions::default()
            };
            let probe = redis.clone();
            let readiness = Readiness::from_fn(move || {
                let probe = probe.clone();
                async move { probe.ping().await.map_err(|e| format!("redis: {e}")) }
            });
            Ok((Limiter::redis(redis, options), readiness))
        }
    }
}

/// Binds and serves the rate-limit service until `shutdown`.
pub async fn serve(args: LimitServeArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    serve_on(listener, args, shutdown).await
}

/// Serves the rate-limit service on an already bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    args: LimitServeArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (limiter, readiness) = limiter(&args)?;
    let rules = match &args.rules {
        Some(path) => RulesWatcher::watch(path.clone(), args.reload_interval, shutdown.clone())
            .with_context(|| format!("loading rules from {}", path.display()))?,
        None => RulesWatcher::fixed(RuleSet::builtin()),
    };
    let upstream = match &args.upstream {
        Some(url) => Some(Upstream::new(url).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mode = if upstream.is_some() {
        "proxy"
    } else {
        "decision API"
    };
    let state = AppState {
        limiter,
        rules,
        upstream,
    };
    let router = keel_limit_service::router(state, readiness);
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, engine = ?args.engine, mode, "rate-limit service listening");
    keel_core::serve_http(listener, router, shutdown)
        .await
        .context("serving HTTP")
}

pub async fn bench(args: LimitBenchArgs) -> anyhow::Result<ExitCode> {
    let options = keel_bench::limit::LimitBenchOptions {
        redis_url: if args.memory_only {
            None
        } else {
            Some(args.redis.clone())
        },
        duration: args.duration,
        callers: args.callers,
        keys: args.keys,
        quiet: args.json,
    };
    let results = keel_bench::limit::run(options)
        .await
        .context("running the limit benchmark")?;
    keel_bench::print_report(&results, args.json);
    Ok(ExitCode::SUCCESS)
}

//! Command-line surface: every flag also reads a `KEEL_*` environment variable.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Keel: job scheduler, distributed rate limiter and chat server in one binary.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every role shares.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Log filter (`info`, `keel_limit=debug`, ...).
    #[arg(long, env = "KEEL_LOG", default_value = "info", global = true)]
    pub log: String,
    /// `pretty` or `json`; default: pretty on a terminal, JSON otherwise.
    #[arg(long, env = "KEEL_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when URL answers 200 (the healthcheck for images without curl).
    Health(HealthArgs),
    /// Chat server: IRC over TCP and WebSocket, presence, history.
    Chat(crate::chat_cmd::ChatArgs),
    /// Every role in one process on the in-memory engines (`--redis URL` for Redis).
    Dev(crate::dev_cmd::DevArgs),
    /// Rate limiter.
    #[command(subcommand)]
    Limit(crate::limit_cmd::LimitCommand),
    /// Load generators: Keel against a baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Job scheduler master: HTTP API, dashboard, cron, delayed-job promotion, reaper.
    Master(crate::jobs_cmd::MasterArgs),
    /// Job worker: runs jobs from Redis queues.
    Worker(crate::jobs_cmd::WorkerArgs),
    /// Command-line client of the job master's API.
    Job(crate::jobs_cmd::JobArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Rate-limit decisions per second: Redis and memory engines against their baselines.
    Limit(crate::limit_cmd::LimitBenchArgs),
    /// No-op jobs end to end against the naive BLMOVE/LREM reliable queue.
    Jobs(crate::bench_jobs::BenchJobsArgs),
    /// Chat at scale: idle connections (memory per connection, beside ngircd), fan-out
    /// delivery, reconnect storm; nodes and load processes are child processes.
    Chat(crate::chat_bench::ChatBenchArgs),
    /// A load process of `keel bench chat` (driven over stdin/stdout).
    #[command(hide = true)]
    ChatLoad(crate::chat_bench::ChatLoadArgs),
}

/// Where a role keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Shared state in Redis: many nodes.
    Redis,
    /// In-process state: one node, no Redis needed.
    Memory,
}

/// How to reach Redis (shared by every role).
#[derive(Debug, Args, Clone)]
pub struct RedisArgs {
    /// Redis URL (`redis://`, `rediss://`, passwords).
    #[arg(
        long = "redis",
        env = "KEEL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "KEEL_KEY_PREFIX", default_value = "keel")]
    pub key_prefix: String,
    /// Longest wait for one Redis reply.
    #[arg(long, env = "KEEL_REDIS_TIMEOUT", default_value = "2s", value_parser = keel_core::parse_duration)]
    pub redis_timeout: Duration,
}

impl RedisArgs {
    pub fn settings(&self) -> keel_redis::RedisSettings {
        keel_redis::RedisSettings {
            url: self.url.clone(),
            key_prefix: self.key_prefix.clone(),
            response_timeout: self.redis_timeout,
            connect_timeout: self.redis_timeout.min(Duration::from_secs(1)),
        }
    }

    /// A lazily connecting handle: the role starts even while Redis is down.
    pub fn handle(&self) -> anyhow::Result<keel_redis::RedisHandle> {
        keel_redis::RedisHandle::connect_lazy(&self.settings()).context("Redis settings")
    }
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// URL to probe, e.g. http://127.0.0.1:8080/healthz
    pub url: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = keel_core::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    keel_core::telemetry::init_logging(
        &cli.global.log,
        keel_core::telemetry::LogFormat::from_setting(cli.global.log_format.as_deref()),
    );
    let _ = keel_core::telemetry::metrics_handle();
    match cli.command {
        Command::Health(args) => health(args).await,
        Command::Chat(args) => crate::chat_cmd::run(args).await,
        Command::Limit(crate::limit_cmd::LimitCommand::Serve(args)) => {
            let shutdown = keel_core::Shutdown::on_signals();
            crate::limit_cmd::serve(args, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => crate::dev_cmd::run(args).await,
        Command::Bench(BenchCommand::Limit(args)) => crate::limit_cmd::bench(args).await,
        Command::Bench(BenchCommand::Jobs(args)) => crate::bench_jobs::bench_jobs(args).await,
        Command::Master(args) => crate::jobs_cmd::master(args).await,
        Command::Worker(args) => crate::jobs_cmd::worker(args).await,
        Command::Job(args) => crate::jobs_cmd::job(args).await,
        Command::Bench(BenchCommand::Chat(args)) => crate::chat_bench::bench(args).await,
        Command::Bench(BenchCommand::ChatLoad(args)) => crate::chat_bench::chat_load(args).await,
    }
}

async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .context("building HTTP client")?;
    match client.get(&args.url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => Ok(ExitCode::SUCCESS),
        Ok(response) => {
            eprintln!("keel health: {} answered {}", args.url, response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("keel health: {}: {error}", args.url);
            Ok(ExitCode::FAILURE)
        }
    }
}

//! `keel master`, `keel worker`, `keel job …`: wiring of the job scheduler crate.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use keel_core::Shutdown;
use keel_jobs::cron::CronConfig;
use keel_jobs::master::MasterConfig;
use keel_jobs::worker::{default_worker_id, parse_queues};
use keel_jobs::{Engine, EngineConfig, MemoryEngine, RedisEngine, Registry, Worker, WorkerConfig};
use serde_json::{json, Value};

pub use crate::cli::{Engine as EngineKind, RedisArgs};

/// Retention of finished jobs.
#[derive(Debug, Args, Clone)]
pub struct RetentionArgs {
    /// How long succeeded and cancelled jobs are kept.
    #[arg(long, env = "KEEL_JOB_RETENTION", default_value = "24h", value_parser = keel_core::parse_duration)]
    pub retention: Duration,
    /// How long dead jobs are kept.
    #[arg(long, env = "KEEL_DEAD_RETENTION", default_value = "7d", value_parser = keel_core::parse_duration)]
    pub dead_retention: Duration,
}

impl RetentionArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            retention: self.retention,
            dead_retention: self.dead_retention,
            ..EngineConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// HTTP API, dashboard, health and metrics.
    #[arg(long, env = "KEEL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// `redis` (many nodes) or `memory` (this process only, with its own workers).
    #[arg(long, env = "KEEL_ENGINE", value_enum, default_value = "redis")]
    pub engine: EngineKind,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Bearer token required by write endpoints.
    #[arg(long, env = "KEEL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// In-process workers (memory engine only).
    #[arg(long, env = "KEEL_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Concurrency of each in-process worker.
    #[arg(long, env = "KEEL_CONCURRENCY", default_value_t = 10)]
    pub concurrency: usize,
    /// Queues of the in-process workers.
    #[arg(long, env = "KEEL_QUEUES", default_value = "default")]
    pub queues: String,
    /// This master's id in the leader election.
    #[arg(long, env = "KEEL_NODE_ID")]
    pub node_id: Option<String>,
    /// Leader lease: a dead leader is replaced within this time.
    #[arg(long, env = "KEEL_LEADER_TTL", default_value = "5s", value_parser = keel_core::parse_duration)]
    pub leader_ttl: Duration,
    /// A cron tick later than this is "missed" and follows its schedule's policy.
    #[arg(long, env = "KEEL_CRON_GRACE", default_value = "2s", value_parser = keel_core::parse_duration)]
    pub cron_grace: Duration,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Admin port: /healthz, /readyz, /metrics.
    #[arg(long, env = "KEEL_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Jobs run at once.
    #[arg(long, env = "KEEL_CONCURRENCY", default_value_t = 10)]
    pub concurrency: usize,
    /// Queues, with optional weights: `critical:3,default,low`.
    #[arg(long, env = "KEEL_QUEUES", default_value = "default")]
    pub queues: String,
    /// Lease per job (renewed by heartbeats).
    #[arg(long, env = "KEEL_LEASE", default_value = "30s", value_parser = keel_core::parse_duration)]
    pub lease: Duration,
    /// Heartbeat period (lease renewal, cancel detection).
    #[arg(long, env = "KEEL_HEARTBEAT", default_value = "500ms", value_parser = keel_core::parse_duration)]
    pub heartbeat: Duration,
    /// On SIGTERM, how long running jobs may finish before they are handed back.
    #[arg(long, env = "KEEL_GRACE", default_value = "30s", value_parser = keel_core::parse_duration)]
    pub grace: Duration,
    /// Worker id (default host-pid-random).
    #[arg(long, env = "KEEL_WORKER_ID")]
    pub id: Option<String>,
    /// Largest fetch.
    #[arg(long, env = "KEEL_FETCH_BATCH", default_value_t = 100)]
    pub fetch_batch: usize,
    /// First retry delay (doubles per attempt, with jitter).
    #[arg(long, env = "KEEL_RETRY_BASE", default_value = "1s", value_parser = keel_core::parse_duration)]
    pub retry_base: Duration,
}

fn worker_config(
    id: Option<String>,
    queues: &str,
    concurrency: usize,
) -> anyhow::Result<WorkerConfig> {
    let queues = parse_queues(queues).map_err(|e| anyhow::anyhow!("--queues: {e}"))?;
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    Ok(WorkerConfig {
        id: id.unwrap_or_else(default_worker_id),
        queues,
        concurrency,
        ..WorkerConfig::default()
    })
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

pub async fn master(args: MasterArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::on_signals();
    let listener = bind(&args.listen).await?;
    serve_master(args, listener, shutdown, false).await?;
    Ok(ExitCode::SUCCESS)
}

/// The job master of `keel dev`: master plus two in-process workers, on memory or on Redis.
pub async fn dev_jobs(
    listener: tokio::net::TcpListener,
    redis_url: Option<String>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let args = MasterArgs {
        listen: String::new(),
        engine: if redis_url.is_some() {
            EngineKind::Redis
        } else {
            EngineKind::Memory
        },
        redis: RedisArgs {
            url: redis_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            key_prefix: "keel".into(),
            redis_timeout: Duration::from_secs(2),
        },
        retention: RetentionArgs {
            retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
        },
        api_token: None,
        workers: 2,
        concurrency: 10,
        queues: "default".into(),
        node_id: None,
        leader_ttl: Duration::from_secs(5),
        cron_grace: Duration::from_secs(2),
    };
    serve_master(args, listener, shutdown, true).await
}

/// Serves the master on `listener`; runs in-process workers on the memory engine, or always
/// with `with_workers`.
pub async fn serve_master(
    args: MasterArgs,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
    with_workers: bool,
) -> anyhow::Result<()> {
    let limiter = Arc::new(match args.engine {
        EngineKind::Memory => keel_limit::Limiter::memory(),
        EngineKind::Redis => {
            keel_limit::Limiter::redis(args.redis.handle()?, keel_limit::LimiterOptions::default())
        }
    });
    let engine: Arc<dyn Engine> = match args.engine {
        EngineKind::Memory => Arc::new(MemoryEngine::new(args.retention.config())),
        EngineKind::Redis => {
            let handle = args.redis.handle()?;
            let engine = RedisEngine::new(handle, args.retention.config());
            if let Err(e) = engine.load_scripts().await {
                tracing::warn!(error = %e, redis = %engine.redis().url_for_logs(),
                    "Redis not reachable yet; the master keeps retrying");
            }
            Arc::new(engine)
        }
    };
    let addr = listener.local_addr().context("local address")?;
    let mut workers = Vec::new();
    if args.engine == EngineKind::Memory || with_workers {
        for _ in 0..args.workers {
            let config = worker_config(None, &args.queues, args.concurrency)?;
            let worker = Worker::new(engine.clone(), Registry::with_builtin_kinds(), config)
                .with_limiter(limiter.clone());
            workers.push(tokio::spawn(worker.run(shutdown.clone())));
        }
    }
    let config = MasterConfig {
        api_token: args.api_token.filter(|t| !t.is_empty()),
        cron: CronConfig {
            node_id: args.node_id.unwrap_or_else(default_worker_id),
            leader_ttl: args.leader_ttl,
            grace: args.cron_grace,
            ..CronConfig::default()
        },
        ..MasterConfig::default()
    };
    tracing::info!(%addr, engine = engine.name(), node = %config.cron.node_id, "keel master listening");
    keel_jobs::master::serve(engine, config, listener, shutdown.clone())
        .await
        .context("serving HTTP")?;
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::on_signals();
    let handle = args.redis.handle()?;
    let limiter = Arc::new(keel_limit::Limiter::redis(
        handle.clone(),
        keel_limit::LimiterOptions::default(),
    ));
    let engine = RedisEngine::new(handle, EngineConfig::default());
    if let Err(e) = engine.load_scripts().await {
        tracing::warn!(error = %e, redis = %engine.redis().url_for_logs(),
            "Redis not reachable yet; the worker keeps retrying");
    }
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let mut config = worker_config(args.id, &args.queues, args.concurrency)?;
    config.lease = args.lease;
    config.heartbeat = args.heartbeat;
    config.grace = args.grace;
    config.fetch_batch = args.fetch_batch.max(1);
    config.retry_base = args.retry_base;
    let listener = bind(&args.listen).await?;
    let addr = listener.local_addr().context("local address")?;
    let probe = engine.clone();
    let readiness = keel_core::Readiness::from_fn(move || {
        let engine = probe.clone();
        async move { engine.ping().await.map_err(|e| e.to_string()) }
    });
    let admin = tokio::spawn(keel_core::serve_http(
        listener,
        keel_core::admin_router(readiness),
        shutdown.clone(),
    ));
    tracing::info!(%addr, id = %config.id, "keel worker admin listening");
    Worker::new(engine, Registry::with_builtin_kinds(), config)
        .with_limiter(limiter)
        .run(shutdown.clone())
        .await;
    shutdown.trigger();
    if let Ok(Err(e)) = admin.await {
        tracing::warn!(error = %e, "admin server failed");
    }
    Ok(ExitCode::SUCCESS)
}

// ----- keel job … ---------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Master URL.
    #[arg(
        long,
        env = "KEEL_MASTER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub master: String,
    /// Bearer token for write endpoints.
    #[arg(long, env = "KEEL_API_TOKEN", hide_env_values = true, global = true)]
    pub api_token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: `keel job submit -- echo hello` (shell), or `--kind K --payload JSON`.
    Submit(SubmitArgs),
    /// Show one job.
    Get { id: String },
    /// List jobs.
    List {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Cancel a job (a running one is killed).
    Cancel { id: String },
    /// Replay a dead or cancelled job.
    Retry { id: String },
    /// Queues with depths and counters, and workers.
    Stats,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Kind; default `shell` with the trailing command as argv.
    #[arg(long, default_value = "shell")]
    pub kind: String,
    /// Payload JSON (instead of a trailing command).
    #[arg(long)]
    pub payload: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// Per-attempt timeout.
    #[arg(long, default_value = "30s", value_parser = keel_core::parse_duration)]
    pub timeout: Duration,
    /// Run after this long.
    #[arg(long, value_parser = keel_core::parse_duration)]
    pub delay: Option<Duration>,
    #[arg(long)]
    pub unique_key: Option<String>,
    /// The command for a shell job.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the master at {}: {e} (is `keel master` running? set --master or KEEL_MASTER)", self.base)
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = value["detail"].as_str().unwrap_or(text.as_str());
            bail!("master answered {status}: {detail}");
        }
        Ok(value)
    }
}

fn ms_to_text(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count().min(60));
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<width$}", width = widths[i])
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(headers.iter().map(|h| h.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(row));
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn job_rows(jobs: &[Value]) -> Vec<Vec<String>> {
    jobs.iter()
        .map(|j| {
            vec![
                cell(&j["id"]),
                cell(&j["queue"]),
                cell(&j["kind"]),
                cell(&j["state"]),
                format!("{}/{}", cell(&j["attempts"]), cell(&j["max_attempts"])),
                ms_to_text(&j["created_at"]),
                cell(&j["error"]).lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect()
}

const JOB_HEADERS: [&str; 7] = [
    "id", "queue", "kind", "state", "attempts", "created", "error",
];

pub async fn job(args: JobArgs) -> anyhow::Result<ExitCode> {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?,
        base: args.master.clone(),
        token: args.api_token.clone().filter(|t| !t.is_empty()),
    };
    use reqwest::Method;
    match args.command {
        JobCommand::Submit(s) => {
            let payload = match (s.payload, s.argv.is_empty()) {
                (Some(p), true) => {
                    serde_json::from_str::<Value>(&p).context("--payload is not JSON")?
                }
                (None, false) => json!({"argv": s.argv}),
                (Some(_), false) => bail!("give --payload or a trailing command, not both"),
                (None, true) => {
                    bail!("nothing to run: give a command after `--` or --payload JSON")
                }
            };
            let body = json!({
                "queue": s.queue, "kind": s.kind, "payload": payload, "priority": s.priority,
                "max_attempts": s.max_attempts, "timeout_ms": s.timeout.as_millis() as u64,
                "delay_ms": s.delay.map(|d| d.as_millis() as u64).unwrap_or(0), "unique_key": s.unique_key,
            });
            let v = client.send(Method::POST, "/v1/jobs", Some(body)).await?;
            if args.json {
                println!("{v}");
            } else if v["duplicate"].as_bool() == Some(true) {
                println!(
                    "{} (already queued with the same unique key)",
                    cell(&v["id"])
                );
            } else {
                println!("{}", cell(&v["id"]));
            }
        }
        JobCommand::Get { id } => {
            let v = client
                .send(Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            if args.json {
                println!("{v}");
            } else {
                for key in [
                    "id",
                    "queue",
                    "kind",
                    "state",
                    "attempts",
                    "max_attempts",
                    "priority",
                    "timeout_ms",
                    "worker",
                    "error",
                ] {
                    println!("{key:<13} {}", cell(&v[key]));
                }
                for key in [
                    "created_at",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                    "run_at",
                ] {
                    println!("{key:<13} {}", ms_to_text(&v[key]));
                }
                println!("{:<13} {}", "payload", v["payload"]);
                println!("{:<13} {}", "result", v["result"]);
            }
        }
        JobCommand::List {
            queue,
            state,
            limit,
        } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(q) = queue {
                path.push_str(&format!("&queue={q}"));
            }
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            let v = client.send(Method::GET, &path, None).await?;
            if args.json {
                println!("{v}");
            } else {
                let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
                print_table(&JOB_HEADERS, job_rows(&jobs));
            }
        }
        JobCommand::Cancel { id } => {
            let v = client
                .send(Method::DELETE, &format!("/v1/jobs/{id}"), None)
                .await?;
            if args.json {
                println!("{v}");
            } else {
                println!("{id} {}", cell(&v["state"]));
            }
        }
        JobCommand::Retry { id } => {
            let v = client
                .send(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
                .await?;
            if args.json {
                println!("{v}");
            } else {
                println!("{id} {}", cell(&v["state"]));
            }
        }
        JobCommand::Stats => {
            let queues = client.send(Method::GET, "/v1/queues", None).await?;
            let workers = client.send(Method::GET, "/v1/workers", None).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"queues": queues["queues"], "workers": workers["workers"]})
                );
            } else {
                let rows = queues["queues"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|q| {
                        [
                            "name",
                            "queued",
                            "scheduled",
                            "running",
                            "dead",
                            "succeeded_total",
                            "failed_total",
                            "max_concurrency",
                        ]
                        .iter()
                        .map(|k| cell(&q[*k]))
                        .collect()
                    })
                    .collect();
                print_table(
                    &[
                        "queue",
                        "queued",
                        "scheduled",
                        "running",
                        "dead",
                        "succeeded",
                        "failed",
                        "max conc",
                    ],
                    rows,
                );
                println!();
                let rows = workers["workers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|w| {
                        vec![
                            cell(&w["id"]),
                            w["queues"]
                                .as_array()
                                .map(|q| q.iter().map(cell).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            format!("{}/{}", cell(&w["running"]), cell(&w["concurrency"])),
                            ms_to_text(&w["last_seen"]),
                        ]
                    })
                    .collect();
                print_table(&["worker", "queues", "running", "last seen"], rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `keel bench jobs`: no-op jobs end to end through Redis, against the naive reliable queue
//! (one BLMOVE per fetch, one LREM per ack, one job at a time) in the same run.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use keel_core::Shutdown;
use keel_jobs::model::now_us;
use keel_jobs::{
    Engine, EngineConfig, Handler, JobContext, JobError, JobSpec, RedisEngine, Registry, Worker,
    WorkerConfig,
};
use keel_redis::redis;
use keel_redis::{RedisHandle, RedisSettings};
use serde_json::json;

#[derive(Debug, Args)]
pub struct BenchJobsArgs {
    /// Redis to use (the bench writes under its own key prefix).
    #[arg(
        long = "redis",
        env = "KEEL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Jobs per scenario.
    #[arg(long, default_value_t = 200_000)]
    pub jobs: usize,
    /// Workers (in-process), the same number in both scenarios.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Concurrency of each Keel worker (the baseline runs one job at a time per worker).
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// Concurrent enqueuers, each sending batches of `--batch`.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Print a JSON array instead of a summary.
    #[arg(long)]
    pub json: bool,
}

struct Measured {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    enqueue_per_sec: f64,
}

fn histogram() -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// A histogram behind a std mutex.
struct Recorder(std::sync::Mutex<hdrhistogram::Histogram<u64>>);

impl Recorder {
    fn record(&self, us: u64) {
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(us.max(1));
        }
    }
}

/// No-op handler that records enqueue→start latency from the payload's timestamp.
struct BenchHandler {
    latencies: Arc<Recorder>,
}

#[async_trait::async_trait]
impl Handler for BenchHandler {
    async fn run(&self, ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
        let sent = ctx.job.payload["t"].as_i64().unwrap_or(0);
        self.latencies.record((now_us() - sent).max(0) as u64);
        Ok(None)
    }

    fn inline(&self) -> bool {
        true
    }
}

async fn run_keel(args: &BenchJobsArgs, prefix: &str) -> anyhow::Result<Measured> {
    let settings = RedisSettings {
        url: args.redis_url.clone(),
        key_prefix: prefix.to_string(),
        response_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    };
    let config = EngineConfig {
        retention: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    // Producers and workers get their own connections, as separate processes would.
    let producer_engine = Arc::new(RedisEngine::new(
        RedisHandle::connect(&settings)
            .await
            .with_context(|| format!("cannot reach Redis at {}", args.redis_url))?,
        config.clone(),
    ));
    producer_engine
        .load_scripts()
        .await
        .context("loading scripts")?;
    let latencies = Arc::new(Recorder(std::sync::Mutex::new(histogram()?)));
    let shutdown = Shutdown::new();
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let engine: Arc<dyn Engine> = Arc::new(RedisEngine::new(
            RedisHandle::connect(&settings).await?,
            config.clone(),
        ));
        let mut registry = Registry::empty();
        registry.register(
            "noop",
            BenchHandler {
                latencies: latencies.clone(),
            },
        );
        let worker_config = WorkerConfig {
            id: format!("bench-{i}"),
            queues: vec![("bench".into(), 1)],
            concurrency: args.concurrency,
            fetch_batch: args.concurrency.min(1000),
            poll_interval: Duration::from_millis(2),
            heartbeat: Duration::from_secs(2),
            ack_batch: 1000,
            ..WorkerConfig::default()
        };
        workers.push(tokio::spawn(
            Worker::new(engine, registry, worker_config).run(shutdown.clone()),
        ));
    }
    let start = Instant::now();
    let per_producer = args.jobs.div_ceil(args.producers.max(1));
    let mut producers = Vec::new();
    for p in 0..args.producers.max(1) {
        let engine = producer_engine.clone();
        let count = per_producer.min(args.jobs.saturating_sub(p * per_producer));
        let batch = args.batch.max(1);
        producers.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                let t = now_us();
                let specs: Vec<JobSpec> = (0..n)
                    .map(|_| {
                        let mut s = JobSpec::new("noop", json!({"t": t})).queue("bench");
                        s.max_attempts = 3;
                        s
                    })
                    .collect();
                engine.enqueue(specs).await?;
                left -= n;
            }
            Ok::<(), keel_jobs::EngineError>(())
        }));
    }
    for p in producers {
        p.await.context("producer task")??;
    }
    let enqueue_secs = start.elapsed().as_secs_f64();
    // End to end: every job acked (succeeded) in Redis.
    loop {
        let stats = producer_engine.queues().await?;
        let succeeded = stats
            .iter()
            .find(|q| q.name == "bench")
            .map(|q| q.succeeded_total)
            .unwrap_or(0);
        if succeeded >= args.jobs as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = start.elapsed().as_secs_f64();
    shutdown.trigger();
    for w in workers {
        let _ = w.await;
    }
    let h = latencies
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    Ok(Measured {
        ops_per_sec: args.jobs as f64 / total,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        enqueue_per_sec: args.jobs as f64 / enqueue_secs,
    })
}

async fn run_baseline(args: &BenchJobsArgs, prefix: &str) -> anyhow::Result<Measured> {
    let client = redis::Client::open(args.redis_url.as_str()).context("Redis URL")?;
    let src = format!("{prefix}:naive:queue");
    let processing = format!("{prefix}:naive:processing");
    let connect = || async {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to Redis")
    };
    let mut admin = connect().await?;
    let _: () = redis::cmd("DEL")
        .arg(&src)
        .arg(&processing)
        .query_async(&mut admin)
        .await?;
    let processed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(histogram()?));
    let target = args.jobs as u64;
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        // One dedicated connection per worker: BLMOVE blocks it.
        let mut conn = connect().await?;
        let (src, processing) = (src.clone(), processing.clone());
        let (processed, latencies) = (processed.clone(), latencies.clone());
        workers.push(tokio::spawn(async move {
            while processed.load(Ordering::Relaxed) < target {
                let job: Option<String> = redis::cmd("BLMOVE")
                    .arg(&src)
                    .arg(&processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(0.2)
                    .query_async(&mut conn)
                    .await?;
                let Some(job) = job else { continue };
                let sent: i64 = serde_json::from_str::<serde_json::Value>(&job)
                    .ok()
                    .and_then(|v| v["t"].as_i64())
                    .unwrap_or(0);
                if let Ok(mut h) = latencies.lock() {
                    let _ = h.record(((now_us() - sent).max(1)) as u64);
                }
                let _: i64 = redis::cmd("LREM")
                    .arg(&processing)
                    .arg(1)
                    .arg(&job)
                    .query_async(&mut conn)
                    .await?;
                processed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), redis::RedisError>(())
        }));
    }
    let per_producer = args.jobs.div_ceil(args.producers.max(1));
    let mut producers = Vec::new();
    for p in 0..args.producers.max(1) {
        let mut conn = connect().await?;
        let src = src.clone();
        let count = per_producer.min(args.jobs.saturating_sub(p * per_producer));
        let batch = args.batch.max(1);
        producers.push(tokio::spawn(async move {
            let mut left = count;
            let mut seq = 0usize;
            while left > 0 {
                let n = left.min(batch);
                let t = now_us();
                let items: Vec<String> = (0..n)
                    .map(|i| {
                        json!({"id": format!("{p}-{}", seq + i), "kind": "noop", "t": t})
                            .to_string()
                    })
                    .collect();
                seq += n;
                let _: i64 = redis::cmd("LPUSH")
                    .arg(&src)
                    .arg(items)
                    .query_async(&mut conn)
                    .await?;
                left -= n;
            }
            Ok::<(), redis::RedisError>(())
        }));
    }
    for p in producers {
        p.await.context("producer task")??;
    }
    let enqueue_secs = start.elapsed().as_secs_f64();
    for w in workers {
        w.await.context("worker task")??;
    }
    let total = start.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL")
        .arg(&src)
        .arg(&processing)
        .query_async(&mut admin)
        .await?;
    let h = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    Ok(Measured {
        ops_per_sec: processed.load(Ordering::Relaxed) as f64 / total,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        enqueue_per_sec: args.jobs as f64 / enqueue_secs,
    })
}

pub async fn bench_jobs(args: BenchJobsArgs) -> anyhow::Result<ExitCode> {
    if args.jobs == 0 || args.workers == 0 {
        anyhow::bail!("--jobs and --workers must be positive");
    }
    let prefix = format!("keel-bench-{:08x}", rand::random::<u32>());
    if !args.json {
        eprintln!(
            "keel bench jobs: {} no-op jobs, {} workers (Keel: concurrency {} each, batch fetch/ack; baseline: BLMOVE+LREM, one job at a time), Redis {}",
            args.jobs,
            args.workers,
            args.concurrency,
            keel_redis::RedisHandle::connect_lazy(&RedisSettings::new(args.redis_url.clone()))
                .map(|h| h.url_for_logs().to_string())
                .unwrap_or_default()
        );
        eprintln!("running baseline (naive reliable queue)...");
    }
    let baseline = run_baseline(&args, &prefix).await?;
    if !args.json {
        eprintln!("running keel...");
    }
    let keel = run_keel(&args, &prefix).await?;
    let ratio = keel.ops_per_sec / baseline.ops_per_sec.max(f64::MIN_POSITIVE);
    if args.json {
        let out = json!([
            {
                "name": "jobs_noop_end_to_end",
                "ops_per_sec": keel.ops_per_sec.round(),
                "p50_us": keel.p50_us,
                "p99_us": keel.p99_us,
                "baseline_ops_per_sec": baseline.ops_per_sec.round(),
                "enqueue_per_sec": keel.enqueue_per_sec.round(),
                "speedup": (ratio * 100.0).round() / 100.0,
                "jobs": args.jobs,
                "workers": args.workers,
                "concurrency": args.concurrency,
            },
            {
                "name": "naive_blmove_lrem_baseline",
                "ops_per_sec": baseline.ops_per_sec.round(),
                "p50_us": baseline.p50_us,
                "p99_us": baseline.p99_us,
                "enqueue_per_sec": baseline.enqueue_per_sec.round(),
                "jobs": args.jobs,
                "workers": args.workers,
            }
        ]);
        println!("{out:#}");
    } else {
        println!("scenario                     jobs/s     enqueue/s   p50 enqueue→start   p99 enqueue→start");
        for (name, m) in [
            ("keel (batch fetch/ack)", &keel),
            ("naive BLMOVE+LREM", &baseline),
        ] {
            println!(
                "{name:<26} {:>9.0}   {:>10.0}   {:>14} µs   {:>14} µs",
                m.ops_per_sec, m.enqueue_per_sec, m.p50_us, m.p99_us
            );
        }
        println!("keel / baseline: {ratio:.1}×");
    }
    Ok(ExitCode::SUCCESS)
}

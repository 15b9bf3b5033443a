//! `keel bench limit`: decisions per second and latency, for both engines, against baselines.
//!
//! - Redis engine, 10,000 keys and one hot key, 50 concurrent callers, without and with
//!   batching. Baseline in the same run: the same script driven raw (EVALSHA over one
//!   multiplexed, pipelining connection with the same 50 callers), and `redis-benchmark` running
//!   the same EVALSHA when it is installed.
//! - Memory engine, 10,000 keys and one hot key, one thread: against `governor` (keyed) on the
//!   same keys and quota.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use indicatif::{ProgressBar, ProgressStyle};
use keel_limit::{
    Algorithm, Check, CheckRequest, FailurePolicy, Limit, LimitSpec, Limiter, LimiterOptions,
    MemoryEngine, RedisEngine, RedisEngineOptions, Scripts,
};
use keel_redis::{RedisHandle, RedisSettings};
use parking_lot_free::SharedHistogram;
use rand::Rng;

use crate::report::{histogram, Scenario};

/// Errors of the limit bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Redis could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] keel_redis::RedisError),
    /// A spec was refused.
    #[error("spec: {0}")]
    Spec(#[from] keel_limit::SpecError),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LimitBenchOptions {
    /// Redis to bench against; `None` runs the memory scenarios only.
    pub redis_url: Option<String>,
    /// Length of each scenario.
    pub duration: Duration,
    /// Concurrent callers for the Redis scenarios.
    pub callers: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Hide the progress bar.
    pub quiet: bool,
}

impl Default for LimitBenchOptions {
    fn default() -> Self {
        Self {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            duration: Duration::from_secs(5),
            callers: 50,
            keys: 10_000,
            quiet: false,
        }
    }
}

/// Runs every scenario and returns the results.
pub async fn run(options: LimitBenchOptions) -> Result<Vec<Scenario>, BenchError> {
    let mut results = Vec::new();
    // A generous limit, so decisions are real script work (read, compute, write) not denials.
    let spec = LimitSpec::new(Algorithm::Gcra, 1_000_000, 1_000_000, Some(1_000_000))?;
    if let Some(url) = &options.redis_url {
        let settings = RedisSettings {
            response_timeout: Duration::from_secs(2),
            ..RedisSettings::new(url.as_str())
        };
        for (label, keys) in [("10k_keys", options.keys), ("hot_key", 1)] {
            let raw = raw_script(&settings, spec, keys, &options).await?;
            let tool = redis_benchmark(url, spec, keys, options.callers, &options).await;
            let (baseline_name, baseline) = match tool {
                Some(ops) => ("redis-benchmark EVALSHA (same script)", ops),
                None => ("raw pipelined EVALSHA (same script)", raw.ops_per_sec),
            };
            for batching in [false, true] {
                let name = format!(
                    "redis_{label}_{}",
                    if batching { "batched" } else { "unbatched" }
                );
                let scenario =
                    keel_limiter(&name, &settings, spec, keys, batching, &options).await?;
                results.push(
                    scenario
                        .with_baseline(baseline_name, baseline)
                        .with("raw_script_ops_per_sec", raw.ops_per_sec)
                        .with("keys", keys as u64),
                );
            }
            results.push(raw.with("keys", keys as u64));
        }
    }
    for (label, keys) in [("10k_keys", options.keys), ("hot_key", 1)] {
        let [memory, governor] = memory_and_governor(label, spec, keys, &options);
        results.push(
            memory
                .with_baseline("governor keyed (1 thread)", governor.ops_per_sec)
                .with("keys", keys as u64),
        );
        results.push(governor.with("keys", keys as u64));
    }
    Ok(results)
}

fn progress(name: &str, options: &LimitBenchOptions) -> ProgressBar {
    let bar = if options.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(options.duration.as_millis() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:<36} [{bar:30}] {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

/// Drives `op` from `callers` tasks for the duration; returns ops and a latency histogram.
async fn drive<F, Fut>(name: &str, options: &LimitBenchOptions, op: F) -> Scenario
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let latency = SharedHistogram::new();
    let bar = progress(name, options);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..options.callers {
        let (op, stop, ops, latency) = (op.clone(), stop.clone(), ops.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut n = caller;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(n).await {
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                n = n.wrapping_add(options_stride());
            }
            latency.merge(&local);
        }));
    }
    while started.elapsed() < options.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position(started.elapsed().as_millis() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    bar.finish_and_clear();
    Scenario::new(name, ops.load(Ordering::Relaxed), elapsed, &latency.take())
}

fn options_stride() -> usize {
    7919
}

fn requests(spec: LimitSpec, keys: usize) -> Arc<Vec<CheckRequest>> {
    Arc::new(
        (0..keys)
            .map(|i| {
                CheckRequest::single(Check {
                    key: format!("keel:{{rl:bench-{i}}}:bench:gcra"),
                    spec,
                    cost: 1,
                })
            })
            .collect(),
    )
}

async fn keel_limiter(
    name: &str,
    settings: &RedisSettings,
    spec: LimitSpec,
    keys: usize,
    batching: bool,
    options: &LimitBenchOptions,
) -> Result<Scenario, BenchError> {
    let redis = RedisHandle::connect(settings).await?;
    let limiter_options = LimiterOptions {
        timeout: Duration::from_secs(2),
        batching: if batching {
            // The library's defaults; `KEEL_BENCH_IN_FLIGHT` / `KEEL_BENCH_MAX_BATCH` override
            // them to try other bounds.
            let mut b = keel_limit::BatcherOptions::default();
            if let Some(v) = std::env::var("KEEL_BENCH_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                b.max_in_flight = v;
            }
            if let Some(v) = std::env::var("KEEL_BENCH_MAX_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                b.max_batch = v;
            }
            Some(b)
        } else {
            None
        },
        ..LimiterOptions::default()
    };
    let limiter = Limiter::redis(redis, limiter_options);
    let limit = Arc::new(Limit::new("bench", spec).with_policy(FailurePolicy::Deny));
    let names: Arc<Vec<String>> = Arc::new((0..keys).map(|i| format!("bench-{i}")).collect());
    // Warm up: scripts loaded, connection open.
    let _ = limiter.check(&limit, "warmup", 1).await;
    let fallbacks = Arc::new(AtomicU64::new(0));
    let counted = fallbacks.clone();
    let scenario = drive(name, options, move |n| {
        let (limiter, limit, names, fallbacks) = (
            limiter.clone(),
            limit.clone(),
            names.clone(),
            counted.clone(),
        );
        async move {
            let key = &names[n % names.len()];
            match limiter.check(&limit, key, 1).await {
                Ok(r) if r.source == keel_limit::Source::Engine => true,
                _ => {
                    fallbacks.fetch_add(1, Ordering::Relaxed);
                    false
                }
            }
        }
    })
    .await;
    Ok(scenario
        .with("errors", fallbacks.load(Ordering::Relaxed))
        .with("batching", batching))
}

async fn raw_script(
    settings: &RedisSettings,
    spec: LimitSpec,
    keys: usize,
    options: &LimitBenchOptions,
) -> Result<Scenario, BenchError> {
    let redis = RedisHandle::connect(settings).await?;
    let engine = RedisEngine::new(redis.clone(), RedisEngineOptions::default());
    engine.load_scripts().await;
    let scripts = Scripts::new();
    let sha = scripts.for_algorithm(Algorithm::Gcra).sha().to_string();
    let requests = requests(spec, keys);
    let name = if keys == 1 {
        "baseline_raw_evalsha_hot_key"
    } else {
        "baseline_raw_evalsha_10k_keys"
    };
    Ok(drive(name, options, move |n| {
        let mut conn = redis.connection();
        let (sha, requests) = (sha.clone(), requests.clone());
        async move {
            let request = &requests[n % requests.len()];
            let (keys, args, _) = keel_limit::encode_args(std::slice::from_ref(request), 1);
            let reply: Result<Vec<i64>, _> = keel_redis::redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(keys.len())
                .arg(&keys)
                .arg(&args)
                .query_async(&mut conn)
                .await;
            reply.is_ok()
        }
    })
    .await)
}

/// `redis-benchmark` running the same EVALSHA with the same number of clients; `None` when the
/// tool is not installed or fails.
async fn redis_benchmark(
    url: &str,
    spec: LimitSpec,
    keys: usize,
    callers: usize,
    options: &LimitBenchOptions,
) -> Option<f64> {
    let address = url.strip_prefix("redis://")?.split('/').next()?;
    let (auth, host_port) = match address.rsplit_once('@') {
        Some((auth, hp)) => (Some(auth.trim_start_matches(':').to_string()), hp),
        None => (None, address),
    };
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
    let sha = Scripts::new()
        .for_algorithm(Algorithm::Gcra)
        .sha()
        .to_string();
    let key = if keys == 1 {
        "keel:{rl:rb-hot}:bench:gcra".to_string()
    } else {
        "keel:{rl:rb-__rand_int__}:bench:gcra".to_string()
    };
    let requests = (options.duration.as_secs_f64() * 40_000.0).max(10_000.0) as u64;
    let bar = progress(
        if keys == 1 {
            "redis-benchmark hot key"
        } else {
            "redis-benchmark 10k keys"
        },
        options,
    );
    let mut command = tokio::process::Command::new("redis-benchmark");
    command.args([
        "-h",
        host,
        "-p",
        port,
        "-c",
        &callers.to_string(),
        "-n",
        &requests.to_string(),
    ]);
    command.args(["-r", &keys.to_string(), "--csv"]);
    if let Some(password) = auth {
        command.args(["-a", &password]);
    }
    // The same arguments the engine sends for one check (see `keel_limit::encode_args`).
    let request = CheckRequest::single(Check {
        key: key.clone(),
        spec,
        cost: 1,
    });
    let (_, args, _) = keel_limit::encode_args(std::slice::from_ref(&request), 1);
    command.args(["EVALSHA", &sha, "1", &key]);
    command.args(args.iter().map(i64::to_string));
    let output = command.output().await.ok()?;
    bar.finish_and_clear();
    let text = String::from_utf8_lossy(&output.stdout);
    // CSV: "test","rps",... then "EVALSHA ...","12345.67",...
    let line = text.lines().find(|l| l.starts_with("\"EVALSHA"))?;
    let rps = line
        .split("\",\"")
        .nth(1)?
        .trim_matches('"')
        .parse::<f64>()
        .ok()?;
    Some(rps).filter(|r| *r > 0.0)
}

/// The memory engine and `governor` (keyed) on the same keys and quota, one key per call (the
/// engine's single-check path, as governor's `check_key`), one thread. The two run in
/// alternating slices of 25 ms over twice the duration, so both see the same machine: on a
/// shared, noisy host a load spike hits both, and their ratio stays meaningful.
fn memory_and_governor(
    label: &str,
    spec: LimitSpec,
    keys: usize,
    options: &LimitBenchOptions,
) -> [Scenario; 2] {
    let engine = MemoryEngine::new();
    let quota = Quota::with_period(Duration::from_micros(1))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN));
    let limiter = RateLimiter::keyed(quota);
    let names: Vec<String> = (0..keys)
        .map(|i| format!("keel:{{rl:bench-{i}}}:bench:gcra"))
        .collect();
    let order = key_order(keys);
    let memory_op = |i: usize| {
        engine
            .check_one(&names[order[i % order.len()]], &spec, 1)
            .allowed
    };
    let governor_op = |i: usize| limiter.check_key(&names[order[i % order.len()]]).is_ok();
    let governor_name = if keys == 1 {
        "baseline_governor_hot_key".to_string()
    } else {
        "baseline_governor_10k_keys".to_string()
    };
    tight_loops(
        [format!("memory_{label}_1_thread"), governor_name],
        options,
        [&memory_op, &governor_op],
    )
}

fn key_order(keys: usize) -> Vec<usize> {
    let mut rng = rand::rng();
    (0..65_536).map(|_| rng.random_range(0..keys)).collect()
}

/// Calls each op in a loop on this thread, alternating 25 ms slices, until each has run for
/// the duration; times one call in 64.
fn tight_loops(
    names: [String; 2],
    options: &LimitBenchOptions,
    ops: [&dyn Fn(usize) -> bool; 2],
) -> [Scenario; 2] {
    let bar = progress(&format!("{} / {}", names[0], names[1]), options);
    let slice = Duration::from_millis(25);
    let mut latency = [histogram(), histogram()];
    let mut count = [0u64; 2];
    let mut busy = [Duration::ZERO; 2];
    let mut i = 0usize;
    let started = Instant::now();
    while busy[0] < options.duration || busy[1] < options.duration {
        for which in 0..2 {
            let op = ops[which];
            let slice_started = Instant::now();
            while slice_started.elapsed() < slice {
                for _ in 0..1024 {
                    if i.is_multiple_of(64) {
                        let t = Instant::now();
                        std::hint::black_box(op(i));
                        let _ = latency[which]
                            .record(t.elapsed().as_nanos().div_ceil(1000).max(1) as u64);
                    } else {
                        std::hint::black_box(op(i));
                    }
                    i = i.wrapping_add(1);
                }
                count[which] += 1024;
            }
            busy[which] += slice_started.elapsed();
        }
        bar.set_position((started.elapsed().as_millis() / 2) as u64);
    }
    bar.finish_and_clear();
    let [a, b] = names;
    [
        Scenario::new(&a, count[0], busy[0], &latency[0]),
        Scenario::new(&b, count[1], busy[1], &latency[1]),
    ]
}

mod parking_lot_free {
    //! A histogram the caller tasks merge into when they finish.
    use std::sync::{Arc, Mutex};

    use hdrhistogram::Histogram;

    #[derive(Clone)]
    pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

    impl SharedHistogram {
        pub fn new() -> Self {
            Self(Arc::new(Mutex::new(super::histogram())))
        }
        pub fn merge(&self, other: &Histogram<u64>) {
            if let Ok(mut h) = self.0.lock() {
                let _ = h.add(other);
            }
        }
        pub fn take(&self) -> Histogram<u64> {
            self.0
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| super::histogram())
        }
    }
}

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
        let cell_present = redis_cell_present(&settings).await;
        if !cell_present && !options.quiet {
            eprintln!(
                "keel bench limit: no redis-cell module in this Redis (CL.THROTTLE unknown): \
                 the batched scenarios get no redis-cell baseline; see \
                 scripts/build-redis-cell.sh"
            );
        }
        let info = RedisHandle::connect(&settings).await?;
        for (label, keys) in [("10k_keys", options.keys), ("hot_key", 1)] {
            let raw = if wanted(&format!("baseline_raw_evalsha_{label}")) {
                Some(with_redis_cpu(&info, raw_script(&settings, spec, keys, &options)).await?)
            } else {
                None
            };
            let tool = if wanted(&format!("redis_benchmark_evalsha_{label}")) {
                redis_benchmark(url, &evalsha_command(spec, keys), keys, &options).await
            } else {
                None
            };
            let baseline = match (tool, &raw) {
                (Some(ops), _) => Some(("redis-benchmark EVALSHA (same script)", ops)),
                (None, Some(raw)) => Some(("raw pipelined EVALSHA (same script)", raw.ops_per_sec)),
                (None, None) => None,
            };
            // redis-cell, when the module is loaded: CL.THROTTLE driven by this bench's callers
            // exactly as the unbatched path drives EVALSHA, and by redis-benchmark.
            let cell = if cell_present && wanted(&format!("baseline_redis_cell_{label}")) {
                let driven =
                    with_redis_cpu(&info, redis_cell(&settings, spec, keys, &options)).await?;
                let tool = if wanted(&format!("redis_benchmark_cell_{label}")) {
                    redis_benchmark(url, &cell_command(spec, keys), keys, &options).await
                } else {
                    None
                };
                Some((driven, tool))
            } else {
                None
            };
            for batching in [false, true] {
                let name = format!(
                    "redis_{label}_{}",
                    if batching { "batched" } else { "unbatched" }
                );
                if !wanted(&name) {
                    continue;
                }
                let mut scenario = with_redis_cpu(
                    &info,
                    keel_limiter(&name, &settings, spec, keys, batching, &options),
                )
                .await?;
                match (&cell, batching) {
                    // The brief: with batching, at least redis-cell's CL.THROTTLE. The higher of
                    // its two figures is the baseline.
                    (Some((driven, tool)), true) => {
                        let (what, ops) = match tool {
                            Some(t) if *t > driven.ops_per_sec => {
                                ("redis-cell CL.THROTTLE (redis-benchmark)", *t)
                            }
                            _ => (
                                "redis-cell CL.THROTTLE (same bench client)",
                                driven.ops_per_sec,
                            ),
                        };
                        scenario = scenario.with_baseline(what, ops);
                        if let Some((name, ops)) = baseline {
                            scenario = scenario
                                .with("evalsha_baseline_ops_per_sec", ops)
                                .with("evalsha_baseline", name);
                        }
                    }
                    _ => {
                        if let Some((name, ops)) = baseline {
                            scenario = scenario.with_baseline(name, ops);
                        }
                    }
                }
                if let Some((driven, tool)) = &cell {
                    scenario = scenario.with("redis_cell_ops_per_sec", driven.ops_per_sec);
                    if let Some(tool) = tool {
                        scenario = scenario.with("redis_cell_redis_benchmark_ops_per_sec", *tool);
                    }
                }
                if let Some(raw) = &raw {
                    scenario = scenario.with("raw_script_ops_per_sec", raw.ops_per_sec);
                }
                results.push(scenario.with("keys", keys as u64));
            }
            if let Some(raw) = raw {
                results.push(raw.with("keys", keys as u64));
            }
            if let Some((driven, tool)) = cell {
                let mut driven = driven.with("keys", keys as u64);
                if let Some(tool) = tool {
                    driven = driven.with_baseline("redis-cell CL.THROTTLE (redis-benchmark)", tool);
                }
                results.push(driven);
            }
        }
    }
    for (label, keys) in [("10k_keys", options.keys), ("hot_key", 1)] {
        if !wanted(&format!("memory_{label}")) {
            continue;
        }
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

/// `KEEL_BENCH_ONLY` (comma-separated parts of scenario names, for experiments): runs only the
/// scenarios whose name contains one of them (`redis_benchmark_evalsha_*` /
/// `redis_benchmark_cell_*` name the redis-benchmark runs, `memory_*` the memory-vs-governor
/// pairs). Unset: everything.
fn wanted(name: &str) -> bool {
    match std::env::var("KEEL_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only
            .split(',')
            .any(|part| !part.trim().is_empty() && name.contains(part.trim())),
        _ => true,
    }
}

/// Runs a Redis scenario and adds `redis_cpu_us_per_op`: the CPU time Redis reported (`INFO
/// cpu`, user + system) over the scenario, per operation; `redis_busy`, that CPU time over the
/// scenario's wall time (1.0 = one core saturated); `client_cpu_us_per_op`, this process's CPU
/// per operation; and `ops_per_redis_call`, operations per top-level `EVALSHA` /
/// `CL.THROTTLE` (`INFO commandstats`): the batch size of the batched scenarios.
async fn with_redis_cpu<F>(info: &RedisHandle, scenario: F) -> Result<Scenario, BenchError>
where
    F: std::future::Future<Output = Result<Scenario, BenchError>>,
{
    let before = redis_cpu_seconds(info).await;
    let calls_before = redis_calls(info).await;
    let client_before = own_cpu_seconds();
    let scenario = scenario.await?;
    let client_after = own_cpu_seconds();
    let calls_after = redis_calls(info).await;
    let after = redis_cpu_seconds(info).await;
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let mut scenario = match (client_before, client_after) {
        (Some(before), Some(after)) if scenario.ops > 0 => {
            let per_op = (after - before) * 1e6 / scenario.ops as f64;
            scenario.with("client_cpu_us_per_op", round(per_op))
        }
        _ => scenario,
    };
    if let (Some(before), Some(after)) = (calls_before, calls_after) {
        if after > before && scenario.ops > 0 {
            let per_call = scenario.ops as f64 / (after - before) as f64;
            scenario = scenario.with("ops_per_redis_call", round(per_call));
        }
    }
    Ok(match (before, after) {
        (Some(before), Some(after)) if scenario.ops > 0 => {
            let per_op = (after - before) * 1e6 / scenario.ops as f64;
            let wall = scenario.ops as f64 / scenario.ops_per_sec.max(1e-9);
            scenario
                .with("redis_cpu_us_per_op", round(per_op))
                .with("redis_busy", round((after - before) / wall.max(1e-9)))
        }
        _ => scenario,
    })
}

/// Top-level `EVALSHA` and `CL.THROTTLE` calls so far (`INFO commandstats`; commands a script
/// runs are counted under their own names).
async fn redis_calls(redis: &RedisHandle) -> Option<u64> {
    let mut conn = redis.connection();
    let text: String = keel_redis::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    let calls = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(":calls=")?
                    .split(',')
                    .next()
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(calls("cmdstat_evalsha") + calls("cmdstat_cl.throttle"))
}

/// This process's CPU time so far (user + system, from `/proc/self/stat`; Linux only).
fn own_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3, utime 14 and stime 15, in clock ticks (100 per second on Linux).
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Redis's CPU time so far (`used_cpu_user + used_cpu_sys` of `INFO cpu`).
async fn redis_cpu_seconds(redis: &RedisHandle) -> Option<f64> {
    let mut conn = redis.connection();
    let text: String = keel_redis::redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
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
            // The library's defaults; `KEEL_BENCH_IN_FLIGHT` / `KEEL_BENCH_MAX_BATCH` /
            // `KEEL_BENCH_PIPELINE=0` (or 1) override them to try other bounds.
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
            if let Ok(v) = std::env::var("KEEL_BENCH_PIPELINE") {
                b.pipeline = v == "1";
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

/// The same GCRA limit as redis-cell's arguments: `max_burst count period quantity`. Its
/// capacity is `max_burst + 1` and its period is whole seconds, so `spec` (limit per period,
/// burst = capacity) maps to `burst - 1, limit, period_s`; the bench's 1,000,000/s burst
/// 1,000,000 gives `999999 1000000 1`.
pub fn cell_args(spec: LimitSpec) -> [u64; 3] {
    [
        spec.burst.saturating_sub(1),
        spec.limit,
        (spec.period_us / 1_000_000).max(1),
    ]
}

/// True when the Redis has redis-cell loaded (a `CL.THROTTLE` of quantity 0 on a probe key
/// answers).
async fn redis_cell_present(settings: &RedisSettings) -> bool {
    let Ok(redis) = RedisHandle::connect(settings).await else {
        return false;
    };
    let mut conn = redis.connection();
    let reply: Result<Vec<i64>, _> = keel_redis::redis::cmd("CL.THROTTLE")
        .arg("keel:{rl:bench-probe}:bench:cell")
        .arg(&[1u64, 1, 1, 0])
        .query_async(&mut conn)
        .await;
    matches!(reply, Ok(r) if r.len() == 5)
}

/// redis-cell's `CL.THROTTLE` driven exactly as the unbatched Keel path drives its EVALSHA: the
/// same callers over one multiplexed connection, the same key order, one command per decision.
async fn redis_cell(
    settings: &RedisSettings,
    spec: LimitSpec,
    keys: usize,
    options: &LimitBenchOptions,
) -> Result<Scenario, BenchError> {
    let redis = RedisHandle::connect(settings).await?;
    let names: Arc<Vec<String>> = Arc::new(
        (0..keys)
            .map(|i| format!("keel:{{rl:bench-{i}}}:bench:cell"))
            .collect(),
    );
    let args = cell_args(spec);
    let name = if keys == 1 {
        "baseline_redis_cell_hot_key"
    } else {
        "baseline_redis_cell_10k_keys"
    };
    Ok(drive(name, options, move |n| {
        let mut conn = redis.connection();
        let names = names.clone();
        async move {
            let key = &names[n % names.len()];
            let reply: Result<Vec<i64>, _> = keel_redis::redis::cmd("CL.THROTTLE")
                .arg(key)
                .arg(&args)
                .arg(1)
                .query_async(&mut conn)
                .await;
            matches!(reply, Ok(r) if r.len() == 5)
        }
    })
    .await)
}

/// `redis-benchmark`'s arguments for the engine's EVALSHA of one check (the same arguments the
/// engine sends, see `keel_limit::encode_args`); `__rand_int__` spreads it over the keys.
fn evalsha_command(spec: LimitSpec, keys: usize) -> Vec<String> {
    let sha = Scripts::new()
        .for_algorithm(Algorithm::Gcra)
        .sha()
        .to_string();
    let key = if keys == 1 {
        "keel:{rl:rb-hot}:bench:gcra".to_string()
    } else {
        "keel:{rl:rb-__rand_int__}:bench:gcra".to_string()
    };
    let request = CheckRequest::single(Check {
        key: key.clone(),
        spec,
        cost: 1,
    });
    let (_, args, _) = keel_limit::encode_args(std::slice::from_ref(&request), 1);
    let mut command = vec!["EVALSHA".to_string(), sha, "1".into(), key];
    command.extend(args.iter().map(i64::to_string));
    command
}

/// `redis-benchmark`'s arguments for redis-cell's `CL.THROTTLE` on the same limit.
fn cell_command(spec: LimitSpec, keys: usize) -> Vec<String> {
    let key = if keys == 1 {
        "keel:{rl:rb-hot}:bench:cell".to_string()
    } else {
        "keel:{rl:rb-__rand_int__}:bench:cell".to_string()
    };
    let mut command = vec!["CL.THROTTLE".to_string(), key];
    command.extend(cell_args(spec).iter().map(u64::to_string));
    command.push("1".into());
    command
}

/// `redis-benchmark` running `command` with as many clients as the bench has callers (no
/// pipelining), `-r keys`; `None` when the tool is not installed or fails.
async fn redis_benchmark(
    url: &str,
    command_args: &[String],
    keys: usize,
    options: &LimitBenchOptions,
) -> Option<f64> {
    let address = url.strip_prefix("redis://")?.split('/').next()?;
    let (auth, host_port) = match address.rsplit_once('@') {
        Some((auth, hp)) => (Some(auth.trim_start_matches(':').to_string()), hp),
        None => (None, address),
    };
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
    let requests = (options.duration.as_secs_f64() * 40_000.0).max(10_000.0) as u64;
    let what = command_args.first().map(String::as_str).unwrap_or("");
    let bar = progress(
        &format!(
            "redis-benchmark {what} {}",
            if keys == 1 { "hot key" } else { "10k keys" }
        ),
        options,
    );
    let mut command = tokio::process::Command::new("redis-benchmark");
    command.args([
        "-h",
        host,
        "-p",
        port,
        "-c",
        &options.callers.to_string(),
        "-n",
        &requests.to_string(),
    ]);
    command.args(["-r", &keys.to_string(), "--csv"]);
    if let Some(password) = auth {
        command.args(["-a", &password]);
    }
    command.args(command_args);
    let output = command.output().await.ok()?;
    bar.finish_and_clear();
    parse_csv_rps(&String::from_utf8_lossy(&output.stdout))
}

/// The requests per second of `redis-benchmark --csv`: a header `"test","rps",...` then one
/// line per test.
fn parse_csv_rps(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.starts_with('"') && !l.starts_with("\"test\""))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_cell_gets_the_same_limit() {
        // capacity = max_burst + 1 = burst; count per period; period in whole seconds.
        let spec =
            LimitSpec::new(Algorithm::Gcra, 1_000_000, 1_000_000, Some(1_000_000)).expect("spec");
        assert_eq!(cell_args(spec), [999_999, 1_000_000, 1]);
        let spec = LimitSpec::new(Algorithm::Gcra, 100, 60_000_000, Some(20)).expect("spec");
        assert_eq!(cell_args(spec), [19, 100, 60]);
        assert_eq!(
            cell_command(spec, 10)[..2],
            ["CL.THROTTLE", "keel:{rl:rb-__rand_int__}:bench:cell"]
        );
    }

    #[test]
    fn redis_benchmark_csv_is_parsed() {
        let text =
            "\"test\",\"rps\",\"avg_latency_ms\"\n\"CL.THROTTLE k 1 2 3 1\",\"98765.43\",\"0.5\"\n";
        assert_eq!(parse_csv_rps(text), Some(98_765.43));
        assert_eq!(parse_csv_rps("\"test\",\"rps\"\n"), None);
        assert_eq!(parse_csv_rps("\"X\",\"0.00\"\n"), None);
    }
}

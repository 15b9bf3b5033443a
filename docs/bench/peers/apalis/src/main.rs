//! The apalis peer of `scripts/bench-jobs-peers.sh`: the workload of `keel bench jobs`
//! on apalis + apalis-redis. Workers start first; producers enqueue N no-op jobs in bulk
//! (`push_bulk`, one Lua call per batch); the clock runs from the first enqueue until all N
//! acks are in Redis (the queue's `done` set holds N ids). Prints one JSON object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
struct Args {
    redis: String,
    jobs: usize,
    workers: usize,
    concurrency: usize,
    batch: usize,
    producers: usize,
    fetch_batch: usize,
    poll_ms: u64,
    lock_tasks: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            redis: "redis://127.0.0.1:6379".into(),
            jobs: 20_000,
            workers: 4,
            concurrency: 500,
            batch: 500,
            producers: 4,
            fetch_batch: 500,
            poll_ms: 20,
            lock_tasks: false,
        }
    }
}

const USAGE: &str = "usage: keel-peer-apalis [--redis URL] [--jobs N] [--workers M] \
[--concurrency C] [--batch B] [--producers P] [--fetch-batch F] [--poll-ms MS] [--lock-tasks true|false]";

/// Parses `--flag value` pairs; every number must be > 0.
fn parse_args<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || -> Result<usize, String> {
            match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{flag}: expected a number > 0, got {value:?}")),
            }
        };
        match flag.as_str() {
            "--redis" => a.redis = value.clone(),
            "--jobs" => a.jobs = num()?,
            "--workers" => a.workers = num()?,
            "--concurrency" => a.concurrency = num()?,
            "--batch" => a.batch = num()?,
            "--producers" => a.producers = num()?,
            "--fetch-batch" => a.fetch_batch = num()?,
            "--poll-ms" => a.poll_ms = num()? as u64,
            "--lock-tasks" => {
                a.lock_tasks = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{flag}: expected true or false, got {value:?}")),
                }
            }
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    Ok(a)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    t: u64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn noop(_job: Noop, ran: Data<Arc<AtomicU64>>) -> Result<(), BoxDynError> {
    ran.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn config(a: &Args, queue: &str) -> Config {
    // No pubsub events (nobody listens); leases on (at-least-once, like Keel); results kept.
    // An idle apalis worker polls again at its heartbeat: a short heartbeat is its poll
    // interval, and missed_heartbeats keeps the orphan timeout at several seconds.
    Config::default()
        .queue(queue)
        .batch_size(a.fetch_batch)
        .emit_events(false)
        .lock_tasks(a.lock_tasks)
        .heartbeat_interval(Duration::from_millis(a.poll_ms))
        .missed_heartbeats(((5_000 / a.poll_ms.max(1)) as usize).max(10))
}

/// A multiplexed connection with a response timeout long enough for a bulk push under load
/// (redis-rs' default of 500 ms fails apalis' 500-task batch script on this loaded machine).
async fn connect(client: &redis::Client) -> Result<redis::aio::ConnectionManager, BoxDynError> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    Ok(client.get_connection_manager_with_config(cfg).await?)
}

async fn run(a: Args) -> Result<serde_json::Value, BoxDynError> {
    let client = redis::Client::open(a.redis.as_str())?;
    let queue = format!("apalis-bench-{}", std::process::id());
    let ran = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for i in 0..a.workers {
        // One connection per worker, as separate processes would have.
        let conn = connect(&client).await?;
        let storage: RedisStorage<Noop> = RedisStorage::new(conn).with_config(config(&a, &queue));
        let worker = WorkerBuilder::new(format!("bench-{}-{i}", std::process::id()))
            .backend(storage)
            .data(ran.clone())
            .concurrency(a.concurrency)
            .build(noop);
        let stop = stop_rx.clone();
        handles.push(tokio::spawn(worker.run_with_ctx(move |_ctx| {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            }
        })));
    }
    let producer_conn = connect(&client).await?;
    let start = Instant::now();
    let per = a.jobs.div_ceil(a.producers);
    let mut producers = Vec::new();
    for p in 0..a.producers {
        let count = per.min(a.jobs.saturating_sub(p * per));
        let mut storage: RedisStorage<Noop> =
            RedisStorage::new(producer_conn.clone()).with_config(config(&a, &queue));
        let batch = a.batch;
        producers.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                let t = now_us();
                storage
                    .push_bulk((0..n).map(|_| Noop { t }).collect())
                    .await
                    .map_err(|e| format!("push_bulk: {e:?}"))?;
                left -= n;
            }
            Ok::<(), String>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let enqueue_secs = start.elapsed().as_secs_f64();
    let done_key = format!("{queue}:done");
    let mut conn = producer_conn.clone();
    loop {
        let done: u64 = redis::cmd("SCARD")
            .arg(&done_key)
            .query_async(&mut conn)
            .await?;
        if done >= a.jobs as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for h in handles {
        // Every job is acked by now: a worker slow to wind down is aborted.
        let abort = h.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    Ok(serde_json::json!({
        "name": "apalis",
        "ops_per_sec": (a.jobs as f64 / total).round(),
        "enqueue_per_sec": (a.jobs as f64 / enqueue_secs).round(),
        "seconds": total,
        "jobs": a.jobs,
        "ran": ran.load(Ordering::Relaxed),
        "workers": a.workers,
        "concurrency": a.concurrency,
        "fetch_batch": a.fetch_batch,
        "lock_tasks": a.lock_tasks,
        "version": "apalis 1.0.0 + apalis-redis 1.0.0",
    }))
}

fn main() {
    let a = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(a)) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("apalis peer failed: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_flags_and_keeps_defaults() {
        let a = args("--redis redis://127.0.0.1:16560 --jobs 50000 --workers 2").unwrap();
        assert_eq!(a.redis, "redis://127.0.0.1:16560");
        assert_eq!(a.jobs, 50_000);
        assert_eq!(a.workers, 2);
        assert_eq!(a.concurrency, Args::default().concurrency);
        assert_eq!(args("").unwrap(), Args::default());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(args("--jobs 0").is_err());
        assert!(args("--jobs x").is_err());
        assert!(args("--jobs").is_err());
        assert!(args("--frobnicate 1").is_err());
        assert!(args("--lock-tasks yes").is_err());
        assert!(args("--lock-tasks true").unwrap().lock_tasks);
    }
}

//! Atomicity under concurrency: 8 independent clients (own connections, own batchers: 8
//! application nodes) with 64 concurrent callers each hammer one key for 5 seconds per
//! algorithm. The total admitted must stay within what the algorithm allows, and not far below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_limit::{
    Algorithm, BatcherOptions, FailurePolicy, Limit, LimitSpec, Limiter, LimiterOptions, Source,
};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;

const NODES: usize = 8;
const CALLERS: usize = 64;
const LIMIT: u64 = 200; // per second
const BURST: u64 = 50;

fn seconds() -> f64 {
    std::env::var("KEEL_ATOMICITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0)
}

#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    denied: AtomicU64,
    fallback: AtomicU64,
}

async fn hammer(url: &str, algorithm: Algorithm, batching: BatcherOptions) -> (u64, u64, u64, f64) {
    let spec = LimitSpec::new(algorithm, LIMIT, 1_000_000, Some(BURST)).expect("spec");
    let limit = Arc::new(Limit::new("atomic", spec).with_policy(FailurePolicy::Deny));
    let tally = Arc::new(Tally::default());
    let options = LimiterOptions {
        timeout: Duration::from_secs(2),
        batching: Some(batching),
        ..LimiterOptions::default()
    };
    let mut limiters = Vec::new();
    for _ in 0..NODES {
        let settings = RedisSettings {
            response_timeout: Duration::from_secs(2),
            ..RedisSettings::new(url)
        };
        let redis = RedisHandle::connect(&settings).await.expect("connect");
        limiters.push(Limiter::redis(redis, options.clone()));
    }
    let duration = Duration::from_secs_f64(seconds());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..CALLERS {
            let (limiter, limit, tally) = (limiter.clone(), limit.clone(), tally.clone());
            let key = format!("one-key-{}", algorithm.name());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    let result = limiter.check(&limit, &key, 1).await.expect("check");
                    match (result.allowed, result.source) {
                        (_, Source::Fallback) => tally.fallback.fetch_add(1, Ordering::Relaxed),
                        (true, _) => tally.allowed.fetch_add(1, Ordering::Relaxed),
                        (false, _) => {
                            tokio::task::yield_now().await;
                            tally.denied.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("caller");
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        tally.allowed.load(Ordering::Relaxed),
        tally.denied.load(Ordering::Relaxed),
        tally.fallback.load(Ordering::Relaxed),
        elapsed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_on_one_key_admit_exactly_what_the_algorithm_allows() {
    let server = RedisServer::start().expect("redis");
    for algorithm in Algorithm::ALL {
        let tally = hammer(&server.url(), algorithm, BatcherOptions::default()).await;
        assert_within_bounds(algorithm, "batched", tally);
    }
}

/// The same with the batcher's `pipeline` off (a batch leaves only when no call is in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpipelined_batches_admit_exactly_what_the_algorithm_allows() {
    let server = RedisServer::start().expect("redis");
    let unpipelined = BatcherOptions {
        pipeline: false,
        ..BatcherOptions::default()
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingLog] {
        let tally = hammer(&server.url(), algorithm, unpipelined.clone()).await;
        assert_within_bounds(algorithm, "unpipelined", tally);
    }
}

fn assert_within_bounds(
    algorithm: Algorithm,
    how: &str,
    (allowed, denied, fallback, elapsed): (u64, u64, u64, f64),
) {
    let rate = LIMIT as f64 * elapsed;
    let (most, fewest) = match algorithm {
        // A bucket starts full: burst at once, then the rate.
        Algorithm::Gcra | Algorithm::TokenBucket => {
            (BURST as f64 + rate + 1.0, BURST as f64 + rate * 0.9)
        }
        // Windows aligned to the epoch: a partial window at each end.
        Algorithm::FixedWindow | Algorithm::SlidingLog => (
            LIMIT as f64 * (elapsed.ceil() + 1.0),
            LIMIT as f64 * (elapsed.floor() - 1.0),
        ),
        // Never more than the limit inside one fixed window; the weighting admits less.
        Algorithm::SlidingCounter => (LIMIT as f64 * (elapsed.ceil() + 1.0), rate * 0.5),
    };
    println!(
        "{:>16} ({how}): admitted {allowed} (allowed range {fewest:.0}..={most:.0}), denied {denied}, fallback {fallback}, {elapsed:.2}s",
        algorithm.name()
    );
    assert_eq!(
        fallback, 0,
        "{algorithm:?}: Redis never failed, no decision may fall back"
    );
    assert!(
        denied > allowed,
        "{algorithm:?}: the key must have been over its limit"
    );
    assert!(
        (allowed as f64) <= most,
        "{algorithm:?} ({how}): admitted {allowed} > {most}"
    );
    assert!(
        (allowed as f64) >= fewest,
        "{algorithm:?} ({how}): admitted {allowed} < {fewest}"
    );
}

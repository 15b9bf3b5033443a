//! One conformance suite, run against every engine: memory, Redis, and Redis behind the batcher.
//! Engines differ in where state lives, never in what they decide.

use std::sync::Arc;

use keel_limit::{
    Algorithm, Batcher, BatcherOptions, Check, CheckRequest, LimitEngine, LimitSpec, MemoryEngine,
    RedisEngine, RedisEngineOptions,
};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;

const MINUTE: u64 = 60_000_000;

fn one(key: &str, spec: LimitSpec, cost: u64) -> CheckRequest {
    CheckRequest::single(Check {
        key: key.into(),
        spec,
        cost,
    })
}

async fn decide(engine: &dyn LimitEngine, request: CheckRequest) -> keel_limit::Outcome {
    engine
        .check_batch(vec![request])
        .await
        .expect("engine call")
        .remove(0)
}

async fn exhausts_then_refuses(engine: &dyn LimitEngine, tag: &str) {
    for algorithm in Algorithm::ALL {
        let spec = LimitSpec::new(algorithm, 5, MINUTE, Some(5)).expect("spec");
        let key = format!("keel:{{rl:{tag}}}:exhaust:{}", algorithm.name());
        for i in 0..5 {
            let o = decide(engine, one(&key, spec, 1)).await;
            assert!(o.allowed, "{algorithm:?} call {i}");
            assert_eq!(o.decisions[0].remaining, 4 - i, "{algorithm:?}");
            assert_eq!(o.decisions[0].limit, 5);
        }
        let denied = decide(engine, one(&key, spec, 1)).await;
        assert!(!denied.allowed, "{algorithm:?}");
        assert!(denied.decisions[0].retry_after_us > 0, "{algorithm:?}");
        assert!(
            denied.decisions[0].retry_after_us <= 2 * MINUTE,
            "{algorithm:?}"
        );
    }
}

async fn cost_is_charged(engine: &dyn LimitEngine, tag: &str) {
    for algorithm in Algorithm::ALL {
        let spec = LimitSpec::new(algorithm, 10, MINUTE, Some(10)).expect("spec");
        let key = format!("keel:{{rl:{tag}}}:cost:{}", algorithm.name());
        assert!(decide(engine, one(&key, spec, 7)).await.allowed);
        let peek = decide(engine, one(&key, spec, 0)).await;
        assert!(peek.allowed);
        assert_eq!(peek.decisions[0].remaining, 3, "{algorithm:?}");
        assert!(
            !decide(engine, one(&key, spec, 4)).await.allowed,
            "{algorithm:?}"
        );
        assert!(
            decide(engine, one(&key, spec, 3)).await.allowed,
            "{algorithm:?}"
        );
    }
}

async fn groups_are_all_or_nothing(engine: &dyn LimitEngine, tag: &str) {
    let roomy = LimitSpec::new(Algorithm::TokenBucket, 100, MINUTE, None).expect("spec");
    let tight = LimitSpec::new(Algorithm::SlidingLog, 2, MINUTE, None).expect("spec");
    let a = format!("keel:{{rl:{tag}}}:group:a");
    let b = format!("keel:{{rl:{tag}}}:group:b");
    let group = || CheckRequest {
        checks: vec![
            Check {
                key: a.clone(),
                spec: roomy,
                cost: 1,
            },
            Check {
                key: b.clone(),
                spec: tight,
                cost: 1,
            },
        ],
    };
    assert!(decide(engine, group()).await.allowed);
    assert!(decide(engine, group()).await.allowed);
    let denied = decide(engine, group()).await;
    assert!(!denied.allowed);
    assert!(denied.decisions[0].allowed && !denied.decisions[1].allowed);
    assert_eq!(
        denied.binding().retry_after_us,
        denied.decisions[1].retry_after_us
    );
    // The roomy limit was charged twice, not three times.
    let peek = decide(engine, one(&a, roomy, 0)).await;
    assert_eq!(peek.decisions[0].remaining, 98);
}

async fn batches_keep_order(engine: &dyn LimitEngine, tag: &str) {
    let spec = LimitSpec::new(Algorithm::FixedWindow, 3, MINUTE, None).expect("spec");
    let requests: Vec<_> = (0..20)
        .map(|i| one(&format!("keel:{{rl:{tag}}}:batch:{}", i % 4), spec, 1))
        .collect();
    let outcomes = engine.check_batch(requests).await.expect("batch");
    assert_eq!(outcomes.len(), 20);
    // Each of the 4 keys admits its first 3 (in order), refuses the last 2.
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.allowed, i / 4 < 3, "request {i}");
    }
}

async fn suite(engine: &dyn LimitEngine, tag: &str) {
    exhausts_then_refuses(engine, tag).await;
    cost_is_charged(engine, tag).await;
    groups_are_all_or_nothing(engine, tag).await;
    batches_keep_order(engine, tag).await;
}

#[tokio::test]
async fn memory_engine_conforms() {
    suite(&MemoryEngine::new(), "mem").await;
}

#[tokio::test]
async fn redis_engine_conforms() {
    let server = RedisServer::start().expect("redis");
    let redis = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .expect("connect");
    suite(
        &RedisEngine::new(redis.clone(), RedisEngineOptions::default()),
        "redis",
    )
    .await;
    let clustered = RedisEngine::new(redis, RedisEngineOptions { cluster: true });
    suite(&clustered, "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_redis_engine_conforms() {
    let server = RedisServer::start().expect("redis");
    let redis = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .expect("connect");
    let inner = Arc::new(RedisEngine::new(redis, RedisEngineOptions::default()));
    let batcher = Batcher::new(inner, BatcherOptions::default());
    suite(&batcher, "batched").await;
}

/// The same with `pipeline` off (a batch leaves only when no call is in flight, or full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpipelined_batched_redis_engine_conforms() {
    let server = RedisServer::start().expect("redis");
    let redis = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .expect("connect");
    let inner = Arc::new(RedisEngine::new(redis, RedisEngineOptions::default()));
    let options = BatcherOptions {
        pipeline: false,
        ..BatcherOptions::default()
    };
    let batcher = Batcher::new(inner, options);
    suite(&batcher, "unpipelined").await;
}

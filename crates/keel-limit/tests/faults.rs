//! Redis trouble: stopped, hung, flushed. Every decision still answers, by the rule's policy,
//! and the limiter goes back to Redis by itself when Redis returns.

use std::time::Duration;

use keel_limit::{Algorithm, FailurePolicy, Limit, LimitSpec, Limiter, LimiterOptions, Source};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;
use tokio::time::Instant;

/// Generous bound that only catches a decision stuck on Redis (the timeout is 50 ms).
const STUCK: Duration = Duration::from_millis(750);

fn limit(name: &str, policy: FailurePolicy) -> Limit {
    let spec = LimitSpec::new(Algorithm::Gcra, 10, 60_000_000, Some(10)).expect("spec");
    Limit::new(name, spec).with_policy(policy)
}

async fn limiter(server: &RedisServer) -> Limiter {
    let settings = RedisSettings {
        response_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
        ..RedisSettings::new(server.url())
    };
    let redis = RedisHandle::connect(&settings).await.expect("connect");
    let options = LimiterOptions {
        timeout: Duration::from_millis(50),
        probe_interval: Duration::from_millis(100),
        ..LimiterOptions::default()
    };
    Limiter::redis(redis, options)
}

async fn timed_check(limiter: &Limiter, limit: &Limit, key: &str) -> keel_limit::CheckResult {
    let started = Instant::now();
    let result = limiter.check(limit, key, 1).await.expect("check");
    assert!(
        started.elapsed() < STUCK,
        "decision took {:?}",
        started.elapsed()
    );
    result
}

async fn wait_for_engine(limiter: &Limiter, limit: &Limit, key: &str) {
    for _ in 0..100 {
        if timed_check(limiter, limit, key).await.source == Source::Engine {
            assert!(!limiter.is_degraded());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("limiter never went back to Redis");
}

async fn policies_decide(limiter: &Limiter, round: &str) {
    let allow = limit("allow", FailurePolicy::Allow);
    let deny = limit("deny", FailurePolicy::Deny);
    let local = limit("local", FailurePolicy::Local);
    for _ in 0..20 {
        let r = timed_check(limiter, &allow, round).await;
        assert!(r.allowed && r.source == Source::Fallback, "{r:?}");
        let r = timed_check(limiter, &deny, round).await;
        assert!(!r.allowed && r.source == Source::Fallback, "{r:?}");
    }
    // The insurance limiter holds half the limit (10 -> 5) on this node.
    let mut admitted = 0;
    for _ in 0..20 {
        let r = timed_check(limiter, &local, round).await;
        assert_eq!(r.source, Source::Fallback);
        admitted += u32::from(r.allowed);
    }
    assert_eq!(admitted, 5);
    assert!(limiter.is_degraded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_back() {
    let mut server = RedisServer::start().expect("redis");
    let limiter = limiter(&server).await;
    let probe = limit("probe", FailurePolicy::Deny);
    assert_eq!(
        timed_check(&limiter, &probe, "k").await.source,
        Source::Engine
    );
    server.stop();
    policies_decide(&limiter, "stopped").await;
    server.start_again().expect("restart");
    wait_for_engine(&limiter, &probe, "k2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_then_back() {
    let server = RedisServer::start().expect("redis");
    let limiter = limiter(&server).await;
    let probe = limit("probe", FailurePolicy::Deny);
    assert_eq!(
        timed_check(&limiter, &probe, "k").await.source,
        Source::Engine
    );
    server.freeze().expect("freeze");
    policies_decide(&limiter, "hung").await;
    server.thaw().expect("thaw");
    wait_for_engine(&limiter, &probe, "k3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_recovers_on_the_next_call() {
    let server = RedisServer::start().expect("redis");
    let limiter = limiter(&server).await;
    let l = limit("flush", FailurePolicy::Deny);
    for algorithm in Algorithm::ALL {
        let mut l = l.clone();
        l.spec = LimitSpec::new(algorithm, 10, 60_000_000, Some(10)).expect("spec");
        assert_eq!(timed_check(&limiter, &l, "k").await.source, Source::Engine);
        server.script_flush().expect("flush");
        let r = timed_check(&limiter, &l, "k").await;
        assert_eq!(
            r.source,
            Source::Engine,
            "{algorithm:?}: NOSCRIPT must reload, not fall back"
        );
        assert!(r.allowed);
        assert_eq!(
            r.decision.remaining, 8,
            "{algorithm:?}: state survived the flush"
        );
    }
}

//! The engine conformance suite against the memory engine and the Redis engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_chat::engine::conformance::{run_all, HISTORY_MAX};
use keel_chat::{MemoryEngine, RedisEngine};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;

#[tokio::test]
async fn memory_engine_conforms() {
    run_all(|| async { MemoryEngine::new(HISTORY_MAX, Duration::from_secs(3600)) }).await;
}

/// Every check gets its own engine under a fresh key prefix on one private redis-server.
#[tokio::test]
async fn redis_engine_conforms() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let n = AtomicUsize::new(0);
    run_all(|| {
        let prefix = format!("conf{}", n.fetch_add(1, Ordering::Relaxed));
        let url = url.clone();
        async move {
            let settings = RedisSettings {
                key_prefix: prefix,
                ..RedisSettings::new(url)
            };
            let handle = RedisHandle::connect(&settings).await.expect("connect");
            RedisEngine::new(handle, HISTORY_MAX, Duration::from_secs(3600))
                .await
                .expect("engine")
        }
    })
    .await;
}

//! The engine conformance suite against the memory engine.

use std::time::Duration;

use keel_chat::engine::conformance::{run_all, HISTORY_MAX};
use keel_chat::MemoryEngine;

#[tokio::test]
async fn memory_engine_conforms() {
    run_all(|| async { MemoryEngine::new(HISTORY_MAX, Duration::from_secs(3600)) }).await;
}

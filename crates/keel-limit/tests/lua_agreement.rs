//! The Lua scripts and the pure Rust functions are the same algorithms: driven with the same
//! random sequences of times and costs, they make identical decisions.
//!
//! Each script call returns the Redis `TIME` it used; the Rust functions are replayed at exactly
//! those instants, threading state the way an engine does, and every field must match.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_limit::{
    evaluate, Algorithm, Check, CheckRequest, LimitSpec, RedisEngine, RedisEngineOptions, State,
};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;
use proptest::prelude::*;

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

fn spec() -> impl Strategy<Value = LimitSpec> {
    (algorithm(), 1u64..8, 2_000u64..30_000, 1u64..10).prop_map(|(a, limit, period, burst)| {
        LimitSpec::new(a, limit, period, Some(burst)).expect("valid spec")
    })
}

/// (pause before the call in µs, cost) pairs; half the pauses are zero.
fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((prop_oneof![Just(0u64), 0u64..45_000], 0u64..12), 1..30)
}

static CASE: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn lua_and_rust_agree(
        specs in prop::collection::vec(spec(), 1..3),
        steps in steps(),
        copies in prop_oneof![Just(1usize), 1usize..5],
        vary in any::<bool>(),
    ) {
        let server = SERVER.with(|s| s.url());
        RUNTIME.with(|rt| rt.block_on(check_agreement(&server, &specs, &steps, copies, vary)))?;
    }
}

thread_local! {
    static SERVER: RedisServer = RedisServer::start().expect("redis-server");
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

/// Each step sends `copies` requests for the same keys in one script call (as the batcher does
/// when callers hit the same keys at once), with the step's cost, or with `vary` that cost plus
/// 0, 1, 0, 1... per copy (so single-check calls take the script's general form, not only its
/// uniform one); the Rust side replays them one after the other.
async fn check_agreement(
    url: &str,
    specs: &[LimitSpec],
    steps: &[(u64, u64)],
    copies: usize,
    vary: bool,
) -> Result<(), TestCaseError> {
    let redis = RedisHandle::connect(&RedisSettings::new(url))
        .await
        .expect("connect");
    let engine = RedisEngine::new(redis, RedisEngineOptions::default());
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let keys: Vec<String> = (0..specs.len())
        .map(|i| format!("keel:{{rl:case{case}}}:r{i}"))
        .collect();
    let mut states: Vec<Option<State>> = vec![None; specs.len()];
    for (step, &(pause_us, cost)) in steps.iter().enumerate() {
        if pause_us > 0 {
            tokio::time::sleep(Duration::from_micros(pause_us)).await;
        }
        let cost_of = |copy: usize| cost + if vary { (copy % 2) as u64 } else { 0 };
        let batch: Vec<CheckRequest> = (0..copies)
            .map(|copy| CheckRequest {
                checks: specs
                    .iter()
                    .zip(&keys)
                    .map(|(spec, key)| Check {
                        key: key.clone(),
                        spec: *spec,
                        cost: cost_of(copy),
                    })
                    .collect(),
            })
            .collect();
        let reply = engine.call_script(&batch).await.expect("script call");
        prop_assert_eq!(reply.decisions.len(), specs.len() * copies);
        for (copy, lua_decisions) in reply.decisions.chunks(specs.len()).enumerate() {
            let cost = cost_of(copy);
            let evaluations: Vec<_> = specs
                .iter()
                .zip(&states)
                .map(|(spec, state)| evaluate(spec, state.as_ref(), reply.now_us, cost))
                .collect();
            for (i, (lua, rust)) in lua_decisions.iter().zip(&evaluations).enumerate() {
                prop_assert_eq!(
                    lua,
                    &rust.decision,
                    "step {} copy {} check {} spec {:?} cost {} at {}",
                    step,
                    copy,
                    i,
                    specs[i],
                    cost,
                    reply.now_us
                );
            }
            if evaluations.iter().all(|e| e.decision.allowed) {
                for (state, evaluation) in states.iter_mut().zip(evaluations) {
                    if let Some(next) = evaluation.next {
                        *state = Some(next);
                    }
                }
            }
        }
    }
    Ok(())
}

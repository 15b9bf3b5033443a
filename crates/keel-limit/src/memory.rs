//! The in-memory engine: one node, sharded, bounded, idle keys evicted.
//!
//! The default of `keel dev` and `keel limit serve --engine memory`, and the insurance limiter
//! behind a Redis engine. It runs the same pure functions as the Lua scripts, so the
//! conformance suite holds it to the same decisions.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::{Mutex, MutexGuard};

use crate::algorithm::{evaluate, State};
use crate::clock::{Clock, TokioClock};
use crate::engine::{CheckRequest, LimitEngine, LimitError, Outcome};

/// Sizing of a [`MemoryEngine`].
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// Most keys held at once; past it the keys closest to expiry are evicted first.
    pub max_keys: usize,
    /// Number of independently locked shards (rounded up to a power of two).
    pub shards: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            shards: 128,
        }
    }
}

struct Slot {
    state: State,
    expires_at: i64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Slot, foldhash::fast::FixedState>,
    ops_since_sweep: u32,
}

/// Sharded in-memory limiter state.
pub struct MemoryEngine {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    per_shard_cap: usize,
    hasher: foldhash::fast::FixedState,
    clock: Arc<dyn Clock>,
}

const SWEEP_EVERY: u32 = 4096;

impl MemoryEngine {
    /// An engine on the tokio clock with default sizing.
    pub fn new() -> Self {
        Self::with_options(MemoryOptions::default(), Arc::new(TokioClock::new()))
    }

    /// An engine with explicit sizing and clock.
    pub fn with_options(options: MemoryOptions, clock: Arc<dyn Clock>) -> Self {
        let shards = options.shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            mask: shards - 1,
            per_shard_cap: (options.max_keys / shards).max(1),
            hasher: foldhash::fast::FixedState::with_seed(0x6b65656c),
            clock,
        }
    }

    /// Keys held now (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) & self.mask
    }

    /// Decides one request synchronously (the engine never waits on I/O).
    pub fn check_now(&self, request: &CheckRequest) -> Outcome {
        let now = self.clock.now_us();
        if let [check] = request.checks.as_slice() {
            let mut shard = self.shards[self.shard_of(&check.key)].lock();
            let evaluation = evaluate(&check.spec, shard.get(&check.key, now), now, check.cost);
            if let Some(next) = evaluation.next {
                shard.put(
                    &check.key,
                    next,
                    now + evaluation.ttl_us,
                    now,
                    self.per_shard_cap,
                );
            }
            return Outcome::from_decisions(vec![evaluation.decision]);
        }
        // Several checks: lock every shard involved, in index order, so two requests never
        // deadlock and the group is evaluated and committed atomically.
        let mut indices: Vec<usize> = request
            .checks
            .iter()
            .map(|c| self.shard_of(&c.key))
            .collect();
        let order = {
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            sorted.dedup();
            sorted
        };
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let mut evaluations = Vec::with_capacity(request.checks.len());
        for (check, shard_index) in request.checks.iter().zip(indices.iter_mut()) {
            let position = guards
                .iter()
                .position(|(i, _)| i == shard_index)
                .unwrap_or(0);
            let shard = &mut guards[position].1;
            evaluations.push(evaluate(
                &check.spec,
                shard.get(&check.key, now),
                now,
                check.cost,
            ));
            *shard_index = position;
        }
        let allowed = evaluations.iter().all(|e| e.decision.allowed);
        if allowed {
            for ((check, position), evaluation) in
                request.checks.iter().zip(&indices).zip(&evaluations)
            {
                if let Some(next) = &evaluation.next {
                    guards[*position].1.put(
                        &check.key,
                        next.clone(),
                        now + evaluation.ttl_us,
                        now,
                        self.per_shard_cap,
                    );
                }
            }
        }
        Outcome::from_decisions(evaluations.into_iter().map(|e| e.decision).collect())
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Shard {
    fn get(&self, key: &str, now: i64) -> Option<&State> {
        self.map
            .get(key)
            .filter(|slot| slot.expires_at > now)
            .map(|slot| &slot.state)
    }

    fn put(&mut self, key: &str, state: State, expires_at: i64, now: i64, cap: usize) {
        self.ops_since_sweep += 1;
        if let Some(slot) = self.map.get_mut(key) {
            slot.state = state;
            slot.expires_at = expires_at;
        } else {
            if self.map.len() >= cap {
                self.sweep(now);
                if self.map.len() >= cap {
                    // Still full of live keys: evict the one closest to expiry.
                    let victim = self
                        .map
                        .iter()
                        .min_by_key(|(_, slot)| slot.expires_at)
                        .map(|(k, _)| k.clone());
                    if let Some(victim) = victim {
                        self.map.remove(&victim);
                        metrics::counter!("keel_limit_memory_evictions_total").increment(1);
                    }
                }
            }
            self.map.insert(key.into(), Slot { state, expires_at });
        }
        if self.ops_since_sweep >= SWEEP_EVERY {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: i64) {
        self.ops_since_sweep = 0;
        self.map.retain(|_, slot| slot.expires_at > now);
    }
}

impl LimitEngine for MemoryEngine {
    fn check_batch<'a>(
        &'a self,
        requests: Vec<CheckRequest>,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, LimitError>> {
        let outcomes = requests.iter().map(|r| self.check_now(r)).collect();
        Box::pin(async move { Ok(outcomes) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, LimitSpec};
    use crate::clock::ManualClock;
    use crate::engine::Check;

    fn engine(max_keys: usize, clock: Arc<ManualClock>) -> MemoryEngine {
        MemoryEngine::with_options(
            MemoryOptions {
                max_keys,
                shards: 1,
            },
            clock,
        )
    }

    fn check(key: &str, spec: LimitSpec) -> CheckRequest {
        CheckRequest::single(Check {
            key: key.into(),
            spec,
            cost: 1,
        })
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_expire() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let engine = engine(100, clock.clone());
        let spec = LimitSpec::new(Algorithm::FixedWindow, 1, 1_000_000, None).expect("spec");
        for i in 0..1000 {
            assert!(engine.check_now(&check(&format!("k{i}"), spec)).allowed);
        }
        assert!(engine.len() <= 100, "len {}", engine.len());
        clock.advance_us(2_000_000);
        engine.check_now(&check("fresh", spec));
        for i in 0..200 {
            engine.check_now(&check(&format!("z{i}"), spec));
        }
        assert!(engine.len() <= 100);
    }

    #[test]
    fn groups_are_all_or_nothing() {
        let clock = Arc::new(ManualClock::new(5_000_000_000));
        let engine = MemoryEngine::with_options(MemoryOptions::default(), clock);
        let roomy = LimitSpec::new(Algorithm::FixedWindow, 100, 60_000_000, None).expect("spec");
        let tight = LimitSpec::new(Algorithm::FixedWindow, 1, 60_000_000, None).expect("spec");
        let group = |cost| CheckRequest {
            checks: vec![
                Check {
                    key: "a".into(),
                    spec: roomy,
                    cost,
                },
                Check {
                    key: "b".into(),
                    spec: tight,
                    cost,
                },
            ],
        };
        assert!(engine.check_now(&group(1)).allowed);
        let denied = engine.check_now(&group(1));
        assert!(!denied.allowed);
        // The roomy limit was not charged by the denied group: 99 left after the first.
        let peek = engine.check_now(&CheckRequest::single(Check {
            key: "a".into(),
            spec: roomy,
            cost: 0,
        }));
        assert_eq!(peek.decisions[0].remaining, 99);
    }
}

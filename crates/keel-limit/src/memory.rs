//! The in-memory engine: one node, sharded, bounded, idle keys evicted.
//!
//! The default of `keel dev` and `keel limit serve --engine memory`, and the insurance limiter
//! behind a Redis engine. It runs the same pure functions as the Lua scripts, so the
//! conformance suite holds it to the same decisions. A key is hashed once: the hash picks the
//! shard and probes that shard's table.

use std::hash::BuildHasher;
use std::sync::Arc;

use futures::future::BoxFuture;
use hashbrown::HashTable;
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

/// A shard's lock: a spin lock whose waiters yield their time slice. Its unlock is a plain store
/// (a parking mutex needs an atomic read-modify-write to unlock), and the critical section is a
/// table probe and a few arithmetic operations, so waiters rarely wait long.
type Mutex<T> = SpinMutex<T, Yield>;
type MutexGuard<'a, T> = SpinMutexGuard<'a, T, Yield>;

use crate::algorithm::{apply, evaluate, Decision, LimitSpec, State};
use crate::clock::{Clock, FastClock};
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

/// Longest key kept inline in its slot; a longer key goes to an allocation of its own.
const INLINE_KEY: usize = 70;

/// A key with its state, in one cache-line-aligned allocation that the table points to.
///
/// A lookup reads the table's 8-byte pointer and then this slot, whose key and state sit in two
/// adjacent cache lines. A table of slots holding the state beside a boxed key reads three
/// places per lookup (slot, key, and a table 8x larger, which at 10,000 keys no longer fits in
/// L2): keyed `governor` reads about as many, and was faster than that layout at 10,000 keys.
#[repr(align(64))]
struct Slot {
    expires_at: i64,
    state: Option<State>,
    key: SlotKey,
}

// Two cache lines per key (plus the table's 8-byte pointer and control byte): 1,000,000 keys,
// the default bound, hold about 137 MB.
const _: () = assert!(std::mem::size_of::<Slot>() == 128);

/// A slot's key: inline up to [`INLINE_KEY`] bytes, else boxed.
enum SlotKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl SlotKey {
    fn new(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(key.into()),
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

#[derive(Default)]
struct Shard {
    table: HashTable<Box<Slot>>,
    ops_since_sweep: u32,
    last_sweep_us: i64,
}

/// Sharded in-memory limiter state.
pub struct MemoryEngine {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    per_shard_cap: usize,
    /// Seeded at random per engine: keys come from clients (addresses, headers, paths), and a
    /// known seed would let a client craft keys that collide into one long probe sequence.
    hasher: foldhash::fast::RandomState,
    clock: EngineClock,
}

/// The engine's clock: the production [`FastClock`] called directly (inlined on the hot path),
/// or any injected clock through the trait.
enum EngineClock {
    Fast(FastClock),
    Injected(Arc<dyn Clock>),
}

impl EngineClock {
    #[inline]
    fn now_us(&self) -> i64 {
        match self {
            Self::Fast(clock) => clock.now_us(),
            Self::Injected(clock) => clock.now_us(),
        }
    }
}

/// A shard looks for expired keys every this many decisions...
const SWEEP_EVERY: u32 = 4096;
/// ...and sweeps them at most this often (or at once when it is full): sweeping keys whose
/// state expires within microseconds of use (a generous limit) more often than this only
/// trades their slots for a free and an allocation each.
const SWEEP_INTERVAL_US: i64 = 1_000_000;

impl MemoryEngine {
    /// An engine on the fast wall clock with default sizing.
    pub fn new() -> Self {
        Self::build(
            MemoryOptions::default(),
            EngineClock::Fast(FastClock::new()),
        )
    }

    /// An engine with explicit sizing and clock.
    pub fn with_options(options: MemoryOptions, clock: Arc<dyn Clock>) -> Self {
        Self::build(options, EngineClock::Injected(clock))
    }

    /// An engine with explicit sizing on the fast wall clock.
    pub fn with_fast_clock(options: MemoryOptions) -> Self {
        Self::build(options, EngineClock::Fast(FastClock::new()))
    }

    fn build(options: MemoryOptions, clock: EngineClock) -> Self {
        let shards = options.shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            mask: shards - 1,
            per_shard_cap: (options.max_keys / shards).max(1),
            hasher: foldhash::fast::RandomState::default(),
            clock,
        }
    }

    /// Keys held now (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 40) as usize) & self.mask
    }

    /// Decides one check: the fast path (one hash, one lock, state updated in place).
    pub fn check_one(&self, key: &str, spec: &LimitSpec, cost: u64) -> Decision {
        let now = self.clock.now_us();
        let hash = self.hash(key.as_bytes());
        let mut shard = self.shards[self.shard_of(hash)].lock();
        let decision = match shard
            .table
            .find_mut(hash, |s| s.key.as_bytes() == key.as_bytes())
        {
            Some(slot) => {
                if slot.expires_at <= now {
                    slot.state = None;
                }
                let (decision, ttl) = apply(spec, &mut slot.state, now, cost);
                if decision.allowed {
                    slot.expires_at = now + ttl;
                }
                decision
            }
            None => {
                let mut state = None;
                let (decision, ttl) = apply(spec, &mut state, now, cost);
                if decision.allowed && state.is_some() {
                    shard.insert(self, hash, key, state, now + ttl, now);
                }
                decision
            }
        };
        shard.tick(now);
        decision
    }

    /// Decides one request synchronously (the engine never waits on I/O).
    pub fn check_now(&self, request: &CheckRequest) -> Outcome {
        if let [check] = request.checks.as_slice() {
            return Outcome {
                allowed: false,
                decisions: vec![self.check_one(&check.key, &check.spec, check.cost)],
            }
            .settle();
        }
        let now = self.clock.now_us();
        // Several checks: lock every shard involved, in index order, so two requests never
        // deadlock and the group is evaluated and committed atomically.
        let hashes: Vec<u64> = request
            .checks
            .iter()
            .map(|c| self.hash(c.key.as_bytes()))
            .collect();
        let mut order: Vec<usize> = hashes.iter().map(|&h| self.shard_of(h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let position = |hash: u64| {
            let index = self.shard_of(hash);
            guards.iter().position(|(i, _)| *i == index).unwrap_or(0)
        };
        let positions: Vec<usize> = hashes.iter().map(|&h| position(h)).collect();
        let evaluations: Vec<_> = request
            .checks
            .iter()
            .zip(&hashes)
            .zip(&positions)
            .map(|((check, &hash), &p)| {
                let state = guards[p]
                    .1
                    .table
                    .find(hash, |s| s.key.as_bytes() == check.key.as_bytes())
                    .filter(|s| s.expires_at > now)
                    .and_then(|s| s.state.as_ref());
                evaluate(&check.spec, state, now, check.cost)
            })
            .collect();
        let allowed = evaluations.iter().all(|e| e.decision.allowed);
        let decisions = evaluations.iter().map(|e| e.decision).collect();
        if allowed {
            for (((check, &hash), &p), evaluation) in request
                .checks
                .iter()
                .zip(&hashes)
                .zip(&positions)
                .zip(evaluations)
            {
                let Some(next) = evaluation.next else {
                    continue;
                };
                let shard = &mut guards[p].1;
                let expires_at = now + evaluation.ttl_us;
                match shard
                    .table
                    .find_mut(hash, |s| s.key.as_bytes() == check.key.as_bytes())
                {
                    Some(slot) => {
                        slot.state = Some(next);
                        slot.expires_at = expires_at;
                    }
                    None => shard.insert(self, hash, &check.key, Some(next), expires_at, now),
                }
            }
        }
        for (_, guard) in &mut guards {
            guard.tick(now);
        }
        Outcome::from_decisions(decisions)
    }
}

impl Outcome {
    fn settle(mut self) -> Self {
        self.allowed = self.decisions.iter().all(|d| d.allowed);
        self
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Shard {
    fn insert(
        &mut self,
        engine: &MemoryEngine,
        hash: u64,
        key: &str,
        state: Option<State>,
        expires_at: i64,
        now: i64,
    ) {
        if self.table.len() >= engine.per_shard_cap {
            self.sweep(now);
            if self.table.len() >= engine.per_shard_cap {
                // Still full of live keys: evict the one closest to expiry.
                let victim = self
                    .table
                    .iter()
                    .min_by_key(|s| s.expires_at)
                    .map(|s| s.key.as_bytes().to_vec());
                if let Some(victim) = victim {
                    let victim_hash = engine.hash(&victim);
                    if let Ok(entry) = self
                        .table
                        .find_entry(victim_hash, |s| s.key.as_bytes() == victim.as_slice())
                    {
                        entry.remove();
                        metrics::counter!("keel_limit_memory_evictions_total").increment(1);
                    }
                }
            }
        }
        let slot = Box::new(Slot {
            expires_at,
            state,
            key: SlotKey::new(key.as_bytes()),
        });
        self.table
            .insert_unique(hash, slot, |s| engine.hash(s.key.as_bytes()));
    }

    fn tick(&mut self, now: i64) {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep >= SWEEP_EVERY {
            self.ops_since_sweep = 0;
            if now - self.last_sweep_us >= SWEEP_INTERVAL_US {
                self.sweep(now);
            }
        }
    }

    fn sweep(&mut self, now: i64) {
        self.ops_since_sweep = 0;
        self.last_sweep_us = now;
        self.table.retain(|slot| slot.expires_at > now);
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
    fn inline_and_spilled_keys_are_told_apart() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let engine = engine(1_000, clock);
        let spec = LimitSpec::new(Algorithm::FixedWindow, 1, 1_000_000, None).expect("spec");
        // Keys around the inline bound, each a prefix of the next: every one has its own state.
        let keys: Vec<String> = [0, 1, 69, 70, 71, 72, 255, 256, 300, 1000]
            .iter()
            .map(|&n| "k".repeat(n))
            .collect();
        for key in &keys {
            assert!(
                engine.check_now(&check(key, spec)).allowed,
                "first {}",
                key.len()
            );
        }
        for key in &keys {
            assert!(
                !engine.check_now(&check(key, spec)).allowed,
                "second {}",
                key.len()
            );
        }
        assert_eq!(engine.len(), keys.len());
        // Eviction finds spilled keys too.
        let small = self::engine(2, Arc::new(ManualClock::new(1_000_000_000)));
        for key in &keys[6..] {
            small.check_now(&check(key, spec));
        }
        assert!(small.len() <= 2, "len {}", small.len());
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
        // The most recent key is still limited.
        assert!(!engine.check_now(&check("k999", spec)).allowed);
        clock.advance_us(2_000_000);
        assert!(
            engine.check_now(&check("k999", spec)).allowed,
            "expired state is gone"
        );
        for i in 0..200 {
            engine.check_now(&check(&format!("z{i}"), spec));
        }
        assert!(engine.len() <= 100);
    }

    #[test]
    fn idle_keys_are_swept_before_the_shard_is_full() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let engine = engine(1_000_000, clock.clone());
        let spec = LimitSpec::new(Algorithm::FixedWindow, 10, 1_000_000, None).expect("spec");
        for i in 0..1000 {
            assert!(engine.check_now(&check(&format!("k{i}"), spec)).allowed);
        }
        assert_eq!(engine.len(), 1000);
        clock.advance_us(3_000_000);
        for _ in 0..SWEEP_EVERY {
            engine.check_now(&check("hot", spec));
        }
        assert_eq!(engine.len(), 1, "only the key in use is left");
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

//! The limiter callers use: limits by name, the Redis-failure policy, timeouts, and the
//! over-limit cache.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel_redis::{Keys, RedisHandle};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::algorithm::{Decision, LimitSpec};
use crate::batcher::{Batcher, BatcherOptions};
use crate::clock::{Clock, FastClock, TokioClock};
use crate::engine::{Check, CheckRequest, LimitEngine, LimitError, Outcome};
use crate::memory::{MemoryEngine, MemoryOptions};
use crate::redis_engine::{RedisEngine, RedisEngineOptions};

/// What a limit does when its shared store (Redis) is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Admit everything (fail open).
    Allow,
    /// Refuse everything (fail closed).
    Deny,
    /// Decide with an in-memory limiter holding `local_share` of the limit on this node.
    #[default]
    Local,
}

/// A named limit: what rules, middleware and services check against.
#[derive(Clone, Debug)]
pub struct Limit {
    /// Rule name: part of the storage key and of metric labels.
    pub name: Arc<str>,
    /// The algorithm and its numbers.
    pub spec: LimitSpec,
    /// Behaviour when Redis is unavailable.
    pub on_redis_error: FailurePolicy,
    /// Share of the limit the local insurance limiter grants this node (0 < share <= 1).
    pub local_share: f64,
    counters: Arc<OnceLock<DecisionCounters>>,
}

impl PartialEq for Limit {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.spec == other.spec
            && self.on_redis_error == other.on_redis_error
            && self.local_share == other.local_share
    }
}

/// `keel_limit_decisions_total{rule, outcome, source}` handles, registered once per limit so
/// the hot path never formats labels.
#[derive(Debug)]
struct DecisionCounters {
    counters: [[metrics::Counter; 4]; 2],
}

impl DecisionCounters {
    fn new(rule: &str, engine: &'static str) -> Self {
        let make = |outcome: &'static str, source: &'static str| metrics::counter!("keel_limit_decisions_total", "rule" => rule.to_string(), "outcome" => outcome, "source" => source);
        let row = |outcome| {
            [
                make(outcome, engine),
                make(outcome, "deny_cache"),
                make(outcome, "fallback"),
                make(outcome, "error"),
            ]
        };
        Self {
            counters: [row("denied"), row("allowed")],
        }
    }

    fn record(&self, allowed: bool, source: Source) {
        let column = match source {
            Source::Engine => 0,
            Source::DenyCache => 1,
            Source::Fallback => 2,
        };
        self.counters[usize::from(allowed)][column].increment(1);
    }
}

impl Limit {
    /// A limit with the default failure policy (`local`, half the limit per node).
    pub fn new(name: impl Into<Arc<str>>, spec: LimitSpec) -> Self {
        Self {
            name: name.into(),
            spec,
            on_redis_error: FailurePolicy::Local,
            local_share: 0.5,
            counters: Arc::new(OnceLock::new()),
        }
    }

    /// The same limit with another failure policy.
    pub fn with_policy(mut self, policy: FailurePolicy) -> Self {
        self.on_redis_error = policy;
        self
    }

    fn local_spec(&self) -> LimitSpec {
        let share = self.local_share.clamp(0.0001, 1.0);
        let scale = |v: u64| ((v as f64 * share).floor() as u64).max(1);
        LimitSpec::new(
            self.spec.algorithm,
            scale(self.spec.limit),
            self.spec.period_us,
            Some(scale(self.spec.burst)),
        )
        .unwrap_or(self.spec)
    }
}

/// Where a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The engine (Redis or memory).
    Engine,
    /// The over-limit cache: the key was denied moments ago and is still waiting.
    DenyCache,
    /// Redis was unavailable: the failure policy decided.
    Fallback,
}

/// The answer to a check of one or several limits.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    /// Admitted (all limits charged) or not (none charged).
    pub allowed: bool,
    /// The governing decision (longest wait when denied, fewest remaining when allowed).
    pub decision: Decision,
    /// One decision per limit, in order.
    pub decisions: Vec<Decision>,
    /// Who decided.
    pub source: Source,
}

impl CheckResult {
    fn from_outcome(outcome: Outcome, source: Source) -> Self {
        Self {
            allowed: outcome.allowed,
            decision: outcome.binding(),
            decisions: outcome.decisions,
            source,
        }
    }
}

/// Tuning of a [`Limiter`].
#[derive(Clone, Debug)]
pub struct LimiterOptions {
    /// Longest a decision waits on the engine before the failure policy decides.
    pub timeout: Duration,
    /// While Redis is unavailable, how often one request probes it (others fall back at once).
    pub probe_interval: Duration,
    /// Answer keys denied moments ago locally until their `retry_after`.
    pub deny_cache: bool,
    /// Most keys in the over-limit cache.
    pub deny_cache_size: usize,
    /// Coalesce concurrent decisions into batched script calls (Redis engine).
    pub batching: Option<BatcherOptions>,
    /// Split script calls by Cluster slot.
    pub cluster: bool,
    /// Sizing of the memory engine (or of the insurance limiter).
    pub memory: MemoryOptions,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            probe_interval: Duration::from_millis(250),
            deny_cache: true,
            deny_cache_size: 100_000,
            batching: Some(BatcherOptions::default()),
            cluster: false,
            memory: MemoryOptions::default(),
        }
    }
}

/// The rate limiter: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn LimitEngine>,
    /// The memory engine itself when it is the engine: single checks skip the trait object.
    memory: Option<Arc<MemoryEngine>>,
    is_remote: bool,
    insurance: MemoryEngine,
    keys: Keys,
    options: LimiterOptions,
    clock: Arc<dyn Clock>,
    degraded: AtomicBool,
    next_probe_us: AtomicI64,
    deny_cache: DenyCache,
}

impl Limiter {
    /// A single-node limiter on the memory engine.
    pub fn memory() -> Self {
        let options = LimiterOptions::default();
        let engine = Arc::new(MemoryEngine::with_fast_clock(options.memory.clone()));
        Self::build_memory(engine, options, Arc::new(FastClock::new()))
    }

    /// A single-node limiter on the memory engine with an injected clock (tests pass a
    /// [`crate::TokioClock`] to pause and advance time).
    pub fn memory_with_clock(clock: Arc<dyn Clock>) -> Self {
        let options = LimiterOptions::default();
        let engine = Arc::new(MemoryEngine::with_options(
            options.memory.clone(),
            clock.clone(),
        ));
        Self::build_memory(engine, options, clock)
    }

    /// A limiter whose engine is `engine`: single checks call it directly.
    fn build_memory(
        engine: Arc<MemoryEngine>,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut limiter = Self::build(engine.clone(), false, Keys::default(), options, clock);
        if let Some(inner) = Arc::get_mut(&mut limiter.inner) {
            inner.memory = Some(engine);
        }
        limiter
    }

    /// A distributed limiter on Redis (batched unless `options.batching` is `None`).
    pub fn redis(redis: RedisHandle, options: LimiterOptions) -> Self {
        let keys = redis.keys().clone();
        let engine = RedisEngine::new(
            redis,
            RedisEngineOptions {
                cluster: options.cluster,
            },
        );
        let loader = engine.clone();
        tokio::spawn(async move { loader.load_scripts().await });
        let engine: Arc<dyn LimitEngine> = match &options.batching {
            Some(batching) => Arc::new(Batcher::new(Arc::new(engine), batching.clone())),
            None => Arc::new(engine),
        };
        Self::build(engine, true, keys, options, Arc::new(TokioClock::new()))
    }

    /// A limiter on any engine. `is_remote` engines get the failure policy and deny cache.
    pub fn with_engine(
        engine: Arc<dyn LimitEngine>,
        is_remote: bool,
        keys: Keys,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::build(engine, is_remote, keys, options, clock)
    }

    fn build(
        engine: Arc<dyn LimitEngine>,
        is_remote: bool,
        keys: Keys,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        metrics::gauge!("keel_limit_fallback_active").set(0.0);
        Self {
            inner: Arc::new(Inner {
                insurance: MemoryEngine::with_options(options.memory.clone(), clock.clone()),
                deny_cache: DenyCache::new(options.deny_cache_size),
                engine,
                memory: None,
                is_remote,
                keys,
                options,
                clock,
                degraded: AtomicBool::new(false),
                next_probe_us: AtomicI64::new(0),
            }),
        }
    }

    /// The engine's name (`memory`, `redis`).
    pub fn engine_name(&self) -> &'static str {
        self.inner.engine.name()
    }

    /// True while Redis is unavailable and failure policies are deciding.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Where the state of `limit` for `key` lives: `prefix:{rl:KEY}:RULE:ALGORITHM`. The hash tag
    /// is the caller's key, so all limits checked together for one key share a Cluster slot.
    pub fn storage_key(&self, limit: &Limit, key: &str) -> String {
        let mut tag = String::with_capacity(key.len() + 3);
        tag.push_str("rl:");
        tag.push_str(key);
        self.inner.keys.tagged(
            &tag,
            &format!("{}:{}", limit.name, limit.spec.algorithm.name()),
        )
    }

    /// Checks one limit for `key`, charging `cost` when admitted.
    pub async fn check(
        &self,
        limit: &Limit,
        key: &str,
        cost: u64,
    ) -> Result<CheckResult, LimitError> {
        self.check_all(&[(limit, key, cost)]).await
    }

    /// Checks several limits at once: all are charged, or none.
    pub async fn check_all(
        &self,
        checks: &[(&Limit, &str, u64)],
    ) -> Result<CheckResult, LimitError> {
        if checks.is_empty() || checks.len() > 64 {
            return Err(LimitError::BadCheckCount {
                got: checks.len(),
                max: 64,
            });
        }
        for (limit, _, cost) in checks {
            if *cost > limit.spec.capacity() {
                return Err(LimitError::CostExceedsCapacity {
                    cost: *cost,
                    capacity: limit.spec.capacity(),
                });
            }
        }
        let result = match (&self.inner.memory, checks) {
            (Some(memory), [(limit, key, cost)]) => {
                let decision = memory.check_one(&self.storage_key(limit, key), &limit.spec, *cost);
                CheckResult {
                    allowed: decision.allowed,
                    decision,
                    decisions: vec![decision],
                    source: Source::Engine,
                }
            }
            _ => self.decide(checks).await,
        };
        for (limit, _, _) in checks {
            limit
                .counters
                .get_or_init(|| DecisionCounters::new(&limit.name, self.inner.engine.name()))
                .record(result.allowed, result.source);
        }
        Ok(result)
    }

    fn request(&self, checks: &[(&Limit, &str, u64)]) -> CheckRequest {
        CheckRequest {
            checks: checks
                .iter()
                .map(|(limit, key, cost)| Check {
                    key: self.storage_key(limit, key),
                    spec: limit.spec,
                    cost: *cost,
                })
                .collect(),
        }
    }

    async fn decide(&self, checks: &[(&Limit, &str, u64)]) -> CheckResult {
        let inner = &self.inner;
        let request = self.request(checks);
        if !inner.is_remote {
            return match inner.engine.check_batch(vec![request]).await {
                Ok(mut outcomes) if outcomes.len() == 1 => {
                    CheckResult::from_outcome(outcomes.remove(0), Source::Engine)
                }
                _ => self.fallback(checks, &self.request(checks).checks),
            };
        }
        let now = inner.clock.now_us();
        if inner.options.deny_cache {
            if let Some(cached) = inner.deny_cache.lookup(&request, now) {
                return cached;
            }
        }
        if inner.degraded.load(Ordering::Relaxed) {
            let next = inner.next_probe_us.load(Ordering::Relaxed);
            let probe_every =
                i64::try_from(inner.options.probe_interval.as_micros()).unwrap_or(250_000);
            if now < next
                || inner
                    .next_probe_us
                    .compare_exchange(next, now + probe_every, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return self.fallback(checks, &request.checks);
            }
        }
        let call = inner.engine.check_batch(vec![request]);
        let reply = match tokio::time::timeout(inner.options.timeout, call).await {
            Ok(Ok(mut outcomes)) if outcomes.len() == 1 => Ok(outcomes.remove(0)),
            Ok(Ok(_)) => Err("engine returned the wrong number of outcomes".to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", inner.options.timeout)),
        };
        match reply {
            Ok(outcome) => {
                self.mark_healthy();
                if !outcome.allowed && inner.options.deny_cache {
                    let now = inner.clock.now_us();
                    for ((limit, key, cost), decision) in checks.iter().zip(&outcome.decisions) {
                        if !decision.allowed && decision.retry_after_us != u64::MAX {
                            let wait =
                                i64::try_from(decision.retry_after_us).unwrap_or(i64::MAX / 4);
                            let key = self.storage_key(limit, key);
                            inner.deny_cache.insert(&key, *cost, now + wait);
                        }
                    }
                }
                CheckResult::from_outcome(outcome, Source::Engine)
            }
            Err(reason) => {
                self.mark_degraded(&reason);
                self.fallback(checks, &self.request(checks).checks)
            }
        }
    }

    fn mark_healthy(&self) {
        // A plain load first: every decision passes here, and a swap would write the shared
        // cache line each time.
        if self.inner.degraded.load(Ordering::Relaxed)
            && self.inner.degraded.swap(false, Ordering::AcqRel)
        {
            tracing::info!(
                engine = self.inner.engine.name(),
                "rate limiter: Redis is back, deciding on Redis again"
            );
            metrics::counter!("keel_limit_engine_state_changes_total", "to" => "healthy")
                .increment(1);
            metrics::gauge!("keel_limit_fallback_active").set(0.0);
        }
    }

    fn mark_degraded(&self, reason: &str) {
        if !self.inner.degraded.swap(true, Ordering::AcqRel) {
            let probe_every =
                i64::try_from(self.inner.options.probe_interval.as_micros()).unwrap_or(250_000);
            self.inner
                .next_probe_us
                .store(self.inner.clock.now_us() + probe_every, Ordering::Relaxed);
            tracing::warn!(
                engine = self.inner.engine.name(),
                reason,
                "rate limiter: Redis unavailable, failure policies decide"
            );
            metrics::counter!("keel_limit_engine_state_changes_total", "to" => "degraded")
                .increment(1);
            metrics::gauge!("keel_limit_fallback_active").set(1.0);
        }
    }

    /// The failure policy: any `deny` refuses; else `local` limits are checked in memory; else
    /// everything is admitted.
    fn fallback(&self, limits: &[(&Limit, &str, u64)], checks: &[Check]) -> CheckResult {
        if limits
            .iter()
            .any(|(l, _, _)| l.on_redis_error == FailurePolicy::Deny)
        {
            let decisions: Vec<Decision> = limits
                .iter()
                .map(|(l, _, _)| Decision {
                    allowed: false,
                    limit: l.spec.capacity(),
                    remaining: 0,
                    reset_after_us: 0,
                    retry_after_us: self.inner.options.probe_interval.as_micros() as u64,
                })
                .collect();
            return CheckResult::from_outcome(
                Outcome {
                    allowed: false,
                    decisions,
                },
                Source::Fallback,
            );
        }
        let local: Vec<Check> = limits
            .iter()
            .zip(checks)
            .filter(|((l, _, _), _)| l.on_redis_error == FailurePolicy::Local)
            .map(|((l, _, cost), check)| Check {
                key: check.key.clone(),
                spec: l.local_spec(),
                cost: *cost,
            })
            .collect();
        if local.is_empty() {
            let decisions = limits
                .iter()
                .map(|(l, _, _)| Decision {
                    allowed: true,
                    limit: l.spec.capacity(),
                    remaining: l.spec.capacity(),
                    reset_after_us: 0,
                    retry_after_us: 0,
                })
                .collect();
            return CheckResult::from_outcome(Outcome::from_decisions(decisions), Source::Fallback);
        }
        let outcome = self
            .inner
            .insurance
            .check_now(&CheckRequest { checks: local });
        CheckResult::from_outcome(outcome, Source::Fallback)
    }
}

/// Denied key -> (denied cost, denied until µs).
type DenyShard = HashMap<Box<str>, (u64, i64), foldhash::fast::FixedState>;

/// Keys denied moments ago, answered locally until their `retry_after`: a client hammering an
/// exhausted limit costs Redis nothing until it could succeed again.
struct DenyCache {
    shards: Box<[Mutex<DenyShard>]>,
    per_shard: usize,
    hasher: foldhash::fast::FixedState,
}

impl DenyCache {
    fn new(size: usize) -> Self {
        let shards = 64;
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: (size / shards).max(1),
            hasher: foldhash::fast::FixedState::with_seed(7),
        }
    }

    fn shard(
        &self,
        key: &str,
    ) -> &Mutex<HashMap<Box<str>, (u64, i64), foldhash::fast::FixedState>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Records that `cost` on `key` is refused until `until_us`.
    fn insert(&self, key: &str, cost: u64, until_us: i64) {
        let mut shard = self.shard(key).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            return;
        }
        shard.insert(key.into(), (cost, until_us));
    }

    /// A local denial when some check of `request` is known to be refused right now.
    fn lookup(&self, request: &CheckRequest, now: i64) -> Option<CheckResult> {
        let mut denied_until = None;
        for check in &request.checks {
            let mut shard = self.shard(&check.key).lock();
            match shard.get(check.key.as_str()).copied() {
                Some((_, until)) if until <= now => {
                    shard.remove(check.key.as_str());
                }
                Some((cost, until)) if check.cost >= cost && cost > 0 => {
                    denied_until = Some(denied_until.map_or(until, |u: i64| u.max(until)));
                }
                _ => {}
            }
        }
        let until = denied_until?;
        let wait = u64::try_from(until - now).unwrap_or(0);
        let decisions = request
            .checks
            .iter()
            .map(|c| Decision {
                allowed: false,
                limit: c.spec.capacity(),
                remaining: 0,
                reset_after_us: wait,
                retry_after_us: wait,
            })
            .collect();
        Some(CheckResult::from_outcome(
            Outcome {
                allowed: false,
                decisions,
            },
            Source::DenyCache,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;

    #[tokio::test(start_paused = true)]
    async fn paused_time_drives_the_memory_limiter() {
        let limiter = Limiter::memory_with_clock(Arc::new(TokioClock::new()));
        let limit = Limit::new(
            "t",
            LimitSpec::new(Algorithm::TokenBucket, 2, 1_000_000, Some(2)).expect("spec"),
        );
        assert!(limiter.check(&limit, "k", 2).await.expect("check").allowed);
        let denied = limiter.check(&limit, "k", 1).await.expect("check");
        assert!(!denied.allowed);
        assert_eq!(denied.decision.retry_after_us, 500_000);
        tokio::time::advance(Duration::from_micros(499_999)).await;
        assert!(!limiter.check(&limit, "k", 1).await.expect("check").allowed);
        tokio::time::advance(Duration::from_micros(1)).await;
        assert!(limiter.check(&limit, "k", 1).await.expect("check").allowed);
    }

    #[tokio::test]
    async fn costs_beyond_capacity_and_empty_checks_are_refused() {
        let limiter = Limiter::memory();
        let limit = Limit::new(
            "t",
            LimitSpec::new(Algorithm::Gcra, 5, 1_000_000, Some(5)).expect("spec"),
        );
        assert!(matches!(
            limiter.check(&limit, "k", 6).await,
            Err(LimitError::CostExceedsCapacity {
                cost: 6,
                capacity: 5
            })
        ));
        assert!(matches!(
            limiter.check_all(&[]).await,
            Err(LimitError::BadCheckCount { .. })
        ));
    }
}

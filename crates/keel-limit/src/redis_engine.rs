//! The Redis engine: every batch of requests is one EVALSHA of one script.

use std::hash::BuildHasher;
use std::sync::Arc;

use futures::future::BoxFuture;
use keel_redis::{cluster_slot, LuaScript, RedisError, RedisHandle};

use crate::algorithm::{Algorithm, Decision, LimitSpec};
use crate::engine::{Check, CheckRequest, LimitEngine, LimitError, Outcome};

const PRELUDE: &str = include_str!("../lua/prelude.lua");
const DRIVER: &str = include_str!("../lua/check.lua");
const GCRA: &str = include_str!("../lua/gcra.lua");
const TOKEN_BUCKET: &str = include_str!("../lua/token_bucket.lua");
const SLIDING_LOG: &str = include_str!("../lua/sliding_log.lua");
const SLIDING_COUNTER: &str = include_str!("../lua/sliding_counter.lua");
const FIXED_WINDOW: &str = include_str!("../lua/fixed_window.lua");

/// Most checks one script call carries (the script refuses more).
pub const MAX_CHECKS_PER_CALL: usize = 512;

/// The limiter's scripts: one per algorithm, and one carrying all five for mixed batches.
/// Each is the shared prelude, the algorithm file(s) and the driver (`check.lua`).
#[derive(Clone, Debug)]
pub struct Scripts {
    per_algorithm: [LuaScript; 5],
    mixed: LuaScript,
}

impl Scripts {
    /// Assembles the scripts from the `.lua` files compiled into the binary.
    pub fn new() -> Self {
        let assemble = |bodies: &[&str]| {
            let mut source = String::from(PRELUDE);
            for body in bodies {
                source.push('\n');
                source.push_str(body);
            }
            source.push('\n');
            source.push_str(DRIVER);
            source
        };
        Self {
            per_algorithm: [
                LuaScript::new("limit_gcra", assemble(&[GCRA])),
                LuaScript::new("limit_token_bucket", assemble(&[TOKEN_BUCKET])),
                LuaScript::new("limit_sliding_log", assemble(&[SLIDING_LOG])),
                LuaScript::new("limit_sliding_counter", assemble(&[SLIDING_COUNTER])),
                LuaScript::new("limit_fixed_window", assemble(&[FIXED_WINDOW])),
            ],
            mixed: LuaScript::new(
                "limit_mixed",
                assemble(&[
                    GCRA,
                    TOKEN_BUCKET,
                    SLIDING_LOG,
                    SLIDING_COUNTER,
                    FIXED_WINDOW,
                ]),
            ),
        }
    }

    /// The script for one algorithm.
    pub fn for_algorithm(&self, algorithm: Algorithm) -> &LuaScript {
        &self.per_algorithm[usize::from(algorithm.code() - 1)]
    }

    /// The script carrying every algorithm.
    pub fn mixed(&self) -> &LuaScript {
        &self.mixed
    }

    /// Every script, for loading at start-up.
    pub fn all(&self) -> impl Iterator<Item = &LuaScript> {
        self.per_algorithm
            .iter()
            .chain(std::iter::once(&self.mixed))
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// Options of the Redis engine.
#[derive(Clone, Debug, Default)]
pub struct RedisEngineOptions {
    /// Split batches by Redis Cluster slot (needed on a cluster; harmless elsewhere).
    pub cluster: bool,
}

/// Limiter state in Redis: each call of [`LimitEngine::check_batch`] is one EVALSHA per
/// (slot group, at most [`MAX_CHECKS_PER_CALL`] checks).
#[derive(Clone)]
pub struct RedisEngine {
    redis: RedisHandle,
    scripts: Arc<Scripts>,
    options: RedisEngineOptions,
}

/// One script call's answer: Redis's clock, and one decision per check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptReply {
    /// Redis `TIME` in microseconds when the script ran.
    pub now_us: i64,
    /// Decisions in check order.
    pub decisions: Vec<Decision>,
}

impl RedisEngine {
    /// An engine on `redis`.
    pub fn new(redis: RedisHandle, options: RedisEngineOptions) -> Self {
        Self {
            redis,
            scripts: Arc::new(Scripts::new()),
            options,
        }
    }

    /// Loads every script (once, at start-up); failures are logged, the first call reloads.
    pub async fn load_scripts(&self) {
        let mut conn = self.redis.connection();
        for script in self.scripts.all() {
            if let Err(error) = self.redis.with_timeout(script.load(&mut conn)).await {
                tracing::warn!(script = script.name(), %error, "could not load script yet");
            }
        }
    }

    /// The Redis handle.
    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    /// Runs one script call for `requests` (which must fit in one call) and returns Redis's
    /// reply as it is: the test of Lua/Rust agreement reads `now_us` from it.
    pub async fn call_script(&self, requests: &[CheckRequest]) -> Result<ScriptReply, LimitError> {
        let total: usize = requests.iter().map(|r| r.checks.len()).sum();
        if total == 0 || total > MAX_CHECKS_PER_CALL {
            return Err(LimitError::BadCheckCount {
                got: total,
                max: MAX_CHECKS_PER_CALL,
            });
        }
        let first = requests[0].checks[0].spec.algorithm;
        let same = requests
            .iter()
            .flat_map(|r| &r.checks)
            .all(|c| c.spec.algorithm == first);
        let script = if same {
            self.scripts.for_algorithm(first)
        } else {
            self.scripts.mixed()
        };
        let (keys, args, specs) = encode_args(requests, total);
        let mut conn = self.redis.connection();
        let started = std::time::Instant::now();
        let reply: Vec<i64> = self
            .redis
            .with_timeout(script.invoke(&mut conn, &keys, &args))
            .await?;
        metrics::histogram!("keel_limit_redis_call_seconds")
            .record(started.elapsed().as_secs_f64());
        parse_reply(&reply, &specs)
    }
}

/// `check.lua`'s arguments: the keys, then `ARGV`. Also returns each check's spec.
///
/// When every request is one check and all share one spec and one cost (a limiter's common
/// case), the uniform form: `0, algorithm, limit, period_us, burst, cost`, then the 1-based
/// positions of the checks whose key is checked again later in the call (the script keeps that
/// commit in Lua and writes the key once). No per-check arguments, so Redis parses and Lua reads
/// one string per check (its key) instead of three.
///
/// Otherwise the general form: the distinct specs once (`count, then algorithm, limit,
/// period_us, burst` each) and per check its spec's 1-based index (negative when more checks of
/// the same request follow) and its cost (`-(cost + 1)` when the same key is checked again later
/// in the call).
pub fn encode_args(
    requests: &[CheckRequest],
    total: usize,
) -> (Vec<&str>, Vec<i64>, Vec<LimitSpec>) {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // Below i64::MAX, so that -(cost + 1) fits.
    let cost_arg = |cost: u64| {
        i64::try_from(cost)
            .unwrap_or(i64::MAX - 1)
            .min(i64::MAX - 1)
    };
    let mut keys: Vec<&str> = Vec::with_capacity(total);
    let mut per_check: Vec<LimitSpec> = Vec::with_capacity(total);
    if let Some(first) = uniform_check(requests) {
        for request in requests {
            keys.push(&request.checks[0].key);
            per_check.push(first.spec);
        }
        let mut args: Vec<i64> = Vec::with_capacity(6 + 8);
        args.extend([
            0,
            i64::from(first.spec.algorithm.code()),
            int(first.spec.limit),
            int(first.spec.period_us),
            int(first.spec.burst),
            cost_arg(first.cost),
        ]);
        for_each_repeated_key(&keys, |i| {
            args.push(i64::try_from(i + 1).unwrap_or(i64::MAX))
        });
        args[6..].reverse();
        return (keys, args, per_check);
    }
    let mut distinct: Vec<LimitSpec> = Vec::new();
    let mut checks: Vec<i64> = Vec::with_capacity(total * 2);
    for request in requests {
        let last = request.checks.len().saturating_sub(1);
        for (i, check) in request.checks.iter().enumerate() {
            keys.push(&check.key);
            per_check.push(check.spec);
            let index = match distinct.iter().position(|s| *s == check.spec) {
                Some(index) => index + 1,
                None => {
                    distinct.push(check.spec);
                    distinct.len()
                }
            };
            let index = i64::try_from(index).unwrap_or(i64::MAX);
            checks.push(if i < last { -index } else { index });
            checks.push(cost_arg(check.cost));
        }
    }
    for_each_repeated_key(&keys, |i| {
        let cost = &mut checks[2 * i + 1];
        *cost = -(*cost + 1);
    });
    let mut args: Vec<i64> = Vec::with_capacity(1 + distinct.len() * 4 + checks.len());
    args.push(i64::try_from(distinct.len()).unwrap_or(i64::MAX));
    for spec in &distinct {
        args.extend([
            i64::from(spec.algorithm.code()),
            int(spec.limit),
            int(spec.period_us),
            int(spec.burst),
        ]);
    }
    args.extend(checks);
    (keys, args, per_check)
}

/// The check every request carries, when each request is one check and all share one spec and
/// one cost.
fn uniform_check(requests: &[CheckRequest]) -> Option<&Check> {
    let first = requests.first()?.checks.first()?;
    requests
        .iter()
        .all(|r| {
            r.checks.len() == 1 && r.checks[0].spec == first.spec && r.checks[0].cost == first.cost
        })
        .then_some(first)
}

/// Calls `mark(i)` for every position `i` whose key appears again later in `keys` (visited from
/// the end, so positions come in descending order).
fn for_each_repeated_key(keys: &[&str], mut mark: impl FnMut(usize)) {
    if keys.len() < 2 {
        return;
    }
    let hasher = foldhash::fast::FixedState::with_seed(0x6b65656c);
    let mut seen: hashbrown::HashTable<&str> = hashbrown::HashTable::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate().rev() {
        let hash = hasher.hash_one(key);
        if seen.find(hash, |k| k == key).is_some() {
            mark(i);
        } else {
            seen.insert_unique(hash, key, |k| hasher.hash_one(k));
        }
    }
}

fn parse_reply(reply: &[i64], specs: &[LimitSpec]) -> Result<ScriptReply, LimitError> {
    if reply.len() != 1 + specs.len() * 3 {
        return Err(LimitError::Redis(RedisError::UnexpectedReply(format!(
            "expected {} integers, got {}",
            1 + specs.len() * 3,
            reply.len()
        ))));
    }
    let to_u64 = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    // Per check: remaining, reset_after_us, retry_after_us; a check admits exactly when its
    // retry_after is 0 (a denial always has a wait, or -1 for never).
    let decisions = reply[1..]
        .chunks_exact(3)
        .zip(specs)
        .map(|(c, spec)| Decision {
            allowed: c[2] == 0,
            limit: spec.capacity(),
            remaining: to_u64(c[0]),
            reset_after_us: to_u64(c[1]),
            retry_after_us: to_u64(c[2]),
        })
        .collect();
    Ok(ScriptReply {
        now_us: reply[0],
        decisions,
    })
}

/// Splits requests into script calls: by Cluster slot when asked, then by size.
fn plan_calls(requests: &[CheckRequest], cluster: bool) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        let slot = if cluster {
            request
                .checks
                .first()
                .map(|c| cluster_slot(c.key.as_bytes()))
                .unwrap_or(0)
        } else {
            0
        };
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(index),
            None => groups.push((slot, vec![index])),
        }
    }
    let mut calls = Vec::new();
    for (_, members) in groups {
        let mut call = Vec::new();
        let mut size = 0;
        for index in members {
            let n = requests[index].checks.len();
            if size + n > MAX_CHECKS_PER_CALL && !call.is_empty() {
                calls.push(std::mem::take(&mut call));
                size = 0;
            }
            call.push(index);
            size += n;
        }
        if !call.is_empty() {
            calls.push(call);
        }
    }
    calls
}

impl LimitEngine for RedisEngine {
    fn check_batch<'a>(
        &'a self,
        requests: Vec<CheckRequest>,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, LimitError>> {
        Box::pin(async move {
            for request in &requests {
                if request.checks.is_empty() || request.checks.len() > MAX_CHECKS_PER_CALL {
                    return Err(LimitError::BadCheckCount {
                        got: request.checks.len(),
                        max: MAX_CHECKS_PER_CALL,
                    });
                }
            }
            let total: usize = requests.iter().map(|r| r.checks.len()).sum();
            if !self.options.cluster && total <= MAX_CHECKS_PER_CALL {
                // The common case: one script call, no planning.
                let reply = self.call_script(&requests).await?;
                let mut decisions = reply.decisions.into_iter();
                return Ok(requests
                    .iter()
                    .map(|r| {
                        Outcome::from_decisions(decisions.by_ref().take(r.checks.len()).collect())
                    })
                    .collect());
            }
            let calls = plan_calls(&requests, self.options.cluster);
            let mut outcomes: Vec<Option<Outcome>> = vec![None; requests.len()];
            let replies = futures::future::join_all(calls.iter().map(|call| {
                let batch: Vec<CheckRequest> = call.iter().map(|&i| requests[i].clone()).collect();
                async move { self.call_script(&batch).await }
            }))
            .await;
            for (call, reply) in calls.iter().zip(replies) {
                let mut decisions = reply?.decisions.into_iter();
                for &index in call {
                    let n = requests[index].checks.len();
                    outcomes[index] = Some(Outcome::from_decisions(
                        decisions.by_ref().take(n).collect(),
                    ));
                }
            }
            outcomes
                .into_iter()
                .map(|o| {
                    o.ok_or_else(|| {
                        LimitError::Redis(RedisError::UnexpectedReply("missing decision".into()))
                    })
                })
                .collect()
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::LimitSpec;
    use crate::engine::Check;

    fn request(key: &str, checks: usize) -> CheckRequest {
        let spec = LimitSpec::new(Algorithm::Gcra, 10, 1_000_000, None).expect("spec");
        CheckRequest {
            checks: (0..checks)
                .map(|i| Check {
                    key: format!("{key}{i}"),
                    spec,
                    cost: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn calls_are_bounded_and_never_split_a_request() {
        let requests: Vec<_> = (0..300).map(|i| request(&format!("k{i}"), 2)).collect();
        let calls = plan_calls(&requests, false);
        assert_eq!(calls.len(), 2);
        for call in &calls {
            let checks: usize = call.iter().map(|&i| requests[i].checks.len()).sum();
            assert!(checks <= MAX_CHECKS_PER_CALL);
        }
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 300);
    }

    #[test]
    fn cluster_mode_groups_by_slot() {
        let requests = vec![
            request("keel:{rl:a}:x", 1),
            request("keel:{rl:b}:x", 1),
            request("keel:{rl:a}:y", 1),
        ];
        let calls = plan_calls(&requests, true);
        assert_eq!(calls.len(), 2);
        assert!(calls.contains(&vec![0, 2]));
    }

    #[test]
    fn scripts_carry_their_algorithms() {
        let scripts = Scripts::new();
        assert!(scripts
            .for_algorithm(Algorithm::Gcra)
            .source()
            .contains("A[1]"));
        assert!(!scripts
            .for_algorithm(Algorithm::Gcra)
            .source()
            .contains("A[2]"));
        for code in 1..=5 {
            assert!(scripts.mixed().source().contains(&format!("A[{code}]")));
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let spec = LimitSpec::new(Algorithm::Gcra, 10, 1_000_000, None).expect("spec");
        assert!(parse_reply(&[1, 2, 3], &[spec]).is_err());
        assert!(parse_reply(&[7, 1, 9, 100, 0], &[spec]).is_err());
        let ok = parse_reply(&[7, 9, 100, 0], &[spec]).expect("reply");
        assert_eq!(ok.now_us, 7);
        assert!(ok.decisions[0].allowed);
        assert_eq!(ok.decisions[0].limit, 10);
        assert_eq!(ok.decisions[0].remaining, 9);
        assert_eq!(ok.decisions[0].reset_after_us, 100);
        let denied = parse_reply(&[7, 0, 100, -1], &[spec]).expect("reply");
        assert!(!denied.decisions[0].allowed);
        assert_eq!(denied.decisions[0].retry_after_us, u64::MAX);
        let wait = parse_reply(&[7, 0, 100, 40], &[spec]).expect("reply");
        assert!(!wait.decisions[0].allowed);
        assert_eq!(wait.decisions[0].retry_after_us, 40);
    }

    #[test]
    fn single_checks_of_one_spec_and_cost_use_the_uniform_form() {
        let a = LimitSpec::new(Algorithm::Gcra, 10, 1_000_000, Some(4)).expect("spec");
        let single = |key: &str| {
            CheckRequest::single(Check {
                key: key.into(),
                spec: a,
                cost: 2,
            })
        };
        let requests = vec![
            single("hot"),
            single("cold"),
            single("hot"),
            single("other"),
            single("hot"),
            single("cold"),
        ];
        let (keys, args, specs) = encode_args(&requests, 6);
        assert_eq!(keys, ["hot", "cold", "hot", "other", "hot", "cold"]);
        assert_eq!(specs, [a; 6]);
        // 0 = uniform, the spec, the cost, then the positions whose key comes again, ascending.
        assert_eq!(args, [0, 1, 10, 1_000_000, 4, 2, 1, 2, 3]);
        let (_, args, _) = encode_args(&requests[1..2], 1);
        assert_eq!(args, [0, 1, 10, 1_000_000, 4, 2]);
    }

    #[test]
    fn arguments_carry_each_spec_once_and_mark_groups() {
        let a = LimitSpec::new(Algorithm::Gcra, 10, 1_000_000, None).expect("spec");
        let b = LimitSpec::new(Algorithm::FixedWindow, 5, 60_000_000, None).expect("spec");
        let check = |key: &str, spec, cost| Check {
            key: key.into(),
            spec,
            cost,
        };
        let requests = vec![
            CheckRequest::single(check("k1", a, 1)),
            CheckRequest {
                checks: vec![check("k2", b, 2), check("k3", a, 3)],
            },
        ];
        let (keys, args, specs) = encode_args(&requests, 3);
        assert_eq!(keys, ["k1", "k2", "k3"]);
        assert_eq!(specs, [a, b, a]);
        assert_eq!(
            args,
            [2, 1, 10, 1_000_000, 10, 5, 5, 60_000_000, 5, 1, 1, -2, 2, 1, 3]
        );
    }

    #[test]
    fn a_key_checked_again_later_in_the_call_is_marked() {
        let a = LimitSpec::new(Algorithm::Gcra, 10, 1_000_000, None).expect("spec");
        let single = |key: &str, cost| {
            CheckRequest::single(Check {
                key: key.into(),
                spec: a,
                cost,
            })
        };
        let requests = vec![
            single("hot", 1),
            single("cold", 0),
            single("hot", 2),
            single("hot", 3),
            single("other", 4),
        ];
        let (_, args, _) = encode_args(&requests, 5);
        // Every "hot" but the last is marked -(cost + 1); keys seen once keep their cost.
        assert_eq!(&args[5..], [1, -2, 1, 0, 1, -3, 1, 3, 1, 4]);
    }
}

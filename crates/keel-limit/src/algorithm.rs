//! The five algorithms as pure functions of (spec, state, now, cost).
//!
//! Every quantity is an integer count of microseconds or requests, so the Lua twin of each
//! function (in `lua/`) computes exactly the same numbers with Lua's doubles: all values stay far
//! below 2^52, divisions are floors of non-negative numbers, and nothing is rounded.
//! `tests/lua_agreement.rs` drives both with the same sequences and asserts identical decisions.

use serde::{Deserialize, Serialize};

/// Which algorithm a limit uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Generic cell rate algorithm (redis-cell, `limit_req`): smooth rate with a burst.
    Gcra,
    /// Token bucket: `burst` tokens, refilled at `limit` per `period`.
    TokenBucket,
    /// Exact sliding window: one timestamp per admitted unit of cost.
    SlidingLog,
    /// Cloudflare's approximate sliding window: two counters, the previous one weighted.
    SlidingCounter,
    /// Fixed window: one counter per `period`, aligned to the epoch.
    FixedWindow,
}

impl Algorithm {
    /// Every algorithm, for tests and benchmarks.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::FixedWindow,
    ];

    /// The code the Lua scripts dispatch on.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Gcra => 1,
            Algorithm::TokenBucket => 2,
            Algorithm::SlidingLog => 3,
            Algorithm::SlidingCounter => 4,
            Algorithm::FixedWindow => 5,
        }
    }

    /// The config-file name (`gcra`, `token_bucket`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingCounter => "sliding_counter",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// True for the algorithms whose capacity is `burst` rather than `limit`.
    pub fn uses_burst(self) -> bool {
        matches!(self, Algorithm::Gcra | Algorithm::TokenBucket)
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown algorithm {s:?} (expected gcra, token_bucket, sliding_log, sliding_counter or fixed_window)")
            })
    }
}

/// Largest value any intermediate may reach: well inside a double's exact integers (2^53).
const EXACT_MAX: u128 = 1 << 50;
/// Sliding logs store one entry per admitted unit, so their limit is capped.
pub const SLIDING_LOG_MAX_LIMIT: u64 = 10_000;

/// A validated limit: `limit` requests per `period_us`, with a `burst` capacity.
///
/// Built by [`LimitSpec::new`], which also derives, once, the numbers every GCRA decision needs
/// (the emission interval, the tolerance, and a divider by the interval), so a decision does no
/// integer division.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests (units of cost) per period.
    pub limit: u64,
    /// The period in microseconds.
    pub period_us: u64,
    /// Capacity for `gcra` and `token_bucket` (requests admitted at once from idle).
    pub burst: u64,
    /// GCRA: emission interval, `max(period / limit, 1)` µs.
    interval: i64,
    /// GCRA: tolerance, `interval * burst` µs.
    tolerance: i64,
    /// Divides by `interval` without a division instruction.
    per_interval: Divider,
}

/// Exact floor division of integers below 2^52 by a fixed divisor, as one multiplication and a
/// shift (Granlund-Montgomery: with `k = 52 + ceil(log2 d)` and `m = ceil(2^k / d)`,
/// `m * d - 2^k < d <= 2^(k - 52)`, so `floor(n * m / 2^k) = floor(n / d)` for `n < 2^52`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Divider {
    divisor: u64,
    multiplier: u64,
    shift: u32,
}

/// Dividends below this take the multiply-and-shift path.
const DIVIDER_RANGE: u64 = 1 << 52;

impl Divider {
    /// A divider by `divisor` (at least 1, below 2^50).
    const fn new(divisor: u64) -> Self {
        let divisor = if divisor == 0 { 1 } else { divisor };
        // ceil(log2(divisor))
        let log = 64 - (divisor - 1).leading_zeros();
        let shift = 52 + log;
        let multiplier = (1u128 << shift).div_ceil(divisor as u128) as u64;
        Self {
            divisor,
            multiplier,
            shift,
        }
    }

    /// `floor(n / divisor)`.
    #[inline]
    fn divide(self, n: u64) -> u64 {
        if n < DIVIDER_RANGE {
            ((u128::from(n) * u128::from(self.multiplier)) >> self.shift) as u64
        } else {
            n / self.divisor
        }
    }
}

/// Why a spec was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `limit` is zero.
    #[error("limit must be at least 1")]
    ZeroLimit,
    /// `period` is shorter than a millisecond.
    #[error("period must be at least 1ms")]
    PeriodTooShort,
    /// `burst` is zero.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// Numbers so large that Lua's doubles would lose precision.
    #[error("limit, burst and period are too large together (limit*period and burst*period must stay below 2^50)")]
    TooLarge,
    /// A sliding log keeps one entry per unit; it is capped.
    #[error(
        "sliding_log keeps one entry per request: its limit is capped at {SLIDING_LOG_MAX_LIMIT}"
    )]
    SlidingLogTooLarge,
}

impl LimitSpec {
    /// A validated spec. `burst` defaults to `limit`.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        period_us: u64,
        burst: Option<u64>,
    ) -> Result<Self, SpecError> {
        let burst = burst.unwrap_or(limit);
        if limit == 0 {
            return Err(SpecError::ZeroLimit);
        }
        if period_us < 1_000 {
            return Err(SpecError::PeriodTooShort);
        }
        if burst == 0 {
            return Err(SpecError::ZeroBurst);
        }
        let p = u128::from(period_us);
        if u128::from(limit) * p >= EXACT_MAX
            || u128::from(burst) * p >= EXACT_MAX
            || p * 4 >= EXACT_MAX
        {
            return Err(SpecError::TooLarge);
        }
        if algorithm == Algorithm::SlidingLog && limit > SLIDING_LOG_MAX_LIMIT {
            return Err(SpecError::SlidingLogTooLarge);
        }
        Ok(Self::derive(algorithm, limit, period_us, burst))
    }

    /// A spec of numbers already validated (limit >= 1, everything below 2^50).
    fn derive(algorithm: Algorithm, limit: u64, period_us: u64, burst: u64) -> Self {
        let interval = (period_us / limit.max(1)).max(1);
        let tolerance = interval.saturating_mul(burst);
        Self {
            algorithm,
            limit,
            period_us,
            burst,
            interval: i64::try_from(interval).unwrap_or(i64::MAX / 4),
            tolerance: i64::try_from(tolerance).unwrap_or(i64::MAX / 4),
            per_interval: Divider::new(interval),
        }
    }

    /// The most cost one request can ever be admitted with.
    pub fn capacity(&self) -> u64 {
        if self.algorithm.uses_burst() {
            self.burst
        } else {
            self.limit
        }
    }
}

impl Default for LimitSpec {
    /// GCRA, 100 requests per second, burst 100.
    fn default() -> Self {
        Self::derive(Algorithm::Gcra, 100, 1_000_000, 100)
    }
}

/// The answer to one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Admitted (and counted) or not.
    pub allowed: bool,
    /// The capacity: most requests admitted at once.
    pub limit: u64,
    /// Requests of cost 1 that would be admitted right now, after this one.
    pub remaining: u64,
    /// Microseconds until the limit is fully available again (or the window resets).
    pub reset_after_us: u64,
    /// Microseconds until a retry of the same cost can succeed; 0 when allowed.
    pub retry_after_us: u64,
}

/// Per-key state of one algorithm. Absent state means "idle": full capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// GCRA: theoretical arrival time.
    Gcra { tat: i64 },
    /// Token bucket: tokens scaled by `period_us` (exact integers), and when last refilled.
    TokenBucket { scaled_tokens: i64, last: i64 },
    /// Sliding log: timestamps of admitted units, oldest first.
    SlidingLog {
        entries: std::collections::VecDeque<i64>,
    },
    /// Sliding counter: window index, previous and current counts.
    SlidingCounter {
        window: i64,
        previous: i64,
        current: i64,
    },
    /// Fixed window: window index and count.
    FixedWindow { window: i64, count: i64 },
}

/// The outcome of evaluating one check: the decision, and the state to store if it is committed
/// (`None` when nothing changes), with how long that state matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision.
    pub decision: Decision,
    /// New state to store when the request is committed.
    pub next: Option<State>,
    /// Microseconds after which the stored state is equivalent to no state (key may expire).
    pub ttl_us: i64,
}

/// [`evaluate`] and commit in one step, updating `state` in place: what an engine does for a
/// single check. Returns the decision and, when admitted, how long the new state matters.
/// Equivalent to `evaluate` (a property test checks it); the sliding log is trimmed and
/// appended in place instead of copied.
#[inline]
pub fn apply(spec: &LimitSpec, state: &mut Option<State>, now: i64, cost: u64) -> (Decision, i64) {
    if spec.algorithm == Algorithm::Gcra {
        let cost = i64::try_from(cost)
            .unwrap_or(i64::MAX / 4)
            .min(i64::MAX / 4);
        let stored = match state {
            Some(State::Gcra { tat }) => Some(*tat),
            _ => None,
        };
        let (decision, new_tat) = gcra_decide(spec, stored, now, cost);
        if !decision.allowed {
            return (decision, 0);
        }
        match state {
            Some(State::Gcra { tat }) => *tat = new_tat,
            _ => *state = Some(State::Gcra { tat: new_tat }),
        }
        return (decision, (new_tat - now).max(1));
    }
    if let (Algorithm::SlidingLog, Some(State::SlidingLog { entries })) =
        (spec.algorithm, state.as_mut())
    {
        let period = i64::try_from(spec.period_us).unwrap_or(i64::MAX);
        // Dropping expired entries changes no decision, so it is done whatever the outcome.
        while entries.front().is_some_and(|&t| t <= now - period) {
            entries.pop_front();
        }
        let count = entries.len() as u64;
        let limit = spec.limit;
        let newest = entries.back().copied().unwrap_or(now);
        if count + cost > limit {
            let retry = if cost > limit {
                u64::MAX
            } else {
                let must_expire = usize::try_from(count + cost - limit).unwrap_or(1).max(1);
                to_u64(entries.get(must_expire - 1).copied().unwrap_or(now) + period - now)
            };
            let decision = Decision {
                allowed: false,
                limit,
                remaining: limit - count,
                reset_after_us: to_u64(newest + period - now),
                retry_after_us: retry,
            };
            return (decision, 0);
        }
        for _ in 0..cost {
            entries.push_back(now);
        }
        let newest = entries.back().copied().unwrap_or(now);
        let decision = Decision {
            allowed: true,
            limit,
            remaining: limit - count - cost,
            reset_after_us: to_u64(newest + period - now),
            retry_after_us: 0,
        };
        return (decision, period);
    }
    let evaluation = evaluate(spec, state.as_ref(), now, cost);
    if evaluation.decision.allowed {
        if let Some(next) = evaluation.next {
            *state = Some(next);
        }
    }
    (evaluation.decision, evaluation.ttl_us)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    // a >= 0, b > 0
    (a + b - 1) / b
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Evaluates one check without mutating anything: the heart of every engine.
///
/// `state` must be the state stored for this key under this spec (a state of another algorithm is
/// treated as absent). Cost 0 peeks: it is always allowed and changes nothing.
pub fn evaluate(spec: &LimitSpec, state: Option<&State>, now: i64, cost: u64) -> Evaluation {
    let cost = i64::try_from(cost)
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4);
    let limit = i64::try_from(spec.limit).unwrap_or(i64::MAX);
    let period = i64::try_from(spec.period_us).unwrap_or(i64::MAX);
    let burst = i64::try_from(spec.burst).unwrap_or(i64::MAX);
    match spec.algorithm {
        Algorithm::Gcra => gcra(spec, state, now, cost),
        Algorithm::TokenBucket => token_bucket(limit, period, burst, state, now, cost),
        Algorithm::SlidingLog => sliding_log(limit, period, state, now, cost),
        Algorithm::SlidingCounter => sliding_counter(limit, period, state, now, cost),
        Algorithm::FixedWindow => fixed_window(limit, period, state, now, cost),
    }
}

fn gcra(spec: &LimitSpec, state: Option<&State>, now: i64, cost: i64) -> Evaluation {
    let stored = match state {
        Some(State::Gcra { tat }) => Some(*tat),
        _ => None,
    };
    let (decision, new_tat) = gcra_decide(spec, stored, now, cost);
    if !decision.allowed {
        return Evaluation {
            decision,
            next: None,
            ttl_us: 0,
        };
    }
    Evaluation {
        decision,
        next: Some(State::Gcra { tat: new_tat }),
        ttl_us: (new_tat - now).max(1),
    }
}

/// GCRA's decision from the stored TAT (`None`: idle) and the new TAT to store when admitted.
/// No division: the interval and tolerance come precomputed with the spec.
#[inline]
fn gcra_decide(spec: &LimitSpec, stored: Option<i64>, now: i64, cost: i64) -> (Decision, i64) {
    let (interval, tolerance) = (spec.interval, spec.tolerance);
    let burst = i64::try_from(spec.burst).unwrap_or(i64::MAX / 4);
    let tat = stored.unwrap_or(now).max(now);
    let new_tat = tat + cost.min(burst + 1) * interval;
    let allow_at = new_tat - tolerance;
    if allow_at > now {
        let remaining = spec.per_interval.divide(to_u64(now + tolerance - tat));
        let retry = if cost > burst {
            u64::MAX
        } else {
            to_u64(allow_at - now)
        };
        let decision = Decision {
            allowed: false,
            limit: spec.burst,
            remaining,
            reset_after_us: to_u64(tat - now),
            retry_after_us: retry,
        };
        return (decision, tat);
    }
    let decision = Decision {
        allowed: true,
        limit: spec.burst,
        remaining: spec.per_interval.divide(to_u64(now + tolerance - new_tat)),
        reset_after_us: to_u64(new_tat - now),
        retry_after_us: 0,
    };
    (decision, new_tat)
}

fn token_bucket(
    limit: i64,
    period: i64,
    burst: i64,
    state: Option<&State>,
    now: i64,
    cost: i64,
) -> Evaluation {
    let capacity = burst * period;
    let (mut tokens, last) = match state {
        Some(State::TokenBucket {
            scaled_tokens,
            last,
        }) => (*scaled_tokens, *last),
        _ => (capacity, now),
    };
    let elapsed = (now - last).max(0).min(ceil_div(capacity, limit));
    tokens = (tokens + elapsed * limit).min(capacity);
    let need = cost.min(burst + 1) * period;
    if tokens < need {
        return Evaluation {
            decision: Decision {
                allowed: false,
                limit: to_u64(burst),
                remaining: to_u64(tokens / period),
                reset_after_us: to_u64(ceil_div(capacity - tokens, limit)),
                retry_after_us: if cost > burst {
                    u64::MAX
                } else {
                    to_u64(ceil_div(need - tokens, limit))
                },
            },
            next: None,
            ttl_us: 0,
        };
    }
    tokens -= need;
    let reset = ceil_div(capacity - tokens, limit);
    Evaluation {
        decision: Decision {
            allowed: true,
            limit: to_u64(burst),
            remaining: to_u64(tokens / period),
            reset_after_us: to_u64(reset),
            retry_after_us: 0,
        },
        next: Some(State::TokenBucket {
            scaled_tokens: tokens,
            last: now,
        }),
        ttl_us: reset.max(1),
    }
}

fn sliding_log(limit: i64, period: i64, state: Option<&State>, now: i64, cost: i64) -> Evaluation {
    let mut entries: std::collections::VecDeque<i64> = match state {
        Some(State::SlidingLog { entries }) => entries.clone(),
        _ => Default::default(),
    };
    while entries.front().is_some_and(|&t| t <= now - period) {
        entries.pop_front();
    }
    let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    if count + cost > limit {
        let retry = if cost > limit {
            u64::MAX
        } else {
            let must_expire = usize::try_from(count + cost - limit).unwrap_or(1).max(1);
            let oldest_needed = entries.get(must_expire - 1).copied().unwrap_or(now);
            to_u64(oldest_needed + period - now)
        };
        let newest = entries.back().copied().unwrap_or(now);
        return Evaluation {
            decision: Decision {
                allowed: false,
                limit: to_u64(limit),
                remaining: to_u64(limit - count),
                reset_after_us: to_u64(newest + period - now),
                retry_after_us: retry,
            },
            next: None,
            ttl_us: 0,
        };
    }
    for _ in 0..cost {
        entries.push_back(now);
    }
    let newest = entries.back().copied().unwrap_or(now);
    Evaluation {
        decision: Decision {
            allowed: true,
            limit: to_u64(limit),
            remaining: to_u64(limit - count - cost),
            reset_after_us: to_u64(newest + period - now),
            retry_after_us: 0,
        },
        next: Some(State::SlidingLog { entries }),
        ttl_us: period,
    }
}

fn sliding_counter(
    limit: i64,
    period: i64,
    state: Option<&State>,
    now: i64,
    cost: i64,
) -> Evaluation {
    let window = now / period;
    let elapsed = now - window * period;
    let (previous, current) = match state {
        Some(State::SlidingCounter {
            window: w,
            previous,
            current,
        }) if *w == window => (*previous, *current),
        Some(State::SlidingCounter {
            window: w, current, ..
        }) if *w == window - 1 => (*current, 0),
        _ => (0, 0),
    };
    let weighted = previous * (period - elapsed) + current * period;
    let reset = period - elapsed;
    if weighted + cost * period > limit * period {
        let retry = if cost > limit {
            u64::MAX
        } else if current + cost <= limit {
            let room = (limit - current - cost) * period;
            to_u64((period - elapsed - room / previous.max(1)).max(1))
        } else {
            let room = (limit - cost) * period;
            to_u64(period - elapsed + (period - room / current.max(1)).max(0))
        };
        return Evaluation {
            decision: Decision {
                allowed: false,
                limit: to_u64(limit),
                remaining: to_u64((limit * period - weighted).max(0) / period),
                reset_after_us: to_u64(reset),
                retry_after_us: retry,
            },
            next: None,
            ttl_us: 0,
        };
    }
    let current = current + cost;
    let weighted = previous * (period - elapsed) + current * period;
    Evaluation {
        decision: Decision {
            allowed: true,
            limit: to_u64(limit),
            remaining: to_u64((limit * period - weighted).max(0) / period),
            reset_after_us: to_u64(reset),
            retry_after_us: 0,
        },
        next: Some(State::SlidingCounter {
            window,
            previous,
            current,
        }),
        ttl_us: reset + period,
    }
}

fn fixed_window(limit: i64, period: i64, state: Option<&State>, now: i64, cost: i64) -> Evaluation {
    let window = now / period;
    let count = match state {
        Some(State::FixedWindow { window: w, count }) if *w == window => *count,
        _ => 0,
    };
    let reset = (window + 1) * period - now;
    if count + cost > limit {
        return Evaluation {
            decision: Decision {
                allowed: false,
                limit: to_u64(limit),
                remaining: to_u64(limit - count),
                reset_after_us: to_u64(reset),
                retry_after_us: if cost > limit {
                    u64::MAX
                } else {
                    to_u64(reset)
                },
            },
            next: None,
            ttl_us: 0,
        };
    }
    Evaluation {
        decision: Decision {
            allowed: true,
            limit: to_u64(limit),
            remaining: to_u64(limit - count - cost),
            reset_after_us: to_u64(reset),
            retry_after_us: 0,
        },
        next: Some(State::FixedWindow {
            window,
            count: count + cost,
        }),
        ttl_us: reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    /// Runs `costs` at times `at`, threading state like an engine does; returns allowed flags.
    fn run(spec: &LimitSpec, steps: &[(i64, u64)]) -> Vec<Decision> {
        let mut state = None;
        steps
            .iter()
            .map(|&(at, cost)| {
                let e = evaluate(spec, state.as_ref(), at, cost);
                if e.decision.allowed {
                    if let Some(next) = e.next {
                        state = Some(next);
                    }
                }
                e.decision
            })
            .collect()
    }

    #[test]
    fn every_algorithm_admits_its_capacity_then_refuses() {
        let t0 = 1_700_000_000 * SECOND;
        for algorithm in Algorithm::ALL {
            let spec = LimitSpec::new(algorithm, 10, 10 * SECOND as u64, Some(10)).expect("spec");
            let steps: Vec<_> = (0..11).map(|i| (t0 + i, 1)).collect();
            let decisions = run(&spec, &steps);
            let admitted = decisions.iter().filter(|d| d.allowed).count();
            assert_eq!(admitted, 10, "{algorithm:?}");
            let last = decisions[10];
            assert!(!last.allowed);
            assert!(
                last.retry_after_us > 0 && last.retry_after_us <= 20 * SECOND as u64,
                "{algorithm:?} {last:?}"
            );
            assert_eq!(decisions[9].remaining, 0, "{algorithm:?}");
            assert_eq!(decisions[0].remaining, 9, "{algorithm:?}");
        }
    }

    #[test]
    fn retry_after_is_exact_for_gcra_and_token_bucket() {
        let t0 = 1_700_000_000 * SECOND;
        for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
            let spec = LimitSpec::new(algorithm, 1, SECOND as u64, Some(1)).expect("spec");
            let d = run(&spec, &[(t0, 1), (t0 + 1, 1)]);
            assert!(!d[1].allowed);
            let retry = d[1].retry_after_us as i64;
            let d = run(&spec, &[(t0, 1), (t0 + 1 + retry, 1)]);
            assert!(d[1].allowed, "{algorithm:?}: allowed after retry_after");
            let d = run(&spec, &[(t0, 1), (t0 + retry, 1)]);
            assert!(
                !d[1].allowed,
                "{algorithm:?}: refused just before retry_after"
            );
        }
    }

    #[test]
    fn windows_reset_and_sliding_counter_weights_the_previous_window() {
        let period = 10 * SECOND;
        let w0 = 170_000_000 * period;
        let spec = LimitSpec::new(Algorithm::FixedWindow, 2, period as u64, None).expect("spec");
        let d = run(&spec, &[(w0, 2), (w0 + 1, 1), (w0 + period, 2)]);
        assert_eq!(
            (d[0].allowed, d[1].allowed, d[2].allowed),
            (true, false, true)
        );
        assert_eq!(d[1].retry_after_us, (period - 1) as u64);

        let spec =
            LimitSpec::new(Algorithm::SlidingCounter, 10, period as u64, None).expect("spec");
        // 10 in the previous window; a quarter into the next one, 7.5 still count: 2 admitted.
        let d = run(
            &spec,
            &[
                (w0, 10),
                (w0 + period + period / 4, 2),
                (w0 + period + period / 4, 1),
            ],
        );
        assert!(d[1].allowed && !d[2].allowed, "{d:?}");
        let retry = d[2].retry_after_us as i64;
        let d2 = run(
            &spec,
            &[
                (w0, 10),
                (w0 + period + period / 4, 2),
                (w0 + period + period / 4 + retry, 1),
            ],
        );
        assert!(d2[2].allowed, "admitted at retry_after: {d2:?}");
    }

    #[test]
    fn sliding_log_frees_the_oldest_entries() {
        let t0 = 1_700_000_000 * SECOND;
        let spec = LimitSpec::new(Algorithm::SlidingLog, 3, SECOND as u64, None).expect("spec");
        let d = run(&spec, &[(t0, 1), (t0 + 100, 2), (t0 + 200, 1)]);
        assert!(!d[2].allowed);
        assert_eq!(d[2].retry_after_us, (SECOND - 200) as u64);
        let d = run(&spec, &[(t0, 1), (t0 + 100, 2), (t0 + SECOND, 1)]);
        assert!(d[2].allowed);
    }

    #[test]
    fn cost_above_capacity_is_never_admitted() {
        for algorithm in Algorithm::ALL {
            let spec = LimitSpec::new(algorithm, 5, SECOND as u64, Some(5)).expect("spec");
            let d = run(&spec, &[(SECOND * 1000, 6)]);
            assert!(
                !d[0].allowed && d[0].retry_after_us == u64::MAX,
                "{algorithm:?}"
            );
        }
    }

    proptest::proptest! {
        /// `apply` (in place) and `evaluate` + commit make the same decisions.
        #[test]
        fn apply_agrees_with_evaluate(
            algorithm in proptest::sample::select(Algorithm::ALL.to_vec()),
            limit in 1u64..6,
            burst in 1u64..6,
            steps in proptest::collection::vec((0i64..400_000, 0u64..8), 1..60),
        ) {
            let spec = LimitSpec::new(algorithm, limit, 1_000_000, Some(burst)).expect("spec");
            let mut now = 1_700_000_000 * SECOND;
            let mut reference = None;
            let mut in_place = None;
            for (pause, cost) in steps {
                now += pause;
                let e = evaluate(&spec, reference.as_ref(), now, cost);
                if e.decision.allowed {
                    if let Some(next) = e.next.clone() {
                        reference = Some(next);
                    }
                }
                let (decision, ttl) = apply(&spec, &mut in_place, now, cost);
                proptest::prop_assert_eq!(decision, e.decision);
                if decision.allowed {
                    proptest::prop_assert_eq!(ttl, e.ttl_us);
                }
            }
        }
    }

    #[test]
    fn the_divider_divides_exactly_at_the_edges() {
        let divisors = [
            1u64,
            2,
            3,
            7,
            10,
            1000,
            1 << 20,
            (1 << 20) + 1,
            (1 << 50) - 1,
        ];
        let dividends = [
            0u64,
            1,
            2,
            999,
            1000,
            1001,
            (1 << 52) - 1,
            1 << 52,
            u64::MAX,
        ];
        for d in divisors {
            let divider = Divider::new(d);
            for n in dividends
                .iter()
                .copied()
                .chain([d - 1, d, d + 1, d * 3 - 1])
            {
                assert_eq!(divider.divide(n), n / d, "{n} / {d}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_divider_agrees_with_division(d in 1u64..(1 << 50), n in 0u64..(1 << 52)) {
            proptest::prop_assert_eq!(Divider::new(d).divide(n), n / d);
        }
    }

    #[test]
    fn specs_are_validated() {
        assert_eq!(
            LimitSpec::new(Algorithm::Gcra, 0, 1_000_000, None),
            Err(SpecError::ZeroLimit)
        );
        assert_eq!(
            LimitSpec::new(Algorithm::Gcra, 1, 10, None),
            Err(SpecError::PeriodTooShort)
        );
        assert_eq!(
            LimitSpec::new(Algorithm::SlidingLog, 20_000, 1_000_000, None),
            Err(SpecError::SlidingLogTooLarge)
        );
        assert_eq!(
            LimitSpec::new(Algorithm::TokenBucket, 1 << 30, 1 << 30, None),
            Err(SpecError::TooLarge)
        );
        assert_eq!("sliding_counter".parse(), Ok(Algorithm::SlidingCounter));
        assert!("leaky".parse::<Algorithm>().is_err());
    }
}

//! The engine trait: where limiter state lives.

use futures::future::BoxFuture;

use crate::algorithm::{Decision, LimitSpec};

/// Errors of the limiter.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// Redis failed, or did not answer in time.
    #[error(transparent)]
    Redis(#[from] keel_redis::RedisError),
    /// The cost can never be admitted under this limit.
    #[error("cost {cost} exceeds the limit's capacity of {capacity}")]
    CostExceedsCapacity {
        /// Requested cost.
        cost: u64,
        /// Largest cost the limit admits.
        capacity: u64,
    },
    /// A request had no checks, or more than an engine call may carry.
    #[error("a request must carry between 1 and {max} checks, not {got}")]
    BadCheckCount {
        /// Checks in the request.
        got: usize,
        /// Most checks allowed.
        max: usize,
    },
    /// The batcher was shut down.
    #[error("the limiter is shutting down")]
    Closed,
}

impl LimitError {
    /// True when the error means "the shared store is unavailable": the failure policy applies.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LimitError::Redis(_) | LimitError::Closed => true,
            LimitError::CostExceedsCapacity { .. } | LimitError::BadCheckCount { .. } => false,
        }
    }
}

/// One limit to check: a storage key, its spec, and the cost to charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Full storage key (see `Limiter::storage_key`).
    pub key: String,
    /// The limit.
    pub spec: LimitSpec,
    /// Units to charge (0 peeks).
    pub cost: u64,
}

/// Checks admitted together or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRequest {
    /// The checks; at least one.
    pub checks: Vec<Check>,
}

impl CheckRequest {
    /// A request of one check.
    pub fn single(check: Check) -> Self {
        Self {
            checks: vec![check],
        }
    }
}

/// The answer to one [`CheckRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// True when every check admitted (and all were charged).
    pub allowed: bool,
    /// One decision per check, in order (each as evaluated; none charged when denied).
    pub decisions: Vec<Decision>,
}

impl Outcome {
    /// Builds an outcome from per-check decisions: allowed only if every one is.
    pub fn from_decisions(decisions: Vec<Decision>) -> Self {
        let allowed = decisions.iter().all(|d| d.allowed);
        Self { allowed, decisions }
    }

    /// The decision that governs the request: when denied, the check with the longest wait;
    /// when allowed, the one with the fewest remaining.
    pub fn binding(&self) -> Decision {
        let pick = if self.allowed {
            self.decisions
                .iter()
                .min_by_key(|d| (d.remaining, std::cmp::Reverse(d.reset_after_us)))
        } else {
            self.decisions
                .iter()
                .filter(|d| !d.allowed)
                .max_by_key(|d| d.retry_after_us)
        };
        let mut decision = pick.copied().unwrap_or(Decision {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset_after_us: 0,
            retry_after_us: 0,
        });
        decision.allowed = self.allowed;
        if self.allowed {
            decision.retry_after_us = 0;
        }
        decision
    }
}

/// Where limiter state lives. Implementations: [`crate::MemoryEngine`], [`crate::RedisEngine`],
/// and [`crate::Batcher`] in front of either. One conformance suite runs against all of them.
pub trait LimitEngine: Send + Sync + 'static {
    /// Decides every request; each request's checks are admitted together or not at all.
    fn check_batch<'a>(
        &'a self,
        requests: Vec<CheckRequest>,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, LimitError>>;

    /// A short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;
}

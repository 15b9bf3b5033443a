//! The engine trait: every state transition of a job, implemented by memory and Redis.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    Completion, Enqueued, Job, JobSpec, JobState, Lease, QueueLimits, QueueStats, Schedule,
    WorkerInfo,
};

/// Errors of an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid (bad queue name, bad spec, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {state}: {action} is not possible")]
    Conflict {
        /// Job id.
        id: String,
        /// Its state.
        state: JobState,
        /// What was attempted.
        action: &'static str,
    },
    /// Redis failed or is unreachable.
    #[error(transparent)]
    Redis(#[from] keel_redis::RedisError),
    /// A stored value could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl EngineError {
    /// True when retrying later may succeed (Redis unreachable or slow).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Redis(e) if e.is_unavailable())
    }
}

impl From<keel_redis::redis::RedisError> for EngineError {
    fn from(error: keel_redis::redis::RedisError) -> Self {
        EngineError::Redis(error.into())
    }
}

/// Result of an engine call.
pub type EngineResult<T> = Result<T, EngineError>;

/// Which jobs `list` returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this queue (else every known queue).
    pub queue: Option<String>,
    /// Only this state (else a mix of running, queued, scheduled, recent and dead).
    pub state: Option<JobState>,
    /// At most this many (bounded by the engine to 1000).
    pub limit: usize,
}

/// Timing knobs shared by both engines.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long finished (succeeded, cancelled) jobs are kept.
    pub retention: Duration,
    /// How long dead jobs are kept in the dead set.
    pub dead_retention: Duration,
    /// How many finished jobs the "recent" list of a queue keeps.
    pub recent_cap: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            recent_cap: 1000,
        }
    }
}

/// One job store with at-least-once delivery. Both engines pass the same conformance suite.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn name(&self) -> &'static str;

    /// Readiness: Ok when the backing store answers.
    async fn ping(&self) -> EngineResult<()>;

    /// Enqueues jobs (validated); one answer per job, in order.
    async fn enqueue(&self, jobs: Vec<JobSpec>) -> EngineResult<Vec<Enqueued>>;

    /// Leases up to `max` ready jobs of `queue` for `lease` (due delayed jobs are promoted first).
    async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> EngineResult<Vec<Job>>;

    /// Renews leases; returns the ids the caller no longer owns (cancelled, reaped): stop them.
    async fn heartbeat(
        &self,
        queue: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> EngineResult<Vec<String>>;

    /// Acks a batch; acks of leases no longer held are ignored. Returns how many applied.
    async fn complete(&self, queue: &str, results: &[Completion]) -> EngineResult<usize>;

    /// Hands leased jobs back to the front of the queue, not counting the attempt.
    async fn release(&self, queue: &str, leases: &[Lease]) -> EngineResult<usize>;

    /// Moves due delayed and retrying jobs to the ready lists (at most `limit`).
    async fn promote(&self, queue: &str, limit: usize) -> EngineResult<usize>;

    /// Re-queues (or kills, past `max_attempts`) jobs whose lease expired; trims old dead jobs.
    async fn reap(&self, queue: &str, limit: usize) -> EngineResult<usize>;

    /// One job, if it exists and has not expired.
    async fn get(&self, id: &str) -> EngineResult<Option<Job>>;

    /// Cancels a scheduled, queued, retrying or running job. `Ok(None)`: no such job.
    async fn cancel(&self, id: &str) -> EngineResult<Option<JobState>>;

    /// Re-queues a dead or cancelled job with fresh attempts. `Ok(None)`: no such job.
    async fn retry(&self, id: &str) -> EngineResult<Option<JobState>>;

    /// Jobs matching `filter`, newest first within each state.
    async fn list(&self, filter: &ListFilter) -> EngineResult<Vec<Job>>;

    /// Every known queue with its depths and counters.
    async fn queues(&self) -> EngineResult<Vec<QueueStats>>;

    /// Sets a queue's cluster-wide limits.
    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> EngineResult<()>;

    /// A queue's limits (defaults when none were set).
    async fn limits(&self, queue: &str) -> EngineResult<QueueLimits>;

    /// Records a worker's heartbeat (kept for `ttl`).
    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> EngineResult<()>;

    /// Forgets a worker (clean shutdown).
    async fn unregister_worker(&self, id: &str) -> EngineResult<()>;

    /// Workers seen within their ttl.
    async fn workers(&self) -> EngineResult<Vec<WorkerInfo>>;

    /// Creates or replaces a schedule.
    async fn put_schedule(&self, schedule: &Schedule) -> EngineResult<()>;

    /// Every schedule.
    async fn schedules(&self) -> EngineResult<Vec<Schedule>>;

    /// Deletes a schedule; false if there was none.
    async fn delete_schedule(&self, name: &str) -> EngineResult<bool>;

    /// Acquires or renews leadership for `node`; returns the fencing token while leader.
    async fn acquire_leadership(&self, node: &str, ttl: Duration) -> EngineResult<Option<u64>>;

    /// Gives leadership up if `node` holds it.
    async fn resign_leadership(&self, node: &str) -> EngineResult<()>;

    /// The last tick (ms) fired for a schedule.
    async fn last_fire(&self, schedule: &str) -> EngineResult<Option<i64>>;

    /// Claims one fire time of a schedule: true exactly once per (schedule, tick), and only
    /// while `node` is the leader with fencing token `token`. Records the tick as the last.
    async fn claim_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<bool>;

    /// Records `tick_ms` as the last tick of a schedule without firing (policy `skip`).
    async fn skip_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<()>;
}

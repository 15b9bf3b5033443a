//! The job model: what the API takes, what the engines store, what workers run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle: `scheduled → queued → running → succeeded | retrying | dead | cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be fetched.
    Queued,
    /// Leased by a worker.
    Running,
    /// Finished with success.
    Succeeded,
    /// Failed; waiting for its backoff to elapse before it is queued again.
    Retrying,
    /// Failed for the last time (or failed permanently): in the dead set, replayable.
    Dead,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Retrying,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The wire name (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True for states a job never leaves by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

fn default_queue() -> String {
    "default".into()
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// A job as the API takes it; only `kind` and `payload` are required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Queue name (`[A-Za-z0-9_.-]`, 1 to 64 characters).
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Which handler runs it (`shell`, `http`, or a custom kind).
    pub kind: String,
    /// Handler input.
    pub payload: Value,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Runs at most this many times (at least 1).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Run after this long.
    #[serde(default)]
    pub delay_ms: u64,
    /// Run at this time (milliseconds since the Unix epoch); wins over `delay_ms`.
    #[serde(default)]
    pub run_at: Option<i64>,
    /// While a job with this key is live (not finished), enqueueing another returns its id.
    #[serde(default)]
    pub unique_key: Option<String>,
}

impl JobSpec {
    /// A job of `kind` with `payload` on the default queue.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            queue: default_queue(),
            kind: kind.into(),
            payload,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            delay_ms: 0,
            run_at: None,
            unique_key: None,
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Checks names and bounds; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        validate_queue_name(&self.queue)?;
        if self.kind.is_empty() || self.kind.len() > 64 {
            return Err("kind must be 1 to 64 characters".into());
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err("max_attempts must be between 1 and 1000".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        if self.priority.abs() > 1_000_000 {
            return Err("priority must be between -1000000 and 1000000".into());
        }
        if let Some(key) = &self.unique_key {
            if key.is_empty() || key.len() > 200 {
                return Err("unique_key must be 1 to 200 characters".into());
            }
        }
        Ok(())
    }
}

/// Queue names end up inside Redis keys and URLs: keep them plain.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("queue must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "queue {name:?} may only contain letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// A job as stored and reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// ULID.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Handler name.
    pub kind: String,
    /// Handler input.
    pub payload: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Current state.
    pub state: JobState,
    /// Attempts started so far (the running attempt included).
    pub attempts: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
    /// When it is (or was) due, ms since the epoch.
    pub run_at: Option<i64>,
    /// Uniqueness key.
    pub unique_key: Option<String>,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Last made ready (queued), ms since the epoch.
    pub enqueued_at: Option<i64>,
    /// Last attempt started, ms since the epoch.
    pub started_at: Option<i64>,
    /// Finished (succeeded, dead, cancelled), ms since the epoch.
    pub finished_at: Option<i64>,
    /// Worker of the last attempt.
    pub worker: Option<String>,
    /// Handler output on success.
    pub result: Option<Value>,
    /// Last error.
    pub error: Option<String>,
}

/// The immutable part of a job, stored as one JSON blob by the Redis engine. Short field names
/// keep a small job's hash under Redis's listpack limit (64-byte values), which makes every
/// hash command on it cheaper; the long names are still read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredSpec {
    #[serde(rename = "k", alias = "kind")]
    pub kind: String,
    #[serde(rename = "d", alias = "payload")]
    pub payload: Value,
    #[serde(
        rename = "p",
        alias = "priority",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub priority: i32,
    #[serde(rename = "m", alias = "max_attempts")]
    pub max_attempts: u32,
    #[serde(rename = "t", alias = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(
        rename = "u",
        alias = "unique_key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unique_key: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// [`StoredSpec`] borrowed from a [`JobSpec`], to encode without copying the payload.
#[derive(Serialize)]
pub(crate) struct StoredSpecRef<'a> {
    #[serde(rename = "k")]
    pub kind: &'a str,
    #[serde(rename = "d")]
    pub payload: &'a Value,
    #[serde(rename = "p", skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(rename = "m")]
    pub max_attempts: u32,
    #[serde(rename = "t")]
    pub timeout_ms: u64,
    #[serde(rename = "u", skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<&'a str>,
}

impl<'a> From<&'a JobSpec> for StoredSpecRef<'a> {
    fn from(spec: &'a JobSpec) -> Self {
        Self {
            kind: &spec.kind,
            payload: &spec.payload,
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout_ms: spec.timeout_ms,
            unique_key: spec.unique_key.as_deref(),
        }
    }
}

impl From<&JobSpec> for StoredSpec {
    fn from(spec: &JobSpec) -> Self {
        Self {
            kind: spec.kind.clone(),
            payload: spec.payload.clone(),
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout_ms: spec.timeout_ms,
            unique_key: spec.unique_key.clone(),
        }
    }
}

/// The answer to one enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The new job's id, or, for a duplicate unique key, the live job's id.
    pub id: String,
    /// True when `unique_key` matched a live job and nothing was enqueued.
    pub duplicate: bool,
}

/// What a worker holds: a job id and the attempt it runs (the attempt is the fencing token:
/// an ack for an older attempt is ignored).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Job id.
    pub id: String,
    /// Attempt number.
    pub attempt: u32,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success, with the handler's result.
    Succeeded(Option<Value>),
    /// Failure: retried after `backoff` while attempts remain, else dead.
    Failed {
        /// Error text.
        error: String,
        /// Delay before the retry.
        backoff: Duration,
    },
    /// Failure that must not be retried: dead at once.
    Fatal(String),
}

/// One ack.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The lease being acked.
    pub lease: Lease,
    /// The result.
    pub outcome: Outcome,
}

/// Counters and depths of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Ready to run.
    pub queued: u64,
    /// Delayed or waiting for a retry.
    pub scheduled: u64,
    /// Leased by workers.
    pub running: u64,
    /// In the dead set.
    pub dead: u64,
    /// Total enqueued.
    pub enqueued_total: u64,
    /// Total succeeded.
    pub succeeded_total: u64,
    /// Total failed attempts.
    pub failed_total: u64,
    /// Total dead.
    pub dead_total: u64,
    /// Cluster-wide concurrency limit (0 = none).
    pub max_concurrency: u64,
}

/// Per-queue limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// Most jobs of the queue running at once across the cluster (0 = no limit).
    #[serde(default)]
    pub max_concurrency: u64,
    /// Most jobs started per period across the cluster (GCRA, Keel's limiter).
    #[serde(default)]
    pub rate_limit: Option<QueueRate>,
}

/// A cluster-wide start rate: `limit` jobs per `period_ms`, with `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRate {
    /// Jobs per period.
    pub limit: u64,
    /// The period in milliseconds (default 1000).
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    /// Jobs admitted at once from idle (default: `limit`).
    #[serde(default)]
    pub burst: Option<u64>,
}

fn default_period_ms() -> u64 {
    1000
}

/// A worker's self-description, refreshed with its heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id (host-pid-random).
    pub id: String,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Slots.
    pub concurrency: usize,
    /// Jobs running now.
    pub running: usize,
    /// Started, ms since the epoch.
    pub started_at: i64,
    /// Last heartbeat, ms since the epoch.
    pub last_seen: i64,
}

/// Missed-fire policy of a schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissedPolicy {
    /// Ticks missed while no master was leader are dropped.
    #[default]
    Skip,
    /// If ticks were missed, one catch-up run fires for all of them.
    Once,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A cron schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// 5 fields (minute precision) or 6 (with seconds).
    pub cron: String,
    /// IANA time zone, default `UTC`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Missed-fire policy.
    #[serde(default)]
    pub missed: MissedPolicy,
    /// The job each tick enqueues.
    pub job: JobSpec,
}

/// Milliseconds since the Unix epoch (the caller's clock: ids and logs only).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID: 48 bits of milliseconds, 80 random bits, Crockford base32 (26 characters).
pub fn new_id() -> String {
    let ms = now_ms().max(0) as u128 & ((1u128 << 48) - 1);
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let value = (ms << 80) | random;
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *slot = CROCKFORD[((value >> shift) & 0x1f) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// Ids are ULIDs: refuse anything else before it reaches a key name.
pub fn valid_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| CROCKFORD.contains(&b))
}

/// Exponential backoff with jitter: `base · 2^(attempt-1)`, capped, then a random 50–100 %.
pub fn retry_backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let factor: f64 = rand::rng().random_range(0.5..=1.0);
    raw.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ulids_and_sort_by_time() {
        let a = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_id();
        assert!(valid_id(&a) && valid_id(&b), "{a} {b}");
        assert!(a < b);
        assert!(!valid_id("../../etc"));
    }

    #[test]
    fn spec_defaults_and_validation() {
        let spec: JobSpec = serde_json::from_str(r#"{"kind":"shell","payload":{}}"#).unwrap();
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.max_attempts, 5);
        assert!(spec.validate().is_ok());
        assert!(spec.clone().queue("a b").validate().is_err());
        assert!(serde_json::from_str::<JobSpec>(r#"{"kind":"x","payload":1,"bogus":1}"#).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 1..10 {
            let d = retry_backoff(attempt, base, cap);
            let raw = base.saturating_mul(1 << (attempt - 1)).min(cap);
            assert!(d <= raw && d >= raw / 2, "{attempt}: {d:?}");
        }
    }
}

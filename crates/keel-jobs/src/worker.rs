//! The worker runtime: batch fetch, bounded concurrency, heartbeats that renew leases and
//! learn of cancels, batched acks that survive a Redis outage, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::Shutdown;
use parking_lot::Mutex;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::model::{now_ms, retry_backoff, Completion, Job, Lease, Outcome, WorkerInfo};

/// What a handler sees of its job.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job (state `running`, `attempts` = this attempt).
    pub job: Job,
    /// Fires when the job is cancelled, lost or handed back: stop promptly. (The runtime also
    /// drops the handler's future then, so cleanup belongs in `Drop` guards.)
    pub cancel: CancellationToken,
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    /// What went wrong.
    pub message: String,
    /// False: dead at once (bad payload, unknown program); true: retried with backoff.
    pub retryable: bool,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Runs jobs of one kind. Register custom kinds in a [`Registry`].
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt; `Ok` carries the result stored on the job.
    async fn run(&self, ctx: JobContext) -> Result<Option<Value>, JobError>;

    /// True when `run` does only short in-memory work before its first await (no blocking, no
    /// process spawn): the worker then polls each attempt once on its fetch task and spawns a
    /// task only for attempts not finished by that first poll, which saves a task per job for
    /// jobs that finish at once. Default: false (every attempt gets its own task, so the
    /// synchronous parts of many attempts run in parallel on the runtime's threads).
    fn inline(&self) -> bool {
        false
    }
}

/// Kind name → handler.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// No kinds at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// `shell`, `http` and `noop`.
    pub fn with_builtin_kinds() -> Self {
        let mut registry = Self::empty();
        registry.register("shell", crate::kinds::ShellHandler::default());
        registry.register("http", crate::kinds::HttpHandler::default());
        registry.register("noop", crate::kinds::NoopHandler);
        registry
    }

    /// Adds or replaces a kind.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Unique id (shown in `/v1/workers` and on each job).
    pub id: String,
    /// Queues with weights: a queue of weight 2 is tried first twice as often as weight 1.
    pub queues: Vec<(String, u32)>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Lease per fetched job; renewed every `heartbeat`.
    pub lease: Duration,
    /// Heartbeat period: lease renewal and cancel detection.
    pub heartbeat: Duration,
    /// Sleep when every queue is empty.
    pub poll_interval: Duration,
    /// On shutdown, how long running jobs may finish before they are handed back.
    pub grace: Duration,
    /// Largest fetch.
    pub fetch_batch: usize,
    /// Largest ack batch.
    pub ack_batch: usize,
    /// First retry delay (doubles per attempt, with jitter).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queues: vec![("default".into(), 1)],
            concurrency: 10,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            poll_interval: Duration::from_millis(100),
            grace: Duration::from_secs(10),
            fetch_batch: 100,
            ack_batch: 500,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(3600),
        }
    }
}

/// `host-pid-random`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let tag: u32 = rand::rng().random();
    format!("{host}-{}-{tag:08x}", std::process::id())
}

/// Parses `a,b:2,c` into queues with weights (default weight 1).
pub fn parse_queues(text: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once(':') {
            Some((n, w)) => (
                n,
                w.parse::<u32>()
                    .ok()
                    .filter(|w| *w > 0)
                    .ok_or_else(|| format!("bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        crate::model::validate_queue_name(name)?;
        out.push((name.to_string(), weight));
    }
    if out.is_empty() {
        return Err("no queues given".into());
    }
    Ok(out)
}

/// Counters of one worker run.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Attempts started.
    pub started: AtomicU64,
    /// Attempts that succeeded.
    pub succeeded: AtomicU64,
    /// Attempts that failed (retry or dead).
    pub failed: AtomicU64,
    /// Attempts stopped by a cancel or a lost lease.
    pub stopped: AtomicU64,
    /// Jobs handed back on shutdown.
    pub handed_back: AtomicU64,
}

/// Metric handles of one queue, registered once: a labelled lookup per job is not free.
struct QueueMetrics {
    /// The queue's name, shared by its jobs' acks (no String per job).
    name: Arc<str>,
    started: metrics::Counter,
    succeeded: metrics::Counter,
    failed: metrics::Counter,
    enqueue_to_start: metrics::Histogram,
}

impl QueueMetrics {
    fn new(queue: &str) -> Self {
        Self {
            name: Arc::from(queue),
            started: metrics::counter!("keel_jobs_started_total", "queue" => queue.to_string()),
            succeeded: metrics::counter!("keel_jobs_succeeded_total", "queue" => queue.to_string()),
            failed: metrics::counter!("keel_jobs_failed_total", "queue" => queue.to_string()),
            enqueue_to_start: metrics::histogram!("keel_jobs_enqueue_to_start_seconds", "queue" => queue.to_string()),
        }
    }
}

struct RunningJob {
    queue: Arc<str>,
    attempt: u32,
    lost: CancellationToken,
}

/// One worker: fetches from its queues and runs jobs until shut down.
pub struct Worker {
    engine: Arc<dyn Engine>,
    registry: Arc<Registry>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    limiter: Option<Arc<keel_limit::Limiter>>,
}

/// What the worker knows of one queue's rate limit.
struct RateGate {
    refreshed: std::time::Instant,
    limit: Option<keel_limit::Limit>,
    paused_until: Option<std::time::Instant>,
}

const LIMITS_REFRESH: Duration = Duration::from_secs(2);

impl RateGate {
    fn limit_from(queue: &str, limits: &crate::model::QueueLimits) -> Option<keel_limit::Limit> {
        let rate = limits.rate_limit.as_ref()?;
        match keel_limit::LimitSpec::new(
            keel_limit::Algorithm::Gcra,
            rate.limit,
            rate.period_ms.saturating_mul(1000),
            rate.burst,
        ) {
            Ok(spec) => Some(keel_limit::Limit::new(format!("jobs-queue-{queue}"), spec)),
            Err(e) => {
                tracing::warn!(queue, error = %e, "invalid queue rate limit ignored");
                None
            }
        }
    }
}

impl Worker {
    /// A worker on `engine` running the kinds of `registry`.
    pub fn new(engine: Arc<dyn Engine>, registry: Registry, config: WorkerConfig) -> Self {
        Self {
            engine,
            registry: Arc::new(registry),
            config,
            stats: Arc::new(WorkerStats::default()),
            limiter: None,
        }
    }

    /// Enforces the queues' cluster-wide rate limits (`QueueLimits::rate_limit`) with `limiter`
    /// (Keel's limiter; on Redis for a cluster-wide limit).
    pub fn with_limiter(mut self, limiter: Arc<keel_limit::Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The queue's rate gate, refreshed from the engine every few seconds.
    async fn gate<'a>(
        &self,
        gates: &'a mut HashMap<String, RateGate>,
        queue: &str,
    ) -> &'a mut RateGate {
        let stale = gates
            .get(queue)
            .is_none_or(|g| g.refreshed.elapsed() >= LIMITS_REFRESH);
        if stale {
            let limit = match self.engine.limits(queue).await {
                Ok(limits) => RateGate::limit_from(queue, &limits),
                Err(_) => gates.get(queue).and_then(|g| g.limit.clone()),
            };
            let paused_until = gates.get(queue).and_then(|g| g.paused_until);
            gates.insert(
                queue.to_string(),
                RateGate {
                    refreshed: std::time::Instant::now(),
                    limit,
                    paused_until,
                },
            );
        }
        gates.entry(queue.to_string()).or_insert_with(|| RateGate {
            refreshed: std::time::Instant::now(),
            limit: None,
            paused_until: None,
        })
    }

    /// Keeps the jobs the queue's rate limit admits; hands the rest back and pauses the queue.
    async fn admit(&self, gate: &mut RateGate, queue: &str, batch: Vec<Job>) -> Vec<Job> {
        let (Some(limiter), Some(limit)) = (&self.limiter, &gate.limit) else {
            return batch;
        };
        let mut admitted = Vec::with_capacity(batch.len());
        let mut rest = Vec::new();
        let mut wait_us = 0;
        for job in batch {
            if !rest.is_empty() {
                rest.push(job);
                continue;
            }
            match limiter.check(limit, queue, 1).await {
                Ok(result) if result.allowed => admitted.push(job),
                Ok(result) => {
                    wait_us = result.decision.retry_after_us;
                    rest.push(job);
                }
                Err(e) => {
                    tracing::warn!(queue, error = %e, "rate limit check failed; admitting");
                    admitted.push(job);
                }
            }
        }
        if !rest.is_empty() {
            let leases: Vec<Lease> = rest
                .iter()
                .map(|j| Lease {
                    id: j.id.clone(),
                    attempt: j.attempts,
                })
                .collect();
            if let Err(e) = self.engine.release(queue, &leases).await {
                tracing::warn!(queue, error = %e, "could not hand rate-limited jobs back; they return after their lease");
            }
            metrics::counter!("keel_jobs_rate_limited_total", "queue" => queue.to_string())
                .increment(leases.len() as u64);
            gate.paused_until =
                Some(std::time::Instant::now() + Duration::from_micros(wait_us.max(10_000)));
        }
        admitted
    }

    /// Live counters (shared with the running worker).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` fires, then stops fetching, lets running jobs finish for the grace
    /// period, hands the rest back and flushes every ack it holds.
    pub async fn run(self, shutdown: Shutdown) {
        let config = Arc::new(self.config.clone());
        let running: Arc<Mutex<HashMap<String, RunningJob>>> = Arc::default();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(Arc<str>, Completion)>();
        let abort = CancellationToken::new();
        let handback: Arc<Mutex<Vec<(String, Lease)>>> = Arc::default();
        let tracker = TaskTracker::new();
        let started_at = now_ms();
        tracing::info!(worker = %config.id, queues = ?config.queues, concurrency = config.concurrency, engine = self.engine.name(), "worker started");

        let acker_done = CancellationToken::new();
        let acker = tokio::spawn(ack_loop(
            self.engine.clone(),
            ack_rx,
            config.clone(),
            acker_done.clone(),
        ));
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.engine.clone(),
            running.clone(),
            config.clone(),
            started_at,
            heartbeat_stop.clone(),
        ));

        let semaphore = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let mut failures = 0u32;
        let mut gates: HashMap<String, RateGate> = HashMap::new();
        let mut queue_metrics: HashMap<String, Arc<QueueMetrics>> = config
            .queues
            .iter()
            .map(|(q, _)| (q.clone(), Arc::new(QueueMetrics::new(q))))
            .collect();
        'fetching: loop {
            let mut permits = tokio::select! {
                permit = semaphore.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.wait() => break,
            };
            let extra = semaphore
                .available_permits()
                .min(config.fetch_batch.saturating_sub(1));
            if extra > 0 {
                if let Ok(more) = semaphore.clone().try_acquire_many_owned(extra as u32) {
                    permits.merge(more);
                }
            }
            let mut jobs = Vec::new();
            let mut error = None;
            for queue in weighted_order(&config.queues) {
                let want = permits.num_permits() - jobs.len();
                if want == 0 {
                    break;
                }
                let mut gate = None;
                if self.limiter.is_some() {
                    let g = self.gate(&mut gates, &queue).await;
                    if g.paused_until
                        .is_some_and(|t| t > std::time::Instant::now())
                    {
                        continue;
                    }
                    gate = Some(g);
                }
                match self
                    .engine
                    .fetch(&queue, &config.id, want, config.lease)
                    .await
                {
                    Ok(batch) => match gate {
                        Some(g) => jobs.extend(self.admit(g, &queue, batch).await),
                        None => jobs.extend(batch),
                    },
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = error.filter(|_| jobs.is_empty()) {
                failures += 1;
                let delay = backoff_delay(failures);
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, retry_in = ?delay, "fetch failed; backing off");
                }
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue 'fetching,
                    _ = shutdown.wait() => break 'fetching,
                }
            }
            if failures > 0 {
                tracing::info!("fetching again");
                failures = 0;
            }
            if jobs.is_empty() {
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(config.poll_interval) => continue,
                    _ = shutdown.wait() => break,
                }
            }
            for job in jobs {
                let Some(permit) = permits.split(1) else {
                    break;
                };
                let queue_metrics = match queue_metrics.get(&job.queue) {
                    Some(m) => m.clone(),
                    None => {
                        let m = Arc::new(QueueMetrics::new(&job.queue));
                        queue_metrics.insert(job.queue.clone(), m.clone());
                        m
                    }
                };
                let lost = CancellationToken::new();
                running.lock().insert(
                    job.id.clone(),
                    RunningJob {
                        queue: queue_metrics.name.clone(),
                        attempt: job.attempts,
                        lost: lost.clone(),
                    },
                );
                let handler = self.registry.get(&job.kind);
                let inline = handler.as_ref().is_some_and(|h| h.inline());
                let task = run_job(
                    job,
                    handler,
                    config.clone(),
                    lost,
                    abort.clone(),
                    ack_tx.clone(),
                    running.clone(),
                    handback.clone(),
                    self.stats.clone(),
                    queue_metrics,
                );
                if inline {
                    // One poll here; a task only if the attempt is not done yet. (A future
                    // that returns Pending registers its waker again at its next poll, which
                    // the spawned task does at once.)
                    let mut task = Box::pin(task);
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    if task.as_mut().poll(&mut cx).is_ready() {
                        drop(permit);
                        continue;
                    }
                    tracker.spawn(async move {
                        task.await;
                        drop(permit);
                    });
                } else {
                    tracker.spawn(async move {
                        task.await;
                        drop(permit);
                    });
                }
            }
        }

        // Graceful shutdown.
        tracker.close();
        let in_flight = running.lock().len();
        if in_flight > 0 {
            tracing::info!(jobs = in_flight, grace = ?config.grace, "waiting for running jobs");
        }
        if tokio::time::timeout(config.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = running.lock().len(),
                "grace period over: stopping jobs and handing them back"
            );
            abort.cancel();
            tracker.wait().await;
        }
        drop(ack_tx);
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        // Acks first, so a job that finished is never handed back.
        acker_done.cancel();
        let _ = acker.await;
        let back = std::mem::take(&mut *handback.lock());
        if !back.is_empty() {
            let mut by_queue: HashMap<String, Vec<Lease>> = HashMap::new();
            for (queue, lease) in back {
                by_queue.entry(queue).or_default().push(lease);
            }
            for (queue, leases) in by_queue {
                match self.engine.release(&queue, &leases).await {
                    Ok(n) => {
                        self.stats
                            .handed_back
                            .fetch_add(n as u64, Ordering::Relaxed);
                        tracing::info!(queue, jobs = n, "handed jobs back");
                    }
                    Err(e) => tracing::warn!(queue, error = %e,
                        "could not hand jobs back; their leases will expire and the reaper re-queues them"),
                }
            }
        }
        if let Err(e) = self.engine.unregister_worker(&config.id).await {
            tracing::debug!(error = %e, "could not unregister worker");
        }
        tracing::info!(worker = %config.id, "worker stopped");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_job(
    job: Job,
    handler: Option<Arc<dyn Handler>>,
    config: Arc<WorkerConfig>,
    lost: CancellationToken,
    abort: CancellationToken,
    acks: mpsc::UnboundedSender<(Arc<str>, Completion)>,
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    handback: Arc<Mutex<Vec<(String, Lease)>>>,
    stats: Arc<WorkerStats>,
    queue_metrics: Arc<QueueMetrics>,
) {
    let lease = Lease {
        id: job.id.clone(),
        attempt: job.attempts,
    };
    let queue = queue_metrics.name.clone();
    stats.started.fetch_add(1, Ordering::Relaxed);
    queue_metrics.started.increment(1);
    if let (Some(started), Some(enqueued)) = (job.started_at, job.enqueued_at) {
        queue_metrics
            .enqueue_to_start
            .record((started - enqueued).max(0) as f64 / 1000.0);
    }
    let timeout = Duration::from_millis(job.timeout_ms);
    let outcome = match handler {
        None => Some(Err(JobError::fatal(format!(
            "unknown kind {:?}: no handler registered on worker {}",
            job.kind, config.id
        )))),
        Some(handler) => {
            let ctx = JobContext {
                job,
                cancel: lost.clone(),
            };
            // Biased, the handler first: a job that finishes at its first poll (most short
            // jobs) never registers a timer or a waiter on the shared cancel tokens.
            tokio::select! {
                biased;
                result = handler.run(ctx) => Some(result),
                _ = lost.cancelled() => None,
                _ = abort.cancelled() => {
                    handback.lock().push((queue.to_string(), lease.clone()));
                    None
                }
                // (Built when first polled: no clock read for a job done at its first poll.)
                _ = async { tokio::time::sleep(timeout).await } => Some(Err(JobError::retry(format!("timed out after {timeout:?}")))),
            }
        }
    };
    running.lock().remove(&lease.id);
    let Some(result) = outcome else {
        stats.stopped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let outcome = match result {
        Ok(value) => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            queue_metrics.succeeded.increment(1);
            Outcome::Succeeded(value)
        }
        Err(error) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            queue_metrics.failed.increment(1);
            tracing::info!(job = %lease.id, attempt = lease.attempt, error = %error.message, "attempt failed");
            if error.retryable {
                Outcome::Failed {
                    error: error.message,
                    backoff: retry_backoff(lease.attempt, config.retry_base, config.retry_cap),
                }
            } else {
                Outcome::Fatal(error.message)
            }
        }
    };
    let _ = acks.send((queue, Completion { lease, outcome }));
}

async fn ack_loop(
    engine: Arc<dyn Engine>,
    mut rx: mpsc::UnboundedReceiver<(Arc<str>, Completion)>,
    config: Arc<WorkerConfig>,
    done: CancellationToken,
) {
    // Acks held per queue, sent in batches; a queue whose ack fails keeps its acks and retries.
    let mut pending: HashMap<Arc<str>, Vec<Completion>> = HashMap::new();
    let mut held = 0usize;
    let mut failures = 0u32;
    let mut closed = false;
    let hold =
        |pending: &mut HashMap<Arc<str>, Vec<Completion>>, queue: Arc<str>, c: Completion| {
            match pending.get_mut(&queue) {
                Some(batch) => batch.push(c),
                None => {
                    pending.insert(queue, vec![c]);
                }
            }
        };
    loop {
        if held == 0 {
            if closed {
                return;
            }
            match rx.recv().await {
                Some((queue, c)) => {
                    hold(&mut pending, queue, c);
                    held += 1;
                }
                None => {
                    closed = true;
                    continue;
                }
            }
        }
        while held < config.ack_batch {
            match rx.try_recv() {
                Ok((queue, c)) => {
                    hold(&mut pending, queue, c);
                    held += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut failed = false;
        for (queue, batch) in pending.iter_mut() {
            if batch.is_empty() {
                continue;
            }
            match engine.complete(queue, batch).await {
                Ok(_) => {
                    held -= batch.len();
                    batch.clear();
                }
                Err(e) => {
                    if failures == 0 || failures.is_multiple_of(20) {
                        tracing::warn!(queue = &**queue, error = %e, held = batch.len(), "ack failed; holding results and retrying");
                    }
                    failed = true;
                }
            }
        }
        if !failed {
            if failures > 0 {
                tracing::info!("acks delivered again");
            }
            failures = 0;
            continue;
        }
        failures += 1;
        if done.is_cancelled() && failures > 50 {
            tracing::error!(
                held,
                "giving up on acks at shutdown; those jobs will run again after their lease"
            );
            return;
        }
        tokio::time::sleep(backoff_delay(failures)).await;
    }
}

async fn heartbeat_loop(
    engine: Arc<dyn Engine>,
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    config: Arc<WorkerConfig>,
    started_at: i64,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = (config.heartbeat * 10).max(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut by_queue: HashMap<Arc<str>, Vec<Lease>> = HashMap::new();
        let count = {
            let guard = running.lock();
            for (id, job) in guard.iter() {
                by_queue.entry(job.queue.clone()).or_default().push(Lease {
                    id: id.clone(),
                    attempt: job.attempt,
                });
            }
            guard.len()
        };
        for (queue, leases) in by_queue {
            match engine.heartbeat(&queue, &leases, config.lease).await {
                Ok(lost) => {
                    let guard = running.lock();
                    for id in lost {
                        if let Some(job) = guard.get(&id) {
                            tracing::info!(job = %id, "job cancelled or lease lost: stopping it");
                            job.lost.cancel();
                        }
                    }
                }
                Err(e) => tracing::warn!(queue = &*queue, error = %e, "heartbeat failed"),
            }
        }
        let info = WorkerInfo {
            id: config.id.clone(),
            queues: config.queues.iter().map(|(q, _)| q.clone()).collect(),
            concurrency: config.concurrency,
            running: count,
            started_at,
            last_seen: now_ms(),
        };
        metrics::gauge!("keel_worker_running_jobs").set(count as f64);
        if let Err(e) = engine.register_worker(&info, ttl).await {
            tracing::debug!(error = %e, "worker registration failed");
        }
    }
}

/// Exponential backoff with full jitter, 50 ms to 5 s.
fn backoff_delay(failures: u32) -> Duration {
    let cap = Duration::from_millis(50)
        .saturating_mul(1 << failures.min(7))
        .min(Duration::from_secs(5));
    cap.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Queue names in a weighted random order (Efraimidis–Spirakis).
fn weighted_order(queues: &[(String, u32)]) -> Vec<String> {
    if queues.len() == 1 {
        return vec![queues[0].0.clone()];
    }
    let mut rng = rand::rng();
    let mut keyed: Vec<(f64, &String)> = queues
        .iter()
        .map(|(q, w)| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            (u.powf(1.0 / f64::from((*w).max(1))), q)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, q)| q.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lists_parse_with_weights() {
        assert_eq!(
            parse_queues("a, b:3").unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 3)]
        );
        assert!(parse_queues("").is_err());
        assert!(parse_queues("a:0").is_err());
        assert!(parse_queues("bad name").is_err());
    }

    #[test]
    fn weighted_order_prefers_heavier_queues() {
        let queues = vec![("light".to_string(), 1), ("heavy".to_string(), 9)];
        let heavy_first = (0..1000)
            .filter(|_| weighted_order(&queues)[0] == "heavy")
            .count();
        assert!(heavy_first > 700, "{heavy_first}");
    }
}

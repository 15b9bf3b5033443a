//! The in-memory engine: one process, one mutex, the same behaviour as Redis.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::engine::{Engine, EngineConfig, EngineError, EngineResult, ListFilter};
use crate::model::{
    new_id, now_ms, validate_queue_name, Completion, Enqueued, Job, JobSpec, JobState, Lease,
    Outcome, QueueLimits, QueueStats, Schedule, WorkerInfo,
};

#[derive(Default)]
struct Queue {
    ready: BTreeMap<Reverse<i32>, VecDeque<String>>,
    scheduled: BTreeSet<(i64, String)>,
    inflight: HashMap<String, i64>,
    dead: BTreeSet<(i64, String)>,
    recent: VecDeque<String>,
    limits: QueueLimits,
    enqueued: u64,
    succeeded: u64,
    failed: u64,
    dead_total: u64,
}

struct Stored {
    job: Job,
    expires_at: Option<i64>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Stored>,
    queues: BTreeMap<String, Queue>,
    unique: HashMap<(String, String), String>,
    workers: HashMap<String, (WorkerInfo, i64)>,
    schedules: BTreeMap<String, Schedule>,
    leader: Option<(String, u64, i64)>,
    fence: u64,
    fired: HashMap<(String, i64), i64>,
    last_fire: HashMap<String, i64>,
}

/// The in-memory engine (`keel dev`, `keel master --engine memory`, tests).
pub struct MemoryEngine {
    state: Mutex<State>,
    config: EngineConfig,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            state: Mutex::new(State::default()),
            config,
        }
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl State {
    fn live_job(&mut self, id: &str, now: i64) -> Option<&mut Job> {
        let expired = match self.jobs.get(id) {
            Some(stored) => stored.expires_at.is_some_and(|t| t <= now),
            None => return None,
        };
        if expired {
            self.jobs.remove(id);
            return None;
        }
        self.jobs.get_mut(id).map(|s| &mut s.job)
    }

    fn push_ready(&mut self, queue: &str, priority: i32, id: String, front: bool) {
        let list = self
            .queues
            .entry(queue.to_string())
            .or_default()
            .ready
            .entry(Reverse(priority))
            .or_default();
        if front {
            list.push_front(id);
        } else {
            list.push_back(id);
        }
    }

    fn release_unique(&mut self, job: &Job) {
        if let Some(key) = &job.unique_key {
            let k = (job.queue.clone(), key.clone());
            if self.unique.get(&k) == Some(&job.id) {
                self.unique.remove(&k);
            }
        }
    }

    /// Final bookkeeping for succeeded/cancelled (retention) and dead (dead retention).
    fn finish(&mut self, id: &str, state: JobState, now: i64, config: &EngineConfig) {
        let Some(stored) = self.jobs.get_mut(id) else {
            return;
        };
        stored.job.state = state;
        stored.job.finished_at = Some(now);
        let keep = if state == JobState::Dead {
            config.dead_retention
        } else {
            config.retention
        };
        stored.expires_at = Some(now + ms(keep));
        let job = stored.job.clone();
        self.release_unique(&job);
        let queue = self.queues.entry(job.queue.clone()).or_default();
        queue.inflight.remove(id);
        if state == JobState::Dead {
            queue.dead.insert((now, id.to_string()));
            queue.dead_total += 1;
        }
        queue.recent.push_front(id.to_string());
        queue.recent.truncate(config.recent_cap);
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> EngineResult<()> {
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<JobSpec>) -> EngineResult<Vec<Enqueued>> {
        for spec in &jobs {
            spec.validate().map_err(EngineError::Invalid)?;
        }
        let now = now_ms();
        let mut st = self.state.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for spec in jobs {
            if let Some(key) = &spec.unique_key {
                let k = (spec.queue.clone(), key.clone());
                if let Some(existing) = st.unique.get(&k).cloned() {
                    if st.live_job(&existing, now).is_some() {
                        out.push(Enqueued {
                            id: existing,
                            duplicate: true,
                        });
                        continue;
                    }
                }
            }
            let id = new_id();
            if let Some(key) = &spec.unique_key {
                st.unique
                    .insert((spec.queue.clone(), key.clone()), id.clone());
            }
            let run_at = spec
                .run_at
                .unwrap_or(now + spec.delay_ms.min(i64::MAX as u64) as i64);
            let delayed = run_at > now;
            let job = Job {
                id: id.clone(),
                queue: spec.queue.clone(),
                kind: spec.kind,
                payload: spec.payload,
                priority: spec.priority,
                state: if delayed {
                    JobState::Scheduled
                } else {
                    JobState::Queued
                },
                attempts: 0,
                max_attempts: spec.max_attempts,
                timeout_ms: spec.timeout_ms,
                run_at: Some(run_at),
                unique_key: spec.unique_key,
                created_at: now,
                enqueued_at: (!delayed).then_some(now),
                started_at: None,
                finished_at: None,
                worker: None,
                result: None,
                error: None,
            };
            st.jobs.insert(
                id.clone(),
                Stored {
                    job,
                    expires_at: None,
                },
            );
            let queue = st.queues.entry(spec.queue.clone()).or_default();
            queue.enqueued += 1;
            if delayed {
                queue.scheduled.insert((run_at, id.clone()));
            } else {
                st.push_ready(&spec.queue, spec.priority, id.clone(), false);
            }
            out.push(Enqueued {
                id,
                duplicate: false,
            });
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        queue_name: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> EngineResult<Vec<Job>> {
        validate_queue_name(queue_name).map_err(EngineError::Invalid)?;
        let now = now_ms();
        let mut st = self.state.lock();
        promote_locked(&mut st, queue_name, max.max(100), now);
        let Some(queue) = st.queues.get(queue_name) else {
            return Ok(Vec::new());
        };
        let mut want = max;
        if queue.limits.max_concurrency > 0 {
            let free = queue
                .limits
                .max_concurrency
                .saturating_sub(queue.inflight.len() as u64);
            want = want.min(free as usize);
        }
        let expiry = now + ms(lease);
        let State { jobs, queues, .. } = &mut *st;
        let queue = queues.entry(queue_name.to_string()).or_default();
        let mut out = Vec::new();
        while out.len() < want {
            let Some(mut entry) = queue.ready.first_entry() else {
                break;
            };
            let Some(id) = entry.get_mut().pop_front() else {
                entry.remove();
                continue;
            };
            let Some(stored) = jobs.get_mut(&id) else {
                continue;
            };
            if stored.expires_at.is_some_and(|t| t <= now) || stored.job.state != JobState::Queued {
                continue;
            }
            let job = &mut stored.job;
            job.state = JobState::Running;
            job.attempts += 1;
            job.started_at = Some(now);
            job.worker = Some(worker.to_string());
            out.push(job.clone());
            queue.inflight.insert(id, expiry);
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        queue: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> EngineResult<Vec<String>> {
        let now = now_ms();
        let mut st = self.state.lock();
        let mut lost = Vec::new();
        for l in leases {
            let owned = st
                .live_job(&l.id, now)
                .is_some_and(|j| j.state == JobState::Running && j.attempts == l.attempt);
            if owned {
                st.queues
                    .entry(queue.to_string())
                    .or_default()
                    .inflight
                    .insert(l.id.clone(), now + ms(lease));
            } else {
                lost.push(l.id.clone());
            }
        }
        Ok(lost)
    }

    async fn complete(&self, queue_name: &str, results: &[Completion]) -> EngineResult<usize> {
        let now = now_ms();
        let mut st = self.state.lock();
        let mut applied = 0;
        for c in results {
            let Some(job) = st.live_job(&c.lease.id, now) else {
                continue;
            };
            if job.state != JobState::Running || job.attempts != c.lease.attempt {
                continue;
            }
            applied += 1;
            let (attempts, max) = (job.attempts, job.max_attempts);
            match &c.outcome {
                Outcome::Succeeded(result) => {
                    job.result = result.clone();
                    job.error = None;
                    st.queues.entry(queue_name.into()).or_default().succeeded += 1;
                    st.finish(&c.lease.id, JobState::Succeeded, now, &self.config);
                }
                Outcome::Failed { error, backoff } if attempts < max => {
                    let at = now + ms(*backoff);
                    job.error = Some(error.clone());
                    job.state = JobState::Retrying;
                    job.run_at = Some(at);
                    let queue = st.queues.entry(queue_name.into()).or_default();
                    queue.failed += 1;
                    queue.inflight.remove(&c.lease.id);
                    queue.scheduled.insert((at, c.lease.id.clone()));
                }
                Outcome::Failed { error, .. } | Outcome::Fatal(error) => {
                    job.error = Some(error.clone());
                    st.queues.entry(queue_name.into()).or_default().failed += 1;
                    st.finish(&c.lease.id, JobState::Dead, now, &self.config);
                }
            }
        }
        Ok(applied)
    }

    async fn release(&self, queue: &str, leases: &[Lease]) -> EngineResult<usize> {
        let now = now_ms();
        let mut st = self.state.lock();
        let mut n = 0;
        for l in leases {
            let Some(job) = st.live_job(&l.id, now) else {
                continue;
            };
            if job.state != JobState::Running || job.attempts != l.attempt {
                continue;
            }
            job.state = JobState::Queued;
            job.attempts -= 1;
            job.enqueued_at = Some(now);
            let priority = job.priority;
            st.queues
                .entry(queue.into())
                .or_default()
                .inflight
                .remove(&l.id);
            st.push_ready(queue, priority, l.id.clone(), true);
            n += 1;
        }
        Ok(n)
    }

    async fn promote(&self, queue: &str, limit: usize) -> EngineResult<usize> {
        let mut st = self.state.lock();
        Ok(promote_locked(&mut st, queue, limit, now_ms()))
    }

    async fn reap(&self, queue_name: &str, limit: usize) -> EngineResult<usize> {
        let now = now_ms();
        let mut st = self.state.lock();
        let Some(queue) = st.queues.get_mut(queue_name) else {
            return Ok(0);
        };
        let expired: Vec<String> = queue
            .inflight
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect();
        // Trim dead jobs past their retention, and finished jobs past theirs.
        let horizon = now - ms(self.config.dead_retention);
        while let Some(first) = queue.dead.first().cloned() {
            if first.0 > horizon {
                break;
            }
            queue.dead.remove(&first);
        }
        st.jobs.retain(|_, s| s.expires_at.is_none_or(|t| t > now));
        let mut n = 0;
        for id in expired {
            st.queues
                .entry(queue_name.into())
                .or_default()
                .inflight
                .remove(&id);
            let Some(job) = st.live_job(&id, now) else {
                continue;
            };
            if job.state != JobState::Running {
                continue;
            }
            n += 1;
            job.error = Some("lease expired: worker lost".into());
            if job.attempts >= job.max_attempts {
                st.finish(&id, JobState::Dead, now, &self.config);
            } else {
                job.state = JobState::Queued;
                job.enqueued_at = Some(now);
                let priority = job.priority;
                st.push_ready(queue_name, priority, id, true);
            }
        }
        Ok(n)
    }

    async fn get(&self, id: &str) -> EngineResult<Option<Job>> {
        let mut st = self.state.lock();
        Ok(st.live_job(id, now_ms()).map(|j| j.clone()))
    }

    async fn cancel(&self, id: &str) -> EngineResult<Option<JobState>> {
        let now = now_ms();
        let mut st = self.state.lock();
        let Some(job) = st.live_job(id, now) else {
            return Ok(None);
        };
        let state = job.state;
        if state.is_final() {
            return Err(EngineError::Conflict {
                id: id.into(),
                state,
                action: "cancel",
            });
        }
        let (queue, run_at) = (job.queue.clone(), job.run_at.unwrap_or(0));
        let q = st.queues.entry(queue).or_default();
        q.scheduled.remove(&(run_at, id.to_string()));
        q.inflight.remove(id);
        st.finish(id, JobState::Cancelled, now, &self.config);
        Ok(Some(JobState::Cancelled))
    }

    async fn retry(&self, id: &str) -> EngineResult<Option<JobState>> {
        let now = now_ms();
        let mut st = self.state.lock();
        let Some(job) = st.live_job(id, now) else {
            return Ok(None);
        };
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return Err(EngineError::Conflict {
                id: id.into(),
                state: job.state,
                action: "retry",
            });
        }
        job.state = JobState::Queued;
        job.attempts = 0;
        job.finished_at = None;
        job.enqueued_at = Some(now);
        let (queue, priority, uk) = (job.queue.clone(), job.priority, job.unique_key.clone());
        if let Some(stored) = st.jobs.get_mut(id) {
            stored.expires_at = None;
        }
        if let Some(key) = uk {
            st.unique
                .entry((queue.clone(), key))
                .or_insert(id.to_string());
        }
        let q = st.queues.entry(queue.clone()).or_default();
        q.dead.retain(|(_, d)| d != id);
        st.push_ready(&queue, priority, id.to_string(), false);
        Ok(Some(JobState::Queued))
    }

    async fn list(&self, filter: &ListFilter) -> EngineResult<Vec<Job>> {
        let now = now_ms();
        let limit = filter.limit.clamp(1, 1000);
        let mut st = self.state.lock();
        let names: Vec<String> = match &filter.queue {
            Some(q) => vec![q.clone()],
            None => st.queues.keys().cloned().collect(),
        };
        let mut ids: Vec<String> = Vec::new();
        for name in names {
            let Some(q) = st.queues.get(&name) else {
                continue;
            };
            let states: Vec<JobState> = match filter.state {
                Some(s) => vec![s],
                None => JobState::ALL.to_vec(),
            };
            for s in states {
                match s {
                    JobState::Running => ids.extend(q.inflight.keys().take(limit).cloned()),
                    JobState::Queued => {
                        ids.extend(q.ready.values().flat_map(|l| l.iter()).take(limit).cloned())
                    }
                    JobState::Scheduled | JobState::Retrying => {
                        ids.extend(q.scheduled.iter().take(limit).map(|(_, id)| id.clone()))
                    }
                    JobState::Dead => {
                        ids.extend(q.dead.iter().rev().take(limit).map(|(_, id)| id.clone()))
                    }
                    JobState::Succeeded | JobState::Cancelled => {
                        ids.extend(q.recent.iter().take(limit).cloned())
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit || !seen.insert(id.clone()) {
                continue;
            }
            if let Some(job) = st.live_job(&id, now) {
                if filter.state.is_none_or(|s| s == job.state) {
                    out.push(job.clone());
                }
            }
        }
        Ok(out)
    }

    async fn queues(&self) -> EngineResult<Vec<QueueStats>> {
        let st = self.state.lock();
        Ok(st
            .queues
            .iter()
            .map(|(name, q)| QueueStats {
                name: name.clone(),
                queued: q.ready.values().map(|l| l.len() as u64).sum(),
                scheduled: q.scheduled.len() as u64,
                running: q.inflight.len() as u64,
                dead: q.dead.len() as u64,
                enqueued_total: q.enqueued,
                succeeded_total: q.succeeded,
                failed_total: q.failed,
                dead_total: q.dead_total,
                max_concurrency: q.limits.max_concurrency,
            })
            .collect())
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> EngineResult<()> {
        validate_queue_name(queue).map_err(EngineError::Invalid)?;
        self.state
            .lock()
            .queues
            .entry(queue.into())
            .or_default()
            .limits = limits.clone();
        Ok(())
    }

    async fn limits(&self, queue: &str) -> EngineResult<QueueLimits> {
        Ok(self
            .state
            .lock()
            .queues
            .get(queue)
            .map(|q| q.limits.clone())
            .unwrap_or_default())
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> EngineResult<()> {
        let until = now_ms() + ms(ttl);
        self.state
            .lock()
            .workers
            .insert(info.id.clone(), (info.clone(), until));
        Ok(())
    }

    async fn unregister_worker(&self, id: &str) -> EngineResult<()> {
        self.state.lock().workers.remove(id);
        Ok(())
    }

    async fn workers(&self) -> EngineResult<Vec<WorkerInfo>> {
        let now = now_ms();
        let mut st = self.state.lock();
        st.workers.retain(|_, (_, until)| *until > now);
        let mut out: Vec<WorkerInfo> = st.workers.values().map(|(w, _)| w.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn put_schedule(&self, schedule: &Schedule) -> EngineResult<()> {
        let mut st = self.state.lock();
        st.schedules.insert(schedule.name.clone(), schedule.clone());
        st.last_fire
            .entry(schedule.name.clone())
            .or_insert(now_ms());
        Ok(())
    }

    async fn schedules(&self) -> EngineResult<Vec<Schedule>> {
        Ok(self.state.lock().schedules.values().cloned().collect())
    }

    async fn delete_schedule(&self, name: &str) -> EngineResult<bool> {
        let mut st = self.state.lock();
        st.last_fire.remove(name);
        Ok(st.schedules.remove(name).is_some())
    }

    async fn acquire_leadership(&self, node: &str, ttl: Duration) -> EngineResult<Option<u64>> {
        let now = now_ms();
        let mut st = self.state.lock();
        match st.leader.clone() {
            Some((holder, token, until)) if until > now => {
                if holder == node {
                    st.leader = Some((holder, token, now + ms(ttl)));
                    Ok(Some(token))
                } else {
                    Ok(None)
                }
            }
            _ => {
                st.fence += 1;
                let token = st.fence;
                st.leader = Some((node.to_string(), token, now + ms(ttl)));
                Ok(Some(token))
            }
        }
    }

    async fn resign_leadership(&self, node: &str) -> EngineResult<()> {
        let mut st = self.state.lock();
        if st.leader.as_ref().is_some_and(|(n, _, _)| n == node) {
            st.leader = None;
        }
        Ok(())
    }

    async fn last_fire(&self, schedule: &str) -> EngineResult<Option<i64>> {
        Ok(self.state.lock().last_fire.get(schedule).copied())
    }

    async fn claim_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<bool> {
        let now = now_ms();
        let mut st = self.state.lock();
        if !is_leader(&st, node, token, now) {
            return Ok(false);
        }
        st.fired.retain(|_, until| *until > now);
        if st.fired.contains_key(&(schedule.to_string(), tick_ms)) {
            return Ok(false);
        }
        st.fired
            .insert((schedule.to_string(), tick_ms), now + 86_400_000);
        let last = st.last_fire.entry(schedule.to_string()).or_insert(tick_ms);
        *last = (*last).max(tick_ms);
        Ok(true)
    }

    async fn skip_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<()> {
        let mut st = self.state.lock();
        if is_leader(&st, node, token, now_ms()) {
            let last = st.last_fire.entry(schedule.to_string()).or_insert(tick_ms);
            *last = (*last).max(tick_ms);
        }
        Ok(())
    }
}

fn is_leader(st: &State, node: &str, token: u64, now: i64) -> bool {
    matches!(&st.leader, Some((n, t, until)) if n == node && *t == token && *until > now)
}

fn promote_locked(st: &mut State, queue_name: &str, limit: usize, now: i64) -> usize {
    let Some(queue) = st.queues.get_mut(queue_name) else {
        return 0;
    };
    let mut due = Vec::new();
    while due.len() < limit {
        match queue.scheduled.first() {
            Some((at, _)) if *at <= now => {
                if let Some(entry) = queue.scheduled.pop_first() {
                    due.push(entry.1);
                }
            }
            _ => break,
        }
    }
    let mut n = 0;
    for id in due {
        let Some(job) = st.live_job(&id, now) else {
            continue;
        };
        if !matches!(job.state, JobState::Scheduled | JobState::Retrying) {
            continue;
        }
        job.state = JobState::Queued;
        job.enqueued_at = Some(now);
        let priority = job.priority;
        st.push_ready(queue_name, priority, id, false);
        n += 1;
    }
    n
}

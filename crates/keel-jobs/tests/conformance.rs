//! One conformance suite, run against both engines: the memory engine and the Redis engine on
//! a private `redis-server`. Every behaviour a user can observe must match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keel_jobs::{
    Completion, Engine, EngineConfig, EngineError, JobSpec, JobState, Lease, ListFilter,
    MemoryEngine, Outcome, QueueLimits, RedisEngine, Schedule, WorkerInfo,
};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;
use serde_json::json;

/// Keeps the Redis server alive as long as the engine is used.
struct Fixture {
    engine: Arc<dyn Engine>,
    _server: Option<RedisServer>,
}

fn memory(config: EngineConfig) -> Fixture {
    Fixture {
        engine: Arc::new(MemoryEngine::new(config)),
        _server: None,
    }
}

async fn redis(config: EngineConfig) -> Fixture {
    let server = RedisServer::start().expect("redis-server");
    let handle = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .expect("connect");
    Fixture {
        engine: Arc::new(RedisEngine::new(handle, config)),
        _server: Some(server),
    }
}

fn lease(job: &keel_jobs::Job) -> Lease {
    Lease {
        id: job.id.clone(),
        attempt: job.attempts,
    }
}

fn ok(job: &keel_jobs::Job) -> Completion {
    Completion {
        lease: lease(job),
        outcome: Outcome::Succeeded(Some(json!({"ok": true}))),
    }
}

fn spec(queue: &str) -> JobSpec {
    JobSpec::new("noop", json!({})).queue(queue)
}

const LEASE: Duration = Duration::from_secs(30);

async fn lifecycle_success(e: Arc<dyn Engine>) {
    let ids = e
        .enqueue(vec![spec("q"), spec("q"), spec("q")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| !i.duplicate));
    let job = e.get(&ids[0].id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    let fetched = e.fetch("q", "w1", 10, LEASE).await.unwrap();
    assert_eq!(fetched.len(), 3);
    let order: Vec<_> = fetched.iter().map(|j| j.id.clone()).collect();
    let expected: Vec<_> = ids.iter().map(|i| i.id.clone()).collect();
    assert_eq!(order, expected, "FIFO within a priority");
    assert!(fetched
        .iter()
        .all(|j| j.attempts == 1 && j.state == JobState::Running));
    assert_eq!(e.fetch("q", "w1", 10, LEASE).await.unwrap().len(), 0);
    let running = e.get(&ids[1].id).await.unwrap().unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.worker.as_deref(), Some("w1"));
    let acks: Vec<_> = fetched.iter().map(ok).collect();
    assert_eq!(e.complete("q", &acks).await.unwrap(), 3);
    let done = e.get(&ids[2].id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(done.finished_at.is_some());
    // Acking twice changes nothing.
    assert_eq!(e.complete("q", &acks).await.unwrap(), 0);
    let stats = e.queues().await.unwrap();
    let q = stats.iter().find(|s| s.name == "q").unwrap();
    assert_eq!(
        (q.queued, q.running, q.enqueued_total, q.succeeded_total),
        (0, 0, 3, 3)
    );
    let listed = e
        .list(&ListFilter {
            queue: Some("q".into()),
            state: Some(JobState::Succeeded),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
}

async fn priorities(e: Arc<dyn Engine>) {
    let mut specs = Vec::new();
    for p in [0, 10, -5, 10] {
        let mut s = spec("p");
        s.priority = p;
        specs.push(s);
    }
    let ids = e.enqueue(specs).await.unwrap();
    let fetched = e.fetch("p", "w", 10, LEASE).await.unwrap();
    let order: Vec<_> = fetched.iter().map(|j| j.id.clone()).collect();
    assert_eq!(
        order,
        vec![
            ids[1].id.clone(),
            ids[3].id.clone(),
            ids[0].id.clone(),
            ids[2].id.clone()
        ]
    );
}

async fn delayed_jobs(e: Arc<dyn Engine>) {
    let mut s = spec("d");
    s.delay_ms = 300;
    let id = e.enqueue(vec![s]).await.unwrap().remove(0).id;
    assert_eq!(
        e.get(&id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    assert!(e.fetch("d", "w", 10, LEASE).await.unwrap().is_empty());
    let mut past = spec("d");
    past.run_at = Some(0);
    let now_id = e.enqueue(vec![past]).await.unwrap().remove(0).id;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(e.promote("d", 100).await.unwrap(), 1);
    let fetched = e.fetch("d", "w", 10, LEASE).await.unwrap();
    let got: Vec<_> = fetched.iter().map(|j| j.id.clone()).collect();
    assert_eq!(got, vec![now_id, id]);
}

async fn retries_then_dead_then_replay(e: Arc<dyn Engine>) {
    let mut s = spec("r");
    s.max_attempts = 2;
    let id = e.enqueue(vec![s]).await.unwrap().remove(0).id;
    let job = e.fetch("r", "w", 1, LEASE).await.unwrap().remove(0);
    let fail = |job: &keel_jobs::Job| Completion {
        lease: lease(job),
        outcome: Outcome::Failed {
            error: "boom".into(),
            backoff: Duration::ZERO,
        },
    };
    assert_eq!(e.complete("r", &[fail(&job)]).await.unwrap(), 1);
    let retrying = e.get(&id).await.unwrap().unwrap();
    assert_eq!(retrying.state, JobState::Retrying);
    assert_eq!(retrying.error.as_deref(), Some("boom"));
    // The fetch promotes due retries itself.
    let job = e.fetch("r", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(job.attempts, 2);
    e.complete("r", &[fail(&job)]).await.unwrap();
    let dead = e.get(&id).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    let dead_list = e
        .list(&ListFilter {
            queue: Some("r".into()),
            state: Some(JobState::Dead),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead_list.len(), 1);
    let stats = e.queues().await.unwrap();
    let q = stats.iter().find(|s| s.name == "r").unwrap();
    assert_eq!((q.dead, q.failed_total, q.dead_total), (1, 2, 1));
    // Replay.
    assert_eq!(e.retry(&id).await.unwrap(), Some(JobState::Queued));
    let again = e.fetch("r", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(again.attempts, 1);
    assert!(matches!(
        e.retry(&id).await,
        Err(EngineError::Conflict { .. })
    ));
    // A fatal failure goes straight to dead.
    e.complete(
        "r",
        &[Completion {
            lease: lease(&again),
            outcome: Outcome::Fatal("bad payload".into()),
        }],
    )
    .await
    .unwrap();
    assert_eq!(e.get(&id).await.unwrap().unwrap().state, JobState::Dead);
}

async fn expired_leases_are_reaped(e: Arc<dyn Engine>) {
    let mut s = spec("l");
    s.max_attempts = 2;
    let id = e.enqueue(vec![s]).await.unwrap().remove(0).id;
    let first = e
        .fetch("l", "w1", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(e.reap("l", 100).await.unwrap(), 1);
    assert_eq!(e.get(&id).await.unwrap().unwrap().state, JobState::Queued);
    // The lost worker's late ack is ignored: its attempt no longer holds the lease.
    assert_eq!(e.complete("l", &[ok(&first)]).await.unwrap(), 0);
    let lost = e.heartbeat("l", &[lease(&first)], LEASE).await.unwrap();
    assert_eq!(lost, vec![id.clone()]);
    let second = e
        .fetch("l", "w2", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.attempts, 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(e.reap("l", 100).await.unwrap(), 1);
    let dead = e.get(&id).await.unwrap().unwrap();
    assert_eq!(
        dead.state,
        JobState::Dead,
        "poison jobs are not retried forever"
    );
}

async fn heartbeats_renew_leases(e: Arc<dyn Engine>) {
    e.enqueue(vec![spec("h")]).await.unwrap();
    let job = e
        .fetch("h", "w", 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);
    let lost = e
        .heartbeat("h", &[lease(&job)], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(lost.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.reap("h", 100).await.unwrap(), 0);
    assert_eq!(e.complete("h", &[ok(&job)]).await.unwrap(), 1);
}

async fn running_in(e: &Arc<dyn Engine>, queue: &str) -> u64 {
    e.queues()
        .await
        .unwrap()
        .iter()
        .find(|s| s.name == queue)
        .map_or(0, |s| s.running)
}

/// A worker dies holding a fetch batch of which it acked a part: the reaper re-queues exactly
/// the unacked jobs, in bounded steps, and the lost worker's late acks are ignored.
async fn partly_acked_expired_batch_is_reaped(e: Arc<dyn Engine>) {
    e.enqueue((0..5).map(|_| spec("pb")).collect())
        .await
        .unwrap();
    let batch = e
        .fetch("pb", "w1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 5);
    assert_eq!(
        e.complete("pb", &[ok(&batch[0]), ok(&batch[3])])
            .await
            .unwrap(),
        2
    );
    assert_eq!(running_in(&e, "pb").await, 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Small steps: a call may see acked members only; the whole batch is found in the end.
    let mut reaped = 0;
    for _ in 0..10 {
        reaped += e.reap("pb", 2).await.unwrap();
    }
    assert_eq!(reaped, 3, "every unacked job of the expired batch");
    assert_eq!(running_in(&e, "pb").await, 0);
    for (i, job) in batch.iter().enumerate() {
        let state = e.get(&job.id).await.unwrap().unwrap().state;
        let expected = if i == 0 || i == 3 {
            JobState::Succeeded
        } else {
            JobState::Queued
        };
        assert_eq!(state, expected, "job {i}");
    }
    let done = e.get(&batch[0].id).await.unwrap().unwrap();
    assert_eq!((done.attempts, done.worker.as_deref()), (1, Some("w1")));
    assert_eq!(done.started_at, batch[0].started_at);
    let unacked = [&batch[1], &batch[2], &batch[4]];
    let late: Vec<Completion> = unacked.iter().map(|j| ok(j)).collect();
    assert_eq!(e.complete("pb", &late).await.unwrap(), 0, "late acks");
    let leases: Vec<Lease> = unacked.iter().map(|j| lease(j)).collect();
    let mut lost = e.heartbeat("pb", &leases, LEASE).await.unwrap();
    lost.sort();
    let mut expected: Vec<String> = unacked.iter().map(|j| j.id.clone()).collect();
    expected.sort();
    assert_eq!(lost, expected, "the lost worker learns it lost them");
    let again = e.fetch("pb", "w2", 10, LEASE).await.unwrap();
    let mut again_ids: Vec<String> = again.iter().map(|j| j.id.clone()).collect();
    again_ids.sort();
    assert_eq!(again_ids, expected);
    assert!(again.iter().all(|j| j.attempts == 2));
    let acks: Vec<Completion> = again.iter().map(ok).collect();
    assert_eq!(e.complete("pb", &acks).await.unwrap(), 3);
    assert_eq!(e.reap("pb", 100).await.unwrap(), 0);
    let stats = e.queues().await.unwrap();
    let stats = stats.iter().find(|s| s.name == "pb").unwrap();
    assert_eq!((stats.succeeded_total, stats.running), (5, 0));
}

/// Heartbeats renew every lease of a fetch batch still held and report the ones lost.
async fn heartbeat_renews_a_batch(e: Arc<dyn Engine>) {
    e.enqueue((0..4).map(|_| spec("hb")).collect())
        .await
        .unwrap();
    let batch = e
        .fetch("hb", "w", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(batch.len(), 4);
    assert_eq!(e.complete("hb", &[ok(&batch[0])]).await.unwrap(), 1);
    assert_eq!(
        e.cancel(&batch[1].id).await.unwrap(),
        Some(JobState::Cancelled)
    );
    let leases: Vec<Lease> = batch[1..].iter().map(lease).collect();
    let lost = e
        .heartbeat("hb", &leases, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lost, vec![batch[1].id.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        e.reap("hb", 100).await.unwrap(),
        0,
        "renewed past the first lease"
    );
    assert_eq!(running_in(&e, "hb").await, 2);
    assert_eq!(
        e.complete("hb", &[ok(&batch[2]), ok(&batch[3])])
            .await
            .unwrap(),
        2
    );
    assert_eq!(running_in(&e, "hb").await, 0);
    assert_eq!(
        e.get(&batch[1].id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
}

async fn cancel_queued_running_and_finished(e: Arc<dyn Engine>) {
    let ids = e
        .enqueue(vec![spec("c"), spec("c"), spec("c")])
        .await
        .unwrap();
    assert_eq!(
        e.cancel(&ids[0].id).await.unwrap(),
        Some(JobState::Cancelled)
    );
    let running = e.fetch("c", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(
        running.id, ids[1].id,
        "a cancelled queued job is never fetched"
    );
    assert_eq!(
        e.cancel(&running.id).await.unwrap(),
        Some(JobState::Cancelled)
    );
    let lost = e.heartbeat("c", &[lease(&running)], LEASE).await.unwrap();
    assert_eq!(
        lost,
        vec![running.id.clone()],
        "the worker learns of the cancel"
    );
    assert_eq!(e.complete("c", &[ok(&running)]).await.unwrap(), 0);
    assert_eq!(
        e.get(&running.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(matches!(
        e.cancel(&running.id).await,
        Err(EngineError::Conflict { .. })
    ));
    let mut delayed = spec("c");
    delayed.delay_ms = 60_000;
    let d = e.enqueue(vec![delayed]).await.unwrap().remove(0).id;
    assert_eq!(e.cancel(&d).await.unwrap(), Some(JobState::Cancelled));
    assert_eq!(e.cancel("01ARZ3NDEKTSV4RRFFQ69G5FAV").await.unwrap(), None);
    // Cancelled jobs can be replayed.
    assert_eq!(e.retry(&d).await.unwrap(), Some(JobState::Queued));
}

async fn cancel_then_replay_of_a_queued_job_runs_it_once(e: Arc<dyn Engine>) {
    let ids = e
        .enqueue(vec![spec("cr"), spec("cr"), spec("cr")])
        .await
        .unwrap();
    assert_eq!(
        e.cancel(&ids[0].id).await.unwrap(),
        Some(JobState::Cancelled)
    );
    assert_eq!(
        e.cancel(&ids[2].id).await.unwrap(),
        Some(JobState::Cancelled)
    );
    assert_eq!(e.retry(&ids[0].id).await.unwrap(), Some(JobState::Queued));
    let fetched = e.fetch("cr", "w", 10, LEASE).await.unwrap();
    let mut got: Vec<_> = fetched.iter().map(|j| j.id.clone()).collect();
    got.sort();
    let mut want = vec![ids[0].id.clone(), ids[1].id.clone()];
    want.sort();
    assert_eq!(got, want, "the replayed job once, the cancelled one never");
    assert!(fetched.iter().all(|j| j.attempts == 1));
    assert!(e.fetch("cr", "w", 10, LEASE).await.unwrap().is_empty());
    let acks: Vec<_> = fetched.iter().map(ok).collect();
    assert_eq!(e.complete("cr", &acks).await.unwrap(), 2);
    // Later jobs flow as usual, with their stored fields intact.
    let later = e.enqueue(vec![spec("cr")]).await.unwrap().remove(0).id;
    let queued = e.get(&later).await.unwrap().unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.enqueued_at, Some(queued.created_at));
    assert_eq!(queued.run_at, Some(queued.created_at));
    // A run_at in the past runs at once and keeps the run_at it was given.
    let mut past = spec("cr");
    past.run_at = Some(queued.created_at - 5000);
    let past = e.enqueue(vec![past]).await.unwrap().remove(0).id;
    let stored = e.get(&past).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.run_at, Some(queued.created_at - 5000));
    let job = e.fetch("cr", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!((job.id.as_str(), job.attempts), (later.as_str(), 1));
    let past_job = e.fetch("cr", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(past_job.id, past);
    assert_eq!(past_job.run_at, Some(queued.created_at - 5000));
    assert_eq!(job.enqueued_at, Some(queued.created_at));
    let running = e.get(&later).await.unwrap().unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.worker.as_deref(), Some("w"));
    let listed = e
        .list(&ListFilter {
            queue: Some("cr".into()),
            state: Some(JobState::Running),
            limit: 10,
        })
        .await
        .unwrap();
    let mut listed: Vec<_> = listed.into_iter().map(|j| j.id).collect();
    listed.sort();
    let mut want = vec![later, past];
    want.sort();
    assert_eq!(listed, want);
}

async fn unique_keys(e: Arc<dyn Engine>) {
    let mut s = spec("u");
    s.unique_key = Some("report-42".into());
    let first = e.enqueue(vec![s.clone()]).await.unwrap().remove(0);
    let second = e.enqueue(vec![s.clone()]).await.unwrap().remove(0);
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.id, second.id);
    let job = e.fetch("u", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(
        e.enqueue(vec![s.clone()]).await.unwrap().remove(0).id,
        first.id,
        "still live while running"
    );
    e.complete("u", &[ok(&job)]).await.unwrap();
    let third = e.enqueue(vec![s]).await.unwrap().remove(0);
    assert!(!third.duplicate);
    assert_ne!(third.id, first.id, "finished jobs release their key");
}

async fn release_hands_back_without_counting(e: Arc<dyn Engine>) {
    let ids = e.enqueue(vec![spec("rel"), spec("rel")]).await.unwrap();
    let job = e.fetch("rel", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(e.release("rel", &[lease(&job)]).await.unwrap(), 1);
    let back = e.get(&ids[0].id).await.unwrap().unwrap();
    assert_eq!((back.state, back.attempts), (JobState::Queued, 0));
    let again = e.fetch("rel", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(again.id, ids[0].id, "handed-back jobs go to the front");
    assert_eq!(again.attempts, 1);
}

/// One enqueue call fetched in parts (the Redis engine stores it as one chunk): depths, listing,
/// states, a cancel in the middle and a failure all behave as for jobs enqueued one by one.
async fn a_batch_fetched_in_parts(e: Arc<dyn Engine>) {
    let ids: Vec<String> = e
        .enqueue((0..10).map(|_| spec("parts")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let depth = |e: Arc<dyn Engine>| async move {
        let stats = e.queues().await.unwrap();
        let q = stats.iter().find(|s| s.name == "parts").unwrap().clone();
        (q.queued, q.running, q.succeeded_total)
    };
    assert_eq!(depth(e.clone()).await, (10, 0, 0));
    let first = e.fetch("parts", "w", 4, LEASE).await.unwrap();
    let got: Vec<String> = first.iter().map(|j| j.id.clone()).collect();
    assert_eq!(got, ids[..4].to_vec(), "FIFO, the first four");
    assert_eq!(depth(e.clone()).await, (6, 4, 0));
    let queued: Vec<String> = e
        .list(&ListFilter {
            queue: Some("parts".into()),
            state: Some(JobState::Queued),
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, ids[4..].to_vec());
    let waiting = e.get(&ids[5]).await.unwrap().unwrap();
    assert_eq!((waiting.state, waiting.attempts), (JobState::Queued, 0));
    let running = e.get(&ids[2]).await.unwrap().unwrap();
    assert_eq!(
        (running.state, running.worker.as_deref()),
        (JobState::Running, Some("w"))
    );
    assert_eq!(e.cancel(&ids[5]).await.unwrap(), Some(JobState::Cancelled));
    let rest = e.fetch("parts", "w2", 100, LEASE).await.unwrap();
    let got: Vec<String> = rest.iter().map(|j| j.id.clone()).collect();
    let mut expected = vec![ids[4].clone()];
    expected.extend_from_slice(&ids[6..]);
    assert_eq!(got, expected, "the cancelled job is skipped");
    // One failure (retried at once), the rest succeed.
    let failed = Completion {
        lease: lease(&first[0]),
        outcome: Outcome::Failed {
            error: "boom".into(),
            backoff: Duration::ZERO,
        },
    };
    let mut acks = vec![failed];
    acks.extend(first[1..].iter().map(ok));
    // Plain successes (no result): the common case.
    acks.extend(rest.iter().map(|j| Completion {
        lease: lease(j),
        outcome: Outcome::Succeeded(None),
    }));
    // The same ack twice in one call counts once.
    acks.push(acks[acks.len() - 1].clone());
    assert_eq!(e.complete("parts", &acks).await.unwrap(), 9);
    assert_eq!(
        e.complete("parts", &acks[1..]).await.unwrap(),
        0,
        "acked once"
    );
    let plain = e.get(&ids[7]).await.unwrap().unwrap();
    assert_eq!(
        (plain.state, plain.worker.as_deref(), plain.result),
        (JobState::Succeeded, Some("w2"), None)
    );
    assert!(plain.finished_at.is_some() && plain.started_at.is_some());
    assert_eq!(e.cancel(&ids[7]).await.map_err(|_| ()), Err(()), "finished");
    let succeeded: Vec<String> = e
        .list(&ListFilter {
            queue: Some("parts".into()),
            state: Some(JobState::Succeeded),
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(
        succeeded.contains(&ids[7]) && succeeded.contains(&ids[1]),
        "plain and result successes are listed: {succeeded:?}"
    );
    let with_result = e.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(with_result.result, Some(json!({"ok": true})));
    assert_eq!(depth(e.clone()).await.2, 8);
    let retried = e.fetch("parts", "w", 10, LEASE).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].id.as_str(), retried[0].attempts),
        (ids[0].as_str(), 2)
    );
    assert_eq!(e.complete("parts", &[ok(&retried[0])]).await.unwrap(), 1);
    for (i, id) in ids.iter().enumerate() {
        let job = e.get(id).await.unwrap().unwrap();
        let want = if i == 5 {
            JobState::Cancelled
        } else {
            JobState::Succeeded
        };
        assert_eq!(job.state, want, "job {i}");
    }
    assert_eq!(depth(e.clone()).await, (0, 0, 9));
}

/// A big batch whose lease expired after a few acks is reaped in bounded steps: every job not
/// acked comes back once, none is lost.
async fn a_big_expired_batch_is_reaped_in_steps(e: Arc<dyn Engine>) {
    e.enqueue((0..300).map(|_| spec("bigreap")).collect())
        .await
        .unwrap();
    let batch = e
        .fetch("bigreap", "w", 300, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 300);
    let acks: Vec<_> = batch[..10].iter().map(ok).collect();
    assert_eq!(e.complete("bigreap", &acks).await.unwrap(), 10);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut reaped = 0;
    for _ in 0..20 {
        let n = e.reap("bigreap", 100).await.unwrap();
        assert!(n <= 100, "one step reaps at most its limit: {n}");
        reaped += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(reaped, 290);
    let again = e.fetch("bigreap", "w2", 1000, LEASE).await.unwrap();
    assert_eq!(again.len(), 290);
    assert!(again.iter().all(|j| j.attempts == 2));
    let mut ids: Vec<_> = again.iter().map(|j| j.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 290);
    let stats = e.queues().await.unwrap();
    let q = stats.iter().find(|s| s.name == "bigreap").unwrap();
    assert_eq!((q.queued, q.running), (0, 290));
}

/// Concurrent callers: eight tasks fetch pieces of the same batches in odd sizes and ack them
/// (some plain, some with a result) while the others fetch: every job runs exactly once, and the
/// counters add up.
async fn concurrent_fetchers_and_ackers_share_nothing(e: Arc<dyn Engine>) {
    let mut ids = std::collections::HashSet::new();
    for _ in 0..4 {
        for i in e
            .enqueue((0..500).map(|_| spec("conc")).collect())
            .await
            .unwrap()
        {
            ids.insert(i.id);
        }
    }
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut round = 0usize;
            loop {
                let max = 7 + (t * 13 + round * 29) % 60;
                round += 1;
                let batch = e.fetch("conc", &format!("w{t}"), max, LEASE).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                let acks: Vec<_> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, j)| {
                        if i % 3 == 0 {
                            ok(j)
                        } else {
                            Completion {
                                lease: lease(j),
                                outcome: Outcome::Succeeded(None),
                            }
                        }
                    })
                    .collect();
                assert_eq!(e.complete("conc", &acks).await.unwrap(), batch.len());
                mine.extend(batch.into_iter().map(|j| j.id));
            }
            mine
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id.clone()), "{id} ran twice");
        }
    }
    assert_eq!(seen, ids);
    let stats = e.queues().await.unwrap();
    let q = stats.iter().find(|s| s.name == "conc").unwrap();
    assert_eq!((q.queued, q.running, q.succeeded_total), (0, 0, 2000));
    for id in ids.iter().take(50) {
        assert_eq!(e.get(id).await.unwrap().unwrap().state, JobState::Succeeded);
    }
}

async fn big_batches_lose_nothing(e: Arc<dyn Engine>) {
    let specs: Vec<_> = (0..2500).map(|_| spec("big")).collect();
    let ids = e.enqueue(specs).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    loop {
        let batch = e.fetch("big", "w", 1000, LEASE).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let acks: Vec<_> = batch.iter().map(ok).collect();
        assert_eq!(e.complete("big", &acks).await.unwrap(), batch.len());
        for job in batch {
            assert!(seen.insert(job.id), "fetched twice");
        }
    }
    assert_eq!(seen.len(), 2500);
    assert!(ids.iter().all(|i| seen.contains(&i.id)));
}

async fn finished_jobs_expire(e: Arc<dyn Engine>) {
    let id = e.enqueue(vec![spec("x")]).await.unwrap().remove(0).id;
    let job = e.fetch("x", "w", 1, LEASE).await.unwrap().remove(0);
    e.complete("x", &[ok(&job)]).await.unwrap();
    assert!(e.get(&id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.reap("x", 100).await.unwrap();
    assert!(e.get(&id).await.unwrap().is_none(), "gone after retention");
    // Without a reaper, later acks forget expired jobs as well.
    let id = e.enqueue(vec![spec("x")]).await.unwrap().remove(0).id;
    let job = e.fetch("x", "w", 1, LEASE).await.unwrap().remove(0);
    e.complete("x", &[ok(&job)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = e.enqueue(vec![spec("x")]).await.unwrap().remove(0).id;
    let job = e.fetch("x", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(e.complete("x", &[ok(&job)]).await.unwrap(), 1);
    assert!(e.get(&id).await.unwrap().is_none(), "gone after retention");
    assert_eq!(
        e.get(&later).await.unwrap().unwrap().state,
        JobState::Succeeded,
        "kept within retention"
    );
}

/// Successes acked in one call expire together, and a reaper step smaller than that call
/// forgets part of them and leaves the rest for the next steps.
async fn finished_batches_expire_in_bounded_steps(e: Arc<dyn Engine>) {
    let ids: Vec<_> = e
        .enqueue((0..50).map(|_| spec("fb")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let jobs = e.fetch("fb", "w", 50, LEASE).await.unwrap();
    assert_eq!(jobs.len(), 50);
    let acks: Vec<_> = jobs.iter().map(ok).collect();
    assert_eq!(e.complete("fb", &acks).await.unwrap(), 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = e.enqueue(vec![spec("fb")]).await.unwrap().remove(0).id;
    let job = e.fetch("fb", "w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(e.complete("fb", &[ok(&job)]).await.unwrap(), 1);
    for _ in 0..3 {
        e.reap("fb", 20).await.unwrap();
    }
    for id in &ids {
        assert!(
            e.get(id).await.unwrap().is_none(),
            "{id} gone after retention"
        );
    }
    assert_eq!(
        e.get(&later).await.unwrap().unwrap().state,
        JobState::Succeeded,
        "kept within retention"
    );
}

async fn concurrency_limit(e: Arc<dyn Engine>) {
    let limits = QueueLimits {
        max_concurrency: 2,
        rate_limit: Some(keel_jobs::QueueRate {
            limit: 10,
            period_ms: 1000,
            burst: Some(2),
        }),
    };
    e.set_limits("lim", &limits).await.unwrap();
    assert_eq!(e.limits("lim").await.unwrap(), limits);
    assert_eq!(e.limits("other").await.unwrap(), QueueLimits::default());
    e.enqueue((0..5).map(|_| spec("lim")).collect())
        .await
        .unwrap();
    let first = e.fetch("lim", "w1", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(e.fetch("lim", "w2", 10, LEASE).await.unwrap().is_empty());
    e.complete("lim", &[ok(&first[0])]).await.unwrap();
    assert_eq!(e.fetch("lim", "w2", 10, LEASE).await.unwrap().len(), 1);
    let stats = e.queues().await.unwrap();
    assert_eq!(
        stats
            .iter()
            .find(|s| s.name == "lim")
            .unwrap()
            .max_concurrency,
        2
    );
}

async fn leadership_and_fire_dedup(e: Arc<dyn Engine>) {
    let ttl = Duration::from_millis(300);
    let a = e.acquire_leadership("a", ttl).await.unwrap().unwrap();
    assert_eq!(e.acquire_leadership("b", ttl).await.unwrap(), None);
    assert_eq!(e.acquire_leadership("a", ttl).await.unwrap(), Some(a));
    assert!(e.claim_fire("a", a, "s", 1000).await.unwrap());
    assert!(
        !e.claim_fire("a", a, "s", 1000).await.unwrap(),
        "once per tick"
    );
    assert!(
        !e.claim_fire("b", 99, "s", 2000).await.unwrap(),
        "not leader"
    );
    assert_eq!(e.last_fire("s").await.unwrap(), Some(1000));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = e.acquire_leadership("b", ttl).await.unwrap().unwrap();
    assert!(b > a, "fencing token grows");
    assert!(
        !e.claim_fire("a", a, "s", 2000).await.unwrap(),
        "stale leader"
    );
    assert!(
        !e.claim_fire("b", b, "s", 1000).await.unwrap(),
        "tick already fired"
    );
    e.skip_fire("b", b, "s", 3000).await.unwrap();
    assert_eq!(e.last_fire("s").await.unwrap(), Some(3000));
    e.resign_leadership("b").await.unwrap();
    assert!(e.acquire_leadership("a", ttl).await.unwrap().is_some());
}

async fn workers_and_schedules(e: Arc<dyn Engine>) {
    let info = WorkerInfo {
        id: "w-1".into(),
        queues: vec!["default".into()],
        concurrency: 4,
        running: 1,
        started_at: 1,
        last_seen: 2,
    };
    e.register_worker(&info, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(e.workers().await.unwrap(), vec![info]);
    e.unregister_worker("w-1").await.unwrap();
    assert!(e.workers().await.unwrap().is_empty());
    let schedule = Schedule {
        name: "nightly".into(),
        cron: "0 3 * * *".into(),
        timezone: "Europe/Paris".into(),
        missed: keel_jobs::MissedPolicy::Once,
        job: spec("default"),
    };
    e.put_schedule(&schedule).await.unwrap();
    assert_eq!(e.schedules().await.unwrap(), vec![schedule]);
    assert!(e.last_fire("nightly").await.unwrap().is_some());
    assert!(e.delete_schedule("nightly").await.unwrap());
    assert!(!e.delete_schedule("nightly").await.unwrap());
    assert!(e.schedules().await.unwrap().is_empty());
}

async fn invalid_input_is_refused(e: Arc<dyn Engine>) {
    let bad = spec("bad queue");
    assert!(matches!(
        e.enqueue(vec![bad]).await,
        Err(EngineError::Invalid(_))
    ));
    assert!(e.get("not-an-id").await.unwrap().is_none());
}

/// One enqueue call and one ack call that mix every kind of job and outcome: the Redis engine
/// sends them as runs (see enqueue.lua and complete.lua), which must keep the batch's order,
/// the positions of duplicates, and each ack's own outcome.
async fn mixed_batches_keep_order_and_outcomes(e: Arc<dyn Engine>) {
    let with = |priority: i32, unique: Option<&str>, delay_ms: u64| {
        let mut s = spec("mix");
        s.priority = priority;
        s.unique_key = unique.map(str::to_string);
        s.delay_ms = delay_ms;
        s
    };
    let specs = vec![
        with(0, None, 0),       // 0 a: plain
        with(0, Some("k"), 0),  // 1 b: unique
        with(5, None, 0),       // 2 c: plain, higher priority
        with(0, None, 0),       // 3 d: plain
        with(0, Some("k"), 0),  // 4 e: duplicate of b
        with(0, None, 60_000),  // 5 f: delayed
        with(0, None, 0),       // 6 g: plain
        with(5, Some("k2"), 0), // 7 h: unique, higher priority
    ];
    let ids = e.enqueue(specs).await.unwrap();
    let dups: Vec<bool> = ids.iter().map(|x| x.duplicate).collect();
    assert_eq!(
        dups,
        [false, false, false, false, true, false, false, false]
    );
    assert_eq!(ids[4].id, ids[1].id, "a duplicate names the live job");
    let fetched = e.fetch("mix", "w", 20, LEASE).await.unwrap();
    let order: Vec<_> = fetched.iter().map(|j| j.id.clone()).collect();
    let want: Vec<_> = [2, 7, 0, 1, 3, 6]
        .iter()
        .map(|&i| ids[i].id.clone())
        .collect();
    assert_eq!(
        order, want,
        "priority first, then batch order; the delayed job waits"
    );
    let by_id = |i: usize| fetched.iter().find(|j| j.id == ids[i].id).unwrap();
    let plain = |i: usize| Completion {
        lease: lease(by_id(i)),
        outcome: Outcome::Succeeded(None),
    };
    let acks = vec![
        plain(0),
        plain(3),
        Completion {
            lease: lease(by_id(2)),
            outcome: Outcome::Fatal("broken".into()),
        },
        ok(by_id(1)),
        Completion {
            lease: Lease {
                id: ids[6].id.clone(),
                attempt: 7,
            },
            outcome: Outcome::Succeeded(None),
        },
        plain(6),
        Completion {
            lease: lease(by_id(7)),
            outcome: Outcome::Failed {
                error: "again".into(),
                backoff: Duration::from_secs(60),
            },
        },
        plain(0),
    ];
    assert_eq!(
        e.complete("mix", &acks).await.unwrap(),
        6,
        "a stale attempt and a second ack of the same attempt are not applied"
    );
    let state = |i: usize| {
        let e = e.clone();
        let id = ids[i].id.clone();
        async move { e.get(&id).await.unwrap().unwrap() }
    };
    for i in [0, 3, 6] {
        let job = state(i).await;
        assert_eq!(job.state, JobState::Succeeded, "job {i}");
        assert_eq!(job.result, None, "job {i}");
    }
    let b = state(1).await;
    assert_eq!(
        (b.state, b.result),
        (JobState::Succeeded, Some(json!({"ok": true})))
    );
    let c = state(2).await;
    assert_eq!(
        (c.state, c.error.as_deref()),
        (JobState::Dead, Some("broken"))
    );
    let h = state(7).await;
    assert_eq!(
        (h.state, h.error.as_deref()),
        (JobState::Retrying, Some("again"))
    );
    assert_eq!(state(5).await.state, JobState::Scheduled);
}

fn short_retention() -> EngineConfig {
    EngineConfig {
        retention: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

macro_rules! conformance {
    ($($name:ident $(with $config:expr)?),* $(,)?) => {
        mod memory_engine {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut config = EngineConfig::default();
                    $(config = $config;)?
                    let fixture = memory(config);
                    super::$name(fixture.engine.clone()).await;
                }
            )*
        }
        mod redis_engine {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut config = EngineConfig::default();
                    $(config = $config;)?
                    let fixture = redis(config).await;
                    super::$name(fixture.engine.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    lifecycle_success,
    priorities,
    delayed_jobs,
    retries_then_dead_then_replay,
    expired_leases_are_reaped,
    heartbeats_renew_leases,
    partly_acked_expired_batch_is_reaped,
    heartbeat_renews_a_batch,
    cancel_queued_running_and_finished,
    cancel_then_replay_of_a_queued_job_runs_it_once,
    unique_keys,
    release_hands_back_without_counting,
    big_batches_lose_nothing,
    a_batch_fetched_in_parts,
    concurrent_fetchers_and_ackers_share_nothing,
    a_big_expired_batch_is_reaped_in_steps,
    finished_jobs_expire with short_retention(),
    finished_batches_expire_in_bounded_steps with short_retention(),
    concurrency_limit,
    leadership_and_fire_dedup,
    workers_and_schedules,
    invalid_input_is_refused,
    mixed_batches_keep_order_and_outcomes,
);

/// Redis only: a batch's keys are gone once every member is acked, cancelled, handed back or
/// reaped (no lease bookkeeping left behind).
#[tokio::test]
async fn redis_batch_keys_are_forgotten() {
    use keel_redis::redis;
    let fixture = redis(EngineConfig::default()).await;
    let e = fixture.engine.clone();
    let url = fixture._server.as_ref().unwrap().url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let base = "keel:{q:bk}:";
    let leftovers = || {
        let mut conn = conn.clone();
        async move {
            // (Less the hash's sentinel field '', see fetch.lua.)
            let held: Vec<String> = redis::cmd("HKEYS")
                .arg(format!("{base}held"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let held = held.iter().filter(|f| !f.is_empty()).count();
            // Chunk jobs are leased per piece: the chunks with a live piece.
            let pieces: usize = redis::cmd("HLEN")
                .arg(format!("{base}pieces"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let held = held + pieces;
            let leases: u64 = redis::cmd("ZCARD")
                .arg(format!("{base}leases"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let counts: u64 = redis::cmd("HLEN")
                .arg(format!("{base}bcount"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let lists: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{base}batch:*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            (held, leases, counts, lists.len())
        }
    };
    e.enqueue((0..6).map(|_| spec("bk")).collect())
        .await
        .unwrap();
    let first = e.fetch("bk", "w", 3, LEASE).await.unwrap();
    let second = e
        .fetch("bk", "w", 3, Duration::from_millis(100))
        .await
        .unwrap();
    // (The six jobs are one chunk, leased in two pieces.)
    assert_eq!(leftovers().await, (1, 2, 2, 2));
    // First batch: acked, cancelled, handed back.
    assert_eq!(e.complete("bk", &[ok(&first[0])]).await.unwrap(), 1);
    e.cancel(&first[1].id).await.unwrap();
    assert_eq!(e.release("bk", &[lease(&first[2])]).await.unwrap(), 1);
    // Second batch: one acked, the rest reaped.
    assert_eq!(e.complete("bk", &[ok(&second[0])]).await.unwrap(), 1);
    assert_eq!(leftovers().await, (1, 1, 1, 1));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(e.reap("bk", 100).await.unwrap(), 2);
    assert_eq!(leftovers().await, (0, 0, 0, 0));
}

/// Redis only: a chunk (one enqueue call's compact jobs) is kept while any of its jobs is
/// unfinished, and expires after the retention once every job succeeded or left it.
#[tokio::test]
async fn redis_settled_chunks_expire() {
    use keel_redis::redis;
    let fixture = redis(EngineConfig::default()).await;
    let e = fixture.engine.clone();
    let url = fixture._server.as_ref().unwrap().url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ids = e
        .enqueue((0..3).map(|_| spec("ck")).collect())
        .await
        .unwrap();
    let key = format!("keel:{{q:ck}}:ck:{}", &ids[0].id[..24]);
    let ttl = |mut conn: redis::aio::MultiplexedConnection, key: String| async move {
        let t: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        t
    };
    assert_eq!(
        ttl(conn.clone(), key.clone()).await,
        -1,
        "kept while queued"
    );
    let jobs = e.fetch("ck", "w", 10, LEASE).await.unwrap();
    e.cancel(&jobs[1].id).await.unwrap();
    assert_eq!(e.complete("ck", &[ok(&jobs[0])]).await.unwrap(), 1);
    assert_eq!(
        ttl(conn.clone(), key.clone()).await,
        -1,
        "kept while one runs"
    );
    assert_eq!(e.complete("ck", &[ok(&jobs[2])]).await.unwrap(), 1);
    let left = ttl(conn.clone(), key.clone()).await;
    assert!(left > 0 && left <= 24 * 3600 * 1000, "expires: {left}");
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// Redis only: a chunk stops taking jobs at about 1 MiB of records, so large payloads spread
/// over several chunks, and every job still runs once.
#[tokio::test]
async fn redis_chunks_are_bounded_in_bytes() {
    let fixture = redis(EngineConfig::default()).await;
    let e = fixture.engine.clone();
    let big = "x".repeat(400_000);
    let ids: Vec<String> = e
        .enqueue(
            (0..6)
                .map(|i| JobSpec::new("noop", json!({"i": i, "pad": big})).queue("bytes"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let chunks: std::collections::HashSet<&str> = ids.iter().map(|id| &id[..24]).collect();
    assert!(chunks.len() >= 2, "6 × 400 kB in one chunk");
    let jobs = e.fetch("bytes", "w", 100, LEASE).await.unwrap();
    let got: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(jobs
        .iter()
        .enumerate()
        .all(|(i, j)| j.payload["i"] == json!(i)));
    let acks: Vec<_> = jobs.iter().map(ok).collect();
    assert_eq!(e.complete("bytes", &acks).await.unwrap(), 6);
}

//! The worker runtime against a real Redis: backlog, shell timeouts and cancels that kill the
//! whole process group, output capture, graceful hand-back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::Shutdown;
use keel_jobs::{
    Engine, EngineConfig, JobSpec, JobState, RedisEngine, Registry, Worker, WorkerConfig,
};
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;
use serde_json::json;

async fn engine(server: &RedisServer) -> Arc<dyn Engine> {
    let handle = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .expect("connect");
    Arc::new(RedisEngine::new(handle, EngineConfig::default()))
}

fn config(queue: &str, concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        queues: vec![(queue.to_string(), 1)],
        concurrency,
        poll_interval: Duration::from_millis(20),
        heartbeat: Duration::from_millis(200),
        grace: Duration::from_millis(300),
        retry_base: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

fn start(
    engine: &Arc<dyn Engine>,
    config: WorkerConfig,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let shutdown = Shutdown::new();
    let worker = Worker::new(engine.clone(), Registry::with_builtin_kinds(), config);
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    (shutdown, handle)
}

/// Polls `check` until it returns true; panics after a generous bound (not a speed assertion).
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn state_of(engine: &Arc<dyn Engine>, id: &str) -> Option<JobState> {
    engine.get(id).await.ok().flatten().map(|j| j.state)
}

/// Gone, or a zombie waiting to be reaped: either way no longer running.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X')
            })
            .unwrap_or(false),
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_20000_is_fully_processed() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let specs: Vec<JobSpec> = (0..20_000)
        .map(|_| JobSpec::new("noop", json!({})).queue("backlog"))
        .collect();
    let ids = engine.enqueue(specs).await.unwrap();
    assert_eq!(ids.len(), 20_000);
    let workers: Vec<_> = (0..3)
        .map(|_| start(&engine, config("backlog", 50)))
        .collect();
    wait_until("the backlog to drain", || async {
        let stats = engine.queues().await.unwrap();
        let q = stats.iter().find(|s| s.name == "backlog").unwrap();
        q.succeeded_total == 20_000
    })
    .await;
    for (shutdown, handle) in workers {
        shutdown.trigger();
        handle.await.unwrap();
    }
    let stats = engine.queues().await.unwrap();
    let q = stats.iter().find(|s| s.name == "backlog").unwrap();
    assert_eq!((q.queued, q.running, q.dead, q.failed_total), (0, 0, 0, 0));
    assert_eq!(q.succeeded_total, 20_000);
    for id in ids.iter().step_by(997) {
        assert_eq!(state_of(&engine, &id.id).await, Some(JobState::Succeeded));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_output_env_and_failure() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let ok = JobSpec::new(
        "shell",
        json!({"script": "echo \"$KEEL_JOB_ID $KEEL_ATTEMPT $GREETING\"; echo oops >&2", "env": {"GREETING": "hi"}}),
    )
    .queue("sh");
    let mut failing = JobSpec::new(
        "shell",
        json!({"argv": ["sh", "-c", "echo broken >&2; exit 3"]}),
    )
    .queue("sh");
    failing.max_attempts = 2;
    let unknown = JobSpec::new("shell", json!({"argv": ["/nonexistent/program"]})).queue("sh");
    let ids = engine.enqueue(vec![ok, failing, unknown]).await.unwrap();
    let (shutdown, handle) = start(&engine, config("sh", 4));
    wait_until("jobs to finish", || async {
        let mut done = true;
        for id in &ids {
            done &= state_of(&engine, &id.id)
                .await
                .is_some_and(|s| s.is_final());
        }
        done
    })
    .await;
    shutdown.trigger();
    handle.await.unwrap();
    let job = engine.get(&ids[0].id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    let result = job.result.unwrap();
    assert_eq!(result["stdout"], json!(format!("{} 1 hi\n", job.id)));
    assert_eq!(result["stderr"], json!("oops\n"));
    let failed = engine.get(&ids[1].id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.attempts), (JobState::Dead, 2));
    assert!(failed.error.unwrap().contains("exit code 3: broken"));
    let unknown = engine.get(&ids[2].id).await.unwrap().unwrap();
    assert_eq!(unknown.state, JobState::Dead);
    assert_eq!(
        unknown.attempts, 1,
        "a program that does not exist is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_then_retries_then_dead() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "sleep 60 & echo $! > {dir}/bg.$KEEL_ATTEMPT; echo $$ > {dir}/sh.$KEEL_ATTEMPT; sleep 60",
        dir = dir.path().display()
    );
    let mut spec = JobSpec::new("shell", json!({"script": script})).queue("slow");
    spec.timeout_ms = 1000;
    spec.max_attempts = 2;
    let id = engine.enqueue(vec![spec]).await.unwrap().remove(0).id;
    let (shutdown, handle) = start(&engine, config("slow", 2));
    wait_until("the job to die", || async {
        state_of(&engine, &id).await == Some(JobState::Dead)
    })
    .await;
    let job = engine.get(&id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 2, "retried once, then dead as configured");
    assert!(job.error.unwrap().contains("timed out"));
    for attempt in 1..=2 {
        for name in ["sh", "bg"] {
            let pid = read_pid(&dir.path().join(format!("{name}.{attempt}")))
                .unwrap_or_else(|| panic!("{name}.{attempt} pid file"));
            wait_until(
                &format!("{name} of attempt {attempt} to be gone"),
                || async move { process_gone(pid) },
            )
            .await;
        }
    }
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_it() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut spec = JobSpec::new(
        "shell",
        json!({"script": format!("echo $$ > {}; exec sleep 60", pidfile.display())}),
    )
    .queue("cancel");
    spec.timeout_ms = 120_000;
    let id = engine.enqueue(vec![spec]).await.unwrap().remove(0).id;
    let (shutdown, handle) = start(&engine, config("cancel", 2));
    wait_until("the job to start", || async {
        read_pid(&pidfile).is_some()
    })
    .await;
    let pid = read_pid(&pidfile).unwrap();
    assert!(!process_gone(pid));
    assert_eq!(engine.cancel(&id).await.unwrap(), Some(JobState::Cancelled));
    wait_until("the cancelled process to be killed", || async {
        process_gone(pid)
    })
    .await;
    assert_eq!(state_of(&engine, &id).await, Some(JobState::Cancelled));
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_unfinished_jobs_back() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let mut spec = JobSpec::new("shell", json!({"argv": ["sleep", "60"]})).queue("grace");
    spec.timeout_ms = 120_000;
    let id = engine.enqueue(vec![spec]).await.unwrap().remove(0).id;
    let (shutdown, handle) = start(&engine, config("grace", 2));
    wait_until("the job to run", || async {
        state_of(&engine, &id).await == Some(JobState::Running)
    })
    .await;
    shutdown.trigger();
    handle.await.unwrap();
    let job = engine.get(&id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    assert!(engine.workers().await.unwrap().is_empty(), "unregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rate_limit_spaces_job_starts_across_workers() {
    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let handle = RedisHandle::connect(&RedisSettings::new(server.url()))
        .await
        .unwrap();
    let limiter = Arc::new(keel_limit::Limiter::redis(
        handle,
        keel_limit::LimiterOptions::default(),
    ));
    // 4 per second, 1 at once: 9 jobs cannot all start in less than 2 seconds, however many
    // workers there are.
    engine
        .set_limits(
            "rated",
            &keel_jobs::QueueLimits {
                max_concurrency: 0,
                rate_limit: Some(keel_jobs::QueueRate {
                    limit: 4,
                    period_ms: 1000,
                    burst: Some(1),
                }),
            },
        )
        .await
        .unwrap();
    let ids = engine
        .enqueue(
            (0..9)
                .map(|_| JobSpec::new("noop", json!({})).queue("rated"))
                .collect(),
        )
        .await
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let shutdown = Shutdown::new();
        let worker = Worker::new(
            engine.clone(),
            Registry::with_builtin_kinds(),
            config("rated", 10),
        )
        .with_limiter(limiter.clone());
        workers.push((shutdown.clone(), tokio::spawn(worker.run(shutdown))));
    }
    wait_until("rated jobs to finish", || async {
        let stats = engine.queues().await.unwrap();
        stats
            .iter()
            .any(|q| q.name == "rated" && q.succeeded_total == 9)
    })
    .await;
    for (shutdown, handle) in workers {
        shutdown.trigger();
        handle.await.unwrap();
    }
    let mut starts = Vec::new();
    for id in &ids {
        let job = engine.get(&id.id).await.unwrap().unwrap();
        assert_eq!(
            job.attempts, 1,
            "rate-limited jobs are handed back without using an attempt"
        );
        starts.push(job.started_at.unwrap());
    }
    starts.sort();
    let span = starts[8] - starts[0];
    println!("9 jobs at 4/s started over {span} ms");
    // 8 intervals of 250 ms = 2 s; allow for the few ms between fetch and admission.
    assert!(
        span >= 1500,
        "the limit was exceeded: 9 starts in {span} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_kind_calls_webhooks_and_checks_the_status() {
    use axum::routing::post;
    let seen: Arc<parking_lot::Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    let job = headers
                        .get("x-keel-job-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    record.lock().push((job, body));
                    (axum::http::StatusCode::ACCEPTED, "thanks")
                }
            }),
        )
        .route(
            "/fail",
            post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = RedisServer::start().unwrap();
    let engine = engine(&server).await;
    let ok = JobSpec::new(
        "http",
        json!({"url": format!("http://{addr}/hook"), "body": {"hello": "world"}, "expect_status": 202}),
    )
    .queue("hooks");
    let mut failing = JobSpec::new(
        "http",
        json!({"url": format!("http://{addr}/fail"), "method": "post"}),
    )
    .queue("hooks");
    failing.max_attempts = 1;
    let ids = engine.enqueue(vec![ok, failing]).await.unwrap();
    let (shutdown, handle) = start(&engine, config("hooks", 2));
    wait_until("webhooks to finish", || async {
        let mut done = true;
        for id in &ids {
            done &= state_of(&engine, &id.id)
                .await
                .is_some_and(|s| s.is_final());
        }
        done
    })
    .await;
    shutdown.trigger();
    handle.await.unwrap();
    let ok = engine.get(&ids[0].id).await.unwrap().unwrap();
    assert_eq!(ok.state, JobState::Succeeded);
    assert_eq!(ok.result.unwrap()["status"], json!(202));
    assert_eq!(
        seen.lock().clone(),
        vec![(ids[0].id.clone(), r#"{"hello":"world"}"#.to_string())]
    );
    let failed = engine.get(&ids[1].id).await.unwrap().unwrap();
    assert_eq!(failed.state, JobState::Dead);
    assert!(failed.error.unwrap().contains("unexpected status 500"));
}

//! The job scheduler as real processes of the built `keel` binary against real Redis:
//! chaos (SIGKILLed worker, Redis restart), cron with three masters and a killed leader,
//! and the `keel job` client against a memory-engine master.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_testkit::{free_port, RedisServer};
use serde_json::{json, Value};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// A `keel` process; SIGKILLed on drop. Its output goes to a log file.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(KEEL)
            .args(args)
            .env("KEEL_LOG", "info")
            .env("KEEL_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn keel");
        Self {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(15);
        format!("--- {} ---\n{}", self.name, lines[start..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn master(name: &str, dir: &Path, redis: &str, port: u16, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["master", "--listen", &listen, "--redis", redis];
    args.extend_from_slice(extra);
    Proc::start(name, dir, &args, &[("KEEL_NODE_ID", name)])
}

fn worker(name: &str, dir: &Path, redis: &str, queues: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--redis",
        redis,
        "--queues",
        queues,
        "--id",
        name,
    ];
    args.extend_from_slice(extra);
    Proc::start(name, dir, &args, &[])
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(port: u16) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{path}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!(
                "{path}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    async fn wait_healthy(&self, procs: &[&Proc]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/healthz").await.is_err() {
            if Instant::now() > deadline {
                let logs: Vec<String> = procs.iter().map(|p| p.log_tail()).collect();
                panic!("master never became healthy\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn queue(&self, name: &str) -> Option<Value> {
        let v = self.get("/v1/queues").await.ok()?;
        v["queues"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == name)
            .cloned()
    }

    /// Polls until the queue's succeeded counter reaches `n` (errors during outages tolerated).
    async fn wait_succeeded(&self, queue: &str, n: u64, procs: &[&Proc]) {
        // 240 s, or longer for a large run (`KEEL_CHAOS_JOBS`): 10 ms per job awaited.
        let deadline = Instant::now() + Duration::from_secs(240).max(Duration::from_millis(n * 10));
        loop {
            if let Some(q) = self.queue(queue).await {
                if q["succeeded_total"].as_u64().unwrap_or(0) >= n {
                    return;
                }
            }
            if Instant::now() > deadline {
                let q = self.queue(queue).await;
                let logs: Vec<String> = procs.iter().map(|p| p.log_tail()).collect();
                panic!(
                    "gave up waiting for {n} succeeded: {q:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_killed_worker_and_redis_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_aof().unwrap();
    let url = redis.url();
    let port = free_port().unwrap();
    let m = master("master", dir.path(), &url, port, &[]);
    let api = Api::new(port);
    api.wait_healthy(&[&m]).await;
    let runs = dir.path().join("runs.log");
    let worker_args = [
        "--concurrency",
        "8",
        "--lease",
        "3s",
        "--heartbeat",
        "500ms",
        "--grace",
        "2s",
        "--retry-base",
        "100ms",
    ];
    let mut w1 = worker("w1", dir.path(), &url, "chaos", &worker_args);
    let w2 = worker("w2", dir.path(), &url, "chaos", &worker_args);
    let w3 = worker("w3", dir.path(), &url, "chaos", &worker_args);

    // 5,000 in CI; the brief's figure is taken by hand with `KEEL_CHAOS_JOBS=100000`.
    let n_jobs: usize = std::env::var("KEEL_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let batches = n_jobs.div_ceil(500);
    let n_jobs = batches * 500;
    let script = format!("echo \"$KEEL_JOB_ID\" >> {}", runs.display());
    let mut ids = Vec::with_capacity(n_jobs);
    for _ in 0..batches {
        let jobs: Vec<Value> = (0..500)
            .map(|_| json!({"queue": "chaos", "kind": "shell", "payload": {"script": script}, "max_attempts": 25}))
            .collect();
        let reply = api
            .post("/v1/jobs/batch", json!({"jobs": jobs}))
            .await
            .unwrap();
        for j in reply["jobs"].as_array().unwrap() {
            ids.push(j["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), n_jobs);

    api.wait_succeeded("chaos", n_jobs as u64 / 5, &[&m, &w1, &w2, &w3])
        .await;
    w1.kill(); // SIGKILL mid-run: its leased jobs come back through the reaper.
    let w4 = worker("w4", dir.path(), &url, "chaos", &worker_args);
    api.wait_succeeded("chaos", n_jobs as u64 / 2, &[&m, &w2, &w3, &w4])
        .await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.start_again().unwrap();
    api.wait_succeeded("chaos", n_jobs as u64, &[&m, &w2, &w3, &w4])
        .await;

    // Every job ends `succeeded`.
    let states: Vec<(String, String)> = futures::stream::iter(ids.clone())
        .map(|id| {
            let api = &api;
            async move {
                let v = api
                    .get(&format!("/v1/jobs/{id}"))
                    .await
                    .unwrap_or(Value::Null);
                (id, v["state"].as_str().unwrap_or("missing").to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let not_succeeded: Vec<_> = states.iter().filter(|(_, s)| s != "succeeded").collect();
    assert!(
        not_succeeded.is_empty(),
        "not succeeded: {:?}",
        &not_succeeded[..not_succeeded.len().min(10)]
    );

    // None lost; count the ones that ran more than once (at-least-once delivery).
    let text = std::fs::read_to_string(&runs).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *counts.entry(line.trim()).or_default() += 1;
    }
    let never: Vec<_> = ids
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(never.is_empty(), "{} jobs never ran", never.len());
    let duplicates = counts.values().filter(|&&c| c > 1).count();
    println!("chaos: {n_jobs} jobs, all succeeded, 0 lost, {duplicates} ran more than once");
    let q = api.queue("chaos").await.unwrap();
    println!("chaos: queue stats {q}");
    assert_eq!(q["succeeded_total"], json!(n_jobs));
    assert_eq!(q["queued"], json!(0));
    assert_eq!(q["running"], json!(0));
    drop((w2, w3, w4, m));
}

fn ticks(jobs: &Value) -> Vec<i64> {
    jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["run_at"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_three_masters_fire_each_tick_once_and_survive_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let opts = ["--leader-ttl", "3s", "--cron-grace", "1s"];
    let mut masters: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| master(&format!("m{}", i + 1), dir.path(), &url, *p, &opts))
        .collect();
    for p in &ports {
        Api::new(*p)
            .wait_healthy(&[&masters[0], &masters[1], &masters[2]])
            .await;
    }
    let api = Api::new(ports[0]);
    for (name, policy) in [("every-second-skip", "skip"), ("every-second-once", "once")] {
        api.post(
            "/v1/schedules",
            json!({"name": name, "cron": "* * * * * *", "timezone": "Europe/Paris", "missed": policy,
                   "job": {"queue": name, "kind": "noop", "payload": {}}}),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let holder = redis.cli(&["GET", "keel:{cron}:leader"]).unwrap();
    let leader = holder.split('|').next().unwrap().to_string();
    let index: usize = leader.trim_start_matches('m').parse::<usize>().unwrap() - 1;
    let killed_at = keel_jobs::model::now_ms();
    masters[index].kill();
    println!("cron: killed leader {leader} ({holder})");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let survivor = Api::new(ports[(index + 1) % 3]);
    for name in ["every-second-skip", "every-second-once"] {
        let _ = reqwest::Client::new()
            .delete(format!("{}/v1/schedules/{name}", survivor.base))
            .send()
            .await;
    }
    let new_holder = redis.cli(&["GET", "keel:{cron}:leader"]).unwrap();
    assert!(
        !new_holder.starts_with(&format!("{leader}|")),
        "leadership moved: {new_holder}"
    );

    let skip = ticks(
        &survivor
            .get("/v1/jobs?queue=every-second-skip&state=queued&limit=1000")
            .await
            .unwrap(),
    );
    let once = ticks(
        &survivor
            .get("/v1/jobs?queue=every-second-once&state=queued&limit=1000")
            .await
            .unwrap(),
    );
    for (name, t) in [("skip", &skip), ("once", &once)] {
        let unique: BTreeSet<_> = t.iter().collect();
        assert_eq!(unique.len(), t.len(), "{name}: a tick fired twice: {t:?}");
        assert!(
            t.iter().all(|tick| tick % 1000 == 0),
            "{name}: ticks on whole seconds"
        );
    }
    let skip: BTreeSet<i64> = skip.into_iter().collect();
    let once: BTreeSet<i64> = once.into_iter().collect();
    let lo = *skip.first().unwrap().max(once.first().unwrap());
    let hi = *skip.last().unwrap().min(once.last().unwrap());
    let skip_in: BTreeSet<i64> = skip.range(lo..=hi).copied().collect();
    let once_in: BTreeSet<i64> = once.range(lo..=hi).copied().collect();
    let all: Vec<i64> = (lo / 1000..=hi / 1000).map(|s| s * 1000).collect();
    let missed: Vec<i64> = all
        .iter()
        .copied()
        .filter(|t| !skip_in.contains(t))
        .collect();
    println!(
        "cron: ticks {}..{} ({} s), skip fired {}, once fired {}, missed during takeover {:?}, first tick after kill {:?} ms later",
        lo, hi, all.len(), skip_in.len(), once_in.len(), missed,
        skip_in.range(killed_at..).next().map(|t| t - killed_at)
    );
    // Before the kill and after the takeover every tick fired once; during the takeover the
    // `skip` schedule dropped missed ticks and the `once` schedule fired exactly one catch-up.
    assert!(
        !missed.is_empty(),
        "the takeover gap (lease 3s) left missed ticks"
    );
    assert!(
        missed.iter().all(|t| *t > killed_at - 2000),
        "ticks were only missed around the kill: {missed:?}"
    );
    assert!(
        skip_in.is_subset(&once_in),
        "once fires every on-time tick too"
    );
    let catch_up: Vec<_> = once_in.difference(&skip_in).collect();
    assert_eq!(
        catch_up.len(),
        1,
        "one catch-up run for the missed ticks: {catch_up:?}"
    );
    assert!(
        skip_in.range(killed_at + 1000..).next().is_some(),
        "ticks resumed after the takeover"
    );
}

fn keel_job(port: u16, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(KEEL)
        .arg("job")
        .arg("--master")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(args)
        .env("KEEL_LOG", "warn")
        .output()
        .expect("keel job");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_cli_against_a_memory_master() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = keel_job(free_port().unwrap(), &["stats"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the master"), "{err}");

    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let m = Proc::start(
        "memory-master",
        dir.path(),
        &[
            "master",
            "--engine",
            "memory",
            "--listen",
            &listen,
            "--workers",
            "2",
        ],
        &[],
    );
    let api = Api::new(port);
    api.wait_healthy(&[&m]).await;
    let (ok, out, err) = keel_job(
        port,
        &["submit", "--", "sh", "-c", "echo hello from $KEEL_JOB_ID"],
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = keel_job(port, &["get", &id, "--json"]);
        assert!(ok);
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["state"] == "succeeded" {
            assert_eq!(v["result"]["stdout"], json!(format!("hello from {id}\n")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job did not succeed: {v}\n{}",
            m.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out, _) = keel_job(port, &["list"]);
    assert!(ok);
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains(&id));
    let (ok, out, _) = keel_job(port, &["stats"]);
    assert!(ok);
    assert!(out.contains("default"), "{out}");
    let (ok, _, err) = keel_job(port, &["cancel", &id]);
    assert!(!ok);
    assert!(err.contains("409"), "{err}");
    let (ok, _, err) = keel_job(port, &["get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigterm_hands_jobs_back_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let port = free_port().unwrap();
    let m = master("master", dir.path(), &url, port, &[]);
    let api = Api::new(port);
    api.wait_healthy(&[&m]).await;
    let mut w = worker("w", dir.path(), &url, "default", &["--grace", "500ms"]);
    let reply = api
        .post(
            "/v1/jobs",
            json!({"kind": "shell", "payload": {"argv": ["sleep", "60"]}, "timeout_ms": 120000}),
        )
        .await
        .unwrap();
    let id = reply["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get(&format!("/v1/jobs/{id}")).await.unwrap()["state"] != "running" {
        assert!(Instant::now() < deadline, "{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.terminate();
    let job = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
    assert_eq!(job["state"], "queued", "{job}\n{}", w.log_tail());
    assert_eq!(job["attempts"], 0);
}

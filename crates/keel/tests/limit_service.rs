//! `keel limit serve` as real processes: two nodes on one Redis stay atomic, rules reload, the
//! proxy forwards or answers 429.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_testkit::{free_port, RedisServer};

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(args: &[&str], envs: &[(&str, &str)]) -> Service {
    let port = free_port().expect("port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .args(["limit", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        command.env(k, v);
    }
    let child = command.spawn().expect("spawn keel");
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{}/readyz", service.base)).send().await {
            if r.status() == 200 {
                return service;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("keel limit serve did not become ready");
}

fn write_rules(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).expect("write rules");
    path.display().to_string()
}

async fn check(client: &reqwest::Client, base: &str, rule: &str, key: &str) -> serde_json::Value {
    client
        .post(format!("{base}/v1/check"))
        .json(&serde_json::json!({"rule": rule, "key": key}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_redis_admit_no_more_than_the_limit() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("dir");
    let rules = write_rules(
        &dir,
        "[[rule]]\nname = \"shared\"\nalgorithm = \"gcra\"\nlimit = 50\nperiod = \"1s\"\nburst = 10\non_redis_error = \"deny\"\n",
    );
    let url = redis.url();
    let args = [
        "--engine",
        "redis",
        "--redis",
        url.as_str(),
        "--rules",
        rules.as_str(),
        "--timeout",
        "2s",
    ];
    let a = start(&args, &[]).await;
    let b = start(&args, &[]).await;
    let allowed = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(3);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (allowed, total) = (allowed.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while started.elapsed() < duration {
                let v = check(&client, &base, "shared", "one-key").await;
                assert_ne!(v["source"], "fallback", "Redis never failed: {v}");
                total.fetch_add(1, Ordering::Relaxed);
                if v["allowed"] == true {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = allowed.load(Ordering::Relaxed);
    let most = 10.0 + 50.0 * elapsed + 1.0;
    println!(
        "two services: admitted {allowed} of {} in {elapsed:.2}s (most {most:.0})",
        total.load(Ordering::Relaxed)
    );
    assert!(
        total.load(Ordering::Relaxed) > allowed * 2,
        "the key must have been over its limit"
    );
    assert!((allowed as f64) <= most, "admitted {allowed} > {most}");
    assert!(
        (allowed as f64) >= 10.0 + 50.0 * (elapsed - 0.5),
        "admitted too few: {allowed}"
    );
}

#[tokio::test]
async fn rules_reload_and_a_bad_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().expect("dir");
    let rules = write_rules(
        &dir,
        "[[rule]]\nname = \"a\"\nalgorithm = \"fixed_window\"\nlimit = 1\nperiod = \"1h\"\n",
    );
    let s = start(
        &[
            "--engine",
            "memory",
            "--rules",
            rules.as_str(),
            "--reload-interval",
            "100ms",
        ],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    assert_eq!(check(&client, &s.base, "a", "k").await["allowed"], true);
    let unknown = client
        .post(format!("{}/v1/check", s.base))
        .json(&serde_json::json!({"rule": "b", "key": "k"}))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );

    write_rules(
        &dir,
        "[[rule]]\nname = \"b\"\nalgorithm = \"token_bucket\"\nlimit = 5\nperiod = \"1s\"\n",
    );
    let mut reloaded = false;
    for _ in 0..100 {
        let r = client
            .post(format!("{}/v1/check", s.base))
            .json(&serde_json::json!({"rule": "b", "key": "k"}))
            .send()
            .await
            .expect("send");
        if r.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "new rule never appeared");
    write_rules(
        &dir,
        "[[rule]]\nname = \"c\"\nalgorithm = \"nope\"\nlimit = 5\nperiod = \"1s\"\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = client
        .post(format!("{}/v1/check", s.base))
        .json(&serde_json::json!({"rule": "b", "key": "k2"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        still.status(),
        200,
        "old rules must stay in force after a bad file"
    );

    let bad = client
        .post(format!("{}/v1/check", s.base))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), 400);
    let batch: serde_json::Value = client
        .post(format!("{}/v1/check/batch", s.base))
        .json(&serde_json::json!([{"rule": "b", "key": "x"}, {"rule": "b", "key": "y", "cost": 2}]))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(batch.as_array().map(Vec::len), Some(2));
    assert_eq!(batch[1]["remaining"], 3);
}

#[tokio::test]
async fn proxy_forwards_then_answers_429() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_addr: SocketAddr = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(
            |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
                let xff = headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                format!("upstream saw {uri} from {xff}")
            },
        );
        axum::serve(upstream, app).await.expect("upstream");
    });
    let dir = tempfile::tempdir().expect("dir");
    let rules = write_rules(
        &dir,
        "[[rule]]\nname = \"api\"\nalgorithm = \"sliding_log\"\nlimit = 2\nperiod = \"1m\"\nmatch = { path_prefix = \"/api\", methods = [\"GET\"] }\nkey = \"ip\"\n",
    );
    let upstream_url = format!("http://{upstream_addr}");
    let s = start(
        &[
            "--engine",
            "memory",
            "--rules",
            rules.as_str(),
            "--upstream",
            upstream_url.as_str(),
        ],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client
            .get(format!("{}/api/items?x=1", s.base))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("ratelimit"));
        let body = r.text().await.expect("body");
        assert!(
            body.contains("upstream saw /api/items?x=1 from 127.0.0.1"),
            "{body}"
        );
    }
    let refused = client
        .get(format!("{}/api/items", s.base))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((60..=66).contains(&retry), "retry-after {retry}");
    // Unmatched paths and methods pass through unlimited.
    for _ in 0..3 {
        assert_eq!(
            client
                .get(format!("{}/other", s.base))
                .send()
                .await
                .expect("send")
                .status(),
            200
        );
        assert_eq!(
            client
                .post(format!("{}/api/items", s.base))
                .send()
                .await
                .expect("send")
                .status(),
            200
        );
    }
}

//! `keel dev` as a user runs it from the README: one process, memory engines, every role
//! answering on its port. Ports are picked by the kernel (`127.0.0.1:0`) and read back from the
//! banner the command prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const GUARD: Duration = Duration::from_secs(30);

/// The address after `scheme://` on the banner line that names `role`.
fn address(banner: &[String], role: &str, scheme: &str) -> String {
    let line = banner
        .iter()
        .find(|l| l.trim_start().starts_with(role))
        .unwrap_or_else(|| panic!("no {role} line in {banner:?}"));
    line.split(scheme)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {scheme} address in {line}"))
        .to_owned()
}

#[tokio::test]
async fn keel_dev_serves_every_role_on_the_memory_engines() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("dev")
        .env("KEEL_DEV_LIMIT_LISTEN", "127.0.0.1:0")
        .env("KEEL_DEV_JOBS_LISTEN", "127.0.0.1:0")
        .env("KEEL_DEV_IRC_LISTEN", "127.0.0.1:0")
        .env("KEEL_DEV_CHAT_HTTP_LISTEN", "127.0.0.1:0")
        // A shell set up for the other roles must not switch `keel dev` to Redis.
        .env("KEEL_REDIS_URL", "redis://127.0.0.1:1")
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        let line = tokio::time::timeout(GUARD, stdout.next_line())
            .await
            .expect("banner in time")
            .unwrap()
            .expect("keel dev exited before its banner");
        banner.push(line);
    }
    assert!(banner[0].contains("memory engines"), "{banner:?}");
    let limit = address(&banner, "rate limiter", "http://");
    let master = address(&banner, "job master", "http://");
    let irc = address(&banner, "chat (IRC)", "irc://");
    let chat_http = address(&banner, "chat (web)", "http://");

    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();

    // Rate limiter: the default rule answers a decision.
    let decision: Value = http
        .post(format!("http://{limit}/v1/check"))
        .json(&json!({"rule": "default", "key": "alice"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(decision["allowed"], json!(true), "{decision}");
    assert!(decision["limit"].as_u64().unwrap() > 0, "{decision}");

    // Job master with its in-process workers: a shell job runs to `succeeded`.
    let created = http
        .post(format!("http://{master}/v1/jobs"))
        .json(&json!({"kind": "shell", "payload": {"argv": ["true"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let job: Value = http
            .get(format!("http://{master}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["state"] == json!("succeeded") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "job stuck: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Chat: IRC registration, and the web side's health.
    let stream = tokio::net::TcpStream::connect(&irc).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(b"NICK dev\r\nUSER dev 0 * :Dev\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(r).lines();
    let welcome = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(welcome.contains(" 001 dev "), "{welcome}");
    for base in [&limit, &master, &chat_http] {
        let status = http
            .get(format!("http://{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{base}/readyz");
    }
}

//! `keel chat serve` as a process on the memory engine: flags and the IRC port. Several nodes
//! on Redis: `chat_cluster.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const GUARD: Duration = Duration::from_secs(20);

#[tokio::test]
async fn chat_serve_answers_irc_with_its_server_name() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "chat",
            "serve",
            "--engine",
            "memory",
            "--irc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--server-name",
            "cli.test",
            "--ping-interval",
            "5s",
            "--ping-timeout",
            "5s",
        ])
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let banner = tokio::time::timeout(GUARD, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // "keel chat: IRC on 127.0.0.1:PORT, HTTP on ..."
    let irc = banner
        .split("IRC on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&irc).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(b"NICK cli\r\nUSER cli 0 * :Cli\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(r).lines();
    let welcome = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(welcome.starts_with(":cli.test 001 cli "), "{welcome}");
}

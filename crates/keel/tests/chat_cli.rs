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

/// Two `keel chat serve` processes on one IRC port (SO_REUSEPORT, on by default): both start,
/// and clients on that port are served by both.
#[tokio::test]
async fn two_chat_processes_share_one_irc_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let irc = format!("127.0.0.1:{port}");
    let mut children = Vec::new();
    for name in ["one.keel", "two.keel"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["chat", "serve", "--engine", "memory", "--irc-listen", &irc])
            .args(["--http-listen", "127.0.0.1:0", "--server-name", name])
            .args(["--listen-backlog", "1024"])
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The banner is printed once the listener is bound.
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let banner = tokio::time::timeout(GUARD, stderr.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(banner.contains(&format!("IRC on {irc}")), "{banner}");
        children.push(child);
    }
    let mut servers = std::collections::HashSet::new();
    let mut streams = Vec::new();
    for i in 0..64u8 {
        // One source address per connection: the per-address accept limit stays out of it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 2, i + 1], 0)))
            .unwrap();
        let stream = socket.connect(irc.parse().unwrap()).await.unwrap();
        let (r, mut w) = stream.into_split();
        w.write_all(format!("NICK p{i}\r\nUSER p 0 * :P\r\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        let welcome = tokio::time::timeout(GUARD, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(welcome.contains(" 001 "), "{welcome}");
        servers.insert(welcome.split(' ').next().unwrap().to_owned());
        streams.push((lines, w));
    }
    // 64 connections over two listeners: both got some (the odds of not are 2^-63).
    assert_eq!(servers.len(), 2, "{servers:?}");
    for child in &mut children {
        assert!(child.try_wait().unwrap().is_none(), "a server exited");
    }
}

//! Test kit: a chat server in-process on port 0, and a line-oriented IRC test client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keel_chat::{ChatServer, Config, MemoryEngine};
use keel_core::Shutdown;
use keel_irc_proto::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Guard against hangs; never an assertion about speed.
pub const GUARD: Duration = Duration::from_secs(15);

pub struct TestServer {
    pub irc: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: Shutdown,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A config for tests: flood control off unless a test turns it on.
pub fn test_config() -> Config {
    let mut c = Config {
        server_name: "test.keel".into(),
        ..Config::default()
    };
    c.limits.commands_per_sec = 0.0;
    c.limits.accepts_per_sec = 0.0;
    c.limits.accepts_per_ip_per_sec = 0.0;
    c
}

pub async fn start(config: Config) -> TestServer {
    let irc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::new();
    let engine = MemoryEngine::new(config.history_max, config.history_age);
    let server = ChatServer::start(config, engine, irc, Some(http), shutdown.clone())
        .await
        .unwrap();
    let (irc, http) = (server.irc_addr(), server.http_addr().unwrap());
    tokio::spawn(server.wait());
    TestServer {
        irc,
        http,
        shutdown,
    }
}

pub struct Client {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub nick: String,
    /// Every line received, for failure messages.
    pub seen: Vec<String>,
    pub answer_pings: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            nick: String::new(),
            seen: Vec::new(),
            answer_pings: true,
        }
    }

    /// Connects with a 4 KiB receive buffer (a slow reader), registers without CAP.
    pub async fn register_small_buffer(addr: SocketAddr, nick: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
            nick: nick.to_owned(),
            seen: Vec::new(),
            answer_pings: true,
        };
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :Test {nick}")).await;
        c.expect(|m| m.command == "376" || m.command == "422").await;
        c
    }

    /// Connects and registers without CAP; waits for the end of the MOTD.
    pub async fn register(addr: SocketAddr, nick: &str) -> Client {
        Self::register_with_caps(addr, nick, &[]).await
    }

    /// Connects, negotiates `caps` (if any) and registers.
    pub async fn register_with_caps(addr: SocketAddr, nick: &str, caps: &[&str]) -> Client {
        let mut c = Client::connect(addr).await;
        c.nick = nick.to_owned();
        if !caps.is_empty() {
            c.send("CAP LS 302").await;
            c.send(&format!("CAP REQ :{}", caps.join(" "))).await;
        }
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :Test {nick}")).await;
        if !caps.is_empty() {
            c.expect(|m| m.command == "CAP" && m.param(1) == Some("ACK"))
                .await;
            c.send("CAP END").await;
        }
        c.expect(|m| m.command == "376" || m.command == "422").await;
        c
    }

    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line, or None at end of stream.
    pub async fn next_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(GUARD, self.reader.read_until(b'\n', &mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no line within the guard; saw {:#?}",
                    self.nick, self.seen
                )
            })
            .ok()?;
        if n == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads until a message matches; answers PINGs on the way.
    pub async fn expect<F: Fn(&Message) -> bool>(&mut self, pred: F) -> Message {
        loop {
            let Some(line) = self.next_line().await else {
                panic!("{}: connection closed; saw {:#?}", self.nick, self.seen);
            };
            let m = Message::parse(line.as_bytes()).unwrap();
            if m.command == "PING" && self.answer_pings {
                let token = m.param(0).unwrap_or("").to_owned();
                self.send(&format!("PONG :{token}")).await;
            }
            if pred(&m) {
                return m;
            }
        }
    }

    /// Reads until the server closes the connection; returns the last ERROR text seen.
    pub async fn expect_closed(&mut self) -> Option<String> {
        let mut error = None;
        while let Some(line) = self.next_line().await {
            if let Ok(m) = Message::parse(line.as_bytes()) {
                if m.command == "ERROR" {
                    error = m.param(0).map(str::to_owned);
                }
            }
        }
        error
    }

    /// Round trip: proves the connection works and everything before it was processed.
    pub async fn sync(&mut self) {
        self.send("PING :sync").await;
        self.expect(|m| m.command == "PONG" && m.param(1) == Some("sync"))
            .await;
    }
}

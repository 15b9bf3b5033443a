//! Load processes: `keel bench chat-load` (hidden) holds up to ~15,000 IRC clients, and the
//! parent drives it over stdin/stdout with one JSON object per line.
//!
//! Parent to child: `{"cmd":"join","channel":"#c"}`, `{"cmd":"cut"}` (drop every client; they
//! come back by the reconnect policy), `{"cmd":"report"}`; end of stdin ends the process.
//! Child to parent: `{"event":"status",...}` every 250 ms, `{"event":"report",...}`.
//!
//! Every client reconnects by `keel_chat::reconnect` (full-jitter backoff, never shorter than
//! the server's hint) whenever its connection fails or ends.

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use keel_chat::reconnect::{parse_hint, Backoff, Policy};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{watch, Semaphore};

use super::{source, unix_us};

#[derive(Debug, Args)]
pub struct ChatLoadArgs {
    /// Node addresses; client i connects to nodes[i % len].
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<SocketAddr>,
    /// Global index of the first client (nick c<i>, source address by index).
    #[arg(long)]
    pub first: usize,
    /// Clients in this process.
    #[arg(long)]
    pub count: usize,
    /// Registrations in flight at once on the first connect.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    #[arg(long, default_value = "1s", value_parser = keel_core::parse_duration)]
    pub backoff_base: Duration,
    #[arg(long, default_value = "30s", value_parser = keel_core::parse_duration)]
    pub backoff_cap: Duration,
}

/// What every client of the process watches.
#[derive(Debug, Clone, Default)]
struct Orders {
    channel: Option<String>,
    /// When the JOIN order was given, and how many JOINs per second this process sends
    /// (0: all at once): client k of the process joins k / rate seconds after it.
    join_at: Option<tokio::time::Instant>,
    join_rate: f64,
    /// Bumped by `cut`: clients whose generation is older drop their connection.
    cut: u64,
}

#[derive(Default)]
struct Stats {
    registered: AtomicUsize,
    joined: AtomicUsize,
    /// JOINs the server refused (`FAIL JOIN ...`, e.g. the store timed out).
    join_failed: AtomicUsize,
    registrations: AtomicU64,
    failed_attempts: AtomicU64,
    /// Failed attempts the server answered with a retry hint (paced out, not broken).
    refused_with_hint: AtomicU64,
    disconnects: AtomicU64,
    last_registered_us: AtomicU64,
    last_rx_us: AtomicU64,
    per_node: Vec<AtomicUsize>,
    /// Registration latency (first try to welcome), µs.
    reg_latency: Mutex<Option<Histogram<u64>>>,
    /// Fan-out delivery latency, µs; the largest per message sequence number.
    fan_latency: Mutex<Option<Histogram<u64>>>,
    fan_max: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
    /// Why the first connection that ended (after registering) ended.
    first_disconnect: Mutex<Option<String>>,
}

impl Stats {
    fn record(slot: &Mutex<Option<Histogram<u64>>>, v: u64) {
        let mut h = slot.lock();
        let h = h.get_or_insert_with(keel_bench::report::histogram);
        let _ = h.record(v.clamp(1, 60_000_000));
    }
}

pub async fn chat_load(args: ChatLoadArgs) -> anyhow::Result<ExitCode> {
    let stats = Arc::new(Stats {
        per_node: (0..args.nodes.len()).map(|_| AtomicUsize::new(0)).collect(),
        ..Stats::default()
    });
    let (orders_tx, orders_rx) = watch::channel(Orders::default());
    let policy = Policy {
        base: args.backoff_base,
        cap: args.backoff_cap,
    };
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    for k in 0..args.count {
        let i = args.first + k;
        let node = i % args.nodes.len();
        let c = ClientTask {
            index: i,
            local: k,
            node,
            addr: args.nodes[node],
            stats: stats.clone(),
            orders: orders_rx.clone(),
            policy,
        };
        let gate = gate.clone();
        tokio::spawn(c.run(gate));
    }
    // Status lines while stdin is open; commands from stdin.
    let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    let status = {
        let (stats, out) = (stats.clone(), out.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let line = status_json(&stats).to_string() + "\n";
                if out.lock().await.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        let Ok(cmd) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match cmd["cmd"].as_str() {
            Some("join") => {
                let channel = cmd["channel"].as_str().unwrap_or("#bench").to_owned();
                let rate = cmd["rate"].as_f64().unwrap_or(0.0).max(0.0);
                stats.joined.store(0, Ordering::Relaxed);
                stats.join_failed.store(0, Ordering::Relaxed);
                orders_tx.send_modify(|o| {
                    o.channel = Some(channel);
                    o.join_at = Some(tokio::time::Instant::now());
                    o.join_rate = rate;
                });
            }
            Some("cut") => orders_tx.send_modify(|o| o.cut += 1),
            Some("report") => {
                let line = report_json(&stats).to_string() + "\n";
                let mut out = out.lock().await;
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
            _ => {}
        }
    }
    status.abort();
    Ok(ExitCode::SUCCESS)
}

fn status_json(s: &Stats) -> Value {
    json!({
        "event": "status",
        "registered": s.registered.load(Ordering::Relaxed),
        "joined": s.joined.load(Ordering::Relaxed),
        "join_failed": s.join_failed.load(Ordering::Relaxed),
        "registrations": s.registrations.load(Ordering::Relaxed),
        "failed_attempts": s.failed_attempts.load(Ordering::Relaxed),
        "refused_with_hint": s.refused_with_hint.load(Ordering::Relaxed),
        "disconnects": s.disconnects.load(Ordering::Relaxed),
        "last_registered_us": s.last_registered_us.load(Ordering::Relaxed),
        "last_rx_us": s.last_rx_us.load(Ordering::Relaxed),
        "per_node": s.per_node.iter().map(|n| n.load(Ordering::Relaxed)).collect::<Vec<_>>(),
        "first_error": s.first_error.lock().clone(),
        "first_disconnect": s.first_disconnect.lock().clone(),
    })
}

fn hist_json(h: &Option<Histogram<u64>>) -> Value {
    let pairs: Vec<[u64; 2]> = h
        .iter()
        .flat_map(|h| h.iter_recorded())
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    json!(pairs)
}

fn report_json(s: &Stats) -> Value {
    json!({
        "event": "report",
        "reg_latency": hist_json(&s.reg_latency.lock()),
        "fan_latency": hist_json(&s.fan_latency.lock()),
        "fan_max": s.fan_max.lock().clone(),
    })
}

/// Merges a histogram sent by [`hist_json`].
pub fn merge_hist(into: &mut Histogram<u64>, v: &Value) {
    for pair in v.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = into.record_n(value.max(1), count);
        }
    }
}

struct ClientTask {
    index: usize,
    /// Position in this process (paces the JOINs).
    local: usize,
    node: usize,
    addr: SocketAddr,
    stats: Arc<Stats>,
    orders: watch::Receiver<Orders>,
    policy: Policy,
}

/// Why a connection attempt or a connection ended.
struct Ended {
    error: String,
    hint: Option<Duration>,
}

impl ClientTask {
    async fn run(mut self, gate: Arc<Semaphore>) {
        let mut backoff = Backoff::new(self.policy);
        let mut first = Some(gate);
        let mut nick_try = 0u32;
        loop {
            let permit = match first.as_ref() {
                Some(g) => g.clone().acquire_owned().await.ok(),
                None => None,
            };
            // Registration latency: from the connect to the end of the welcome burst.
            let started = tokio::time::Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(60), self.connect(&mut nick_try))
                .await
                .unwrap_or_else(|_| {
                    Err(Ended {
                        error: "registration timed out".into(),
                        hint: None,
                    })
                });
            drop(permit);
            let stream = match r {
                Ok(s) => s,
                Err(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if e.hint.is_some() {
                        self.stats.refused_with_hint.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stats
                        .first_error
                        .lock()
                        .get_or_insert_with(|| e.error.clone());
                    let unit = rand::rng().random::<f64>();
                    tokio::time::sleep(backoff.next_delay(unit, e.hint)).await;
                    continue;
                }
            };
            first = None;
            backoff.reset();
            Stats::record(
                &self.stats.reg_latency,
                started.elapsed().as_micros() as u64,
            );
            self.stats.registrations.fetch_add(1, Ordering::Relaxed);
            self.stats.registered.fetch_add(1, Ordering::Relaxed);
            self.stats.per_node[self.node].fetch_add(1, Ordering::Relaxed);
            self.stats
                .last_registered_us
                .fetch_max(unix_us(), Ordering::Relaxed);
            let nick = if nick_try == 0 {
                format!("c{}", self.index)
            } else {
                format!("c{}_{nick_try}", self.index)
            };
            let ended = self.connected(stream, &nick).await;
            self.stats.registered.fetch_sub(1, Ordering::Relaxed);
            self.stats.per_node[self.node].fetch_sub(1, Ordering::Relaxed);
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            self.stats
                .first_disconnect
                .lock()
                .get_or_insert_with(|| ended.error.clone());
            // A connection that ended is a failure to back off from, like a refused one.
            let unit = rand::rng().random::<f64>();
            tokio::time::sleep(backoff.next_delay(unit, ended.hint)).await;
        }
    }

    /// Connects from this client's own source address and registers; on 433 tries the next
    /// nick (a restarted node's old claims may linger in Redis until the presence TTL).
    async fn connect(&self, nick_try: &mut u32) -> Result<BufReader<TcpStream>, Ended> {
        let fail = |e: std::io::Error| Ended {
            error: e.to_string(),
            hint: None,
        };
        let socket = TcpSocket::new_v4().map_err(fail)?;
        socket
            .bind(SocketAddr::from((source(self.index), 0)))
            .map_err(fail)?;
        let stream = socket.connect(self.addr).await.map_err(fail)?;
        let _ = stream.set_nodelay(true);
        let mut stream = BufReader::with_capacity(2048, stream);
        let nick = |t: u32| {
            if t == 0 {
                format!("c{}", self.index)
            } else {
                format!("c{}_{t}", self.index)
            }
        };
        // draft/no-implicit-names: no NAMES burst per JOIN; keel.dev/no-membership: no JOIN,
        // PART or QUIT of the other members. A client of a 10,000-member channel that does
        // not track its members wants neither (without the second, N members joining cost
        // N² JOIN lines). Asked for separately, so a server without one still grants the
        // other; a NAK changes nothing.
        let hello = format!(
            "CAP REQ :draft/no-implicit-names\r\nCAP REQ :keel.dev/no-membership\r\nNICK {}\r\nUSER c 0 * :bench\r\nCAP END\r\n",
            nick(*nick_try)
        );
        stream
            .get_mut()
            .write_all(hello.as_bytes())
            .await
            .map_err(fail)?;
        let mut line = Vec::with_capacity(512);
        loop {
            line.clear();
            let n = stream.read_until(b'\n', &mut line).await.map_err(fail)?;
            if n == 0 {
                return Err(Ended {
                    error: "closed during registration".into(),
                    hint: None,
                });
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(token) = text.strip_prefix("PING ") {
                let pong = format!("PONG {}\r\n", token.trim_end());
                stream
                    .get_mut()
                    .write_all(pong.as_bytes())
                    .await
                    .map_err(fail)?;
                continue;
            }
            if text.starts_with("ERROR") {
                return Err(Ended {
                    error: text.trim_end().to_owned(),
                    hint: parse_hint(&text),
                });
            }
            match text.split(' ').nth(1).unwrap_or("") {
                "376" | "422" => return Ok(stream),
                "433" => {
                    *nick_try += 1;
                    if *nick_try > 20 {
                        return Err(Ended {
                            error: "no free nick".into(),
                            hint: None,
                        });
                    }
                    let again = format!("NICK {}\r\n", nick(*nick_try));
                    stream
                        .get_mut()
                        .write_all(again.as_bytes())
                        .await
                        .map_err(fail)?;
                }
                _ => {}
            }
        }
    }

    /// Reads until the connection ends or the parent cuts it; answers PINGs, joins when
    /// told, and records fan-out deliveries.
    async fn connected(&mut self, mut stream: BufReader<TcpStream>, nick: &str) -> Ended {
        let my_join = format!(":{nick}!");
        let my_cut = self.orders.borrow().cut;
        let mut joined: Option<String> = None;
        // A JOIN ordered but not yet due (paced), and when it is due.
        let mut join_due: Option<(String, tokio::time::Instant)> = None;
        // FAIL JOIN replies seen on this connection (each retried, see below).
        let mut join_failures: u32 = 0;
        let mut line = Vec::with_capacity(512);
        // Orders given before this connection (a reconnect) apply at once.
        self.orders.mark_changed();
        loop {
            tokio::select! {
                changed = self.orders.changed() => {
                    if changed.is_err() {
                        return Ended { error: "stopped".into(), hint: None };
                    }
                    let orders = self.orders.borrow_and_update().clone();
                    if orders.cut != my_cut {
                        return Ended { error: "cut".into(), hint: None };
                    }
                    if let Some(c) = orders.channel {
                        if joined.as_deref() != Some(c.as_str()) {
                            let at = join_time(orders.join_at, orders.join_rate, self.local);
                            join_due = Some((c, at));
                        }
                    }
                }
                _ = tokio::time::sleep_until(join_due.as_ref().map_or_else(tokio::time::Instant::now, |d| d.1)), if join_due.is_some() => {
                    if let Some((c, _)) = join_due.take() {
                        let join = format!("JOIN {c}\r\n");
                        if stream.get_mut().write_all(join.as_bytes()).await.is_err() {
                            return Ended { error: "write".into(), hint: None };
                        }
                        joined = Some(c);
                    }
                }
                r = stream.read_until(b'\n', &mut line) => {
                    match r {
                        Ok(0) | Err(_) => return Ended { error: "closed".into(), hint: None },
                        Ok(_) => {}
                    }
                    let now = unix_us();
                    self.stats.last_rx_us.fetch_max(now, Ordering::Relaxed);
                    if line.starts_with(b"PING ") {
                        let mut pong = b"PONG ".to_vec();
                        pong.extend_from_slice(&line[5..]);
                        if stream.get_mut().write_all(&pong).await.is_err() {
                            return Ended { error: "write".into(), hint: None };
                        }
                    } else if line.starts_with(b"ERROR") {
                        let text = String::from_utf8_lossy(&line);
                        return Ended { error: text.trim_end().to_owned(), hint: parse_hint(&text) };
                    } else if let Some((seq, sent)) = fan_message(&line) {
                        let lat = now.saturating_sub(sent);
                        Stats::record(&self.stats.fan_latency, lat);
                        let mut max = self.stats.fan_max.lock();
                        let seq = seq.min(100_000) as usize;
                        if max.len() <= seq {
                            max.resize(seq + 1, 0);
                        }
                        max[seq] = max[seq].max(lat);
                    } else if joined.is_some() && is_own_join(&line, &my_join) {
                        self.stats.joined.fetch_add(1, Ordering::Relaxed);
                    } else if joined.is_some() && is_join_failure(&line) {
                        // `FAIL JOIN TEMPORARILY_UNAVAILABLE`: the node's store call timed out
                        // under the join load; the reply says try again, so the member does,
                        // after a full-jitter backoff (cap 0.5 s doubling per failure, at most
                        // 8 s). `joined` stays set: an echo of the first JOIN, applied late,
                        // still counts, and a repeated JOIN of a joined channel is ignored.
                        self.stats.join_failed.fetch_add(1, Ordering::Relaxed);
                        join_failures += 1;
                        if let Some(c) = joined.clone() {
                            let cap = (500u64 << join_failures.min(4)).min(8_000);
                            let ms = rand::rng().random_range(50..=cap);
                            join_due = Some((
                                c,
                                tokio::time::Instant::now() + Duration::from_millis(ms),
                            ));
                        }
                    }
                    line.clear();
                    if line.capacity() > 4096 {
                        line = Vec::with_capacity(512);
                    }
                }
            }
        }
    }
}

/// When client `local` of a process sends its JOIN: `local / rate` seconds after the order
/// (at once with no rate, or when the order is older than that: a reconnect).
fn join_time(
    ordered: Option<tokio::time::Instant>,
    rate: f64,
    local: usize,
) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match ordered {
        Some(at) if rate > 0.0 && rate.is_finite() => {
            let offset = Duration::from_secs_f64((local as f64 / rate).min(3600.0));
            (at + offset).max(now)
        }
        _ => now,
    }
}

/// `:src PRIVMSG #chan :fan <seq> <unix_us>` → (seq, sent).
pub fn fan_message(line: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.split_once(" PRIVMSG ")?.1;
    let body = rest.split_once(" :fan ")?.1;
    let mut words = body.split_whitespace();
    let seq = words.next()?.parse().ok()?;
    let sent = words.next()?.parse().ok()?;
    Some((seq, sent))
}

/// The server's echo of this client's own JOIN (`:nick!user@host JOIN #chan`).
fn is_own_join(line: &[u8], prefix: &str) -> bool {
    line.starts_with(prefix.as_bytes()) && line.split(|b| *b == b' ').nth(1) == Some(b"JOIN")
}

/// A refused JOIN: `:server FAIL JOIN <code> ...` (the JOIN may still have been applied
/// by the store after the node stopped waiting, so the client is a member without knowing).
fn is_join_failure(line: &[u8]) -> bool {
    let mut words = line.split(|b| *b == b' ');
    if line.starts_with(b":") {
        words.next();
    }
    words.next() == Some(b"FAIL") && words.next() == Some(b"JOIN")
}

/// The parent's handle on one load process.
pub struct LoadProc {
    child: Child,
    stdin: ChildStdin,
    pub status: Arc<Mutex<Value>>,
    reports: tokio::sync::mpsc::Receiver<Value>,
}

impl LoadProc {
    pub fn spawn(
        nodes: &[SocketAddr],
        first: usize,
        count: usize,
        concurrency: usize,
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the keel executable")?;
        let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        let mut child = Command::new(exe)
            .args(["bench", "chat-load", "--nodes", &nodes.join(",")])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--backoff-base", &format!("{}ms", policy.base.as_millis())])
            .args(["--backoff-cap", &format!("{}ms", policy.cap.as_millis())])
            .env("KEEL_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a load process")?;
        let stdin = child.stdin.take().context("load process stdin")?;
        let stdout = child.stdout.take().context("load process stdout")?;
        let status = Arc::new(Mutex::new(json!({})));
        let (tx, reports) = tokio::sync::mpsc::channel(4);
        let st = status.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let event = v["event"].as_str().unwrap_or_default().to_owned();
                match event.as_str() {
                    "status" => *st.lock() = v,
                    "report" if tx.send(v).await.is_err() => return,
                    _ => {}
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            status,
            reports,
        })
    }

    pub async fn command(&mut self, cmd: Value) -> anyhow::Result<()> {
        let line = cmd.to_string() + "\n";
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("a load process went away")?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub async fn report(&mut self) -> anyhow::Result<Value> {
        self.command(json!({"cmd": "report"})).await?;
        tokio::time::timeout(Duration::from_secs(30), self.reports.recv())
            .await
            .context("no report from a load process")?
            .context("a load process went away")
    }

    pub fn get(&self, field: &str) -> u64 {
        self.status.lock()[field].as_u64().unwrap_or(0)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn first_error(&self) -> Option<String> {
        self.status.lock()["first_error"]
            .as_str()
            .map(str::to_owned)
    }

    pub fn per_node(&self) -> Vec<u64> {
        self.status.lock()["per_node"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    }
}

/// Sum of a status field over load processes.
pub fn total(procs: &[LoadProc], field: &str) -> u64 {
    procs.iter().map(|p| p.get(field)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fan_out_messages() {
        let line = b":s!u@h PRIVMSG #fan :fan 7 1700000000000000\r\n";
        assert_eq!(fan_message(line), Some((7, 1_700_000_000_000_000)));
        assert_eq!(fan_message(b":s!u@h PRIVMSG #fan :hello 7 8\r\n"), None);
        assert_eq!(fan_message(b":s!u@h PRIVMSG #fan :fan x 8\r\n"), None);
        assert!(is_own_join(b":c1!~c@h JOIN #fan\r\n", ":c1!"));
        assert!(!is_own_join(b":c12!~c@h JOIN #fan\r\n", ":c1!"));
        assert!(!is_own_join(b":c1!~c@h PART #fan\r\n", ":c1!"));
        assert!(is_join_failure(
            b":keel FAIL JOIN TEMPORARILY_UNAVAILABLE :The network is degraded\r\n"
        ));
        assert!(is_join_failure(b"FAIL JOIN X :y\r\n"));
        assert!(!is_join_failure(b":keel FAIL PRIVMSG X :y\r\n"));
        assert!(!is_join_failure(b":c1!~c@h JOIN #fan\r\n"));
    }

    #[test]
    fn joins_are_spread_by_rate() {
        let t0 = tokio::time::Instant::now();
        assert!(join_time(Some(t0), 0.0, 5000) <= tokio::time::Instant::now());
        assert!(join_time(None, 100.0, 5000) <= tokio::time::Instant::now());
        let at = join_time(Some(t0), 100.0, 250);
        assert_eq!(at.duration_since(t0), Duration::from_millis(2500));
        assert!(join_time(Some(t0), 100.0, 0) <= tokio::time::Instant::now());
    }

    #[test]
    fn histograms_travel_as_pairs() {
        let mut h = keel_bench::report::histogram();
        h.record_n(100, 3).expect("in range");
        h.record(5000).expect("in range");
        let mut back = keel_bench::report::histogram();
        merge_hist(&mut back, &hist_json(&Some(h)));
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.5), 100);
    }
}

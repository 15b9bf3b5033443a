//! `keel bench chat`: resident memory per idle registered connection, Keel beside ngircd.
//!
//! Starts `keel chat serve` (this executable) and, when installed, `ngircd` as child
//! processes on loopback ports, opens N registered client connections to each in turn (source
//! addresses spread over 127.0.0.0/8), and reads each server's VmRSS before and after.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
pub struct ChatBenchArgs {
    /// Idle registered connections to hold per server (this process may hold 20,000 files).
    #[arg(long, env = "KEEL_BENCH_CONNECTIONS", default_value_t = 15_000)]
    pub connections: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// The baseline IRC daemon (Debian's ngircd); skipped when not installed.
    #[arg(long, env = "KEEL_BENCH_NGIRCD", default_value = "ngircd")]
    pub ngircd: String,
    /// Skip the baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

struct Measured {
    rss_before: u64,
    rss_after: u64,
    registered: usize,
    elapsed: Duration,
    latency_us: Vec<u64>,
}

impl Measured {
    fn per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.registered.max(1) as f64
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.is_file());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

async fn wait_listening(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("server exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("server did not listen on {addr}")
}

/// Source address for connection `i`: one address per connection from 127.1.0.1 up (ngircd
/// throttles repeated connections from one address).
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 62_500 % 200) as u8,
        (i / 250 % 250) as u8,
        1 + (i % 250) as u8,
    )
}

async fn connect_register(addr: SocketAddr, i: usize) -> anyhow::Result<(TcpStream, Duration)> {
    let started = Instant::now();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source(i), 0)))?;
    let mut stream = socket.connect(addr).await?;
    let nick = format!("b{i}");
    stream
        .write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :bench\r\n").as_bytes())
        .await?;
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            anyhow::bail!("closed during registration");
        }
        if let Some(token) = line.strip_prefix("PING ") {
            let pong = format!("PONG {}\r\n", token.trim_end());
            reader.get_mut().write_all(pong.as_bytes()).await?;
        }
        let code = line.split(' ').nth(1).unwrap_or("");
        if code == "376" || code == "422" {
            break;
        }
        if code == "433" || line.starts_with("ERROR") {
            anyhow::bail!("refused: {}", line.trim_end());
        }
    }
    Ok((stream, started.elapsed()))
}

async fn hold_connections(
    name: &str,
    pid: u32,
    addr: SocketAddr,
    args: &ChatBenchArgs,
) -> anyhow::Result<Measured> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(pid)?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), connect_register(addr, i)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => anyhow::bail!("registration timed out"),
            }
        });
    }
    let mut streams = Vec::with_capacity(args.connections);
    let mut latency_us = Vec::with_capacity(args.connections);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((s, d))) => {
                streams.push(s);
                latency_us.push(d.as_micros() as u64);
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let elapsed = started.elapsed();
    if errors > 0 {
        eprintln!(
            "keel bench chat: {name}: {errors} connections failed (first: {})",
            first_error.unwrap_or_default()
        );
    }
    // Let the server settle (buffers of the welcome burst released), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(pid)?;
    let registered = streams.len();
    drop(streams);
    Ok(Measured {
        rss_before,
        rss_after,
        registered,
        elapsed,
        latency_us,
    })
}

fn scenario(name: &str, m: &Measured) -> keel_bench::Scenario {
    let mut hist = keel_bench::report::histogram();
    for v in &m.latency_us {
        let _ = hist.record((*v).max(1));
    }
    keel_bench::Scenario::new(name, m.registered as u64, m.elapsed, &hist)
        .with("connections", m.registered as u64)
        .with("rss_before_bytes", m.rss_before)
        .with("rss_after_bytes", m.rss_after)
        .with("rss_bytes_per_conn", m.per_conn().round())
}

async fn run_keel(args: &ChatBenchArgs, dir: &Path) -> anyhow::Result<Measured> {
    let irc = free_port()?;
    let http = free_port()?;
    let config = dir.join("keel-chat.toml");
    std::fs::write(
        &config,
        "server_name = \"bench.keel\"\n[limits]\naccepts_per_sec = 0.0\naccepts_per_ip_per_sec = 0.0\nmax_unregistered = 0\ncommands_per_sec = 0.0\n",
    )?;
    let exe = std::env::current_exe().context("locating the keel executable")?;
    let mut child = Command::new(exe)
        .args(["chat", "serve", "--engine", "memory", "--config"])
        .arg(&config)
        .args(["--irc-listen", &format!("127.0.0.1:{irc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .env("KEEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting keel chat serve")?;
    let addr: SocketAddr = ([127, 0, 0, 1], irc).into();
    wait_listening(addr, &mut child).await?;
    let pid = child.id().context("keel has no pid")?;
    let m = hold_connections("keel", pid, addr, args).await;
    let _ = child.kill().await;
    m
}

async fn run_ngircd(args: &ChatBenchArgs, program: &Path, dir: &Path) -> anyhow::Result<Measured> {
    let port = free_port()?;
    let conf = dir.join("ngircd.conf");
    let motd = dir.join("ngircd.motd");
    std::fs::write(&motd, "bench\n")?;
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = bench.ngircd\nInfo = bench\nListen = 127.0.0.1\nPorts = {port}\nMotdFile = {}\nPidFile = {}\n\
             [Limits]\nMaxConnections = 0\nMaxConnectionsIP = 0\nMaxJoins = 10\nPingTimeout = 600\nPongTimeout = 600\n\
             [Options]\nDNS = no\nIdent = no\nPAM = no\n",
            motd.display(),
            dir.join("ngircd.pid").display()
        ),
    )?;
    let mut child = Command::new(program)
        .args(["--nodaemon", "--config"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting ngircd")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(addr, &mut child).await?;
    let pid = child.id().context("ngircd has no pid")?;
    let m = hold_connections("ngircd", pid, addr, args).await;
    let _ = child.kill().await;
    m
}

pub async fn bench(args: ChatBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("keel-bench-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keel = run_keel(&args, &dir).await;
    let baseline = match (args.no_baseline, which(&args.ngircd)) {
        (true, _) => None,
        (false, None) => {
            eprintln!("keel bench chat: {} not found; no baseline", args.ngircd);
            None
        }
        (false, Some(program)) => Some(run_ngircd(&args, &program, &dir).await),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let keel = keel?;
    let mut s = scenario("chat_idle_connections", &keel);
    if let Some(baseline) = baseline {
        let b = baseline?;
        s = s
            .with_baseline(
                "ngircd",
                b.registered as f64 / b.elapsed.as_secs_f64().max(1e-9),
            )
            .with("baseline_connections", b.registered as u64)
            .with("baseline_rss_bytes_per_conn", b.per_conn().round());
    }
    if !args.json {
        let line = |name: &str, m: &Measured| {
            println!(
                "{name:<8} {} connections, resident {:.1} MiB -> {:.1} MiB: {:.0} bytes per idle connection",
                m.registered,
                m.rss_before as f64 / 1048576.0,
                m.rss_after as f64 / 1048576.0,
                m.per_conn()
            )
        };
        line("keel", &keel);
    }
    keel_bench::print_report(std::slice::from_ref(&s), args.json);
    if !args.json {
        if let Some(b) = s.extra.get("baseline_rss_bytes_per_conn") {
            println!("ngircd   {b} bytes per idle connection");
        }
    }
    Ok(ExitCode::SUCCESS)
}

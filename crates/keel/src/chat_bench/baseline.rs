//! The baseline: ngircd (Debian's), holding idle registered connections from this process,
//! resident memory per connection measured the same way as Keel's nodes.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use super::{free_port, rss_bytes, source};

pub struct Measured {
    pub rss_before: u64,
    pub rss_after: u64,
    pub registered: usize,
    pub elapsed: Duration,
}

impl Measured {
    pub fn per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.registered.max(1) as f64
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
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
    connections: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(pid)?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
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
    let mut streams = Vec::with_capacity(connections);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((s, _))) => {
                streams.push(s);
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
    })
}

pub async fn run_ngircd(
    connections: usize,
    concurrency: usize,
    program: &Path,
    dir: &Path,
) -> anyhow::Result<Measured> {
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
    let m = hold_connections("ngircd", pid, addr, connections, concurrency).await;
    let _ = child.kill().await;
    m
}

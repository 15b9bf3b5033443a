//! Chat nodes as child processes (`keel chat serve`), killed and restarted on demand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{free_port, loopback, rss_bytes, BenchEngine};

/// How the nodes of a run are started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub engine: BenchEngine,
    pub redis: String,
    /// The TOML configuration every node reads.
    pub config: PathBuf,
    pub dir: PathBuf,
}

/// One `keel chat serve` child.
pub struct Node {
    pub index: usize,
    pub addr: SocketAddr,
    spec: NodeSpec,
    child: Child,
    /// Times this node was (re)started.
    pub starts: u32,
}

impl Node {
    pub async fn start(index: usize, spec: &NodeSpec) -> anyhow::Result<Self> {
        let addr = loopback(free_port()?);
        let child = spawn(index, addr, spec, 0)?;
        let mut node = Node {
            index,
            addr,
            spec: spec.clone(),
            child,
            starts: 1,
        };
        node.wait_listening().await?;
        Ok(node)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("node has exited")
    }

    pub fn rss(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid()?)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, no goodbye: every client of the node loses its connection at once.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("killing a node")?;
        let _ = self.child.wait().await;
        Ok(())
    }

    /// Starts the node again on the same port (SO_REUSEADDR lets it rebind at once); see
    /// [`Node::wait_listening`].
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        self.child = spawn(self.index, self.addr, &self.spec, self.starts)?;
        self.starts += 1;
        Ok(())
    }

    pub async fn wait_listening(&mut self) -> anyhow::Result<()> {
        for _ in 0..400 {
            if TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "node {} exited early: {status} (log: {})",
                    self.index,
                    log_path(&self.spec.dir, self.index, self.starts).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("node {} did not listen on {}", self.index, self.addr)
    }
}

fn log_path(dir: &Path, index: usize, start: u32) -> PathBuf {
    dir.join(format!("node-{index}.{start}.log"))
}

fn spawn(index: usize, addr: SocketAddr, spec: &NodeSpec, start: u32) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the keel executable")?;
    let log = std::fs::File::create(log_path(&spec.dir, index, start))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "chat",
        "serve",
        "--engine",
        spec.engine.as_str(),
        "--config",
    ])
    .arg(&spec.config)
    .args(["--irc-listen", &addr.to_string()])
    .args(["--http-listen", "127.0.0.1:0"])
    .args(["--server-name", &format!("node{index}.bench")])
    .env("KEEL_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(log))
    .kill_on_drop(true);
    // Worker threads per node (tokio's TOKIO_WORKER_THREADS), to compare thread layouts.
    if let Some(n) = std::env::var_os("KEEL_BENCH_NODE_WORKERS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    if spec.engine == BenchEngine::Redis {
        // A key prefix of this run: nodes of one run share it, runs never see each other.
        cmd.args(["--redis", &spec.redis]).env(
            "KEEL_KEY_PREFIX",
            format!("keel-bench-{}", std::process::id()),
        );
    }
    cmd.spawn().context("starting keel chat serve")
}

/// Writes the nodes' configuration: `accept_rate` `None` keeps the server's admission
/// defaults (pacing at 1000/s, queue 10,000, 10 s deadline), `Some(0.0)` turns pacing off.
pub fn write_config(dir: &Path, name: &str, accept_rate: Option<f64>) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    // Flood control off (the bench's own clients send on a schedule); per-address rate off
    // (every bench connection has its own address anyway).
    let mut text = String::from(
        "server_name = \"bench.keel\"\nping_interval = \"60s\"\nping_timeout = \"120s\"\n\
         [limits]\ncommands_per_sec = 0.0\naccepts_per_ip_per_sec = 0.0\nmax_unregistered = 0\n",
    );
    if let Some(rate) = accept_rate {
        text.push_str(&format!("accepts_per_sec = {rate:.1}\n"));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

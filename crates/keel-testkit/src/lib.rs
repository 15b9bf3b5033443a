//! Real Redis servers for tests, with fault injection.
//!
//! Tests that need Redis start their own `redis-server` on a free port (never 6379, never a
//! shared instance), so they run in parallel and leave nothing behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or controlling a test Redis.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A process could not be started or a file written.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// `redis-server` did not answer PING in time.
    #[error("redis-server on port {0} did not become ready: {1}")]
    NotReady(u16, String),
    /// `redis-cli` reported an error.
    #[error("redis-cli {0:?} failed: {1}")]
    Cli(Vec<String>, String),
}

/// A `redis-server` process owned by one test; killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(false)
    }

    /// Starts a server with `appendonly yes` and `appendfsync always`.
    pub fn start_aof() -> Result<Self, TestkitError> {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Result<Self, TestkitError> {
        let mut last_error = String::new();
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port()?,
                dir: tempfile::Builder::new().prefix("keel-redis-").tempdir()?,
                aof,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(TestkitError::NotReady(0, last_error))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF and RDB files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the server (SIGKILL): clients see connections drop and refusals.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a hung
    /// or partitioned Redis. [`RedisServer::thaw`] resumes it.
    pub fn freeze(&self) -> Result<(), TestkitError> {
        self.signal("-STOP")
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) -> Result<(), TestkitError> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), TestkitError> {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()?;
            if !status.success() {
                return Err(TestkitError::Cli(
                    vec!["kill".into(), signal.into()],
                    status.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Starts the server again on the same port and directory (an AOF server keeps its data).
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// Stops and starts the server: scripts are gone, data survives only with AOF.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.start_again()
    }

    /// `SCRIPT FLUSH`: every cached script is forgotten, so the next EVALSHA gets NOSCRIPT.
    pub fn script_flush(&self) -> Result<(), TestkitError> {
        self.cli(&["SCRIPT", "FLUSH"]).map(|_| ())
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, TestkitError> {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || text.starts_with("ERR") {
            return Err(TestkitError::Cli(
                args.iter().map(|s| s.to_string()).collect(),
                format!("{text} {}", String::from_utf8_lossy(&output.stderr)),
            ));
        }
        Ok(text)
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let mut command = Command::new(redis_server_binary());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("warning")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            command
                .arg("--appendonly")
                .arg("yes")
                .arg("--appendfsync")
                .arg("always");
        } else {
            command.arg("--appendonly").arg("no");
        }
        let child = command.spawn()?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !self.is_running() {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(TestkitError::NotReady(self.port, log));
            }
            if let Ok(reply) = self.cli(&["PING"]) {
                if reply == "PONG" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(TestkitError::NotReady(self.port, "no PONG in 10s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.thaw();
        self.stop();
    }
}

/// `redis-server` from `KEEL_REDIS_SERVER`, else from `PATH`.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("KEEL_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

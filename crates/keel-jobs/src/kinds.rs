//! Built-in kinds: `shell`, `http`, `noop`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::worker::{Handler, JobContext, JobError};

/// Does nothing, successfully: benchmarks and smoke tests.
pub struct NoopHandler;

#[async_trait]
impl Handler for NoopHandler {
    async fn run(&self, _ctx: JobContext) -> Result<Option<Value>, JobError> {
        Ok(None)
    }

    fn inline(&self) -> bool {
        true
    }
}

/// `shell` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellPayload {
    /// Program and arguments, run without a shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// A script for `/bin/sh -c` (only when asked for; exclusive with `argv`).
    #[serde(default)]
    pub script: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// Runs a process in its own process group; a timeout or cancel kills the whole group.
#[derive(Clone, Debug)]
pub struct ShellHandler {
    /// Bytes of stdout and of stderr kept.
    pub output_cap: usize,
}

impl Default for ShellHandler {
    fn default() -> Self {
        Self {
            output_cap: 64 * 1024,
        }
    }
}

/// Kills a process group when dropped: the job's future is dropped on timeout or cancel.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

fn capture<R: AsyncRead + Unpin + Send + 'static>(
    reader: Option<R>,
    cap: usize,
) -> (Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let task = tokio::spawn(async move {
        let Some(mut reader) = reader else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut buf = sink.lock();
                    let room = cap.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    });
    (buffer, task)
}

fn text(buffer: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buffer.lock()).into_owned()
}

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let mut start = start;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim()
}

#[async_trait]
impl Handler for ShellHandler {
    async fn run(&self, ctx: JobContext) -> Result<Option<Value>, JobError> {
        let payload: ShellPayload = serde_json::from_value(ctx.job.payload.clone())
            .map_err(|e| JobError::fatal(format!("bad shell payload: {e}")))?;
        let argv = match (&payload.script, payload.argv.is_empty()) {
            (Some(script), true) => vec!["/bin/sh".to_string(), "-c".into(), script.clone()],
            (None, false) => payload.argv.clone(),
            (Some(_), false) => {
                return Err(JobError::fatal(
                    "shell payload: give argv or script, not both",
                ))
            }
            (None, true) => return Err(JobError::fatal("shell payload: argv is empty")),
        };
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(&payload.env)
            .env("KEEL_JOB_ID", &ctx.job.id)
            .env("KEEL_ATTEMPT", ctx.job.attempts.to_string())
            .env("KEEL_QUEUE", &ctx.job.queue)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &payload.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| {
            let message = format!("cannot start {:?}: {e}", argv[0]);
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::PermissionDenied
            {
                JobError::fatal(message)
            } else {
                JobError::retry(message)
            }
        })?;
        let guard = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));
        let (stdout, out_task) = capture(child.stdout.take(), self.output_cap);
        let (stderr, err_task) = capture(child.stderr.take(), self.output_cap);
        let status = child
            .wait()
            .await
            .map_err(|e| JobError::retry(format!("waiting for the process: {e}")))?;
        // Leftover background processes of the job go with it.
        drop(guard);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = out_task.await;
            let _ = err_task.await;
        })
        .await;
        let (stdout, stderr) = (text(&stdout), text(&stderr));
        if status.success() {
            Ok(Some(
                json!({"exit_code": 0, "stdout": stdout, "stderr": stderr}),
            ))
        } else {
            let why = match status.code() {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            };
            Err(JobError::retry(format!("{why}: {}", tail(&stderr, 500))))
        }
    }
}

/// `http` payload: a webhook call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPayload {
    /// Default `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// Target.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// A string is sent as is; any other JSON value is sent as JSON.
    #[serde(default)]
    pub body: Option<Value>,
    /// Expected status (default: any 2xx).
    #[serde(default)]
    pub expect_status: Option<u16>,
}

/// Calls a URL; an unexpected status is a retryable failure.
#[derive(Clone, Debug, Default)]
pub struct HttpHandler {
    client: reqwest::Client,
}

#[async_trait]
impl Handler for HttpHandler {
    async fn run(&self, ctx: JobContext) -> Result<Option<Value>, JobError> {
        let payload: HttpPayload = serde_json::from_value(ctx.job.payload.clone())
            .map_err(|e| JobError::fatal(format!("bad http payload: {e}")))?;
        let method = reqwest::Method::from_bytes(
            payload
                .method
                .as_deref()
                .unwrap_or("POST")
                .to_ascii_uppercase()
                .as_bytes(),
        )
        .map_err(|e| JobError::fatal(format!("bad method: {e}")))?;
        let url = reqwest::Url::parse(&payload.url)
            .map_err(|e| JobError::fatal(format!("bad url {:?}: {e}", payload.url)))?;
        let mut request = self
            .client
            .request(method, url)
            .timeout(Duration::from_millis(ctx.job.timeout_ms))
            .header("X-Keel-Job-Id", &ctx.job.id)
            .header("X-Keel-Attempt", ctx.job.attempts.to_string());
        for (name, value) in &payload.headers {
            request = request.header(name, value);
        }
        request = match &payload.body {
            None | Some(Value::Null) => request,
            Some(Value::String(s)) => request.body(s.clone()),
            Some(other) => request.json(other),
        };
        let response = request
            .send()
            .await
            .map_err(|e| JobError::retry(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let mut body = response.text().await.unwrap_or_default();
        if body.len() > 4096 {
            let mut cut = 4096;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        let expected = match payload.expect_status {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        };
        if expected {
            Ok(Some(json!({"status": status, "body": body})))
        } else {
            Err(JobError::retry(format!(
                "unexpected status {status}: {}",
                tail(&body, 300)
            )))
        }
    }
}

//! Server configuration: flags override a TOML file, which overrides the defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid duration for {field}: {message}")]
    Duration { field: String, message: String },
}

/// An IRC operator: a name and an argon2 password hash (PHC string).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub password_hash: String,
}

/// Flood and admission control. Zero turns a limit off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Limits {
    /// Commands per second a client may sustain (penalty per command, ngircd/ergo style).
    pub commands_per_sec: f64,
    /// Commands a client may send in a burst.
    pub command_burst: u32,
    /// New connections per second admitted, all addresses together. Connections over the
    /// rate are paced (they wait for a slot), not refused; see `accept_queue`.
    pub accepts_per_sec: f64,
    /// New connections per second accepted from one IP address.
    pub accepts_per_ip_per_sec: f64,
    /// Burst allowance for both accept rates.
    pub accept_burst: u32,
    /// Connections that have not finished registering, at most.
    pub max_unregistered: usize,
    /// Connections waiting for an admission slot, at most; past it they are refused.
    pub accept_queue: usize,
    /// Longest wait for an admission slot, in seconds; a later slot means a refusal.
    pub accept_wait_secs: f64,
    /// Registrations running at once (engine calls of NICK/USER completion); 0: no limit.
    pub registrations_in_flight: usize,
    /// Of those, permits only clients authenticated with SASL may use (known accounts first).
    pub registration_reserved: usize,
    /// Messages queued for a client before it is dropped with "SendQ exceeded".
    pub sendq: usize,
    /// Channels one client may be in.
    pub max_channels: usize,
    /// Nicks on one MONITOR list.
    pub monitor: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            commands_per_sec: 4.0,
            command_burst: 20,
            accepts_per_sec: 1000.0,
            accepts_per_ip_per_sec: 20.0,
            accept_burst: 200,
            max_unregistered: 5000,
            accept_queue: 10_000,
            accept_wait_secs: 10.0,
            registrations_in_flight: 256,
            registration_reserved: 64,
            sendq: 1024,
            max_channels: 50,
            monitor: 100,
        }
    }
}

/// The file form; every field optional.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    server_name: Option<String>,
    network: Option<String>,
    motd: Option<String>,
    password: Option<String>,
    operators: Vec<Operator>,
    ping_interval: Option<String>,
    ping_timeout: Option<String>,
    registration_timeout: Option<String>,
    history_max: Option<usize>,
    history_age: Option<String>,
    presence_ttl: Option<String>,
    limits: Option<Limits>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    listen_backlog: Option<u32>,
    direct_writes: Option<bool>,
}

/// Everything the chat server needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_name: String,
    pub network: String,
    pub motd: Vec<String>,
    /// Connection password (PASS), if any.
    pub password: Option<String>,
    pub operators: Vec<Operator>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub registration_timeout: Duration,
    pub history_max: usize,
    pub history_age: Duration,
    /// How long a client's presence outlives its node's last heartbeat (several nodes on
    /// Redis): a node that dies takes its users with it within this time.
    pub presence_ttl: Duration,
    pub limits: Limits,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Length of the IRC listener's accept backlog (the kernel caps it at
    /// `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Deliver to a plain-TCP client with a direct non-blocking write while its send queue is
    /// empty, instead of queueing and waking its task. Off by default: on the 2-core bench
    /// machine it made fan-out slower (one node task writes to every local member serially).
    pub direct_writes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "keel.local".into(),
            network: "Keel".into(),
            motd: vec!["Welcome to Keel chat.".into()],
            password: None,
            operators: Vec::new(),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            registration_timeout: Duration::from_secs(60),
            history_max: 1000,
            history_age: Duration::from_secs(7 * 24 * 3600),
            presence_ttl: Duration::from_secs(30),
            limits: Limits::default(),
            tls_cert: None,
            tls_key: None,
            listen_backlog: 4096,
            direct_writes: false,
        }
    }
}

fn duration(field: &str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => keel_core::parse_duration(&t).map_err(|message| ConfigError::Duration {
            field: field.into(),
            message,
        }),
    }
}

impl Config {
    /// Parses a TOML document over the defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let d = Config::default();
        Ok(Config {
            server_name: file.server_name.unwrap_or(d.server_name),
            network: file.network.unwrap_or(d.network),
            motd: file
                .motd
                .map(|m| m.lines().map(str::to_owned).collect())
                .unwrap_or(d.motd),
            password: file.password,
            operators: file.operators,
            ping_interval: duration("ping_interval", file.ping_interval, d.ping_interval)?,
            ping_timeout: duration("ping_timeout", file.ping_timeout, d.ping_timeout)?,
            registration_timeout: duration(
                "registration_timeout",
                file.registration_timeout,
                d.registration_timeout,
            )?,
            history_max: file.history_max.unwrap_or(d.history_max),
            history_age: duration("history_age", file.history_age, d.history_age)?,
            presence_ttl: duration("presence_ttl", file.presence_ttl, d.presence_ttl)?,
            limits: file.limits.unwrap_or_default(),
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            listen_backlog: file.listen_backlog.unwrap_or(d.listen_backlog),
            direct_writes: file.direct_writes.unwrap_or(d.direct_writes),
        })
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let text = r#"
server_name = "irc.example"
network = "Example"
motd = "line one\nline two"
ping_interval = "10s"
ping_timeout = "20s"
listen_backlog = 1024
[[operators]]
name = "root"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"
[limits]
commands_per_sec = 0.0
sendq = 64
accept_queue = 7
"#;
        let c = Config::from_toml(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.server_name, "irc.example");
        assert_eq!(c.motd, vec!["line one", "line two"]);
        assert_eq!(c.ping_interval, Duration::from_secs(10));
        assert_eq!(c.operators.len(), 1);
        assert_eq!(c.limits.sendq, 64);
        assert_eq!(c.limits.command_burst, 20);
        assert_eq!(c.limits.accept_queue, 7);
        assert_eq!(c.limits.registration_reserved, 64);
        assert_eq!(c.listen_backlog, 1024);
        assert_eq!(Config::default().listen_backlog, 4096);
    }

    #[test]
    fn rejects_unknown_fields() {
        assert!(Config::from_toml("bogus = 1", Path::new("x.toml")).is_err());
    }
}

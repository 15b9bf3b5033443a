//! `keel chat serve`: the chat server (IRC over TCP/TLS and WebSocket, web client, admin).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_chat::{ChatServer, Config, MemoryEngine, RedisEngine, RedisRelay};
use keel_core::Shutdown;

use crate::cli::{Engine, RedisArgs};

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(subcommand)]
    pub command: ChatCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Serve IRC on --irc-listen and WebSocket, web client and admin on --http-listen.
    Serve(ChatServeArgs),
}

#[derive(Debug, Args)]
pub struct ChatServeArgs {
    /// IRC listener (TCP, or TLS with --tls-cert and --tls-key).
    #[arg(long, env = "KEEL_IRC_LISTEN", default_value = "0.0.0.0:6667")]
    pub irc_listen: SocketAddr,
    /// HTTP listener: IRC over WebSocket at /ws, the web client at /, /healthz /readyz /metrics.
    #[arg(long, env = "KEEL_HTTP_LISTEN", default_value = "0.0.0.0:8082")]
    pub http_listen: SocketAddr,
    /// TOML configuration file (server name, network, MOTD, operators, limits, ping settings).
    #[arg(long, env = "KEEL_CHAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// PING a client quiet for this long [default: 30s, or the config file's].
    #[arg(long, env = "KEEL_PING_INTERVAL", value_parser = keel_core::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Disconnect a pinged client silent for this long after the PING [default: 60s].
    #[arg(long, env = "KEEL_PING_TIMEOUT", value_parser = keel_core::parse_duration)]
    pub ping_timeout: Option<Duration>,
    /// Server name shown to clients [default: keel.local].
    #[arg(long, env = "KEEL_SERVER_NAME")]
    pub server_name: Option<String>,
    /// PEM certificate chain: serve IRC over TLS.
    #[arg(long, env = "KEEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "KEEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Set SO_REUSEPORT on the IRC listener, so several `keel chat serve` processes share
    /// one port (the kernel spreads connections over them). `--reuse-port false` turns it off.
    #[arg(long, env = "KEEL_REUSE_PORT", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse_port: bool,
    /// Accept backlog of the IRC listener [default: 4096, or the config file's
    /// `listen_backlog`; the kernel caps it at net.core.somaxconn].
    #[arg(long, env = "KEEL_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Deliver with a direct non-blocking write while a plain-TCP client's send queue is
    /// empty (no task wake-up per recipient). Off by default: slower in our fan-out bench.
    #[arg(long, env = "KEEL_CHAT_DIRECT_WRITES", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub direct_writes: bool,
    /// How long a node's clients outlive its last heartbeat (Redis engine): a node that dies
    /// takes its users with it within this time [default: 30s].
    #[arg(long, env = "KEEL_PRESENCE_TTL", value_parser = keel_core::parse_duration)]
    pub presence_ttl: Option<Duration>,
    /// State engine: `redis` (any number of nodes on one Redis) or `memory` (one node).
    #[arg(long, env = "KEEL_ENGINE", value_enum, default_value = "redis")]
    pub engine: Engine,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ChatCommand::Serve(args) => serve(args).await,
    }
}

/// Builds the configuration: defaults, then the file, then flags.
pub fn build_config(args: &ChatServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.ping_interval {
        config.ping_interval = v;
    }
    if let Some(v) = args.ping_timeout {
        config.ping_timeout = v;
    }
    if let Some(v) = &args.server_name {
        config.server_name = v.clone();
    }
    if let Some(v) = args.listen_backlog {
        config.listen_backlog = v;
    }
    if let Some(v) = args.presence_ttl {
        config.presence_ttl = v;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert.clone();
        config.tls_key = args.tls_key.clone();
    }
    if args.direct_writes {
        config.direct_writes = true;
    }
    Ok(config)
}

async fn serve(args: ChatServeArgs) -> anyhow::Result<ExitCode> {
    let config = build_config(&args)?;
    let irc = keel_chat::bind_listener(args.irc_listen, config.listen_backlog, args.reuse_port)
        .with_context(|| format!("binding IRC listener {}", args.irc_listen))?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", args.http_listen))?;
    eprintln!(
        "keel chat: IRC on {}, HTTP on {} (web client at /, WebSocket at /ws)",
        irc.local_addr()?,
        http.local_addr()?
    );
    let redis = (args.engine == Engine::Redis).then_some(&args.redis);
    serve_on(irc, http, config, redis, Shutdown::on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Serves the chat role on bound listeners until `shutdown` fires: on the memory engine, or
/// with `redis` as one node of a network sharing that Redis (`keel chat serve`, `keel dev`).
pub async fn serve_on(
    irc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    config: Config,
    redis: Option<&RedisArgs>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    match redis {
        None => {
            let engine = MemoryEngine::new(config.history_max, config.history_age)
                .with_presence_ttl(config.presence_ttl);
            let server = ChatServer::start(config, engine, irc, Some(http), shutdown)
                .await
                .context("starting the chat server")?;
            server.wait().await;
        }
        Some(redis) => {
            let handle = redis.handle()?;
            let client = keel_redis::redis::Client::open(redis.url.as_str())
                .with_context(|| format!("Redis URL {}", handle.url_for_logs()))?;
            let engine = RedisEngine::new(handle.clone(), config.history_max, config.history_age)
                .await
                .context("starting the chat server's Redis engine")?
                .with_presence_ttl(config.presence_ttl);
            let relay = RedisRelay { handle, client };
            let server =
                ChatServer::start_node(config, engine, irc, Some(http), shutdown, Some(relay))
                    .await
                    .context("starting the chat server")?;
            server.wait().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> super::ChatServeArgs {
        let mut argv = vec!["keel", "chat", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Chat(super::ChatArgs {
                command: super::ChatCommand::Serve(a),
            })) => a,
            other => panic!("not chat serve: {other:?}"),
        }
    }

    /// Switches take the values an environment file holds (1/0, yes/no, on/off), not only
    /// true/false.
    #[test]
    fn boolean_switches_take_boolish_values() {
        assert!(serve(&["--direct-writes", "1"]).direct_writes);
        assert!(serve(&["--direct-writes", "yes"]).direct_writes);
        assert!(!serve(&["--direct-writes", "0"]).direct_writes);
        assert!(!serve(&["--reuse-port", "off"]).reuse_port);
        assert!(serve(&[]).reuse_port);
        assert!(
            Cli::try_parse_from(["keel", "chat", "serve", "--direct-writes", "maybe"]).is_err()
        );
    }
}

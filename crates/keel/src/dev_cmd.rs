//! `keel dev`: every role in one process, on the memory engines unless `--redis` is given.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use keel_core::Shutdown;

use crate::cli::{Engine, RedisArgs};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Run on this Redis instead of the in-memory engines (`KEEL_DEV_REDIS`, not
    /// `KEEL_REDIS_URL`: a shell set up for the other roles still gets the memory engines).
    #[arg(long = "redis", env = "KEEL_DEV_REDIS")]
    pub redis: Option<String>,
    /// Rate-limit service address.
    #[arg(long, env = "KEEL_DEV_LIMIT_LISTEN", default_value = "127.0.0.1:8081")]
    pub limit_listen: String,
    /// Rate-limit rules file (default: rule "default", 100/s per key).
    #[arg(long, env = "KEEL_LIMIT_RULES")]
    pub limit_rules: Option<std::path::PathBuf>,
    /// Job master address (API and dashboard); two workers run in the same process.
    #[arg(long, env = "KEEL_DEV_JOBS_LISTEN", default_value = "127.0.0.1:8080")]
    pub jobs_listen: String,
    /// Chat server: IRC address.
    #[arg(long, env = "KEEL_DEV_IRC_LISTEN", default_value = "127.0.0.1:6667")]
    pub irc_listen: String,
    /// Chat server: HTTP address (web client, WebSocket, admin).
    #[arg(
        long,
        env = "KEEL_DEV_CHAT_HTTP_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub chat_http_listen: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::on_signals();
    let engine = if args.redis.is_some() {
        Engine::Redis
    } else {
        Engine::Memory
    };
    let redis = RedisArgs {
        url: args
            .redis
            .clone()
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        key_prefix: "keel".into(),
        redis_timeout: std::time::Duration::from_millis(500),
    };
    let mut roles = tokio::task::JoinSet::new();

    let limit_listener = tokio::net::TcpListener::bind(&args.limit_listen)
        .await
        .with_context(|| format!("binding the rate-limit service on {}", args.limit_listen))?;
    let limit_addr = limit_listener.local_addr()?;
    let limit_args = crate::limit_cmd::LimitServeArgs {
        listen: args.limit_listen.clone(),
        engine,
        redis: redis.clone(),
        rules: args.limit_rules.clone(),
        upstream: None,
        timeout: std::time::Duration::from_millis(50),
        no_batching: false,
        reload_interval: std::time::Duration::from_secs(1),
    };
    roles.spawn(crate::limit_cmd::serve_on(
        limit_listener,
        limit_args,
        shutdown.clone(),
    ));

    let jobs_listener = tokio::net::TcpListener::bind(&args.jobs_listen)
        .await
        .with_context(|| format!("binding the job master on {}", args.jobs_listen))?;
    let jobs_addr = jobs_listener.local_addr()?;
    roles.spawn(crate::jobs_cmd::dev_jobs(
        jobs_listener,
        args.redis.clone(),
        shutdown.clone(),
    ));

    // The IRC port gets the chat server's explicit accept backlog (a laptop's reconnect burst
    // is small, but the default of 1,024 would silently cap the configured one).
    let chat_config = keel_chat::Config::default();
    let irc_addr = tokio::net::lookup_host(&args.irc_listen)
        .await
        .with_context(|| {
            format!(
                "resolving the chat server's IRC address {}",
                args.irc_listen
            )
        })?
        .next()
        .with_context(|| format!("{} resolves to no address", args.irc_listen))?;
    let irc_listener = keel_chat::bind_listener(irc_addr, chat_config.listen_backlog, false)
        .with_context(|| format!("binding the chat server's IRC port on {}", args.irc_listen))?;
    let chat_http_listener = tokio::net::TcpListener::bind(&args.chat_http_listen)
        .await
        .with_context(|| {
            format!(
                "binding the chat server's HTTP port on {}",
                args.chat_http_listen
            )
        })?;
    let irc_addr = irc_listener.local_addr()?;
    let chat_http_addr = chat_http_listener.local_addr()?;
    let chat_redis = (engine == Engine::Redis).then(|| redis.clone());
    let chat_shutdown = shutdown.clone();
    roles.spawn(async move {
        crate::chat_cmd::serve_on(
            irc_listener,
            chat_http_listener,
            chat_config,
            chat_redis.as_ref(),
            chat_shutdown,
        )
        .await
    });

    let engine_name = match engine {
        Engine::Memory => "memory engines (no Redis)".to_string(),
        Engine::Redis => format!("Redis at {}", redis.url),
    };
    println!("keel dev: every role in one process on {engine_name}");
    println!("  rate limiter   http://{limit_addr}   (POST /v1/check, /metrics)");
    println!("  job master     http://{jobs_addr}   (dashboard at /, POST /v1/jobs; 2 workers)");
    println!("  chat (IRC)     irc://{irc_addr}");
    println!("  chat (web)     http://{chat_http_addr}   (web client, WebSocket at /ws, /metrics)");
    println!("Ctrl-C stops everything.");

    let mut failed = false;
    while let Some(result) = roles.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("keel dev: a role stopped: {error:#}");
                failed = true;
                shutdown.trigger();
            }
            Err(error) => {
                eprintln!("keel dev: a role panicked: {error}");
                failed = true;
                shutdown.trigger();
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

//! Listeners: IRC over TCP (optionally TLS), and HTTP with the WebSocket transport, the web
//! client and the admin endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use keel_core::{Readiness, Shutdown};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::cluster;
use crate::config::Config;
use crate::conn::{self, StreamTransport, TcpTransport};
use crate::engine::ChatEngine;
use crate::shared::Shared;
use crate::ws::{WsTransport, PROTOCOLS};

const WEB_CLIENT: &str = include_str!("../assets/index.html");

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("shut down before the engine answered")]
    ShutDown,
}

/// What a node needs to join a network of nodes on Redis: the store handle (publishing) and
/// a client for the node's one pub/sub subscription.
#[derive(Clone)]
pub struct RedisRelay {
    pub handle: keel_redis::RedisHandle,
    pub client: redis::Client,
}

/// A running chat node.
pub struct ChatServer<E> {
    shared: Arc<Shared<E>>,
    irc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl<E: ChatEngine> ChatServer<E> {
    /// Starts serving IRC on `irc` and, when given, HTTP (WebSocket, web client, admin) on
    /// `http`, until `shutdown` fires.
    pub async fn start(
        config: Config,
        engine: E,
        irc: TcpListener,
        http: Option<TcpListener>,
        shutdown: Shutdown,
    ) -> Result<Self, ServerError> {
        Self::start_node(config, engine, irc, http, shutdown, None).await
    }

    /// Starts a node; with `relay`, one of a network of nodes sharing a Redis engine.
    pub async fn start_node(
        config: Config,
        engine: E,
        irc: TcpListener,
        http: Option<TcpListener>,
        shutdown: Shutdown,
        relay: Option<RedisRelay>,
    ) -> Result<Self, ServerError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(ServerError::Tls(
                    "both tls_cert and tls_key are needed".into(),
                ))
            }
        };
        // Installs the process-wide Prometheus recorder before the first metric is recorded.
        let _ = keel_core::telemetry::metrics_handle();
        // The node's number comes from the store; wait for it rather than fail while Redis
        // is starting.
        let node = loop {
            match engine.new_node().await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a node number yet; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return Err(ServerError::ShutDown),
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let shared = Arc::new(Shared::new(config, engine, node));
        let irc_addr = irc.local_addr()?;
        let mut tasks = JoinSet::new();
        if let Some(relay) = relay {
            let (tx, rx) = tokio::sync::mpsc::channel(cluster::OUTBOX_CAPACITY);
            shared.hub.set_outbox(node, tx);
            tasks.spawn(cluster::run_relay(
                shared.clone(),
                relay.handle,
                relay.client,
                rx,
                shutdown.clone(),
            ));
        }
        tasks.spawn(cluster::run_liveness(shared.clone(), shutdown.clone()));
        tasks.spawn(accept_loop(shared.clone(), irc, tls, shutdown.clone()));
        let http_addr = match http {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let router = router(shared.clone(), shutdown.clone());
                let sd = shutdown.clone();
                tasks.spawn(async move {
                    if let Err(e) = keel_core::serve_http(listener, router, sd).await {
                        tracing::error!(error = %e, "chat HTTP server failed");
                    }
                });
                Some(addr)
            }
            None => None,
        };
        tracing::info!(irc = %irc_addr, http = ?http_addr, node, "chat server listening");
        Ok(Self {
            shared,
            irc_addr,
            http_addr,
            tasks,
        })
    }

    pub fn irc_addr(&self) -> SocketAddr {
        self.irc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.hub.len()
    }

    /// Waits for the listeners to stop (after shutdown fires).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds a TCP listener the way a storm needs it: `SO_REUSEADDR` (a restarted node rebinds
/// at once), `SO_REUSEPORT` when asked (several processes share one port and the kernel
/// spreads connections over them), and an explicit accept `backlog` (the kernel caps it at
/// `net.core.somaxconn`).
pub fn bind_listener(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// Refused sockets being closed gracefully at once, at most (each for at most 2 s).
const GOODBYES: usize = 1024;

/// Writes the refusal, half-closes, and drains the peer's data so the close sends FIN, not RST.
async fn goodbye(mut stream: TcpStream, line: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 512];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn accept_loop<E: ChatEngine>(
    shared: Arc<Shared<E>>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
) {
    let goodbyes = Arc::new(tokio::sync::Semaphore::new(GOODBYES));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ticket = match shared.admit(peer.ip()).await {
            Ok(t) => t,
            Err(refusal) => {
                let line = refusal.error_line();
                match goodbyes.clone().try_acquire_owned() {
                    // The ERROR line, then FIN, then what the client already sent is read
                    // away: closing a socket with unread data sends RST, and a client that
                    // sees "connection reset" never reads its retry hint.
                    Ok(permit) => {
                        tokio::spawn(async move {
                            goodbye(stream, line).await;
                            drop(permit);
                        });
                    }
                    // Too many goodbyes in flight: one non-blocking write, then drop.
                    Err(_) => {
                        let _ = stream.try_write(line.as_bytes());
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // Separate tasks for TCP and TLS: an idle plain connection's task is sized for
        // plain TCP only.
        match (tls.clone(), ticket) {
            (None, None) => {
                tokio::spawn(serve_tcp(shared, stream, peer, shutdown));
            }
            (Some(acceptor), None) => {
                tokio::spawn(serve_tls(shared, acceptor, stream, peer, shutdown));
            }
            // Paced: the task holds only its socket until its slot comes.
            (tls, Some(ticket)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = ticket.ready() => {}
                    }
                    match tls {
                        None => serve_tcp(shared, stream, peer, shutdown).await,
                        Some(acceptor) => serve_tls(shared, acceptor, stream, peer, shutdown).await,
                    }
                });
            }
        }
    }
}

async fn serve_tls<E: ChatEngine>(
    shared: Arc<Shared<E>>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let handshake =
        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await;
    match handshake {
        Ok(Ok(tls)) => {
            conn::run(shared, StreamTransport::new(tls), peer, shutdown).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_tcp<E: ChatEngine>(
    shared: Arc<Shared<E>>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    conn::run(shared, TcpTransport::new(stream), peer, shutdown).await
}

struct HttpState<E> {
    shared: Arc<Shared<E>>,
    shutdown: Shutdown,
}

impl<E> Clone for HttpState<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

fn router<E: ChatEngine>(shared: Arc<Shared<E>>, shutdown: Shutdown) -> Router {
    let ready = shared.clone();
    let state = HttpState { shared, shutdown };
    Router::new()
        .route("/", get(|| async { Html(WEB_CLIENT) }))
        .route("/ws", get(ws_upgrade::<E>))
        .with_state(state)
        .merge(keel_core::admin_router(Readiness::from_fn(move || {
            let degraded = ready.is_degraded();
            async move {
                if degraded {
                    Err("degraded: the store is unreachable".to_owned())
                } else {
                    Ok(())
                }
            }
        })))
}

async fn ws_upgrade<E: ChatEngine>(
    State(state): State<HttpState<E>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    match state.shared.admit(peer.ip()).await {
        Ok(None) => {}
        // Paced: the HTTP request waits for its slot before the upgrade.
        Ok(Some(ticket)) => ticket.ready().await,
        Err(refusal) => {
            let secs = refusal.hint_secs();
            let text = format!(
                "ERROR :Closing Link: {}; try again in {secs} seconds\r\n",
                refusal.reason
            );
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, secs.to_string())],
                text,
            )
                .into_response();
        }
    }
    upgrade
        .protocols(PROTOCOLS)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(keel_irc_proto::MAX_LINE * 2)
        .max_frame_size(keel_irc_proto::MAX_LINE * 2)
        .on_upgrade(move |socket| async move {
            conn::run(state.shared, WsTransport::new(socket), peer, state.shutdown).await
        })
}

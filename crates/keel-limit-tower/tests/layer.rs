//! The layer in front of a real axum router, driven over real TCP.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use keel_limit::{Algorithm, Limit, LimitSpec, Limiter};
use keel_limit_tower::{HeaderStyle, KeyExtractor, RateLimitLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

async fn raw_get(addr: SocketAddr, extra: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn refuses_with_429_problem_and_headers() {
    let limit = Limit::new(
        "api",
        LimitSpec::new(Algorithm::FixedWindow, 2, 60_000_000, None).expect("spec"),
    );
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(RateLimitLayer::new(
            Limiter::memory(),
            vec![limit],
            KeyExtractor::peer_ip(),
        ));
    let addr = serve(app).await;
    let first = raw_get(addr, "").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.contains("ratelimit-policy: \"api\";q=2;w=60"),
        "{first}"
    );
    assert!(first.contains("ratelimit: \"api\";r=1;"), "{first}");
    assert!(raw_get(addr, "").await.starts_with("HTTP/1.1 200"));
    let refused = raw_get(addr, "").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        refused.contains("content-type: application/problem+json"),
        "{refused}"
    );
    assert!(refused.contains("retry-after: "), "{refused}");
    assert!(refused.contains("\"status\":429"), "{refused}");
    assert!(refused.contains("ratelimit: \"api\";r=0;"), "{refused}");
}

#[tokio::test]
async fn keys_by_header_and_legacy_headers() {
    let limit = Limit::new(
        "per-key",
        LimitSpec::new(Algorithm::Gcra, 1, 60_000_000, Some(1)).expect("spec"),
    );
    let layer = RateLimitLayer::new(
        Limiter::memory(),
        vec![limit],
        KeyExtractor::Header(http::HeaderName::from_static("x-api-key")),
    )
    .with_header_style(HeaderStyle::Legacy);
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(layer);
    let addr = serve(app).await;
    let a = raw_get(addr, "X-Api-Key: alice\r\n").await;
    assert!(
        a.starts_with("HTTP/1.1 200") && a.contains("ratelimit-limit: 1"),
        "{a}"
    );
    assert!(raw_get(addr, "X-Api-Key: alice\r\n")
        .await
        .starts_with("HTTP/1.1 429"));
    // Another key has its own budget; a request without the header is not limited.
    assert!(raw_get(addr, "X-Api-Key: bob\r\n")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(raw_get(addr, "").await.starts_with("HTTP/1.1 200"));
    assert!(raw_get(addr, "").await.starts_with("HTTP/1.1 200"));
}

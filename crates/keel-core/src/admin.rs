//! The admin surface every HTTP-speaking role mounts: `/healthz`, `/readyz`, `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::shutdown::Shutdown;
use crate::telemetry::metrics_handle;

/// Boxed future returned by a readiness probe.
pub type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Answers "can this role do its job right now?" (Redis reachable, or in-memory).
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> ReadyFuture + Send + Sync>);

impl Readiness {
    /// Always ready: roles on the in-memory engines.
    pub fn always() -> Self {
        Self(Arc::new(|| Box::pin(async { Ok(()) })))
    }

    /// Ready when `probe` resolves to `Ok`.
    pub fn from_fn<F, Fut>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(probe())))
    }

    /// Runs the probe.
    pub async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

/// `/healthz` (alive), `/readyz` (the readiness probe), `/metrics` (Prometheus text).
pub fn admin_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(readiness)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn render_metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}

/// Binds `addr` and serves `router` until `shutdown` fires, then drains open requests.
/// Returns the bound address through `on_bound` before serving (port 0 picks a free port).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.wait().await })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_status(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_reflects_the_probe() {
        let ok = admin_router(Readiness::always());
        assert_eq!(get_status(ok, "/readyz").await.0, StatusCode::OK);
        let down = admin_router(Readiness::from_fn(|| async { Err("redis down".into()) }));
        let (status, body) = get_status(down, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("redis down"));
    }

    #[tokio::test]
    async fn metrics_and_healthz_answer() {
        let _ = metrics_handle();
        metrics::counter!("keel_admin_test_total").increment(1);
        let router = admin_router(Readiness::always());
        let (status, body) = get_status(router.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("keel_admin_test_total"));
        assert_eq!(get_status(router, "/healthz").await.0, StatusCode::OK);
    }
}

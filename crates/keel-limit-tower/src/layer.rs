//! The `Layer` and `Service`.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use keel_limit::{Limit, Limiter};
use tower::{Layer, Service};

use crate::extract::KeyExtractor;
use crate::headers::{insert_rate_limit_headers, too_many_requests, HeaderStyle};

struct Config {
    limiter: Limiter,
    limits: Vec<Limit>,
    key: KeyExtractor,
    style: HeaderStyle,
}

/// Rate-limits the wrapped service: every request is checked against all `limits` (admitted
/// by all or refused) for the key the extractor yields.
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl RateLimitLayer {
    /// A layer checking `limits` with `limiter`, keyed by `key`, sending draft-11 headers.
    pub fn new(limiter: Limiter, limits: Vec<Limit>, key: KeyExtractor) -> Self {
        Self {
            config: Arc::new(Config {
                limiter,
                limits,
                key,
                style: HeaderStyle::Draft11,
            }),
        }
    }

    /// The same layer with another header style.
    pub fn with_header_style(self, style: HeaderStyle) -> Self {
        let config = Arc::try_unwrap(self.config).unwrap_or_else(|shared| Config {
            limiter: shared.limiter.clone(),
            limits: shared.limits.clone(),
            key: shared.key.clone(),
            style,
        });
        Self {
            config: Arc::new(Config { style, ..config }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let Some(key) = config.key.extract(&parts) else {
                tracing::debug!(
                    path = parts.uri.path(),
                    "no rate-limit key for request; not limited"
                );
                let response = inner.call(Request::from_parts(parts, body)).await?;
                return Ok(response.map(Body::new));
            };
            let checks: Vec<(&Limit, &str, u64)> =
                config.limits.iter().map(|l| (l, key.as_str(), 1)).collect();
            let result = match config.limiter.check_all(&checks).await {
                Ok(result) => result,
                Err(error) => {
                    tracing::error!(%error, "rate limiter refused the check");
                    return Ok(problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &error.to_string(),
                    ));
                }
            };
            let limits: Vec<&Limit> = config.limits.iter().collect();
            if !result.allowed {
                return Ok(too_many_requests(&limits, &result, config.style));
            }
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let mut response = response.map(Body::new);
            insert_rate_limit_headers(
                response.headers_mut(),
                config.style,
                &limits,
                &result.decisions,
            );
            Ok(response)
        })
    }
}

fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

//! The decision API: `POST /v1/check`, `POST /v1/check/batch`, `GET /v1/rules`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_core::{admin_router, Readiness};
use keel_limit::{CheckResult, Limit, LimitError, Limiter};
use keel_limit_tower::headers::insert_rate_limit_headers;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::proxy::Upstream;
use crate::rules::RulesWatcher;

/// Most items in one batch request.
pub const MAX_BATCH: usize = 1_000;
/// Largest request body the API reads.
pub const MAX_BODY: usize = 1 << 20;
/// Longest key accepted.
pub const MAX_KEY: usize = 512;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The limiter (memory or Redis).
    pub limiter: Limiter,
    /// The rules in force.
    pub rules: RulesWatcher,
    /// Proxy mode: where admitted requests go.
    pub upstream: Option<Upstream>,
}

/// The whole HTTP surface: decision API, admin endpoints, and in proxy mode the proxy as the
/// fallback for every other path.
pub fn router(state: AppState, readiness: Readiness) -> Router {
    let proxy = state.upstream.is_some();
    let api = Router::new()
        .route("/v1/check", post(check))
        .route("/v1/check/batch", post(check_batch))
        .route("/v1/rules", get(list_rules))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    let app = if proxy {
        api.fallback(crate::proxy::forward)
    } else {
        api.fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "no such endpoint (decision API: POST /v1/check)",
            )
        })
    };
    app.with_state(state).merge(admin_router(readiness))
}

/// An RFC 9457 problem response.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    rule: Option<String>,
    rules: Option<Vec<String>>,
    key: String,
    #[serde(default = "one")]
    cost: u64,
}

fn one() -> u64 {
    1
}

/// The decision as the API answers it.
#[derive(Debug, Serialize)]
pub struct DecisionBody {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: u64,
    source: keel_limit::Source,
}

impl DecisionBody {
    fn from_result(result: &CheckResult) -> Self {
        let ms = |us: u64| us.div_ceil(1_000);
        Self {
            allowed: result.allowed,
            limit: result.decision.limit,
            remaining: result.decision.remaining,
            reset_after_ms: ms(result.decision.reset_after_us),
            retry_after_ms: ms(result.decision.retry_after_us),
            source: result.source,
        }
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem(self.0, &self.1)
    }
}

fn resolve(state: &AppState, body: &CheckBody) -> Result<Vec<Limit>, ApiError> {
    if body.key.is_empty() || body.key.len() > MAX_KEY {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("key must be 1 to {MAX_KEY} bytes"),
        ));
    }
    let names: Vec<&str> = match (&body.rule, &body.rules) {
        (Some(rule), None) => vec![rule.as_str()],
        (None, Some(rules)) if !rules.is_empty() && rules.len() <= 16 => {
            rules.iter().map(String::as_str).collect()
        }
        (None, Some(_)) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "rules must name 1 to 16 rules".into(),
            ))
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"rule\" or \"rules\"".into(),
            ))
        }
    };
    let current = state.rules.current();
    names
        .into_iter()
        .map(|name| {
            current
                .get(name)
                .map(|r| r.limit.clone())
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown rule {name:?}")))
        })
        .collect()
}

async fn decide(state: &AppState, body: &CheckBody) -> Result<(Vec<Limit>, CheckResult), ApiError> {
    let limits = resolve(state, body)?;
    let checks: Vec<(&Limit, &str, u64)> = limits
        .iter()
        .map(|l| (l, body.key.as_str(), body.cost))
        .collect();
    let result = state
        .limiter
        .check_all(&checks)
        .await
        .map_err(|e| match e {
            LimitError::CostExceedsCapacity { .. } | LimitError::BadCheckCount { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            other => ApiError(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })?;
    Ok((limits, result))
}

/// Parses a JSON body. The content type is not enforced (curl sends form encoding by
/// default); a body that is not the expected JSON is a 400 naming the problem.
fn parse<T: serde::de::DeserializeOwned>(
    _headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON request body: {e}"),
        )
    })
}

async fn check(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let body: CheckBody = parse(&headers, &bytes)?;
    let (limits, result) = decide(&state, &body).await?;
    let mut response = Json(DecisionBody::from_result(&result)).into_response();
    let refs: Vec<&Limit> = limits.iter().collect();
    let style = state.rules.current().header_style;
    insert_rate_limit_headers(response.headers_mut(), style, &refs, &result.decisions);
    Ok(response)
}

async fn check_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let items: Vec<CheckBody> = parse(&headers, &bytes)?;
    if items.len() > MAX_BATCH {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_BATCH} checks per batch"),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        resolve(&state, item).map_err(|ApiError(status, detail)| {
            ApiError(status, format!("item {index}: {detail}"))
        })?;
    }
    // Polled together, so the batcher coalesces them into few script calls.
    let results = futures::future::join_all(items.iter().map(|item| decide(&state, item))).await;
    let mut out = Vec::with_capacity(results.len());
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok((_, result)) => out
                .push(serde_json::to_value(DecisionBody::from_result(&result)).unwrap_or_default()),
            Err(ApiError(status, detail)) => {
                return Err(ApiError(status, format!("item {index}: {detail}")))
            }
        }
    }
    Ok(Json(out).into_response())
}

async fn list_rules(State(state): State<AppState>) -> Json<serde_json::Value> {
    let current = state.rules.current();
    let rules: Vec<_> = current
        .rules()
        .iter()
        .map(|r| {
            json!({
                "name": &*r.limit.name,
                "algorithm": r.limit.spec.algorithm.name(),
                "limit": r.limit.spec.limit,
                "period_ms": r.limit.spec.period_us / 1_000,
                "burst": r.limit.spec.burst,
                "on_redis_error": r.limit.on_redis_error,
            })
        })
        .collect();
    Json(json!({ "rules": rules }))
}

//! The master: HTTP API (JSON, RFC 9457 problems, bearer token on writes), the dashboard,
//! promotion of delayed jobs, the reaper of expired leases, cron, and queue metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use keel_core::{admin_router, Readiness, Shutdown};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cron::{run_cron, validate_schedule, CronConfig, CronSpec};
use crate::engine::{Engine, EngineError, ListFilter};
use crate::model::{now_ms, JobSpec, JobState, QueueLimits, Schedule};

/// Master settings.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// When set, write endpoints need `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// Cron and leader election.
    pub cron: CronConfig,
    /// Period of promotion and reaping.
    pub maintenance_interval: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            api_token: None,
            cron: CronConfig::default(),
            maintenance_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Clone)]
struct AppState {
    engine: Arc<dyn Engine>,
    token: Option<Arc<str>>,
}

/// An RFC 9457 problem (`application/problem+json`).
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<EngineError> for Problem {
    fn from(error: EngineError) -> Self {
        match &error {
            EngineError::Invalid(m) => Problem::bad_request(m.clone()),
            EngineError::Conflict { .. } => {
                Problem::new(StatusCode::CONFLICT, "Conflict", error.to_string())
            }
            e if e.is_unavailable() => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                error.to_string(),
            ),
            _ => {
                tracing::error!(error = %error, "engine error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    error.to_string(),
                )
            }
        }
    }
}

type ApiResult = Result<Response, Problem>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

/// The full router: API, dashboard and `/healthz` `/readyz` `/metrics`.
pub fn router(engine: Arc<dyn Engine>, api_token: Option<String>) -> Router {
    let probe_engine = engine.clone();
    let readiness = Readiness::from_fn(move || {
        let engine = probe_engine.clone();
        async move { engine.ping().await.map_err(|e| e.to_string()) }
    });
    let state = AppState {
        engine,
        token: api_token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    let api = Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/queues", get(queues))
        .route("/v1/queues/{name}/limits", put(set_limits))
        .route("/v1/workers", get(workers))
        .route("/v1/dead", get(dead))
        .route("/v1/schedules", post(put_schedule).get(schedules))
        .route(
            "/v1/schedules/{name}",
            axum::routing::delete(delete_schedule),
        )
        .route("/", get(dashboard))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    api.merge(admin_router(readiness))
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if let (true, Some(token)) = (write, &state.token) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this endpoint needs Authorization: Bearer <KEEL_API_TOKEN>",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn submit(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let spec: JobSpec = parse_json(&body)?;
    spec.validate().map_err(Problem::bad_request)?;
    let queue = spec.queue.clone();
    let enqueued = s.engine.enqueue(vec![spec]).await?;
    let first = enqueued
        .into_iter()
        .next()
        .ok_or_else(|| Problem::from(EngineError::Corrupt("empty enqueue reply".into())))?;
    if !first.duplicate {
        metrics::counter!("keel_jobs_enqueued_total", "queue" => queue).increment(1);
    }
    let status = if first.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(first)).into_response())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchBody {
    Wrapped { jobs: Vec<JobSpec> },
    Bare(Vec<JobSpec>),
}

async fn submit_batch(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let jobs = match parse_json::<BatchBody>(&body)? {
        BatchBody::Wrapped { jobs } | BatchBody::Bare(jobs) => jobs,
    };
    if jobs.is_empty() || jobs.len() > 10_000 {
        return Err(Problem::bad_request("a batch holds 1 to 10000 jobs"));
    }
    for (i, spec) in jobs.iter().enumerate() {
        spec.validate()
            .map_err(|e| Problem::bad_request(format!("jobs[{i}]: {e}")))?;
    }
    let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
    let enqueued = s.engine.enqueue(jobs).await?;
    for (queue, e) in queues.into_iter().zip(&enqueued) {
        if !e.duplicate {
            metrics::counter!("keel_jobs_enqueued_total", "queue" => queue).increment(1);
        }
    }
    Ok((StatusCode::CREATED, Json(json!({"jobs": enqueued}))).into_response())
}

async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.engine.get(&id).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(Problem::not_found(format!("no job {id}"))),
    }
}

async fn cancel_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.engine.cancel(&id).await? {
        Some(state) => Ok(Json(json!({"id": id, "state": state})).into_response()),
        None => Err(Problem::not_found(format!("no job {id}"))),
    }
}

async fn retry_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.engine.retry(&id).await? {
        Some(state) => Ok(Json(json!({"id": id, "state": state})).into_response()),
        None => Err(Problem::not_found(format!("no job {id}"))),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

fn filter_from(q: ListQuery, forced: Option<JobState>) -> Result<ListFilter, Problem> {
    let state = match (forced, q.state.as_deref().filter(|s| !s.is_empty())) {
        (Some(s), _) => Some(s),
        (None, Some(text)) => Some(JobState::parse(text).ok_or_else(|| {
            Problem::bad_request(format!(
                "unknown state {text:?}; one of scheduled, queued, running, succeeded, retrying, dead, cancelled"
            ))
        })?),
        (None, None) => None,
    };
    let queue = q.queue.filter(|q| !q.is_empty());
    if let Some(name) = &queue {
        crate::model::validate_queue_name(name).map_err(Problem::bad_request)?;
    }
    Ok(ListFilter {
        queue,
        state,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    })
}

async fn list_jobs(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let filter = filter_from(q, None)?;
    let jobs = s.engine.list(&filter).await?;
    Ok(Json(json!({"jobs": jobs})).into_response())
}

async fn dead(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let filter = filter_from(q, Some(JobState::Dead))?;
    let jobs = s.engine.list(&filter).await?;
    Ok(Json(json!({"jobs": jobs})).into_response())
}

async fn queues(State(s): State<AppState>) -> ApiResult {
    Ok(Json(json!({"queues": s.engine.queues().await?})).into_response())
}

async fn set_limits(State(s): State<AppState>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let limits: QueueLimits = parse_json(&body)?;
    s.engine.set_limits(&name, &limits).await?;
    Ok(Json(json!({"queue": name, "limits": limits})).into_response())
}

async fn workers(State(s): State<AppState>) -> ApiResult {
    Ok(Json(json!({"workers": s.engine.workers().await?})).into_response())
}

async fn put_schedule(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let schedule: Schedule = parse_json(&body)?;
    validate_schedule(&schedule).map_err(Problem::bad_request)?;
    s.engine.put_schedule(&schedule).await?;
    Ok((StatusCode::CREATED, Json(schedule)).into_response())
}

async fn schedules(State(s): State<AppState>) -> ApiResult {
    let now = now_ms();
    let list: Vec<Value> = s
        .engine
        .schedules()
        .await?
        .into_iter()
        .map(|sch| {
            let next = CronSpec::parse(&sch.cron, &sch.timezone)
                .ok()
                .and_then(|c| c.next_after(now));
            let mut v = serde_json::to_value(&sch).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("next_fire_at".into(), json!(next));
            }
            v
        })
        .collect();
    Ok(Json(json!({"schedules": list})).into_response())
}

async fn delete_schedule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    if s.engine.delete_schedule(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!("no schedule {name}")))
    }
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let _ = headers;
    let rows = match s.engine.queues().await {
        Ok(queues) => queues
            .iter()
            .map(|q| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>-</td></tr>",
                    html_escape(&q.name), q.queued, q.scheduled, q.running, q.dead, q.succeeded_total, q.failed_total
                )
            })
            .collect::<String>(),
        Err(e) => format!("<tr><td colspan=8>store unavailable: {}</td></tr>", html_escape(&e.to_string())),
    };
    Html(include_str!("dashboard.html").replace("{{QUEUE_ROWS}}", &rows)).into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Promotes due jobs and reaps expired leases of every queue, until shutdown. Idempotent:
/// every master may run it.
pub async fn run_maintenance(engine: Arc<dyn Engine>, interval: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        rounds += 1;
        let queues = match engine.queues().await {
            Ok(q) => q,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "maintenance: cannot list queues");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!("maintenance: store reachable again");
            failing = false;
        }
        for q in &queues {
            match engine.promote(&q.name, 1000).await {
                Ok(n) if n > 0 => tracing::debug!(queue = %q.name, jobs = n, "promoted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(queue = %q.name, error = %e, "promote failed"),
            }
            match engine.reap(&q.name, 1000).await {
                Ok(n) if n > 0 => {
                    metrics::counter!("keel_jobs_reaped_total", "queue" => q.name.clone())
                        .increment(n as u64);
                    tracing::info!(queue = %q.name, jobs = n, "re-queued jobs of lost workers")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(queue = %q.name, error = %e, "reap failed"),
            }
            if rounds.is_multiple_of(4) {
                for (state, value) in [
                    ("queued", q.queued),
                    ("scheduled", q.scheduled),
                    ("running", q.running),
                    ("dead", q.dead),
                ] {
                    metrics::gauge!("keel_jobs_queue_depth", "queue" => q.name.clone(), "state" => state)
                        .set(value as f64);
                }
                metrics::gauge!("keel_jobs_dead_total", "queue" => q.name.clone())
                    .set(q.dead_total as f64);
            }
        }
    }
}

/// Serves the master on `listener` with its background loops, until `shutdown`.
pub async fn serve(
    engine: Arc<dyn Engine>,
    config: MasterConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let maintenance = tokio::spawn(run_maintenance(
        engine.clone(),
        config.maintenance_interval,
        shutdown.clone(),
    ));
    let cron = tokio::spawn(run_cron(
        engine.clone(),
        config.cron.clone(),
        shutdown.clone(),
    ));
    let app = router(engine, config.api_token.clone());
    let served = keel_core::serve_http(listener, app, shutdown.clone()).await;
    shutdown.trigger();
    let _ = maintenance.await;
    let _ = cron.await;
    served
}

//! The master's HTTP API on the memory engine: status codes, problem bodies, bearer token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_jobs::master::router;
use keel_jobs::MemoryEngine;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, String, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = request
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, content_type, value)
}

#[tokio::test]
async fn jobs_round_trip_with_problems_and_token() {
    let app = router(Arc::new(MemoryEngine::default()), Some("s3cret".into()));
    let job = json!({"kind": "shell", "payload": {"argv": ["true"]}, "queue": "mail"});

    let (status, ctype, body) = call(&app, "POST", "/v1/jobs", Some(job.clone()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(body["status"], 401);

    let (status, _, body) = call(&app, "POST", "/v1/jobs", Some(job), Some("s3cret")).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = body["id"].as_str().unwrap().to_string();

    let (status, _, body) = call(&app, "GET", &format!("/v1/jobs/{id}"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "queued");
    assert_eq!(body["queue"], "mail");

    let (status, ctype, body) = call(
        &app,
        "POST",
        "/v1/jobs",
        Some(json!({"payload": {}})),
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ctype, "application/problem+json");
    assert!(body["detail"].as_str().unwrap().contains("kind"), "{body}");

    let (status, _, _) = call(&app, "GET", "/v1/jobs?state=bogus", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = call(&app, "GET", "/v1/jobs?queue=mail&state=queued", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);

    let (status, _, body) = call(
        &app,
        "POST",
        "/v1/jobs/batch",
        Some(json!({"jobs": [{"kind": "noop", "payload": {}}, {"kind": "noop", "payload": {}}]})),
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 2);

    let (status, _, body) = call(
        &app,
        "DELETE",
        &format!("/v1/jobs/{id}"),
        None,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "cancelled");
    let (status, _, _) = call(
        &app,
        "DELETE",
        &format!("/v1/jobs/{id}"),
        None,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = call(
        &app,
        "POST",
        &format!("/v1/jobs/{id}/retry"),
        None,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &app,
        "GET",
        "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, body) = call(&app, "GET", "/v1/queues", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("default"), json!("mail")]);

    let (status, _, _) = call(&app, "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn schedules_are_validated() {
    let app = router(Arc::new(MemoryEngine::default()), None);
    let good = json!({"name": "tick", "cron": "*/5 * * * * *", "timezone": "Europe/Paris", "missed": "once",
                      "job": {"kind": "noop", "payload": {}}});
    let (status, _, _) = call(&app, "POST", "/v1/schedules", Some(good), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let bad = json!({"name": "bad", "cron": "* * *", "job": {"kind": "noop", "payload": {}}});
    let (status, _, body) = call(&app, "POST", "/v1/schedules", Some(bad), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("fields"));
    let bad_tz = json!({"name": "bad", "cron": "* * * * *", "timezone": "Nowhere/City", "job": {"kind": "noop", "payload": {}}});
    let (status, _, _) = call(&app, "POST", "/v1/schedules", Some(bad_tz), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = call(&app, "GET", "/v1/schedules", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["schedules"][0]["next_fire_at"].is_i64());
    let (status, _, _) = call(&app, "DELETE", "/v1/schedules/tick", None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&app, "DELETE", "/v1/schedules/tick", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

//! Rate-limit response headers and the 429 problem body.
//!
//! draft-ietf-httpapi-ratelimit-headers-11: `RateLimit-Policy: "api";q=100;w=60` and
//! `RateLimit: "api";r=42;t=30`; the older `RateLimit-Limit/-Remaining/-Reset` on request.

use http::{HeaderMap, HeaderValue};
use keel_limit::{Decision, Limit};
use rand::Rng;

/// Which rate-limit headers to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft 11).
    #[default]
    Draft11,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (earlier drafts).
    Legacy,
    /// Both.
    Both,
    /// None.
    None,
}

fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

fn quoted(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    format!("\"{clean}\"")
}

/// Adds the rate-limit headers for `limits` and their `decisions` (same order).
pub fn insert_rate_limit_headers(
    headers: &mut HeaderMap,
    style: HeaderStyle,
    limits: &[&Limit],
    decisions: &[Decision],
) {
    if limits.is_empty() || decisions.is_empty() {
        return;
    }
    if matches!(style, HeaderStyle::Draft11 | HeaderStyle::Both) {
        let policy: Vec<String> = limits
            .iter()
            .map(|l| {
                format!(
                    "{};q={};w={}",
                    quoted(&l.name),
                    l.spec.limit,
                    secs_ceil(l.spec.period_us).max(1)
                )
            })
            .collect();
        let state: Vec<String> = limits
            .iter()
            .zip(decisions)
            .map(|(l, d)| {
                format!(
                    "{};r={};t={}",
                    quoted(&l.name),
                    d.remaining,
                    secs_ceil(d.reset_after_us)
                )
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&policy.join(", ")) {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&state.join(", ")) {
            headers.insert("ratelimit", v);
        }
    }
    if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
        // The governing limit: fewest remaining.
        if let Some((l, d)) = limits
            .iter()
            .zip(decisions)
            .min_by_key(|(_, d)| d.remaining)
        {
            headers.insert("ratelimit-limit", HeaderValue::from(l.spec.limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
            headers.insert(
                "ratelimit-reset",
                HeaderValue::from(secs_ceil(d.reset_after_us)),
            );
        }
    }
}

/// `Retry-After` in whole seconds, never shorter than the real wait, plus jitter of up to 10%
/// (at least one second) so that refused clients do not come back in lockstep.
pub fn retry_after_secs(retry_after_us: u64) -> u64 {
    let base = secs_ceil(retry_after_us).max(1);
    let spread = (base / 10).max(1);
    base + rand::rng().random_range(0..=spread)
}

/// The whole 429 for a refused check: problem body, jittered `Retry-After`, rate-limit headers.
/// Shared by the tower layer and `keel limit serve`'s proxy so both refuse identically.
pub fn too_many_requests(
    limits: &[&Limit],
    result: &keel_limit::CheckResult,
    style: HeaderStyle,
) -> http::Response<axum::body::Body> {
    let rule = limits
        .iter()
        .zip(&result.decisions)
        .find(|(_, d)| !d.allowed)
        .map(|(l, _)| l.name.to_string())
        .unwrap_or_default();
    let wait = retry_after_secs(result.decision.retry_after_us);
    let mut response =
        http::Response::new(axum::body::Body::from(too_many_requests_body(&rule, wait)));
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
    insert_rate_limit_headers(headers, style, limits, &result.decisions);
    response
}

/// The RFC 9457 problem body of a 429.
pub fn too_many_requests_body(rule: &str, retry_after_secs: u64) -> String {
    serde_json::json!({
        "type": "https://keel.dev/problems/rate-limited",
        "title": "Too Many Requests",
        "status": 429,
        "detail": format!("rate limit {rule:?} exceeded; retry after {retry_after_secs}s"),
        "rule": rule,
        "retry_after": retry_after_secs,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_limit::{Algorithm, LimitSpec};

    #[test]
    fn draft_11_and_legacy_headers() {
        let limit = Limit::new(
            "api",
            LimitSpec::new(Algorithm::Gcra, 100, 60_000_000, Some(20)).expect("spec"),
        );
        let d = Decision {
            allowed: true,
            limit: 20,
            remaining: 7,
            reset_after_us: 2_500_000,
            retry_after_us: 0,
        };
        let mut h = HeaderMap::new();
        insert_rate_limit_headers(&mut h, HeaderStyle::Both, &[&limit], &[d]);
        assert_eq!(h["ratelimit-policy"], "\"api\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"api\";r=7;t=3");
        assert_eq!(h["ratelimit-remaining"], "7");
        assert_eq!(h["ratelimit-reset"], "3");
    }

    #[test]
    fn retry_after_only_lengthens() {
        for _ in 0..100 {
            let s = retry_after_secs(10_000_001);
            assert!((11..=13).contains(&s), "{s}");
            assert!((1..=2).contains(&retry_after_secs(1)));
        }
    }
}

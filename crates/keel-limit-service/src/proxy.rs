//! Reverse-proxy mode: match, key, decide, then forward or answer 429.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use axum::response::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keel_limit::Limit;
use keel_limit_tower::headers::{insert_rate_limit_headers, too_many_requests};
use keel_limit_tower::KeyExtractor;

use crate::api::{problem, AppState};
use crate::rules::KeySource;

/// Where admitted requests go: an `http://` base URL.
#[derive(Clone)]
pub struct Upstream {
    base: Uri,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    /// An upstream at `url` (`http://host:port`, optionally with a base path).
    pub fn new(url: &str) -> Result<Self, String> {
        let base: Uri = url
            .parse()
            .map_err(|e| format!("invalid upstream URL {url:?}: {e}"))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            return Err(format!("upstream {url:?} must be an http://host:port URL"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self { base, client })
    }

    fn target(&self, uri: &Uri) -> Result<Uri, String> {
        let base_path = self.base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{base_path}{path_and_query}")
                .parse()
                .map_err(|e| format!("bad path: {e}"))?,
        );
        Uri::from_parts(parts).map_err(|e| e.to_string())
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The proxy handler (the router's fallback in proxy mode).
pub async fn forward(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    let Some(upstream) = state.upstream.clone() else {
        return problem(StatusCode::NOT_FOUND, "not a proxy");
    };
    let rules = state.rules.current();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let ip_key = KeyExtractor::peer_ip_behind(rules.trusted_proxies.clone());
    let mut limits: Vec<Limit> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for rule in rules.matching(&parts.method, parts.uri.path()) {
        let key = match &rule.key {
            KeySource::Ip => ip_key.extract(&parts),
            KeySource::Path => Some(parts.uri.path().to_string()),
            KeySource::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        // A request without the keying header is not limited by that rule (as in Envoy).
        if let Some(key) = key {
            limits.push(rule.limit.clone());
            keys.push(key);
        }
    }
    let mut decisions = Vec::new();
    if !limits.is_empty() {
        let checks: Vec<(&Limit, &str, u64)> = limits
            .iter()
            .zip(&keys)
            .map(|(l, k)| (l, k.as_str(), 1))
            .collect();
        let result = match state.limiter.check_all(&checks).await {
            Ok(result) => result,
            Err(error) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        };
        let refs: Vec<&Limit> = limits.iter().collect();
        if !result.allowed {
            return too_many_requests(&refs, &result, rules.header_style);
        }
        decisions = result.decisions;
    }
    let target = match upstream.target(&parts.uri) {
        Ok(target) => target,
        Err(error) => return problem(StatusCode::BAD_REQUEST, &error),
    };
    parts.uri = target;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    append_forwarded_for(&mut parts.headers, peer.ip());
    let outgoing = Request::from_parts(parts, body);
    match upstream.client.request(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            let refs: Vec<&Limit> = limits.iter().collect();
            insert_rate_limit_headers(&mut parts.headers, rules.header_style, &refs, &decisions);
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => {
            tracing::warn!(%error, "upstream request failed");
            metrics::counter!("keel_limit_proxy_upstream_errors_total").increment(1);
            problem(StatusCode::BAD_GATEWAY, "upstream unavailable")
        }
    }
}

fn append_forwarded_for(headers: &mut axum::http::HeaderMap, ip: IpAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

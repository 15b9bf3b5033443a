//! The rules file.
//!
//! ```toml
//! [[rule]]
//! name = "api"
//! algorithm = "gcra"        # gcra | token_bucket | sliding_log | sliding_counter | fixed_window
//! limit = 100               # requests per period
//! period = "1m"
//! burst = 20                # optional: capacity for gcra and token_bucket
//! on_redis_error = "local"  # allow | deny | local
//! local_share = 0.5         # optional: share of the limit the local fallback grants this node
//! match = { path_prefix = "/api", methods = ["GET", "POST"] }   # proxy mode
//! key = "ip"                # proxy mode: ip | header:NAME | path
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use keel_core::Shutdown;
use keel_limit::{Algorithm, FailurePolicy, Limit, LimitSpec};
use keel_limit_tower::{Cidr, HeaderStyle};
use parking_lot::RwLock;
use serde::Deserialize;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or breaks a rule; the message names the line.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    headers: Option<String>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    algorithm: toml::Spanned<String>,
    limit: toml::Spanned<u64>,
    period: toml::Spanned<String>,
    burst: Option<u64>,
    on_redis_error: Option<FailurePolicy>,
    local_share: Option<f64>,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    key: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
}

/// Which part of a proxied request keys a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The client IP.
    Ip,
    /// A request header.
    Header(HeaderName),
    /// The path.
    Path,
}

/// Which proxied requests a rule applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    /// Path prefix (`/api`); none matches every path.
    pub path_prefix: Option<String>,
    /// Methods; empty matches every method.
    pub methods: Vec<Method>,
}

impl Matcher {
    /// True when the rule applies to `method path`.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
            && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// One rule: a named limit, and for proxy mode what it matches and how it is keyed.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The limit.
    pub limit: Limit,
    /// Proxy mode: which requests; `None` means the rule is for the decision API only.
    pub matcher: Option<Matcher>,
    /// Proxy mode: the key.
    pub key: KeySource,
}

/// A validated rules file.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Which rate-limit headers to send.
    pub header_style: HeaderStyle,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl RuleSet {
    /// The rules used when no file is given: `default`, GCRA, 100 per second, burst 100.
    pub fn builtin() -> Self {
        let spec = LimitSpec::new(Algorithm::Gcra, 100, 1_000_000, Some(100)).unwrap_or_default();
        Self::from_rules(
            vec![Rule {
                limit: Limit::new("default", spec),
                matcher: Some(Matcher::default()),
                key: KeySource::Ip,
            }],
            Vec::new(),
            HeaderStyle::Draft11,
        )
    }

    fn from_rules(rules: Vec<Rule>, trusted_proxies: Vec<Cidr>, header_style: HeaderStyle) -> Self {
        let by_name = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.limit.name.to_string(), i))
            .collect();
        Self {
            rules,
            by_name,
            trusted_proxies,
            header_style,
        }
    }

    /// Parses and validates a rules file; errors name the line and the problem.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| RuleError::Invalid(e.to_string().trim().to_string()))?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut seen = HashMap::new();
        for spanned in raw.rule {
            let line = line_of(text, spanned.span().start);
            let raw = spanned.into_inner();
            let name = raw.name.clone();
            let fail = |problem: String| {
                RuleError::Invalid(format!("line {line}: rule {name:?}: {problem}"))
            };
            let fail_at = |span: std::ops::Range<usize>, problem: String| {
                RuleError::Invalid(format!(
                    "line {}: rule {name:?}: {problem}",
                    line_of(text, span.start)
                ))
            };
            if raw.name.is_empty()
                || !raw
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(fail(
                    "name must be non-empty letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if let Some(previous) = seen.insert(raw.name.clone(), line) {
                return Err(fail(format!(
                    "duplicate name (first defined on line {previous})"
                )));
            }
            let algorithm: Algorithm = raw
                .algorithm
                .get_ref()
                .parse()
                .map_err(|e| fail_at(raw.algorithm.span(), e))?;
            let period = keel_core::parse_duration(raw.period.get_ref())
                .map_err(|e| fail_at(raw.period.span(), e))?;
            let period_us = u64::try_from(period.as_micros())
                .map_err(|_| fail_at(raw.period.span(), "period too long".into()))?;
            let spec = LimitSpec::new(algorithm, *raw.limit.get_ref(), period_us, raw.burst)
                .map_err(|e| fail_at(raw.limit.span(), e.to_string()))?;
            let mut limit = Limit::new(raw.name.as_str(), spec);
            if let Some(policy) = raw.on_redis_error {
                limit.on_redis_error = policy;
            }
            if let Some(share) = raw.local_share {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(fail("local_share must be in (0, 1]".into()));
                }
                limit.local_share = share;
            }
            let matcher = match raw.matcher {
                None => None,
                Some(m) => {
                    let mut methods = Vec::new();
                    for name in m.methods.unwrap_or_default() {
                        methods.push(
                            Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                                .map_err(|_| fail(format!("invalid method {name:?}")))?,
                        );
                    }
                    if let Some(prefix) = &m.path_prefix {
                        if !prefix.starts_with('/') {
                            return Err(fail(format!(
                                "path_prefix {prefix:?} must start with '/'"
                            )));
                        }
                    }
                    Some(Matcher {
                        path_prefix: m.path_prefix,
                        methods,
                    })
                }
            };
            let key_span = raw.key.as_ref().map(|k| k.span()).unwrap_or(0..0);
            let key = match raw.key.as_ref().map(|k| k.get_ref().as_str()) {
                None | Some("ip") => KeySource::Ip,
                Some("path") => KeySource::Path,
                Some(other) => match other.strip_prefix("header:") {
                    Some(name) => KeySource::Header(
                        HeaderName::from_bytes(name.trim().as_bytes())
                            .map_err(|_| fail(format!("invalid header name {name:?}")))?,
                    ),
                    None => {
                        return Err(fail_at(
                            key_span,
                            format!("key {other:?}: expected ip, path or header:NAME"),
                        ))
                    }
                },
            };
            rules.push(Rule {
                limit,
                matcher,
                key,
            });
        }
        let mut trusted = Vec::new();
        for cidr in raw.trusted_proxies {
            trusted.push(
                cidr.parse::<Cidr>()
                    .map_err(|e| RuleError::Invalid(format!("trusted_proxies: {e}")))?,
            );
        }
        let style = match raw.headers.as_deref() {
            None | Some("draft11") => HeaderStyle::Draft11,
            Some("legacy") => HeaderStyle::Legacy,
            Some("both") => HeaderStyle::Both,
            Some("none") => HeaderStyle::None,
            Some(other) => {
                return Err(RuleError::Invalid(format!(
                    "headers = {other:?}: expected draft11, legacy, both or none"
                )))
            }
        };
        Ok(Self::from_rules(rules, trusted, style))
    }

    /// Reads and parses a rules file.
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            RuleError::Invalid(message) => {
                RuleError::Invalid(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// The rule called `name`.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The proxy-mode rules that apply to `method path`.
    pub fn matching<'a>(
        &'a self,
        method: &'a Method,
        path: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.matcher.as_ref().is_some_and(|m| m.matches(method, path)))
    }
}

/// The rules in force, shared by request handlers and swapped whole on reload.
#[derive(Clone)]
pub struct RulesWatcher {
    current: Arc<RwLock<Arc<RuleSet>>>,
}

impl RulesWatcher {
    /// Fixed rules (no file).
    pub fn fixed(rules: RuleSet) -> Self {
        metrics::gauge!("keel_limit_rules").set(rules.rules().len() as f64);
        Self {
            current: Arc::new(RwLock::new(Arc::new(rules))),
        }
    }

    /// Loads `path` (an error if it is bad) and reloads it whenever it changes; a bad new file
    /// is logged with its line and problem, and the old rules stay in force.
    ///
    /// A change is applied once two reads in a row (one interval apart) find the same content:
    /// a file written in place is truncated first, and its empty or half-written state must not
    /// be taken for the new rules (an empty file is a valid set of no rules).
    pub fn watch(path: PathBuf, every: Duration, shutdown: Shutdown) -> Result<Self, RuleError> {
        let rules = RuleSet::load(&path)?;
        let watcher = Self::fixed(rules);
        let current = watcher.current.clone();
        tokio::spawn(async move {
            // The content in force (applied or refused), and a change seen once.
            let mut last = std::fs::read(&path).ok();
            let mut settling: Option<Vec<u8>> = None;
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = ticker.tick() => {}
                }
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                if last.as_deref() == Some(bytes.as_slice()) {
                    settling = None;
                    continue;
                }
                if settling.as_deref() != Some(bytes.as_slice()) {
                    settling = Some(bytes);
                    continue;
                }
                settling = None;
                last = Some(bytes.clone());
                let text = String::from_utf8_lossy(&bytes);
                match RuleSet::parse(&text) {
                    Ok(rules) => {
                        tracing::info!(path = %path.display(), rules = rules.rules().len(), "rules reloaded");
                        metrics::counter!("keel_limit_rules_reloads_total", "result" => "ok")
                            .increment(1);
                        metrics::gauge!("keel_limit_rules").set(rules.rules().len() as f64);
                        *current.write() = Arc::new(rules);
                    }
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "rules file refused; keeping the previous rules");
                        metrics::counter!("keel_limit_rules_reloads_total", "result" => "error")
                            .increment(1);
                    }
                }
            }
        });
        Ok(watcher)
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trusted_proxies = ["10.0.0.0/8"]

[[rule]]
name = "api"
algorithm = "gcra"
limit = 100
period = "1m"
burst = 20
on_redis_error = "local"
match = { path_prefix = "/api", methods = ["GET", "post"] }
key = "ip"

[[rule]]
name = "login"
algorithm = "sliding_log"
limit = 5
period = "1m"
key = "header:X-User"
"#;

    #[test]
    fn parses_the_documented_example() {
        let rules = RuleSet::parse(GOOD).expect("valid");
        let api = rules.get("api").expect("api");
        assert_eq!(api.limit.spec.burst, 20);
        assert_eq!(api.limit.spec.period_us, 60_000_000);
        assert!(api
            .matcher
            .as_ref()
            .expect("match")
            .matches(&Method::POST, "/api/x"));
        assert!(!api
            .matcher
            .as_ref()
            .expect("match")
            .matches(&Method::DELETE, "/api/x"));
        assert_eq!(
            rules.get("login").expect("login").key,
            KeySource::Header(HeaderName::from_static("x-user"))
        );
        assert_eq!(rules.matching(&Method::GET, "/api/v1").count(), 1);
        assert_eq!(rules.trusted_proxies.len(), 1);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let bad_algorithm = GOOD.replace("\"sliding_log\"", "\"leaky\"");
        let message = RuleSet::parse(&bad_algorithm).expect_err("bad").to_string();
        assert!(
            message.contains("line 16") && message.contains("leaky"),
            "{message}"
        );

        let bad_toml = GOOD.replace("limit = 5", "limit = ");
        let message = RuleSet::parse(&bad_toml).expect_err("bad").to_string();
        assert!(message.contains("line 17"), "{message}");

        let unknown = GOOD.replace("burst = 20", "burst = 20\nbrust = 3");
        let message = RuleSet::parse(&unknown).expect_err("bad").to_string();
        assert!(message.contains("brust"), "{message}");

        let zero = GOOD.replace("limit = 100", "limit = 0");
        let message = RuleSet::parse(&zero).expect_err("bad").to_string();
        assert!(
            message.contains("line 7") && message.contains("limit must be at least 1"),
            "{message}"
        );

        let dup = GOOD.replace("name = \"login\"", "name = \"api\"");
        assert!(RuleSet::parse(&dup)
            .expect_err("dup")
            .to_string()
            .contains("duplicate"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: a rule set or a clear error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = RuleSet::parse(&text);
        }

        /// Mutations of a valid file: a rule set or an error that says where.
        #[test]
        fn mutated_files_fail_with_a_location(cut in 0usize..200, junk in "[a-z=\\[\\]\"0-9 \n]{0,12}") {
            let good = "[[rule]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 100\nperiod = \"1m\"\nburst = 20\n";
            let cut = cut.min(good.len());
            let text = format!("{}{}{}", &good[..cut], junk, &good[cut..]);
            if let Err(error) = RuleSet::parse(&text) {
                let message = error.to_string();
                prop_assert!(message.contains("line") || message.contains("missing field") || message.contains("trusted_proxies"), "{}", message);
            }
        }
    }
}

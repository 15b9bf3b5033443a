//! A multiplexed, self-reconnecting Redis connection with a per-call timeout.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::keys::Keys;

/// Errors of the Redis layer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL could not be parsed or names an unsupported scheme.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the per-call timeout.
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    /// `SCRIPT LOAD` returned a different SHA1 than computed locally.
    #[error("script {name}: SCRIPT LOAD returned {got}, expected {expected}")]
    ScriptHashMismatch {
        /// Script name.
        name: &'static str,
        /// Locally computed SHA1.
        expected: String,
        /// SHA1 returned by Redis.
        got: String,
    },
    /// A script returned a reply of an unexpected shape.
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(String),
}

impl RedisError {
    /// True when the error means "Redis is unreachable or slow" rather than "Redis refused".
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisError::Timeout(_) => true,
            RedisError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.code().is_some_and(|c| c == "LOADING" || c == "BUSY")
            }
            _ => false,
        }
    }
}

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]` or `rediss://…` for TLS.
    pub url: String,
    /// Key prefix (`KEEL_KEY_PREFIX`).
    pub key_prefix: String,
    /// Longest wait for one reply.
    pub response_timeout: Duration,
    /// Longest wait for one connection attempt.
    pub connect_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "keel".into(),
            response_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

impl RedisSettings {
    /// Settings for `url` with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// A cheap-to-clone handle on one multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisHandle {
    manager: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    url_for_logs: String,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("url", &self.url_for_logs)
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl RedisHandle {
    /// A handle that connects on first use, so a service starts even while Redis is down.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Self, RedisError> {
        install_crypto_provider();
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| RedisError::InvalidUrl(format!("{}: {e}", redact(&settings.url))))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.response_timeout))
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            manager,
            keys: Keys::new(settings.key_prefix.clone()),
            timeout: settings.response_timeout,
            url_for_logs: redact(&settings.url),
        })
    }

    /// A handle whose first connection has succeeded (or the error why not).
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisError> {
        let handle = Self::connect_lazy(settings)?;
        handle.ping().await?;
        Ok(handle)
    }

    /// The multiplexed connection (cheap to clone).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// The key builder for this deployment's prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL with any password replaced by `***`.
    pub fn url_for_logs(&self) -> &str {
        &self.url_for_logs
    }

    /// Runs `call` with the per-call timeout.
    pub async fn with_timeout<T, F>(&self, call: F) -> Result<T, RedisError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }

    /// `PING`, within the timeout: the readiness probe.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.connection();
        self.with_timeout(async move {
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }
}

/// The URL with its password hidden, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn install_crypto_provider() {
    // rustls needs one process-wide provider for `rediss://`; ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("rediss://user:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn bad_urls_are_refused_with_a_message() {
        let error = RedisHandle::connect_lazy(&RedisSettings::new("http://x")).unwrap_err();
        assert!(matches!(error, RedisError::InvalidUrl(_)), "{error}");
    }
}

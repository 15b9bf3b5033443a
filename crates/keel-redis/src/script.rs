//! Lua scripts: loaded once, called with EVALSHA, reloaded only on NOSCRIPT.

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, ToRedisArgs};

use crate::handle::RedisError;

/// A Lua script with its SHA1, computed locally so the first call needs no round trip.
#[derive(Clone, Debug)]
pub struct LuaScript {
    name: &'static str,
    source: String,
    sha: String,
}

impl LuaScript {
    /// A script named `name` (for logs and metrics) with the given source.
    pub fn new(name: &'static str, source: impl Into<String>) -> Self {
        let source = source.into();
        let sha = redis::Script::new(&source).get_hash().to_string();
        Self { name, source, sha }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SHA1 Redis knows the script by.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// The Lua source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `SCRIPT LOAD`s the script; call once at start-up (a failure here is not fatal: the first
    /// call reloads on NOSCRIPT).
    pub async fn load<C: ConnectionLike>(&self, conn: &mut C) -> Result<(), RedisError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.source)
            .query_async(conn)
            .await?;
        if sha != self.sha {
            return Err(RedisError::ScriptHashMismatch {
                name: self.name,
                expected: self.sha.clone(),
                got: sha,
            });
        }
        Ok(())
    }

    /// Calls the script with EVALSHA; on an explicit NOSCRIPT error (Redis restarted, or
    /// `SCRIPT FLUSH`), loads it and calls once more. Any other error is returned as it is.
    pub async fn invoke<T, C, K, A>(
        &self,
        conn: &mut C,
        keys: &[K],
        args: &[A],
    ) -> Result<T, RedisError>
    where
        T: FromRedisValue,
        C: ConnectionLike,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(&self.sha).arg(keys.len()).arg(keys).arg(args);
        match evalsha.query_async::<T>(conn).await {
            Ok(value) => Ok(value),
            Err(error) if is_noscript(&error) => {
                tracing::info!(script = self.name, "NOSCRIPT: reloading Lua script");
                metrics::counter!("keel_redis_script_reloads_total", "script" => self.name)
                    .increment(1);
                self.load(conn).await?;
                Ok(evalsha.query_async::<T>(conn).await?)
            }
            Err(error) => Err(error.into()),
        }
    }
}

fn is_noscript(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

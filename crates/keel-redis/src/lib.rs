//! Redis access shared by every Keel service.
//!
//! One [`RedisHandle`] per process: a multiplexed, self-reconnecting connection with a per-call
//! timeout. Scripts are [`LuaScript`]s; keys are built by [`Keys`] so every key a script touches
//! carries the same hash tag.

mod handle;
mod keys;
mod script;

pub use handle::{RedisError, RedisHandle, RedisSettings};
pub use keys::{cluster_slot, Keys};
pub use redis;
pub use script::LuaScript;

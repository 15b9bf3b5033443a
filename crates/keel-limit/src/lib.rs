//! Keel's rate limiter.
//!
//! - [`algorithm`]: five algorithms as pure functions of (spec, state, now, cost); their Lua
//!   twins live in `lua/`.
//! - [`LimitEngine`]: where state lives: [`MemoryEngine`] (one node, sharded, bounded) or
//!   [`RedisEngine`] (many nodes, one Lua call per batch), optionally behind a [`Batcher`].
//! - [`Limiter`]: what callers use: rules, timeouts, the Redis-failure policy, and the
//!   over-limit cache.

pub mod algorithm;
mod batcher;
mod clock;
mod engine;
mod limiter;
mod memory;
mod redis_engine;

pub use algorithm::{evaluate, Algorithm, Decision, Evaluation, LimitSpec, SpecError, State};
pub use batcher::{Batcher, BatcherOptions};
pub use clock::{Clock, FastClock, ManualClock, TokioClock};
pub use engine::{Check, CheckRequest, LimitEngine, LimitError, Outcome};
pub use limiter::{CheckResult, FailurePolicy, Limit, Limiter, LimiterOptions, Source};
pub use memory::{MemoryEngine, MemoryOptions};
pub use redis_engine::{encode_args, RedisEngine, RedisEngineOptions, Scripts};

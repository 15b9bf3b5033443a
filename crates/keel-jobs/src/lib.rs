//! Keel's job scheduler: the job model, one [`Engine`] trait with a memory and a Redis
//! implementation, the worker runtime with its built-in kinds, and the master (HTTP API,
//! dashboard, cron, delayed-job promotion, reaper).

pub mod cron;
pub mod engine;
pub mod kinds;
pub mod master;
pub mod memory;
pub mod model;
pub mod redis_engine;
pub mod worker;

pub use engine::{Engine, EngineConfig, EngineError, EngineResult, ListFilter};
pub use memory::MemoryEngine;
pub use model::{
    Completion, Enqueued, Job, JobSpec, JobState, Lease, MissedPolicy, Outcome, QueueLimits,
    QueueRate, QueueStats, Schedule, WorkerInfo,
};
pub use redis_engine::RedisEngine;
pub use worker::{Handler, JobContext, JobError, Registry, Worker, WorkerConfig};

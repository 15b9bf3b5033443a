//! Runtime plumbing shared by every Keel role.
//!
//! Every role (master, worker, limit service, chat server) starts the same way: install
//! telemetry, build an admin router, serve until [`shutdown::Shutdown`] fires.

pub mod admin;
pub mod duration;
pub mod shutdown;
pub mod telemetry;

pub use admin::{admin_router, serve_http, Readiness};
pub use duration::parse_duration;
pub use shutdown::Shutdown;

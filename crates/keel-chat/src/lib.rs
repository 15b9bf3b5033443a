//! Keel's chat server: IRC (Modern IRC + IRCv3) over TCP, TLS and WebSocket, on one node with
//! the memory engine, behind an engine trait that a Redis engine implements next.
//!
//! Modelled on mini-redis: the wire format is pure functions ([`keel_irc_proto`]), one task per
//! connection ([`conn`]), one shutdown signal ([`keel_core::Shutdown`]).

pub mod admission;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod engine;
pub mod index;
pub mod reconnect;
pub mod server;
pub mod session;
pub mod shared;
pub mod util;
pub mod ws;

pub use config::{Config, ConfigError, Limits, Operator};
pub use engine::{ChatEngine, MemoryEngine, RedisEngine};
pub use server::{bind_listener, ChatServer, RedisRelay, ServerError};
pub use session::{hash_password, verify_password};

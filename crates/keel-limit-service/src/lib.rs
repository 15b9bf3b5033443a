//! `keel limit serve`: rules, the decision API and the rate-limiting reverse proxy.

pub mod api;
pub mod proxy;
pub mod rules;

pub use api::{router, AppState};
pub use rules::{RuleError, RuleSet, RulesWatcher};

//! Rate limiting as a tower `Layer` for axum and hyper services.
//!
//! The layer asks a [`keel_limit::Limiter`] before calling the inner service; a refusal is a 429
//! with a problem body and the standard headers, an admission carries the headers too.

mod extract;
pub mod headers;
mod layer;

pub use extract::{Cidr, KeyExtractor};
pub use headers::HeaderStyle;
pub use layer::{RateLimit, RateLimitLayer};

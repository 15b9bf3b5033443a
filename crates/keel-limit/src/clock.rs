//! Injected time, so tests pause and advance the clock instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in microseconds since the epoch.
    fn now_us(&self) -> i64;
}

/// Wall-clock time advanced by `tokio::time`, so `tokio::time::pause()` and `advance()` move it.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_us: i64,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the system time now and advancing with `tokio::time::Instant`.
    pub fn new() -> Self {
        let base_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2))
            .unwrap_or(0);
        Self {
            base_us,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_us(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.base_us + duration_us(elapsed)
    }
}

/// Microseconds of a duration without a 128-bit division (this is on every decision's path).
fn duration_us(d: std::time::Duration) -> i64 {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4_000_000);
    secs.saturating_mul(1_000_000) + i64::from(d.subsec_micros())
}

/// Wall-clock time advanced by the CPU's time-stamp counter (`quanta`): the production clock of
/// the memory engine. Tests that pause time use [`TokioClock`].
///
/// It owns a calibrated `quanta::Clock` and reads the raw counter, scaling the delta since its
/// start to nanoseconds with one multiplication (as governor's clock does), rather than going
/// through quanta's global clock and `Duration`.
#[derive(Debug, Clone)]
pub struct FastClock {
    base_us: i64,
    clock: quanta::Clock,
    base_raw: u64,
}

impl FastClock {
    /// A clock reading the system time now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let base_raw = clock.raw();
        Self {
            base_us: TokioClock::new().base_us,
            clock,
            base_raw,
        }
    }
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FastClock {
    #[inline]
    fn now_us(&self) -> i64 {
        let nanos = self.clock.delta_as_nanos(self.base_raw, self.clock.raw());
        self.base_us + i64::try_from(nanos / 1_000).unwrap_or(i64::MAX / 4)
    }
}

/// A clock that moves only when told: for pure unit tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `now_us`.
    pub fn new(now_us: i64) -> Self {
        Self(AtomicI64::new(now_us))
    }
    /// Moves the clock forward.
    pub fn advance_us(&self, us: i64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

//! The client reconnect policy Keel documents (README, "Reconnecting"), as pure functions:
//! exponential backoff with full jitter, never shorter than the server's hint.
//!
//! ```text
//! delay(attempt) = max(hint, random(0, min(cap, base * 2^attempt)))
//! ```
//!
//! `attempt` counts failures since the last successful registration (0 for the first retry).
//! `hint` is the `try again in N seconds` of the server's `ERROR` line, when there was one.
//! Full jitter (rather than "equal" jitter or none) spreads a herd of clients that lost their
//! connections at the same instant evenly over the window, so a node that restarts sees a
//! ramp and not a wall.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The window of the first retry.
    pub base: Duration,
    /// The largest window.
    pub cap: Duration,
}

impl Default for Policy {
    /// 1 s doubling up to 60 s.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The jitter window of `attempt`: `min(cap, base * 2^attempt)`.
    pub fn window(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry `attempt`, given `unit`, a uniform random number in [0, 1)
    /// (the caller's RNG: this function is pure), and the server's `hint`.
    pub fn delay(&self, attempt: u32, unit: f64, hint: Option<Duration>) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = self.window(attempt).mul_f64(unit);
        match hint {
            Some(h) => jittered.max(h),
            None => jittered,
        }
    }
}

/// A client's backoff state: the attempt counter.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    pub policy: Policy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: Policy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// Failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next try after a failure, and counts the failure.
    pub fn next_delay(&mut self, unit: f64, hint: Option<Duration>) -> Duration {
        let d = self.policy.delay(self.attempt, unit, hint);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a successful registration.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The server's retry hint in an `ERROR` line: `... try again in N seconds ...`.
pub fn parse_hint(line: &str) -> Option<Duration> {
    let rest = &line[line.find("try again in ")? + "try again in ".len()..];
    let digits: &str = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    let secs: u64 = digits.parse().ok()?;
    let unit = rest[digits.len()..].trim_start();
    if !unit.starts_with("second") {
        return None;
    }
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_doubles_up_to_the_cap() {
        let p = Policy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(10),
        };
        let w: Vec<u128> = (0..7).map(|a| p.window(a).as_millis()).collect();
        assert_eq!(w, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(p.window(1000), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_window() {
        let p = Policy::default();
        assert_eq!(p.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5, None), Duration::from_secs(4));
        assert!(p.delay(3, 0.999_999, None) < Duration::from_secs(8));
        assert_eq!(p.delay(3, f64::NAN, None), Duration::ZERO);
        assert_eq!(p.delay(3, 7.0, None), Duration::from_secs(8));
    }

    #[test]
    fn never_shorter_than_the_hint() {
        let p = Policy::default();
        let hint = Some(Duration::from_secs(6));
        assert_eq!(p.delay(0, 0.3, hint), Duration::from_secs(6));
        assert_eq!(p.delay(5, 0.5, hint), Duration::from_secs(16));
    }

    #[test]
    fn backoff_counts_and_resets() {
        let mut b = Backoff::new(Policy::default());
        assert_eq!(b.next_delay(1.0, None), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0, None), Duration::from_secs(2));
        assert_eq!(b.next_delay(1.0, None), Duration::from_secs(4));
        assert_eq!(b.attempt(), 3);
        b.reset();
        assert_eq!(b.next_delay(1.0, None), Duration::from_secs(1));
    }

    #[test]
    fn parses_the_servers_hint() {
        let refused = "ERROR :Closing Link: Server is busy; try again in 7 seconds";
        assert_eq!(parse_hint(refused), Some(Duration::from_secs(7)));
        let registration =
            "ERROR :Closing Link: 127.0.0.1 (Server is busy; try again in 12 seconds)";
        assert_eq!(parse_hint(registration), Some(Duration::from_secs(12)));
        assert_eq!(
            parse_hint("ERROR :Closing Link: 1.2.3.4 (Ping timeout)"),
            None
        );
        assert_eq!(parse_hint("try again in soon seconds"), None);
        assert_eq!(parse_hint("try again in 5 minutes"), None);
        assert_eq!(
            parse_hint("try again in 99999999 seconds"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_hint("try again in 99999999999999999999999 seconds"),
            None
        );
    }
}

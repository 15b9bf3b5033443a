//! Admission control that paces rather than bans: what a node does when 100,000 clients
//! reconnect in the same second.
//!
//! - **On accept** ([`Pacer`]): new connections are admitted at `accepts_per_sec` (with
//!   `accept_burst`). A connection over the rate is not refused: it gets the next free slot
//!   (GCRA, "virtual scheduling") and waits for it, holding only its socket. It is refused,
//!   with a jittered `try again in N seconds` hint, only when `accept_queue` connections are
//!   already waiting or when its slot is further away than `accept_wait_secs`.
//! - **On registration** ([`RegistrationGate`]): at most `registrations_in_flight`
//!   registrations touch the engine at once; `registration_reserved` of those permits are
//!   kept for clients that authenticated with SASL (known accounts go first). A client that
//!   waits longer than `registration_timeout` for a permit is refused with a hint.
//!
//! Time is `tokio::time`, so the tests run on paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a connection was refused, and when it may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub wait: Duration,
    /// Short label for metrics.
    pub kind: &'static str,
}

impl Refusal {
    pub fn new(kind: &'static str, reason: &'static str, wait: Duration) -> Self {
        Self { reason, wait, kind }
    }

    /// Seconds to tell the client: at least 1, jittered upwards (×1.0–1.5) so that refused
    /// clients do not come back in lockstep.
    pub fn hint_secs(&self) -> u64 {
        let base = self.wait.as_secs_f64().max(1.0);
        (base * rand::rng().random_range(1.0..1.5)).ceil() as u64
    }

    /// `<reason>; try again in N seconds`: the text clients parse (see `reconnect`).
    pub fn message(&self) -> String {
        format!("{}; try again in {} seconds", self.reason, self.hint_secs())
    }

    /// The whole `ERROR` line sent on a refused socket.
    pub fn error_line(&self) -> String {
        format!("ERROR :Closing Link: {}\r\n", self.message())
    }
}

/// What [`Pacer::reserve`] decided.
#[derive(Debug)]
pub enum Pace {
    /// Admit at once.
    Now,
    /// Admit at the ticket's instant (a slot is reserved; the ticket holds a queue place).
    At(Ticket),
    /// Refuse; the slot would have been this far away.
    Refuse(Refusal),
}

/// The accept pacer: a GCRA reservation scheduler with a bounded number of waiters.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    tolerance: Duration,
    queue_max: usize,
    max_wait: Duration,
    /// Theoretical arrival time of the next conforming connection.
    tat: Mutex<Option<Instant>>,
    waiting: Arc<AtomicUsize>,
}

impl Pacer {
    /// `rate` per second with `burst`; `None` when `rate` is not positive (pacing off).
    pub fn new(rate: f64, burst: u32, queue_max: usize, max_wait: Duration) -> Option<Self> {
        if !(rate > 0.0 && rate.is_finite()) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        Some(Self {
            interval,
            tolerance,
            queue_max,
            max_wait,
            tat: Mutex::new(None),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Connections waiting for their slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Decides for a connection arriving at `now`. A slot is only consumed when admitted.
    pub fn reserve(&self, now: Instant) -> Pace {
        let mut tat = self.tat.lock();
        let t = tat.map_or(now, |t| t.max(now));
        let slot = t.checked_sub(self.tolerance).unwrap_or(now).max(now);
        let wait = slot - now;
        if wait.is_zero() {
            *tat = Some(t + self.interval);
            return Pace::Now;
        }
        if self.waiting.load(Ordering::Relaxed) >= self.queue_max {
            return Pace::Refuse(Refusal::new("queue_full", "Server is busy", wait));
        }
        if wait > self.max_wait {
            return Pace::Refuse(Refusal::new("deadline", "Server is busy", wait));
        }
        *tat = Some(t + self.interval);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Pace::At(Ticket {
            at: slot,
            waiting: self.waiting.clone(),
        })
    }
}

/// A reserved admission slot. Dropping it (client gone, shutdown) frees its queue place.
#[derive(Debug)]
pub struct Ticket {
    at: Instant,
    waiting: Arc<AtomicUsize>,
}

impl Ticket {
    /// When the connection is admitted.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Waits for the slot.
    pub async fn ready(self) {
        tokio::time::sleep_until(self.at).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registrations in flight at once, with a share reserved for known accounts (SASL).
#[derive(Debug)]
pub struct RegistrationGate {
    general: Option<Arc<Semaphore>>,
    reserved: Option<Arc<Semaphore>>,
    max_wait: Duration,
}

/// Held while a registration runs; dropping it lets the next one in.
#[derive(Debug)]
pub struct RegistrationPermit {
    _permit: Option<OwnedSemaphorePermit>,
    /// True when the permit came from the share reserved for accounts.
    pub reserved: bool,
}

impl RegistrationGate {
    /// `in_flight` permits in all (0: no limit), `reserved` of them only for SASL clients.
    pub fn new(in_flight: usize, reserved: usize, max_wait: Duration) -> Self {
        if in_flight == 0 {
            return Self {
                general: None,
                reserved: None,
                max_wait,
            };
        }
        let reserved = reserved.min(in_flight.saturating_sub(1));
        Self {
            general: Some(Arc::new(Semaphore::new(in_flight - reserved))),
            reserved: (reserved > 0).then(|| Arc::new(Semaphore::new(reserved))),
            max_wait,
        }
    }

    /// Permits free now for clients without an account.
    pub fn available(&self) -> usize {
        self.general
            .as_ref()
            .map_or(usize::MAX, |s| s.available_permits())
    }

    /// Waits for a permit: a client with a known account may also take a reserved one.
    pub async fn enter(&self, known_account: bool) -> Result<RegistrationPermit, Refusal> {
        let Some(general) = self.general.clone() else {
            return Ok(RegistrationPermit {
                _permit: None,
                reserved: false,
            });
        };
        let reserved = self.reserved.clone().filter(|_| known_account);
        if let Ok(p) = general.clone().try_acquire_owned() {
            return Ok(RegistrationPermit {
                _permit: Some(p),
                reserved: false,
            });
        }
        if let Some(r) = &reserved {
            if let Ok(p) = r.clone().try_acquire_owned() {
                return Ok(RegistrationPermit {
                    _permit: Some(p),
                    reserved: true,
                });
            }
        }
        metrics::counter!("keel_chat_registrations_paced_total").increment(1);
        let wait = async {
            match reserved {
                Some(r) => tokio::select! {
                    p = general.acquire_owned() => p.ok().map(|p| (p, false)),
                    p = r.acquire_owned() => p.ok().map(|p| (p, true)),
                },
                None => general.acquire_owned().await.ok().map(|p| (p, false)),
            }
        };
        match tokio::time::timeout(self.max_wait, wait).await {
            Ok(Some((p, reserved))) => Ok(RegistrationPermit {
                _permit: Some(p),
                reserved,
            }),
            _ => Err(Refusal::new(
                "registration",
                "Server is busy",
                Duration::from_secs(5),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: f64, burst: u32, queue: usize, wait_secs: u64) -> Pacer {
        Pacer::new(rate, burst, queue, Duration::from_secs(wait_secs)).expect("pacing on")
    }

    #[test]
    fn off_when_rate_is_zero() {
        assert!(Pacer::new(0.0, 10, 10, Duration::from_secs(1)).is_none());
        assert!(Pacer::new(f64::NAN, 10, 10, Duration::from_secs(1)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_slots_spaced_at_the_rate() {
        let p = pacer(10.0, 3, 100, 60);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(p.reserve(now), Pace::Now));
        }
        // Over the burst: paced, not refused, one slot every 100 ms.
        let mut tickets = Vec::new();
        for _ in 0..5 {
            match p.reserve(now) {
                Pace::At(t) => tickets.push(t),
                other => panic!("expected a slot, got {other:?}"),
            }
        }
        let ms: Vec<u128> = tickets.iter().map(|t| (t.at() - now).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 300, 400, 500]);
        assert_eq!(p.waiting(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_when_the_queue_is_full_and_recovers_after_tickets_drop() {
        let p = pacer(10.0, 1, 2, 60);
        let now = Instant::now();
        assert!(matches!(p.reserve(now), Pace::Now));
        let a = match p.reserve(now) {
            Pace::At(t) => t,
            other => panic!("{other:?}"),
        };
        let b = match p.reserve(now) {
            Pace::At(t) => t,
            other => panic!("{other:?}"),
        };
        // Two waiting = the queue bound: the third is refused with the time it would wait.
        match p.reserve(now) {
            Pace::Refuse(r) => {
                assert_eq!(r.kind, "queue_full");
                assert_eq!(r.wait, Duration::from_millis(300));
            }
            other => panic!("{other:?}"),
        }
        a.ready().await;
        assert_eq!(p.waiting(), 1);
        drop(b);
        assert_eq!(p.waiting(), 0);
        // The refused one did not consume a slot: the next slot follows b's.
        let now2 = Instant::now();
        match p.reserve(now2) {
            Pace::At(t) => assert_eq!(t.at() - now, Duration::from_millis(300)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_deadline() {
        let p = pacer(2.0, 1, 1000, 1);
        let now = Instant::now();
        assert!(matches!(p.reserve(now), Pace::Now));
        let mut tickets = Vec::new();
        // Slots at 0.5 s and 1.0 s are within the 1 s deadline; 1.5 s is not.
        for _ in 0..2 {
            match p.reserve(now) {
                Pace::At(t) => tickets.push(t),
                other => panic!("{other:?}"),
            }
        }
        match p.reserve(now) {
            Pace::Refuse(r) => {
                assert_eq!(r.kind, "deadline");
                assert_eq!(r.wait, Duration::from_millis(1500));
                assert!(r.message().contains("try again in"), "{}", r.message());
            }
            other => panic!("{other:?}"),
        }
        // Time passes: the bucket refills and admission is immediate again.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(p.reserve(Instant::now()), Pace::Now));
    }

    #[tokio::test(start_paused = true)]
    async fn ticket_ready_wakes_at_its_slot() {
        let p = pacer(4.0, 1, 10, 60);
        let start = Instant::now();
        assert!(matches!(p.reserve(start), Pace::Now));
        let t = match p.reserve(start) {
            Pace::At(t) => t,
            other => panic!("{other:?}"),
        };
        t.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(250));
    }

    #[test]
    fn hint_is_never_shorter_than_the_wait() {
        let r = Refusal::new("deadline", "Server is busy", Duration::from_millis(4200));
        for _ in 0..100 {
            let s = r.hint_secs();
            assert!((5..=7).contains(&s), "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn known_accounts_go_first() {
        let gate = RegistrationGate::new(3, 1, Duration::from_secs(10));
        // Two general permits taken by anonymous registrations.
        let a = gate.enter(false).await.expect("permit");
        let b = gate.enter(false).await.expect("permit");
        assert!(!a.reserved && !b.reserved);
        // A third anonymous client waits (and is refused after the deadline) ...
        let waited = gate.enter(false).await;
        assert_eq!(waited.expect_err("no permit").kind, "registration");
        // ... while an account holder gets the reserved permit at once.
        let acct = gate.enter(true).await.expect("reserved permit");
        assert!(acct.reserved);
        // Reserved share used up: the next account holder waits for any permit.
        let next = tokio::spawn({
            let gate = Arc::new(gate);
            let g = gate.clone();
            async move { g.enter(true).await.map(|p| p.reserved) }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert_eq!(next.await.expect("join"), Ok(false));
    }

    #[tokio::test]
    async fn gate_off_admits_everyone() {
        let gate = RegistrationGate::new(0, 0, Duration::from_secs(1));
        let permits: Vec<_> = futures::future::join_all((0..100).map(|_| gate.enter(false))).await;
        assert!(permits.iter().all(Result::is_ok));
    }
}

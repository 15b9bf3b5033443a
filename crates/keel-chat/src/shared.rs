//! State of one chat node that every connection task shares.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::client::Hub;
use crate::config::Config;
use crate::engine::{ChatEngine, ClientId};
use crate::util::MsgIds;

pub const VERSION: &str = concat!("keel-", env!("CARGO_PKG_VERSION"));

/// A token bucket (the accept-rate and per-client command gates).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, rate: f64, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.last = now;
    }

    /// Takes one token; on refusal, how long until one is there.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Takes one token even into debt (down to `-burst`); returns the debt as a wait.
    /// `None` when the debt limit is passed (the client floods).
    pub fn penalise(&mut self, rate: f64, burst: u32, now: Instant) -> Option<Duration> {
        self.refill(rate, burst, now);
        self.tokens -= 1.0;
        if self.tokens < -f64::from(burst) {
            return None;
        }
        if self.tokens >= 0.0 {
            Some(Duration::ZERO)
        } else {
            Some(Duration::from_secs_f64(-self.tokens / rate))
        }
    }
}

#[derive(Debug)]
struct Admission {
    global: Bucket,
    per_ip: HashMap<IpAddr, Bucket>,
}

/// The node: configuration, engine, local connections.
#[derive(Debug)]
pub struct Shared<E> {
    pub config: Config,
    pub engine: E,
    pub hub: Hub,
    pub msgids: MsgIds,
    pub created: String,
    next_id: AtomicU64,
    pub unregistered: AtomicUsize,
    admission: Mutex<Admission>,
}

impl<E: ChatEngine> Shared<E> {
    pub fn new(config: Config, engine: E) -> Self {
        let burst = config.limits.accept_burst;
        Self {
            config,
            engine,
            hub: Hub::default(),
            msgids: MsgIds::default(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            next_id: AtomicU64::new(1),
            unregistered: AtomicUsize::new(0),
            admission: Mutex::new(Admission {
                global: Bucket::full(burst),
                per_ip: HashMap::new(),
            }),
        }
    }

    pub fn next_id(&self) -> ClientId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Admission on accept: `Err(reason, retry hint)` when the connection must be refused.
    pub fn admit(&self, ip: IpAddr) -> Result<(), (&'static str, Duration)> {
        let limits = &self.config.limits;
        if limits.max_unregistered > 0
            && self.unregistered.load(Ordering::Relaxed) >= limits.max_unregistered
        {
            return Err(("Too many unregistered connections", Duration::from_secs(5)));
        }
        let now = Instant::now();
        let mut adm = self.admission.lock();
        if limits.accepts_per_sec > 0.0 {
            adm.global
                .take(limits.accepts_per_sec, limits.accept_burst, now)
                .map_err(|wait| ("Server is busy", wait))?;
        }
        if limits.accepts_per_ip_per_sec > 0.0 {
            if adm.per_ip.len() > 100_000 {
                adm.per_ip.clear();
            }
            let burst = limits.accept_burst.clamp(1, 20);
            adm.per_ip
                .entry(ip)
                .or_insert_with(|| Bucket::full(burst))
                .take(limits.accepts_per_ip_per_sec, burst, now)
                .map_err(|wait| ("Too many connections from your address", wait))?;
        }
        Ok(())
    }
}

//! State of one chat node that every connection task shares.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use keel_limit::{Algorithm, Limit, LimitSpec, Limiter};

use crate::admission::{Pace, Pacer, Refusal, RegistrationGate, Ticket};
use crate::client::Hub;
use crate::config::Config;
use crate::engine::{client_id, ChatEngine, ClientId, NodeId};
use crate::util::MsgIds;

pub const VERSION: &str = concat!("keel-", env!("CARGO_PKG_VERSION"));

/// A token-bucket limit of `rate` per second with `burst`; `None` when `rate` is zero (off).
fn rate_limit(name: &str, rate: f64, burst: u32) -> Option<Limit> {
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    let (limit, period_us) = if rate >= 1.0 {
        (rate.round() as u64, 1_000_000)
    } else {
        (1, (1_000_000.0 / rate) as u64)
    };
    let spec = LimitSpec::new(
        Algorithm::TokenBucket,
        limit,
        period_us,
        Some(u64::from(burst.max(1))),
    )
    .map_err(|e| tracing::warn!(limit = name, error = %e, "invalid limit; turned off"))
    .ok()?;
    Some(Limit::new(name.to_owned(), spec))
}

/// Departures remembered while the store is unreachable, at most.
pub const MAX_PENDING_DEPARTURES: usize = 100_000;

/// The node: configuration, engine, local connections.
pub struct Shared<E> {
    pub config: Config,
    pub engine: E,
    pub hub: Hub,
    pub msgids: MsgIds,
    pub created: String,
    /// This node's number: the high half of every client id it hands out.
    pub node: NodeId,
    next_seq: AtomicU32,
    /// The store answered the last heartbeat.
    store_ok: AtomicBool,
    /// The relay's subscription is up (always true without a relay).
    relay_ok: AtomicBool,
    degraded: AtomicBool,
    /// Clients that left while the store was unreachable: their QUIT is announced, and their
    /// record removed, once it answers again (bounded; see [`Shared::defer_departure`]).
    pending_departures: parking_lot::Mutex<Vec<(ClientId, String)>>,
    /// Local clients whose channel index entries may be wrong: a JOIN or PART whose store
    /// call did not answer (it may still have been applied). Rechecked by the liveness task.
    index_recheck: parking_lot::Mutex<Vec<ClientId>>,
    pub unregistered: AtomicUsize,
    limiter: Limiter,
    /// Paces new connections (global accept rate); see [`crate::admission`].
    pub pacer: Option<Pacer>,
    /// Registrations in flight, known accounts first.
    pub registration: RegistrationGate,
    accept_ip: Option<Limit>,
    commands: Option<Limit>,
}

impl<E: ChatEngine> Shared<E> {
    pub fn new(config: Config, engine: E, node: NodeId) -> Self {
        let l = &config.limits;
        let pacer = Pacer::new(
            l.accepts_per_sec,
            l.accept_burst,
            l.accept_queue,
            Duration::from_secs_f64(l.accept_wait_secs.clamp(0.0, 3600.0)),
        );
        let registration = RegistrationGate::new(
            l.registrations_in_flight,
            l.registration_reserved,
            config.registration_timeout,
        );
        let accept_ip = rate_limit(
            "chat_accept_ip",
            l.accepts_per_ip_per_sec,
            l.accept_burst.clamp(1, 20),
        );
        let commands = rate_limit("chat_commands", l.commands_per_sec, l.command_burst);
        Self {
            config,
            engine,
            hub: Hub::default(),
            msgids: MsgIds::default(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            node,
            next_seq: AtomicU32::new(1),
            store_ok: AtomicBool::new(true),
            relay_ok: AtomicBool::new(true),
            degraded: AtomicBool::new(false),
            pending_departures: parking_lot::Mutex::new(Vec::new()),
            index_recheck: parking_lot::Mutex::new(Vec::new()),
            unregistered: AtomicUsize::new(0),
            limiter: Limiter::memory(),
            pacer,
            registration,
            accept_ip,
            commands,
        }
    }

    pub fn next_id(&self) -> ClientId {
        let mut seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        }
        client_id(self.node, seq)
    }

    /// Remembers a departure the store could not record; the liveness task retries it. Past
    /// `MAX_PENDING_DEPARTURES` the oldest are left to the presence TTL of this node's restart.
    pub(crate) fn defer_departure(&self, id: ClientId, reason: &str) {
        let mut pending = self.pending_departures.lock();
        if pending.len() >= MAX_PENDING_DEPARTURES {
            pending.remove(0);
            metrics::counter!("keel_chat_departures_dropped_total").increment(1);
        }
        pending.push((id, reason.to_owned()));
    }

    /// Asks the liveness task to check `id`'s channel index entries against the store.
    pub(crate) fn recheck_index(&self, id: ClientId) {
        let mut v = self.index_recheck.lock();
        if v.len() < MAX_PENDING_DEPARTURES && !v.contains(&id) {
            v.push(id);
        }
    }

    pub(crate) fn take_index_rechecks(&self) -> Vec<ClientId> {
        std::mem::take(&mut *self.index_recheck.lock())
    }

    pub(crate) fn take_pending_departures(&self) -> Vec<(ClientId, String)> {
        std::mem::take(&mut *self.pending_departures.lock())
    }

    /// True while the store or the relay is unreachable: commands needing the network are
    /// refused and local clients have been told.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub(crate) fn set_store_ok(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::Relaxed);
        self.update_degraded();
    }

    pub(crate) fn set_relay_ok(&self, ok: bool) {
        self.relay_ok.store(ok, Ordering::Relaxed);
        self.update_degraded();
    }

    fn update_degraded(&self) {
        let degraded =
            !(self.store_ok.load(Ordering::Relaxed) && self.relay_ok.load(Ordering::Relaxed));
        if self.degraded.swap(degraded, Ordering::Relaxed) == degraded {
            return;
        }
        metrics::gauge!("keel_chat_degraded").set(if degraded { 1.0 } else { 0.0 });
        let text = if degraded {
            tracing::warn!("chat network degraded: the store is unreachable");
            "*** Network degraded: you stay connected here, but channels, history and users on other servers are unavailable until it recovers"
        } else {
            tracing::info!("chat network recovered");
            "*** Network recovered"
        };
        let notice = std::sync::Arc::new(
            keel_irc_proto::Message::new("NOTICE", vec!["*".into(), text.into()])
                .with_source(self.config.server_name.clone()),
        );
        for h in self.hub.all() {
            h.send(notice.clone());
        }
    }

    /// Admission on accept. `Ok(None)`: admit now; `Ok(Some(ticket))`: admit when the
    /// ticket is ready (paced); `Err`: refuse with a retry hint. Never waits itself.
    pub async fn admit(&self, ip: IpAddr) -> Result<Option<Ticket>, Refusal> {
        let r = self.admit_inner(ip).await;
        match &r {
            Ok(None) => metrics::counter!("keel_chat_admitted_total", "how" => "now").increment(1),
            Ok(Some(_)) => {
                metrics::counter!("keel_chat_admitted_total", "how" => "paced").increment(1)
            }
            Err(refusal) => {
                metrics::counter!("keel_chat_refused_total", "reason" => refusal.kind).increment(1)
            }
        }
        if let Some(p) = &self.pacer {
            metrics::gauge!("keel_chat_accept_waiting").set(p.waiting() as f64);
        }
        r
    }

    async fn admit_inner(&self, ip: IpAddr) -> Result<Option<Ticket>, Refusal> {
        let limits = &self.config.limits;
        if limits.max_unregistered > 0
            && self.unregistered.load(Ordering::Relaxed) >= limits.max_unregistered
        {
            return Err(Refusal::new(
                "unregistered",
                "Too many unregistered connections",
                Duration::from_secs(5),
            ));
        }
        // One address over its own rate is refused (that is abuse, not a storm) ...
        if let Some(l) = &self.accept_ip {
            match self.limiter.check(l, &ip.to_string(), 1).await {
                Ok(r) if !r.allowed => {
                    return Err(Refusal::new(
                        "ip",
                        "Too many connections from your address",
                        Duration::from_micros(r.decision.retry_after_us),
                    ));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "admission check failed; admitting"),
            }
        }
        // ... while everyone together over the global rate is paced.
        match &self.pacer {
            None => Ok(None),
            Some(p) => match p.reserve(tokio::time::Instant::now()) {
                Pace::Now => Ok(None),
                Pace::At(ticket) => Ok(Some(ticket)),
                Pace::Refuse(r) => Err(r),
            },
        }
    }

    /// Per-client command rate: `Ok` to run the next command now, `Err(wait)` to hold it.
    pub async fn command_gate(&self, id: ClientId) -> Result<(), Duration> {
        let Some(limit) = &self.commands else {
            return Ok(());
        };
        match self.limiter.check(limit, &id.to_string(), 1).await {
            Ok(r) if r.allowed => Ok(()),
            Ok(r) => Err(Duration::from_micros(r.decision.retry_after_us.max(1000))),
            Err(_) => Ok(()),
        }
    }
}

//! A chat network of stateless nodes on one store: delivery to clients on other nodes, node
//! liveness, the clean-up after a dead node, and the degraded mode while Redis is away.
//!
//! - Every [`ClientId`] carries its node's number, so a delivery to a client that is not
//!   connected here becomes an [`Envelope`] published on that node's pub/sub channel: one
//!   subscription per node, not per client ([`run_relay`]).
//! - A channel delivery (PRIVMSG, NOTICE, TAGMSG, JOIN) is not routed by member ids: the
//!   engine only checks permission, and one [`Envelope::Channel`] is published on the
//!   all-nodes channel ([`all_channel`]); each node delivers it to its own members from its
//!   channel index ([`crate::index`]). Per message the store returns no member list and the
//!   relay carries one envelope, whatever the channel's size. Other nodes' deliveries are
//!   not retried individually: PUBLISH counts this node's own subscription too.
//! - Each node heartbeats its record and its clients' presence ([`run_liveness`]); a node that
//!   stops (SIGKILL) lets both lapse, and the one surviving node holding the `reaper` lock
//!   unregisters its clients, which tells their channel peers (QUIT) and MONITOR watchers
//!   (731). `unregister` is atomic, so each departure is announced once.
//! - While the store is unreachable the node is *degraded*: local connections stay up and are
//!   told so; commands that need the network state are refused with
//!   `FAIL <cmd> TEMPORARILY_UNAVAILABLE` (nothing is queued, so nothing arrives late or out of
//!   order). A delivery no node received (PUBLISH counts 0 subscribers, as while a node
//!   resubscribes after a Redis restart) or whose PUBLISH failed is retried in order for
//!   [`RELAY_RETRY_FOR`], then dropped and counted. When the store answers again
//!   the node heartbeats at once; clients the store no longer knows (state lost) are
//!   disconnected with a reconnect hint so that their clients register again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_core::Shutdown;
use keel_irc_proto::Message;
use tokio::sync::mpsc;

use crate::client::{Dest, Want};
use crate::engine::{ChatEngine, ClientId, Departed, NodeId};
use crate::shared::Shared;
use crate::util::{format_time, unix_ms};

/// Most ids in one envelope; larger deliveries are split.
pub const MAX_ENVELOPE_IDS: usize = 4096;
/// Deliveries waiting for the relay; past this they are dropped and counted.
pub const OUTBOX_CAPACITY: usize = 65_536;
/// How long a delivery to a node that is not subscribed (resubscribing, or dead) is retried.
pub const RELAY_RETRY_FOR: Duration = Duration::from_secs(10);
/// Deliveries held for retry, at most.
pub const RELAY_RETRY_MAX: usize = 65_536;
const RELAY_RETRY_EVERY: Duration = Duration::from_millis(100);

/// A delivery on its way to another node.
struct Pending {
    first: tokio::time::Instant,
    dest: Dest,
    payload: Vec<u8>,
}

/// Expired clients unregistered per reaper pass.
const REAP_BATCH: usize = 512;

/// A delivery for clients connected to another node.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// Send `msg` to each of `ids` that negotiated `need`; one that negotiated the variant's
    /// capability gets the variant instead.
    Deliver {
        ids: Vec<ClientId>,
        need: Want,
        msg: Arc<Message>,
        variant: Option<(u32, Arc<Message>)>,
    },
    /// Send `msg` to every member of `channel` (folded) connected to the receiving node, by
    /// its channel index, except `skip`; published once on the all-nodes channel by `origin`.
    Channel {
        origin: NodeId,
        channel: String,
        skip: ClientId,
        need: Want,
        msg: Arc<Message>,
        variant: Option<(u32, Arc<Message>)>,
    },
    /// `id` (connected to the receiving node) is no longer in `channel` (a KICK).
    Part { id: ClientId, channel: String },
    /// Disconnect a client (KILL).
    Kill { id: ClientId, reason: String },
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not UTF-8")]
    Utf8,
    #[error("malformed envelope header")]
    Header,
    #[error("too many ids in an envelope")]
    TooManyIds,
    #[error("malformed message in envelope: {0}")]
    Message(String),
}

impl Envelope {
    /// The wire form: a header line, then the message line(s).
    ///
    /// `D <need> <variant cap or -> <id,id,...>\n<line>[\n<variant line>]`,
    /// `C <origin> <need> <variant cap or -> <skip> <channel>\n<line>[\n<variant line>]`,
    /// `P <id> <channel>\n` or `K <id>\n<reason>`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(128);
        match self {
            Envelope::Deliver {
                ids,
                need,
                msg,
                variant,
            } => {
                out.push_str("D ");
                push_want(&mut out, *need);
                out.push(' ');
                match variant {
                    Some((cap, _)) => out.push_str(&cap.to_string()),
                    None => out.push('-'),
                }
                out.push(' ');
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&id.to_string());
                }
                out.push('\n');
                msg.write_to(&mut out);
                if let Some((_, m)) = variant {
                    out.push('\n');
                    m.write_to(&mut out);
                }
            }
            Envelope::Channel {
                origin,
                channel,
                skip,
                need,
                msg,
                variant,
            } => {
                out.push_str("C ");
                out.push_str(&origin.to_string());
                out.push(' ');
                push_want(&mut out, *need);
                out.push(' ');
                match variant {
                    Some((cap, _)) => out.push_str(&cap.to_string()),
                    None => out.push('-'),
                }
                out.push(' ');
                out.push_str(&skip.to_string());
                out.push(' ');
                out.push_str(channel);
                out.push('\n');
                msg.write_to(&mut out);
                if let Some((_, m)) = variant {
                    out.push('\n');
                    m.write_to(&mut out);
                }
            }
            Envelope::Part { id, channel } => {
                out.push_str("P ");
                out.push_str(&id.to_string());
                out.push(' ');
                out.push_str(channel);
                out.push('\n');
            }
            Envelope::Kill { id, reason } => {
                out.push_str("K ");
                out.push_str(&id.to_string());
                out.push('\n');
                out.push_str(&reason.replace(['\r', '\n'], " "));
            }
        }
        out.into_bytes()
    }

    /// Parses the wire form; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| EnvelopeError::Utf8)?;
        let (header, body) = text.split_once('\n').ok_or(EnvelopeError::Header)?;
        let mut parts = header.split(' ');
        match parts.next() {
            Some("D") => {
                let need = parse_want(parts.next())?;
                let variant_cap = match parts.next() {
                    Some("-") => None,
                    other => Some(parse_num::<u32>(other)?),
                };
                let list = parts.next().ok_or(EnvelopeError::Header)?;
                if parts.next().is_some() {
                    return Err(EnvelopeError::Header);
                }
                let mut ids = Vec::new();
                for id in list.split(',') {
                    if ids.len() >= MAX_ENVELOPE_IDS {
                        return Err(EnvelopeError::TooManyIds);
                    }
                    ids.push(parse_num::<u64>(Some(id))?);
                }
                let (msg, variant) = parse_lines(body, variant_cap)?;
                Ok(Envelope::Deliver {
                    ids,
                    need,
                    msg,
                    variant,
                })
            }
            Some("C") => {
                let origin = parse_num::<NodeId>(parts.next())?;
                let need = parse_want(parts.next())?;
                let variant_cap = match parts.next() {
                    Some("-") => None,
                    other => Some(parse_num::<u32>(other)?),
                };
                let skip = parse_num::<u64>(parts.next())?;
                let channel = parts.next().filter(|c| !c.is_empty());
                let channel = channel.ok_or(EnvelopeError::Header)?.to_owned();
                if parts.next().is_some() {
                    return Err(EnvelopeError::Header);
                }
                let (msg, variant) = parse_lines(body, variant_cap)?;
                Ok(Envelope::Channel {
                    origin,
                    channel,
                    skip,
                    need,
                    msg,
                    variant,
                })
            }
            Some("P") => {
                let id = parse_num::<u64>(parts.next())?;
                let channel = parts.next().filter(|c| !c.is_empty());
                let channel = channel.ok_or(EnvelopeError::Header)?.to_owned();
                if parts.next().is_some() || !body.is_empty() {
                    return Err(EnvelopeError::Header);
                }
                Ok(Envelope::Part { id, channel })
            }
            Some("K") => {
                let id = parse_num::<u64>(parts.next())?;
                if parts.next().is_some() {
                    return Err(EnvelopeError::Header);
                }
                Ok(Envelope::Kill {
                    id,
                    reason: body.to_owned(),
                })
            }
            _ => Err(EnvelopeError::Header),
        }
    }
}

/// `need` or `need/unless`.
fn push_want(out: &mut String, want: Want) {
    out.push_str(&want.need.to_string());
    if want.unless != 0 {
        out.push('/');
        out.push_str(&want.unless.to_string());
    }
}

fn parse_want(text: Option<&str>) -> Result<Want, EnvelopeError> {
    let text = text.ok_or(EnvelopeError::Header)?;
    match text.split_once('/') {
        Some((need, unless)) => Ok(Want {
            need: parse_num(Some(need))?,
            unless: parse_num(Some(unless))?,
        }),
        None => Ok(Want::need(parse_num(Some(text))?)),
    }
}

/// The message line and, with a variant capability, the variant line after it.
#[allow(clippy::type_complexity)]
fn parse_lines(
    body: &str,
    variant_cap: Option<u32>,
) -> Result<(Arc<Message>, Option<(u32, Arc<Message>)>), EnvelopeError> {
    match variant_cap {
        Some(cap) => {
            let (a, b) = body.split_once('\n').ok_or(EnvelopeError::Header)?;
            Ok((parse_message(a)?, Some((cap, parse_message(b)?))))
        }
        None => Ok((parse_message(body)?, None)),
    }
}

fn parse_num<T: std::str::FromStr>(text: Option<&str>) -> Result<T, EnvelopeError> {
    text.and_then(|t| t.parse().ok())
        .ok_or(EnvelopeError::Header)
}

fn parse_message(line: &str) -> Result<Arc<Message>, EnvelopeError> {
    Message::parse(line.as_bytes())
        .map(Arc::new)
        .map_err(|e| EnvelopeError::Message(e.to_string()))
}

/// The pub/sub channel of a node.
pub fn node_channel(prefix: &str, node: NodeId) -> String {
    format!("{prefix}:{{chat}}:node:{node}")
}

/// The pub/sub channel every node subscribes to: channel deliveries, one PUBLISH each.
pub fn all_channel(prefix: &str) -> String {
    format!("{prefix}:{{chat}}:all")
}

fn dest_channel(prefix: &str, dest: Dest) -> String {
    match dest {
        Dest::Node(n) => node_channel(prefix, n),
        Dest::All => all_channel(prefix),
    }
}

/// Rebuilds the channel index of this node's clients from the store (after it was away,
/// when memberships may have been lost or changed without this node hearing of it). Stops,
/// leaving the rest as it was, if the store goes away again.
pub async fn resync_index<E: ChatEngine>(shared: &Shared<E>) {
    let ids = shared.hub.registered_ids();
    if resync_clients(shared, &ids).await {
        metrics::counter!("keel_chat_index_resyncs_total").increment(1);
        tracing::info!(
            clients = ids.len(),
            "channel index resynchronised with the store"
        );
    }
}

/// Sets the index entries of `ids` (local clients) to their channels in the store; false
/// when the store went away before all were done (those left are asked again later).
async fn resync_clients<E: ChatEngine>(shared: &Shared<E>, ids: &[ClientId]) -> bool {
    for (i, &id) in ids.iter().enumerate() {
        let chans: Vec<String> = shared
            .engine
            .channels_of(id)
            .await
            .iter()
            .map(|c| keel_irc_proto::casefold(c))
            .collect();
        if !shared.engine.available() {
            tracing::warn!(
                done = i,
                "channel index resync stopped: the store went away"
            );
            for &id in &ids[i..] {
                shared.recheck_index(id);
            }
            return false;
        }
        shared.hub.index_set_client(id, &chans);
    }
    true
}

/// Tells the peers (QUIT) and MONITOR watchers (731) of a client that left the network.
pub async fn announce_departure<E: ChatEngine>(shared: &Shared<E>, d: &Departed, reason: &str) {
    let quit = Arc::new(
        Message::new("QUIT", vec![reason.to_owned()])
            .with_source(d.client.mask())
            .with_tag("time", format_time(unix_ms())),
    );
    shared
        .hub
        .deliver_want(&d.peers, d.client.id, &quit, Want::MEMBERSHIP);
    let server = shared.config.server_name.clone();
    for w in shared.engine.watchers(&d.client.nick).await {
        if let Some(watcher) = shared.engine.client(w).await {
            let m = Message::new("731", vec![watcher.nick, d.client.nick.clone()])
                .with_source(server.clone());
            shared.hub.deliver(&[w], d.client.id, &Arc::new(m), 0);
        }
    }
}

/// Heartbeats this node and its clients, reaps the clients of dead nodes (under the reaper
/// lock), and tracks whether the store is reachable, until `shutdown`.
pub async fn run_liveness<E: ChatEngine>(shared: Arc<Shared<E>>, shutdown: Shutdown) {
    let ttl = shared.config.presence_ttl.max(Duration::from_secs(1));
    let full_every = (ttl / 3).max(Duration::from_millis(300));
    let tick = full_every.min(Duration::from_secs(1));
    let node = shared.node;
    let mut last_full = tokio::time::Instant::now() - full_every;
    // Consecutive answered heartbeats: recovery is announced after two, so a Redis that is
    // still loading its data does not make the node flap between degraded and recovered.
    let mut answered = 0u32;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = interval.tick() => {}
        }
        // A full heartbeat (every client) each third of the TTL, and right after the store
        // comes back; a node-only one on other ticks, which also probes the store.
        let full = last_full.elapsed() >= full_every || shared.is_degraded();
        let ids = if full {
            shared.hub.registered_ids()
        } else {
            Vec::new()
        };
        match shared.engine.heartbeat(node, &ids, ttl).await {
            Ok(unknown) => {
                if full {
                    last_full = tokio::time::Instant::now();
                }
                answered = answered.saturating_add(1);
                let was_degraded = shared.is_degraded();
                if answered >= 2 || !was_degraded {
                    shared.set_store_ok(true);
                }
                if was_degraded && !shared.is_degraded() {
                    resync_index(&shared).await;
                }
                for id in unknown {
                    if let Some(h) = shared.hub.get(id) {
                        if h.is_registered() {
                            metrics::counter!("keel_chat_state_lost_total").increment(1);
                            h.kill("Network state lost; reconnect in 5 seconds");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                answered = 0;
                shared.set_store_ok(false);
                continue;
            }
        }
        // Index entries a JOIN or PART without an answer may have left wrong.
        let recheck = shared.take_index_rechecks();
        if !recheck.is_empty() {
            resync_clients(&shared, &recheck).await;
        }
        // Departures the store missed while it was away.
        let pending = shared.take_pending_departures();
        for (i, (id, reason)) in pending.iter().enumerate() {
            shared.engine.monitor_clear(*id).await;
            match shared.engine.unregister(*id).await {
                Some(d) => announce_departure(&shared, &d, reason).await,
                None if !shared.engine.available() => {
                    for (id, reason) in &pending[i..] {
                        shared.defer_departure(*id, reason);
                    }
                    break;
                }
                None => {}
            }
        }
        if shared.engine.lock("reaper", node, full_every * 2).await {
            for id in shared.engine.expired_clients(REAP_BATCH).await {
                if let Some(d) = shared.engine.unregister(id).await {
                    metrics::counter!("keel_chat_reaped_total").increment(1);
                    tracing::info!(nick = %d.client.nick, node = crate::engine::node_of(id), "presence lapsed; announcing QUIT");
                    announce_departure(&shared, &d, "Ping timeout: node lost").await;
                }
            }
        }
    }
}

/// Starts the relay for this node on Redis: a publisher draining the hub's outbox, and one
/// subscription on this node's channel feeding the hub. Returns when `shutdown` fires.
pub async fn run_relay<E: ChatEngine>(
    shared: Arc<Shared<E>>,
    handle: keel_redis::RedisHandle,
    client: redis::Client,
    mut outbox: mpsc::Receiver<(Dest, Envelope)>,
    shutdown: Shutdown,
) {
    let prefix = handle.keys().prefix().to_owned();
    let channel = node_channel(&prefix, shared.node);
    let everyone = all_channel(&prefix);
    let sub_shared = shared.clone();
    let sub_shutdown = shutdown.clone();
    let subscriber = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = tokio::select! {
                _ = sub_shutdown.wait() => return,
                r = tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub()) => r,
            };
            let mut pubsub = match connected {
                Ok(Ok(p)) => p,
                other => {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::debug!(%error, "relay subscription failed; retrying");
                    sub_shared.set_relay_ok(false);
                    tokio::select! {
                        _ = sub_shutdown.wait() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe(&[&channel, &everyone]).await {
                tracing::debug!(error = %e, "SUBSCRIBE failed; retrying");
                sub_shared.set_relay_ok(false);
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = Duration::from_millis(100);
            sub_shared.set_relay_ok(true);
            tracing::info!(%channel, "relay subscribed");
            let mut stream = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = sub_shutdown.wait() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                metrics::counter!("keel_chat_relay_in_total").increment(1);
                match Envelope::decode(msg.get_payload_bytes()) {
                    Ok(env) => sub_shared.hub.receive(env),
                    Err(e) => {
                        metrics::counter!("keel_chat_relay_bad_total").increment(1);
                        tracing::warn!(error = %e, "dropping a malformed relay envelope");
                    }
                }
            }
            tracing::warn!("relay subscription lost; reconnecting");
            sub_shared.set_relay_ok(false);
        }
    });

    let mut conn = handle.connection();
    let mut batch: Vec<(Dest, Envelope)> = Vec::with_capacity(256);
    // Deliveries no node received (PUBLISH counted 0 subscribers: the node is resubscribing
    // after a Redis restart, or dead) or whose PUBLISH failed: retried in order for
    // RELAY_RETRY_FOR, then dropped and counted. Bounded by RELAY_RETRY_MAX.
    let mut retry: VecDeque<Pending> = VecDeque::new();
    loop {
        batch.clear();
        let got = tokio::select! {
            _ = shutdown.wait() => break,
            n = outbox.recv_many(&mut batch, 256) => Some(n),
            _ = tokio::time::sleep(RELAY_RETRY_EVERY), if !retry.is_empty() => None,
        };
        if got == Some(0) {
            break; // the hub is gone
        }
        let now = tokio::time::Instant::now();
        let mut items: Vec<Pending> = Vec::with_capacity(retry.len() + batch.len());
        for p in retry.drain(..) {
            if now.duration_since(p.first) < RELAY_RETRY_FOR {
                items.push(p);
            } else {
                metrics::counter!("keel_chat_relay_dropped_total").increment(1);
            }
        }
        for (dest, env) in batch.drain(..) {
            for env in split(env) {
                items.push(Pending {
                    first: now,
                    dest,
                    payload: env.encode(),
                });
            }
        }
        if items.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for p in &items {
            pipe.publish(dest_channel(&prefix, p.dest), &p.payload);
        }
        let sent = handle
            .with_timeout(async {
                pipe.query_async::<Vec<i64>>(&mut conn)
                    .await
                    .map_err(keel_redis::RedisError::from)
            })
            .await;
        let receivers = match sent {
            Ok(r) if r.len() == items.len() => r,
            Ok(_) => vec![0; items.len()],
            Err(e) => {
                tracing::debug!(error = %e, "relay publish failed; retrying");
                vec![0; items.len()]
            }
        };
        let mut delivered = 0u64;
        for (p, n) in items.into_iter().zip(receivers) {
            if n > 0 {
                delivered += 1;
            } else if retry.len() < RELAY_RETRY_MAX {
                retry.push_back(p);
            } else {
                metrics::counter!("keel_chat_relay_dropped_total").increment(1);
            }
        }
        metrics::counter!("keel_chat_relay_out_total").increment(delivered);
        metrics::gauge!("keel_chat_relay_retrying").set(retry.len() as f64);
    }
    subscriber.abort();
}

/// Splits an envelope whose id list is longer than [`MAX_ENVELOPE_IDS`].
fn split(env: Envelope) -> Vec<Envelope> {
    match env {
        Envelope::Deliver {
            ids,
            need,
            msg,
            variant,
        } if ids.len() > MAX_ENVELOPE_IDS => ids
            .chunks(MAX_ENVELOPE_IDS)
            .map(|c| Envelope::Deliver {
                ids: c.to_vec(),
                need,
                msg: msg.clone(),
                variant: variant.clone(),
            })
            .collect(),
        other => vec![other],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(line: &str) -> Arc<Message> {
        Arc::new(Message::parse(line.as_bytes()).unwrap())
    }

    #[test]
    fn deliver_round_trips() {
        let env = Envelope::Deliver {
            ids: vec![1 << 32 | 7, 2 << 32 | 9],
            need: Want::need(4),
            msg: msg("@time=2026-01-01T00:00:00.000Z;msgid=x :a!b@c PRIVMSG #x :hello world"),
            variant: None,
        };
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn variant_and_kill_round_trip() {
        let env = Envelope::Deliver {
            ids: vec![5],
            need: Want::MEMBERSHIP,
            msg: msg(":a!b@c JOIN #x"),
            variant: Some((128, msg(":a!b@c JOIN #x acct :Real Name"))),
        };
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        let kill = Envelope::Kill {
            id: 3 << 32 | 1,
            reason: "Killed (op (bye))".into(),
        };
        assert_eq!(Envelope::decode(&kill.encode()).unwrap(), kill);
    }

    #[test]
    fn channel_and_part_round_trip() {
        for env in [
            Envelope::Channel {
                origin: 3,
                channel: "#big".into(),
                skip: 3 << 32 | 1,
                need: Want::need(0),
                msg: msg("@time=2026-01-01T00:00:00.000Z;msgid=x :a!b@c PRIVMSG #big :hi there"),
                variant: None,
            },
            Envelope::Channel {
                origin: 1,
                channel: "#big".into(),
                skip: 0,
                need: Want::MEMBERSHIP,
                msg: msg(":a!b@c JOIN #big"),
                variant: Some((128, msg(":a!b@c JOIN #big * :Real Name"))),
            },
            Envelope::Part {
                id: 2 << 32 | 4,
                channel: "#big".into(),
            },
        ] {
            assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }
        for bad in [
            &b"C 1 0 - 5\n:a PRIVMSG #x :y"[..],
            b"C 1 0 - 5 #x extra\n:a PRIVMSG #x :y",
            b"C x 0 - 5 #x\n:a PRIVMSG #x :y",
            b"C 1 0/x - 5 #x\n:a PRIVMSG #x :y",
            b"P 1\n",
            b"P 1 #x\nbody",
            b"P x #x\n",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_kill_reason_cannot_inject_lines() {
        let kill = Envelope::Kill {
            id: 1,
            reason: "a\r\nQUIT".into(),
        };
        match Envelope::decode(&kill.encode()).unwrap() {
            Envelope::Kill { reason, .. } => assert!(!reason.contains('\n')),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        for bad in [
            &b""[..],
            b"D",
            b"D 1 - \n:a PRIVMSG #x :y",
            b"D x - 1\n:a PRIVMSG #x :y",
            b"D 1 2 1\n:a PRIVMSG #x :y",
            b"K\nreason",
            b"K 1 2\nreason",
            b"Z 1\n",
            b"\xff\xfe",
            b"D 1 - 1\n",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..MAX_ENVELOPE_IDS + 1).map(|i| i.to_string()).collect();
        let line = format!("D 0 - {}\n:a PRIVMSG #x :y", many.join(","));
        assert_eq!(
            Envelope::decode(line.as_bytes()),
            Err(EnvelopeError::TooManyIds)
        );
    }

    #[test]
    fn large_deliveries_are_split() {
        let env = Envelope::Deliver {
            ids: (0..10_000).collect(),
            need: Want::need(0),
            msg: msg(":a PRIVMSG #x :y"),
            variant: None,
        };
        let parts = split(env);
        assert_eq!(parts.len(), 3);
        let total: usize = parts
            .iter()
            .map(|e| match e {
                Envelope::Deliver { ids, .. } => ids.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 10_000);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Envelope::decode(&bytes);
        }
    }
}

//! What other tasks hold of a connection: its send queue, its kill switch, its capabilities.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use keel_irc_proto::Message;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Envelope;
use crate::engine::{node_of, ClientId, NodeId};

/// IRCv3 capabilities, as bits.
pub mod cap {
    pub const MESSAGE_TAGS: u32 = 1 << 0;
    pub const SERVER_TIME: u32 = 1 << 1;
    pub const ECHO_MESSAGE: u32 = 1 << 2;
    pub const BATCH: u32 = 1 << 3;
    pub const LABELED_RESPONSE: u32 = 1 << 4;
    pub const MULTI_PREFIX: u32 = 1 << 5;
    pub const USERHOST_IN_NAMES: u32 = 1 << 6;
    pub const EXTENDED_JOIN: u32 = 1 << 7;
    pub const AWAY_NOTIFY: u32 = 1 << 8;
    pub const ACCOUNT_NOTIFY: u32 = 1 << 9;
    pub const ACCOUNT_TAG: u32 = 1 << 10;
    pub const INVITE_NOTIFY: u32 = 1 << 11;
    pub const SETNAME: u32 = 1 << 12;
    pub const CAP_NOTIFY: u32 = 1 << 13;
    pub const SASL: u32 = 1 << 14;
    pub const CHATHISTORY: u32 = 1 << 15;
    pub const ACCOUNT_REGISTRATION: u32 = 1 << 16;
    pub const EXTENDED_MONITOR: u32 = 1 << 17;
    pub const NO_IMPLICIT_NAMES: u32 = 1 << 18;

    /// Name, bit, and the value shown in `CAP LS 302`.
    pub const ALL: &[(&str, u32, &str)] = &[
        ("message-tags", MESSAGE_TAGS, ""),
        ("server-time", SERVER_TIME, ""),
        ("echo-message", ECHO_MESSAGE, ""),
        ("batch", BATCH, ""),
        ("labeled-response", LABELED_RESPONSE, ""),
        ("multi-prefix", MULTI_PREFIX, ""),
        ("userhost-in-names", USERHOST_IN_NAMES, ""),
        ("extended-join", EXTENDED_JOIN, ""),
        ("away-notify", AWAY_NOTIFY, ""),
        ("account-notify", ACCOUNT_NOTIFY, ""),
        ("account-tag", ACCOUNT_TAG, ""),
        ("invite-notify", INVITE_NOTIFY, ""),
        ("setname", SETNAME, ""),
        ("cap-notify", CAP_NOTIFY, ""),
        ("sasl", SASL, "PLAIN"),
        ("draft/chathistory", CHATHISTORY, ""),
        (
            "draft/account-registration",
            ACCOUNT_REGISTRATION,
            "before-connect",
        ),
        ("extended-monitor", EXTENDED_MONITOR, ""),
        ("draft/no-implicit-names", NO_IMPLICIT_NAMES, ""),
    ];

    /// The bit of a capability name.
    pub fn by_name(name: &str) -> Option<u32> {
        ALL.iter().find(|(n, _, _)| *n == name).map(|(_, b, _)| *b)
    }
}

/// The shared half of a connection.
#[derive(Debug)]
pub struct ClientHandle {
    pub id: ClientId,
    tx: mpsc::Sender<Arc<Message>>,
    kill: CancellationToken,
    reason: Mutex<Option<String>>,
    caps: AtomicU32,
    registered: AtomicBool,
}

impl ClientHandle {
    pub(crate) fn new(id: ClientId, tx: mpsc::Sender<Arc<Message>>) -> Self {
        Self {
            id,
            tx,
            kill: CancellationToken::new(),
            reason: Mutex::new(None),
            caps: AtomicU32::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Queues a message; a full queue drops the client with "SendQ exceeded".
    pub fn send(&self, msg: Arc<Message>) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    metrics::counter!("keel_chat_sendq_drops_total").increment(1);
                    self.kill("SendQ exceeded");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Disconnects the client with `reason` (the first reason given wins).
    pub fn kill(&self, reason: &str) {
        let mut slot = self.reason.lock();
        if slot.is_none() {
            *slot = Some(reason.to_owned());
        }
        self.kill.cancel();
    }

    pub(crate) fn kill_token(&self) -> CancellationToken {
        self.kill.clone()
    }

    pub(crate) fn kill_reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    /// True when the client negotiated every capability in `bits`.
    pub fn has(&self, bits: u32) -> bool {
        self.caps.load(Ordering::Relaxed) & bits == bits
    }

    pub(crate) fn caps(&self) -> u32 {
        self.caps.load(Ordering::Relaxed)
    }

    pub(crate) fn set_caps(&self, bits: u32) {
        self.caps.store(bits, Ordering::Relaxed);
    }

    /// True between a successful registration and the departure: the node heartbeats this
    /// client's presence.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    pub(crate) fn set_registered(&self, on: bool) {
        self.registered.store(on, Ordering::Relaxed);
    }
}

/// Where deliveries for clients on other nodes go: a bounded queue drained by the relay
/// (Redis pub/sub, one channel per node).
pub type Outbox = mpsc::Sender<(NodeId, Envelope)>;

/// The connections of this node, by id, and the way to the others.
#[derive(Debug, Default)]
pub struct Hub {
    clients: RwLock<HashMap<ClientId, Arc<ClientHandle>>>,
    /// Set when this node is part of a network; without it every client is local.
    outbox: OnceLock<Outbox>,
}

impl Hub {
    pub(crate) fn insert(&self, handle: Arc<ClientHandle>) {
        self.clients.write().insert(handle.id, handle);
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.clients.write().remove(&id);
    }

    /// Connects the hub to the relay that carries deliveries to other nodes.
    pub fn set_outbox(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    /// The handle of a connection on this node.
    pub fn get(&self, id: ClientId) -> Option<Arc<ClientHandle>> {
        self.clients.read().get(&id).cloned()
    }

    /// Handles of those ids that are connected here.
    pub fn many(&self, ids: &[ClientId]) -> Vec<Arc<ClientHandle>> {
        let map = self.clients.read();
        ids.iter().filter_map(|id| map.get(id).cloned()).collect()
    }

    /// Sends `msg` to each of `ids` (except `skip`) that negotiated `need`, here or on its
    /// node.
    pub fn deliver(&self, ids: &[ClientId], skip: ClientId, msg: &Arc<Message>, need: u32) {
        self.route(ids, skip, need, msg, None);
    }

    /// Like [`Hub::deliver`], but a recipient that negotiated `cap` gets `with` instead of
    /// `msg` (extended-join).
    pub fn deliver_variant(
        &self,
        ids: &[ClientId],
        skip: ClientId,
        msg: &Arc<Message>,
        cap: u32,
        with: &Arc<Message>,
    ) {
        self.route(ids, skip, 0, msg, Some((cap, with)));
    }

    fn route(
        &self,
        ids: &[ClientId],
        skip: ClientId,
        need: u32,
        msg: &Arc<Message>,
        variant: Option<(u32, &Arc<Message>)>,
    ) {
        let mut remote: HashMap<NodeId, Vec<ClientId>> = HashMap::new();
        {
            let map = self.clients.read();
            for id in ids {
                if *id == skip {
                    continue;
                }
                match map.get(id) {
                    Some(h) => deliver_to(h, need, msg, variant),
                    None => remote.entry(node_of(*id)).or_default().push(*id),
                }
            }
        }
        let Some(outbox) = self.outbox.get() else {
            return;
        };
        for (node, ids) in remote {
            let env = Envelope::Deliver {
                ids,
                need,
                msg: msg.clone(),
                variant: variant.map(|(cap, m)| (cap, m.clone())),
            };
            if outbox.try_send((node, env)).is_err() {
                metrics::counter!("keel_chat_relay_dropped_total").increment(1);
            }
        }
    }

    /// Disconnects a client wherever it is connected; false when it is on no node we can
    /// reach.
    pub fn kill(&self, id: ClientId, reason: &str) -> bool {
        if let Some(h) = self.get(id) {
            h.kill(reason);
            return true;
        }
        let Some(outbox) = self.outbox.get() else {
            return false;
        };
        let env = Envelope::Kill {
            id,
            reason: reason.to_owned(),
        };
        outbox.try_send((node_of(id), env)).is_ok()
    }

    /// Carries out an envelope that arrived from another node for clients connected here.
    pub fn receive(&self, env: Envelope) {
        match env {
            Envelope::Deliver {
                ids,
                need,
                msg,
                variant,
            } => {
                let map = self.clients.read();
                for id in ids {
                    if let Some(h) = map.get(&id) {
                        deliver_to(h, need, &msg, variant.as_ref().map(|(c, m)| (*c, m)));
                    }
                }
            }
            Envelope::Kill { id, reason } => {
                if let Some(h) = self.get(id) {
                    h.kill(&reason);
                }
            }
        }
    }

    /// Ids of the registered clients connected here (the heartbeat's list).
    pub fn registered_ids(&self) -> Vec<ClientId> {
        self.clients
            .read()
            .values()
            .filter(|h| h.is_registered())
            .map(|h| h.id)
            .collect()
    }

    /// Connections now open.
    pub fn len(&self) -> usize {
        self.clients.read().len()
    }

    /// True with no connection open.
    pub fn is_empty(&self) -> bool {
        self.clients.read().is_empty()
    }

    /// Every handle (shutdown).
    pub fn all(&self) -> Vec<Arc<ClientHandle>> {
        self.clients.read().values().cloned().collect()
    }
}

fn deliver_to(
    h: &ClientHandle,
    need: u32,
    msg: &Arc<Message>,
    variant: Option<(u32, &Arc<Message>)>,
) {
    match variant {
        Some((cap, with)) if h.has(cap) => h.send(with.clone()),
        _ if h.has(need) => h.send(msg.clone()),
        _ => {}
    }
}

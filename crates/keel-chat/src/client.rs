//! What other tasks hold of a connection: its send queue, its kill switch, its capabilities.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use keel_irc_proto::Message;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::ClientId;

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
}

impl ClientHandle {
    pub(crate) fn new(id: ClientId, tx: mpsc::Sender<Arc<Message>>) -> Self {
        Self {
            id,
            tx,
            kill: CancellationToken::new(),
            reason: Mutex::new(None),
            caps: AtomicU32::new(0),
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
}

/// The connections of this node, by id.
#[derive(Debug, Default)]
pub struct Hub {
    clients: RwLock<HashMap<ClientId, Arc<ClientHandle>>>,
}

impl Hub {
    pub(crate) fn insert(&self, handle: Arc<ClientHandle>) {
        self.clients.write().insert(handle.id, handle);
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.clients.write().remove(&id);
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

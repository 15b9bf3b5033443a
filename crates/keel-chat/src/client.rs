//! What other tasks hold of a connection: its send queue, its kill switch, its capabilities.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use keel_irc_proto::Message;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::cluster::Envelope;
use crate::engine::{node_of, ClientId, NodeId};
use crate::index::ChannelIndex;

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
    /// Keel's own, opt-out: no JOIN, PART or QUIT of other users (a client of a very large
    /// channel that does not track its members: a JOIN goes to every member, so N members
    /// joining cost N² lines without it). KICKs and everything else still arrive.
    pub const NO_MEMBERSHIP: u32 = 1 << 19;

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
        ("keel.dev/no-membership", NO_MEMBERSHIP, ""),
    ];

    /// The bit of a capability name.
    pub fn by_name(name: &str) -> Option<u32> {
        ALL.iter().find(|(n, _, _)| *n == name).map(|(_, b, _)| *b)
    }
}

/// The capability bits that decide which tags a client sees (see [`crate::conn::render`]).
const TAG_CAPS: [u32; 5] = [
    cap::MESSAGE_TAGS,
    cap::SERVER_TIME,
    cap::ACCOUNT_TAG,
    cap::BATCH,
    cap::LABELED_RESPONSE,
];

/// The rendering class of `caps`: clients of one class get the same bytes for any message.
pub fn tag_class(caps: u32) -> usize {
    TAG_CAPS
        .iter()
        .enumerate()
        .filter(|(_, bit)| caps & **bit != 0)
        .map(|(i, _)| 1usize << i)
        .sum()
}

/// A message on its way to local connections: rendered at most once per tag class and the
/// bytes shared by every recipient of that class, instead of once per recipient.
#[derive(Debug)]
pub struct Outgoing {
    msg: Arc<Message>,
    rendered: [OnceLock<Arc<str>>; 1 << TAG_CAPS.len()],
}

impl Outgoing {
    pub fn new(msg: Arc<Message>) -> Arc<Self> {
        Arc::new(Self {
            msg,
            rendered: Default::default(),
        })
    }

    /// The wire line (without CR LF) for a client with `caps`.
    pub fn line(&self, caps: u32) -> Arc<str> {
        self.rendered[tag_class(caps)]
            .get_or_init(|| Arc::from(crate::conn::render(caps, &self.msg)))
            .clone()
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }
}

/// The shared half of a connection.
///
/// Delivery: a line for a connection whose send queue is empty is written to its socket at
/// once by the delivering task, with one non-blocking write (plain TCP only), so a channel
/// message costs no task wake-up per recipient. Only when the socket would block (or takes
/// part of the line) does the line wait in the queue for the connection's own task, which
/// then owns the socket's write side until the queue is empty again. The queue's lock also
/// guards the socket's write side, so lines never interleave or overtake each other.
#[derive(Debug)]
pub struct ClientHandle {
    pub id: ClientId,
    sendq: Mutex<SendQ>,
    /// Wakes the connection task when lines wait in the queue.
    wake: Notify,
    /// The socket, for direct writes (plain TCP); `None` for TLS and WebSocket, whose lines
    /// always go through the queue.
    direct: Option<Arc<TcpStream>>,
    /// Lines the queue holds at most; past that the client is dropped ("SendQ exceeded").
    sendq_max: usize,
    kill: CancellationToken,
    reason: Mutex<Option<String>>,
    caps: AtomicU32,
    registered: AtomicBool,
}

/// A connection's send queue.
#[derive(Debug, Default)]
struct SendQ {
    lines: VecDeque<Arc<Outgoing>>,
    /// The unwritten end of a line a direct write wrote only in part: it goes first.
    tail: Vec<u8>,
    /// The connection task owns the socket's write side (it is writing, or lines wait):
    /// deliveries queue instead of writing.
    busy: bool,
    /// The connection is ending: deliveries are dropped.
    closed: bool,
}

/// What the connection task takes from its queue to write.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The end of a partly written line, to write before `lines`.
    pub tail: Vec<u8>,
    pub lines: Vec<Arc<str>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.tail.is_empty() && self.lines.is_empty()
    }
}

impl ClientHandle {
    /// A handle whose lines always go through the queue.
    #[cfg(test)]
    pub(crate) fn new(id: ClientId, sendq_max: usize) -> Self {
        Self::with_socket(id, sendq_max, None)
    }

    /// A handle that writes directly to `socket` while its queue is empty.
    pub(crate) fn with_socket(
        id: ClientId,
        sendq_max: usize,
        socket: Option<Arc<TcpStream>>,
    ) -> Self {
        Self {
            id,
            sendq: Mutex::new(SendQ::default()),
            wake: Notify::new(),
            direct: socket,
            sendq_max: sendq_max.max(1),
            kill: CancellationToken::new(),
            reason: Mutex::new(None),
            caps: AtomicU32::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Sends a message; a full queue drops the client with "SendQ exceeded".
    pub fn send(&self, msg: Arc<Message>) {
        self.send_out(Outgoing::new(msg));
    }

    /// Sends a message rendered once for many recipients: written to the socket at once
    /// when nothing waits before it, else queued for the connection task.
    pub fn send_out(&self, out: Arc<Outgoing>) {
        let mut q = self.sendq.lock();
        if q.closed {
            return;
        }
        if let (false, Some(socket)) = (q.busy, &self.direct) {
            if self.kill.is_cancelled() {
                return;
            }
            let line = out.line(self.caps());
            let total = line.len() + 2;
            let bufs = [IoSlice::new(line.as_bytes()), IoSlice::new(b"\r\n")];
            match socket.try_write_vectored(&bufs) {
                Ok(n) if n >= total => return,
                Ok(n) => {
                    // Part of the line went out: the rest goes first, by the task.
                    let mut whole = Vec::with_capacity(total);
                    whole.extend_from_slice(line.as_bytes());
                    whole.extend_from_slice(b"\r\n");
                    q.tail = whole.split_off(n);
                    q.busy = true;
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    q.busy = true;
                    q.lines.push_back(out);
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
                Err(_) => {
                    q.closed = true;
                    drop(q);
                    self.kill("Write error");
                    return;
                }
            }
        }
        if q.lines.len() >= self.sendq_max {
            q.closed = true;
            drop(q);
            if !self.kill.is_cancelled() {
                metrics::counter!("keel_chat_sendq_drops_total").increment(1);
                self.kill("SendQ exceeded");
            }
            return;
        }
        let first = q.lines.is_empty();
        q.lines.push_back(out);
        drop(q);
        if first {
            self.wake.notify_one();
        }
    }

    /// Waits until lines may be waiting in the queue (cancel-safe).
    pub(crate) async fn queued(&self) {
        self.wake.notified().await;
    }

    /// The connection task takes the socket's write side: from now on deliveries queue.
    pub(crate) fn claim(&self) {
        self.sendq.lock().busy = true;
    }

    /// Moves what waits (a line's tail, then up to `max` lines rendered for `caps`) into
    /// `batch`. With nothing waiting and `release`, the write side goes back to direct
    /// deliveries. Returns false when nothing waited.
    pub(crate) fn take(&self, batch: &mut Batch, max: usize, release: bool) -> bool {
        let caps = self.caps();
        let mut q = self.sendq.lock();
        std::mem::swap(&mut batch.tail, &mut q.tail);
        while batch.lines.len() < max {
            match q.lines.pop_front() {
                Some(o) => batch.lines.push(o.line(caps)),
                None => break,
            }
        }
        if q.lines.is_empty() && q.lines.capacity() > 16 {
            q.lines = VecDeque::new();
        }
        if batch.is_empty() {
            if release {
                q.busy = false;
            }
            return false;
        }
        true
    }

    /// The connection is ending: no more deliveries. Returns the tail of a partly written
    /// line, which must precede any last words.
    pub(crate) fn close(&self) -> Vec<u8> {
        let mut q = self.sendq.lock();
        q.closed = true;
        q.busy = true;
        q.lines = VecDeque::new();
        std::mem::take(&mut q.tail)
    }

    /// Lines waiting in the queue.
    pub fn queued_len(&self) -> usize {
        self.sendq.lock().lines.len()
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

/// Where a relayed envelope goes: one node's channel, or every node (a channel delivery,
/// which each node carries out from its own channel index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Node(NodeId),
    All,
}

/// Where deliveries for clients on other nodes go: a bounded queue drained by the relay
/// (Redis pub/sub, one channel per node and one for all nodes).
pub type Outbox = mpsc::Sender<(Dest, Envelope)>;

/// The connections of this node, by id, its channel index, and the way to the others.
#[derive(Debug, Default)]
pub struct Hub {
    clients: RwLock<HashMap<ClientId, Arc<ClientHandle>>>,
    /// Channel (folded) → members connected here; see [`crate::index`].
    index: RwLock<ChannelIndex>,
    /// Set when this node is part of a network (this node's number, the relay's queue);
    /// without it every client is local.
    outbox: OnceLock<(NodeId, Outbox)>,
}

impl Hub {
    pub(crate) fn insert(&self, handle: Arc<ClientHandle>) {
        self.clients.write().insert(handle.id, handle);
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.clients.write().remove(&id);
        self.index.write().remove_client(id);
    }

    /// Connects the hub of node `node` to the relay that carries deliveries to other nodes.
    pub fn set_outbox(&self, node: NodeId, outbox: Outbox) {
        let _ = self.outbox.set((node, outbox));
    }

    fn relay(&self, dest: Dest, env: Envelope) -> bool {
        let Some((_, outbox)) = self.outbox.get() else {
            return false;
        };
        if outbox.try_send((dest, env)).is_err() {
            metrics::counter!("keel_chat_relay_dropped_total").increment(1);
            return false;
        }
        true
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

    // ---- the channel index -------------------------------------------------------------

    /// Records that local client `id` joined `channel` (folded).
    pub fn index_join(&self, channel: &str, id: ClientId) {
        self.index.write().join(channel, id);
    }

    /// Records that `id` left `channel` (folded): here when it is connected here, else on its
    /// node (an envelope that follows any delivery already sent there, so in order).
    pub fn index_leave(&self, channel: &str, id: ClientId) {
        if self.clients.read().contains_key(&id) {
            self.index.write().part(channel, id);
        } else if self.outbox.get().is_some() {
            let env = Envelope::Part {
                id,
                channel: channel.to_owned(),
            };
            self.relay(Dest::Node(node_of(id)), env);
        }
    }

    /// Removes a departing client from every channel of the index.
    pub fn index_remove_client(&self, id: ClientId) {
        self.index.write().remove_client(id);
    }

    /// Replaces the channels (folded) of a local client: the resync with the store.
    pub fn index_set_client(&self, id: ClientId, channels: &[String]) {
        if self.clients.read().contains_key(&id) {
            self.index.write().set_client(id, channels);
        }
    }

    /// Channels (folded) of a local client, by the index.
    pub fn index_channels_of(&self, id: ClientId) -> Vec<String> {
        self.index.read().channels_of(id)
    }

    /// Local members of `channel` (folded), by the index.
    pub fn index_count(&self, channel: &str) -> usize {
        self.index.read().count(channel)
    }

    // ---- delivery ------------------------------------------------------------------------

    /// Sends `msg` to every member of `channel` (folded) except `skip` that negotiated
    /// `need`: here from the index, and once to all other nodes, which do the same.
    pub fn deliver_channel(&self, channel: &str, skip: ClientId, msg: &Arc<Message>, need: u32) {
        self.route_channel(channel, skip, Want::need(need), msg, None);
    }

    /// Like [`Hub::deliver_channel`], but a member that negotiated `cap` gets `with`, and
    /// members with a capability of `want.unless` get nothing (a membership change).
    pub fn deliver_channel_variant(
        &self,
        channel: &str,
        skip: ClientId,
        want: Want,
        msg: &Arc<Message>,
        cap: u32,
        with: &Arc<Message>,
    ) {
        self.route_channel(channel, skip, want, msg, Some((cap, with)));
    }

    fn route_channel(
        &self,
        channel: &str,
        skip: ClientId,
        need: Want,
        msg: &Arc<Message>,
        variant: Option<(u32, &Arc<Message>)>,
    ) {
        // The other nodes first: local deliveries write to sockets, which takes a while
        // for a large channel, and the other nodes can deliver meanwhile.
        if let Some((node, _)) = self.outbox.get() {
            let env = Envelope::Channel {
                origin: *node,
                channel: channel.to_owned(),
                skip,
                need,
                msg: msg.clone(),
                variant: variant.map(|(cap, m)| (cap, m.clone())),
            };
            self.relay(Dest::All, env);
        }
        let out = Outgoing::new(msg.clone());
        let alt = variant.map(|(cap, m)| (cap, Outgoing::new(m.clone())));
        let n = self.deliver_local_channel(channel, skip, need, &out, alt.as_ref());
        metrics::counter!("keel_chat_messages_out_total").increment(n as u64);
    }

    /// Delivers to the local members of `channel`; returns how many were sent it.
    fn deliver_local_channel(
        &self,
        channel: &str,
        skip: ClientId,
        need: Want,
        out: &Arc<Outgoing>,
        variant: Option<&(u32, Arc<Outgoing>)>,
    ) -> usize {
        // The recipients first, then the writes: a delivery writes to sockets, and the
        // index and the client map should not stay locked for thousands of writes.
        let recipients: Vec<Arc<ClientHandle>> = {
            let index = self.index.read();
            let map = self.clients.read();
            index
                .members(channel)
                .filter(|id| *id != skip)
                .filter_map(|id| map.get(&id).cloned())
                .collect()
        };
        recipients
            .iter()
            .map(|h| usize::from(deliver_to(h, need, out, variant)))
            .sum()
    }

    /// Sends `msg` to each of `ids` (except `skip`) that negotiated `need`, here or on its
    /// node.
    pub fn deliver(&self, ids: &[ClientId], skip: ClientId, msg: &Arc<Message>, need: u32) {
        self.route(ids, skip, Want::need(need), msg, None);
    }

    /// Like [`Hub::deliver`] with a full [`Want`] (a membership change: PART, QUIT).
    pub fn deliver_want(&self, ids: &[ClientId], skip: ClientId, msg: &Arc<Message>, want: Want) {
        self.route(ids, skip, want, msg, None);
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
        self.route(ids, skip, Want::need(0), msg, Some((cap, with)));
    }

    fn route(
        &self,
        ids: &[ClientId],
        skip: ClientId,
        need: Want,
        msg: &Arc<Message>,
        variant: Option<(u32, &Arc<Message>)>,
    ) {
        let out = Outgoing::new(msg.clone());
        let alt = variant.map(|(cap, m)| (cap, Outgoing::new(m.clone())));
        let mut remote: HashMap<NodeId, Vec<ClientId>> = HashMap::new();
        {
            let map = self.clients.read();
            for id in ids {
                if *id == skip {
                    continue;
                }
                match map.get(id) {
                    Some(h) => {
                        deliver_to(h, need, &out, alt.as_ref());
                    }
                    None => remote.entry(node_of(*id)).or_default().push(*id),
                }
            }
        }
        if self.outbox.get().is_none() {
            return;
        }
        for (node, ids) in remote {
            let env = Envelope::Deliver {
                ids,
                need,
                msg: msg.clone(),
                variant: variant.map(|(cap, m)| (cap, m.clone())),
            };
            self.relay(Dest::Node(node), env);
        }
    }

    /// Disconnects a client wherever it is connected; false when it is on no node we can
    /// reach.
    pub fn kill(&self, id: ClientId, reason: &str) -> bool {
        if let Some(h) = self.get(id) {
            h.kill(reason);
            return true;
        }
        let env = Envelope::Kill {
            id,
            reason: reason.to_owned(),
        };
        self.relay(Dest::Node(node_of(id)), env)
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
                let out = Outgoing::new(msg);
                let alt = variant.map(|(cap, m)| (cap, Outgoing::new(m)));
                let map = self.clients.read();
                for id in ids {
                    if let Some(h) = map.get(&id) {
                        deliver_to(h, need, &out, alt.as_ref());
                    }
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
                // Our own channel deliveries come back on the all-nodes channel: done already.
                if self.outbox.get().is_some_and(|(node, _)| *node == origin) {
                    return;
                }
                let out = Outgoing::new(msg);
                let alt = variant.map(|(cap, m)| (cap, Outgoing::new(m)));
                let n = self.deliver_local_channel(&channel, skip, need, &out, alt.as_ref());
                metrics::counter!("keel_chat_messages_out_total").increment(n as u64);
            }
            Envelope::Part { id, channel } => {
                self.index.write().part(&channel, id);
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

/// Who gets a delivery: clients that negotiated every capability of `need` and none of
/// `unless`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub need: u32,
    pub unless: u32,
}

impl Want {
    pub const fn need(need: u32) -> Self {
        Self { need, unless: 0 }
    }

    /// A change of channel membership (JOIN, PART, QUIT): not for clients that opted out.
    pub const MEMBERSHIP: Want = Want {
        need: 0,
        unless: cap::NO_MEMBERSHIP,
    };

    pub fn admits(self, caps: u32) -> bool {
        caps & self.need == self.need && caps & self.unless == 0
    }
}

/// Queues `msg` (or the variant) for one client; false when `want` does not admit it.
fn deliver_to(
    h: &ClientHandle,
    want: Want,
    msg: &Arc<Outgoing>,
    variant: Option<&(u32, Arc<Outgoing>)>,
) -> bool {
    let caps = h.caps();
    if caps & want.unless != 0 {
        return false;
    }
    match variant {
        Some((cap, with)) if caps & *cap == *cap => h.send_out(with.clone()),
        _ if want.admits(caps) => h.send_out(msg.clone()),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_classes_follow_only_tag_capabilities() {
        assert_eq!(tag_class(0), 0);
        assert_eq!(tag_class(cap::ECHO_MESSAGE | cap::MULTI_PREFIX), 0);
        assert_eq!(tag_class(cap::MESSAGE_TAGS), 1);
        assert_eq!(tag_class(cap::SERVER_TIME | cap::ECHO_MESSAGE), 2);
        assert_eq!(
            tag_class(
                cap::MESSAGE_TAGS
                    | cap::SERVER_TIME
                    | cap::ACCOUNT_TAG
                    | cap::BATCH
                    | cap::LABELED_RESPONSE
            ),
            31
        );
    }

    /// The shared rendering is the one each recipient would have rendered for itself.
    #[test]
    fn shared_rendering_equals_rendering_per_recipient() {
        let msg = Arc::new(
            Message::parse(
                b"@time=2026-01-01T00:00:00.000Z;msgid=m1;account=acc;+x=y :a!b@c PRIVMSG #x :hi",
            )
            .expect("parse"),
        );
        let out = Outgoing::new(msg.clone());
        for caps in [
            0,
            cap::SERVER_TIME,
            cap::MESSAGE_TAGS,
            cap::ACCOUNT_TAG | cap::ECHO_MESSAGE,
            cap::MESSAGE_TAGS | cap::SERVER_TIME | cap::ACCOUNT_TAG,
            u32::MAX,
        ] {
            // Twice: the second answer comes from the cache.
            for _ in 0..2 {
                assert_eq!(
                    &*out.line(caps),
                    crate::conn::render(caps, &msg).as_str(),
                    "caps {caps:#x}"
                );
            }
        }
        assert_eq!(&*out.line(0), ":a!b@c PRIVMSG #x hi");
    }

    fn handle(id: ClientId) -> Arc<ClientHandle> {
        Arc::new(ClientHandle::new(id, 16))
    }

    fn drain(h: &ClientHandle) -> Vec<String> {
        let mut batch = Batch::default();
        h.take(&mut batch, usize::MAX, true);
        batch.lines.iter().map(|l| l.to_string()).collect()
    }

    /// Channel deliveries reach exactly the local members in the index, minus the sender;
    /// an envelope from another node does the same, and a Part envelope takes a member out.
    #[test]
    fn channel_delivery_follows_the_index() {
        let hub = Hub::default();
        let a = handle(1);
        let b = handle(2);
        let c = handle(3);
        for h in [&a, &b, &c] {
            hub.insert(h.clone());
        }
        hub.index_join("#x", 1);
        hub.index_join("#x", 2);
        hub.index_join("#y", 3);
        let msg = Arc::new(Message::parse(b":a!b@c PRIVMSG #x :hi").expect("parse"));
        hub.deliver_channel("#x", 1, &msg, 0);
        assert!(drain(&a).is_empty(), "the sender is skipped");
        assert_eq!(drain(&b), vec![":a!b@c PRIVMSG #x hi".to_owned()]);
        assert!(drain(&c).is_empty(), "not a member");
        hub.receive(Envelope::Channel {
            origin: 9,
            channel: "#x".into(),
            skip: 99,
            need: Want::need(0),
            msg: msg.clone(),
            variant: None,
        });
        assert_eq!(drain(&a).len(), 1);
        assert_eq!(drain(&b).len(), 1);
        hub.receive(Envelope::Part {
            id: 2,
            channel: "#x".into(),
        });
        hub.index_leave("#x", 1);
        hub.deliver_channel("#x", 0, &msg, 0);
        assert!(drain(&a).is_empty() && drain(&b).is_empty());
        // A member that opted out of membership changes gets messages but not JOINs.
        hub.index_join("#y", 2);
        b.set_caps(cap::NO_MEMBERSHIP);
        let join = Arc::new(Message::parse(b":n!u@h JOIN #y").expect("parse"));
        hub.deliver_channel_variant("#y", 0, Want::MEMBERSHIP, &join, cap::EXTENDED_JOIN, &join);
        assert_eq!(drain(&c).len(), 1);
        assert!(drain(&b).is_empty(), "opted out of JOINs");
        hub.deliver_channel("#y", 0, &msg, 0);
        assert_eq!(drain(&b).len(), 1, "still gets messages");
        hub.index_leave("#y", 2);
        let _ = drain(&c);
        hub.remove(3);
        assert!(
            hub.index_channels_of(3).is_empty(),
            "a closed connection leaves the index"
        );
        assert_eq!(hub.index_count("#y"), 0);
    }

    /// With a relay, a channel delivery goes once to all nodes, a KICK of a remote member
    /// becomes a Part envelope for its node, and our own channel envelope coming back from
    /// the all-nodes channel is not delivered twice.
    #[test]
    fn remote_side_of_channel_delivery() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(16);
        hub.set_outbox(1, tx);
        let a = handle(crate::engine::client_id(1, 1));
        hub.insert(a.clone());
        hub.index_join("#x", a.id);
        let msg = Arc::new(Message::parse(b":s!u@h PRIVMSG #x :hi").expect("parse"));
        hub.deliver_channel("#x", 0, &msg, 0);
        assert_eq!(drain(&a).len(), 1);
        let (dest, env) = rx.try_recv().expect("one envelope");
        assert_eq!(dest, Dest::All);
        assert!(rx.try_recv().is_err(), "one envelope for all nodes");
        hub.receive(env);
        assert!(drain(&a).is_empty(), "own envelope ignored");
        let remote = crate::engine::client_id(2, 5);
        hub.index_leave("#x", remote);
        let (dest, env) = rx.try_recv().expect("part envelope");
        assert_eq!(dest, Dest::Node(2));
        assert_eq!(
            env,
            Envelope::Part {
                id: remote,
                channel: "#x".into()
            }
        );
    }
}

//! The chat engine: every piece of state that more than one connection sees.
//!
//! Each method is one atomic decision (claim a nick, join a channel with its checks, append to
//! history), so that the Redis engine of issue 6 can implement each as one Lua script. The
//! memory engine ([`MemoryEngine`]) keeps it all in one process behind one lock.
//!
//! Names are compared under `CASEMAPPING=ascii` ([`keel_irc_proto::casefold`]).

pub mod conformance;
mod memory;
mod redis;

use std::future::Future;
use std::time::Duration;

pub use memory::{MemoryEngine, DEFAULT_PRESENCE_TTL};
pub use redis::{RedisEngine, DEFAULT_MAX_CHANNEL_MEMBERS, HEARTBEAT_CHUNK};

/// Identifies a connection across the network: the node's number in the high 32 bits, a
/// sequence of that node in the low 32 (see [`client_id`]), so any node can tell where a client
/// is connected without asking the engine.
pub type ClientId = u64;

/// A chat node's number, handed out once by [`ChatEngine::new_node`].
pub type NodeId = u32;

/// The node a client is connected to.
pub const fn node_of(id: ClientId) -> NodeId {
    (id >> 32) as NodeId
}

/// The id of the `seq`th connection of `node`.
pub const fn client_id(node: NodeId, seq: u32) -> ClientId {
    ((node as u64) << 32) | seq as u64
}

/// Why an engine call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("nickname is already in use")]
    NickInUse,
    #[error("no such nick")]
    NoSuchNick,
    #[error("no such channel")]
    NoSuchChannel,
    #[error("you're not on that channel")]
    NotOnChannel,
    #[error("they aren't on that channel")]
    UserNotInChannel,
    #[error("is already on channel")]
    UserOnChannel,
    #[error("you're not channel operator")]
    ChanOpNeeded,
    #[error("cannot join channel (+k)")]
    BadKey,
    #[error("cannot join channel (+l)")]
    ChannelFull,
    #[error("cannot join channel (+i)")]
    InviteOnly,
    #[error("cannot join channel (+b)")]
    Banned,
    #[error("cannot send to channel")]
    CannotSend,
    #[error("too many channels")]
    TooManyChannels,
    #[error("account already exists")]
    AccountExists,
    #[error("monitor list is full")]
    MonitorListFull,
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// What everyone else may know about a registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: ClientId,
    pub nick: String,
    pub user: String,
    pub host: String,
    pub realname: String,
    pub account: Option<String>,
    pub away: Option<String>,
    pub invisible: bool,
    pub oper: bool,
    /// Unix seconds of registration.
    pub signon: u64,
}

impl ClientInfo {
    /// `nick!user@host`.
    pub fn mask(&self) -> String {
        format!("{}!{}@{}", self.nick, self.user, self.host)
    }
}

/// A change to a registered client's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientUpdate {
    Away(Option<String>),
    Realname(String),
    Account(Option<String>),
    Invisible(bool),
    Oper(bool),
}

/// A channel member and its prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client: ClientInfo,
    pub op: bool,
    pub voice: bool,
}

/// A channel topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub text: String,
    pub setter: String,
    /// Unix seconds.
    pub time: u64,
}

/// Channel modes other than member prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelModes {
    pub no_external: bool,
    pub topic_ops_only: bool,
    pub invite_only: bool,
    pub key: Option<String>,
    pub limit: Option<u32>,
    pub bans: Vec<Ban>,
}

/// One entry of a channel's ban list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub mask: String,
    pub setter: String,
    pub time: u64,
}

/// A snapshot of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    pub created: u64,
    pub topic: Option<Topic>,
    pub modes: ChannelModes,
    pub members: Vec<Member>,
}

impl ChannelInfo {
    /// The member record of `id`, if a member.
    pub fn member(&self, id: ClientId) -> Option<&Member> {
        self.members.iter().find(|m| m.client.id == id)
    }
}

/// A channel mode change as requested or as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChange {
    pub add: bool,
    pub mode: char,
    pub arg: Option<String>,
}

/// The result of a JOIN: what the joiner is told. No member list: who hears of the join is
/// found from each node's local channel index ([`crate::index`]), so a join into a channel of
/// N members costs O(1) from the store, not N ids; NAMES reads the records with
/// [`ChatEngine::channel`] when the client wants them.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The channel's name as created.
    pub name: String,
    pub topic: Option<Topic>,
    /// Members after the join, the joiner included.
    pub members: usize,
    /// The joiner created the channel (and is its first op).
    pub created: bool,
}

/// A client leaving the network: its record and everyone who shared a channel with it.
#[derive(Debug, Clone)]
pub struct Departed {
    pub client: ClientInfo,
    pub peers: Vec<ClientId>,
}

/// A nick as it was when its owner left, for WHOWAS.
#[derive(Debug, Clone)]
pub struct WhowasEntry {
    pub nick: String,
    pub user: String,
    pub host: String,
    pub realname: String,
    pub time: u64,
}

/// Network-wide counts for LUSERS.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub users: usize,
    pub invisible: usize,
    pub opers: usize,
    pub channels: usize,
}

/// A stored PRIVMSG or NOTICE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub msgid: String,
    /// Unix milliseconds.
    pub time: u64,
    pub source: String,
    pub account: Option<String>,
    pub command: String,
    /// The channel, or the recipient nick for a direct message.
    pub target: String,
    pub text: String,
    /// Client-only tags (`+key`, value) sent with the message.
    pub client_tags: Vec<(String, String)>,
}

/// A point in a history: a message id or a time (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRef {
    MsgId(String),
    Time(u64),
}

/// A CHATHISTORY query over one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The latest messages, optionally only those after a reference.
    Latest(Option<HistoryRef>),
    Before(HistoryRef),
    After(HistoryRef),
    Around(HistoryRef),
    Between(HistoryRef, HistoryRef),
}

/// The history key of a conversation: a channel, or the pair of nicks of a direct message.
pub fn history_key(me: &str, target: &str) -> String {
    let target = keel_irc_proto::casefold(target);
    if target.starts_with('#') {
        target
    } else {
        let me = keel_irc_proto::casefold(me);
        if me <= target {
            format!("{me} {target}")
        } else {
            format!("{target} {me}")
        }
    }
}

/// All shared state of the chat service. See the module documentation.
pub trait ChatEngine: Send + Sync + 'static {
    /// Claims `info.nick` atomically and records the client.
    fn register(&self, info: ClientInfo) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Changes a registered client's nick; returns the record before the change.
    fn rename(
        &self,
        id: ClientId,
        nick: &str,
    ) -> impl Future<Output = Result<ClientInfo, EngineError>> + Send;
    /// Applies an update; returns the record after it.
    fn update(
        &self,
        id: ClientId,
        update: ClientUpdate,
    ) -> impl Future<Output = Result<ClientInfo, EngineError>> + Send;
    /// Removes a client from the network and from every channel (the QUIT); records WHOWAS.
    fn unregister(&self, id: ClientId) -> impl Future<Output = Option<Departed>> + Send;
    fn client(&self, id: ClientId) -> impl Future<Output = Option<ClientInfo>> + Send;
    fn find_nick(&self, nick: &str) -> impl Future<Output = Option<ClientInfo>> + Send;
    /// Every registered client, at most `limit` of them.
    fn clients(&self, limit: usize) -> impl Future<Output = Vec<ClientInfo>> + Send;
    /// Clients that share at least one channel with `id` (not `id` itself).
    fn peers(&self, id: ClientId) -> impl Future<Output = Vec<ClientId>> + Send;
    fn counts(&self) -> impl Future<Output = Counts> + Send;
    fn whowas(&self, nick: &str, limit: usize) -> impl Future<Output = Vec<WhowasEntry>> + Send;

    /// Joins with every check (+k +l +i +b, channel limit); creates the channel, first member op.
    fn join(
        &self,
        channel: &str,
        id: ClientId,
        key: Option<&str>,
        max_channels: usize,
    ) -> impl Future<Output = Result<Joined, EngineError>> + Send;
    /// Leaves; returns the members before leaving (including `id`).
    fn part(
        &self,
        channel: &str,
        id: ClientId,
    ) -> impl Future<Output = Result<Vec<ClientId>, EngineError>> + Send;
    /// Kicks `target` (an op's act); returns the members before the kick.
    fn kick(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> impl Future<Output = Result<Vec<ClientId>, EngineError>> + Send;
    fn channel(&self, channel: &str) -> impl Future<Output = Option<ChannelInfo>> + Send;
    fn channels_of(&self, id: ClientId) -> impl Future<Output = Vec<String>> + Send;
    /// Every channel: name, member count, topic; at most `limit`.
    fn list(&self, limit: usize) -> impl Future<Output = Vec<(String, usize, String)>> + Send;
    /// Sets the topic (checks +t); returns it and the members.
    fn set_topic(
        &self,
        channel: &str,
        by: ClientId,
        text: &str,
    ) -> impl Future<Output = Result<(Topic, Vec<ClientId>), EngineError>> + Send;
    /// Applies channel mode changes an op asked for; returns those applied and the members.
    fn set_modes(
        &self,
        channel: &str,
        by: ClientId,
        changes: Vec<ModeChange>,
    ) -> impl Future<Output = Result<(Vec<ModeChange>, Vec<ClientId>), EngineError>> + Send;
    /// Records an invitation; returns the channel's ops (for invite-notify).
    fn invite(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> impl Future<Output = Result<Vec<ClientId>, EngineError>> + Send;
    /// Checks that `id` may speak in `channel` (+n, +b). Permission only: the audience comes
    /// from each node's local channel index, not from a member list per message.
    fn can_send(
        &self,
        channel: &str,
        id: ClientId,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Creates an account with an argon2 password hash.
    fn create_account(
        &self,
        name: &str,
        hash: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The password hash of an account.
    fn account_hash(&self, name: &str) -> impl Future<Output = Option<String>> + Send;

    /// Adds nicks to `id`'s MONITOR list, refusing past `max`.
    fn monitor_add(
        &self,
        id: ClientId,
        nicks: &[String],
        max: usize,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn monitor_remove(&self, id: ClientId, nicks: &[String]) -> impl Future<Output = ()> + Send;
    fn monitor_clear(&self, id: ClientId) -> impl Future<Output = ()> + Send;
    fn monitor_list(&self, id: ClientId) -> impl Future<Output = Vec<String>> + Send;
    /// Clients monitoring `nick`.
    fn watchers(&self, nick: &str) -> impl Future<Output = Vec<ClientId>> + Send;

    /// Appends to a conversation's history (see [`history_key`]).
    fn append_history(&self, key: &str, item: HistoryItem) -> impl Future<Output = ()> + Send;
    /// Messages of one conversation, oldest first, at most `limit`.
    fn history(
        &self,
        key: &str,
        query: HistoryQuery,
        limit: usize,
        now_ms: u64,
    ) -> impl Future<Output = Vec<HistoryItem>> + Send;
    /// Conversations of `nick` (channels it is in, direct messages) with a message between
    /// `from` and `to` (unix ms): the target name and the time of its latest message.
    fn history_targets(
        &self,
        nick: &str,
        channels: &[String],
        from: u64,
        to: u64,
        limit: usize,
    ) -> impl Future<Output = Vec<(String, u64)>> + Send;

    // Presence and node liveness (several nodes on one store). A registered client's presence
    // is a record with an expiry (a sorted set of expiry times in Redis); `register` sets it to
    // the engine's presence TTL, the node's heartbeat refreshes it. A node that dies stops
    // refreshing, and once both its node record and its clients' presence lapse, a surviving
    // node finds them with `expired_clients` and unregisters them (the QUIT).

    /// A node number never handed out before by this engine's store (Redis: INCR).
    fn new_node(&self) -> impl Future<Output = Result<NodeId, EngineError>> + Send;
    /// Marks `node` alive for `ttl` and refreshes the presence of `clients` (its registered
    /// clients) to the same expiry. Returns those of `clients` the engine no longer knows
    /// (state lost or already reaped), so the node can tell their connections.
    fn heartbeat(
        &self,
        node: NodeId,
        clients: &[ClientId],
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<ClientId>, EngineError>> + Send;
    /// Nodes whose heartbeat has not lapsed.
    fn nodes(&self) -> impl Future<Output = Vec<NodeId>> + Send;
    /// Registered clients whose presence lapsed and whose node is not alive, at most `limit`.
    fn expired_clients(&self, limit: usize) -> impl Future<Output = Vec<ClientId>> + Send;
    /// Takes, or renews when already held by `holder`, the lock `name` for `ttl`; true when
    /// `holder` holds it afterwards. One holder at a time.
    fn lock(&self, name: &str, holder: NodeId, ttl: Duration) -> impl Future<Output = bool> + Send;
    /// False while the engine cannot reach its store (Redis down); then calls that return
    /// plain values answer empty. The memory engine is always available.
    fn available(&self) -> bool;
}

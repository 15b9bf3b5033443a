//! The Redis engine: every node of a network shares one Redis, so nicks, channels, presence
//! and history are the same for all of them.
//!
//! Every state change that touches more than one key, or reads then writes, is one Lua script
//! from `crates/keel-chat/lua/` (loaded at start-up, called by EVALSHA, reloaded on NOSCRIPT).
//! All shared state lives under one hash tag, `prefix:{chat}:`, so each script touches one
//! Redis Cluster slot; the history of a conversation lives under its own tag,
//! `prefix:{h:KEY}:`. Scripts take time from Redis `TIME`. The key layout is in the crate
//! README.
//!
//! When Redis fails or does not answer within the handle's timeout, the engine marks itself
//! unavailable ([`ChatEngine::available`] is false): methods returning a `Result` answer
//! [`EngineError::Unavailable`], the others answer empty. The next call that succeeds marks it
//! available again. Replies are parsed defensively: a malformed one is treated like an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_irc_proto::casefold;
use keel_redis::redis::{self, Value};
use keel_redis::{LuaScript, RedisError, RedisHandle};

use super::{
    Ban, ChannelInfo, ChannelModes, ChatEngine, ClientId, ClientInfo, ClientUpdate, Counts,
    Departed, EngineError, HistoryItem, HistoryQuery, HistoryRef, Joined, Member, ModeChange,
    NodeId, Topic, WhowasEntry, DEFAULT_PRESENCE_TTL,
};

/// Clients per heartbeat script call; longer lists are split.
pub const HEARTBEAT_CHUNK: usize = 1000;
/// Default largest channel: joins past it answer "channel full", which bounds every script
/// that reads a member list.
pub const DEFAULT_MAX_CHANNEL_MEMBERS: usize = 100_000;
/// WHOWAS entries kept per nick, and for how long.
const WHOWAS_KEEP: usize = 32;
const WHOWAS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest list any read returns (clients, channels, history).
const MAX_LIST: usize = 10_000;
/// Largest lapsed-presence scan per `expired_clients` call.
const EXPIRED_SCAN: usize = 5_000;
/// Direct-message conversations remembered per nick for CHATHISTORY TARGETS.
const DM_TARGETS_KEEP: usize = 1000;
/// Mode changes per MODE call, nicks per MONITOR call, client tags per message.
const MAX_MODE_CHANGES: usize = 64;
const MAX_MONITOR_ARGS: usize = 512;
const MAX_CLIENT_TAGS: usize = 32;

const COMMON: &str = include_str!("../../lua/common.lua");

fn chat_script(name: &'static str, body: &str) -> LuaScript {
    LuaScript::new(name, format!("{COMMON}\n{body}"))
}

struct Scripts {
    register: LuaScript,
    rename: LuaScript,
    update: LuaScript,
    unregister: LuaScript,
    find_nick: LuaScript,
    clients: LuaScript,
    peers: LuaScript,
    channel: LuaScript,
    channels_of: LuaScript,
    list: LuaScript,
    join: LuaScript,
    part: LuaScript,
    kick: LuaScript,
    topic: LuaScript,
    modes: LuaScript,
    invite: LuaScript,
    can_send: LuaScript,
    monitor_add: LuaScript,
    monitor_remove: LuaScript,
    monitor_clear: LuaScript,
    heartbeat: LuaScript,
    nodes: LuaScript,
    expired: LuaScript,
    lock: LuaScript,
    new_node: LuaScript,
    dm_touch: LuaScript,
    history_append: LuaScript,
    history_query: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            register: chat_script("chat_register", include_str!("../../lua/register.lua")),
            rename: chat_script("chat_rename", include_str!("../../lua/rename.lua")),
            update: chat_script("chat_update", include_str!("../../lua/update.lua")),
            unregister: chat_script("chat_unregister", include_str!("../../lua/unregister.lua")),
            find_nick: chat_script("chat_find_nick", include_str!("../../lua/find_nick.lua")),
            clients: chat_script("chat_clients", include_str!("../../lua/clients.lua")),
            peers: chat_script("chat_peers", include_str!("../../lua/peers.lua")),
            channel: chat_script("chat_channel", include_str!("../../lua/channel.lua")),
            channels_of: chat_script(
                "chat_channels_of",
                include_str!("../../lua/channels_of.lua"),
            ),
            list: chat_script("chat_list", include_str!("../../lua/list.lua")),
            join: chat_script("chat_join", include_str!("../../lua/join.lua")),
            part: chat_script("chat_part", include_str!("../../lua/part.lua")),
            kick: chat_script("chat_kick", include_str!("../../lua/kick.lua")),
            topic: chat_script("chat_topic", include_str!("../../lua/topic.lua")),
            modes: chat_script("chat_modes", include_str!("../../lua/modes.lua")),
            invite: chat_script("chat_invite", include_str!("../../lua/invite.lua")),
            can_send: chat_script("chat_can_send", include_str!("../../lua/can_send.lua")),
            monitor_add: chat_script(
                "chat_monitor_add",
                include_str!("../../lua/monitor_add.lua"),
            ),
            monitor_remove: chat_script(
                "chat_monitor_remove",
                include_str!("../../lua/monitor_remove.lua"),
            ),
            monitor_clear: chat_script(
                "chat_monitor_clear",
                include_str!("../../lua/monitor_clear.lua"),
            ),
            heartbeat: chat_script("chat_heartbeat", include_str!("../../lua/heartbeat.lua")),
            nodes: chat_script("chat_nodes", include_str!("../../lua/nodes.lua")),
            expired: chat_script("chat_expired", include_str!("../../lua/expired.lua")),
            lock: chat_script("chat_lock", include_str!("../../lua/lock.lua")),
            new_node: chat_script("chat_new_node", include_str!("../../lua/new_node.lua")),
            dm_touch: chat_script("chat_dm_touch", include_str!("../../lua/dm_touch.lua")),
            history_append: LuaScript::new(
                "chat_history_append",
                include_str!("../../lua/history_append.lua"),
            ),
            history_query: LuaScript::new(
                "chat_history_query",
                include_str!("../../lua/history_query.lua"),
            ),
        }
    }

    fn all(&self) -> [&LuaScript; 28] {
        [
            &self.register,
            &self.rename,
            &self.update,
            &self.unregister,
            &self.find_nick,
            &self.clients,
            &self.peers,
            &self.channel,
            &self.channels_of,
            &self.list,
            &self.join,
            &self.part,
            &self.kick,
            &self.topic,
            &self.modes,
            &self.invite,
            &self.can_send,
            &self.monitor_add,
            &self.monitor_remove,
            &self.monitor_clear,
            &self.heartbeat,
            &self.nodes,
            &self.expired,
            &self.lock,
            &self.new_node,
            &self.dm_touch,
            &self.history_append,
            &self.history_query,
        ]
    }
}

/// The engine of a network of chat nodes sharing one Redis. See the module documentation.
pub struct RedisEngine {
    redis: RedisHandle,
    scripts: Scripts,
    /// `prefix:{chat}:`, the base of all shared state.
    base: String,
    history_max: usize,
    history_age: Duration,
    presence_ttl: Duration,
    max_channel_members: usize,
    available: AtomicBool,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("redis", &self.redis)
            .field("history_max", &self.history_max)
            .field("history_age", &self.history_age)
            .field("presence_ttl", &self.presence_ttl)
            .field("available", &self.available())
            .finish()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// An optional value as a script argument: `0` for none, `1` then the value.
fn opt_arg(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("1{v}"),
        None => "0".to_owned(),
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

impl RedisEngine {
    /// An engine on `redis` keeping at most `history_max` messages per conversation, none older
    /// than `history_age`. Loads the scripts; when Redis is unreachable the engine is still
    /// built (unavailable until Redis answers, scripts then load on first use). Fails only when
    /// Redis refuses a script.
    pub async fn new(
        redis: RedisHandle,
        history_max: usize,
        history_age: Duration,
    ) -> Result<Self, EngineError> {
        let engine = Self {
            base: redis.keys().tagged("chat", ""),
            redis,
            scripts: Scripts::new(),
            history_max: history_max.clamp(1, 1_000_000),
            history_age: history_age.max(Duration::from_secs(1)),
            presence_ttl: DEFAULT_PRESENCE_TTL,
            max_channel_members: DEFAULT_MAX_CHANNEL_MEMBERS,
            available: AtomicBool::new(true),
        };
        let mut conn = engine.redis.connection();
        for script in engine.scripts.all() {
            match engine.redis.with_timeout(script.load(&mut conn)).await {
                Ok(()) => {}
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "chat engine: Redis unreachable at start-up");
                    engine.available.store(false, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
        Ok(engine)
    }

    /// The presence a client gets on registration, before its node's first heartbeat.
    pub fn with_presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The largest channel (joins past it answer [`EngineError::ChannelFull`]).
    pub fn with_max_channel_members(mut self, max: usize) -> Self {
        self.max_channel_members = max.max(1);
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    fn history_base(&self, key: &str) -> String {
        self.redis.keys().tagged(&format!("h:{key}"), "")
    }

    /// Records the outcome of a Redis call in the availability flag.
    fn note<T>(&self, result: Result<T, RedisError>) -> Result<T, EngineError> {
        match result {
            Ok(v) => {
                if !self.available.swap(true, Ordering::Relaxed) {
                    tracing::info!("chat engine: Redis is available again");
                }
                Ok(v)
            }
            Err(e) => {
                if self.available.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "chat engine: Redis unavailable");
                } else {
                    tracing::debug!(error = %e, "chat engine: Redis still unavailable");
                }
                Err(EngineError::Unavailable(e.to_string()))
            }
        }
    }

    async fn eval_at(
        &self,
        script: &LuaScript,
        key: String,
        args: &[String],
    ) -> Result<Value, EngineError> {
        let mut conn = self.redis.connection();
        let keys = [key];
        let result = self
            .redis
            .with_timeout(script.invoke::<Value, _, _, _>(&mut conn, &keys, args))
            .await;
        self.note(result)
    }

    /// Runs a script on the shared state (`KEYS[1]` = the `{chat}` base).
    async fn eval(&self, script: &LuaScript, args: &[String]) -> Result<Value, EngineError> {
        self.eval_at(script, self.base.clone(), args).await
    }

    /// Runs a plain command (or pipeline) with the timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: impl FnOnce() -> redis::Pipeline,
    ) -> Result<T, EngineError> {
        let mut conn = self.redis.connection();
        let pipe = cmd();
        let result = self
            .redis
            .with_timeout(async { Ok(pipe.query_async::<T>(&mut conn).await?) })
            .await;
        self.note(result)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, EngineError> {
        let mut conn = self.redis.connection();
        let result = self
            .redis
            .with_timeout(async { Ok(cmd.query_async::<T>(&mut conn).await?) })
            .await;
        self.note(result)
    }

    /// Calls a script whose reply is `{status, ...}`; returns the rest on `OK`.
    async fn eval_status(
        &self,
        script: &LuaScript,
        args: &[String],
    ) -> Result<Vec<Value>, EngineError> {
        let value = self.eval(script, args).await?;
        status(value)
    }
}

// ---- reply parsing: never panics, a malformed reply is `None` ----

fn malformed(what: &str) -> EngineError {
    EngineError::Unavailable(format!("malformed reply from Redis ({what})"))
}

fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn opt_text(v: &Value) -> Option<Option<String>> {
    match v {
        Value::Nil => Some(None),
        other => text(other).map(Some),
    }
}

fn num<T: std::str::FromStr>(v: &Value) -> Option<T> {
    text(v)?.parse().ok()
}

/// The string of a bulk reply without copying it.
fn str_of(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An array of ids.
fn ids(v: Value) -> Option<Vec<ClientId>> {
    items(v)?.iter().map(num::<ClientId>).collect()
}

/// An array of ids, sorted.
fn sorted_id_array(v: Value) -> Option<Vec<ClientId>> {
    let mut ids = ids(v)?;
    ids.sort_unstable();
    Some(ids)
}

/// A comma-separated id list (`id_list` in `lua/common.lua`), sorted.
fn sorted_ids(v: Value) -> Result<Vec<ClientId>, EngineError> {
    let list = str_of(&v).ok_or_else(|| malformed("id list"))?;
    let mut ids = if list.is_empty() {
        Vec::new()
    } else {
        list.split(',')
            .map(|id| id.parse::<ClientId>().ok())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("id list"))?
    };
    ids.sort_unstable();
    Ok(ids)
}

fn error_named(name: &str) -> EngineError {
    match name {
        "NickInUse" => EngineError::NickInUse,
        "NoSuchNick" => EngineError::NoSuchNick,
        "NoSuchChannel" => EngineError::NoSuchChannel,
        "NotOnChannel" => EngineError::NotOnChannel,
        "UserNotInChannel" => EngineError::UserNotInChannel,
        "UserOnChannel" => EngineError::UserOnChannel,
        "ChanOpNeeded" => EngineError::ChanOpNeeded,
        "BadKey" => EngineError::BadKey,
        "ChannelFull" => EngineError::ChannelFull,
        "InviteOnly" => EngineError::InviteOnly,
        "Banned" => EngineError::Banned,
        "CannotSend" => EngineError::CannotSend,
        "TooManyChannels" => EngineError::TooManyChannels,
        "AccountExists" => EngineError::AccountExists,
        "MonitorListFull" => EngineError::MonitorListFull,
        other => malformed(&format!("status {other:?}")),
    }
}

fn status(v: Value) -> Result<Vec<Value>, EngineError> {
    let mut all = items(v).ok_or_else(|| malformed("status"))?;
    if all.is_empty() {
        return Err(malformed("empty status"));
    }
    let rest = all.split_off(1);
    match text(&all[0]).as_deref() {
        Some("OK") => Ok(rest),
        Some(name) => Err(error_named(name)),
        None => Err(malformed("status")),
    }
}

/// An optional field: `0`, or `1` then the value.
fn opt_field(f: &str) -> Option<Option<String>> {
    match f.as_bytes().first() {
        Some(b'0') => Some(None),
        Some(b'1') => Some(Some(f[1..].to_owned())),
        _ => None,
    }
}

/// A record packed by `pack` in `lua/common.lua`: fields joined by newlines.
fn unpack_client<'a>(mut f: impl Iterator<Item = &'a str>) -> Option<ClientInfo> {
    let info = ClientInfo {
        id: f.next()?.parse().ok()?,
        nick: f.next()?.to_owned(),
        user: f.next()?.to_owned(),
        host: f.next()?.to_owned(),
        realname: f.next()?.to_owned(),
        account: opt_field(f.next()?)?,
        away: opt_field(f.next()?)?,
        invisible: f.next()? == "1",
        oper: f.next()? == "1",
        signon: f.next()?.parse().unwrap_or(0),
    };
    f.next().is_none().then_some(info)
}

fn client_info(v: Value) -> Option<ClientInfo> {
    unpack_client(str_of(&v)?.split('\n'))
}

/// `HMGET` of `{id, nick, user, host, realname, account, away, inv, oper, signon}`.
fn client_fields(v: Value) -> Option<ClientInfo> {
    let f = items(v)?;
    if f.len() != 10 {
        return None;
    }
    Some(ClientInfo {
        id: num(&f[0])?,
        nick: text(&f[1])?,
        user: text(&f[2])?,
        host: text(&f[3])?,
        realname: text(&f[4])?,
        account: opt_text(&f[5])?,
        away: opt_text(&f[6])?,
        invisible: text(&f[7])? == "1",
        oper: text(&f[8])? == "1",
        signon: num(&f[9]).unwrap_or(0),
    })
}

fn clients_of(v: Value) -> Option<Vec<ClientInfo>> {
    items(v)?.into_iter().map(client_info).collect()
}

/// A ban entry `mask \n setter \n time`.
fn ban(v: &Value) -> Option<Ban> {
    let s = text(v)?;
    let mut parts = s.splitn(3, '\n');
    Some(Ban {
        mask: parts.next()?.to_owned(),
        setter: parts.next()?.to_owned(),
        time: parts.next()?.parse().unwrap_or(0),
    })
}

/// See `snapshot` in `lua/common.lua`.
fn channel_info(v: Value) -> Option<ChannelInfo> {
    let mut f = items(v)?;
    if f.len() != 12 {
        return None;
    }
    let member_values = items(f.pop()?)?;
    let ban_values = items(f.pop()?)?;
    let topic = match opt_text(&f[2])? {
        Some(text) => Some(Topic {
            text,
            setter: opt_text(&f[3])?.unwrap_or_default(),
            time: num(&f[4]).unwrap_or(0),
        }),
        None => None,
    };
    let on = |v: &Value| opt_text(v).flatten().as_deref() == Some("1");
    let modes = ChannelModes {
        no_external: on(&f[5]),
        topic_ops_only: on(&f[6]),
        invite_only: on(&f[7]),
        key: opt_text(&f[8])?,
        limit: opt_text(&f[9])?.and_then(|l| l.parse().ok()),
        bans: ban_values.iter().map(ban).collect::<Option<_>>()?,
    };
    let mut members = Vec::with_capacity(member_values.len());
    for m in &member_values {
        let mut fields = str_of(m)?.split('\n');
        let flags = fields.next()?;
        let client = unpack_client(fields)?;
        members.push(Member {
            client,
            op: flags.contains('o'),
            voice: flags.contains('v'),
        });
    }
    members.sort_by_key(|m| m.client.id);
    Some(ChannelInfo {
        name: text(&f[0])?,
        created: num(&f[1]).unwrap_or(0),
        topic,
        modes,
        members,
    })
}

/// A history entry's field/value array.
fn history_item(v: Value) -> Option<HistoryItem> {
    let f = items(v)?;
    let mut item = HistoryItem {
        msgid: String::new(),
        time: 0,
        source: String::new(),
        account: None,
        command: String::new(),
        target: String::new(),
        text: String::new(),
        client_tags: Vec::new(),
    };
    for pair in f.chunks(2) {
        let [k, v] = pair else { return None };
        let (k, v) = (text(k)?, text(v)?);
        match k.as_str() {
            "m" => item.msgid = v,
            "t" => item.time = v.parse().ok()?,
            "s" => item.source = v,
            "a" => item.account = Some(v),
            "c" => item.command = v,
            "g" => item.target = v,
            "x" => item.text = v,
            other => {
                if let Some(tag) = other.strip_prefix("tag:") {
                    item.client_tags.push((tag.to_owned(), v));
                }
            }
        }
    }
    Some(item)
}

fn ref_args(r: Option<&HistoryRef>) -> [String; 2] {
    match r {
        None => [String::new(), String::new()],
        Some(HistoryRef::MsgId(id)) => ["m".into(), id.clone()],
        Some(HistoryRef::Time(t)) => ["t".into(), t.to_string()],
    }
}

impl ChatEngine for RedisEngine {
    async fn register(&self, info: ClientInfo) -> Result<(), EngineError> {
        let args = [
            info.id.to_string(),
            casefold(&info.nick),
            ms(self.presence_ttl).to_string(),
            info.nick,
            info.user,
            info.host,
            info.realname,
            opt_arg(info.account.as_deref()),
            opt_arg(info.away.as_deref()),
            flag(info.invisible),
            flag(info.oper),
            info.signon.to_string(),
        ];
        self.eval_status(&self.scripts.register, &args).await?;
        Ok(())
    }

    async fn rename(&self, id: ClientId, nick: &str) -> Result<ClientInfo, EngineError> {
        let args = [id.to_string(), casefold(nick), nick.to_owned()];
        let mut rest = self.eval_status(&self.scripts.rename, &args).await?;
        rest.pop()
            .and_then(client_info)
            .ok_or_else(|| malformed("rename"))
    }

    async fn update(&self, id: ClientId, update: ClientUpdate) -> Result<ClientInfo, EngineError> {
        let (what, value) = match &update {
            ClientUpdate::Away(a) => ("away", opt_arg(a.as_deref())),
            ClientUpdate::Account(a) => ("account", opt_arg(a.as_deref())),
            ClientUpdate::Realname(r) => ("realname", r.clone()),
            ClientUpdate::Invisible(i) => ("inv", flag(*i)),
            ClientUpdate::Oper(o) => ("oper", flag(*o)),
        };
        let args = [id.to_string(), what.to_owned(), value];
        let mut rest = self.eval_status(&self.scripts.update, &args).await?;
        rest.pop()
            .and_then(client_info)
            .ok_or_else(|| malformed("update"))
    }

    async fn unregister(&self, id: ClientId) -> Option<Departed> {
        let args = [
            id.to_string(),
            WHOWAS_KEEP.to_string(),
            WHOWAS_TTL.as_secs().to_string(),
        ];
        let value = self.eval(&self.scripts.unregister, &args).await.ok()?;
        let mut all = items(value)?;
        if all.len() != 3 || text(&all[0]).as_deref() != Some("OK") {
            return None;
        }
        let peers = sorted_ids(all.pop()?).ok()?;
        let client = client_info(all.pop()?)?;
        Some(Departed { client, peers })
    }

    async fn client(&self, id: ClientId) -> Option<ClientInfo> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{}c:{id}", self.base)).arg(&[
            "id", "nick", "user", "host", "realname", "account", "away", "inv", "oper", "signon",
        ]);
        let value: Value = self.cmd(cmd).await.ok()?;
        client_fields(value)
    }

    async fn find_nick(&self, nick: &str) -> Option<ClientInfo> {
        let value = self
            .eval(&self.scripts.find_nick, &[casefold(nick)])
            .await
            .ok()?;
        items(value)?.pop().and_then(client_info)
    }

    async fn clients(&self, limit: usize) -> Vec<ClientInfo> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Vec::new();
        }
        match self.eval(&self.scripts.clients, &[limit.to_string()]).await {
            Ok(v) => clients_of(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn peers(&self, id: ClientId) -> Vec<ClientId> {
        match self.eval(&self.scripts.peers, &[id.to_string()]).await {
            Ok(v) => sorted_ids(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn counts(&self) -> Counts {
        let base = &self.base;
        let reply: Result<(usize, usize, usize, usize), _> = self
            .query(|| {
                let mut p = redis::pipe();
                p.cmd("ZCARD")
                    .arg(format!("{base}presence"))
                    .cmd("SCARD")
                    .arg(format!("{base}invis"))
                    .cmd("SCARD")
                    .arg(format!("{base}opers"))
                    .cmd("ZCARD")
                    .arg(format!("{base}chans"));
                p
            })
            .await;
        match reply {
            Ok((users, invisible, opers, channels)) => Counts {
                users,
                invisible,
                opers,
                channels,
            },
            Err(_) => Counts::default(),
        }
    }

    async fn whowas(&self, nick: &str, limit: usize) -> Vec<WhowasEntry> {
        let limit = limit.min(WHOWAS_KEEP);
        if limit == 0 {
            return Vec::new();
        }
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(format!("{}ww:{}", self.base, casefold(nick)))
            .arg(0)
            .arg(limit - 1);
        let entries: Vec<String> = self.cmd(cmd).await.unwrap_or_default();
        entries
            .iter()
            .filter_map(|e| {
                let mut p = e.splitn(5, '\n');
                Some(WhowasEntry {
                    nick: p.next()?.to_owned(),
                    user: p.next()?.to_owned(),
                    host: p.next()?.to_owned(),
                    time: p.next()?.parse().unwrap_or(0),
                    realname: p.next()?.to_owned(),
                })
            })
            .collect()
    }

    async fn join(
        &self,
        channel: &str,
        id: ClientId,
        key: Option<&str>,
        max_channels: usize,
    ) -> Result<Joined, EngineError> {
        let args = [
            id.to_string(),
            casefold(channel),
            channel.to_owned(),
            opt_arg(key),
            max_channels.to_string(),
            self.max_channel_members.to_string(),
        ];
        let rest = self.eval_status(&self.scripts.join, &args).await?;
        let [created, header, members]: [Value; 3] =
            rest.try_into().map_err(|_| malformed("join"))?;
        let joined = (|| {
            let header = items(header)?;
            if header.len() != 4 {
                return None;
            }
            let topic_text = text(&header[1])?;
            let topic = (!topic_text.is_empty()).then(|| Topic {
                text: topic_text,
                setter: text(&header[2]).unwrap_or_default(),
                time: num(&header[3]).unwrap_or(0),
            });
            Some(Joined {
                name: text(&header[0])?,
                topic,
                members: num::<usize>(&members)?,
                created: num::<u8>(&created)? == 1,
            })
        })();
        joined.ok_or_else(|| malformed("join"))
    }

    async fn part(&self, channel: &str, id: ClientId) -> Result<Vec<ClientId>, EngineError> {
        let args = [id.to_string(), casefold(channel)];
        let mut rest = self.eval_status(&self.scripts.part, &args).await?;
        sorted_ids(rest.pop().ok_or_else(|| malformed("part"))?)
    }

    async fn kick(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> Result<Vec<ClientId>, EngineError> {
        let args = [by.to_string(), target.to_string(), casefold(channel)];
        let mut rest = self.eval_status(&self.scripts.kick, &args).await?;
        sorted_ids(rest.pop().ok_or_else(|| malformed("kick"))?)
    }

    async fn channel(&self, channel: &str) -> Option<ChannelInfo> {
        let value = self
            .eval(&self.scripts.channel, &[casefold(channel)])
            .await
            .ok()?;
        items(value)?.pop().and_then(channel_info)
    }

    async fn channels_of(&self, id: ClientId) -> Vec<String> {
        match self
            .eval(&self.scripts.channels_of, &[id.to_string()])
            .await
        {
            Ok(v) => items(v)
                .and_then(|a| a.iter().map(text).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn list(&self, limit: usize) -> Vec<(String, usize, String)> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Vec::new();
        }
        let Ok(value) = self.eval(&self.scripts.list, &[limit.to_string()]).await else {
            return Vec::new();
        };
        items(value)
            .and_then(|rows| {
                rows.into_iter()
                    .map(|row| {
                        let r = items(row)?;
                        match r.as_slice() {
                            [name, count, topic] => Some((text(name)?, num(count)?, text(topic)?)),
                            _ => None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn set_topic(
        &self,
        channel: &str,
        by: ClientId,
        text_: &str,
    ) -> Result<(Topic, Vec<ClientId>), EngineError> {
        let args = [by.to_string(), casefold(channel), text_.to_owned()];
        let mut rest = self.eval_status(&self.scripts.topic, &args).await?;
        if rest.len() != 3 {
            return Err(malformed("topic"));
        }
        let members = sorted_ids(rest.pop().ok_or_else(|| malformed("topic"))?)?;
        let topic = Topic {
            text: text_.to_owned(),
            setter: text(&rest[0]).ok_or_else(|| malformed("topic"))?,
            time: num(&rest[1]).unwrap_or(0),
        };
        Ok((topic, members))
    }

    async fn set_modes(
        &self,
        channel: &str,
        by: ClientId,
        changes: Vec<ModeChange>,
    ) -> Result<(Vec<ModeChange>, Vec<ClientId>), EngineError> {
        let changes: Vec<ModeChange> = changes.into_iter().take(MAX_MODE_CHANGES).collect();
        let mut args = vec![by.to_string(), casefold(channel)];
        for c in &changes {
            // +l takes a positive u32; anything else is not applied (sent as a no-op mode).
            let valid_limit = c.mode != 'l'
                || !c.add
                || c.arg
                    .as_deref()
                    .and_then(|l| l.parse::<u32>().ok())
                    .is_some_and(|n| n > 0);
            let mode = if valid_limit { c.mode } else { '-' };
            let arg = match (c.mode, &c.arg) {
                ('l', Some(l)) if valid_limit => l.parse::<u32>().ok().map(|n| n.to_string()),
                (_, arg) => arg.clone(),
            };
            args.push(mode.to_string());
            args.push(flag(c.add));
            args.push(opt_arg(arg.as_deref()));
        }
        let mut rest = self.eval_status(&self.scripts.modes, &args).await?;
        if rest.len() != 2 {
            return Err(malformed("modes"));
        }
        let members = sorted_ids(rest.pop().ok_or_else(|| malformed("modes"))?)?;
        let applied_idx = rest
            .pop()
            .and_then(items)
            .and_then(|a| a.iter().map(num::<usize>).collect::<Option<Vec<_>>>())
            .ok_or_else(|| malformed("modes"))?;
        let applied = applied_idx
            .into_iter()
            .filter_map(|i| changes.get(i).cloned())
            .collect();
        Ok((applied, members))
    }

    async fn invite(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> Result<Vec<ClientId>, EngineError> {
        let args = [by.to_string(), target.to_string(), casefold(channel)];
        let mut rest = self.eval_status(&self.scripts.invite, &args).await?;
        sorted_ids(rest.pop().ok_or_else(|| malformed("invite"))?)
    }

    async fn can_send(&self, channel: &str, id: ClientId) -> Result<(), EngineError> {
        let args = [id.to_string(), casefold(channel)];
        self.eval_status(&self.scripts.can_send, &args).await?;
        Ok(())
    }

    async fn create_account(&self, name: &str, hash: &str) -> Result<(), EngineError> {
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(format!("{}accounts", self.base))
            .arg(casefold(name))
            .arg(hash);
        let created: i64 = self.cmd(cmd).await?;
        if created == 1 {
            Ok(())
        } else {
            Err(EngineError::AccountExists)
        }
    }

    async fn account_hash(&self, name: &str) -> Option<String> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(format!("{}accounts", self.base))
            .arg(casefold(name));
        self.cmd::<Option<String>>(cmd).await.ok().flatten()
    }

    async fn monitor_add(
        &self,
        id: ClientId,
        nicks: &[String],
        max: usize,
    ) -> Result<(), EngineError> {
        if nicks.len() > MAX_MONITOR_ARGS {
            return Err(EngineError::MonitorListFull);
        }
        let mut args = vec![id.to_string(), max.to_string()];
        args.extend(nicks.iter().map(|n| casefold(n)));
        self.eval_status(&self.scripts.monitor_add, &args).await?;
        Ok(())
    }

    async fn monitor_remove(&self, id: ClientId, nicks: &[String]) {
        for chunk in nicks.chunks(MAX_MONITOR_ARGS) {
            let mut args = vec![id.to_string()];
            args.extend(chunk.iter().map(|n| casefold(n)));
            if self
                .eval(&self.scripts.monitor_remove, &args)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn monitor_clear(&self, id: ClientId) {
        let _ = self
            .eval(&self.scripts.monitor_clear, &[id.to_string()])
            .await;
    }

    async fn monitor_list(&self, id: ClientId) -> Vec<String> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(format!("{}mon:{id}", self.base));
        self.cmd(cmd).await.unwrap_or_default()
    }

    async fn watchers(&self, nick: &str) -> Vec<ClientId> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(format!("{}watch:{}", self.base, casefold(nick)));
        match self.cmd::<Value>(cmd).await {
            Ok(v) => sorted_id_array(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn append_history(&self, key: &str, item: HistoryItem) {
        let mut args = vec![
            self.history_max.to_string(),
            ms(self.history_age).to_string(),
            item.time.to_string(),
            item.msgid.clone(),
            "m".into(),
            item.msgid.clone(),
            "t".into(),
            item.time.to_string(),
            "s".into(),
            item.source,
            "c".into(),
            item.command,
            "g".into(),
            item.target,
            "x".into(),
            item.text,
        ];
        if let Some(account) = item.account {
            args.push("a".into());
            args.push(account);
        }
        for (k, v) in item.client_tags.into_iter().take(MAX_CLIENT_TAGS) {
            args.push(format!("tag:{k}"));
            args.push(v);
        }
        let appended = self
            .eval_at(&self.scripts.history_append, self.history_base(key), &args)
            .await;
        if appended.is_err() || key.starts_with('#') {
            return;
        }
        if let Some((a, b)) = key.split_once(' ') {
            let args = [
                a.to_owned(),
                b.to_owned(),
                item.time.to_string(),
                DM_TARGETS_KEEP.to_string(),
                ms(self.history_age).to_string(),
            ];
            let _ = self.eval(&self.scripts.dm_touch, &args).await;
        }
    }

    async fn history(
        &self,
        key: &str,
        query: HistoryQuery,
        limit: usize,
        now_ms: u64,
    ) -> Vec<HistoryItem> {
        let limit = limit.min(self.history_max).min(MAX_LIST);
        if limit == 0 {
            return Vec::new();
        }
        let cutoff = now_ms.saturating_sub(ms(self.history_age));
        let (name, r1, r2) = match &query {
            HistoryQuery::Latest(r) => ("latest", r.as_ref(), None),
            HistoryQuery::Before(r) => ("before", Some(r), None),
            HistoryQuery::After(r) => ("after", Some(r), None),
            HistoryQuery::Around(r) => ("around", Some(r), None),
            HistoryQuery::Between(a, b) => ("between", Some(a), Some(b)),
        };
        let [k1, v1] = ref_args(r1);
        let [k2, v2] = ref_args(r2);
        let args = [
            name.to_owned(),
            limit.to_string(),
            cutoff.to_string(),
            k1,
            v1,
            k2,
            v2,
        ];
        let Ok(value) = self
            .eval_at(&self.scripts.history_query, self.history_base(key), &args)
            .await
        else {
            return Vec::new();
        };
        items(value)
            .and_then(|entries| entries.into_iter().map(history_item).collect())
            .unwrap_or_default()
    }

    async fn history_targets(
        &self,
        nick: &str,
        channels: &[String],
        from: u64,
        to: u64,
        limit: usize,
    ) -> Vec<(String, u64)> {
        let (lo, hi) = if from <= to { (from, to) } else { (to, from) };
        let channels: Vec<&String> = channels.iter().take(MAX_LIST).collect();
        let me = casefold(nick);
        let dm_key = format!("{}dm:{me}", self.base);
        let streams: Vec<String> = channels
            .iter()
            .map(|c| format!("{}s", self.history_base(&casefold(c))))
            .collect();
        let reply: Result<Vec<Value>, _> = self
            .query(|| {
                let mut p = redis::pipe();
                for s in &streams {
                    p.cmd("XREVRANGE")
                        .arg(s)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                }
                p.cmd("ZRANGEBYSCORE")
                    .arg(&dm_key)
                    .arg(format!("({lo}"))
                    .arg(format!("({hi}"))
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.min(DM_TARGETS_KEEP));
                p
            })
            .await;
        let Ok(mut replies) = reply else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(dms) = replies.pop().and_then(items) {
            for pair in dms.chunks(2) {
                if let [name, score] = pair {
                    if let (Some(name), Some(time)) = (text(name), num::<f64>(score)) {
                        out.push((name, time as u64));
                    }
                }
            }
        }
        for (channel, last) in channels.iter().zip(replies) {
            let time = items(last)
                .and_then(|mut entries| entries.pop())
                .and_then(items)
                .and_then(|mut entry| entry.pop())
                .and_then(history_item)
                .map(|i| i.time);
            if let Some(time) = time {
                if time > lo && time < hi {
                    out.push(((*channel).clone(), time));
                }
            }
        }
        out.sort_by_key(|(_, t)| *t);
        out.truncate(limit);
        out
    }

    async fn new_node(&self) -> Result<NodeId, EngineError> {
        let value = self.eval(&self.scripts.new_node, &[]).await?;
        let n = num::<i64>(&value).ok_or_else(|| malformed("new_node"))?;
        NodeId::try_from(n).map_err(|_| EngineError::Unavailable("node numbers exhausted".into()))
    }

    async fn heartbeat(
        &self,
        node: NodeId,
        clients: &[ClientId],
        ttl: Duration,
    ) -> Result<Vec<ClientId>, EngineError> {
        let ttl = ms(ttl).max(1).to_string();
        let mut unknown = Vec::new();
        let mut chunks: Vec<&[ClientId]> = clients.chunks(HEARTBEAT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut args = Vec::with_capacity(chunk.len() + 2);
            args.push(node.to_string());
            args.push(ttl.clone());
            args.extend(chunk.iter().map(ToString::to_string));
            let value = self.eval(&self.scripts.heartbeat, &args).await?;
            unknown.extend(ids(value).ok_or_else(|| malformed("heartbeat"))?);
        }
        Ok(unknown)
    }

    async fn nodes(&self) -> Vec<NodeId> {
        match self.eval(&self.scripts.nodes, &[]).await {
            Ok(v) => {
                let mut nodes: Vec<NodeId> = items(v)
                    .map(|a| a.iter().filter_map(num).collect())
                    .unwrap_or_default();
                nodes.sort_unstable();
                nodes
            }
            Err(_) => Vec::new(),
        }
    }

    async fn expired_clients(&self, limit: usize) -> Vec<ClientId> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Vec::new();
        }
        let args = [limit.to_string(), EXPIRED_SCAN.max(limit).to_string()];
        match self.eval(&self.scripts.expired, &args).await {
            Ok(v) => sorted_id_array(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn lock(&self, name: &str, holder: NodeId, ttl: Duration) -> bool {
        let args = [
            name.to_owned(),
            holder.to_string(),
            ms(ttl).max(1).to_string(),
        ];
        match self.eval(&self.scripts.lock, &args).await {
            Ok(v) => num::<i64>(&v) == Some(1),
            Err(_) => false,
        }
    }

    fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn statuses_map_to_errors_and_garbage_is_unavailable() {
        assert_eq!(
            status(Value::Array(vec![bulk("NickInUse")])).err(),
            Some(EngineError::NickInUse)
        );
        assert!(matches!(
            status(Value::Int(3)),
            Err(EngineError::Unavailable(_))
        ));
        assert!(matches!(
            status(Value::Array(vec![bulk("Whatever")])),
            Err(EngineError::Unavailable(_))
        ));
        assert!(status(Value::Array(vec![bulk("OK"), Value::Int(1)])).is_ok());
    }

    #[test]
    fn client_records_parse_defensively() {
        let fields = Value::Array(vec![
            bulk("7"),
            bulk("Nick"),
            bulk("~u"),
            bulk("h"),
            bulk("Real"),
            Value::Nil,
            bulk("away"),
            bulk("1"),
            bulk("0"),
            bulk("12"),
        ]);
        let c = client_fields(fields).unwrap();
        assert_eq!(
            (c.id, c.account.as_deref(), c.away.as_deref()),
            (7, None, Some("away"))
        );
        assert!(c.invisible && !c.oper);
        let packed = client_info(bulk("7\nNick\n~u\nh\nReal\n0\n1away\n1\n0\n12")).unwrap();
        assert_eq!(packed, c, "packed and field replies agree");
        assert!(client_info(bulk("7\nNick\n~u\nh\nReal\n0\n1away\n1\n0\n12\nextra")).is_none());
        assert!(client_info(bulk("x\nNick")).is_none());
        assert!(client_fields(Value::Array(vec![bulk("x")])).is_none());
        assert!(client_info(Value::Int(1)).is_none());
        assert_eq!(sorted_ids(bulk("3,1,2")).unwrap(), vec![1, 2, 3]);
        assert!(sorted_ids(bulk("")).unwrap().is_empty());
        assert!(sorted_ids(bulk("1,,2")).is_err());
    }
}

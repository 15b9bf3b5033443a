//! The memory engine: all state in one process behind one lock. Single node only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use keel_irc_proto::casefold;
use parking_lot::Mutex;

use super::{
    Ban, ChannelInfo, ChannelModes, ChatEngine, ClientId, ClientInfo, ClientUpdate, Counts,
    Departed, EngineError, HistoryItem, HistoryQuery, HistoryRef, Joined, Member, ModeChange,
    NodeId, Topic, WhowasEntry,
};
use crate::util::{glob_match, unix_secs};

const WHOWAS_KEEP: usize = 1024;

/// Presence given on registration until the node's heartbeat refreshes it.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, Default)]
struct Prefix {
    op: bool,
    voice: bool,
}

#[derive(Debug)]
struct Channel {
    name: String,
    created: u64,
    topic: Option<Topic>,
    modes: ChannelModes,
    /// Member id to prefixes; ids grow with connection order.
    members: BTreeMap<ClientId, Prefix>,
    invited: HashSet<ClientId>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<ClientId, ClientInfo>,
    nicks: HashMap<String, ClientId>,
    channels: HashMap<String, Channel>,
    member_of: HashMap<ClientId, HashSet<String>>,
    accounts: HashMap<String, String>,
    monitors: HashMap<ClientId, HashSet<String>>,
    watchers: HashMap<String, HashSet<ClientId>>,
    whowas: VecDeque<WhowasEntry>,
    history: HashMap<String, VecDeque<HistoryItem>>,
    /// Presence expiry of each registered client.
    presence: HashMap<ClientId, Instant>,
    /// Heartbeat expiry of each node.
    nodes: HashMap<NodeId, Instant>,
    last_node: NodeId,
    locks: HashMap<String, (NodeId, Instant)>,
}

/// The single-node engine. History is bounded by count per conversation and by age.
#[derive(Debug)]
pub struct MemoryEngine {
    state: Mutex<State>,
    history_max: usize,
    history_age: Duration,
    presence_ttl: Duration,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new(1000, Duration::from_secs(7 * 24 * 3600))
    }
}

impl MemoryEngine {
    /// An engine keeping at most `history_max` messages per conversation, none older than
    /// `history_age`.
    pub fn new(history_max: usize, history_age: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            history_max: history_max.max(1),
            history_age,
            presence_ttl: DEFAULT_PRESENCE_TTL,
        }
    }

    /// The presence a client gets on registration, before its node's first heartbeat.
    pub fn with_presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }
}

impl State {
    fn snapshot(&self, chan: &Channel) -> ChannelInfo {
        ChannelInfo {
            name: chan.name.clone(),
            created: chan.created,
            topic: chan.topic.clone(),
            modes: chan.modes.clone(),
            members: chan
                .members
                .iter()
                .filter_map(|(id, p)| {
                    self.clients.get(id).map(|c| Member {
                        client: c.clone(),
                        op: p.op,
                        voice: p.voice,
                    })
                })
                .collect(),
        }
    }

    fn remove_member(&mut self, folded: &str, id: ClientId) {
        if let Some(chan) = self.channels.get_mut(folded) {
            chan.members.remove(&id);
            if chan.members.is_empty() {
                self.channels.remove(folded);
            }
        }
        if let Some(set) = self.member_of.get_mut(&id) {
            set.remove(folded);
        }
    }

    fn is_banned(&self, chan: &Channel, id: ClientId) -> bool {
        let Some(client) = self.clients.get(&id) else {
            return false;
        };
        let mask = casefold(&client.mask());
        chan.modes
            .bans
            .iter()
            .any(|b| glob_match(&casefold(&b.mask), &mask))
    }
}

fn position(items: &VecDeque<HistoryItem>, r: &HistoryRef) -> Option<(usize, bool)> {
    // Returns (index, exact): for a msgid the index of that message; for a time the index of
    // the first message at or after it (exact when its time equals the reference).
    match r {
        HistoryRef::MsgId(id) => items.iter().position(|i| &i.msgid == id).map(|p| (p, true)),
        HistoryRef::Time(t) => {
            let p = items.partition_point(|i| i.time < *t);
            Some((p, items.get(p).is_some_and(|i| i.time == *t)))
        }
    }
}

impl ChatEngine for MemoryEngine {
    async fn new_node(&self) -> Result<NodeId, EngineError> {
        let mut s = self.state.lock();
        s.last_node = s
            .last_node
            .checked_add(1)
            .ok_or_else(|| EngineError::Unavailable("node numbers exhausted".into()))?;
        Ok(s.last_node)
    }

    async fn heartbeat(
        &self,
        node: NodeId,
        clients: &[ClientId],
        ttl: Duration,
    ) -> Result<Vec<ClientId>, EngineError> {
        let until = Instant::now() + ttl;
        let mut s = self.state.lock();
        s.nodes.insert(node, until);
        let mut unknown = Vec::new();
        for id in clients {
            match s.presence.get_mut(id) {
                Some(at) => *at = until,
                None => unknown.push(*id),
            }
        }
        Ok(unknown)
    }

    async fn nodes(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let mut s = self.state.lock();
        s.nodes.retain(|_, until| *until > now);
        let mut nodes: Vec<NodeId> = s.nodes.keys().copied().collect();
        nodes.sort_unstable();
        nodes
    }

    async fn expired_clients(&self, limit: usize) -> Vec<ClientId> {
        let now = Instant::now();
        let s = self.state.lock();
        let mut ids: Vec<ClientId> = s
            .presence
            .iter()
            .filter(|(id, until)| {
                **until <= now && s.nodes.get(&super::node_of(**id)).is_none_or(|n| *n <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids
    }

    async fn lock(&self, name: &str, holder: NodeId, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut s = self.state.lock();
        match s.locks.get(name) {
            Some((h, until)) if *h != holder && *until > now => false,
            _ => {
                s.locks.insert(name.to_owned(), (holder, now + ttl));
                true
            }
        }
    }

    fn available(&self) -> bool {
        true
    }

    async fn register(&self, info: ClientInfo) -> Result<(), EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(&info.nick);
        if s.nicks.contains_key(&folded) {
            return Err(EngineError::NickInUse);
        }
        s.nicks.insert(folded, info.id);
        s.presence
            .insert(info.id, Instant::now() + self.presence_ttl);
        s.clients.insert(info.id, info);
        Ok(())
    }

    async fn rename(&self, id: ClientId, nick: &str) -> Result<ClientInfo, EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(nick);
        if let Some(owner) = s.nicks.get(&folded) {
            if *owner != id {
                return Err(EngineError::NickInUse);
            }
        }
        let old = s.clients.get(&id).cloned().ok_or(EngineError::NoSuchNick)?;
        s.nicks.remove(&casefold(&old.nick));
        s.nicks.insert(folded, id);
        if let Some(c) = s.clients.get_mut(&id) {
            c.nick = nick.to_owned();
        }
        Ok(old)
    }

    async fn update(&self, id: ClientId, update: ClientUpdate) -> Result<ClientInfo, EngineError> {
        let mut s = self.state.lock();
        let c = s.clients.get_mut(&id).ok_or(EngineError::NoSuchNick)?;
        match update {
            ClientUpdate::Away(a) => c.away = a,
            ClientUpdate::Realname(r) => c.realname = r,
            ClientUpdate::Account(a) => c.account = a,
            ClientUpdate::Invisible(i) => c.invisible = i,
            ClientUpdate::Oper(o) => c.oper = o,
        }
        Ok(c.clone())
    }

    async fn unregister(&self, id: ClientId) -> Option<Departed> {
        let mut s = self.state.lock();
        let client = s.clients.remove(&id)?;
        s.presence.remove(&id);
        s.nicks.remove(&casefold(&client.nick));
        let mut peers = HashSet::new();
        for folded in s.member_of.remove(&id).unwrap_or_default() {
            if let Some(chan) = s.channels.get_mut(&folded) {
                chan.members.remove(&id);
                peers.extend(chan.members.keys().copied());
                if chan.members.is_empty() {
                    s.channels.remove(&folded);
                }
            }
        }
        for chan in s.channels.values_mut() {
            chan.invited.remove(&id);
        }
        if let Some(list) = s.monitors.remove(&id) {
            for nick in list {
                if let Some(w) = s.watchers.get_mut(&nick) {
                    w.remove(&id);
                    if w.is_empty() {
                        s.watchers.remove(&nick);
                    }
                }
            }
        }
        s.whowas.push_front(WhowasEntry {
            nick: client.nick.clone(),
            user: client.user.clone(),
            host: client.host.clone(),
            realname: client.realname.clone(),
            time: unix_secs(),
        });
        s.whowas.truncate(WHOWAS_KEEP);
        Some(Departed {
            client,
            peers: peers.into_iter().collect(),
        })
    }

    async fn client(&self, id: ClientId) -> Option<ClientInfo> {
        self.state.lock().clients.get(&id).cloned()
    }

    async fn find_nick(&self, nick: &str) -> Option<ClientInfo> {
        let s = self.state.lock();
        let id = s.nicks.get(&casefold(nick))?;
        s.clients.get(id).cloned()
    }

    async fn clients(&self, limit: usize) -> Vec<ClientInfo> {
        let s = self.state.lock();
        s.clients.values().take(limit).cloned().collect()
    }

    async fn peers(&self, id: ClientId) -> Vec<ClientId> {
        let s = self.state.lock();
        let mut peers = HashSet::new();
        if let Some(chans) = s.member_of.get(&id) {
            for folded in chans {
                if let Some(chan) = s.channels.get(folded) {
                    peers.extend(chan.members.keys().copied());
                }
            }
        }
        peers.remove(&id);
        peers.into_iter().collect()
    }

    async fn counts(&self) -> Counts {
        let s = self.state.lock();
        Counts {
            users: s.clients.len(),
            invisible: s.clients.values().filter(|c| c.invisible).count(),
            opers: s.clients.values().filter(|c| c.oper).count(),
            channels: s.channels.len(),
        }
    }

    async fn whowas(&self, nick: &str, limit: usize) -> Vec<WhowasEntry> {
        let folded = casefold(nick);
        let s = self.state.lock();
        s.whowas
            .iter()
            .filter(|w| casefold(&w.nick) == folded)
            .take(limit)
            .cloned()
            .collect()
    }

    async fn join(
        &self,
        channel: &str,
        id: ClientId,
        key: Option<&str>,
        max_channels: usize,
    ) -> Result<Joined, EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(channel);
        if !s.clients.contains_key(&id) {
            return Err(EngineError::NoSuchNick);
        }
        if s.member_of.get(&id).map_or(0, HashSet::len) >= max_channels {
            return Err(EngineError::TooManyChannels);
        }
        let created = !s.channels.contains_key(&folded);
        if created {
            s.channels.insert(
                folded.clone(),
                Channel {
                    name: channel.to_owned(),
                    created: unix_secs(),
                    topic: None,
                    modes: ChannelModes {
                        no_external: true,
                        topic_ops_only: true,
                        ..ChannelModes::default()
                    },
                    members: BTreeMap::new(),
                    invited: HashSet::new(),
                },
            );
        }
        let Some(chan) = s.channels.get(&folded) else {
            return Err(EngineError::NoSuchChannel);
        };
        if chan.members.contains_key(&id) {
            return Err(EngineError::UserOnChannel);
        }
        let invited = chan.invited.contains(&id);
        if !created {
            if let Some(k) = &chan.modes.key {
                if key != Some(k.as_str()) {
                    return Err(EngineError::BadKey);
                }
            }
            if let Some(limit) = chan.modes.limit {
                if chan.members.len() >= limit as usize {
                    return Err(EngineError::ChannelFull);
                }
            }
            if chan.modes.invite_only && !invited {
                return Err(EngineError::InviteOnly);
            }
            if !invited && s.is_banned(chan, id) {
                return Err(EngineError::Banned);
            }
        }
        if let Some(chan) = s.channels.get_mut(&folded) {
            chan.invited.remove(&id);
            chan.members.insert(
                id,
                Prefix {
                    op: created,
                    voice: false,
                },
            );
        }
        s.member_of.entry(id).or_default().insert(folded.clone());
        let chan = s.channels.get(&folded).ok_or(EngineError::NoSuchChannel)?;
        Ok(Joined {
            name: chan.name.clone(),
            topic: chan.topic.clone(),
            members: chan.members.len(),
            created,
        })
    }

    async fn part(&self, channel: &str, id: ClientId) -> Result<Vec<ClientId>, EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(channel);
        let chan = s.channels.get(&folded).ok_or(EngineError::NoSuchChannel)?;
        if !chan.members.contains_key(&id) {
            return Err(EngineError::NotOnChannel);
        }
        let members = chan.members.keys().copied().collect();
        s.remove_member(&folded, id);
        Ok(members)
    }

    async fn kick(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> Result<Vec<ClientId>, EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(channel);
        let chan = s.channels.get(&folded).ok_or(EngineError::NoSuchChannel)?;
        match chan.members.get(&by) {
            None => return Err(EngineError::NotOnChannel),
            Some(p) if !p.op => return Err(EngineError::ChanOpNeeded),
            Some(_) => {}
        }
        if !chan.members.contains_key(&target) {
            return Err(EngineError::UserNotInChannel);
        }
        let members = chan.members.keys().copied().collect();
        s.remove_member(&folded, target);
        Ok(members)
    }

    async fn channel(&self, channel: &str) -> Option<ChannelInfo> {
        let s = self.state.lock();
        let chan = s.channels.get(&casefold(channel))?;
        Some(s.snapshot(chan))
    }

    async fn channels_of(&self, id: ClientId) -> Vec<String> {
        let s = self.state.lock();
        s.member_of
            .get(&id)
            .map(|set| {
                set.iter()
                    .filter_map(|f| s.channels.get(f).map(|c| c.name.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn list(&self, limit: usize) -> Vec<(String, usize, String)> {
        let s = self.state.lock();
        s.channels
            .values()
            .take(limit)
            .map(|c| {
                (
                    c.name.clone(),
                    c.members.len(),
                    c.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn set_topic(
        &self,
        channel: &str,
        by: ClientId,
        text: &str,
    ) -> Result<(Topic, Vec<ClientId>), EngineError> {
        let mut s = self.state.lock();
        let setter = s
            .clients
            .get(&by)
            .map(ClientInfo::mask)
            .ok_or(EngineError::NoSuchNick)?;
        let chan = s
            .channels
            .get_mut(&casefold(channel))
            .ok_or(EngineError::NoSuchChannel)?;
        match chan.members.get(&by) {
            None => return Err(EngineError::NotOnChannel),
            Some(p) if chan.modes.topic_ops_only && !p.op => return Err(EngineError::ChanOpNeeded),
            Some(_) => {}
        }
        let topic = Topic {
            text: text.to_owned(),
            setter,
            time: unix_secs(),
        };
        chan.topic = if text.is_empty() {
            None
        } else {
            Some(topic.clone())
        };
        Ok((topic, chan.members.keys().copied().collect()))
    }

    async fn set_modes(
        &self,
        channel: &str,
        by: ClientId,
        changes: Vec<ModeChange>,
    ) -> Result<(Vec<ModeChange>, Vec<ClientId>), EngineError> {
        let mut s = self.state.lock();
        let setter = s
            .clients
            .get(&by)
            .map(ClientInfo::mask)
            .ok_or(EngineError::NoSuchNick)?;
        let nick_ids: Vec<(String, ClientId)> = changes
            .iter()
            .filter(|c| matches!(c.mode, 'o' | 'v'))
            .filter_map(|c| c.arg.as_ref())
            .filter_map(|n| s.nicks.get(&casefold(n)).map(|id| (casefold(n), *id)))
            .collect();
        let chan = s
            .channels
            .get_mut(&casefold(channel))
            .ok_or(EngineError::NoSuchChannel)?;
        match chan.members.get(&by) {
            None => return Err(EngineError::NotOnChannel),
            Some(p) if !p.op => return Err(EngineError::ChanOpNeeded),
            Some(_) => {}
        }
        let mut applied = Vec::new();
        for change in changes {
            let done = match (change.mode, change.add, change.arg.as_deref()) {
                ('n', add, _) => std::mem::replace(&mut chan.modes.no_external, add) != add,
                ('t', add, _) => std::mem::replace(&mut chan.modes.topic_ops_only, add) != add,
                ('i', add, _) => std::mem::replace(&mut chan.modes.invite_only, add) != add,
                ('k', true, Some(k)) => {
                    chan.modes.key = Some(k.to_owned());
                    true
                }
                ('k', false, _) => chan.modes.key.take().is_some(),
                ('l', true, Some(l)) => match l.parse::<u32>() {
                    Ok(n) if n > 0 => {
                        chan.modes.limit = Some(n);
                        true
                    }
                    _ => false,
                },
                ('l', false, _) => chan.modes.limit.take().is_some(),
                ('b', true, Some(mask)) => {
                    if chan
                        .modes
                        .bans
                        .iter()
                        .any(|b| casefold(&b.mask) == casefold(mask))
                        || chan.modes.bans.len() >= 100
                    {
                        false
                    } else {
                        chan.modes.bans.push(Ban {
                            mask: mask.to_owned(),
                            setter: setter.clone(),
                            time: unix_secs(),
                        });
                        true
                    }
                }
                ('b', false, Some(mask)) => {
                    let before = chan.modes.bans.len();
                    chan.modes
                        .bans
                        .retain(|b| casefold(&b.mask) != casefold(mask));
                    before != chan.modes.bans.len()
                }
                ('o' | 'v', add, Some(nick)) => {
                    let folded = casefold(nick);
                    let target = nick_ids.iter().find(|(n, _)| *n == folded).map(|x| x.1);
                    match target.and_then(|t| chan.members.get_mut(&t)) {
                        Some(p) => {
                            let slot = if change.mode == 'o' {
                                &mut p.op
                            } else {
                                &mut p.voice
                            };
                            std::mem::replace(slot, add) != add
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if done {
                applied.push(change);
            }
        }
        Ok((applied, chan.members.keys().copied().collect()))
    }

    async fn invite(
        &self,
        channel: &str,
        by: ClientId,
        target: ClientId,
    ) -> Result<Vec<ClientId>, EngineError> {
        let mut s = self.state.lock();
        let chan = s
            .channels
            .get_mut(&casefold(channel))
            .ok_or(EngineError::NoSuchChannel)?;
        match chan.members.get(&by) {
            None => return Err(EngineError::NotOnChannel),
            Some(p) if chan.modes.invite_only && !p.op => return Err(EngineError::ChanOpNeeded),
            Some(_) => {}
        }
        if chan.members.contains_key(&target) {
            return Err(EngineError::UserOnChannel);
        }
        if chan.invited.len() < 1000 {
            chan.invited.insert(target);
        }
        Ok(chan
            .members
            .iter()
            .filter(|(_, p)| p.op)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn can_send(&self, channel: &str, id: ClientId) -> Result<(), EngineError> {
        let s = self.state.lock();
        let chan = s
            .channels
            .get(&casefold(channel))
            .ok_or(EngineError::NoSuchChannel)?;
        let member = chan.members.get(&id);
        if member.is_none() && chan.modes.no_external {
            return Err(EngineError::CannotSend);
        }
        let privileged = member.is_some_and(|p| p.op || p.voice);
        if !privileged && s.is_banned(chan, id) {
            return Err(EngineError::CannotSend);
        }
        Ok(())
    }

    async fn create_account(&self, name: &str, hash: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock();
        let folded = casefold(name);
        if s.accounts.contains_key(&folded) {
            return Err(EngineError::AccountExists);
        }
        s.accounts.insert(folded, hash.to_owned());
        Ok(())
    }

    async fn account_hash(&self, name: &str) -> Option<String> {
        self.state.lock().accounts.get(&casefold(name)).cloned()
    }

    async fn monitor_add(
        &self,
        id: ClientId,
        nicks: &[String],
        max: usize,
    ) -> Result<(), EngineError> {
        let mut s = self.state.lock();
        let list = s.monitors.entry(id).or_default();
        let new: Vec<String> = nicks
            .iter()
            .map(|n| casefold(n))
            .filter(|n| !list.contains(n))
            .collect();
        if list.len() + new.len() > max {
            return Err(EngineError::MonitorListFull);
        }
        list.extend(new.iter().cloned());
        for nick in new {
            s.watchers.entry(nick).or_default().insert(id);
        }
        Ok(())
    }

    async fn monitor_remove(&self, id: ClientId, nicks: &[String]) {
        let mut s = self.state.lock();
        for nick in nicks.iter().map(|n| casefold(n)) {
            if let Some(list) = s.monitors.get_mut(&id) {
                list.remove(&nick);
            }
            if let Some(w) = s.watchers.get_mut(&nick) {
                w.remove(&id);
                if w.is_empty() {
                    s.watchers.remove(&nick);
                }
            }
        }
    }

    async fn monitor_clear(&self, id: ClientId) {
        let list: Vec<String> = self
            .state
            .lock()
            .monitors
            .remove(&id)
            .map(|l| l.into_iter().collect())
            .unwrap_or_default();
        self.monitor_remove(id, &list).await;
    }

    async fn monitor_list(&self, id: ClientId) -> Vec<String> {
        let s = self.state.lock();
        s.monitors
            .get(&id)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn watchers(&self, nick: &str) -> Vec<ClientId> {
        let s = self.state.lock();
        s.watchers
            .get(&casefold(nick))
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }

    async fn append_history(&self, key: &str, item: HistoryItem) {
        let mut s = self.state.lock();
        let cutoff = item
            .time
            .saturating_sub(self.history_age.as_millis() as u64);
        let items = s.history.entry(key.to_owned()).or_default();
        items.push_back(item);
        while items.len() > self.history_max || items.front().is_some_and(|i| i.time < cutoff) {
            items.pop_front();
        }
    }

    async fn history(
        &self,
        key: &str,
        query: HistoryQuery,
        limit: usize,
        now_ms: u64,
    ) -> Vec<HistoryItem> {
        let s = self.state.lock();
        let Some(items) = s.history.get(key) else {
            return Vec::new();
        };
        let cutoff = now_ms.saturating_sub(self.history_age.as_millis() as u64);
        let first_live = items.partition_point(|i| i.time < cutoff);
        let len = items.len();
        // Half-open index ranges [lo, hi), then take from the end or the start.
        let (lo, hi, from_end) = match &query {
            HistoryQuery::Latest(None) => (first_live, len, true),
            HistoryQuery::Latest(Some(r)) => match position(items, r) {
                Some((p, exact)) => (p + usize::from(exact), len, true),
                None => (first_live, len, true),
            },
            HistoryQuery::Before(r) => match position(items, r) {
                Some((p, _)) => (first_live, p, true),
                None => return Vec::new(),
            },
            HistoryQuery::After(r) => match position(items, r) {
                Some((p, exact)) => (p + usize::from(exact), len, false),
                None => return Vec::new(),
            },
            HistoryQuery::Around(r) => match position(items, r) {
                Some((p, _)) => {
                    let half = limit / 2;
                    let lo = p.saturating_sub(half).max(first_live);
                    (lo, (lo + limit).min(len), false)
                }
                None => return Vec::new(),
            },
            HistoryQuery::Between(a, b) => match (position(items, a), position(items, b)) {
                (Some((pa, ea)), Some((pb, eb))) => {
                    if pa <= pb {
                        (pa + usize::from(ea), pb, false)
                    } else {
                        (pb + usize::from(eb), pa, true)
                    }
                }
                _ => return Vec::new(),
            },
        };
        let lo = lo.max(first_live);
        if lo >= hi {
            return Vec::new();
        }
        let (lo, hi) = if from_end {
            (hi.saturating_sub(limit).max(lo), hi)
        } else {
            (lo, (lo + limit).min(hi))
        };
        items.range(lo..hi).cloned().collect()
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
        let me = casefold(nick);
        let s = self.state.lock();
        let mut out: Vec<(String, u64)> = Vec::new();
        for (key, items) in &s.history {
            let name = if key.starts_with('#') {
                match channels.iter().find(|c| casefold(c) == *key) {
                    Some(c) => c.clone(),
                    None => continue,
                }
            } else {
                match key.split_once(' ') {
                    Some((a, b)) if a == me => b.to_owned(),
                    Some((a, b)) if b == me => a.to_owned(),
                    _ => continue,
                }
            };
            if let Some(last) = items.back() {
                if last.time > lo && last.time < hi {
                    out.push((name, last.time));
                }
            }
        }
        out.sort_by_key(|(_, t)| *t);
        out.truncate(limit);
        out
    }
}

//! One client's protocol state and its commands. Owned by the connection task.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use keel_irc_proto::{casefold, Message};

use crate::client::{cap, ClientHandle, Want};
use crate::engine::{
    history_key, ChatEngine, ClientId, ClientInfo, ClientUpdate, EngineError, HistoryItem,
    HistoryQuery, HistoryRef, ModeChange, Topic,
};
use crate::shared::{Shared, VERSION};
use crate::util::{format_time, parse_time, unix_ms, unix_secs, valid_channel, valid_nick};

pub const NICKLEN: usize = 30;
pub const CHANNELLEN: usize = 50;
pub const TOPICLEN: usize = 390;
pub const CHATHISTORY_MAX: usize = 100;
const MAX_TARGETS: usize = 4;
const MAX_MODES: usize = 4;

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

#[derive(Debug, Default)]
struct Sasl {
    buf: String,
}

/// Protocol state of one connection.
pub struct Session<E> {
    pub shared: Arc<Shared<E>>,
    pub handle: Arc<ClientHandle>,
    pub id: ClientId,
    host: String,
    nick: Option<String>,
    user: Option<(String, String)>,
    pass_ok: bool,
    pub registered: bool,
    cap_negotiating: bool,
    caps: u32,
    account: Option<String>,
    sasl: Option<Sasl>,
    oper: bool,
    away: bool,
    pub last_message: u64,
    /// Replies to the command being handled, flushed by the connection task.
    pub out: Vec<Message>,
    /// Set when the session must end, with the QUIT reason.
    pub quit: Option<String>,
    batch_seq: u64,
    /// Channels (folded) whose JOIN this client was answered `FAIL JOIN
    /// TEMPORARILY_UNAVAILABLE`: the store may have applied it after the node stopped
    /// waiting. A later JOIN that finds the client already on such a channel is announced as
    /// the JOIN it was (echo, members, topic, names) instead of ignored, or neither the client
    /// nor the members would ever see it. Bounded by the channel limit.
    unconfirmed_joins: Vec<String>,
}

impl<E: ChatEngine> Session<E> {
    pub fn new(shared: Arc<Shared<E>>, handle: Arc<ClientHandle>, peer: SocketAddr) -> Self {
        let pass_ok = shared.config.password.is_none();
        Self {
            id: handle.id,
            shared,
            handle,
            host: peer.ip().to_string(),
            nick: None,
            user: None,
            pass_ok,
            registered: false,
            cap_negotiating: false,
            caps: 0,
            account: None,
            sasl: None,
            oper: false,
            away: false,
            last_message: unix_secs(),
            out: Vec::new(),
            quit: None,
            batch_seq: 0,
            unconfirmed_joins: Vec::new(),
        }
    }

    /// The nick, once one is set.
    pub fn nick(&self) -> Option<&str> {
        self.nick.as_deref()
    }

    pub fn caps(&self) -> u32 {
        self.caps
    }

    fn has(&self, bits: u32) -> bool {
        self.caps & bits == bits
    }

    fn me(&self) -> String {
        self.nick.clone().unwrap_or_else(|| "*".into())
    }

    fn mask(&self) -> String {
        let user = self.user.as_ref().map_or("*", |u| u.0.as_str());
        format!("{}!{}@{}", self.me(), user, self.host)
    }

    fn server(&self) -> &str {
        &self.shared.config.server_name
    }

    /// Pushes a numeric reply: `:server CODE <me> params...`.
    pub fn num(&mut self, code: &str, params: Vec<String>) {
        let mut p = Vec::with_capacity(params.len() + 1);
        p.push(self.me());
        p.extend(params);
        let m = Message::new(code, p).with_source(self.server().to_owned());
        self.out.push(m);
    }

    fn fail(&mut self, command: &str, code: &str, context: Vec<String>, text: &str) {
        let mut p = vec![command.to_owned(), code.to_owned()];
        p.extend(context);
        p.push(text.to_owned());
        let m = Message::new("FAIL", p).with_source(self.server().to_owned());
        self.out.push(m);
    }

    /// `FAIL <command> TEMPORARILY_UNAVAILABLE`: the store did not answer; try again.
    fn temporarily_unavailable(&mut self, command: &str) {
        self.fail(
            command,
            "TEMPORARILY_UNAVAILABLE",
            vec![],
            "Network degraded; try again shortly",
        );
    }

    fn msg_from_me(&self, command: &str, params: Vec<String>) -> Message {
        let mut m = Message::new(command, params)
            .with_source(self.mask())
            .with_tag("time", format_time(unix_ms()));
        if let Some(a) = &self.account {
            m.set_tag("account", a.clone());
        }
        m
    }

    /// Delivers to `ids` (self included, through `out`) those having `need` capabilities.
    fn deliver(&mut self, ids: &[ClientId], msg: &Arc<Message>, need: u32, include_self: bool) {
        if include_self && self.has(need) && ids.contains(&self.id) {
            self.out.push((**msg).clone());
        }
        self.shared.hub.deliver(ids, self.id, msg, need);
    }

    /// Peers and, with extended-monitor, watchers: those told of away/account/setname changes.
    async fn notify_circle(&mut self, msg: Message, need: u32) {
        let msg = Arc::new(msg);
        let ids = self.shared.engine.peers(self.id).await;
        self.deliver(&ids, &msg, need, false);
        self.deliver_watchers(&ids, &msg, need).await;
        if self.has(need) {
            self.out.push((*msg).clone());
        }
    }

    /// Watchers that are not `peers` get `msg` when they negotiated extended-monitor.
    async fn deliver_watchers(&mut self, peers: &[ClientId], msg: &Arc<Message>, need: u32) {
        let seen: HashSet<ClientId> = peers.iter().copied().collect();
        let watchers: Vec<ClientId> = self
            .shared
            .engine
            .watchers(&self.me())
            .await
            .into_iter()
            .filter(|w| !seen.contains(w))
            .collect();
        self.deliver(&watchers, msg, cap::EXTENDED_MONITOR | need, false);
    }

    fn next_batch(&mut self) -> String {
        self.batch_seq += 1;
        format!("b{}", self.batch_seq)
    }

    /// Applies the label of a labeled-response to `out`.
    pub fn finish_label(&mut self, label: Option<String>) {
        let Some(label) = label else { return };
        if !self.has(cap::LABELED_RESPONSE) {
            return;
        }
        match self.out.len() {
            0 => {
                let m = Message::new("ACK", vec![])
                    .with_source(self.server().to_owned())
                    .with_tag("label", label);
                self.out.push(m);
            }
            1 => self.out[0].set_tag("label", label),
            _ if self.has(cap::BATCH) => {
                let id = self.next_batch();
                for m in &mut self.out {
                    if m.tag("batch").is_none() {
                        m.set_tag("batch", id.clone());
                    }
                }
                let start =
                    Message::new("BATCH", vec![format!("+{id}"), "labeled-response".into()])
                        .with_source(self.server().to_owned())
                        .with_tag("label", label);
                let end = Message::new("BATCH", vec![format!("-{id}")])
                    .with_source(self.server().to_owned());
                self.out.insert(0, start);
                self.out.push(end);
            }
            _ => self.out[0].set_tag("label", label),
        }
    }

    /// Handles one parsed message.
    pub async fn handle(&mut self, msg: Message) {
        let command = msg.command.to_ascii_uppercase();
        if self.registered && !matches!(command.as_str(), "PING" | "PONG") {
            self.last_message = unix_secs();
        }
        let p = &msg.params;
        let need = |n: usize| p.len() >= n;
        let pre_registration = matches!(
            command.as_str(),
            "CAP"
                | "PASS"
                | "NICK"
                | "USER"
                | "PING"
                | "PONG"
                | "QUIT"
                | "AUTHENTICATE"
                | "REGISTER"
        );
        if !self.registered && !pre_registration {
            self.num("451", vec![s("You have not registered")]);
            return;
        }
        let min = match command.as_str() {
            "PASS" | "PING" | "JOIN" | "PART" | "TOPIC" | "MODE" | "ISON" | "USERHOST" | "OPER"
            | "AUTHENTICATE" | "SETNAME" | "MONITOR" | "WHOWAS" | "TAGMSG" => 1,
            "KICK" | "INVITE" | "KILL" => 2,
            "USER" => 4,
            "CHATHISTORY" | "REGISTER" => 3,
            _ => 0,
        };
        if !need(min) {
            if command == "CHATHISTORY" {
                self.fail(
                    "CHATHISTORY",
                    "NEED_MORE_PARAMS",
                    vec![],
                    "Missing parameters",
                );
            } else if command == "REGISTER" {
                self.fail("REGISTER", "NEED_MORE_PARAMS", vec![], "Missing parameters");
            } else {
                self.num("461", vec![command.clone(), s("Not enough parameters")]);
            }
            return;
        }
        if (self.shared.is_degraded() || !self.shared.engine.available())
            && !matches!(
                command.as_str(),
                "CAP" | "PING" | "PONG" | "QUIT" | "PASS" | "MOTD" | "VERSION" | "TIME"
            )
        {
            // Stated rule: nothing that needs the network state runs while the store is
            // away, and nothing is queued to arrive late; the client is told to retry. A
            // client still registering is closed with a hint its reconnect policy honours.
            if !self.registered {
                self.quit = Some(s("Network degraded; try again in 5 seconds"));
                return;
            }
            self.temporarily_unavailable(&command);
            return;
        }
        match command.as_str() {
            "CAP" => self.cmd_cap(&msg).await,
            "PASS" => self.cmd_pass(&msg),
            "NICK" => self.cmd_nick(&msg).await,
            "USER" => self.cmd_user(&msg).await,
            "PING" => {
                let token = p.first().cloned().unwrap_or_default();
                let server = self.server().to_owned();
                self.out
                    .push(Message::new("PONG", vec![server.clone(), token]).with_source(server));
            }
            "PONG" => {}
            "QUIT" => {
                let reason = p
                    .first()
                    .map_or_else(|| s("Client Quit"), |r| format!("Quit: {r}"));
                self.quit = Some(reason);
            }
            "AUTHENTICATE" => self.cmd_authenticate(&msg).await,
            "REGISTER" => self.cmd_register(&msg).await,
            "JOIN" => self.cmd_join(&msg).await,
            "PART" => self.cmd_part(&msg).await,
            "PRIVMSG" | "NOTICE" | "TAGMSG" => self.cmd_message(&command, &msg).await,
            "NAMES" => match p.first() {
                Some(list) => {
                    for chan in list.split(',').take(MAX_TARGETS) {
                        self.names(chan).await;
                    }
                }
                None => self.num("366", vec![s("*"), s("End of /NAMES list")]),
            },
            "TOPIC" => self.cmd_topic(&msg).await,
            "MODE" => self.cmd_mode(&msg).await,
            "KICK" => self.cmd_kick(&msg).await,
            "INVITE" => self.cmd_invite(&msg).await,
            "WHO" => self.cmd_who(&msg).await,
            "WHOIS" => self.cmd_whois(&msg).await,
            "WHOWAS" => self.cmd_whowas(&msg).await,
            "LIST" => self.cmd_list().await,
            "ISON" => {
                let mut on = Vec::new();
                for nick in p.iter().flat_map(|x| x.split(' ')).take(64) {
                    if let Some(c) = self.shared.engine.find_nick(nick).await {
                        on.push(c.nick);
                    }
                }
                self.num("303", vec![on.join(" ")]);
            }
            "USERHOST" => {
                let mut replies = Vec::new();
                for nick in p.iter().take(5) {
                    if let Some(c) = self.shared.engine.find_nick(nick).await {
                        let op = if c.oper { "*" } else { "" };
                        let away = if c.away.is_some() { '-' } else { '+' };
                        replies.push(format!("{}{op}={away}{}@{}", c.nick, c.user, c.host));
                    }
                }
                self.num("302", vec![replies.join(" ")]);
            }
            "AWAY" => self.cmd_away(&msg).await,
            "MOTD" => self.motd(),
            "LUSERS" => self.lusers().await,
            "VERSION" => {
                let server = self.server().to_owned();
                self.num("351", vec![s(VERSION), server, s("Keel chat server")]);
                self.isupport();
            }
            "TIME" => {
                let server = self.server().to_owned();
                let now = format_time(unix_ms());
                self.num("391", vec![server, s(unix_secs()), s(0), now]);
            }
            "INFO" => {
                for line in [
                    format!("{VERSION}: the chat server of Keel."),
                    s("IRC with IRCv3 over TCP and WebSocket."),
                    format!("Started {}", self.shared.created),
                ] {
                    self.num("371", vec![line]);
                }
                self.num("374", vec![s("End of INFO list")]);
            }
            "OPER" => self.cmd_oper(&msg).await,
            "KILL" => self.cmd_kill(&msg).await,
            "SETNAME" => self.cmd_setname(&msg).await,
            "MONITOR" => self.cmd_monitor(&msg).await,
            "CHATHISTORY" => self.cmd_chathistory(&msg).await,
            _ => self.num("421", vec![command, s("Unknown command")]),
        }
    }

    // ---- registration -------------------------------------------------------------------

    async fn cmd_cap(&mut self, msg: &Message) {
        let sub = msg.param(0).unwrap_or("").to_ascii_uppercase();
        let me = self.me();
        let server = self.server().to_owned();
        match sub.as_str() {
            "LS" => {
                let v302 = msg
                    .param(1)
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
                    >= 302;
                if !self.registered {
                    self.cap_negotiating = true;
                }
                let list: Vec<String> = cap::ALL
                    .iter()
                    .map(|(n, _, v)| {
                        if v302 && !v.is_empty() {
                            format!("{n}={v}")
                        } else {
                            (*n).to_owned()
                        }
                    })
                    .collect();
                self.out.push(
                    Message::new("CAP", vec![me, s("LS"), list.join(" ")]).with_source(server),
                );
            }
            "LIST" => {
                let list: Vec<&str> = cap::ALL
                    .iter()
                    .filter(|(_, b, _)| self.caps & b != 0)
                    .map(|(n, _, _)| *n)
                    .collect();
                self.out.push(
                    Message::new("CAP", vec![me, s("LIST"), list.join(" ")]).with_source(server),
                );
            }
            "REQ" => {
                if !self.registered {
                    self.cap_negotiating = true;
                }
                let req = msg.param(1).unwrap_or("").to_owned();
                let mut caps = self.caps;
                let mut ok = !req.trim().is_empty();
                for item in req.split(' ').filter(|x| !x.is_empty()) {
                    let (remove, name) = match item.strip_prefix('-') {
                        Some(n) => (true, n),
                        None => (false, item),
                    };
                    match cap::by_name(name) {
                        Some(bit) if remove => caps &= !bit,
                        Some(bit) => caps |= bit,
                        None => ok = false,
                    }
                }
                let verb = if ok { "ACK" } else { "NAK" };
                if ok {
                    self.caps = caps;
                    self.handle.set_caps(caps);
                }
                self.out
                    .push(Message::new("CAP", vec![me, s(verb), req]).with_source(server));
            }
            "END" => {
                if !self.registered {
                    self.cap_negotiating = false;
                    self.try_register().await;
                }
            }
            _ => self.num("410", vec![sub, s("Invalid CAP command")]),
        }
    }

    fn cmd_pass(&mut self, msg: &Message) {
        if self.registered {
            self.num("462", vec![s("You may not reregister")]);
            return;
        }
        if let Some(pw) = &self.shared.config.password {
            self.pass_ok = msg.param(0) == Some(pw.as_str());
        }
    }

    async fn cmd_nick(&mut self, msg: &Message) {
        let Some(nick) = msg.param(0).filter(|n| !n.is_empty()).map(str::to_owned) else {
            self.num("431", vec![s("No nickname given")]);
            return;
        };
        if !valid_nick(&nick, NICKLEN) {
            self.num("432", vec![nick, s("Erroneous nickname")]);
            return;
        }
        if !self.registered {
            if let Some(owner) = self.shared.engine.find_nick(&nick).await {
                if owner.id != self.id {
                    self.num("433", vec![nick, s("Nickname is already in use")]);
                    return;
                }
            }
            self.nick = Some(nick);
            self.try_register().await;
            return;
        }
        if self.nick.as_deref() == Some(nick.as_str()) {
            return;
        }
        match self.shared.engine.rename(self.id, &nick).await {
            Err(EngineError::NickInUse) => {
                self.num("433", vec![nick, s("Nickname is already in use")]);
            }
            Err(e) => tracing::warn!(error = %e, "rename failed"),
            Ok(old) => {
                let m = Arc::new(
                    Message::new("NICK", vec![nick.clone()])
                        .with_source(old.mask())
                        .with_tag("time", format_time(unix_ms())),
                );
                let peers = self.shared.engine.peers(self.id).await;
                self.deliver(&peers, &m, 0, false);
                self.out.push((*m).clone());
                self.nick = Some(nick.clone());
                self.monitor_offline(&old.nick).await;
                self.monitor_online().await;
            }
        }
    }

    async fn cmd_user(&mut self, msg: &Message) {
        if self.registered || self.user.is_some() {
            self.num("462", vec![s("You may not reregister")]);
            return;
        }
        let user: String = msg.params[0]
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(18)
            .collect();
        let user = if user.is_empty() {
            s("user")
        } else {
            format!("~{user}")
        };
        self.user = Some((user, msg.params[3].clone()));
        self.try_register().await;
    }

    async fn try_register(&mut self) {
        if self.registered || self.cap_negotiating || self.sasl.is_some() {
            return;
        }
        let (Some(nick), Some((user, realname))) = (self.nick.clone(), self.user.clone()) else {
            return;
        };
        if !self.pass_ok {
            self.num("464", vec![s("Password incorrect")]);
            self.quit = Some(s("Bad password"));
            return;
        }
        // Admission on registration (storms): bounded registrations in flight, known
        // accounts first. The permit is held while the engine registers the client.
        let _permit = match self.shared.registration.enter(self.account.is_some()).await {
            Ok(p) => p,
            Err(refusal) => {
                self.quit = Some(refusal.message());
                return;
            }
        };
        let info = ClientInfo {
            id: self.id,
            nick: nick.clone(),
            user,
            host: self.host.clone(),
            realname,
            account: self.account.clone(),
            away: None,
            invisible: false,
            oper: false,
            signon: unix_secs(),
        };
        match self.shared.engine.register(info).await {
            Ok(()) => {}
            Err(EngineError::Unavailable(_)) => {
                self.quit = Some(s("Network degraded; try again in 5 seconds"));
                return;
            }
            Err(_) => {
                self.num("433", vec![nick, s("Nickname is already in use")]);
                self.nick = None;
                return;
            }
        }
        self.handle.set_registered(true);
        self.registered = true;
        self.shared.unregistered.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!("keel_chat_registrations_total").increment(1);
        let net = self.shared.config.network.clone();
        let server = self.server().to_owned();
        let mask = self.mask();
        self.num("001", vec![format!("Welcome to the {net} Network, {mask}")]);
        self.num(
            "002",
            vec![format!("Your host is {server}, running version {VERSION}")],
        );
        let created = self.shared.created.clone();
        self.num("003", vec![format!("This server was created {created}")]);
        self.num(
            "004",
            vec![server, s(VERSION), s("io"), s("biklnot"), s("bklov")],
        );
        self.isupport();
        self.lusers().await;
        self.motd();
        self.monitor_online().await;
    }

    fn isupport(&mut self) {
        let c = &self.shared.config;
        let tokens = vec![
            s("AWAYLEN=390"),
            s("CASEMAPPING=ascii"),
            format!("CHANLIMIT=#:{}", c.limits.max_channels),
            s("CHANMODES=b,k,l,int"),
            format!("CHANNELLEN={CHANNELLEN}"),
            s("CHANTYPES=#"),
            format!("CHATHISTORY={CHATHISTORY_MAX}"),
            s("HOSTLEN=64"),
            s("KICKLEN=390"),
            format!("MAXTARGETS={MAX_TARGETS}"),
            format!("MODES={MAX_MODES}"),
            format!("MONITOR={}", c.limits.monitor),
            s("MSGREFTYPES=msgid,timestamp"),
            format!("NETWORK={}", c.network),
            format!("NICKLEN={NICKLEN}"),
            s("PREFIX=(ov)@+"),
            format!("TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},TAGMSG:{MAX_TARGETS},JOIN:,PART:,NAMES:{MAX_TARGETS},KICK:{MAX_TARGETS},WHOIS:1,MONITOR:"),
            format!("TOPICLEN={TOPICLEN}"),
            s("USERLEN=18"),
            s("UTF8ONLY"),
            s("WHOX"),
        ];
        for chunk in tokens.chunks(12) {
            let mut p = chunk.to_vec();
            p.push(s("are supported by this server"));
            self.num("005", p);
        }
    }

    async fn lusers(&mut self) {
        let counts = self.shared.engine.counts().await;
        let unknown = self.shared.unregistered.load(Ordering::Relaxed);
        let visible = counts.users - counts.invisible;
        self.num(
            "251",
            vec![format!(
                "There are {visible} users and {} invisible on 1 servers",
                counts.invisible
            )],
        );
        self.num("252", vec![s(counts.opers), s("operator(s) online")]);
        self.num("253", vec![s(unknown), s("unknown connection(s)")]);
        self.num("254", vec![s(counts.channels), s("channels formed")]);
        let local = self.shared.hub.len().saturating_sub(unknown);
        self.num("255", vec![format!("I have {local} clients and 1 servers")]);
        self.num(
            "265",
            vec![
                s(local),
                s(local),
                format!("Current local users {local}, max {local}"),
            ],
        );
        let u = counts.users;
        self.num(
            "266",
            vec![s(u), s(u), format!("Current global users {u}, max {u}")],
        );
    }

    fn motd(&mut self) {
        let motd = self.shared.config.motd.clone();
        if motd.is_empty() {
            self.num("422", vec![s("MOTD File is missing")]);
            return;
        }
        let server = self.server().to_owned();
        self.num("375", vec![format!("- {server} Message of the day - ")]);
        for line in motd {
            self.num("372", vec![format!("- {line}")]);
        }
        self.num("376", vec![s("End of /MOTD command.")]);
    }

    // ---- accounts ---------------------------------------------------------------------

    async fn cmd_authenticate(&mut self, msg: &Message) {
        let arg = msg.params[0].clone();
        if !self.has(cap::SASL) {
            self.num("904", vec![s("SASL authentication failed")]);
            return;
        }
        if self.account.is_some() {
            self.num("907", vec![s("You have already authenticated using SASL")]);
            return;
        }
        if arg == "*" {
            self.sasl = None;
            self.num("906", vec![s("SASL authentication aborted")]);
            self.try_register().await;
            return;
        }
        let Some(state) = self.sasl.as_mut() else {
            if arg.eq_ignore_ascii_case("PLAIN") {
                self.sasl = Some(Sasl::default());
                self.out.push(Message::new("AUTHENTICATE", vec![s("+")]));
            } else {
                self.num("908", vec![s("PLAIN"), s("are available SASL mechanisms")]);
                self.num("904", vec![s("SASL authentication failed")]);
            }
            return;
        };
        if arg != "+" {
            state.buf.push_str(&arg);
        }
        if state.buf.len() > 2048 {
            self.sasl = None;
            self.num("905", vec![s("SASL message too long")]);
            return;
        }
        if arg.len() == 400 {
            return; // more chunks follow
        }
        let buf = std::mem::take(&mut state.buf);
        self.sasl = None;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(buf.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let parts: Vec<String> = decoded
            .map(|d| d.split('\0').map(str::to_owned).collect())
            .unwrap_or_default();
        let ok = match parts.as_slice() {
            [authz, authc, password] if authz.is_empty() || authz == authc => {
                match self.shared.engine.account_hash(authc).await {
                    Some(hash) => verify_password(password.clone(), hash).await,
                    None => false,
                }
                .then(|| authc.clone())
            }
            _ => None,
        };
        match ok {
            Some(account) => self.logged_in(account).await,
            None => self.num("904", vec![s("SASL authentication failed")]),
        }
        self.try_register().await;
    }

    async fn logged_in(&mut self, account: String) {
        self.account = Some(account.clone());
        let mask = self.mask();
        self.num(
            "900",
            vec![
                mask,
                account.clone(),
                format!("You are now logged in as {account}"),
            ],
        );
        self.num("903", vec![s("SASL authentication successful")]);
        if self.registered {
            let _ = self
                .shared
                .engine
                .update(self.id, ClientUpdate::Account(Some(account.clone())))
                .await;
            let m = self.msg_from_me("ACCOUNT", vec![account]);
            self.notify_circle(m, cap::ACCOUNT_NOTIFY).await;
        }
    }

    async fn cmd_register(&mut self, msg: &Message) {
        let name = match msg.params[0].as_str() {
            "*" => self.me(),
            n => n.to_owned(),
        };
        let password = msg.params[2].clone();
        if self.account.is_some() {
            self.fail(
                "REGISTER",
                "ALREADY_AUTHENTICATED",
                vec![name],
                "You are already logged in",
            );
            return;
        }
        if name == "*" || !valid_nick(&name, NICKLEN) {
            self.fail(
                "REGISTER",
                "BAD_ACCOUNT_NAME",
                vec![name],
                "Invalid account name",
            );
            return;
        }
        if password.len() < 8 || password.len() > 300 {
            self.fail(
                "REGISTER",
                "WEAK_PASSWORD",
                vec![name],
                "Password must be 8 to 300 bytes",
            );
            return;
        }
        let Some(hash) = hash_password(password).await else {
            self.fail(
                "REGISTER",
                "TEMPORARILY_UNAVAILABLE",
                vec![name],
                "Try again later",
            );
            return;
        };
        match self.shared.engine.create_account(&name, &hash).await {
            Ok(()) => {
                self.out.push(
                    Message::new(
                        "REGISTER",
                        vec![s("SUCCESS"), name.clone(), s("Account created")],
                    )
                    .with_source(self.server().to_owned()),
                );
                self.logged_in(name).await;
            }
            Err(_) => {
                self.fail(
                    "REGISTER",
                    "ACCOUNT_EXISTS",
                    vec![name],
                    "Account already exists",
                );
            }
        }
    }

    async fn cmd_oper(&mut self, msg: &Message) {
        let name = msg.params[0].clone();
        let password = msg.param(1).unwrap_or("").to_owned();
        let hash = self
            .shared
            .config
            .operators
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.password_hash.clone());
        let Some(hash) = hash else {
            self.num("491", vec![s("No O-lines for your host")]);
            return;
        };
        if !verify_password(password, hash).await {
            self.num("464", vec![s("Password incorrect")]);
            return;
        }
        self.oper = true;
        let _ = self
            .shared
            .engine
            .update(self.id, ClientUpdate::Oper(true))
            .await;
        self.num("381", vec![s("You are now an IRC operator")]);
        let me = self.me();
        self.out
            .push(Message::new("MODE", vec![me, s("+o")]).with_source(self.server().to_owned()));
    }

    async fn cmd_kill(&mut self, msg: &Message) {
        if !self.oper {
            self.num(
                "481",
                vec![s("Permission Denied- You're not an IRC operator")],
            );
            return;
        }
        let nick = msg.params[0].clone();
        let Some(target) = self.shared.engine.find_nick(&nick).await else {
            self.num("401", vec![nick, s("No such nick/channel")]);
            return;
        };
        let reason = format!("Killed ({} ({}))", self.me(), msg.params[1]);
        if target.id == self.id {
            self.quit = Some(reason);
        } else if !self.shared.hub.kill(target.id, &reason) {
            self.num("401", vec![nick, s("No such nick/channel")]);
        }
    }

    // ---- channels -----------------------------------------------------------------------

    async fn cmd_join(&mut self, msg: &Message) {
        if msg.params[0] == "0" {
            for chan in self.shared.engine.channels_of(self.id).await {
                self.part_one(&chan, None).await;
            }
            return;
        }
        let keys: Vec<String> = msg
            .param(1)
            .map(|k| k.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let chans: Vec<String> = msg.params[0].split(',').map(str::to_owned).collect();
        for (i, chan) in chans.iter().enumerate().take(10) {
            if !valid_channel(chan, CHANNELLEN) {
                self.num("476", vec![chan.clone(), s("Bad Channel Mask")]);
                continue;
            }
            let key = keys.get(i).map(String::as_str);
            let max = self.shared.config.limits.max_channels;
            let fold = casefold(chan);
            let joined = match self.shared.engine.join(chan, self.id, key, max).await {
                Ok(joined) => (joined.name, joined.topic),
                Err(EngineError::UserOnChannel) => {
                    let Some(at) = self.unconfirmed_joins.iter().position(|c| *c == fold) else {
                        continue; // a JOIN of a channel the client knows it is on
                    };
                    // Told FAIL, yet the store applied it: now the JOIN is announced (unless
                    // the store cannot say so now: then the client is told to try again).
                    match self.shared.engine.channel(chan).await {
                        Some(info) if info.member(self.id).is_some() => {
                            self.unconfirmed_joins.swap_remove(at);
                            (info.name, info.topic)
                        }
                        _ => {
                            self.temporarily_unavailable("JOIN");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    let (code, text) = match e {
                        EngineError::BadKey => ("475", "Cannot join channel (+k)"),
                        EngineError::ChannelFull => ("471", "Cannot join channel (+l)"),
                        EngineError::InviteOnly => ("473", "Cannot join channel (+i)"),
                        EngineError::Banned => ("474", "Cannot join channel (+b)"),
                        EngineError::TooManyChannels => {
                            ("405", "You have joined too many channels")
                        }
                        EngineError::Unavailable(_) => {
                            // The store may have applied it after we stopped waiting.
                            self.shared.recheck_index(self.id);
                            if !self.unconfirmed_joins.contains(&fold)
                                && self.unconfirmed_joins.len() < max
                            {
                                self.unconfirmed_joins.push(fold);
                            }
                            self.temporarily_unavailable("JOIN");
                            continue;
                        }
                        _ => ("403", "No such channel"),
                    };
                    self.num(code, vec![chan.clone(), s(text)]);
                    continue;
                }
            };
            self.unconfirmed_joins.retain(|c| *c != fold);
            self.announce_join(&fold, joined.0, joined.1).await;
        }
    }

    /// A JOIN the store applied: the echo, every member told (from its own node's channel
    /// index), the topic and the names.
    async fn announce_join(&mut self, fold: &str, name: String, topic: Option<Topic>) {
        self.shared.hub.index_join(fold, self.id);
        let account = self.account.clone().unwrap_or_else(|| s("*"));
        let realname = self.user.as_ref().map(|u| u.1.clone()).unwrap_or_default();
        let msgid = self.shared.msgids.next();
        let plain = self
            .msg_from_me("JOIN", vec![name.clone()])
            .with_tag("msgid", msgid.clone());
        let ext = self
            .msg_from_me("JOIN", vec![name.clone(), account, realname])
            .with_tag("msgid", msgid);
        let (plain, ext) = (Arc::new(plain), Arc::new(ext));
        let mine = if self.has(cap::EXTENDED_JOIN) {
            &ext
        } else {
            &plain
        };
        self.out.push((**mine).clone());
        self.shared.hub.deliver_channel_variant(
            fold,
            self.id,
            Want::MEMBERSHIP,
            &plain,
            cap::EXTENDED_JOIN,
            &ext,
        );
        if self.away {
            if let Some(me) = self.shared.engine.client(self.id).await {
                let away = Arc::new(self.msg_from_me("AWAY", vec![me.away.unwrap_or_default()]));
                self.shared
                    .hub
                    .deliver_channel(fold, self.id, &away, cap::AWAY_NOTIFY);
            }
        }
        if let Some(t) = &topic {
            self.num("332", vec![name.clone(), t.text.clone()]);
            self.num("333", vec![name.clone(), t.setter.clone(), s(t.time)]);
        }
        // draft/no-implicit-names: big channels cost no NAMES burst per JOIN.
        if !self.has(cap::NO_IMPLICIT_NAMES) {
            self.names(&name).await;
        }
    }

    async fn cmd_part(&mut self, msg: &Message) {
        let reason = msg.param(1).map(str::to_owned);
        for chan in msg.params[0].split(',').take(10) {
            self.part_one(chan, reason.clone()).await;
        }
    }

    async fn part_one(&mut self, chan: &str, reason: Option<String>) {
        let name = match self.shared.engine.channel(chan).await {
            Some(c) => c.name,
            None => {
                self.num("403", vec![chan.to_owned(), s("No such channel")]);
                return;
            }
        };
        match self.shared.engine.part(chan, self.id).await {
            Ok(members) => {
                self.shared.hub.index_leave(&casefold(chan), self.id);
                let mut p = vec![name];
                p.extend(reason);
                let m = Arc::new(self.msg_from_me("PART", p));
                self.out.push((*m).clone());
                self.shared
                    .hub
                    .deliver_want(&members, self.id, &m, Want::MEMBERSHIP);
            }
            Err(EngineError::NotOnChannel) => {
                self.num(
                    "442",
                    vec![chan.to_owned(), s("You're not on that channel")],
                );
            }
            Err(EngineError::Unavailable(_)) => {
                self.shared.recheck_index(self.id);
                self.num("403", vec![chan.to_owned(), s("No such channel")]);
            }
            Err(_) => self.num("403", vec![chan.to_owned(), s("No such channel")]),
        }
    }

    async fn names(&mut self, chan: &str) {
        let Some(info) = self.shared.engine.channel(chan).await else {
            self.num("366", vec![chan.to_owned(), s("End of /NAMES list")]);
            return;
        };
        let on_channel = info.member(self.id).is_some();
        let multi = self.has(cap::MULTI_PREFIX);
        let uhnames = self.has(cap::USERHOST_IN_NAMES);
        let mut entries = Vec::new();
        for m in &info.members {
            if m.client.invisible && !on_channel {
                continue;
            }
            let mut e = String::new();
            if m.op {
                e.push('@');
            }
            if m.voice && (multi || !m.op) {
                e.push('+');
            }
            if uhnames {
                e.push_str(&m.client.mask());
            } else {
                e.push_str(&m.client.nick);
            }
            entries.push(e);
        }
        let mut line = String::new();
        let mut lines = Vec::new();
        for e in entries {
            if line.len() + e.len() + 1 > 400 {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&e);
        }
        if !line.is_empty() {
            lines.push(line);
        }
        for l in lines {
            self.num("353", vec![s("="), info.name.clone(), l]);
        }
        self.num("366", vec![info.name, s("End of /NAMES list")]);
    }

    async fn cmd_topic(&mut self, msg: &Message) {
        let chan = msg.params[0].clone();
        let Some(info) = self.shared.engine.channel(&chan).await else {
            self.num("403", vec![chan, s("No such channel")]);
            return;
        };
        let Some(text) = msg.param(1) else {
            match info.topic {
                Some(t) => {
                    self.num("332", vec![info.name.clone(), t.text]);
                    self.num("333", vec![info.name, t.setter, s(t.time)]);
                }
                None => self.num("331", vec![info.name, s("No topic is set")]),
            }
            return;
        };
        let text: String = text.chars().take(TOPICLEN).collect();
        match self.shared.engine.set_topic(&chan, self.id, &text).await {
            Ok((_, members)) => {
                let m = Arc::new(self.msg_from_me("TOPIC", vec![info.name, text]));
                self.deliver(&members, &m, 0, true);
            }
            Err(EngineError::NotOnChannel) => {
                self.num("442", vec![info.name, s("You're not on that channel")]);
            }
            Err(EngineError::ChanOpNeeded) => {
                self.num("482", vec![info.name, s("You're not channel operator")]);
            }
            Err(_) => self.num("403", vec![chan, s("No such channel")]),
        }
    }

    async fn cmd_mode(&mut self, msg: &Message) {
        let target = msg.params[0].clone();
        if !target.starts_with('#') {
            return self.user_mode(msg).await;
        }
        let Some(info) = self.shared.engine.channel(&target).await else {
            self.num("403", vec![target, s("No such channel")]);
            return;
        };
        let Some(modestr) = msg.param(1) else {
            let mut modes = s("+");
            let mut args = Vec::new();
            let m = &info.modes;
            if m.invite_only {
                modes.push('i');
            }
            if m.no_external {
                modes.push('n');
            }
            if m.topic_ops_only {
                modes.push('t');
            }
            let member = info.member(self.id).is_some();
            if let Some(k) = &m.key {
                modes.push('k');
                args.push(if member { k.clone() } else { s("*") });
            }
            if let Some(l) = m.limit {
                modes.push('l');
                args.push(s(l));
            }
            let mut p = vec![info.name.clone(), modes];
            p.extend(args);
            self.num("324", p);
            self.num("329", vec![info.name, s(info.created)]);
            return;
        };
        let mut args = msg.params[2..].iter().cloned();
        let mut changes = Vec::new();
        let mut add = true;
        let mut list_bans = false;
        let mut with_arg = 0;
        for c in modestr.chars() {
            match c {
                '+' => add = true,
                '-' => add = false,
                'n' | 't' | 'i' => changes.push(ModeChange {
                    add,
                    mode: c,
                    arg: None,
                }),
                'k' | 'l' if !add => changes.push(ModeChange {
                    add,
                    mode: c,
                    arg: None,
                }),
                'o' | 'v' | 'b' | 'k' | 'l' => {
                    if with_arg >= MAX_MODES {
                        continue;
                    }
                    with_arg += 1;
                    match args.next() {
                        Some(a) => changes.push(ModeChange {
                            add,
                            mode: c,
                            arg: Some(a),
                        }),
                        None if c == 'b' => list_bans = true,
                        None => {
                            self.num(
                                "696",
                                vec![info.name.clone(), s(c), s("*"), s("Missing mode parameter")],
                            );
                        }
                    }
                }
                other => self.num("472", vec![s(other), s("is unknown mode char to me")]),
            }
        }
        if list_bans {
            for b in &info.modes.bans {
                self.num(
                    "367",
                    vec![
                        info.name.clone(),
                        b.mask.clone(),
                        b.setter.clone(),
                        s(b.time),
                    ],
                );
            }
            self.num("368", vec![info.name.clone(), s("End of channel ban list")]);
        }
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            if matches!(c.mode, 'o' | 'v') {
                let nick = c.arg.clone().unwrap_or_default();
                match self.shared.engine.find_nick(&nick).await {
                    None => self.num("401", vec![nick, s("No such nick/channel")]),
                    Some(t) if info.member(t.id).is_none() => self.num(
                        "441",
                        vec![nick, info.name.clone(), s("They aren't on that channel")],
                    ),
                    Some(_) => {}
                }
            }
        }
        match self
            .shared
            .engine
            .set_modes(&target, self.id, changes)
            .await
        {
            Ok((applied, members)) => {
                if applied.is_empty() {
                    return;
                }
                let mut modes = String::new();
                let mut margs = Vec::new();
                let mut sign = None;
                for c in applied {
                    if sign != Some(c.add) {
                        modes.push(if c.add { '+' } else { '-' });
                        sign = Some(c.add);
                    }
                    modes.push(c.mode);
                    margs.extend(c.arg);
                }
                let mut p = vec![info.name, modes];
                p.extend(margs);
                let m = Arc::new(self.msg_from_me("MODE", p));
                self.deliver(&members, &m, 0, true);
            }
            Err(EngineError::ChanOpNeeded) => {
                self.num("482", vec![info.name, s("You're not channel operator")]);
            }
            Err(EngineError::NotOnChannel) => {
                self.num("442", vec![info.name, s("You're not on that channel")]);
            }
            Err(_) => self.num("403", vec![target, s("No such channel")]),
        }
    }

    async fn user_mode(&mut self, msg: &Message) {
        let target = msg.params[0].clone();
        if casefold(&target) != casefold(&self.me()) {
            if self.shared.engine.find_nick(&target).await.is_none() {
                self.num("401", vec![target, s("No such nick/channel")]);
            } else {
                self.num("502", vec![s("Can't change mode for other users")]);
            }
            return;
        }
        let Some(info) = self.shared.engine.client(self.id).await else {
            return;
        };
        let Some(modestr) = msg.param(1) else {
            let mut m = s("+");
            if info.invisible {
                m.push('i');
            }
            if info.oper {
                m.push('o');
            }
            self.num("221", vec![m]);
            return;
        };
        let mut add = true;
        let mut changed = String::new();
        for c in modestr.chars() {
            match c {
                '+' => add = true,
                '-' => add = false,
                'i' => {
                    if let Ok(after) = self
                        .shared
                        .engine
                        .update(self.id, ClientUpdate::Invisible(add))
                        .await
                    {
                        if after.invisible != info.invisible {
                            changed.push(if add { '+' } else { '-' });
                            changed.push('i');
                        }
                    }
                }
                'o' if !add && self.oper => {
                    self.oper = false;
                    let _ = self
                        .shared
                        .engine
                        .update(self.id, ClientUpdate::Oper(false))
                        .await;
                    changed.push_str("-o");
                }
                'o' => {}
                _ => self.num("501", vec![s("Unknown MODE flag")]),
            }
        }
        if !changed.is_empty() {
            let me = self.me();
            let m = Message::new("MODE", vec![me, changed]).with_source(self.mask());
            self.out.push(m);
        }
    }

    async fn cmd_kick(&mut self, msg: &Message) {
        let users: Vec<String> = msg.params[1]
            .split(',')
            .filter(|u| !u.is_empty())
            .take(MAX_TARGETS)
            .map(str::to_owned)
            .collect();
        for nick in users {
            self.kick_one(&msg.params[0], nick, msg.param(2)).await;
        }
    }

    async fn kick_one(&mut self, chan: &str, nick: String, reason: Option<&str>) {
        let chan = chan.to_owned();
        let reason = reason.unwrap_or(&nick).to_owned();
        let Some(info) = self.shared.engine.channel(&chan).await else {
            self.num("403", vec![chan, s("No such channel")]);
            return;
        };
        let Some(target) = self.shared.engine.find_nick(&nick).await else {
            self.num("401", vec![nick, s("No such nick/channel")]);
            return;
        };
        match self.shared.engine.kick(&chan, self.id, target.id).await {
            Ok(members) => {
                let m = Arc::new(self.msg_from_me("KICK", vec![info.name, target.nick, reason]));
                self.deliver(&members, &m, 0, true);
                // After the KICK itself, so that a remote target's node hears both in order.
                self.shared.hub.index_leave(&casefold(&chan), target.id);
            }
            Err(EngineError::ChanOpNeeded) => {
                self.num("482", vec![info.name, s("You're not channel operator")]);
            }
            Err(EngineError::NotOnChannel) => {
                self.num("442", vec![info.name, s("You're not on that channel")]);
            }
            Err(EngineError::UserNotInChannel) => self.num(
                "441",
                vec![target.nick, info.name, s("They aren't on that channel")],
            ),
            Err(_) => self.num("403", vec![chan, s("No such channel")]),
        }
    }

    async fn cmd_invite(&mut self, msg: &Message) {
        let nick = msg.params[0].clone();
        let chan = msg.params[1].clone();
        let Some(target) = self.shared.engine.find_nick(&nick).await else {
            self.num("401", vec![nick, s("No such nick/channel")]);
            return;
        };
        let Some(info) = self.shared.engine.channel(&chan).await else {
            self.num("403", vec![chan, s("No such channel")]);
            return;
        };
        match self.shared.engine.invite(&chan, self.id, target.id).await {
            Ok(ops) => {
                self.num("341", vec![target.nick.clone(), info.name.clone()]);
                let m = Arc::new(self.msg_from_me("INVITE", vec![target.nick.clone(), info.name]));
                self.shared.hub.deliver(&[target.id], self.id, &m, 0);
                let ops: Vec<ClientId> = ops.into_iter().filter(|i| *i != self.id).collect();
                self.deliver(&ops, &m, cap::INVITE_NOTIFY, false);
                if let Some(away) = target.away {
                    self.num("301", vec![target.nick, away]);
                }
            }
            Err(EngineError::NotOnChannel) => {
                self.num("442", vec![info.name, s("You're not on that channel")]);
            }
            Err(EngineError::ChanOpNeeded) => {
                self.num("482", vec![info.name, s("You're not channel operator")]);
            }
            Err(EngineError::UserOnChannel) => {
                self.num(
                    "443",
                    vec![target.nick, info.name, s("is already on channel")],
                );
            }
            Err(_) => self.num("403", vec![chan, s("No such channel")]),
        }
    }

    // ---- messages -----------------------------------------------------------------------

    async fn cmd_message(&mut self, command: &str, msg: &Message) {
        let notice = command == "NOTICE";
        let tagmsg = command == "TAGMSG";
        let Some(targets) = msg.param(0).filter(|t| !t.is_empty()) else {
            if !notice {
                self.num("411", vec![format!("No recipient given ({command})")]);
            }
            return;
        };
        let text = msg.param(1).unwrap_or("").to_owned();
        if text.is_empty() && !tagmsg {
            if !notice {
                self.num("412", vec![s("No text to send")]);
            }
            return;
        }
        let client_tags: Vec<(String, String)> = if self.has(cap::MESSAGE_TAGS) {
            msg.tags
                .iter()
                .filter(|(k, _)| k.starts_with('+'))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if tagmsg && client_tags.is_empty() {
            return;
        }
        for target in targets.split(',').take(MAX_TARGETS) {
            let msgid = self.shared.msgids.next();
            let now = unix_ms();
            let mut params = vec![target.to_owned()];
            if !tagmsg {
                params.push(text.clone());
            }
            let mut m = self
                .msg_from_me(command, params)
                .with_tag("msgid", msgid.clone());
            m.set_tag("time", format_time(now));
            for (k, v) in &client_tags {
                m.set_tag(k.clone(), v.clone());
            }
            let need = if tagmsg { cap::MESSAGE_TAGS } else { 0 };
            let history_target;
            if target.starts_with('#') {
                match self.shared.engine.can_send(target, self.id).await {
                    Ok(()) => {
                        let m = Arc::new(m);
                        // Published once; every node delivers from its own channel index.
                        let fold = casefold(target);
                        self.shared.hub.deliver_channel(&fold, self.id, &m, need);
                        history_target = target.to_owned();
                        if self.has(cap::ECHO_MESSAGE | need) {
                            self.out.push((*m).clone());
                        }
                    }
                    Err(EngineError::Unavailable(_)) => {
                        self.temporarily_unavailable(command);
                        continue;
                    }
                    Err(EngineError::NoSuchChannel) => {
                        if !notice {
                            self.num("403", vec![target.to_owned(), s("No such channel")]);
                        }
                        continue;
                    }
                    Err(_) => {
                        if !notice {
                            self.num("404", vec![target.to_owned(), s("Cannot send to channel")]);
                        }
                        continue;
                    }
                }
            } else {
                let Some(to) = self.shared.engine.find_nick(target).await else {
                    if !self.shared.engine.available() {
                        self.temporarily_unavailable(command);
                    } else if !notice {
                        self.num("401", vec![target.to_owned(), s("No such nick/channel")]);
                    }
                    continue;
                };
                let m = Arc::new(m);
                if to.id != self.id {
                    self.shared.hub.deliver(&[to.id], self.id, &m, need);
                    metrics::counter!("keel_chat_messages_out_total").increment(1);
                }
                if command == "PRIVMSG" {
                    if let Some(away) = &to.away {
                        self.num("301", vec![to.nick.clone(), away.clone()]);
                    }
                }
                if self.has(cap::ECHO_MESSAGE | need) || to.id == self.id {
                    self.out.push((*m).clone());
                }
                history_target = to.nick.clone();
            }
            if !tagmsg {
                let key = history_key(&self.me(), &history_target);
                let item = HistoryItem {
                    msgid,
                    time: now,
                    source: self.mask(),
                    account: self.account.clone(),
                    command: command.to_owned(),
                    target: history_target,
                    text: text.clone(),
                    client_tags: client_tags.clone(),
                };
                self.shared.engine.append_history(&key, item).await;
            }
        }
    }

    async fn cmd_away(&mut self, msg: &Message) {
        let text = msg
            .param(0)
            .filter(|t| !t.is_empty())
            .map(|t| t.chars().take(390).collect::<String>());
        let _ = self
            .shared
            .engine
            .update(self.id, ClientUpdate::Away(text.clone()))
            .await;
        self.away = text.is_some();
        let m = match &text {
            Some(t) => {
                self.num("306", vec![s("You have been marked as being away")]);
                self.msg_from_me("AWAY", vec![t.clone()])
            }
            None => {
                self.num("305", vec![s("You are no longer marked as being away")]);
                self.msg_from_me("AWAY", vec![])
            }
        };
        let peers = self.shared.engine.peers(self.id).await;
        let m = Arc::new(m);
        self.deliver(&peers, &m, cap::AWAY_NOTIFY, false);
        self.deliver_watchers(&peers, &m, cap::AWAY_NOTIFY).await;
    }

    async fn cmd_setname(&mut self, msg: &Message) {
        let name: String = msg.params[0].chars().take(200).collect();
        if let Some(u) = self.user.as_mut() {
            u.1 = name.clone();
        }
        let _ = self
            .shared
            .engine
            .update(self.id, ClientUpdate::Realname(name.clone()))
            .await;
        let m = self.msg_from_me("SETNAME", vec![name]);
        self.notify_circle(m, cap::SETNAME).await;
    }

    // ---- queries ------------------------------------------------------------------------

    async fn cmd_who(&mut self, msg: &Message) {
        let mask = msg.param(0).unwrap_or("*").to_owned();
        let whox = msg.param(1).and_then(|f| f.strip_prefix('%')).map(|f| {
            let (fields, token) = f.split_once(',').unwrap_or((f, ""));
            (fields.to_owned(), token.to_owned())
        });
        let mut rows: Vec<(String, ClientInfo, String)> = Vec::new();
        if mask.starts_with('#') {
            if let Some(info) = self.shared.engine.channel(&mask).await {
                let on = info.member(self.id).is_some();
                for m in info.members {
                    if !on && m.client.invisible {
                        continue;
                    }
                    let mut prefix = String::new();
                    if m.op {
                        prefix.push('@');
                    }
                    if m.voice && (self.has(cap::MULTI_PREFIX) || !m.op) {
                        prefix.push('+');
                    }
                    rows.push((info.name.clone(), m.client, prefix));
                }
            }
        } else if let Some(c) = self.shared.engine.find_nick(&mask).await {
            rows.push((s("*"), c, String::new()));
        } else {
            let pat = casefold(&mask);
            for c in self.shared.engine.clients(10_000).await {
                if rows.len() >= 200 {
                    break;
                }
                if c.invisible && c.id != self.id {
                    continue;
                }
                if crate::util::glob_match(&pat, &casefold(&c.nick))
                    || crate::util::glob_match(&pat, &casefold(&c.mask()))
                {
                    rows.push((s("*"), c, String::new()));
                }
            }
        }
        let server = self.server().to_owned();
        for (chan, c, prefix) in rows {
            let mut flags = s(if c.away.is_some() { "G" } else { "H" });
            if c.oper {
                flags.push('*');
            }
            flags.push_str(&prefix);
            match &whox {
                None => self.num(
                    "352",
                    vec![
                        chan,
                        c.user,
                        c.host,
                        server.clone(),
                        c.nick,
                        flags,
                        format!("0 {}", c.realname),
                    ],
                ),
                Some((fields, token)) => {
                    let mut p = Vec::new();
                    for f in "tcuihsnfdlaor".chars().filter(|f| fields.contains(*f)) {
                        p.push(match f {
                            't' => token.clone(),
                            'c' => chan.clone(),
                            'u' => c.user.clone(),
                            'i' => s("255.255.255.255"),
                            'h' => c.host.clone(),
                            's' => server.clone(),
                            'n' => c.nick.clone(),
                            'f' => flags.clone(),
                            'd' => s("0"),
                            'l' => s("0"),
                            'a' => c.account.clone().unwrap_or_else(|| s("0")),
                            'o' => s("0"),
                            _ => c.realname.clone(),
                        });
                    }
                    self.num("354", p);
                }
            }
        }
        self.num("315", vec![mask, s("End of WHO list")]);
    }

    async fn cmd_whois(&mut self, msg: &Message) {
        let Some(nick) = msg.params.last().cloned() else {
            self.num("431", vec![s("No nickname given")]);
            return;
        };
        let nick = nick.split(',').next().unwrap_or("").to_owned();
        let Some(c) = self.shared.engine.find_nick(&nick).await else {
            self.num("401", vec![nick.clone(), s("No such nick/channel")]);
            self.num("318", vec![nick, s("End of /WHOIS list")]);
            return;
        };
        let server = self.server().to_owned();
        self.num(
            "311",
            vec![
                c.nick.clone(),
                c.user.clone(),
                c.host.clone(),
                s("*"),
                c.realname.clone(),
            ],
        );
        let mut chans = Vec::new();
        for name in self.shared.engine.channels_of(c.id).await {
            if let Some(info) = self.shared.engine.channel(&name).await {
                if let Some(m) = info.member(c.id) {
                    let prefix = if m.op {
                        "@"
                    } else if m.voice {
                        "+"
                    } else {
                        ""
                    };
                    chans.push(format!("{prefix}{}", info.name));
                }
            }
        }
        if !chans.is_empty() {
            self.num("319", vec![c.nick.clone(), chans.join(" ")]);
        }
        self.num("312", vec![c.nick.clone(), server, s("Keel chat server")]);
        if c.oper {
            self.num("313", vec![c.nick.clone(), s("is an IRC operator")]);
        }
        if let Some(a) = &c.account {
            self.num("330", vec![c.nick.clone(), a.clone(), s("is logged in as")]);
        }
        if let Some(away) = &c.away {
            self.num("301", vec![c.nick.clone(), away.clone()]);
        }
        let idle = if c.id == self.id {
            unix_secs().saturating_sub(self.last_message)
        } else {
            0
        };
        self.num(
            "317",
            vec![
                c.nick.clone(),
                s(idle),
                s(c.signon),
                s("seconds idle, signon time"),
            ],
        );
        self.num("318", vec![c.nick, s("End of /WHOIS list")]);
    }

    async fn cmd_whowas(&mut self, msg: &Message) {
        let nick = msg.params[0].clone();
        let count = msg
            .param(1)
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|c| *c > 0)
            .unwrap_or(10)
            .min(10);
        let entries = self.shared.engine.whowas(&nick, count).await;
        if entries.is_empty() {
            self.num("406", vec![nick.clone(), s("There was no such nickname")]);
        }
        let server = self.server().to_owned();
        for e in entries {
            self.num(
                "314",
                vec![e.nick.clone(), e.user, e.host, s("*"), e.realname],
            );
            self.num(
                "312",
                vec![e.nick, server.clone(), format_time(e.time * 1000)],
            );
        }
        self.num("369", vec![nick, s("End of WHOWAS")]);
    }

    async fn cmd_list(&mut self) {
        self.num("321", vec![s("Channel"), s("Users  Name")]);
        for (name, count, topic) in self.shared.engine.list(1000).await {
            self.num("322", vec![name, s(count), topic]);
        }
        self.num("323", vec![s("End of /LIST")]);
    }

    // ---- MONITOR ------------------------------------------------------------------------

    async fn cmd_monitor(&mut self, msg: &Message) {
        let sub = msg.params[0].clone();
        let targets: Vec<String> = msg
            .param(1)
            .map(|t| {
                t.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        match sub.as_str() {
            "+" => {
                let max = self.shared.config.limits.monitor;
                let valid: Vec<String> = targets
                    .into_iter()
                    .filter(|t| valid_nick(t, NICKLEN))
                    .collect();
                if self
                    .shared
                    .engine
                    .monitor_add(self.id, &valid, max)
                    .await
                    .is_err()
                {
                    self.num(
                        "734",
                        vec![s(max), valid.join(","), s("Monitor list is full.")],
                    );
                    return;
                }
                let mut online = Vec::new();
                let mut offline = Vec::new();
                for t in valid {
                    match self.shared.engine.find_nick(&t).await {
                        Some(c) => online.push(c.mask()),
                        None => offline.push(t),
                    }
                }
                for chunk in online.chunks(10) {
                    self.num("730", vec![chunk.join(",")]);
                }
                for chunk in offline.chunks(10) {
                    self.num("731", vec![chunk.join(",")]);
                }
            }
            "-" => self.shared.engine.monitor_remove(self.id, &targets).await,
            "C" | "c" => self.shared.engine.monitor_clear(self.id).await,
            "L" | "l" => {
                let list = self.shared.engine.monitor_list(self.id).await;
                for chunk in list.chunks(10) {
                    self.num("732", vec![chunk.join(",")]);
                }
                self.num("733", vec![s("End of MONITOR list")]);
            }
            "S" | "s" => {
                let list = self.shared.engine.monitor_list(self.id).await;
                for t in list {
                    match self.shared.engine.find_nick(&t).await {
                        Some(c) => self.num("730", vec![c.mask()]),
                        None => self.num("731", vec![t]),
                    }
                }
            }
            _ => {}
        }
    }

    async fn monitor_online(&mut self) {
        let mask = self.mask();
        let watchers = self.shared.engine.watchers(&self.me()).await;
        self.monitor_notify(&watchers, "730", mask).await;
    }

    async fn monitor_offline(&mut self, nick: &str) {
        let watchers = self.shared.engine.watchers(nick).await;
        self.monitor_notify(&watchers, "731", nick.to_owned()).await;
    }

    /// `:server 730|731 <watcher's nick> :<target>` to each watcher connected here.
    async fn monitor_notify(&mut self, watchers: &[ClientId], code: &str, target: String) {
        let server = self.server().to_owned();
        for w in watchers {
            let Some(watcher) = self.shared.engine.client(*w).await else {
                continue;
            };
            let m =
                Message::new(code, vec![watcher.nick, target.clone()]).with_source(server.clone());
            self.shared.hub.deliver(&[*w], 0, &Arc::new(m), 0);
        }
    }

    // ---- CHATHISTORY --------------------------------------------------------------------

    fn parse_ref(text: &str) -> Option<HistoryRef> {
        if let Some(id) = text.strip_prefix("msgid=") {
            return Some(HistoryRef::MsgId(id.to_owned()));
        }
        text.strip_prefix("timestamp=")
            .and_then(parse_time)
            .map(HistoryRef::Time)
    }

    async fn cmd_chathistory(&mut self, msg: &Message) {
        let sub = msg.params[0].to_ascii_uppercase();
        let p = &msg.params;
        let limit_at = |i: usize| -> Option<usize> {
            p.get(i)
                .and_then(|l| l.parse::<usize>().ok())
                .map(|l| l.min(CHATHISTORY_MAX))
        };
        if sub == "TARGETS" {
            let (Some(a), Some(b), Some(limit)) = (
                Self::parse_ref(&p[1]),
                p.get(2).and_then(|r| Self::parse_ref(r)),
                limit_at(3),
            ) else {
                self.fail(
                    "CHATHISTORY",
                    "INVALID_PARAMS",
                    vec![sub],
                    "Invalid parameters",
                );
                return;
            };
            let (HistoryRef::Time(a), HistoryRef::Time(b)) = (a, b) else {
                self.fail(
                    "CHATHISTORY",
                    "INVALID_PARAMS",
                    vec![sub],
                    "TARGETS takes timestamps",
                );
                return;
            };
            let channels = self.shared.engine.channels_of(self.id).await;
            let targets = self
                .shared
                .engine
                .history_targets(&self.me(), &channels, a, b, limit)
                .await;
            let id = self.next_batch();
            let batch = self.has(cap::BATCH);
            let server = self.server().to_owned();
            if batch {
                self.out.push(
                    Message::new(
                        "BATCH",
                        vec![format!("+{id}"), s("draft/chathistory-targets")],
                    )
                    .with_source(server.clone()),
                );
            }
            for (t, time) in targets {
                let mut m = Message::new("CHATHISTORY", vec![s("TARGETS"), t, format_time(time)])
                    .with_source(server.clone());
                if batch {
                    m.set_tag("batch", id.clone());
                }
                self.out.push(m);
            }
            if batch {
                self.out
                    .push(Message::new("BATCH", vec![format!("-{id}")]).with_source(server));
            }
            return;
        }
        let target = p[1].clone();
        let query = match sub.as_str() {
            "LATEST" => {
                if p[2] == "*" {
                    Some((HistoryQuery::Latest(None), limit_at(3)))
                } else {
                    Self::parse_ref(&p[2]).map(|r| (HistoryQuery::Latest(Some(r)), limit_at(3)))
                }
            }
            "BEFORE" => Self::parse_ref(&p[2]).map(|r| (HistoryQuery::Before(r), limit_at(3))),
            "AFTER" => Self::parse_ref(&p[2]).map(|r| (HistoryQuery::After(r), limit_at(3))),
            "AROUND" => Self::parse_ref(&p[2]).map(|r| (HistoryQuery::Around(r), limit_at(3))),
            "BETWEEN" => match (
                Self::parse_ref(&p[2]),
                p.get(3).and_then(|r| Self::parse_ref(r)),
            ) {
                (Some(a), Some(b)) => Some((HistoryQuery::Between(a, b), limit_at(4))),
                _ => None,
            },
            _ => {
                self.fail(
                    "CHATHISTORY",
                    "INVALID_PARAMS",
                    vec![sub],
                    "Unknown subcommand",
                );
                return;
            }
        };
        let Some((query, Some(limit))) = query else {
            self.fail(
                "CHATHISTORY",
                "INVALID_PARAMS",
                vec![sub],
                "Invalid parameters",
            );
            return;
        };
        if target.starts_with('#') {
            let member = match self.shared.engine.channel(&target).await {
                Some(info) => info.member(self.id).is_some(),
                None => false,
            };
            if !member {
                self.fail(
                    "CHATHISTORY",
                    "INVALID_TARGET",
                    vec![sub, target],
                    "Messages could not be retrieved",
                );
                return;
            }
        } else if !valid_nick(&target, NICKLEN) {
            self.fail(
                "CHATHISTORY",
                "INVALID_TARGET",
                vec![sub, target],
                "Messages could not be retrieved",
            );
            return;
        }
        let key = history_key(&self.me(), &target);
        let items = self
            .shared
            .engine
            .history(&key, query, limit, unix_ms())
            .await;
        let batch = self.has(cap::BATCH);
        let id = self.next_batch();
        let server = self.server().to_owned();
        if batch {
            self.out.push(
                Message::new("BATCH", vec![format!("+{id}"), s("chathistory"), target])
                    .with_source(server.clone()),
            );
        }
        for item in items {
            let mut params = vec![item.target];
            if item.command != "TAGMSG" {
                params.push(item.text);
            }
            let mut m = Message::new(item.command, params)
                .with_source(item.source)
                .with_tag("time", format_time(item.time))
                .with_tag("msgid", item.msgid);
            if let Some(a) = item.account {
                m.set_tag("account", a);
            }
            for (k, v) in item.client_tags {
                m.set_tag(k, v);
            }
            if batch {
                m.set_tag("batch", id.clone());
            }
            self.out.push(m);
        }
        if batch {
            self.out
                .push(Message::new("BATCH", vec![format!("-{id}")]).with_source(server));
        }
    }

    // ---- leaving ------------------------------------------------------------------------

    /// Removes the client from the network and tells peers and watchers.
    pub async fn depart(&mut self, reason: &str) {
        if !self.registered {
            self.shared.unregistered.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.handle.set_registered(false);
        self.shared.hub.index_remove_client(self.id);
        self.shared.engine.monitor_clear(self.id).await;
        match self.shared.engine.unregister(self.id).await {
            Some(d) => crate::cluster::announce_departure(&self.shared, &d, reason).await,
            // The store did not answer: the record stays until it does (the liveness task
            // retries), so the nick is not held forever by a client that is gone.
            None if !self.shared.engine.available() => {
                self.shared.defer_departure(self.id, reason);
            }
            None => {}
        }
        self.registered = false;
    }
}

/// Hashes a password with argon2id off the async threads.
pub async fn hash_password(password: String) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).ok()?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .ok()
            .map(|h| h.to_string())
    })
    .await
    .ok()
    .flatten()
}

/// Checks a password against an argon2 PHC hash off the async threads.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        PasswordHash::new(&hash)
            .map(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

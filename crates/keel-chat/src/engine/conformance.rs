//! The engine conformance suite: the behaviour every [`ChatEngine`] must have. The memory
//! engine runs it in `tests/engine_conformance.rs`; the Redis engine (issue 6) runs the same.
//!
//! Each check panics with a message on failure; `run_all` takes a factory of fresh, empty
//! engines with a history bound of `HISTORY_MAX` messages and one hour of age.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;

use std::time::Duration;

use super::{
    client_id, history_key, ChatEngine, ClientId, ClientInfo, ClientUpdate, EngineError,
    HistoryItem, HistoryQuery, HistoryRef, ModeChange,
};

/// History bound the factory must configure (messages per conversation).
pub const HISTORY_MAX: usize = 50;

fn client(id: ClientId, nick: &str) -> ClientInfo {
    ClientInfo {
        id,
        nick: nick.into(),
        user: format!("~{nick}"),
        host: "127.0.0.1".into(),
        realname: nick.into(),
        account: None,
        away: None,
        invisible: false,
        oper: false,
        signon: 0,
    }
}

fn mode(add: bool, mode: char, arg: Option<&str>) -> ModeChange {
    ModeChange {
        add,
        mode,
        arg: arg.map(str::to_owned),
    }
}

fn item(n: u64, time: u64) -> HistoryItem {
    HistoryItem {
        msgid: format!("m{n}"),
        time,
        source: "a!~a@h".into(),
        account: None,
        command: "PRIVMSG".into(),
        target: "#h".into(),
        text: format!("text {n}"),
        client_tags: Vec::new(),
    }
}

fn texts(items: &[HistoryItem]) -> Vec<u64> {
    items
        .iter()
        .map(|i| i.msgid[1..].parse().unwrap())
        .collect()
}

/// Runs every check, each on a fresh engine.
pub async fn run_all<E, F, Fut>(make: F)
where
    E: ChatEngine,
    F: Fn() -> Fut,
    Fut: Future<Output = E>,
{
    nicks(&make().await).await;
    channels(&make().await).await;
    modes_and_topic(&make().await).await;
    monitor_and_quit(&make().await).await;
    accounts(&make().await).await;
    history(&make().await).await;
    presence(&make().await).await;
}

pub async fn nicks<E: ChatEngine>(e: &E) {
    e.register(client(1, "Alice")).await.unwrap();
    assert_eq!(
        e.register(client(2, "alice")).await,
        Err(EngineError::NickInUse),
        "nicks are unique under ascii casemapping"
    );
    e.register(client(2, "bob")).await.unwrap();
    assert_eq!(e.rename(2, "ALICE").await, Err(EngineError::NickInUse));
    let old = e.rename(1, "alice2").await.unwrap();
    assert_eq!(old.nick, "Alice");
    assert_eq!(e.find_nick("ALICE2").await.unwrap().id, 1);
    assert!(e.find_nick("alice").await.is_none(), "old nick released");
    e.rename(1, "ALICE2")
        .await
        .expect("case change of one's own nick");
    let after = e
        .update(1, ClientUpdate::Away(Some("gone".into())))
        .await
        .unwrap();
    assert_eq!(after.away.as_deref(), Some("gone"));
    assert_eq!(e.counts().await.users, 2);
}

pub async fn channels<E: ChatEngine>(e: &E) {
    for (id, nick) in [(1, "op"), (2, "u"), (3, "v")] {
        e.register(client(id, nick)).await.unwrap();
    }
    let j = e.join("#Chan", 1, None, 10).await.unwrap();
    assert!(j.created);
    assert_eq!(j.members, 1);
    assert_eq!(j.name, "#Chan");
    let info = e.channel("#chan").await.unwrap();
    assert!(info.member(1).unwrap().op, "creator is op");
    let j = e.join("#chan", 2, None, 10).await.unwrap();
    assert!(!j.created);
    assert_eq!(j.members, 2, "the joiner counts");
    let info = e.channel("#chan").await.unwrap();
    assert!(!info.member(2).unwrap().op);
    assert_eq!(info.members.len(), 2);
    assert_eq!(
        e.join("#chan", 2, None, 10).await.err(),
        Some(EngineError::UserOnChannel)
    );
    assert_eq!(
        e.join("#other", 2, None, 1).await.err(),
        Some(EngineError::TooManyChannels)
    );
    let mut peers = e.peers(1).await;
    peers.sort();
    assert_eq!(peers, vec![2]);
    assert_eq!(
        e.can_send("#chan", 3).await.err(),
        Some(EngineError::CannotSend),
        "+n"
    );
    assert_eq!(
        e.kick("#chan", 2, 1).await.err(),
        Some(EngineError::ChanOpNeeded)
    );
    let members = e.kick("#chan", 1, 2).await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(e.channel("#chan").await.unwrap().member(2).is_none());
    assert_eq!(
        e.part("#chan", 2).await.err(),
        Some(EngineError::NotOnChannel)
    );
    e.part("#chan", 1).await.unwrap();
    assert!(
        e.channel("#chan").await.is_none(),
        "an empty channel is gone"
    );
    assert_eq!(
        e.part("#chan", 1).await.err(),
        Some(EngineError::NoSuchChannel)
    );
}

pub async fn modes_and_topic<E: ChatEngine>(e: &E) {
    for (id, nick) in [(1, "op"), (2, "u"), (3, "v")] {
        e.register(client(id, nick)).await.unwrap();
    }
    e.join("#m", 1, None, 10).await.unwrap();
    e.join("#m", 2, None, 10).await.unwrap();
    assert_eq!(
        e.set_topic("#m", 2, "x").await.err(),
        Some(EngineError::ChanOpNeeded),
        "+t"
    );
    let (topic, _) = e.set_topic("#m", 1, "hello").await.unwrap();
    assert_eq!(topic.setter, "op!~op@127.0.0.1");
    assert_eq!(
        e.set_modes("#m", 2, vec![mode(true, 'i', None)])
            .await
            .err(),
        Some(EngineError::ChanOpNeeded)
    );
    let (applied, _) = e
        .set_modes(
            "#m",
            1,
            vec![
                mode(true, 'k', Some("key")),
                mode(true, 'l', Some("2")),
                mode(true, 'v', Some("U")),
                mode(true, 'n', None), // already set: not applied
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), 3);
    let info = e.channel("#m").await.unwrap();
    assert!(info.member(2).unwrap().voice);
    assert_eq!(info.modes.key.as_deref(), Some("key"));
    assert_eq!(
        e.join("#m", 3, Some("key"), 10).await.err(),
        Some(EngineError::ChannelFull)
    );
    e.set_modes("#m", 1, vec![mode(false, 'l', None)])
        .await
        .unwrap();
    assert_eq!(
        e.join("#m", 3, None, 10).await.err(),
        Some(EngineError::BadKey)
    );
    e.set_modes(
        "#m",
        1,
        vec![mode(true, 'b', Some("v!*@*")), mode(false, 'k', None)],
    )
    .await
    .unwrap();
    assert_eq!(
        e.join("#m", 3, None, 10).await.err(),
        Some(EngineError::Banned)
    );
    e.set_modes("#m", 1, vec![mode(true, 'i', None)])
        .await
        .unwrap();
    assert_eq!(
        e.join("#m", 3, None, 10).await.err(),
        Some(EngineError::InviteOnly)
    );
    assert_eq!(
        e.invite("#m", 2, 3).await.err(),
        Some(EngineError::ChanOpNeeded)
    );
    let ops = e.invite("#m", 1, 3).await.unwrap();
    assert_eq!(ops, vec![1]);
    e.join("#m", 3, None, 10)
        .await
        .expect("an invitation passes +i and +b");
}

pub async fn monitor_and_quit<E: ChatEngine>(e: &E) {
    e.register(client(1, "watcher")).await.unwrap();
    e.register(client(2, "target")).await.unwrap();
    e.register(client(3, "peer")).await.unwrap();
    e.monitor_add(1, &["Target".into(), "nobody".into()], 10)
        .await
        .unwrap();
    assert_eq!(
        e.monitor_add(1, &["a".into(), "b".into(), "c".into()], 4)
            .await,
        Err(EngineError::MonitorListFull)
    );
    assert_eq!(e.watchers("TARGET").await, vec![1]);
    e.join("#q", 2, None, 10).await.unwrap();
    e.join("#q", 3, None, 10).await.unwrap();
    let d = e.unregister(2).await.unwrap();
    assert_eq!(d.client.nick, "target");
    assert_eq!(d.peers, vec![3]);
    assert!(e.find_nick("target").await.is_none());
    assert_eq!(e.channel("#q").await.unwrap().members.len(), 1);
    assert_eq!(e.whowas("TARGET", 5).await.len(), 1);
    assert!(e.unregister(2).await.is_none());
    e.unregister(1).await.unwrap();
    assert!(
        e.watchers("target").await.is_empty(),
        "a departed client watches nothing"
    );
}

pub async fn accounts<E: ChatEngine>(e: &E) {
    e.create_account("Acct", "hash1").await.unwrap();
    assert_eq!(
        e.create_account("acct", "hash2").await,
        Err(EngineError::AccountExists)
    );
    assert_eq!(e.account_hash("ACCT").await.as_deref(), Some("hash1"));
    assert!(e.account_hash("none").await.is_none());
}

pub async fn history<E: ChatEngine>(e: &E) {
    let key = history_key("me", "#h");
    let base = 10_000_000u64;
    for n in 0..60 {
        e.append_history(&key, item(n, base + n * 1000)).await;
    }
    let now = base + 60_000;
    let latest = e.history(&key, HistoryQuery::Latest(None), 5, now).await;
    assert_eq!(texts(&latest), vec![55, 56, 57, 58, 59]);
    let all = e.history(&key, HistoryQuery::Latest(None), 100, now).await;
    assert_eq!(all.len(), HISTORY_MAX, "bounded by count");
    assert_eq!(texts(&all)[0], 10);
    let after = e
        .history(
            &key,
            HistoryQuery::After(HistoryRef::MsgId("m20".into())),
            3,
            now,
        )
        .await;
    assert_eq!(texts(&after), vec![21, 22, 23]);
    let before = e
        .history(
            &key,
            HistoryQuery::Before(HistoryRef::MsgId("m20".into())),
            3,
            now,
        )
        .await;
    assert_eq!(texts(&before), vec![17, 18, 19]);
    let around = e
        .history(
            &key,
            HistoryQuery::Around(HistoryRef::MsgId("m30".into())),
            4,
            now,
        )
        .await;
    assert_eq!(texts(&around), vec![28, 29, 30, 31]);
    let by_time = e
        .history(
            &key,
            HistoryQuery::After(HistoryRef::Time(base + 40_000)),
            2,
            now,
        )
        .await;
    assert_eq!(
        texts(&by_time),
        vec![41, 42],
        "a timestamp excludes its own message"
    );
    let between = e
        .history(
            &key,
            HistoryQuery::Between(
                HistoryRef::MsgId("m40".into()),
                HistoryRef::MsgId("m44".into()),
            ),
            10,
            now,
        )
        .await;
    assert_eq!(texts(&between), vec![41, 42, 43]);
    let reversed = e
        .history(
            &key,
            HistoryQuery::Between(
                HistoryRef::MsgId("m44".into()),
                HistoryRef::MsgId("m40".into()),
            ),
            2,
            now,
        )
        .await;
    assert_eq!(
        texts(&reversed),
        vec![42, 43],
        "latest first when the bounds are reversed"
    );
    let unknown = e
        .history(
            &key,
            HistoryQuery::After(HistoryRef::MsgId("nope".into())),
            3,
            now,
        )
        .await;
    assert!(unknown.is_empty());
    // Age: an hour later everything has expired.
    let later = now + 3_600_000 + 60_000;
    assert!(e
        .history(&key, HistoryQuery::Latest(None), 10, later)
        .await
        .is_empty());
    // Direct messages are keyed by the pair, whoever sends.
    assert_eq!(history_key("Bob", "alice"), history_key("alice", "bob"));
    let targets = e.history_targets("me", &["#h".into()], base, now, 10).await;
    assert_eq!(targets, vec![("#h".to_owned(), base + 59_000)]);
}

/// Node numbers, heartbeats, lapsed presence, the cleanup lock.
pub async fn presence<E: ChatEngine>(e: &E) {
    assert!(e.available());
    let n1 = e.new_node().await.unwrap();
    let n2 = e.new_node().await.unwrap();
    assert_ne!(n1, n2, "node numbers are never reused");
    let (a, b) = (client_id(n1, 1), client_id(n2, 1));
    e.register(client(a, "on1")).await.unwrap();
    e.register(client(b, "on2")).await.unwrap();
    e.join("#p", a, None, 10).await.unwrap();
    e.join("#p", b, None, 10).await.unwrap();
    let unknown = e
        .heartbeat(n1, &[a, client_id(n1, 99)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        unknown,
        vec![client_id(n1, 99)],
        "unknown clients are reported"
    );
    e.heartbeat(n2, &[b], Duration::from_millis(1))
        .await
        .unwrap();
    assert!(e.nodes().await.contains(&n1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!e.nodes().await.contains(&n2), "a lapsed node is not alive");
    assert_eq!(
        e.expired_clients(10).await,
        vec![b],
        "the lapsed node's client, not the live node's"
    );
    assert!(e.lock("reaper", n1, Duration::from_secs(10)).await);
    assert!(
        !e.lock("reaper", n2, Duration::from_secs(10)).await,
        "one holder"
    );
    assert!(
        e.lock("reaper", n1, Duration::from_secs(10)).await,
        "renewal"
    );
    let d = e.unregister(b).await.unwrap();
    assert_eq!(d.peers, vec![a]);
    assert!(e.unregister(b).await.is_none(), "exactly one QUIT");
    assert!(e.expired_clients(10).await.is_empty());
}

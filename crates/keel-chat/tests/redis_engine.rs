//! The Redis engine beyond the conformance suite: races between nodes (two engines on two
//! connections stand for two nodes), script cache loss, and Redis going away and coming back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::future::join_all;
use keel_chat::engine::{
    client_id, history_key, ChatEngine, ClientId, ClientInfo, EngineError, HistoryItem,
    HistoryQuery, HistoryRef, ModeChange,
};
use keel_chat::RedisEngine;
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;

fn client(id: ClientId, nick: &str) -> ClientInfo {
    ClientInfo {
        id,
        nick: nick.into(),
        user: "~u".into(),
        host: "127.0.0.1".into(),
        realname: nick.into(),
        account: None,
        away: None,
        invisible: false,
        oper: false,
        signon: 0,
    }
}

fn settings(server: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        key_prefix: prefix.into(),
        response_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..RedisSettings::new(server.url())
    }
}

/// An engine on its own connection (a "node").
async fn node(server: &RedisServer, prefix: &str) -> RedisEngine {
    let handle = RedisHandle::connect(&settings(server, prefix))
        .await
        .expect("connect");
    RedisEngine::new(handle, 100, Duration::from_secs(3600))
        .await
        .expect("engine")
}

#[tokio::test]
async fn a_nick_claimed_at_once_on_two_nodes_goes_to_exactly_one() {
    let server = RedisServer::start().unwrap();
    let a = node(&server, "race").await;
    let b = node(&server, "race").await;
    for round in 0..40u32 {
        let nick = format!("Nick{round}");
        let claims = (0..16u32).map(|i| {
            let engine = if i % 2 == 0 { &a } else { &b };
            let id = client_id(1 + i % 2, round * 100 + i);
            // Mixed case: the claim is under ascii casemapping.
            let nick = if i % 3 == 0 {
                nick.to_uppercase()
            } else {
                nick.clone()
            };
            async move { (id, engine.register(client(id, &nick)).await) }
        });
        let results = join_all(claims).await;
        let winners: Vec<ClientId> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(results
            .iter()
            .all(|(_, r)| r.is_ok() || *r == Err(EngineError::NickInUse)));
        assert_eq!(b.find_nick(&nick).await.unwrap().id, winners[0]);
    }
    assert_eq!(a.counts().await.users, 40);
}

#[tokio::test]
async fn concurrent_joins_never_pass_the_channel_limit() {
    let server = RedisServer::start().unwrap();
    let a = node(&server, "lim").await;
    let b = node(&server, "lim").await;
    a.register(client(client_id(1, 0), "op")).await.unwrap();
    a.join("#full", client_id(1, 0), None, 10).await.unwrap();
    let (applied, _) = a
        .set_modes(
            "#full",
            client_id(1, 0),
            vec![ModeChange {
                add: true,
                mode: 'l',
                arg: Some("5".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);
    for i in 1..=20u32 {
        let engine = if i % 2 == 0 { &a } else { &b };
        engine
            .register(client(client_id(1 + i % 2, i), &format!("j{i}")))
            .await
            .unwrap();
    }
    let joins = (1..=20u32).map(|i| {
        let engine = if i % 2 == 0 { &a } else { &b };
        engine.join("#full", client_id(1 + i % 2, i), None, 10)
    });
    let results = join_all(joins).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(EngineError::ChannelFull)))
        .count();
    assert_eq!((ok, full), (4, 16), "the op and four joiners make five");
    assert_eq!(b.channel("#full").await.unwrap().members.len(), 5);
}

#[tokio::test]
async fn exactly_one_node_gets_the_quit_of_a_client() {
    let server = RedisServer::start().unwrap();
    let a = node(&server, "quit").await;
    let b = node(&server, "quit").await;
    for i in 0..20u32 {
        let id = client_id(1, i);
        a.register(client(id, &format!("q{i}"))).await.unwrap();
        a.join("#q", id, None, 10).await.unwrap();
        let (x, y) = tokio::join!(a.unregister(id), b.unregister(id));
        assert!(
            x.is_some() != y.is_some(),
            "client {i}: exactly one Departed"
        );
        assert!(a.whowas(&format!("Q{i}"), 5).await.len() == 1);
    }
    assert!(a.channel("#q").await.is_none(), "the channel emptied");
}

#[tokio::test]
async fn heartbeats_split_big_client_lists_and_report_unknown_ones() {
    let server = RedisServer::start().unwrap();
    let e = node(&server, "hb").await;
    let n = e.new_node().await.unwrap();
    let known: Vec<ClientId> = (0..2500).map(|i| client_id(n, i)).collect();
    for (i, id) in known.iter().enumerate().step_by(2) {
        e.register(client(*id, &format!("hb{i}"))).await.unwrap();
    }
    let unknown = e
        .heartbeat(n, &known, Duration::from_secs(60))
        .await
        .unwrap();
    let expected: Vec<ClientId> = known.iter().copied().skip(1).step_by(2).collect();
    assert_eq!(unknown, expected);
    assert_eq!(e.nodes().await, vec![n]);
}

fn item(n: u64, time: u64) -> HistoryItem {
    HistoryItem {
        msgid: format!("id{n}"),
        time,
        source: "a!~a@h".into(),
        account: Some("acct".into()),
        command: "PRIVMSG".into(),
        target: "bob".into(),
        text: format!("hello {n}"),
        client_tags: vec![("+draft/reply".into(), "x;y".into())],
    }
}

#[tokio::test]
async fn direct_message_history_round_trips_and_lists_targets() {
    let server = RedisServer::start().unwrap();
    let e = node(&server, "dm").await;
    let key = history_key("Alice", "bob");
    let base = 1_000_000u64;
    for n in 0..5 {
        e.append_history(&key, item(n, base + n)).await;
    }
    let all = e
        .history(&key, HistoryQuery::Latest(None), 10, base + 10)
        .await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[4], item(4, base + 4), "every field survives");
    let before = e
        .history(
            &key,
            HistoryQuery::Before(HistoryRef::Time(base + 2)),
            10,
            base + 10,
        )
        .await;
    assert_eq!(before.len(), 2);
    assert_eq!(
        e.history_targets("BOB", &[], base, base + 10, 10).await,
        vec![("alice".to_owned(), base + 4)]
    );
    assert!(e
        .history_targets("carol", &[], base, base + 10, 10)
        .await
        .is_empty());
}

#[tokio::test]
async fn a_script_flush_is_recovered_on_the_next_call() {
    let server = RedisServer::start().unwrap();
    let e = node(&server, "flush").await;
    e.register(client(1, "before")).await.unwrap();
    server.script_flush().unwrap();
    e.register(client(2, "after")).await.unwrap();
    e.join("#f", 2, None, 10).await.unwrap();
    assert_eq!(e.find_nick("after").await.unwrap().id, 2);
    assert!(e.available());
}

#[tokio::test]
async fn redis_away_makes_the_engine_unavailable_until_it_returns() {
    let mut server = RedisServer::start().unwrap();
    let e = node(&server, "down").await;
    e.register(client(1, "first")).await.unwrap();
    assert!(e.available());

    server.stop();
    assert!(matches!(
        e.register(client(2, "second")).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(!e.available());
    assert!(e.find_nick("first").await.is_none());
    assert!(e.clients(10).await.is_empty());
    assert!(!e.lock("reaper", 1, Duration::from_secs(1)).await);
    assert!(matches!(
        e.heartbeat(1, &[1], Duration::from_secs(1)).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(!e.available());

    server.start_again().unwrap();
    // The connection comes back by itself; a few calls may still meet the old one.
    let mut registered = false;
    for _ in 0..100 {
        if e.register(client(3, "third")).await.is_ok() {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered, "the engine recovered without being rebuilt");
    assert!(e.available());
    assert_eq!(e.find_nick("third").await.unwrap().id, 3);
}

#[tokio::test]
async fn a_hung_redis_times_out_into_unavailable_and_recovers_when_it_answers() {
    let server = RedisServer::start().unwrap();
    let e = node(&server, "hung").await;
    e.register(client(1, "one")).await.unwrap();
    server.freeze().unwrap();
    // Each call gives up after the handle's timeout instead of waiting for the frozen server.
    assert!(matches!(
        e.join("#x", 1, None, 10).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(!e.available());
    assert!(e.peers(1).await.is_empty());
    server.thaw().unwrap();
    let mut back = false;
    for _ in 0..100 {
        if e.find_nick("one").await.is_some() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "answers again once Redis does");
    assert!(e.available());
    // A call that timed out may still have been applied once Redis woke up (the command was
    // sent): the state is then as if it had succeeded, never half-applied.
    match e.join("#x", 1, None, 10).await {
        Ok(j) => assert!(j.created),
        Err(err) => assert_eq!(err, EngineError::UserOnChannel),
    }
    assert_eq!(e.channel("#x").await.unwrap().members.len(), 1);
    assert_eq!(e.channels_of(1).await, vec!["#x".to_owned()]);
}

#[tokio::test]
async fn history_trimming_also_forgets_the_msgids_it_drops() {
    let server = RedisServer::start().unwrap();
    let handle = RedisHandle::connect(&settings(&server, "trim"))
        .await
        .unwrap();
    // At most 10 messages, none older than 2 s (by the messages' own times).
    let e = RedisEngine::new(handle, 10, Duration::from_secs(2))
        .await
        .unwrap();
    let key = history_key("a", "#trim");
    let ids_len = |server: &RedisServer| -> usize {
        server
            .cli(&["HLEN", "trim:{h:#trim}:ids"])
            .unwrap()
            .parse()
            .unwrap()
    };
    let t0 = 50_000_000u64;
    for n in 0..25 {
        e.append_history(&key, item(n, t0 + n)).await;
    }
    assert_eq!(ids_len(&server), 10, "msgid index trimmed with the stream");
    let kept = e
        .history(&key, HistoryQuery::Latest(None), 100, t0 + 100)
        .await;
    assert_eq!(kept.first().map(|i| i.msgid.as_str()), Some("id15"));
    assert!(e
        .history(
            &key,
            HistoryQuery::After(HistoryRef::MsgId("id3".into())),
            5,
            t0 + 100
        )
        .await
        .is_empty());
    // A message 10 s later pushes everything older than 2 s out.
    e.append_history(&key, item(99, t0 + 10_000)).await;
    assert_eq!(ids_len(&server), 1);
    let kept = e
        .history(&key, HistoryQuery::Latest(None), 100, t0 + 10_000)
        .await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].msgid, "id99");
}

#[tokio::test]
async fn node_numbers_stay_unique_when_redis_loses_its_data() {
    let mut server = RedisServer::start().unwrap();
    let e = node(&server, "seq").await;
    let mut last = 0;
    for _ in 0..3 {
        last = e.new_node().await.unwrap();
    }
    e.heartbeat(last, &[], Duration::from_secs(60))
        .await
        .unwrap();
    server.restart().unwrap(); // no persistence: the sequence is gone
    let mut restored = false;
    for _ in 0..100 {
        // The live node's next heartbeat finds Redis again.
        if e.heartbeat(last, &[], Duration::from_secs(60))
            .await
            .is_ok()
        {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restored);
    let next = e.new_node().await.unwrap();
    assert!(
        next > last,
        "{next} must not reuse a live node's number {last}"
    );
}

//! IRC sessions over the Redis engine: the socket scenarios of `irc.rs` for channels and
//! CHATHISTORY, with a node whose engine is `RedisEngine` on a private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{test_config, Client, TestServer};
use keel_chat::{ChatServer, Config, RedisEngine};
use keel_core::Shutdown;
use keel_redis::{RedisHandle, RedisSettings};
use keel_testkit::RedisServer;
use tokio::net::TcpListener;

async fn start_on_redis(config: Config) -> (RedisServer, TestServer) {
    let redis = RedisServer::start().expect("redis-server");
    let handle = RedisHandle::connect(&RedisSettings::new(redis.url()))
        .await
        .expect("connect");
    let engine = RedisEngine::new(handle, config.history_max, config.history_age)
        .await
        .expect("engine");
    let irc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::new();
    let server = ChatServer::start(config, engine, irc, Some(http), shutdown.clone())
        .await
        .unwrap();
    let (irc, http) = (server.irc_addr(), server.http_addr().unwrap());
    tokio::spawn(server.wait());
    (
        redis,
        TestServer {
            irc,
            http,
            shutdown,
        },
    )
}

#[tokio::test]
async fn channel_operations_on_redis() {
    let (_redis, server) = start_on_redis(test_config()).await;
    let mut op = Client::register_with_caps(
        server.irc,
        "op",
        &["multi-prefix", "userhost-in-names", "invite-notify"],
    )
    .await;
    let mut u =
        Client::register_with_caps(server.irc, "user", &["extended-join", "away-notify"]).await;
    op.send("JOIN #ops").await;
    let names = op.expect(|m| m.command == "353").await;
    assert!(names.param(3).unwrap().starts_with("@op!~op@"), "{names:?}");
    op.send("TOPIC #ops :the topic").await;
    op.expect(|m| m.command == "TOPIC").await;
    op.send("MODE #ops +k secret").await;
    op.expect(|m| m.command == "MODE").await;
    u.send("JOIN #ops").await;
    u.expect(|m| m.command == "475").await;
    u.send("JOIN #ops secret").await;
    let join = u.expect(|m| m.command == "JOIN").await;
    assert_eq!(join.params, vec!["#ops", "*", "Test user"]);
    let topic = u.expect(|m| m.command == "332").await;
    assert_eq!(topic.param(2), Some("the topic"));
    u.send("TOPIC #ops :mine").await;
    u.expect(|m| m.command == "482").await;
    op.send("MODE #ops +ov user user").await;
    let mode = u.expect(|m| m.command == "MODE").await;
    assert_eq!(mode.params, vec!["#ops", "+ov", "user", "user"]);
    op.send("NAMES #ops").await;
    let names = op.expect(|m| m.command == "353").await;
    assert!(names.param(3).unwrap().contains("@+user!"), "{names:?}");
    op.send("MODE #ops").await;
    let modes = op.expect(|m| m.command == "324").await;
    assert_eq!(modes.params[2..], ["+ntk", "secret"]);
    op.send("AWAY :lunch").await;
    op.expect(|m| m.command == "306").await;
    let away = u.expect(|m| m.command == "AWAY").await;
    assert_eq!(away.param(0), Some("lunch"));
    let mut third = Client::register(server.irc, "third").await;
    third.send("JOIN #ops secret").await;
    third.expect(|m| m.command == "366").await;
    op.send("KICK #ops user,third :out").await;
    let kick = u.expect(|m| m.command == "KICK").await;
    assert_eq!(kick.params, vec!["#ops", "user", "out"]);
    let kick = third.expect(|m| m.command == "KICK").await;
    assert_eq!(
        kick.params,
        vec!["#ops", "user", "out"],
        "members see every kick"
    );
    let kick = third.expect(|m| m.command == "KICK").await;
    assert_eq!(kick.params, vec!["#ops", "third", "out"]);
    op.send("MODE #ops +i").await;
    op.expect(|m| m.command == "MODE").await;
    u.send("JOIN #ops secret").await;
    u.expect(|m| m.command == "473").await;
    op.send("INVITE user #ops").await;
    op.expect(|m| m.command == "341").await;
    u.expect(|m| m.command == "INVITE").await;
    u.send("JOIN #ops secret").await;
    u.expect(|m| m.command == "JOIN").await;
    u.send("WHO #ops %tnf,42").await;
    let who = u.expect(|m| m.command == "354").await;
    assert_eq!(who.param(1), Some("42"));
    u.send("WHOIS op").await;
    u.expect(|m| m.command == "311").await;
    let chans = u.expect(|m| m.command == "319").await;
    assert_eq!(chans.param(2), Some("@#ops"));
    u.expect(|m| m.command == "301").await;
    u.expect(|m| m.command == "318").await;
    u.send("ISON op nobody user").await;
    let ison = u.expect(|m| m.command == "303").await;
    assert_eq!(ison.param(1), Some("op user"));
    u.send("USERHOST op").await;
    let uh = u.expect(|m| m.command == "302").await;
    assert!(uh.param(1).unwrap().starts_with("op=-~op@"), "{uh:?}");
    u.send("LIST").await;
    let entry = u.expect(|m| m.command == "322").await;
    assert_eq!(entry.params[1..], ["#ops", "2", "the topic"]);
    for cmd in ["MOTD", "LUSERS", "VERSION", "TIME", "INFO"] {
        u.send(cmd).await;
    }
    u.expect(|m| m.command == "374").await;
    u.send("FROB").await;
    u.expect(|m| m.command == "421").await;
    op.send("QUIT").await;
    op.expect_closed().await;
    u.send("WHOWAS op").await;
    let was = u.expect(|m| m.command == "314").await;
    assert_eq!(was.param(1), Some("op"));
    u.send("PART #ops :bye").await;
    u.expect(|m| m.command == "PART").await;
}

#[tokio::test]
async fn chathistory_after_a_reconnect_on_redis() {
    let (_redis, server) = start_on_redis(test_config()).await;
    let caps = ["batch", "server-time", "message-tags", "draft/chathistory"];
    let mut alice = Client::register(server.irc, "alice").await;
    alice.send("JOIN #hist").await;
    alice.expect(|m| m.command == "366").await;
    let mut bob = Client::register_with_caps(server.irc, "bob", &caps).await;
    bob.send("JOIN #hist").await;
    bob.expect(|m| m.command == "366").await;
    alice.send("PRIVMSG #hist :before").await;
    let last = bob.expect(|m| m.command == "PRIVMSG").await;
    let last_id = last.tag("msgid").unwrap().to_owned();
    bob.send("QUIT :train tunnel").await;
    bob.expect_closed().await;

    for i in 0..25 {
        alice.send(&format!("PRIVMSG #hist :missed {i}")).await;
    }
    alice.send("PRIVMSG bob :are you there?").await;
    alice.expect(|m| m.command == "401").await; // bob is gone; the DM is refused
    alice.sync().await;

    let mut bob = Client::register_with_caps(server.irc, "bob", &caps).await;
    bob.send("JOIN #hist").await;
    bob.expect(|m| m.command == "366").await;
    bob.send(&format!("CHATHISTORY AFTER #hist msgid={last_id} 100"))
        .await;
    let start = bob.expect(|m| m.command == "BATCH").await;
    let batch = start
        .param(0)
        .unwrap()
        .strip_prefix('+')
        .unwrap()
        .to_owned();
    assert_eq!(start.param(1), Some("chathistory"));
    let mut texts = Vec::new();
    loop {
        let m = bob.expect(|_| true).await;
        if m.command == "BATCH" {
            assert_eq!(m.param(0), Some(format!("-{batch}").as_str()));
            break;
        }
        assert_eq!(m.tag("batch"), Some(batch.as_str()));
        assert!(m.tag("msgid").is_some() && m.tag("time").is_some());
        texts.push(m.param(1).unwrap().to_owned());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("missed {i}")).collect();
    assert_eq!(texts, expected);

    // The other selectors.
    bob.send("CHATHISTORY LATEST #hist * 2").await;
    bob.expect(|m| m.command == "BATCH").await;
    let a = bob.expect(|_| true).await;
    let b = bob.expect(|_| true).await;
    assert_eq!(
        (a.param(1).unwrap(), b.param(1).unwrap()),
        ("missed 23", "missed 24")
    );
    bob.expect(|m| m.command == "BATCH").await;
    bob.send(&format!("CHATHISTORY BEFORE #hist msgid={last_id} 10"))
        .await;
    bob.expect(|m| m.command == "BATCH").await;
    let end = bob.expect(|_| true).await;
    assert_eq!(end.command, "BATCH", "nothing before the first message");
    bob.send("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10").await;
    bob.expect(|m| m.command == "BATCH").await;
    let t = bob.expect(|_| true).await;
    assert_eq!(t.command, "CHATHISTORY");
    assert_eq!(t.param(1), Some("#hist"));
    bob.send("CHATHISTORY AFTER #elsewhere * 10").await;
    let fail = bob.expect(|m| m.command == "FAIL").await;
    assert_eq!(fail.param(1), Some("INVALID_PARAMS"));
}

/// A JOIN answered `FAIL JOIN TEMPORARILY_UNAVAILABLE` that the store applied after the node
/// stopped waiting is announced when the client joins again, as the FAIL asks: the client sees
/// its JOIN, the members see it once, and a JOIN after that is ignored as before.
#[tokio::test]
async fn a_join_applied_after_its_timeout_is_announced_on_the_retry() {
    let (redis, server) = start_on_redis(test_config()).await;
    let mut bob = Client::register(server.irc, "bob").await;
    bob.send("JOIN #late").await;
    bob.expect(|m| m.command == "366").await;
    let mut alice = Client::register(server.irc, "alice").await;
    // Writes wait in Redis for 1.5 s, past the node's 500 ms timeout, and then run.
    redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).unwrap();
    alice.send("JOIN #late").await;
    let fail = alice.expect(|m| m.command == "FAIL").await;
    assert_eq!(fail.params[..2], ["JOIN", "TEMPORARILY_UNAVAILABLE"]);
    // The store applies the JOIN once the pause ends: alice is a member nobody was told of.
    let mut member = false;
    for _ in 0..50 {
        bob.send("NAMES #late").await;
        // (While the node is degraded, NAMES is refused too.)
        let names = bob
            .expect(|m| m.command == "353" || m.command == "FAIL")
            .await;
        if names.command == "353"
            && names
                .param(3)
                .unwrap_or("")
                .split(' ')
                .any(|n| n == "alice")
        {
            member = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(member, "the paused JOIN ran once Redis resumed");
    assert!(
        !bob.seen
            .iter()
            .any(|l| l.contains(":alice!") && l.contains(" JOIN ")),
        "{:#?}",
        bob.seen
    );

    alice.send("JOIN #late").await;
    let join = alice.expect(|m| m.command == "JOIN").await;
    assert_eq!(join.param(0), Some("#late"));
    alice.expect(|m| m.command == "366").await;
    let seen = bob.expect(|m| m.command == "JOIN").await;
    assert!(
        seen.source.as_deref().unwrap_or("").starts_with("alice!"),
        "{seen:?}"
    );
    // Now the client knows: another JOIN is the JOIN of a joined channel.
    alice.send("JOIN #late").await;
    alice.sync().await;
    bob.sync().await;
    let joins = |c: &Client| c.seen.iter().filter(|l| l.contains(" JOIN #late")).count();
    assert_eq!(joins(&alice), 1, "{:#?}", alice.seen);
    assert_eq!(joins(&bob), 2, "bob's own and alice's: {:#?}", bob.seen);
}

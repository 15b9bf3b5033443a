//! Storm admission over real sockets: pacing instead of refusal, the bounded pending queue,
//! and SO_REUSEPORT listeners sharing one port. No assertion depends on speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_chat::{bind_listener, ChatServer, MemoryEngine};
use keel_core::Shutdown;

#[tokio::test]
async fn over_the_rate_a_connection_is_paced_not_refused_until_the_queue_is_full() {
    let mut config = test_config();
    // One admission every 2 s, no burst, one waiting place.
    config.limits.accepts_per_sec = 0.5;
    config.limits.accept_burst = 1;
    config.limits.accept_queue = 1;
    config.limits.accept_wait_secs = 60.0;
    let server = start(config).await;
    let _first = Client::register(server.irc, "first").await;
    // Over the rate: held in the queue (no ERROR), admitted when its slot comes.
    let mut paced = Client::connect(server.irc).await;
    paced.nick = "paced".into();
    paced.send("NICK paced").await;
    paced.send("USER paced 0 * :P").await;
    // The queue holds one: the next is refused with a hint it can parse.
    let mut refused = Client::connect(server.irc).await;
    let error = refused.expect_closed().await.expect("an ERROR line");
    assert!(error.contains("Server is busy"), "{error}");
    let hint = keel_chat::reconnect::parse_hint(&error).expect("a retry hint");
    assert!(hint.as_secs() >= 1, "{error}");
    // The paced client was never refused: it registers.
    let welcome = paced
        .expect(|m| m.command == "001" || m.command == "ERROR")
        .await;
    assert_eq!(welcome.command, "001", "{:?}", paced.seen);
}

#[tokio::test]
async fn paced_connections_are_admitted_in_arrival_order() {
    let mut config = test_config();
    config.limits.accepts_per_sec = 20.0;
    config.limits.accept_burst = 1;
    config.limits.accept_queue = 100;
    let server = start(config).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(server.irc).await;
        c.nick = format!("p{i}");
        c.send(&format!("NICK p{i}")).await;
        c.send(&format!("USER p{i} 0 * :P")).await;
        clients.push(c);
    }
    // Everyone gets in, none refused.
    for c in &mut clients {
        let m = c
            .expect(|m| m.command == "001" || m.command == "ERROR")
            .await;
        assert_eq!(m.command, "001", "{:?}", c.seen);
    }
}

#[tokio::test]
async fn two_listeners_share_one_port_with_so_reuseport() {
    let first = bind_listener("127.0.0.1:0".parse().unwrap(), 128, true).unwrap();
    let addr = first.local_addr().unwrap();
    // Without SO_REUSEPORT the port is taken ...
    assert!(bind_listener(addr, 128, false).is_err());
    // ... with it, a second listener (another process in production) binds it too.
    let second = bind_listener(addr, 128, true).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);

    let shutdown = Shutdown::new();
    let mut servers = Vec::new();
    for (name, listener) in [("one.keel", first), ("two.keel", second)] {
        let mut config = test_config();
        config.server_name = name.into();
        let engine = MemoryEngine::new(config.history_max, config.history_age);
        servers.push(
            ChatServer::start(config, engine, listener, None, shutdown.clone())
                .await
                .unwrap(),
        );
    }
    // The kernel spreads connections over both (by 4-tuple hash): with 64 connections the
    // chance that one listener gets none is 2^-63.
    let mut seen = std::collections::HashSet::new();
    let mut clients = Vec::new();
    for i in 0..64 {
        let mut c = Client::register(addr, &format!("r{i}")).await;
        let welcome = c
            .seen
            .iter()
            .find(|l| l.contains(" 001 "))
            .cloned()
            .unwrap();
        seen.insert(welcome.split(' ').next().unwrap().to_owned());
        c.sync().await;
        clients.push(c);
    }
    assert_eq!(
        seen,
        [":one.keel".to_owned(), ":two.keel".to_owned()].into(),
        "both servers answer on the shared port"
    );
    let total: usize = servers.iter().map(|s| s.connections()).sum();
    assert_eq!(total, 64);
    shutdown.trigger();
}

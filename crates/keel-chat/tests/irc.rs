//! Integration tests over real sockets against an in-process server.

mod common;

use std::time::{Duration, Instant};

use common::{start, test_config, Client};

#[tokio::test]
async fn registration_without_cap() {
    let server = start(test_config()).await;
    let mut c = Client::connect(server.irc).await;
    c.nick = "alice".into();
    c.send("NICK alice").await;
    c.send("USER alice 0 * :Alice Liddell").await;
    let welcome = c.expect(|m| m.command == "001").await;
    assert_eq!(welcome.param(0), Some("alice"));
    assert_eq!(welcome.source.as_deref(), Some("test.keel"));
    let isupport = c.expect(|m| m.command == "005").await;
    assert!(isupport.params.iter().any(|p| p == "CASEMAPPING=ascii"));
    c.expect(|m| m.command == "376").await;
    // No tags without message-tags/server-time.
    assert!(c.seen.iter().all(|l| !l.starts_with('@')));
}

#[tokio::test]
async fn registration_with_cap_waits_for_cap_end() {
    let server = start(test_config()).await;
    let mut c = Client::connect(server.irc).await;
    c.nick = "bob".into();
    c.send("CAP LS 302").await;
    let ls = c.expect(|m| m.command == "CAP").await;
    assert_eq!(ls.param(1), Some("LS"));
    let caps = ls.param(2).unwrap();
    for cap in [
        "message-tags",
        "server-time",
        "echo-message",
        "batch",
        "labeled-response",
        "sasl=PLAIN",
        "draft/chathistory",
    ] {
        assert!(caps.split(' ').any(|c| c == cap), "{cap} missing in {caps}");
    }
    c.send("NICK bob").await;
    c.send("USER bob 0 * :Bob").await;
    c.send("CAP REQ :server-time message-tags").await;
    let ack = c.expect(|m| m.command == "CAP").await;
    assert_eq!(ack.param(1), Some("ACK"));
    c.send("CAP REQ :no-such-cap").await;
    let nak = c.expect(|m| m.command == "CAP").await;
    assert_eq!(nak.param(1), Some("NAK"));
    assert!(
        !c.seen.iter().any(|l| l.contains(" 001 ")),
        "registered before CAP END"
    );
    c.send("CAP LIST").await;
    let list = c.expect(|m| m.command == "CAP").await;
    assert_eq!(list.param(2), Some("message-tags server-time"));
    c.send("CAP END").await;
    c.expect(|m| m.command == "001").await;
}

#[tokio::test]
async fn nick_collision_and_unregistered_commands() {
    let server = start(test_config()).await;
    let _a = Client::register(server.irc, "taken").await;
    let mut b = Client::connect(server.irc).await;
    b.send("JOIN #x").await;
    b.expect(|m| m.command == "451").await;
    b.send("NICK taken").await;
    b.expect(|m| m.command == "433").await;
    b.send("NICK Taken").await; // ascii casemapping
    b.expect(|m| m.command == "433").await;
    b.send("NICK free").await;
    b.send("USER free 0 * :Free").await;
    b.expect(|m| m.command == "001").await;
}

#[tokio::test]
async fn channel_messages_carry_msgid_and_server_time() {
    let server = start(test_config()).await;
    let caps = ["message-tags", "server-time", "echo-message"];
    let mut alice = Client::register_with_caps(server.irc, "alice", &caps).await;
    let mut bob = Client::register_with_caps(server.irc, "bob", &caps).await;
    let mut plain = Client::register(server.irc, "plain").await;
    alice.send("JOIN #keel").await;
    alice.expect(|m| m.command == "366").await;
    bob.send("JOIN #keel").await;
    bob.expect(|m| m.command == "366").await;
    plain.send("JOIN #keel").await;
    plain.expect(|m| m.command == "366").await;
    alice
        .expect(|m| {
            m.command == "JOIN" && m.source.as_deref().is_some_and(|s| s.starts_with("plain!"))
        })
        .await;

    alice
        .send("@+draft/reply=abc PRIVMSG #keel :hello, world")
        .await;
    let got = bob.expect(|m| m.command == "PRIVMSG").await;
    assert_eq!(got.params, vec!["#keel", "hello, world"]);
    assert!(got.source.as_deref().unwrap().starts_with("alice!"));
    let msgid = got.tag("msgid").expect("msgid tag").to_owned();
    let time = got.tag("time").expect("time tag");
    assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    assert_eq!(got.tag("+draft/reply"), Some("abc"));
    let echo = alice.expect(|m| m.command == "PRIVMSG").await;
    assert_eq!(echo.tag("msgid"), Some(msgid.as_str()));
    let bare = plain.expect(|m| m.command == "PRIVMSG").await;
    assert!(
        bare.tags.is_empty(),
        "client without caps got tags: {bare:?}"
    );

    // Direct message, and a reply in the channel.
    bob.send("PRIVMSG alice :psst").await;
    let dm = alice.expect(|m| m.command == "PRIVMSG").await;
    assert_eq!(dm.params, vec!["alice", "psst"]);
    assert!(dm.tag("msgid").is_some());
    bob.send("NOTICE #keel :a notice").await;
    plain
        .expect(|m| m.command == "NOTICE" && m.param(1) == Some("a notice"))
        .await;
}

#[tokio::test]
async fn monitor_notices_on_connect_and_quit() {
    let server = start(test_config()).await;
    let mut alice = Client::register(server.irc, "alice").await;
    alice.send("MONITOR + bob,carol").await;
    let offline = alice.expect(|m| m.command == "731").await;
    assert_eq!(offline.param(1), Some("bob,carol"));
    let mut bob = Client::register(server.irc, "bob").await;
    let online = alice.expect(|m| m.command == "730").await;
    assert_eq!(online.param(0), Some("alice"));
    assert!(online.param(1).unwrap().starts_with("bob!"), "{online:?}");
    bob.send("QUIT :bye").await;
    bob.expect_closed().await;
    let gone = alice.expect(|m| m.command == "731").await;
    assert_eq!(gone.params, vec!["alice", "bob"]);
    alice.send("MONITOR L").await;
    let list = alice.expect(|m| m.command == "732").await;
    let mut nicks: Vec<&str> = list.param(1).unwrap().split(',').collect();
    nicks.sort();
    assert_eq!(nicks, vec!["bob", "carol"]);
}

#[tokio::test]
async fn ghost_is_dropped_after_ping_timeout_and_others_see_it() {
    let mut config = test_config();
    config.ping_interval = Duration::from_millis(200);
    config.ping_timeout = Duration::from_millis(400);
    let server = start(config).await;
    let mut alice = Client::register(server.irc, "alice").await;
    let mut ghost = Client::register(server.irc, "ghost").await;
    ghost.answer_pings = false;
    alice.send("JOIN #room").await;
    alice.expect(|m| m.command == "366").await;
    ghost.send("JOIN #room").await;
    ghost.expect(|m| m.command == "366").await;
    alice.send("MONITOR + ghost").await;
    alice.expect(|m| m.command == "730").await;
    let quiet_since = Instant::now();
    // Alice keeps reading (and answering her own PINGs) while the ghost stays silent.
    let watcher = tokio::spawn(async move {
        let quit = alice.expect(|m| m.command == "QUIT").await;
        (alice, quit, quiet_since.elapsed())
    });
    // The ghost stops talking. It is pinged, does not answer, and is dropped.
    let ping = ghost.expect(|m| m.command == "PING").await;
    assert_eq!(ping.param(0), Some("test.keel"));
    let error = ghost.expect_closed().await.expect("ERROR before close");
    assert!(error.contains("Ping timeout"), "{error}");
    let (mut alice, quit, elapsed) = watcher.await.unwrap();
    assert!(quit.source.as_deref().unwrap().starts_with("ghost!"));
    assert!(quit.param(0).unwrap().starts_with("Ping timeout"));
    // Not dropped before interval + timeout of silence.
    assert!(
        elapsed >= Duration::from_millis(600),
        "dropped after only {elapsed:?}"
    );
    alice
        .expect(|m| m.command == "731" && m.param(1) == Some("ghost"))
        .await;
    alice.send("WHOIS ghost").await;
    alice.expect(|m| m.command == "401").await;
    alice.send("NAMES #room").await;
    let names = alice.expect(|m| m.command == "353").await;
    assert_eq!(names.param(3), Some("@alice"));
    // Alice answered her PINGs throughout and is still here.
    alice.sync().await;
}

#[tokio::test]
async fn reconnecting_client_gets_every_missed_message_with_chathistory_after() {
    let server = start(test_config()).await;
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

#[tokio::test]
async fn huge_line_invalid_utf8_and_a_client_that_never_reads() {
    let server = start(test_config()).await;
    let mut carol = Client::register(server.irc, "carol").await;
    carol.send("JOIN #abuse").await;
    carol.expect(|m| m.command == "366").await;

    // A 1 MB line: 417, the rest of the line skipped, the connection still usable.
    let mut big = Client::register(server.irc, "big").await;
    let mut line = b"PRIVMSG #abuse :".to_vec();
    line.extend(std::iter::repeat_n(b'x', 1 << 20));
    line.extend_from_slice(b"\r\n");
    big.send_raw(&line).await;
    big.expect(|m| m.command == "417").await;
    big.sync().await;

    // Invalid UTF-8: FAIL ... INVALID_UTF8, nothing relayed.
    big.send("JOIN #abuse").await;
    big.expect(|m| m.command == "366").await;
    big.send_raw(b"PRIVMSG #abuse :caf\xe9 \xff\xfe\r\n").await;
    let fail = big.expect(|m| m.command == "FAIL").await;
    assert_eq!(fail.params[..2], ["PRIVMSG", "INVALID_UTF8"]);
    big.sync().await;
    // (big leaves: it is not reading during the flood below.)
    big.send("PART #abuse").await;
    big.expect(|m| m.command == "PART").await;

    // A client that joins and never reads: dropped with SendQ exceeded.
    let mut sink = Client::register_small_buffer(server.irc, "sink").await;
    sink.send("JOIN #abuse").await;
    sink.expect(|m| m.command == "366").await;
    let mut flooder = Client::register(server.irc, "flooder").await;
    flooder.send("JOIN #abuse").await;
    flooder.expect(|m| m.command == "366").await;
    let text = "y".repeat(400);
    // carol reads in lockstep with the flood; sink never reads (and has a small receive
    // buffer, so the server's socket to it fills quickly, then its send queue).
    let mut sink_quit = None;
    for round in 0..2000 {
        let mut chunk = String::new();
        for i in 0..50 {
            chunk.push_str(&format!("PRIVMSG #abuse :{round} {i} {text}\r\n"));
        }
        flooder.send_raw(chunk.as_bytes()).await;
        let last = format!("{round} 49 ");
        let m = carol
            .expect(|m| {
                (m.command == "PRIVMSG" && m.param(1).is_some_and(|t| t.starts_with(&last)))
                    || (m.command == "QUIT"
                        && m.source.as_deref().is_some_and(|s| s.starts_with("sink!")))
            })
            .await;
        if m.command == "QUIT" {
            sink_quit = Some(m);
            break;
        }
    }
    let quit = sink_quit.expect("sink dropped");
    assert_eq!(quit.param(0), Some("SendQ exceeded"));
    flooder.sync().await;
    // Everyone else is unaffected.
    big.sync().await;
    flooder.send("PRIVMSG #abuse :still here").await;
    carol
        .expect(|m| m.command == "PRIVMSG" && m.param(1) == Some("still here"))
        .await;
    drop(sink);
}

#[tokio::test]
async fn channel_operations() {
    let server = start(test_config()).await;
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
async fn labeled_response_accounts_sasl_and_oper() {
    let mut config = test_config();
    let hash = keel_chat::hash_password("operpass".into()).await.unwrap();
    config.operators.push(keel_chat::Operator {
        name: "root".into(),
        password_hash: hash,
    });
    let server = start(config).await;
    let caps = [
        "labeled-response",
        "batch",
        "draft/account-registration",
        "account-tag",
        "sasl",
    ];
    let mut a = Client::register_with_caps(server.irc, "acct", &caps).await;
    a.send("@label=l1 REGISTER * * hunter2hunter2").await;
    let ok = a
        .expect(|m| m.command == "BATCH" || m.command == "REGISTER")
        .await;
    assert_eq!(ok.tag("label"), Some("l1"));
    a.expect(|m| m.command == "900").await;
    a.send("@label=l2 PONG x").await;
    let ack = a.expect(|m| m.command == "ACK").await;
    assert_eq!(ack.tag("label"), Some("l2"));

    // SASL PLAIN before registration, with the account just created.
    let mut b = Client::connect(server.irc).await;
    b.nick = "other".into();
    b.send("CAP LS 302").await;
    b.send("CAP REQ :sasl").await;
    b.expect(|m| m.command == "CAP" && m.param(1) == Some("ACK"))
        .await;
    b.send("NICK other").await;
    b.send("USER other 0 * :Other").await;
    b.send("AUTHENTICATE PLAIN").await;
    b.expect(|m| m.command == "AUTHENTICATE").await;
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD.encode(b"\0acct\0hunter2hunter2");
    b.send(&format!("AUTHENTICATE {blob}")).await;
    let logged = b.expect(|m| m.command == "900").await;
    assert_eq!(logged.param(2), Some("acct"));
    b.expect(|m| m.command == "903").await;
    b.send("CAP END").await;
    b.expect(|m| m.command == "001").await;

    // Wrong password fails.
    let mut c = Client::connect(server.irc).await;
    c.send("CAP REQ :sasl").await;
    c.send("AUTHENTICATE PLAIN").await;
    c.expect(|m| m.command == "AUTHENTICATE").await;
    let blob = base64::engine::general_purpose::STANDARD.encode(b"\0acct\0wrong");
    c.send(&format!("AUTHENTICATE {blob}")).await;
    c.expect(|m| m.command == "904").await;

    // OPER and KILL.
    b.send("KILL acct :no").await;
    b.expect(|m| m.command == "481").await;
    b.send("OPER root wrong").await;
    b.expect(|m| m.command == "464").await;
    b.send("OPER root operpass").await;
    b.expect(|m| m.command == "381").await;
    b.send("KILL acct :bye now").await;
    let err = a.expect_closed().await.unwrap();
    assert!(err.contains("Killed (other (bye now))"), "{err}");
}

#[tokio::test]
async fn admission_control_refuses_with_a_retry_hint() {
    let mut config = test_config();
    config.limits.accepts_per_ip_per_sec = 0.001;
    config.limits.accept_burst = 1;
    let server = start(config).await;
    let _first = Client::register(server.irc, "first").await;
    let mut second = Client::connect(server.irc).await;
    let error = second.expect_closed().await.expect("an ERROR line");
    assert!(error.contains("try again in"), "{error}");
}

#[tokio::test]
async fn flood_control_disconnects_a_flooder() {
    let mut config = test_config();
    config.limits.commands_per_sec = 1.0;
    config.limits.command_burst = 5;
    let server = start(config).await;
    let mut f = Client::connect(server.irc).await;
    let mut lines = String::new();
    for i in 0..50 {
        lines.push_str(&format!("PING {i}\r\n"));
    }
    f.send_raw(lines.as_bytes()).await;
    let error = f.expect_closed().await.unwrap();
    assert!(error.contains("Excess Flood"), "{error}");
}

#[tokio::test]
async fn registration_timeout_closes_idle_connections() {
    let mut config = test_config();
    config.registration_timeout = Duration::from_millis(200);
    let server = start(config).await;
    let mut c = Client::connect(server.irc).await;
    c.send("NICK slow").await;
    let error = c.expect_closed().await.unwrap();
    assert!(error.contains("Registration timed out"), "{error}");
}

#[tokio::test]
async fn no_implicit_names_skips_the_names_burst_on_join() {
    let server = start(test_config()).await;
    let mut plain = Client::register(server.irc, "plain").await;
    plain.send("JOIN #big").await;
    plain.expect(|m| m.command == "366").await;
    let mut quiet =
        Client::register_with_caps(server.irc, "quiet", &["draft/no-implicit-names"]).await;
    quiet.send("JOIN #big").await;
    quiet.expect(|m| m.command == "JOIN").await;
    quiet.sync().await;
    assert!(
        !quiet
            .seen
            .iter()
            .any(|l| l.contains(" 353 ") || l.contains(" 366 ")),
        "no NAMES after JOIN: {:?}",
        quiet.seen
    );
    quiet.send("NAMES #big").await;
    let names = quiet.expect(|m| m.command == "353").await;
    assert!(names.params.last().unwrap().contains("plain"));
}

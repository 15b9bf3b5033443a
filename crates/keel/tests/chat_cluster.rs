//! Several `keel chat serve` nodes on one real Redis: delivery, MONITOR and CHATHISTORY across
//! nodes; a SIGKILLed node's users QUIT for everyone; Redis restarted under running nodes; a
//! nick claimed on two nodes at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use keel_testkit::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Longest wait for any one expected line (a guard against hangs, not a measurement).
const GUARD: Duration = Duration::from_secs(30);

struct Node {
    child: Child,
    irc: String,
}

async fn node(redis: &RedisServer, name: &str, presence_ttl: &str) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "chat",
            "serve",
            "--engine",
            "redis",
            "--redis",
            &redis.url(),
        ])
        .args([
            "--irc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--server-name", name, "--presence-ttl", presence_ttl])
        .env("KEEL_LOG", "info")
        .env("KEEL_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let irc = tokio::time::timeout(GUARD, async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("node exited");
            if let Some(rest) = line.split("IRC on ").nth(1) {
                break rest.split(',').next().unwrap().to_owned();
            }
        }
    })
    .await
    .expect("node banner");
    // Keep draining stderr so the node never blocks on a full pipe; shown when a test fails.
    let tag = name.to_owned();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("[{tag}] {line}");
        }
    });
    Node { child, irc }
}

struct Irc {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    nick: String,
    /// The latest lines read, for failure messages.
    seen: Vec<String>,
}

impl Irc {
    async fn connect(node: &Node, nick: &str, caps: &[&str]) -> Irc {
        let mut c = Irc::open(node).await;
        c.nick = nick.to_owned();
        if !caps.is_empty() {
            c.send(&format!("CAP REQ :{}", caps.join(" "))).await;
            c.expect(|l| l.contains(" ACK ")).await;
            c.send("CAP END").await;
        }
        c.send(&format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}"))
            .await;
        c.expect(|l| l.contains(" 001 ")).await;
        c
    }

    async fn open(node: &Node) -> Irc {
        let stream = TcpStream::connect(&node.irc).await.unwrap();
        let (r, w) = stream.into_split();
        Irc {
            lines: BufReader::new(r).lines(),
            w,
            nick: String::new(),
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads until a line matches (answering PINGs); panics after the guard.
    async fn expect(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let nick = self.nick.clone();
        let result = tokio::time::timeout(GUARD, async {
            loop {
                let Some(line) = self.lines.next_line().await.ok().flatten() else {
                    return Err("connection closed");
                };
                if self.seen.len() >= 20 {
                    self.seen.remove(0);
                }
                self.seen.push(line.clone());
                if let Some(token) = line.strip_prefix("PING ") {
                    self.w
                        .write_all(format!("PONG {token}\r\n").as_bytes())
                        .await
                        .unwrap();
                    continue;
                }
                if pred(&line) {
                    return Ok(line);
                }
            }
        })
        .await;
        match result {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("{nick}: {e}; last lines: {:#?}", self.seen),
            Err(_) => panic!(
                "{nick}: no expected line within {GUARD:?}; last lines: {:#?}",
                self.seen
            ),
        }
    }
}

#[tokio::test]
async fn messages_monitor_and_history_cross_nodes() {
    let redis = RedisServer::start().unwrap();
    let a = node(&redis, "a.test", "30s").await;
    let b = node(&redis, "b.test", "30s").await;

    let mut carol = Irc::connect(&a, "carol", &[]).await;
    carol.send("MONITOR + bob").await;
    carol
        .expect(|l| l.contains(" 731 ") && l.contains("bob"))
        .await;

    let mut alice = Irc::connect(&a, "alice", &[]).await;
    let mut bob = Irc::connect(&b, "bob", &[]).await;
    carol
        .expect(|l| l.contains(" 730 ") && l.contains("bob!"))
        .await;

    alice.send("JOIN #x").await;
    alice.expect(|l| l.contains(" 366 ")).await;
    bob.send("JOIN #x").await;
    bob.expect(|l| l.contains(" 366 ")).await;
    alice
        .expect(|l| l.starts_with(":bob!") && l.contains("JOIN"))
        .await;

    alice.send("PRIVMSG #x :hello from a").await;
    let got = bob.expect(|l| l.contains("PRIVMSG #x")).await;
    assert!(
        got.starts_with(":alice!") && got.ends_with("hello from a"),
        "{got}"
    );

    bob.send("PRIVMSG alice :direct from b").await;
    let got = alice.expect(|l| l.contains("PRIVMSG alice")).await;
    assert!(got.ends_with("direct from b"), "{got}");

    let mut dave = Irc::connect(
        &b,
        "dave",
        &["draft/chathistory", "batch", "server-time", "message-tags"],
    )
    .await;
    dave.send("JOIN #x").await;
    dave.expect(|l| l.contains(" 366 ")).await;
    dave.send("CHATHISTORY LATEST #x * 10").await;
    let line = dave.expect(|l| l.contains("PRIVMSG #x")).await;
    assert!(line.ends_with("hello from a"), "{line}");

    bob.send("QUIT :bye").await;
    alice
        .expect(|l| l.starts_with(":bob!") && l.contains("QUIT"))
        .await;
    carol
        .expect(|l| l.contains(" 731 ") && l.contains("bob"))
        .await;
    drop((a, b));
}

#[tokio::test]
async fn a_killed_nodes_users_quit_for_everyone_within_the_presence_ttl() {
    let redis = RedisServer::start().unwrap();
    let a = node(&redis, "a.test", "2s").await;
    let mut b = node(&redis, "b.test", "2s").await;
    let mut alice = Irc::connect(&a, "alice", &[]).await;
    let mut watcher = Irc::connect(&a, "watcher", &[]).await;
    let mut bob = Irc::connect(&b, "bob", &[]).await;
    watcher.send("MONITOR + bob").await;
    watcher
        .expect(|l| l.contains(" 730 ") && l.contains("bob"))
        .await;
    alice.send("JOIN #x").await;
    alice.expect(|l| l.contains(" 366 ")).await;
    bob.send("JOIN #x").await;
    bob.expect(|l| l.contains(" 366 ")).await;
    alice.expect(|l| l.starts_with(":bob!")).await;

    b.child.start_kill().unwrap(); // SIGKILL: no QUIT is sent by node b
    b.child.wait().await.unwrap();

    let quit = alice
        .expect(|l| l.starts_with(":bob!") && l.contains(" QUIT "))
        .await;
    assert!(quit.contains("node lost"), "{quit}");
    watcher
        .expect(|l| l.contains(" 731 ") && l.contains("bob"))
        .await;
    // The nick is free again, and the channel no longer lists bob.
    let mut bob2 = Irc::connect(&a, "bob", &[]).await;
    bob2.send("NAMES #x").await;
    let names = bob2.expect(|l| l.contains(" 353 ")).await;
    let members = names.split(" #x ").nth(1).unwrap().trim_start_matches(':');
    assert!(
        !members
            .split(' ')
            .any(|m| m.trim_start_matches('@') == "bob"),
        "{names}"
    );
}

#[tokio::test]
async fn nodes_survive_a_redis_restart_without_restarting() {
    let mut redis = RedisServer::start_aof().unwrap();
    let a = node(&redis, "a.test", "5s").await;
    let b = node(&redis, "b.test", "5s").await;
    let mut alice = Irc::connect(&a, "alice", &[]).await;
    let mut bob = Irc::connect(&b, "bob", &[]).await;
    alice.send("JOIN #x").await;
    alice.expect(|l| l.contains(" 366 ")).await;
    bob.send("JOIN #x").await;
    bob.expect(|l| l.contains(" 366 ")).await;
    let mut carol = Irc::connect(&b, "carol", &[]).await;
    carol.send("JOIN #x").await;
    carol.expect(|l| l.contains(" 366 ")).await;

    redis.stop();
    alice
        .expect(|l| l.contains("NOTICE") && l.contains("Network degraded"))
        .await;
    alice.send("PRIVMSG #x :while down").await;
    let fail = alice.expect(|l| l.contains("FAIL")).await;
    assert!(fail.contains("TEMPORARILY_UNAVAILABLE"), "{fail}");

    // carol leaves while Redis is away: her QUIT is announced once it is back.
    carol.send("QUIT :gone during the outage").await;
    drop(carol);

    redis.start_again().unwrap();
    alice
        .expect(|l| l.contains("NOTICE") && l.contains("Network recovered"))
        .await;
    bob.expect(|l| l.contains("NOTICE") && l.contains("Network recovered"))
        .await;
    // A client that is refused retries, as the FAIL asks; the message then reaches bob.
    for attempt in 0.. {
        assert!(
            attempt < 40,
            "the message was refused for 20 s after Redis came back"
        );
        alice.send("PRIVMSG #x :after the restart").await;
        alice.send(&format!("PING :try{attempt}")).await;
        let token = format!("try{attempt}");
        let mut refused = false;
        loop {
            let l = alice
                .expect(|l| l.contains("FAIL") || l.contains("PONG"))
                .await;
            if l.contains("FAIL") {
                refused = true;
            } else if l.ends_with(&token) {
                break;
            }
        }
        if !refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = bob.expect(|l| l.contains("PRIVMSG #x")).await;
    assert!(got.ends_with("after the restart"), "{got}");
    let is_quit = |l: &str| l.starts_with(":carol!") && l.contains(" QUIT ");
    let quit = match alice.seen.iter().find(|l| is_quit(l)) {
        Some(l) => l.clone(), // it came while alice was retrying
        None => alice.expect(is_quit).await,
    };
    assert!(quit.contains("gone during the outage"), "{quit}");
    let _carol_again = Irc::connect(&a, "carol", &[]).await; // the nick is free again
}

#[tokio::test]
async fn a_nick_claimed_on_two_nodes_at_once_goes_to_exactly_one() {
    let redis = RedisServer::start().unwrap();
    let a = node(&redis, "a.test", "30s").await;
    let b = node(&redis, "b.test", "30s").await;
    for round in 0..10 {
        let nick = format!("race{round}");
        let mut x = Irc::open(&a).await;
        let mut y = Irc::open(&b).await;
        x.nick = format!("{nick}@a");
        y.nick = format!("{nick}@b");
        let line = format!("NICK {nick}\r\nUSER u 0 * :u");
        tokio::join!(x.send(&line), y.send(&line));
        let won = |l: &str| l.contains(" 001 ") || l.contains(" 433 ");
        let (rx, ry) = tokio::join!(x.expect(won), y.expect(won));
        let wins = [&rx, &ry].iter().filter(|l| l.contains(" 001 ")).count();
        assert_eq!(wins, 1, "round {round}: {rx} / {ry}");
    }
}

/// Channel messages are delivered from each node's local channel index: a member KICKed by
/// an op on another node leaves its node's index (it gets no later message), and a client
/// with `keel.dev/no-membership` gets messages and KICKs but no JOIN or PART of others.
#[tokio::test]
async fn a_remote_kick_and_no_membership_keep_the_channel_index_right() {
    let redis = RedisServer::start().unwrap();
    let a = node(&redis, "a.test", "30s").await;
    let b = node(&redis, "b.test", "30s").await;

    let mut alice = Irc::connect(&a, "alice", &[]).await;
    alice.send("JOIN #k").await;
    alice.expect(|l| l.contains(" 366 ")).await;
    let mut eve = Irc::connect(&b, "eve", &["keel.dev/no-membership"]).await;
    eve.send("JOIN #k").await;
    eve.expect(|l| l.contains(" 366 ")).await;
    let mut bob = Irc::connect(&b, "bob", &[]).await;
    bob.send("JOIN #k").await;
    bob.expect(|l| l.contains(" 366 ")).await;
    alice
        .expect(|l| l.starts_with(":bob!") && l.contains(" JOIN "))
        .await;

    alice.send("PRIVMSG #k :before kick").await;
    bob.expect(|l| l.contains("PRIVMSG #k :before kick")).await;
    let not_membership = |l: &str| {
        assert!(
            !(l.starts_with(":bob!") && (l.contains(" JOIN ") || l.contains(" PART "))),
            "eve opted out of membership changes: {l}"
        );
    };
    eve.expect(|l| {
        not_membership(l);
        l.contains("PRIVMSG #k :before kick")
    })
    .await;

    alice.send("KICK #k bob :out").await;
    bob.expect(|l| l.contains(" KICK #k bob")).await;
    eve.expect(|l| {
        not_membership(l);
        l.contains(" KICK #k bob")
    })
    .await;
    alice.send("PRIVMSG #k :after kick").await;
    eve.expect(|l| {
        not_membership(l);
        l.contains("PRIVMSG #k :after kick")
    })
    .await;
    // Node b delivered "after" to its index at once (eve has it): had bob still been in it,
    // his copy would be in his queue before this direct message from eve, on the same node.
    eve.send("PRIVMSG bob :marker one").await;
    let next = bob.expect(|l| l.contains(" PRIVMSG ")).await;
    assert!(
        next.ends_with(":marker one"),
        "bob was kicked, yet got: {next}"
    );

    // Rejoining puts him back; a PART takes him out again, and eve never hears of either.
    bob.send("JOIN #k").await;
    bob.expect(|l| l.contains(" 366 ")).await;
    alice.send("PRIVMSG #k :once again").await;
    bob.expect(|l| l.contains("PRIVMSG #k :once again")).await;
    bob.send("PART #k").await;
    bob.expect(|l| l.starts_with(":bob!") && l.contains(" PART #k"))
        .await;
    alice.send("PRIVMSG #k :all gone").await;
    eve.expect(|l| {
        not_membership(l);
        l.contains("PRIVMSG #k :all gone")
    })
    .await;
    eve.send("PRIVMSG bob :marker two").await;
    let next = bob.expect(|l| l.contains(" PRIVMSG ")).await;
    assert!(next.ends_with(":marker two"), "bob parted, yet got: {next}");
}

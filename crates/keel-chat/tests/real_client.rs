//! A real IRC client from Debian's packages (`sic`) against the server.
//! `scripts/install-deps.sh` installs it; without it the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::{start, test_config, Client, GUARD};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[tokio::test]
async fn sic_joins_and_exchanges_messages() {
    if !installed("sic") {
        eprintln!("SKIPPED: sic is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let server = start(test_config()).await;
    let mut rust = Client::register(server.irc, "rusty").await;
    rust.send("JOIN #sic").await;
    rust.expect(|m| m.command == "366").await;
    rust.send("MONITOR + sicuser").await;
    rust.expect(|m| m.command == "731").await;

    let mut sic = Command::new("sic")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.irc.port().to_string(),
            "-n",
            "sicuser",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = sic.stdin.take().unwrap();
    let mut stdout = BufReader::new(sic.stdout.take().unwrap()).lines();

    // sic registered: the MONITOR watcher hears of it.
    let online = rust.expect(|m| m.command == "730").await;
    assert!(online.param(1).unwrap().starts_with("sicuser!"));
    stdin.write_all(b":j #sic\n").await.unwrap();
    rust.expect(|m| {
        m.command == "JOIN"
            && m.source
                .as_deref()
                .is_some_and(|s| s.starts_with("sicuser!"))
    })
    .await;
    stdin.write_all(b":m #sic hello from sic\n").await.unwrap();
    let got = rust.expect(|m| m.command == "PRIVMSG").await;
    assert_eq!(got.params, vec!["#sic", "hello from sic"]);

    rust.send("PRIVMSG #sic :hello sic, from rust").await;
    let seen = tokio::time::timeout(GUARD, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line.contains("hello sic, from rust") {
                return line;
            }
        }
        panic!("sic exited before the message arrived");
    })
    .await
    .expect("sic printed the message");
    assert!(seen.contains("rusty"), "{seen}");

    stdin.write_all(b":QUIT :done\n").await.unwrap();
    let quit = rust.expect(|m| m.command == "QUIT").await;
    assert!(quit.source.as_deref().unwrap().starts_with("sicuser!"));
}

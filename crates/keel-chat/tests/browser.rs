//! The web client at `/`, driven in headless Chromium (Debian's `chromium` package), sends and
//! receives a message through the WebSocket transport. `scripts/install-deps.sh` installs
//! Chromium; without it the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::{start, test_config, Client};
use tokio::process::Command;

fn find(programs: &[&str]) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| programs.iter().map(move |p| dir.join(p)))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn web_client_in_headless_chromium_sends_and_receives() {
    let Some(chromium) = find(&["chromium", "chromium-browser"]) else {
        eprintln!("SKIPPED: chromium is not installed (scripts/install-deps.sh installs it)");
        return;
    };
    let server = start(test_config()).await;
    let mut rust = Client::register(server.irc, "rusty").await;
    rust.send("JOIN #web").await;
    rust.expect(|m| m.command == "366").await;

    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "http://{}/?nick=webby&channel=%23web&say=hello+from+chromium&echo=1",
        server.http
    );
    let _browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The page connects over WebSocket, joins, and types its message.
    let said = rust
        .expect(|m| {
            m.command == "PRIVMSG" && m.source.as_deref().is_some_and(|s| s.starts_with("webby!"))
        })
        .await;
    assert_eq!(said.params, vec!["#web", "hello from chromium"]);
    // It shows what it receives (and who is online); it answers with what it shows.
    rust.send("PRIVMSG #web :hi webby").await;
    let seen = rust
        .expect(|m| m.command == "PRIVMSG" && m.param(1).is_some_and(|t| t.starts_with("seen ")))
        .await;
    assert_eq!(
        seen.param(1),
        Some("seen <rusty> hi webby | online: rusty,webby")
    );
}

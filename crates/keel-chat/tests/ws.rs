//! The WebSocket transport, the web client page and the admin endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start, test_config, Client, GUARD};
use futures::{SinkExt, StreamExt};
use keel_irc_proto::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(http: std::net::SocketAddr, protocol: &str) -> Ws {
    let mut request = format!("ws://{http}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        protocol
    );
    ws
}

async fn ws_send(ws: &mut Ws, line: &str) {
    ws.send(WsMessage::text(line)).await.unwrap();
}

/// Next IRC message; each WebSocket message is exactly one line without CR LF.
async fn ws_expect<F: Fn(&Message) -> bool>(ws: &mut Ws, pred: F) -> Message {
    loop {
        let frame = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("a frame within the guard")
            .expect("stream open")
            .unwrap();
        let data = match frame {
            WsMessage::Text(t) => t.as_str().as_bytes().to_vec(),
            WsMessage::Binary(b) => b.to_vec(),
            _ => continue,
        };
        assert!(
            !data.contains(&b'\n'),
            "a frame holds one line without CR LF"
        );
        let m = Message::parse(&data).unwrap();
        if m.command == "PING" {
            let token = m.param(0).unwrap_or("").to_owned();
            ws_send(ws, &format!("PONG :{token}")).await;
        }
        if pred(&m) {
            return m;
        }
    }
}

#[tokio::test]
async fn websocket_client_talks_to_tcp_client() {
    let server = start(test_config()).await;
    let mut tcp = Client::register(server.irc, "tcpuser").await;
    tcp.send("JOIN #mixed").await;
    tcp.expect(|m| m.command == "366").await;

    let mut ws = ws_connect(server.http, "text.ircv3.net").await;
    ws_send(&mut ws, "CAP LS 302").await;
    ws_send(&mut ws, "CAP REQ :server-time message-tags").await;
    ws_send(&mut ws, "NICK webuser").await;
    ws_send(&mut ws, "USER webuser 0 * :Web User").await;
    ws_send(&mut ws, "CAP END").await;
    ws_expect(&mut ws, |m| m.command == "001").await;
    ws_send(&mut ws, "JOIN #mixed").await;
    ws_expect(&mut ws, |m| m.command == "366").await;
    tcp.expect(|m| m.command == "JOIN").await;

    ws_send(&mut ws, "PRIVMSG #mixed :hello from the browser").await;
    let got = tcp.expect(|m| m.command == "PRIVMSG").await;
    assert_eq!(got.param(1), Some("hello from the browser"));
    assert!(got.source.as_deref().unwrap().starts_with("webuser!"));

    tcp.send("PRIVMSG #mixed :héllo from the terminal").await;
    let got = ws_expect(&mut ws, |m| m.command == "PRIVMSG").await;
    assert_eq!(got.param(1), Some("héllo from the terminal"));
    assert!(got.tag("msgid").is_some() && got.tag("time").is_some());

    ws_send(&mut ws, "QUIT :closing the tab").await;
    let quit = tcp.expect(|m| m.command == "QUIT").await;
    assert_eq!(quit.param(0), Some("Quit: closing the tab"));
}

#[tokio::test]
async fn binary_subprotocol_and_invalid_utf8() {
    let server = start(test_config()).await;
    let mut ws = ws_connect(server.http, "binary.ircv3.net").await;
    ws.send(WsMessage::binary(b"NICK bin".to_vec()))
        .await
        .unwrap();
    ws.send(WsMessage::binary(b"USER bin 0 * :Bin".to_vec()))
        .await
        .unwrap();
    ws_expect(&mut ws, |m| m.command == "001").await;
    ws.send(WsMessage::binary(b"PRIVMSG bin :\xff\xfe".to_vec()))
        .await
        .unwrap();
    let fail = ws_expect(&mut ws, |m| m.command == "FAIL").await;
    assert_eq!(fail.param(1), Some("INVALID_UTF8"));
    ws.send(WsMessage::binary(b"PING :ok".to_vec()))
        .await
        .unwrap();
    ws_expect(&mut ws, |m| m.command == "PONG").await;
}

#[tokio::test]
async fn web_client_and_admin_endpoints() {
    let server = start(test_config()).await;
    let _c = Client::register(server.irc, "metered").await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("http://{}/", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("text.ircv3.net") && body.contains("<script>"));
    for path in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("http://{}{path}", server.http))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let metrics = http
        .get(format!("http://{}/metrics", server.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "keel_chat_connections",
        "keel_chat_registrations_total",
        "keel_chat_messages_in_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

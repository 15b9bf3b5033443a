//! IRC over TLS (rustls, ring provider) when a certificate and key are configured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{start, test_config};
use keel_irc_proto::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn registers_over_tls() {
    let mut config = test_config();
    config.tls_cert = Some(fixture("cert.pem"));
    config.tls_key = Some(fixture("key.pem"));
    let server = start(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("cert.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.irc).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(tls);
    w.write_all(b"NICK secure\r\nUSER secure 0 * :Secure\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = tokio::time::timeout(common::GUARD, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("server closed");
        let m = Message::parse(line.as_bytes()).unwrap();
        if m.command == "001" {
            assert_eq!(m.param(0), Some("secure"));
            break;
        }
    }
}

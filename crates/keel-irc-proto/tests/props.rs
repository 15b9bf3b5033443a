//! Property tests: parse(serialise(m)) == m, and arbitrary bytes never panic.

use bytes::BytesMut;
use keel_irc_proto::{LineFramer, Message, MAX_LINE};
use proptest::prelude::*;

fn tag_key() -> impl Strategy<Value = String> {
    (
        proptest::bool::ANY,
        proptest::option::of("[a-z][a-z0-9.-]{0,8}"),
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,10}",
    )
        .prop_map(|(client, vendor, name)| {
            let mut key = String::new();
            if client {
                key.push('+');
            }
            if let Some(v) = vendor {
                key.push_str(&v);
                key.push('/');
            }
            key.push_str(&name);
            key
        })
}

fn message() -> impl Strategy<Value = Message> {
    let tags = proptest::collection::vec((tag_key(), "[^\u{0}]{0,20}"), 0..4);
    let source = proptest::option::of("[a-zA-Z][a-zA-Z0-9!@.]{0,20}");
    let command = prop_oneof!["[A-Z]{1,10}", "[0-9]{3}"];
    let middle = proptest::collection::vec("[^\u{0}\r\n :][^\u{0}\r\n ]{0,10}", 0..6);
    let trailing = proptest::option::of("[^\u{0}\r\n]{0,40}");
    (tags, source, command, middle, trailing).prop_map(
        |(tags, source, command, middle, trailing)| {
            let mut dedup: Vec<(String, String)> = Vec::new();
            for (k, v) in tags {
                if !dedup.iter().any(|(dk, _)| *dk == k) {
                    dedup.push((k, v));
                }
            }
            let mut params = middle;
            params.extend(trailing);
            Message {
                tags: dedup,
                source,
                command,
                params,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_of_serialise_is_identity(m in message()) {
        let bytes = m.to_bytes();
        let parsed = Message::parse(&bytes).expect("valid message parses");
        prop_assert_eq!(parsed, m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(m) = Message::parse(&bytes) {
            // Whatever parses serialises to something that parses to the same message.
            let again = Message::parse(&m.to_bytes()).expect("reparse");
            prop_assert_eq!(again, m);
        }
    }

    #[test]
    fn framer_bounds_its_buffer(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4096), 0..20)) {
        let mut framer = LineFramer::default();
        let mut buf = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            while let Some(line) = framer.next_line(&mut buf) {
                if let Ok(line) = line {
                    prop_assert!(line.len() < MAX_LINE);
                    let _ = Message::parse(&line);
                }
            }
            prop_assert!(buf.len() < MAX_LINE);
        }
    }
}

//! One IRC message: `[@tags] [:source] COMMAND [params...]`.

use std::fmt;

use crate::{MAX_BODY, MAX_TAGS};

/// Why a line is not a valid IRC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    #[error("tag section longer than {MAX_TAGS} bytes")]
    TagsTooLong,
    #[error("message body longer than {MAX_BODY} bytes")]
    BodyTooLong,
    #[error("missing command")]
    NoCommand,
    #[error("invalid command")]
    BadCommand,
    #[error("invalid tag key")]
    BadTagKey,
}

/// An IRC message. Tag values are stored unescaped; an empty value means "no value".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub tags: Vec<(String, String)>,
    pub source: Option<String>,
    pub command: String,
    pub params: Vec<String>,
}

impl Message {
    /// A message with a command and parameters, no tags and no source.
    pub fn new<C: Into<String>>(command: C, params: Vec<String>) -> Self {
        Self {
            tags: Vec::new(),
            source: None,
            command: command.into(),
            params,
        }
    }

    /// Sets the source (`nick!user@host` or a server name).
    pub fn with_source<S: Into<String>>(mut self, source: S) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds or replaces a tag.
    pub fn with_tag<K: Into<String>, V: Into<String>>(mut self, key: K, value: V) -> Self {
        self.set_tag(key, value);
        self
    }

    /// Adds or replaces a tag.
    pub fn set_tag<K: Into<String>, V: Into<String>>(&mut self, key: K, value: V) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.tags.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.tags.push((key, value));
        }
    }

    /// The value of a tag (empty string for a tag without value), if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parameter `index`, if present.
    pub fn param(&self, index: usize) -> Option<&str> {
        self.params.get(index).map(String::as_str)
    }

    /// Parses one line, with or without its trailing CR LF.
    ///
    /// Limits: the tag section (with `@` and the space after it) may not exceed
    /// [`MAX_TAGS`] bytes and the rest (with CR LF) may not exceed [`MAX_BODY`] bytes.
    pub fn parse(line: &[u8]) -> Result<Message, ParseError> {
        let line = strip_crlf(line);
        let mut rest = line;
        let mut tags = Vec::new();
        if rest.first() == Some(&b'@') {
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            // `end + 1` counts the space after the tags.
            if end + 1 > MAX_TAGS {
                return Err(ParseError::TagsTooLong);
            }
            let raw = std::str::from_utf8(&rest[1..end]).map_err(|_| ParseError::InvalidUtf8)?;
            for item in raw.split(';').filter(|s| !s.is_empty()) {
                let (key, value) = match item.split_once('=') {
                    Some((k, v)) => (k, unescape_tag_value(v)),
                    None => (item, String::new()),
                };
                if !valid_tag_key(key) {
                    return Err(ParseError::BadTagKey);
                }
                if let Some(slot) = tags
                    .iter_mut()
                    .find(|(k, _): &&mut (String, String)| k == key)
                {
                    slot.1 = value;
                } else {
                    tags.push((key.to_owned(), value));
                }
            }
            rest = trim_start_spaces(&rest[end..]);
        }
        if rest.len() + 2 > MAX_BODY {
            return Err(ParseError::BodyTooLong);
        }
        let body = std::str::from_utf8(rest).map_err(|_| ParseError::InvalidUtf8)?;
        if body.contains(['\r', '\n', '\0']) {
            return Err(ParseError::BadCommand);
        }
        let mut body = body.trim_start_matches(' ');
        if body.is_empty() {
            return if tags.is_empty() {
                Err(ParseError::Empty)
            } else {
                Err(ParseError::NoCommand)
            };
        }
        let mut source = None;
        if let Some(after) = body.strip_prefix(':') {
            let (src, more) = after.split_once(' ').unwrap_or((after, ""));
            if src.is_empty() {
                return Err(ParseError::NoCommand);
            }
            source = Some(src.to_owned());
            body = more.trim_start_matches(' ');
        }
        let (command, mut body) = body.split_once(' ').unwrap_or((body, ""));
        if command.is_empty() {
            return Err(ParseError::NoCommand);
        }
        let valid_command = command.bytes().all(|b| b.is_ascii_alphabetic())
            || (command.len() == 3 && command.bytes().all(|b| b.is_ascii_digit()));
        if !valid_command {
            return Err(ParseError::BadCommand);
        }
        let mut params = Vec::new();
        loop {
            body = body.trim_start_matches(' ');
            if body.is_empty() {
                break;
            }
            if let Some(trailing) = body.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            let (param, more) = body.split_once(' ').unwrap_or((body, ""));
            params.push(param.to_owned());
            body = more;
        }
        Ok(Message {
            tags,
            source,
            command: command.to_owned(),
            params,
        })
    }

    /// Serialises the message with a trailing CR LF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64);
        self.write_to(&mut out);
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Serialises the message without the line terminator.
    pub fn write_to(&self, out: &mut String) {
        if !self.tags.is_empty() {
            out.push('@');
            for (i, (key, value)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                out.push_str(key);
                if !value.is_empty() {
                    out.push('=');
                    escape_tag_value_into(value, out);
                }
            }
            out.push(' ');
        }
        if let Some(source) = &self.source {
            out.push(':');
            out.push_str(source);
            out.push(' ');
        }
        out.push_str(&self.command);
        let last = self.params.len().saturating_sub(1);
        for (i, param) in self.params.iter().enumerate() {
            out.push(' ');
            if i == last && (param.is_empty() || param.starts_with(':') || param.contains(' ')) {
                out.push(':');
            }
            out.push_str(param);
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

fn strip_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_start_spaces(mut bytes: &[u8]) -> &[u8] {
    while let Some((&b' ', rest)) = bytes.split_first() {
        bytes = rest;
    }
    bytes
}

fn valid_tag_key(key: &str) -> bool {
    let name = key.strip_prefix('+').unwrap_or(key);
    let name = match name.rsplit_once('/') {
        Some((vendor, name)) => {
            if vendor.is_empty()
                || !vendor
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return false;
            }
            name
        }
        None => name,
    };
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Escapes a tag value per IRCv3 message-tags (`;` `\:`, space `\s`, `\` `\\`, CR `\r`, LF `\n`).
pub fn escape_tag_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_tag_value_into(value, &mut out);
    out
}

fn escape_tag_value_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Unescapes a tag value; an unknown escape drops the backslash, a trailing backslash is dropped.
pub fn unescape_tag_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Case-folds a nick or channel name under `CASEMAPPING=ascii`.
pub fn casefold(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_full_form() {
        let m = Message::parse(b"@id=123AB;rose :nick!ident@host.com PRIVMSG me :Hello there\r\n")
            .unwrap();
        assert_eq!(m.tag("id"), Some("123AB"));
        assert_eq!(m.tag("rose"), Some(""));
        assert_eq!(m.source.as_deref(), Some("nick!ident@host.com"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, vec!["me", "Hello there"]);
    }

    #[test]
    fn parses_tricky_forms() {
        let m = Message::parse(b"CAP   REQ   :sasl message-tags").unwrap();
        assert_eq!(m.params, vec!["REQ", "sasl message-tags"]);
        let m = Message::parse(b"PRIVMSG #c ::-)").unwrap();
        assert_eq!(m.params, vec!["#c", ":-)"]);
        let m = Message::parse(b"PRIVMSG #c :").unwrap();
        assert_eq!(m.params, vec!["#c", ""]);
        let m = Message::parse(b"@a=b\\sc\\:d\\\\e\\x\\ PING").unwrap();
        assert_eq!(m.tag("a"), Some("b c;d\\ex"));
        let m = Message::parse(b"001 nick :Welcome").unwrap();
        assert_eq!(m.command, "001");
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert_eq!(Message::parse(b""), Err(ParseError::Empty));
        assert_eq!(Message::parse(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(
            Message::parse(b"PRIVMSG #c :\xff\xfe"),
            Err(ParseError::InvalidUtf8)
        );
        assert_eq!(Message::parse(b":src"), Err(ParseError::NoCommand));
        assert_eq!(Message::parse(b"PR1V x"), Err(ParseError::BadCommand));
        assert_eq!(Message::parse(b"@=x PING"), Err(ParseError::BadTagKey));
        let long = format!("PRIVMSG #c :{}", "a".repeat(600));
        assert_eq!(
            Message::parse(long.as_bytes()),
            Err(ParseError::BodyTooLong)
        );
        let tags = format!("@a={} PING", "b".repeat(9000));
        assert_eq!(
            Message::parse(tags.as_bytes()),
            Err(ParseError::TagsTooLong)
        );
    }

    #[test]
    fn serialises_trailing_only_when_needed() {
        let m = Message::new("PRIVMSG", vec!["#c".into(), "hi".into()]);
        assert_eq!(m.to_string(), "PRIVMSG #c hi");
        let m = Message::new("PRIVMSG", vec!["#c".into(), "hi there".into()])
            .with_source("n!u@h")
            .with_tag("time", "2024-01-01T00:00:00.000Z")
            .with_tag("x", "a;b c");
        assert_eq!(
            m.to_string(),
            "@time=2024-01-01T00:00:00.000Z;x=a\\:b\\sc :n!u@h PRIVMSG #c :hi there"
        );
        assert_eq!(&m.to_bytes()[m.to_bytes().len() - 2..], b"\r\n");
    }
}

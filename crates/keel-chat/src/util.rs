//! Small helpers: clocks, time formats, masks, message ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2024-01-01T00:00:00.000Z`, the IRCv3 server-time format.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses an IRCv3 server-time timestamp into unix milliseconds.
pub fn parse_time(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// Matches an IRC mask with `*` and `?` wildcards (callers casefold both sides).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Unique, roughly time-ordered message ids.
#[derive(Debug)]
pub struct MsgIds {
    prefix: String,
    seq: AtomicU64,
}

impl Default for MsgIds {
    fn default() -> Self {
        let salt: u32 = rand::random();
        Self {
            prefix: format!("{:x}{:08x}", unix_ms(), salt),
            seq: AtomicU64::new(0),
        }
    }
}

impl MsgIds {
    /// The next id.
    pub fn next(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

/// Valid nickname: a letter or `[]\`_^{|}` first, then those, digits and `-`.
pub fn valid_nick(nick: &str, max: usize) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = nick.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || special(c) => {}
        _ => return false,
    }
    nick.len() <= max && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
}

/// Valid channel name: `#` then no space, comma, BEL or colon.
pub fn valid_channel(name: &str, max: usize) -> bool {
    name.starts_with('#')
        && name.len() > 1
        && name.len() <= max
        && !name.contains([' ', ',', '\x07', ':', '\0', '\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*!*@*", "a!b@c"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a*z", "abc"));
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_700_000_000_123;
        let s = format_time(ms);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time(&s), Some(ms));
    }

    #[test]
    fn nicks_and_channels() {
        assert!(valid_nick("alice", 30));
        assert!(valid_nick("[a]-1", 30));
        assert!(!valid_nick("1abc", 30));
        assert!(!valid_nick("a b", 30));
        assert!(valid_channel("#rust", 50));
        assert!(!valid_channel("rust", 50));
    }
}

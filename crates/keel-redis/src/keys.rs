//! The Redis key layout: `prefix:{tag}:rest`.
//!
//! Everything one Lua script touches shares a `{tag}`, so Redis Cluster puts it in one slot and
//! no script ever fails with CROSSSLOT.

/// Builds keys under one prefix (`KEEL_KEY_PREFIX`, default `keel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix:{tag}:rest`, e.g. `keel:{q:default}:ready`.
    pub fn tagged(&self, tag: &str, rest: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + rest.len() + 4);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(tag);
        key.push_str("}:");
        key.push_str(rest);
        key
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("keel")
    }
}

/// The Redis Cluster slot of `key` (CRC16/XMODEM of the hash tag, modulo 16384).
pub fn cluster_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_layout() {
        assert_eq!(
            Keys::default().tagged("q:default", "ready"),
            "keel:{q:default}:ready"
        );
    }

    #[test]
    fn slots_match_redis_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"user1000")
        );
        assert_eq!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"foo{}{bar}"));
        assert_eq!(
            cluster_slot(Keys::default().tagged("rl:alice", "api").as_bytes()),
            cluster_slot(b"rl:alice")
        );
    }
}

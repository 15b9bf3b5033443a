//! Splits a byte stream into IRC lines, enforcing the line-length limit before buffering.

use bytes::{Buf, BytesMut};

use crate::MAX_LINE;

/// A problem with the framing of the stream (not with the content of a line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line exceeded the limit; its bytes up to the next LF are discarded unbuffered.
    #[error("input line too long")]
    LineTooLong,
}

/// Stateful line splitter. Feed it the connection's read buffer after every read:
/// complete lines come out, a line longer than the limit is reported once and then skipped
/// without ever being held in memory.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line: usize,
    discarding: bool,
}

impl Default for LineFramer {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineFramer {
    /// A framer accepting lines of up to `max_line` bytes including CR LF.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            discarding: false,
        }
    }

    /// True while the rest of an over-long line is being skipped.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Takes the next complete line out of `buf` (without CR LF).
    ///
    /// Returns `None` when more bytes are needed; `buf` then holds at most `max_line` bytes.
    /// Returns `Some(Err(LineTooLong))` once per over-long line.
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Option<Result<BytesMut, FrameError>> {
        loop {
            let newline = buf.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(at) => {
                        buf.advance(at + 1);
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        buf.clear();
                        return None;
                    }
                }
            }
            return match newline {
                Some(at) if at < self.max_line => {
                    let mut line = buf.split_to(at + 1);
                    line.truncate(at);
                    if line.last() == Some(&b'\r') {
                        line.truncate(at - 1);
                    }
                    Some(Ok(line))
                }
                Some(at) => {
                    buf.advance(at + 1);
                    Some(Err(FrameError::LineTooLong))
                }
                None if buf.len() >= self.max_line => {
                    buf.clear();
                    self.discarding = true;
                    Some(Err(FrameError::LineTooLong))
                }
                None => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut f = LineFramer::new(16);
        let mut buf = BytesMut::from(&b"PING a\r\nPING b\nPIN"[..]);
        assert_eq!(f.next_line(&mut buf).unwrap().unwrap(), &b"PING a"[..]);
        assert_eq!(f.next_line(&mut buf).unwrap().unwrap(), &b"PING b"[..]);
        assert!(f.next_line(&mut buf).is_none());
        assert_eq!(buf, &b"PIN"[..]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped_unbuffered() {
        let mut f = LineFramer::new(16);
        let mut buf = BytesMut::from(&[b'x'; 20][..]);
        assert_eq!(f.next_line(&mut buf), Some(Err(FrameError::LineTooLong)));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'x'; 100]);
        assert!(f.next_line(&mut buf).is_none());
        assert!(buf.is_empty());
        buf.extend_from_slice(b"xxx\r\nPING ok\r\n");
        assert_eq!(f.next_line(&mut buf).unwrap().unwrap(), &b"PING ok"[..]);
    }

    #[test]
    fn over_long_complete_line_is_rejected() {
        let mut f = LineFramer::new(8);
        let mut buf = BytesMut::from(&b"0123456789\nPING\n"[..]);
        assert_eq!(f.next_line(&mut buf), Some(Err(FrameError::LineTooLong)));
        assert_eq!(f.next_line(&mut buf).unwrap().unwrap(), &b"PING"[..]);
    }
}

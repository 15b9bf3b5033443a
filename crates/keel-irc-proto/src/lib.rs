//! The IRC wire format: messages and line framing as pure functions over bytes.
//!
//! Follows the Modern IRC documentation (message format, 512-byte body limit) and the IRCv3
//! message-tags specification (tag escaping, 8191-byte tag section).

mod framer;
mod message;

pub use framer::{FrameError, LineFramer};
pub use message::{casefold, escape_tag_value, unescape_tag_value, Message, ParseError};

/// Maximum length of the message body (source, command and parameters) including CRLF.
pub const MAX_BODY: usize = 512;
/// Maximum length of the tag section, including the leading `@` and the trailing space.
pub const MAX_TAGS: usize = 8191;
/// Maximum length of a whole line: tag section plus body (which includes CRLF).
pub const MAX_LINE: usize = MAX_TAGS + MAX_BODY;

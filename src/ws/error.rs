//! Decoding errors and the close codes they map to.

use std::fmt;

/// Close status codes (RFC 6455 §7.4.1) that this server sends.
pub mod close_code {
    /// The purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or close reason was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was violated, e.g. a consumer too slow to keep up with its output.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message exceeded the configured size or fragment limits.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server met a condition that stops it serving this connection.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Whether `code` may appear in a close frame received from a peer.
///
/// 1004–1006 and 1015 are reserved for local use and must never be sent; the other
/// values below 3000 are unassigned; 3000–4999 belong to libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Why the peer's byte stream was rejected. Each variant names the close code the
/// connection must be failed with; the decoder that returned it stays failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A framing rule was broken; the text says which one (close code 1002).
    Protocol(&'static str),
    /// A text message or a close reason was not valid UTF-8 (close code 1007).
    InvalidUtf8,
    /// A message exceeded the byte or fragment limit (close code 1009).
    TooBig,
}

impl WsError {
    /// The close code to send before closing the connection.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close_code::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            WsError::TooBig => close_code::MESSAGE_TOO_BIG,
        }
    }

    /// A short reason suitable for the close frame (well under the 123-byte limit).
    pub fn reason(&self) -> &'static str {
        match self {
            WsError::Protocol(why) => why,
            WsError::InvalidUtf8 => "invalid UTF-8",
            WsError::TooBig => "message too big",
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.close_code())
    }
}

impl std::error::Error for WsError {}

//! RFC 6455 WebSocket transport (sans-IO).
//!
//! Nothing here touches a socket or a clock: the reactor feeds received bytes to a
//! [`Decoder`] and writes the frames built by the encoding functions, so every rule
//! can be tested by driving these types directly, split at any byte.
//!
//! - [`handshake`]: validating an upgrade request and building the `101` response.
//! - [`decoder`]: frame parsing and message assembly, with the limits and UTF-8
//!   checks that decide which close code a misbehaving peer gets.
//! - [`frame`]: server-to-client frame encoding, including a bare header for
//!   broadcasts that share one payload between many recipients.

pub mod decoder;
pub mod error;
pub mod frame;
pub mod handshake;

pub use decoder::{Decoder, Event, Limits};
pub use error::{close_code, is_valid_close_code, WsError};
pub use frame::{
    binary_frame, close_frame, close_frame_without_code, encode_frame, frame_header, ping_frame,
    pong_frame, text_frame, FrameHeader, OpCode,
};
pub use handshake::{accept_key, switching_protocols_response, validate_upgrade, HandshakeError};

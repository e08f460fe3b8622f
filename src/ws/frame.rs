//! The frame layer: parsing client frame headers, unmasking, and encoding server frames.
//!
//! Server frames are never masked (RFC 6455 §5.1), always carry FIN (this server never
//! fragments what it sends), and use the shortest length encoding.

use super::error::WsError;

/// The largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The largest header a server frame needs: 2 fixed bytes plus a 64-bit length.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Frame opcodes defined by RFC 6455 §5.2; the reserved ones are rejected on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A further fragment of the message in progress.
    Continuation,
    /// The first (or only) frame of a UTF-8 text message.
    Text,
    /// The first (or only) frame of a binary message.
    Binary,
    /// Starts the closing handshake.
    Close,
    /// Asks the peer for a pong with the same payload.
    Ping,
    /// Answers a ping, or serves as an unsolicited heartbeat.
    Pong,
}

impl OpCode {
    /// Maps the 4-bit wire value; `None` for the reserved values.
    pub fn from_wire(nibble: u8) -> Option<OpCode> {
        match nibble {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub fn to_wire(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames may interleave with fragments but are themselves never fragmented.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A validated client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientFrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    pub payload_len: u64,
}

/// Parses one client frame header from the start of `input`.
///
/// Returns `Ok(None)` when more bytes are needed. Every rule that the first two bytes
/// can decide is checked before waiting for the rest, so a hostile peer is rejected as
/// early as possible.
pub(crate) fn parse_client_header(
    input: &[u8],
) -> Result<Option<(ClientFrameHeader, usize)>, WsError> {
    let (first, second) = match input {
        [first, second, ..] => (*first, *second),
        _ => return Ok(None),
    };
    let fin = first & 0x80 != 0;
    // No extension is ever negotiated, so no RSV bit has a meaning.
    if first & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_wire(first & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
    if second & 0x80 == 0 {
        return Err(WsError::Protocol("client frame not masked"));
    }
    let short_len = second & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        // 126 and 127 announce an extended length, which a control frame cannot need.
        if usize::from(short_len) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::Protocol("control frame too long"));
        }
    }

    let extended_len_bytes = match short_len {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + extended_len_bytes + 4;
    let Some(header) = input.get(..header_len) else {
        return Ok(None);
    };
    let (length_bytes, mask_bytes) = header[2..].split_at(extended_len_bytes);
    let payload_len = match *length_bytes {
        [] => u64::from(short_len),
        [high, low] => u64::from(u16::from_be_bytes([high, low])),
        [b0, b1, b2, b3, b4, b5, b6, b7] => {
            let len = u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("length has the high bit set"));
            }
            len
        }
        _ => return Err(WsError::Protocol("malformed length")),
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(mask_bytes);
    Ok(Some((
        ClientFrameHeader {
            fin,
            opcode,
            mask,
            payload_len,
        },
        header_len,
    )))
}

/// XORs `data` with the masking key, where `data` starts `offset` bytes into the
/// frame's payload (so a payload that arrives in pieces is unmasked correctly).
///
/// Works a 64-bit word at a time: masking is the hottest loop on the receive path.
///
/// Public only so `benches/micro.rs` can time it apart from the decoder.
#[doc(hidden)]
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let phase = [
        mask[offset % 4],
        mask[(offset + 1) % 4],
        mask[(offset + 2) % 4],
        mask[(offset + 3) % 4],
    ];
    let [m0, m1, m2, m3] = phase;
    let mask_word = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ mask_word).to_ne_bytes());
    }
    // Whole words keep the phase (8 is a multiple of 4), so the tail restarts at it.
    for (byte, mask_byte) in words.into_remainder().iter_mut().zip(phase.iter().cycle()) {
        *byte ^= mask_byte;
    }
}

/// An encoded server frame header, kept apart from its payload so one serialised
/// payload can be shared by every recipient of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    bytes: [u8; MAX_SERVER_HEADER_LEN],
    len: usize,
}

impl FrameHeader {
    /// The header bytes to write before the payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsRef<[u8]> for FrameHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The header of an unmasked, final server frame carrying `payload_len` bytes.
pub fn frame_header(opcode: OpCode, payload_len: usize) -> FrameHeader {
    let mut bytes = [0u8; MAX_SERVER_HEADER_LEN];
    bytes[0] = 0x80 | opcode.to_wire();
    let len = if payload_len <= 125 {
        bytes[1] = payload_len as u8;
        2
    } else if let Ok(len16) = u16::try_from(payload_len) {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    FrameHeader { bytes, len }
}

/// Appends one complete server frame to `out`.
///
/// Control frames must carry at most 125 bytes; the typed helpers below enforce that.
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let header = frame_header(opcode, payload.len());
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

fn single_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(opcode, payload, &mut out);
    out
}

/// A text frame; `payload` must already be UTF-8 (e.g. serialised JSON).
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    single_frame(OpCode::Text, payload)
}

/// A binary frame.
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    single_frame(OpCode::Binary, payload)
}

fn control_payload(payload: &[u8]) -> &[u8] {
    payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
}

/// A ping frame. Payloads over 125 bytes are cut to 125 so the frame stays legal.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    single_frame(OpCode::Ping, control_payload(payload))
}

/// A pong frame echoing a ping's payload. Decoded pings never exceed 125 bytes, so
/// the cut to 125 only guards against misuse.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    single_frame(OpCode::Pong, control_payload(payload))
}

/// A close frame with a status code and a reason, the reason cut on a character
/// boundary so the payload fits the 125-byte control-frame limit.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let max_reason = MAX_CONTROL_PAYLOAD - 2;
    let mut end = reason.len().min(max_reason);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    single_frame(OpCode::Close, &payload[..2 + end])
}

/// A close frame with no status code: the echo owed to a peer whose close frame
/// carried none (RFC 6455 §5.5.1).
pub fn close_frame_without_code() -> Vec<u8> {
    single_frame(OpCode::Close, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmask_matches_the_bytewise_definition_at_every_offset_and_length() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let original: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for offset in 0..8 {
            for len in 0..original.len() {
                let mut data = original[..len].to_vec();
                unmask(&mut data, mask, offset);
                let expected: Vec<u8> = original[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(data, expected, "offset {offset}, length {len}");
            }
        }
    }

    #[test]
    fn header_uses_the_shortest_length_form() {
        assert_eq!(frame_header(OpCode::Text, 0).as_bytes(), &[0x81, 0]);
        assert_eq!(frame_header(OpCode::Text, 125).as_bytes(), &[0x81, 125]);
        assert_eq!(
            frame_header(OpCode::Text, 126).as_bytes(),
            &[0x81, 126, 0, 126]
        );
        assert_eq!(
            frame_header(OpCode::Binary, 65535).as_bytes(),
            &[0x82, 126, 0xFF, 0xFF]
        );
        assert_eq!(
            frame_header(OpCode::Binary, 65536).as_bytes(),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn rfc_256_and_64_kib_binary_headers() {
        assert_eq!(
            frame_header(OpCode::Binary, 256).as_bytes(),
            &[0x82, 0x7E, 0x01, 0x00]
        );
        assert_eq!(
            frame_header(OpCode::Binary, 65536).as_ref(),
            &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn encode_frame_appends_header_then_payload() {
        let mut out = b"queued".to_vec();
        let payload = vec![b'x'; 300];
        encode_frame(OpCode::Text, &payload, &mut out);
        assert_eq!(&out[..6], b"queued");
        assert_eq!(&out[6..10], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(&out[10..], payload.as_slice());
    }

    #[test]
    fn rfc_unmasked_text_and_ping_frames() {
        assert_eq!(
            text_frame(b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            ping_frame(b"Hello"),
            [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            pong_frame(b"Hello"),
            [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(binary_frame(&[1, 2]), [0x82, 0x02, 1, 2]);
    }

    #[test]
    fn control_helpers_never_exceed_125_bytes() {
        let pong = pong_frame(&[9; 200]);
        assert_eq!(&pong[..2], &[0x8a, 125]);
        assert_eq!(pong.len(), 127);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        assert_eq!(
            close_frame(1000, "bye"),
            [0x88, 0x05, 0x03, 0xE8, b'b', b'y', b'e']
        );
        assert_eq!(close_frame_without_code(), [0x88, 0x00]);
    }

    #[test]
    fn close_reason_is_cut_on_a_character_boundary() {
        // 61 two-byte characters are 122 bytes; the 62nd would straddle byte 123.
        let reason = "é".repeat(100);
        let frame = close_frame(1008, &reason);
        let payload_len = usize::from(frame[1]);
        assert!(payload_len <= MAX_CONTROL_PAYLOAD);
        assert_eq!(payload_len, 2 + 122);
        assert_eq!(&frame[2..4], &1008u16.to_be_bytes());
        assert_eq!(
            std::str::from_utf8(&frame[4..]),
            Ok("é".repeat(61).as_str())
        );

        let ascii = "a".repeat(200);
        let frame = close_frame(1001, &ascii);
        assert_eq!(usize::from(frame[1]), 125);
    }
}

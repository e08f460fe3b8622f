//! The WebSocket frame decoder and message assembler.
//!
//! - `Raw`: arbitrary bytes, split at fuzzer-chosen points. Never a panic,
//!   the same events and error however the stream is split, no message over
//!   the limit, at most a partial frame header (13 bytes) left for the
//!   connection to hold, and errors are sticky.
//! - `Frames`: well-delimited frames with fuzzer-chosen header bits,
//!   compared with tungstenite's server-side reader (an independent
//!   implementation) on which streams are valid and what they contain.
//! - `RoundTrip`: whatever our encoder writes, our decoder reads back
//!   identically (after the client-side masking a browser applies), and so
//!   does tungstenite's client-side reader (the unmasked frames as sent).
#![no_main]

#[path = "../common/split.rs"]
mod split;

use std::io::{Cursor, Read, Write};

use arbitrary::{Arbitrary, Unstructured};
use chatroom::ws::{
    binary_frame, close_frame, close_frame_without_code, encode_frame, frame_header,
    is_valid_close_code, ping_frame, pong_frame, text_frame, Decoder, Event, Limits, OpCode,
    WsError,
};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

const RAW_LIMITS: Limits = Limits {
    max_message_bytes: 4096,
    max_fragments: 64,
};

/// tungstenite has no fragment count limit, so the comparison uses one no
/// fuzz input can reach.
const DIFF_LIMITS: Limits = Limits {
    max_message_bytes: 1024,
    max_fragments: usize::MAX,
};

const ROUND_TRIP_LIMITS: Limits = Limits {
    max_message_bytes: 1 << 17,
    max_fragments: 1,
};

#[derive(Arbitrary, Debug)]
enum LengthForm {
    Shortest,
    /// 126 and a 16-bit length, even for a short payload (legal, if odd).
    Sixteen,
    /// 127 and a 64-bit length.
    SixtyFour,
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Bytes(Vec<u8>),
    Text(String),
    Close { code: u16, reason: String },
    Repeated { byte: u8, len: u16 },
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    length: LengthForm,
    payload: Payload,
}

#[derive(Arbitrary, Debug)]
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// Large enough for the 16- and 64-bit length forms.
    Big {
        byte: u8,
        len: u32,
    },
    /// A broadcast: one header, the payload shared.
    Shared(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close {
        code: u16,
        reason: String,
    },
    CloseWithoutCode,
}

// ---------------------------------------------------------------- ours

fn decode(data: &[u8], pieces: &[usize], limits: Limits) -> (Vec<Event>, Option<WsError>) {
    let mut decoder = Decoder::new(limits);
    let fed = split::feed_in_pieces(data, pieces, |input| decoder.decode(input));
    assert!(
        fed.max_held <= 13,
        "the connection was left holding {} bytes",
        fed.max_held
    );
    for event in &fed.events {
        match event {
            Event::Text(text) => assert!(text.len() <= limits.max_message_bytes),
            Event::Binary(bytes) => assert!(bytes.len() <= limits.max_message_bytes),
            Event::Ping(bytes) | Event::Pong(bytes) => assert!(bytes.len() <= 125),
            Event::Close { code, reason } => {
                assert!(code.is_none_or(is_valid_close_code));
                assert!(code.is_some() || reason.is_empty());
                assert!(reason.len() <= 123);
            }
        }
    }
    if let Some(error) = fed.error {
        assert_eq!(decoder.decode(b"\x81\x80"), Err(error), "errors are sticky");
        assert!(matches!(error.close_code(), 1002 | 1007 | 1009));
    } else if matches!(fed.events.last(), Some(Event::Close { .. })) {
        assert!(decoder.is_closed());
    }
    (fed.events, fed.error)
}

// ---------------------------------------------------------- tungstenite

/// A connection whose peer sent `input` and then closed its side; what
/// tungstenite writes back (pongs, the close echo) is discarded.
struct Replay {
    input: Cursor<Vec<u8>>,
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// tungstenite's messages as our events, and whether it failed the stream
/// (`false`: the input merely ran out, or a close ended it).
fn tungstenite_reads(data: &[u8], role: Role, limit: usize) -> (Vec<Event>, bool) {
    // A small read buffer: tungstenite zeroes it per socket, one per input.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let stream = Replay {
        input: Cursor::new(data.to_vec()),
    };
    let mut socket = WebSocket::from_raw_socket(stream, role, Some(config));
    let mut events = Vec::new();
    loop {
        let closed = matches!(events.last(), Some(Event::Close { .. }));
        match socket.read() {
            // After a close both stop reading; what tungstenite makes of
            // bytes behind it (an error) is not a verdict on the stream.
            Err(_) if closed => return (events, false),
            Ok(Message::Text(text)) => events.push(Event::Text(text.as_str().to_owned())),
            Ok(Message::Binary(bytes)) => events.push(Event::Binary(bytes.to_vec())),
            Ok(Message::Ping(bytes)) => events.push(Event::Ping(bytes.to_vec())),
            Ok(Message::Pong(bytes)) => events.push(Event::Pong(bytes.to_vec())),
            Ok(Message::Close(frame)) => events.push(Event::Close {
                code: frame.as_ref().map(|frame| u16::from(frame.code)),
                reason: frame
                    .map(|frame| frame.reason.as_str().to_owned())
                    .unwrap_or_default(),
            }),
            Ok(Message::Frame(_)) => panic!("tungstenite returned a raw frame"),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return (events, false)
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return (events, false),
            Err(_) => return (events, true),
        }
    }
}

// --------------------------------------------------------------- frames

fn payload_bytes(payload: &Payload) -> Vec<u8> {
    match payload {
        Payload::Bytes(bytes) => bytes.clone(),
        Payload::Text(text) => text.as_bytes().to_vec(),
        Payload::Close { code, reason } => {
            let mut bytes = code.to_be_bytes().to_vec();
            bytes.extend_from_slice(reason.as_bytes());
            bytes
        }
        Payload::Repeated { byte, len } => vec![*byte; usize::from(*len) % 2048],
    }
}

fn client_frame(spec: &FrameSpec, out: &mut Vec<u8>) {
    let payload = payload_bytes(&spec.payload);
    let len = payload.len();
    out.push(u8::from(spec.fin) << 7 | (spec.rsv & 0x7) << 4 | (spec.opcode & 0xF));
    let mask_bit = if spec.masked { 0x80 } else { 0 };
    match spec.length {
        LengthForm::Shortest if len <= 125 => out.push(mask_bit | len as u8),
        LengthForm::Shortest | LengthForm::Sixteen if len <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if spec.masked {
        out.extend_from_slice(&spec.mask);
        out.extend(
            payload
                .iter()
                .zip(spec.mask.iter().cycle())
                .map(|(byte, mask)| byte ^ mask),
        );
    } else {
        out.extend_from_slice(&payload);
    }
}

/// Where the two implementations read RFC 6455 alike, they must agree.
///
/// Deliberate differences, each allowed for below:
/// - Close codes: we accept 1000–1003, 1007–1011 and 3000–4999 and fail
///   anything else with 1002 (RFC 6455 §7.4); tungstenite also accepts the
///   later-registered 1012/1013 and, for a code it refuses, does not fail
///   the read but answers with a 1002 close. So where we fail with
///   "invalid close code", tungstenite may hand out that close.
/// - Header-decidable rules (RSV bits, masking, reserved opcodes, control
///   frame length and fragmentation, size limits): we fail on the header,
///   tungstenite after the payload. Every frame here is complete, so the
///   verdict is the same; only the moment differs.
/// - A control frame whose (short) length is written in the 16- or 64-bit
///   form: RFC 6455 §5.2 requires the minimal length encoding, and a
///   control frame can never need an extended one, so we fail it on its
///   second byte; tungstenite reads the length whatever its form.
/// - Fragments per message: we bound them, tungstenite does not; the limit
///   is out of reach here.
/// - The 64-bit length's top bit: we refuse it, tungstenite only refuses it
///   as too big. Not generated here (the length is always honest); the raw
///   mode covers it.
fn compare_with_tungstenite(frames: &[FrameSpec], pieces: &[usize]) {
    let mut stream = Vec::new();
    for spec in frames {
        client_frame(spec, &mut stream);
    }
    let (ours, our_error) = decode(&stream, pieces, DIFF_LIMITS);
    let (theirs, they_failed) =
        tungstenite_reads(&stream, Role::Server, DIFF_LIMITS.max_message_bytes);
    match our_error {
        None => {
            assert!(!they_failed, "tungstenite refused a stream we accept");
            assert_eq!(ours, theirs, "different messages from a valid stream");
        }
        Some(WsError::Protocol("invalid close code")) if !they_failed => {
            assert_eq!(ours.as_slice(), &theirs[..theirs.len().saturating_sub(1)]);
            assert!(matches!(theirs.last(), Some(Event::Close { .. })));
        }
        // We stop at such a frame, tungstenite reads on: whatever it makes
        // of the rest, what we gave out before must be what it gave out.
        Some(_) if frames.iter().any(is_control_in_extended_form) => {
            assert!(ours.len() <= theirs.len(), "we read past tungstenite");
            assert_eq!(ours.as_slice(), &theirs[..ours.len()]);
        }
        Some(error) => {
            assert!(
                they_failed,
                "we refused a stream tungstenite accepts: {error:?}"
            );
            assert_eq!(ours, theirs, "different messages before the failure");
        }
    }
}

fn is_control_in_extended_form(spec: &FrameSpec) -> bool {
    spec.opcode & 0x8 != 0
        && match spec.length {
            LengthForm::Shortest => false,
            LengthForm::Sixteen | LengthForm::SixtyFour => true,
        }
}

// ----------------------------------------------------------- round trip

/// The frame as a client would send it: the same frame, masked.
fn masked(frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let extended = match frame[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + extended;
    let mut out = frame[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        frame[header_len..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    out
}

/// Checks the header our encoder wrote: final, no RSV, unmasked, shortest
/// length form, the length right. Returns the header length.
fn check_server_header(frame: &[u8]) -> usize {
    assert_eq!(frame[0] & 0xF0, 0x80, "FIN set, RSV clear");
    assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
    let (header_len, declared) = match frame[1] {
        126 => (4, u64::from(u16::from_be_bytes([frame[2], frame[3]]))),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&frame[2..10]);
            (10, u64::from_be_bytes(len))
        }
        short => (2, u64::from(short)),
    };
    assert_eq!(
        declared,
        (frame.len() - header_len) as u64,
        "declared length"
    );
    let shortest = match declared {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    assert_eq!(header_len, shortest, "not the shortest length form");
    header_len
}

fn encode(message: &Outgoing) -> (Vec<u8>, Option<Event>) {
    match message {
        Outgoing::Text(text) => (text_frame(text.as_bytes()), Some(Event::Text(text.clone()))),
        Outgoing::Binary(bytes) => (binary_frame(bytes), Some(Event::Binary(bytes.clone()))),
        Outgoing::Big { byte, len } => {
            let payload = vec![*byte; (*len % 70_000) as usize];
            let mut frame = Vec::new();
            encode_frame(OpCode::Binary, &payload, &mut frame);
            (frame, Some(Event::Binary(payload)))
        }
        Outgoing::Shared(text) => {
            let mut frame = frame_header(OpCode::Text, text.len()).as_bytes().to_vec();
            frame.extend_from_slice(text.as_bytes());
            (frame, Some(Event::Text(text.clone())))
        }
        Outgoing::Ping(bytes) => (
            ping_frame(bytes),
            Some(Event::Ping(bytes[..bytes.len().min(125)].to_vec())),
        ),
        Outgoing::Pong(bytes) => (
            pong_frame(bytes),
            Some(Event::Pong(bytes[..bytes.len().min(125)].to_vec())),
        ),
        Outgoing::Close { code, reason } => {
            let frame = close_frame(*code, reason);
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let expected = Event::Close {
                code: Some(*code),
                reason: reason[..end].to_owned(),
            };
            // A code the decoder refuses has no round trip (we never send
            // one); the decoder must then fail the stream.
            (frame, is_valid_close_code(*code).then_some(expected))
        }
        Outgoing::CloseWithoutCode => (
            close_frame_without_code(),
            Some(Event::Close {
                code: None,
                reason: String::new(),
            }),
        ),
    }
}

fn round_trip(messages: &[Outgoing], mask: [u8; 4], pieces: &[usize]) {
    let mut sent = Vec::new();
    let mut client_sent = Vec::new();
    let mut expected = Vec::new();
    let mut invalid_close = false;
    for message in messages {
        let (frame, event) = encode(message);
        check_server_header(&frame);
        sent.extend_from_slice(&frame);
        client_sent.extend_from_slice(&masked(&frame, mask));
        match event {
            Some(event) => {
                let closes = matches!(event, Event::Close { .. });
                expected.push(event);
                if closes {
                    break;
                }
            }
            None => {
                invalid_close = true;
                break;
            }
        }
    }
    let (events, error) = decode(&client_sent, pieces, ROUND_TRIP_LIMITS);
    assert_eq!(events, expected, "our decoder read back something else");
    if invalid_close {
        assert_eq!(error, Some(WsError::Protocol("invalid close code")));
        return;
    }
    assert_eq!(error, None);

    let (theirs, failed) = tungstenite_reads(&sent, Role::Client, 1 << 20);
    assert!(!failed, "tungstenite refused our frames");
    assert_eq!(theirs, expected, "tungstenite read back something else");
}

// Layout: a mode byte (0 raw, 1 frames, 2 round trip, by its value mod
// 3); the raw mode's stream follows in `split::sized_stream`'s layout, so a
// hand-written seed is `\0\0` and the bytes as sent; the other modes are
// read with `arbitrary`.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let (pieces, data) = split::sized_stream(rest);
            let whole = decode(data, &[data.len().max(1)], RAW_LIMITS);
            let split = decode(data, &pieces, RAW_LIMITS);
            assert_eq!(whole, split, "splitting the stream changed the outcome");
        }
        1 => {
            let input = <(Vec<FrameSpec>, Vec<u8>)>::arbitrary_take_rest(Unstructured::new(rest));
            if let Ok((frames, splits)) = input {
                compare_with_tungstenite(&frames, &split::pieces(&splits));
            }
        }
        _ => {
            let input =
                <(Vec<Outgoing>, [u8; 4], Vec<u8>)>::arbitrary_take_rest(Unstructured::new(rest));
            if let Ok((messages, mask, splits)) = input {
                // No split sizes: read it whole (one byte at a time is the
                // raw mode's business, and slow over a 64 KiB frame).
                let pieces = match split::pieces(&splits) {
                    pieces if pieces.is_empty() => vec![usize::MAX],
                    pieces => pieces,
                };
                round_trip(&messages, mask, &pieces);
            }
        }
    }
});

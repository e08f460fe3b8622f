//! Client frame decoding and message assembly.
//!
//! The [`Decoder`] follows the `httparse` contract: it borrows the connection's
//! unconsumed bytes, reports how many it consumed, and never needs them again.
//! Payload bytes are consumed (and unmasked into the message buffer) as they arrive,
//! so only a partial frame *header* — at most 14 bytes — is left for the caller to
//! keep between reads.

use super::error::{is_valid_close_code, WsError};
use super::frame::{parse_client_header, unmask, ClientFrameHeader, OpCode};

/// Bounds on what one peer can make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message, summed over its fragments, in payload bytes.
    pub max_message_bytes: usize,
    /// The most frames one message may be split into. Bounds the per-frame overhead
    /// a peer can cause with floods of tiny (or empty) fragments.
    pub max_fragments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_fragments: 1024,
        }
    }
}

/// What a complete frame or message amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message, reassembled from its fragments.
    Text(String),
    /// A complete binary message, reassembled from its fragments.
    Binary(Vec<u8>),
    /// A ping; the caller owes a pong with the same payload.
    Ping(Vec<u8>),
    /// A pong (solicited or not).
    Pong(Vec<u8>),
    /// The peer started (or answered) the closing handshake. After this event the
    /// decoder discards any further input.
    Close {
        /// The status code, absent when the close frame had an empty payload.
        code: Option<u16>,
        /// The UTF-8 reason; empty when none was given.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
}

/// A data message whose first frame has been seen but whose final frame has not.
#[derive(Debug, Clone, Copy)]
struct OpenMessage {
    kind: MessageKind,
    fragments: usize,
    /// How much of the buffered text is known to be valid UTF-8; what follows is at
    /// most an incomplete code point awaiting its remaining bytes.
    utf8_checked: usize,
}

/// A frame whose header has been parsed and whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    header: ClientFrameHeader,
    received: u64,
}

impl FrameInProgress {
    fn remaining(&self) -> u64 {
        self.header.payload_len - self.received
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    AwaitingHeader,
    ReadingPayload(FrameInProgress),
    Closed,
    Failed(WsError),
}

/// Turns a client's byte stream into [`Event`]s, enforcing RFC 6455 framing rules
/// and the configured [`Limits`].
///
/// Errors are sticky: once `decode` fails, every later call returns the same error,
/// so the caller cannot accidentally keep reading a stream that lost its framing.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    open_message: Option<OpenMessage>,
    /// The unmasked payload of the open data message; handed over (not copied) when
    /// the message completes, so an idle connection holds no buffer.
    message: Vec<u8>,
    /// The unmasked payload of the control frame being read (at most 125 bytes).
    control: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder at the start of a stream, before any frame.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::AwaitingHeader,
            open_message: None,
            message: Vec::new(),
            control: Vec::new(),
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a close frame has been received (later input is discarded).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Consumes bytes from the start of `input` until one event is complete or the
    /// input runs out, and returns how many bytes were consumed with that event.
    ///
    /// `(0, None)` means more bytes are needed (a partial frame header stays
    /// unconsumed). Call again with the unconsumed rest while something was consumed
    /// or an event returned: one call yields at most one event.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), WsError> {
        let mut consumed = 0;
        loop {
            match self.state {
                State::Failed(error) => return Err(error),
                State::Closed => return Ok((input.len(), None)),
                State::AwaitingHeader => {
                    let rest = input.get(consumed..).unwrap_or_default();
                    match parse_client_header(rest) {
                        Err(error) => return Err(self.fail(error)),
                        Ok(None) => return Ok((consumed, None)),
                        Ok(Some((header, header_len))) => {
                            consumed += header_len;
                            if let Err(error) = self.begin_frame(header) {
                                return Err(self.fail(error));
                            }
                        }
                    }
                }
                State::ReadingPayload(mut frame) => {
                    let rest = input.get(consumed..).unwrap_or_default();
                    let take = usize::try_from(frame.remaining())
                        .map_or(rest.len(), |remaining| remaining.min(rest.len()));
                    let chunk = rest.get(..take).unwrap_or_default();
                    consumed += take;
                    let completes_frame = take as u64 == frame.remaining();
                    if let Err(error) = self.absorb_payload(&frame, chunk, completes_frame) {
                        return Err(self.fail(error));
                    }
                    frame.received += take as u64;
                    if !completes_frame {
                        self.state = State::ReadingPayload(frame);
                        return Ok((consumed, None));
                    }
                    self.state = State::AwaitingHeader;
                    match self.finish_frame(&frame.header) {
                        Err(error) => return Err(self.fail(error)),
                        Ok(Some(event)) => {
                            if matches!(event, Event::Close { .. }) {
                                self.state = State::Closed;
                            }
                            return Ok((consumed, Some(event)));
                        }
                        Ok(None) => {}
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: WsError) -> WsError {
        self.state = State::Failed(error);
        self.open_message = None;
        self.message = Vec::new();
        self.control = Vec::new();
        error
    }

    /// Applies the rules that depend on the message in progress, then starts reading
    /// the payload. Limits are checked here, against the declared length, so nothing
    /// is buffered for a frame that could never be accepted.
    fn begin_frame(&mut self, header: ClientFrameHeader) -> Result<(), WsError> {
        let new_kind = match header.opcode {
            OpCode::Text => Some(MessageKind::Text),
            OpCode::Binary => Some(MessageKind::Binary),
            OpCode::Continuation => None,
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                self.control.clear();
                self.state = State::ReadingPayload(FrameInProgress {
                    header,
                    received: 0,
                });
                return Ok(());
            }
        };

        let fragments = match (new_kind, &self.open_message) {
            (Some(_), Some(_)) => {
                return Err(WsError::Protocol(
                    "new message before the last one finished",
                ))
            }
            (None, None) => return Err(WsError::Protocol("continuation without a message")),
            (Some(_), None) => 1,
            (None, Some(open)) => open.fragments.saturating_add(1),
        };
        if fragments > self.limits.max_fragments {
            return Err(WsError::TooBig);
        }
        let buffered = self.message.len() as u64;
        if buffered.saturating_add(header.payload_len) > self.limits.max_message_bytes as u64 {
            return Err(WsError::TooBig);
        }

        match (new_kind, &mut self.open_message) {
            (Some(kind), _) => {
                self.message.clear();
                self.open_message = Some(OpenMessage {
                    kind,
                    fragments,
                    utf8_checked: 0,
                });
            }
            (None, Some(open)) => open.fragments = fragments,
            (None, None) => {}
        }
        self.state = State::ReadingPayload(FrameInProgress {
            header,
            received: 0,
        });
        Ok(())
    }

    /// Unmasks `chunk` into the right buffer and, for text, checks that what has
    /// arrived so far can still begin valid UTF-8.
    fn absorb_payload(
        &mut self,
        frame: &FrameInProgress,
        chunk: &[u8],
        completes_frame: bool,
    ) -> Result<(), WsError> {
        // The phase within the 4-byte mask is all that matters for the offset.
        let mask_phase = (frame.received % 4) as usize;
        if frame.header.opcode.is_control() {
            let start = self.control.len();
            self.control.extend_from_slice(chunk);
            unmask(&mut self.control[start..], frame.header.mask, mask_phase);
            return Ok(());
        }

        let start = self.message.len();
        self.message.extend_from_slice(chunk);
        unmask(&mut self.message[start..], frame.header.mask, mask_phase);

        let Some(open) = &mut self.open_message else {
            return Ok(());
        };
        // The final chunk of a message is validated once, when the whole message is
        // turned into a `String`; checking it here as well would scan it twice.
        let completes_message = completes_frame && frame.header.fin;
        if open.kind == MessageKind::Text && !completes_message {
            let unchecked = self.message.get(open.utf8_checked..).unwrap_or_default();
            match std::str::from_utf8(unchecked) {
                Ok(_) => open.utf8_checked = self.message.len(),
                // No error length means the input merely stops inside a code point
                // that later bytes may still complete.
                Err(error) if error.error_len().is_none() => {
                    open.utf8_checked += error.valid_up_to();
                }
                Err(_) => return Err(WsError::InvalidUtf8),
            }
        }
        Ok(())
    }

    /// Turns a fully received frame into an event, or `None` when it was a non-final
    /// fragment.
    fn finish_frame(&mut self, header: &ClientFrameHeader) -> Result<Option<Event>, WsError> {
        match header.opcode {
            OpCode::Ping => Ok(Some(Event::Ping(std::mem::take(&mut self.control)))),
            OpCode::Pong => Ok(Some(Event::Pong(std::mem::take(&mut self.control)))),
            OpCode::Close => parse_close_payload(&self.control).map(Some),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if !header.fin {
                    return Ok(None);
                }
                let Some(open) = self.open_message.take() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                let payload = std::mem::take(&mut self.message);
                match open.kind {
                    MessageKind::Binary => Ok(Some(Event::Binary(payload))),
                    MessageKind::Text => String::from_utf8(payload)
                        .map(|text| Some(Event::Text(text)))
                        .map_err(|_| WsError::InvalidUtf8),
                }
            }
        }
    }
}

fn parse_close_payload(payload: &[u8]) -> Result<Event, WsError> {
    match payload {
        [] => Ok(Event::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Event::Close {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIN: u8 = 0x80;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONTINUATION: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const RFC_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame with the shortest length encoding.
    fn masked(first_byte: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let len_field = match payload.len() {
            len @ 0..=125 => vec![0x80 | len as u8],
            len @ 126..=0xFFFF => {
                let mut field = vec![0x80 | 126];
                field.extend_from_slice(&(len as u16).to_be_bytes());
                field
            }
            len => {
                let mut field = vec![0x80 | 127];
                field.extend_from_slice(&(len as u64).to_be_bytes());
                field
            }
        };
        masked_with_len_field(first_byte, &len_field, payload, mask)
    }

    fn masked_with_len_field(
        first_byte: u8,
        len_field: &[u8],
        payload: &[u8],
        mask: [u8; 4],
    ) -> Vec<u8> {
        let mut frame = vec![first_byte];
        frame.extend_from_slice(len_field);
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(byte, mask_byte)| byte ^ mask_byte),
        );
        frame
    }

    /// Mimics the reactor: unconsumed bytes wait in a buffer for the next read.
    struct Connection {
        decoder: Decoder,
        pending: Vec<u8>,
        events: Vec<Event>,
    }

    impl Connection {
        fn new(limits: Limits) -> Self {
            Connection {
                decoder: Decoder::new(limits),
                pending: Vec::new(),
                events: Vec::new(),
            }
        }

        fn feed(&mut self, bytes: &[u8]) -> Result<(), WsError> {
            self.pending.extend_from_slice(bytes);
            loop {
                let (consumed, event) = self.decoder.decode(&self.pending)?;
                assert!(consumed <= self.pending.len());
                self.pending.drain(..consumed);
                match event {
                    Some(event) => self.events.push(event),
                    None if consumed == 0 => return Ok(()),
                    None => {}
                }
            }
        }
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Event>, WsError> {
        decode_all_with(Limits::default(), bytes)
    }

    fn decode_all_with(limits: Limits, bytes: &[u8]) -> Result<Vec<Event>, WsError> {
        let mut connection = Connection::new(limits);
        connection.feed(bytes)?;
        Ok(connection.events)
    }

    fn text(value: &str) -> Event {
        Event::Text(value.to_owned())
    }

    #[test]
    fn rfc_unmasked_text_frame_from_client_is_a_protocol_error() {
        let frame = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let error = Decoder::default().decode(&frame).unwrap_err();
        assert_eq!(error, WsError::Protocol("client frame not masked"));
        assert_eq!(error.close_code(), 1002);
    }

    #[test]
    fn rfc_masked_text_frame() {
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&frame), Ok((11, Some(text("Hello")))));
    }

    #[test]
    fn rfc_fragmented_text_message_is_one_event_after_the_final_fragment() {
        let first = masked(TEXT, b"Hel", RFC_MASK);
        let last = masked(FIN | CONTINUATION, b"lo", [1, 2, 3, 4]);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&first), Ok((first.len(), None)));
        assert_eq!(decoder.decode(&last), Ok((last.len(), Some(text("Hello")))));
    }

    #[test]
    fn rfc_masked_pong_and_ping() {
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(decode_all(&pong), Ok(vec![Event::Pong(b"Hello".to_vec())]));
        let ping = masked(FIN | PING, b"Hello", RFC_MASK);
        assert_eq!(decode_all(&ping), Ok(vec![Event::Ping(b"Hello".to_vec())]));
    }

    #[test]
    fn rfc_256_byte_binary_uses_the_16_bit_length() {
        let payload: Vec<u8> = (0..=255).collect();
        let frame = masked(FIN | BINARY, &payload, RFC_MASK);
        assert_eq!(&frame[..4], &[0x82, 0xFE, 0x01, 0x00]);
        assert_eq!(decode_all(&frame), Ok(vec![Event::Binary(payload)]));
    }

    #[test]
    fn rfc_64_kib_binary_uses_the_64_bit_length_and_fits_the_default_limit() {
        let payload: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let frame = masked(FIN | BINARY, &payload, RFC_MASK);
        assert_eq!(&frame[..10], &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(decode_all(&frame), Ok(vec![Event::Binary(payload)]));
    }

    #[test]
    fn non_minimal_length_encodings_are_accepted() {
        let sixteen_bit = masked_with_len_field(FIN | TEXT, &[0xFE, 0, 5], b"Hello", RFC_MASK);
        assert_eq!(decode_all(&sixteen_bit), Ok(vec![text("Hello")]));
        let sixty_four_bit = masked_with_len_field(
            FIN | TEXT,
            &[0xFF, 0, 0, 0, 0, 0, 0, 0, 5],
            b"Hello",
            RFC_MASK,
        );
        assert_eq!(decode_all(&sixty_four_bit), Ok(vec![text("Hello")]));
    }

    /// Fragmented text with "é" and "€" split across fragments, a ping between
    /// fragments, an empty fragment, then binary, pong, text and close frames, each
    /// with its own mask so a wrong mask offset shows.
    fn mixed_stream() -> (Vec<u8>, Vec<Event>) {
        let mut stream = Vec::new();
        stream.extend(masked(TEXT, b"h\xC3", [0x11, 0x22, 0x33, 0x44]));
        stream.extend(masked(
            FIN | PING,
            b"are you there",
            [0xA1, 0xB2, 0xC3, 0xD4],
        ));
        stream.extend(masked(
            CONTINUATION,
            b"\xA9llo w\xE2",
            [0x01, 0x80, 0xFF, 0x7F],
        ));
        stream.extend(masked(CONTINUATION, b"", [9, 8, 7, 6]));
        stream.extend(masked(CONTINUATION, b"\x82", [0x5A, 0xA5, 0x3C, 0xC3]));
        stream.extend(masked(
            FIN | CONTINUATION,
            b"\xACorld",
            [0xDE, 0xAD, 0xBE, 0xEF],
        ));
        let binary: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        stream.extend(masked(FIN | BINARY, &binary, [0x13, 0x57, 0x9B, 0xDF]));
        stream.extend(masked(FIN | PONG, b"", [1, 1, 1, 1]));
        stream.extend(masked(
            FIN | TEXT,
            "naïve ✓".as_bytes(),
            [0xF0, 0x0F, 0xAA, 0x55],
        ));
        let mut close_payload = 1000u16.to_be_bytes().to_vec();
        close_payload.extend_from_slice("bye ⏏".as_bytes());
        stream.extend(masked(
            FIN | CLOSE,
            &close_payload,
            [0x24, 0x68, 0xAC, 0xE0],
        ));
        let expected = vec![
            Event::Ping(b"are you there".to_vec()),
            text("héllo w€orld"),
            Event::Binary(binary),
            Event::Pong(Vec::new()),
            text("naïve ✓"),
            Event::Close {
                code: Some(1000),
                reason: "bye ⏏".to_owned(),
            },
        ];
        (stream, expected)
    }

    #[test]
    fn mixed_stream_decodes_in_one_read() {
        let (stream, expected) = mixed_stream();
        assert_eq!(decode_all(&stream), Ok(expected));
    }

    #[test]
    fn every_pair_of_split_points_yields_the_same_events() {
        let (stream, expected) = mixed_stream();
        for first_split in 0..=stream.len() {
            for second_split in first_split..=stream.len() {
                let mut connection = Connection::new(Limits::default());
                connection.feed(&stream[..first_split]).unwrap();
                connection.feed(&stream[first_split..second_split]).unwrap();
                connection.feed(&stream[second_split..]).unwrap();
                assert_eq!(
                    connection.events, expected,
                    "split at {first_split} and {second_split}"
                );
            }
        }
    }

    #[test]
    fn byte_at_a_time_yields_the_same_events() {
        let (stream, expected) = mixed_stream();
        let mut connection = Connection::new(Limits::default());
        for byte in &stream {
            connection.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(connection.events, expected);
    }

    #[test]
    fn partial_header_is_not_consumed_but_payload_is() {
        let frame = masked(FIN | TEXT, b"Hello", RFC_MASK);
        let mut decoder = Decoder::default();
        for header_prefix in 0..6 {
            assert_eq!(decoder.decode(&frame[..header_prefix]), Ok((0, None)));
        }
        assert_eq!(decoder.decode(&frame[..8]), Ok((8, None)));
        assert_eq!(decoder.decode(&frame[8..]), Ok((3, Some(text("Hello")))));
    }

    #[test]
    fn one_event_per_call_leaves_the_rest_unconsumed() {
        let first = masked(FIN | TEXT, b"one", RFC_MASK);
        let second = masked(FIN | TEXT, b"two", RFC_MASK);
        let stream = [first.clone(), second].concat();
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.decode(&stream),
            Ok((first.len(), Some(text("one"))))
        );
        assert_eq!(
            decoder.decode(&stream[first.len()..]),
            Ok((stream.len() - first.len(), Some(text("two"))))
        );
    }

    fn expect_error(bytes: &[u8], error: WsError, close_code: u16) {
        assert_eq!(decode_all(bytes), Err(error), "bytes {bytes:02x?}");
        assert_eq!(error.close_code(), close_code);
    }

    fn protocol(why: &'static str) -> WsError {
        WsError::Protocol(why)
    }

    #[test]
    fn reserved_bits_are_rejected() {
        for rsv in [0x40, 0x20, 0x10] {
            let frame = masked(FIN | rsv | TEXT, b"x", RFC_MASK);
            expect_error(&frame, protocol("reserved bits set"), 1002);
        }
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let frame = masked(FIN | opcode, b"x", RFC_MASK);
            expect_error(&frame, protocol("unknown opcode"), 1002);
        }
    }

    #[test]
    fn control_frames_over_125_bytes_are_rejected_from_the_first_two_bytes() {
        for opcode in [PING, PONG, CLOSE] {
            let frame = masked(FIN | opcode, &[0; 126], RFC_MASK);
            let mut decoder = Decoder::default();
            assert_eq!(
                decoder.decode(&frame[..2]),
                Err(protocol("control frame too long"))
            );
        }
        let at_limit = masked(FIN | PING, &[7; 125], RFC_MASK);
        assert_eq!(decode_all(&at_limit), Ok(vec![Event::Ping(vec![7; 125])]));
    }

    #[test]
    fn fragmented_control_frames_are_rejected() {
        for opcode in [PING, PONG, CLOSE] {
            let frame = masked(opcode, b"", RFC_MASK);
            expect_error(&frame, protocol("fragmented control frame"), 1002);
        }
    }

    #[test]
    fn continuation_without_a_message_is_rejected() {
        let frame = masked(FIN | CONTINUATION, b"lo", RFC_MASK);
        expect_error(&frame, protocol("continuation without a message"), 1002);
        let after_complete = [
            masked(FIN | TEXT, b"done", RFC_MASK),
            masked(CONTINUATION, b"more", RFC_MASK),
        ]
        .concat();
        expect_error(
            &after_complete,
            protocol("continuation without a message"),
            1002,
        );
    }

    #[test]
    fn new_data_frame_inside_a_fragmented_message_is_rejected() {
        for opcode in [TEXT, BINARY, FIN | TEXT, FIN | BINARY] {
            let stream = [
                masked(TEXT, b"Hel", RFC_MASK),
                masked(opcode, b"lo", RFC_MASK),
            ]
            .concat();
            expect_error(
                &stream,
                protocol("new message before the last one finished"),
                1002,
            );
        }
    }

    #[test]
    fn close_payload_of_one_byte_is_rejected() {
        let frame = masked(FIN | CLOSE, &[0x03], RFC_MASK);
        expect_error(&frame, protocol("close payload of one byte"), 1002);
    }

    fn close_with_code(code: u16) -> Vec<u8> {
        masked(FIN | CLOSE, &code.to_be_bytes(), RFC_MASK)
    }

    #[test]
    fn invalid_close_codes_are_rejected() {
        for code in [
            0, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            expect_error(&close_with_code(code), protocol("invalid close code"), 1002);
        }
    }

    #[test]
    fn valid_close_codes_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999,
        ] {
            let expected = Event::Close {
                code: Some(code),
                reason: String::new(),
            };
            assert_eq!(decode_all(&close_with_code(code)), Ok(vec![expected]));
        }
        let empty = masked(FIN | CLOSE, b"", RFC_MASK);
        let expected = Event::Close {
            code: None,
            reason: String::new(),
        };
        assert_eq!(decode_all(&empty), Ok(vec![expected]));
    }

    #[test]
    fn input_after_close_is_discarded() {
        let stream = [
            masked(FIN | CLOSE, &1000u16.to_be_bytes(), RFC_MASK),
            masked(FIN | TEXT, b"late", RFC_MASK),
        ]
        .concat();
        let mut decoder = Decoder::default();
        let (consumed, event) = decoder.decode(&stream).unwrap();
        assert!(matches!(event, Some(Event::Close { .. })));
        assert!(decoder.is_closed());
        assert_eq!(
            decoder.decode(&stream[consumed..]),
            Ok((stream.len() - consumed, None))
        );
    }

    #[test]
    fn length_with_the_high_bit_set_is_rejected() {
        let frame = masked_with_len_field(
            FIN | BINARY,
            &[0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1],
            b"",
            RFC_MASK,
        );
        expect_error(&frame, protocol("length has the high bit set"), 1002);
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = Decoder::default();
        let bad = masked(FIN | 0x3, b"", RFC_MASK);
        let good = masked(FIN | TEXT, b"fine", RFC_MASK);
        assert_eq!(decoder.decode(&bad), Err(protocol("unknown opcode")));
        assert_eq!(decoder.decode(&good), Err(protocol("unknown opcode")));
        assert_eq!(decoder.decode(&[]), Err(protocol("unknown opcode")));
    }

    #[test]
    fn invalid_utf8_text_is_rejected_with_1007() {
        let frame = masked(FIN | TEXT, b"caf\xC3\x28", RFC_MASK);
        expect_error(&frame, WsError::InvalidUtf8, 1007);
        let surrogate = masked(FIN | TEXT, b"\xED\xA0\x80", RFC_MASK);
        expect_error(&surrogate, WsError::InvalidUtf8, 1007);
    }

    #[test]
    fn text_ending_inside_a_code_point_is_rejected() {
        let single = masked(FIN | TEXT, b"price \xE2\x82", RFC_MASK);
        expect_error(&single, WsError::InvalidUtf8, 1007);
        let fragmented = [
            masked(TEXT, b"price ", RFC_MASK),
            masked(FIN | CONTINUATION, b"\xE2\x82", RFC_MASK),
        ]
        .concat();
        expect_error(&fragmented, WsError::InvalidUtf8, 1007);
    }

    #[test]
    fn binary_messages_are_not_utf8_checked() {
        let frame = masked(FIN | BINARY, b"\xFF\xFE", RFC_MASK);
        assert_eq!(
            decode_all(&frame),
            Ok(vec![Event::Binary(vec![0xFF, 0xFE])])
        );
    }

    #[test]
    fn invalid_utf8_close_reason_is_rejected_with_1007() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bad \xFF");
        expect_error(
            &masked(FIN | CLOSE, &payload, RFC_MASK),
            WsError::InvalidUtf8,
            1007,
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_final_fragment_arrives() {
        let first = masked(TEXT, b"ok \xFF then", RFC_MASK);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&first), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn impossible_prefix_fails_before_the_code_point_completes() {
        // 0xE0 0x80 can begin no code point (it would be an overlong encoding),
        // although a third byte is still "missing".
        let first = masked(TEXT, b"ab\xE0\x80", RFC_MASK);
        assert_eq!(Decoder::default().decode(&first), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_mid_frame_before_the_frame_completes() {
        let frame = masked(FIN | TEXT, b"fine so far \xC0 and then more text", RFC_MASK);
        let mut decoder = Decoder::default();
        let header_len = 6;
        let through_bad_byte = header_len + 13;
        assert_eq!(
            decoder.decode(&frame[..through_bad_byte - 1]),
            Ok((through_bad_byte - 1, None))
        );
        assert_eq!(
            decoder.decode(&frame[through_bad_byte - 1..through_bad_byte]),
            Err(WsError::InvalidUtf8)
        );
    }

    #[test]
    fn code_point_split_across_fragments_and_reads_is_accepted() {
        let first = masked(TEXT, b"\xF0\x9F", RFC_MASK);
        let last = masked(FIN | CONTINUATION, b"\x98\x80!", [4, 3, 2, 1]);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&first), Ok((first.len(), None)));
        assert_eq!(decoder.decode(&last[..7]), Ok((7, None)));
        assert_eq!(decoder.decode(&last[7..]), Ok((2, Some(text("😀!")))));
    }

    #[test]
    fn oversize_declared_length_is_rejected_from_the_header_without_allocating() {
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&RFC_MASK);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&header), Err(WsError::TooBig));
        assert_eq!(WsError::TooBig.close_code(), 1009);
        assert_eq!(decoder.message.capacity(), 0);

        let one_over = masked(FIN | BINARY, &vec![0; 65537], RFC_MASK);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&one_over[..14]), Err(WsError::TooBig));
        assert_eq!(decoder.message.capacity(), 0);
    }

    #[test]
    fn message_size_limit_counts_all_fragments() {
        let limits = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        let exactly = [
            masked(TEXT, b"01234", RFC_MASK),
            masked(FIN | CONTINUATION, b"56789", RFC_MASK),
        ]
        .concat();
        assert_eq!(
            decode_all_with(limits, &exactly),
            Ok(vec![text("0123456789")])
        );
        let over = [
            masked(TEXT, b"01234", RFC_MASK),
            masked(FIN | CONTINUATION, b"56789!", RFC_MASK),
        ]
        .concat();
        assert_eq!(decode_all_with(limits, &over), Err(WsError::TooBig));
    }

    #[test]
    fn fragment_count_limit_includes_empty_fragments() {
        let limits = Limits {
            max_fragments: 3,
            ..Limits::default()
        };
        let three = [
            masked(BINARY, b"", RFC_MASK),
            masked(CONTINUATION, b"", RFC_MASK),
            masked(FIN | CONTINUATION, b"x", RFC_MASK),
        ]
        .concat();
        assert_eq!(
            decode_all_with(limits, &three),
            Ok(vec![Event::Binary(b"x".to_vec())])
        );
        let four = [
            masked(BINARY, b"", RFC_MASK),
            masked(CONTINUATION, b"", RFC_MASK),
            masked(CONTINUATION, b"", RFC_MASK),
            masked(FIN | CONTINUATION, b"x", RFC_MASK),
        ]
        .concat();
        assert_eq!(decode_all_with(limits, &four), Err(WsError::TooBig));
    }

    #[test]
    fn fragment_count_resets_between_messages() {
        let limits = Limits {
            max_fragments: 2,
            ..Limits::default()
        };
        let message = [
            masked(TEXT, b"a", RFC_MASK),
            masked(FIN | CONTINUATION, b"b", RFC_MASK),
        ]
        .concat();
        let stream = [message.clone(), message].concat();
        assert_eq!(
            decode_all_with(limits, &stream),
            Ok(vec![text("ab"), text("ab")])
        );
    }

    #[test]
    fn completed_message_leaves_no_buffer_behind() {
        let mut decoder = Decoder::default();
        let frame = masked(FIN | TEXT, &[b'a'; 1000], RFC_MASK);
        let (_, event) = decoder.decode(&frame).unwrap();
        assert!(matches!(event, Some(Event::Text(_))));
        assert_eq!(decoder.message.capacity(), 0);
    }
}

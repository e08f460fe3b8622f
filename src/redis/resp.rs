//! RESP2, the Redis wire protocol, as a sans-IO codec.
//!
//! Decoding follows httparse's contract: the connection hands over its
//! unconsumed bytes and gets back `Partial` (keep them, call again with
//! more) or `Complete((reply, len))` (drop `len` bytes). Errors are sticky:
//! once the stream is out of step nothing after it can be trusted, so the
//! connection is reset.
//!
//! The values themselves are built by the `redis-protocol` crate, but only
//! after our own scan has walked the reply and bounded it. The crate, on its
//! own, recurses once per nesting level (`*1\r\n` repeated overflows the
//! stack), waits forever for a declared `$99999999999\r\n`, re-parses a
//! partial reply from its first byte on every call, reads a bulk string's
//! two trailing bytes without checking they are CRLF, takes `$+3` as a
//! length, and reads `$-1` and `*-1` as the same null. The scan here
//! refuses all of that before the crate sees a byte: lengths and counts are
//! checked against the limits before anything is allocated or awaited,
//! nesting is bounded, and a slowly arriving reply is looked at once, not
//! once per read. The crate is then handed exactly one complete, valid
//! reply.
//!
//! Commands go out through the crate's encoder. `Reply::encode` is written
//! here instead: fake servers in tests and the fuzz target use it, and being
//! independent of the decoding crate is what lets a round trip check it.

use std::fmt;

use redis_protocol::resp2::decode::decode as crate_decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

/// Bounds on one reply, all checked before allocating or waiting for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Payload of one bulk string; also the longest simple-string or error
    /// line.
    pub max_bulk_bytes: usize,
    /// Values inside one reply, counted at every level of nesting (the
    /// reply itself not included).
    pub max_elements: usize,
    /// Arrays inside arrays: a top-level array is depth 1. Clamped to
    /// [`DEPTH_CEILING`].
    pub max_depth: usize,
    /// One whole reply on the wire, framing included.
    pub max_reply_bytes: usize,
}

/// The deepest nesting any configuration may allow: the crate and our
/// conversion both recurse once per level, so this bounds their stack use.
pub const DEPTH_CEILING: usize = 32;

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_bytes: 1024 * 1024,
            max_elements: 64 * 1024,
            max_depth: 8,
            max_reply_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One RESP2 value, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `+OK`: a status line. Always UTF-8 (Redis only sends ASCII here).
    Simple(String),
    /// `-ERR ...`: the command failed; the connection is fine.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` or, for a missing value, `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` or `*-1` (`None`, e.g. a timed-out blocking pop).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bulk string's bytes, if this is a non-null bulk string.
    pub fn as_bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(bytes)) => Some(bytes),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(value) => Some(*value),
            _ => None,
        }
    }

    /// The elements, if this is a non-null array.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// Whether this is the status `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Simple(status) if status == "OK")
    }

    /// Appends the canonical RESP2 bytes of this value to `out`.
    ///
    /// A simple string or error holding CR or LF cannot be framed; those
    /// bytes are written as spaces rather than producing a broken stream.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => encode_line(b'+', text.as_bytes(), out),
            Reply::Error(text) => encode_line(b'-', text.as_bytes(), out),
            Reply::Integer(value) => {
                out.push(b':');
                out.extend_from_slice(value.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(bytes)) => {
                out.push(b'$');
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                out.push(b'*');
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// The canonical RESP2 bytes of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn encode_line(kind: u8, text: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend(text.iter().map(|&byte| {
        if byte == b'\r' || byte == b'\n' {
            b' '
        } else {
            byte
        }
    }));
    out.extend_from_slice(b"\r\n");
}

/// A command: its name and arguments, each a binary-safe string. Sent as a
/// RESP array of bulk strings, the only form Redis accepts from clients
/// besides inline commands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    /// Every argument's bytes, back to back; `ends` says where each stops.
    /// Two allocations per command, however many arguments.
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Command {
    /// A command with just its name, e.g. `Command::new("GET")`.
    pub fn new(name: &str) -> Self {
        Command::default().arg(name)
    }

    /// Appends one argument.
    pub fn arg(mut self, argument: impl AsRef<[u8]>) -> Self {
        self.push_arg(argument.as_ref());
        self
    }

    /// Appends an integer argument in decimal, as Redis expects numbers.
    pub fn arg_int(self, value: i64) -> Self {
        self.arg(value.to_string())
    }

    /// Appends one argument in place.
    pub fn push_arg(&mut self, argument: &[u8]) {
        self.bytes.extend_from_slice(argument);
        self.ends.push(self.bytes.len());
    }

    /// The arguments, name first.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| self.bytes.get(start..end).unwrap_or_default())
    }

    /// The command name, upper-cased (empty for a command with no words).
    pub fn name_upper(&self) -> String {
        self.args()
            .next()
            .map(|name| String::from_utf8_lossy(name).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Hands the crate's encoder the arguments as frames: on the stack for
    /// the short commands the link sends all the time, so that sending
    /// allocates nothing beyond the transmit buffer.
    fn with_frame<T>(&self, use_frame: impl FnOnce(&BorrowedFrame<'_>) -> T) -> T {
        const ON_STACK: usize = 8;
        if self.ends.len() <= ON_STACK {
            let mut frames: [BorrowedFrame<'_>; ON_STACK] =
                std::array::from_fn(|_| BorrowedFrame::Null);
            for (slot, arg) in frames.iter_mut().zip(self.args()) {
                *slot = BorrowedFrame::BulkString(arg);
            }
            use_frame(&BorrowedFrame::Array(&frames[..self.ends.len()]))
        } else {
            let frames: Vec<BorrowedFrame<'_>> =
                self.args().map(BorrowedFrame::BulkString).collect();
            use_frame(&BorrowedFrame::Array(&frames))
        }
    }

    /// Bytes the command takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.with_frame(|frame| frame.encode_len(false))
    }

    /// Appends the command's wire bytes to `out` (through the crate's
    /// encoder) and returns how many were written.
    pub fn encode(&self, out: &mut Vec<u8>) -> usize {
        self.with_frame(|frame| encode_frame(frame, out))
    }

    /// The command's wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Appends `frame`'s bytes, sized by the crate's own `encode_len`.
fn encode_frame(frame: &BorrowedFrame<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    match encode_borrowed(&mut out[start..], frame, false) {
        Ok(written) => {
            out.truncate(start + written);
            written
        }
        // Only a buffer shorter than encode_len makes the encoder fail, and
        // the buffer was sized from encode_len; should that ever change,
        // send nothing rather than a torn command.
        Err(_) => {
            out.truncate(start);
            0
        }
    }
}

/// The result of a decode step, as in httparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// More bytes are needed; keep the input and call again with more.
    Partial,
    /// A complete value.
    Complete(T),
}

/// A reply the decoder refuses. Every one means the same thing to the
/// caller: the stream cannot be trusted, reset the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP2: an unknown type byte, a bad number, missing CRLF, a line
    /// break inside a line, a status line that is not UTF-8.
    Malformed(&'static str),
    /// A bulk string, simple string or error over `max_bulk_bytes`.
    BulkTooLarge,
    /// More values than `max_elements` in one reply.
    TooManyElements,
    /// Arrays nested deeper than `max_depth`.
    TooDeep,
    /// A reply over `max_reply_bytes`.
    ReplyTooLarge,
    /// The decoding crate refused, or read differently, a reply our scan
    /// accepted: a bug on one side, reported rather than trusted.
    CodecDisagreement,
}

impl RespError {
    pub fn reason(&self) -> &'static str {
        match self {
            RespError::Malformed(reason) => reason,
            RespError::BulkTooLarge => "string over the size limit",
            RespError::TooManyElements => "reply with too many elements",
            RespError::TooDeep => "arrays nested too deep",
            RespError::ReplyTooLarge => "reply over the size limit",
            RespError::CodecDisagreement => "RESP decoder disagreement",
        }
    }
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for RespError {}

/// The longest integer or length line: `-9223372036854775808` is 20 bytes,
/// and no length we could accept is longer.
const MAX_NUMBER_LINE: usize = 20;

/// Incremental decoder for the replies on one connection.
#[derive(Debug)]
pub struct RespDecoder {
    limits: RespLimits,
    scan: Scan,
    /// Sticky: after an error the stream's framing is lost.
    failed: Option<RespError>,
}

/// How far the current reply has been checked, so that a reply arriving in
/// pieces is scanned once (the quadratic re-parse of RUSTSEC-2023-0065 is
/// what the crate alone would do).
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of the reply already checked; the next header line or bulk
    /// payload starts here.
    offset: usize,
    /// Where the search for the CR that ends the current header line
    /// resumes.
    line_searched: usize,
    /// Inside a bulk payload: where it ends, its CRLF included.
    bulk_end: Option<usize>,
    /// Elements still to come in each open array, outermost first; never
    /// longer than the depth limit.
    open_arrays: Vec<usize>,
    /// Elements declared so far in this reply.
    elements: usize,
    /// For each null met so far, in order: whether it was `*-1` (the crate
    /// reads both nulls as one).
    null_is_array: Vec<bool>,
}

impl RespDecoder {
    pub fn new(limits: RespLimits) -> Self {
        RespDecoder {
            limits: RespLimits {
                max_depth: limits.max_depth.min(DEPTH_CEILING),
                ..limits
            },
            scan: Scan::default(),
            failed: None,
        }
    }

    pub fn limits(&self) -> &RespLimits {
        &self.limits
    }

    /// Decodes the first reply in `input`, the connection's unconsumed
    /// bytes. `Partial`: keep `input` and call again once more bytes have
    /// been appended to it. `Complete((reply, len))`: the first `len` bytes
    /// were the reply; drop them before the next call.
    ///
    /// While a reply is incomplete the caller holds at most
    /// `max_reply_bytes + max(max_bulk_bytes, 20) + 2` bytes of it: a
    /// declared length is refused before its bytes are waited for, and a
    /// line before it runs past its limit.
    pub fn decode(&mut self, input: &[u8]) -> Result<Status<(Reply, usize)>, RespError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode_unchecked(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.scan = Scan::default();
        }
        result
    }

    /// Whether an error has stopped this decoder.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn decode_unchecked(&mut self, input: &[u8]) -> Result<Status<(Reply, usize)>, RespError> {
        if input.len() < self.scan.offset {
            // The caller dropped bytes we had checked: start over rather
            // than trust stale state.
            self.scan = Scan::default();
        }
        let Some(len) = self.scan_reply(input)? else {
            return Ok(Status::Partial);
        };
        let reply = self.build(input.get(..len).unwrap_or_default())?;
        self.scan.reset();
        Ok(Status::Complete((reply, len)))
    }

    /// Walks the reply from where the last call stopped; returns its length
    /// once it is complete.
    fn scan_reply(&mut self, input: &[u8]) -> Result<Option<usize>, RespError> {
        let limits = self.limits;
        let scan = &mut self.scan;
        loop {
            if let Some(end) = scan.bulk_end {
                let Some(terminator) = input.get(end - 2..end) else {
                    return Ok(None);
                };
                if terminator != b"\r\n" {
                    return Err(RespError::Malformed("bulk string not followed by CRLF"));
                }
                scan.offset = end;
                scan.bulk_end = None;
                if scan.value_done() {
                    return Ok(Some(scan.offset));
                }
                continue;
            }

            let Some(&kind) = input.get(scan.offset) else {
                return Ok(None);
            };
            let line_limit = match kind {
                b'+' | b'-' => limits.max_bulk_bytes,
                b':' | b'$' | b'*' => MAX_NUMBER_LINE,
                _ => return Err(RespError::Malformed("unknown RESP2 type byte")),
            };
            let line_start = scan.offset + 1;
            // The CR may sit at most `line_limit` bytes after the type byte;
            // nothing past that window is looked at.
            let full_window_end = line_start.saturating_add(line_limit).saturating_add(1);
            let window_end = input.len().min(full_window_end);
            let search_from = scan.line_searched.max(line_start);
            let found = input
                .get(search_from..window_end)
                .and_then(|window| window.iter().position(|&byte| byte == b'\r'));
            let Some(cr) = found.map(|at| search_from + at) else {
                if window_end == full_window_end {
                    return Err(match kind {
                        b'+' | b'-' => RespError::BulkTooLarge,
                        _ => RespError::Malformed("number too long"),
                    });
                }
                scan.line_searched = window_end;
                return Ok(None);
            };
            let Some(&after_cr) = input.get(cr + 1) else {
                scan.line_searched = cr;
                return Ok(None);
            };
            if after_cr != b'\n' {
                return Err(RespError::Malformed("CR not followed by LF"));
            }
            let line = input.get(line_start..cr).unwrap_or_default();
            let line_end = cr + 2;
            if line_end > limits.max_reply_bytes {
                return Err(RespError::ReplyTooLarge);
            }
            scan.offset = line_end;
            scan.line_searched = 0;

            let done = match kind {
                b'+' | b'-' => {
                    if line.contains(&b'\n') {
                        return Err(RespError::Malformed("line feed inside a status line"));
                    }
                    if std::str::from_utf8(line).is_err() {
                        return Err(RespError::Malformed("status line is not UTF-8"));
                    }
                    true
                }
                b':' => {
                    parse_integer(line)?;
                    true
                }
                b'$' => match parse_length(line)? {
                    None => {
                        scan.null_is_array.push(false);
                        true
                    }
                    Some(len) => {
                        if len > limits.max_bulk_bytes as u64 {
                            return Err(RespError::BulkTooLarge);
                        }
                        // len fits in usize: it is at most max_bulk_bytes.
                        let end = line_end
                            .checked_add(len as usize)
                            .and_then(|end| end.checked_add(2))
                            .filter(|&end| end <= limits.max_reply_bytes)
                            .ok_or(RespError::ReplyTooLarge)?;
                        scan.bulk_end = Some(end);
                        false
                    }
                },
                _ => {
                    if scan.open_arrays.len() + 1 > limits.max_depth {
                        return Err(RespError::TooDeep);
                    }
                    match parse_length(line)? {
                        None => {
                            scan.null_is_array.push(true);
                            true
                        }
                        Some(0) => true,
                        Some(count) => {
                            let total = (scan.elements as u64).saturating_add(count);
                            if total > limits.max_elements as u64 {
                                return Err(RespError::TooManyElements);
                            }
                            // Both fit in usize: they are at most max_elements.
                            scan.elements = total as usize;
                            scan.open_arrays.push(count as usize);
                            false
                        }
                    }
                }
            };
            if done && scan.value_done() {
                return Ok(Some(scan.offset));
            }
        }
    }

    /// Has the crate build the value from exactly the bytes the scan
    /// accepted, and makes sure it read them the same way.
    fn build(&self, bytes: &[u8]) -> Result<Reply, RespError> {
        match crate_decode(bytes) {
            Ok(Some((frame, used))) if used == bytes.len() => {
                let mut nulls = self.scan.null_is_array.iter().copied();
                let reply = from_frame(frame, &mut nulls)?;
                if nulls.next().is_some() {
                    return Err(RespError::CodecDisagreement);
                }
                Ok(reply)
            }
            _ => Err(RespError::CodecDisagreement),
        }
    }
}

impl Scan {
    /// Counts one finished value against the arrays it closes; true when
    /// the whole reply is finished.
    fn value_done(&mut self) -> bool {
        while let Some(remaining) = self.open_arrays.last_mut() {
            *remaining -= 1;
            if *remaining > 0 {
                return false;
            }
            // That value finished this array, which is a value of its parent.
            self.open_arrays.pop();
        }
        true
    }

    /// Ready for the next reply, keeping the small buffers.
    fn reset(&mut self) {
        self.offset = 0;
        self.line_searched = 0;
        self.bulk_end = None;
        self.open_arrays.clear();
        self.elements = 0;
        self.null_is_array.clear();
    }
}

/// Converts the crate's frame; recursion is bounded by the depth limit the
/// scan enforced.
fn from_frame(
    frame: OwnedFrame,
    nulls: &mut impl Iterator<Item = bool>,
) -> Result<Reply, RespError> {
    Ok(match frame {
        OwnedFrame::SimpleString(bytes) => {
            Reply::Simple(String::from_utf8(bytes).map_err(|_| RespError::CodecDisagreement)?)
        }
        OwnedFrame::Error(text) => Reply::Error(text),
        OwnedFrame::Integer(value) => Reply::Integer(value),
        OwnedFrame::BulkString(bytes) => Reply::Bulk(Some(bytes)),
        OwnedFrame::Array(frames) => Reply::Array(Some(
            frames
                .into_iter()
                .map(|frame| from_frame(frame, nulls))
                .collect::<Result<_, _>>()?,
        )),
        OwnedFrame::Null => match nulls.next() {
            Some(true) => Reply::Array(None),
            Some(false) => Reply::Bulk(None),
            None => return Err(RespError::CodecDisagreement),
        },
    })
}

/// `:` lines: an optional minus and decimal digits that fit in an i64.
fn parse_integer(line: &[u8]) -> Result<i64, RespError> {
    const BAD: RespError = RespError::Malformed("malformed integer");
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return Err(BAD);
    }
    // Accumulate towards the sign so that i64::MIN parses.
    let mut value: i64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return Err(BAD);
        }
        let digit = i64::from(byte - b'0');
        value = value.checked_mul(10).ok_or(BAD)?;
        value = if negative {
            value.checked_sub(digit)
        } else {
            value.checked_add(digit)
        }
        .ok_or(BAD)?;
    }
    Ok(value)
}

/// `$` and `*` lines: `-1` (null) or decimal digits. A length too large
/// for a u64 saturates; the caller's limit refuses it.
fn parse_length(line: &[u8]) -> Result<Option<u64>, RespError> {
    if line == b"-1" {
        return Ok(None);
    }
    if line.is_empty() || !line.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Malformed("malformed length"));
    }
    Ok(Some(line.iter().fold(0u64, |value, &byte| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(byte - b'0'))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RespLimits = RespLimits {
        max_bulk_bytes: 64,
        max_elements: 16,
        max_depth: 3,
        max_reply_bytes: 512,
    };

    fn bulk(bytes: &[u8]) -> Reply {
        Reply::Bulk(Some(bytes.to_vec()))
    }

    fn array(items: Vec<Reply>) -> Reply {
        Reply::Array(Some(items))
    }

    /// Feeds `stream` in pieces of `piece` bytes the way a connection
    /// would, keeping the unconsumed bytes; returns the replies and the
    /// error that stopped it, plus the most bytes held while waiting.
    fn feed(
        stream: &[u8],
        piece: usize,
        limits: RespLimits,
    ) -> (Vec<Reply>, Option<RespError>, usize) {
        let mut decoder = RespDecoder::new(limits);
        let mut held: Vec<u8> = Vec::new();
        let mut replies = Vec::new();
        let mut max_held = 0;
        for chunk in stream.chunks(piece.max(1)) {
            held.extend_from_slice(chunk);
            loop {
                match decoder.decode(&held) {
                    Ok(Status::Complete((reply, len))) => {
                        assert!(len > 0 && len <= held.len());
                        held.drain(..len);
                        replies.push(reply);
                    }
                    Ok(Status::Partial) => break,
                    Err(error) => {
                        // Sticky.
                        assert_eq!(decoder.decode(b"+OK\r\n"), Err(error.clone()));
                        return (replies, Some(error), max_held);
                    }
                }
            }
            max_held = max_held.max(held.len());
        }
        (replies, None, max_held)
    }

    /// The outcome whole, split at every byte, and in every two-piece split
    /// is the same.
    fn decode_all(stream: &[u8], limits: RespLimits) -> (Vec<Reply>, Option<RespError>) {
        let (replies, error, _) = feed(stream, stream.len(), limits);
        let (by_byte, by_byte_error, _) = feed(stream, 1, limits);
        assert_eq!(
            (&by_byte, &by_byte_error),
            (&replies, &error),
            "byte by byte differs"
        );
        for split in 1..stream.len() {
            let mut decoder = RespDecoder::new(limits);
            let mut held = stream[..split].to_vec();
            let mut got = Vec::new();
            let mut got_error = None;
            let mut fed_rest = false;
            loop {
                match decoder.decode(&held) {
                    Ok(Status::Complete((reply, len))) => {
                        held.drain(..len);
                        got.push(reply);
                    }
                    Ok(Status::Partial) if !fed_rest => {
                        held.extend_from_slice(&stream[split..]);
                        fed_rest = true;
                    }
                    Ok(Status::Partial) => break,
                    Err(error) => {
                        got_error = Some(error);
                        break;
                    }
                }
            }
            assert_eq!(
                (&got, &got_error),
                (&replies, &error),
                "split at {split} differs"
            );
        }
        (replies, error)
    }

    fn decode_one(stream: &[u8]) -> Reply {
        let (mut replies, error) = decode_all(stream, LIMITS);
        assert_eq!(error, None, "{:?}", String::from_utf8_lossy(stream));
        assert_eq!(replies.len(), 1);
        let reply = replies.remove(0);
        // What we decoded, encoded again, decodes the same.
        let (again, again_error) = decode_all(&reply.to_bytes(), LIMITS);
        assert_eq!((again, again_error), (vec![reply.clone()], None));
        reply
    }

    fn decode_error(stream: &[u8]) -> RespError {
        let (_, error) = decode_all(stream, LIMITS);
        error.unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(stream)))
    }

    #[test]
    fn every_reply_type() {
        assert_eq!(decode_one(b"+OK\r\n"), Reply::Simple("OK".into()));
        assert!(decode_one(b"+OK\r\n").is_ok());
        assert_eq!(decode_one(b"+\r\n"), Reply::Simple(String::new()));
        assert_eq!(
            decode_one(b"-ERR unknown command 'FOO'\r\n"),
            Reply::Error("ERR unknown command 'FOO'".into())
        );
        assert_eq!(decode_one(b":0\r\n"), Reply::Integer(0));
        assert_eq!(decode_one(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(
            decode_one(b":9223372036854775807\r\n"),
            Reply::Integer(i64::MAX)
        );
        assert_eq!(
            decode_one(b":-9223372036854775808\r\n"),
            Reply::Integer(i64::MIN)
        );
        assert_eq!(decode_one(b"$3\r\nfoo\r\n"), bulk(b"foo"));
        assert_eq!(decode_one(b"$0\r\n\r\n"), bulk(b""));
        // Binary-safe: CRLF and NUL inside a bulk string are payload.
        assert_eq!(decode_one(b"$4\r\n\r\n\0\xff\r\n"), bulk(b"\r\n\0\xff"));
        assert_eq!(decode_one(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(decode_one(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(decode_one(b"*0\r\n"), array(vec![]));
        assert_eq!(
            decode_one(b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$2\r\nhi\r\n"),
            array(vec![bulk(b"message"), bulk(b"room"), bulk(b"hi")])
        );
        assert_eq!(decode_one(b"$3\r\nfoo\r\n").as_bulk(), Some(&b"foo"[..]));
        assert_eq!(decode_one(b":7\r\n").as_integer(), Some(7));
    }

    #[test]
    fn nested_arrays_and_nulls_keep_their_kind() {
        let reply = decode_one(b"*4\r\n$-1\r\n*-1\r\n*2\r\n:1\r\n*1\r\n$-1\r\n*0\r\n");
        assert_eq!(
            reply,
            array(vec![
                Reply::Bulk(None),
                Reply::Array(None),
                array(vec![Reply::Integer(1), array(vec![Reply::Bulk(None)])]),
                array(vec![]),
            ])
        );
        assert_eq!(reply.as_array().map(<[Reply]>::len), Some(4));
    }

    #[test]
    fn pipelined_replies_come_out_in_order() {
        let stream = b"+OK\r\n$1\r\n1\r\n:2\r\n*1\r\n$-1\r\n-ERR x\r\n";
        let (replies, error) = decode_all(stream, LIMITS);
        assert_eq!(error, None);
        assert_eq!(
            replies,
            vec![
                Reply::Simple("OK".into()),
                bulk(b"1"),
                Reply::Integer(2),
                array(vec![Reply::Bulk(None)]),
                Reply::Error("ERR x".into()),
            ]
        );
    }

    #[test]
    fn oversized_declared_lengths_are_refused_before_their_bytes() {
        // The whole payload never arrives: the header alone is refused.
        assert_eq!(decode_error(b"$99999999999\r\n"), RespError::BulkTooLarge);
        assert_eq!(
            decode_error(b"$99999999999999999999\r\n"),
            RespError::BulkTooLarge
        );
        assert_eq!(decode_error(b"$65\r\n"), RespError::BulkTooLarge);
        assert_eq!(
            decode_one(&[b"$64\r\n", &[b'x'; 64][..], b"\r\n"].concat())
                .as_bulk()
                .map(<[u8]>::len),
            Some(64)
        );
        assert_eq!(
            decode_error(b"*99999999999\r\n"),
            RespError::TooManyElements
        );
        assert_eq!(decode_error(b"*17\r\n"), RespError::TooManyElements);
        // A status line over the string limit, with no CR in sight.
        let long_status = [&b"+"[..], &[b'a'; 65][..]].concat();
        assert_eq!(decode_error(&long_status), RespError::BulkTooLarge);
        // A number line can't be longer than any valid number.
        assert_eq!(
            decode_error(b":1234567890123456789012"),
            RespError::Malformed("number too long")
        );
        // Within each limit, but together over the reply limit.
        let mut many = b"*9\r\n".to_vec();
        for _ in 0..9 {
            many.extend_from_slice(&[b"$60\r\n", &[b'y'; 60][..], b"\r\n"].concat());
        }
        assert_eq!(decode_error(&many), RespError::ReplyTooLarge);
    }

    #[test]
    fn element_count_bombs_are_refused() {
        // 16 elements in all is the limit, counted across levels.
        let mut at_limit = b"*2\r\n*7\r\n".to_vec();
        at_limit.extend_from_slice(&b":1\r\n".repeat(7));
        at_limit.extend_from_slice(b"*7\r\n");
        at_limit.extend_from_slice(&b":1\r\n".repeat(7));
        assert_eq!(
            decode_one(&at_limit).as_array().map(<[Reply]>::len),
            Some(2)
        );
        let mut over = b"*2\r\n*7\r\n".to_vec();
        over.extend_from_slice(&b":1\r\n".repeat(7));
        over.extend_from_slice(b"*8\r\n");
        assert_eq!(decode_error(&over), RespError::TooManyElements);
    }

    #[test]
    fn depth_bombs_are_refused_without_recursion() {
        assert_eq!(
            decode_one(b"*1\r\n*1\r\n*1\r\n:1\r\n"),
            array(vec![array(vec![array(vec![Reply::Integer(1)])])])
        );
        assert_eq!(
            decode_error(b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            RespError::TooDeep
        );
        assert_eq!(
            decode_error(b"*1\r\n*1\r\n*1\r\n*0\r\n"),
            RespError::TooDeep
        );
        // The bomb that overflows the crate's stack on its own.
        let mut bomb = b"*1\r\n".repeat(200_000);
        bomb.extend_from_slice(b":1\r\n");
        let mut decoder = RespDecoder::new(RespLimits::default());
        assert_eq!(decoder.decode(&bomb), Err(RespError::TooDeep));
        // The configured depth cannot pass the ceiling.
        let decoder = RespDecoder::new(RespLimits {
            max_depth: 10_000,
            ..RespLimits::default()
        });
        assert_eq!(decoder.limits().max_depth, DEPTH_CEILING);
    }

    #[test]
    fn malformed_streams_are_refused() {
        for (stream, reason) in [
            (&b"?\r\n"[..], "unknown RESP2 type byte"),
            (b">3\r\n", "unknown RESP2 type byte"),
            (b"+OK\rX", "CR not followed by LF"),
            (b"+O\nK\r\n", "line feed inside a status line"),
            (b"+\xff\r\n", "status line is not UTF-8"),
            (b":\r\n", "malformed integer"),
            (b":-\r\n", "malformed integer"),
            (b":+1\r\n", "malformed integer"),
            (b":1x\r\n", "malformed integer"),
            (b":9223372036854775808\r\n", "malformed integer"),
            (b"$+3\r\nfoo\r\n", "malformed length"),
            (b"$-2\r\n", "malformed length"),
            (b"$\r\n", "malformed length"),
            (b"*-0x\r\n", "malformed length"),
            (b"$3\r\nfooXY", "bulk string not followed by CRLF"),
            (b"$3\r\nfoo\n\r", "bulk string not followed by CRLF"),
        ] {
            assert_eq!(
                decode_error(stream),
                RespError::Malformed(reason),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn a_slow_reply_is_held_within_bounds() {
        let mut stream = b"*3\r\n".to_vec();
        for _ in 0..3 {
            stream.extend_from_slice(&[b"$60\r\n", &[b'z'; 60][..], b"\r\n"].concat());
        }
        let (replies, error, max_held) = feed(&stream, 1, LIMITS);
        assert_eq!((replies.len(), error), (1, None));
        assert!(max_held < stream.len());
        assert!(max_held <= LIMITS.max_reply_bytes + LIMITS.max_bulk_bytes + 2);
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let command = Command::new("SET").arg("key").arg(b"v\r\n\0").arg_int(-5);
        let bytes = command.to_bytes();
        assert_eq!(
            bytes,
            b"*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4\r\nv\r\n\0\r\n$2\r\n-5\r\n"
        );
        assert_eq!(command.encoded_len(), bytes.len());
        assert_eq!(command.name_upper(), "SET");
        let args: Vec<&[u8]> = command.args().collect();
        assert_eq!(args, vec![&b"SET"[..], b"key", b"v\r\n\0", b"-5"]);
        // Our decoder reads what the crate's encoder wrote.
        assert_eq!(
            decode_one(&bytes),
            array(vec![
                bulk(b"SET"),
                bulk(b"key"),
                bulk(b"v\r\n\0"),
                bulk(b"-5")
            ])
        );
        let mut appended = b"prefix".to_vec();
        assert_eq!(command.encode(&mut appended), bytes.len());
        assert_eq!(&appended[6..], &bytes[..]);
        assert_eq!(Command::default().to_bytes(), b"*0\r\n");
    }

    #[test]
    fn status_lines_with_line_breaks_encode_safely() {
        let bytes = Reply::Error("ERR a\r\nb".into()).to_bytes();
        assert_eq!(bytes, b"-ERR a  b\r\n");
    }

    #[test]
    fn a_caller_that_drops_scanned_bytes_starts_over() {
        let mut decoder = RespDecoder::new(LIMITS);
        assert_eq!(decoder.decode(b"*2\r\n$3\r\nfo"), Ok(Status::Partial));
        assert_eq!(
            decoder.decode(b":1\r\n"),
            Ok(Status::Complete((Reply::Integer(1), 4)))
        );
    }
}

//! Sans-IO HTTP/1.1 request parser on top of `httparse`.
//!
//! The connection hands us its unconsumed bytes; we answer with how many we
//! took and at most one event. The head is only consumed once complete, so
//! the caller's buffer is the single copy of a partial head; body bytes are
//! moved into the parser as they arrive, so a pipelined request or an
//! upgraded WebSocket stream always starts at the front of the caller's
//! buffer.
//!
//! Framing is strict on purpose (RFC 9112 §6.3): anything a proxy in front
//! of us could read differently from us is refused with 400 rather than
//! guessed at.

use std::fmt;

use super::response::Response;

/// Limits applied while parsing; every one maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line + headers, in bytes (431 past it).
    pub max_head_bytes: usize,
    /// Number of header fields (431 past it).
    pub max_headers: usize,
    /// Decoded body bytes (413 past it).
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 8 * 1024,
            max_headers: 64,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// One header field; `name` is lower-cased ASCII, `value` is the raw bytes
/// with surrounding whitespace trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A complete request: head plus the de-framed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method token exactly as sent (case-sensitive, e.g. "GET").
    pub method: String,
    /// The request-target as sent, e.g. "/auth/login?user_tel=1".
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in the order received.
    pub headers: Vec<Header>,
    /// The body with any chunked framing removed.
    pub body: Vec<u8>,
}

impl Request {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        // Stored names are lower-case already; ignoring case here only
        // forgives a caller who spelled the name "Content-Type".
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_slice())
    }

    /// The path part of the target (before `?`).
    ///
    /// An absolute-form target (`http://host/p?q`, which RFC 9112 §3.2.2
    /// obliges servers to accept) yields its path, or `/` when it has none.
    pub fn path(&self) -> &str {
        let (path_and_query, absolute) = self.path_and_query();
        let path = match path_and_query.split_once('?') {
            Some((path, _)) => path,
            None => path_and_query,
        };
        if absolute && path.is_empty() {
            "/"
        } else {
            path
        }
    }

    /// The raw query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query()
            .0
            .split_once('?')
            .map(|(_, query)| query)
    }

    /// Whether the connection stays open after the response: HTTP/1.1
    /// unless a `Connection: close` token; HTTP/1.0 only with a
    /// `Connection: keep-alive` token.
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor_version >= 1 || self.has_token("connection", "keep-alive")
    }

    /// Whether any `name` field holds `token` in its comma-separated list
    /// (case-insensitive), as `Connection` and `Upgrade` are read.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .flat_map(|header| list_members(&header.value))
            .any(|member| member.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The target without an absolute-form `scheme://authority` prefix, and
    /// whether there was one.
    fn path_and_query(&self) -> (&str, bool) {
        let target = self.target.as_str();
        for scheme in ["http://", "https://"] {
            let has_scheme = target
                .get(..scheme.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme));
            if has_scheme {
                let after_scheme = &target[scheme.len()..];
                let path_start = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
                return (&after_scheme[path_start..], true);
            }
        }
        (target, false)
    }
}

/// What the parser produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The head is complete, it carried `Expect: 100-continue`, and the body
    /// has not fully arrived: the caller writes `HTTP/1.1 100 Continue` now.
    /// Emitted at most once per request.
    ///
    /// It is emitted for every such request with a non-empty body, even when
    /// the body came in the same read: the event sequence then does not
    /// depend on how the stream was split, and RFC 9110 §10.1.1 allows the
    /// interim response either way.
    ContinueExpected,
    /// A complete request.
    Request(Request),
}

/// A request the parser refuses. After any error the connection is answered
/// with `response()` and closed; the parser stays failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 400: malformed request line or header, smuggling defences
    /// (CL + TE, duplicate/differing/malformed Content-Length, a transfer
    /// coding other than `chunked`, obs-fold), bad chunk framing.
    BadRequest(&'static str),
    /// 431: request line + headers over `max_head_bytes`.
    HeadTooLarge,
    /// 431: more than `max_headers` fields.
    TooManyHeaders,
    /// 413: body over `max_body_bytes`.
    BodyTooLarge,
    /// 505: an HTTP version other than 1.0 / 1.1.
    VersionNotSupported,
    /// 417: an `Expect` value other than `100-continue`.
    ExpectationFailed,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::VersionNotSupported => 505,
            HttpError::ExpectationFailed => 417,
        }
    }

    /// A short human-readable reason, used in the JSON error body.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::BadRequest(reason) => reason,
            HttpError::HeadTooLarge => "request header fields too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::VersionNotSupported => "HTTP version not supported",
            HttpError::ExpectationFailed => "expectation failed",
        }
    }

    /// The `res` string clients match on (docs/http-api.md). It names the
    /// status, so errors that share a status share it; `reason` is the part
    /// that tells them apart.
    pub fn res(&self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "bad request",
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => {
                "request header fields too large"
            }
            HttpError::BodyTooLarge => "payload too large",
            HttpError::VersionNotSupported => "http version not supported",
            HttpError::ExpectationFailed => "expectation failed",
        }
    }

    /// The answer sent before the connection closes: `{"res", "error"}`
    /// with this error's status, counted in metrics under its `res`.
    pub fn response(&self) -> Response {
        Response::res_with_error(self.status(), self.res(), self.reason())
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HttpError {}

/// Chunk extensions carry nothing we use, so they only get enough room for
/// the rare legitimate one; the bound is per request so that a stream of tiny
/// chunks cannot smuggle unbounded framing past the body limit.
const MAX_CHUNK_EXTENSION_BYTES: usize = 4 * 1024;

/// Up to this many header slots live on the stack; larger configured limits
/// fall back to the heap.
const STACK_HEADER_SLOTS: usize = 64;

/// Incremental parser for the requests on one connection.
#[derive(Debug)]
pub struct RequestParser {
    limits: HttpLimits,
    head_scan: HeadScan,
    /// The request whose head is done and whose body is still arriving.
    in_progress: Option<(Request, BodyDecoder)>,
    /// Errors are sticky: once the stream is out of sync nothing after it can
    /// be trusted.
    failed: Option<HttpError>,
}

impl RequestParser {
    pub fn new(limits: HttpLimits) -> Self {
        RequestParser {
            limits,
            head_scan: HeadScan::default(),
            in_progress: None,
            failed: None,
        }
    }

    /// Parses from `input`, the connection's unconsumed bytes. Returns how
    /// many bytes of `input` were consumed and at most one event. A partial
    /// head is not consumed (0, None): the caller keeps the bytes and calls
    /// again with them plus whatever arrives next. Body bytes are consumed as
    /// they arrive and kept by the parser until the request is complete.
    pub fn parse(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.parse_unchecked(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.in_progress = None;
        }
        result
    }

    /// True while a request's body is partly received (the head is done).
    pub fn in_body(&self) -> bool {
        self.in_progress.is_some()
    }

    fn parse_unchecked(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), HttpError> {
        let mut consumed = 0;
        if self.in_progress.is_none() {
            let Some(head_len) = self.head_scan.find_end(input, self.limits.max_head_bytes)? else {
                return Ok((0, None));
            };
            self.head_scan = HeadScan::default();
            let head = parse_head(&input[..head_len], &self.limits)?;
            consumed = head_len;
            let Some(decoder) = head.body else {
                return Ok((consumed, Some(Event::Request(head.request))));
            };
            self.in_progress = Some((head.request, decoder));
            if head.expects_continue {
                return Ok((consumed, Some(Event::ContinueExpected)));
            }
        }

        let Some((request, decoder)) = self.in_progress.as_mut() else {
            return Ok((consumed, None));
        };
        let rest = &input[consumed..];
        let (used, complete) = decoder.decode(rest, &mut request.body, &self.limits)?;
        consumed += used;
        if !complete {
            return Ok((consumed, None));
        }
        match self.in_progress.take() {
            Some((request, _)) => Ok((consumed, Some(Event::Request(request)))),
            None => Ok((consumed, None)),
        }
    }
}

/// Where the search for the blank line that ends the head stopped, so that
/// every byte of a slowly arriving head is looked at once rather than once
/// per read (the quadratic re-parse of RUSTSEC-2023-0065).
///
/// It also enforces what httparse is lenient about: every line ends in
/// CRLF (a bare LF or lone CR is a classic smuggling vector when a proxy
/// reads it differently), and no line continues the previous one (obs-fold).
#[derive(Debug, Clone, Copy)]
struct HeadScan {
    scanned: usize,
    after_cr: bool,
    at_line_start: bool,
    /// Still inside the empty lines RFC 9112 §2.2 lets us skip before the
    /// request line.
    in_leading_empty_lines: bool,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            scanned: 0,
            after_cr: false,
            at_line_start: true,
            in_leading_empty_lines: true,
        }
    }
}

impl HeadScan {
    /// Returns the length of the head (leading empty lines included) once
    /// `input` holds all of it.
    fn find_end(
        &mut self,
        input: &[u8],
        max_head_bytes: usize,
    ) -> Result<Option<usize>, HttpError> {
        if input.len() < self.scanned {
            // The caller broke the contract by dropping bytes we had seen;
            // start over rather than trust stale state.
            *self = HeadScan::default();
        }
        // Nothing past the limit can belong to an acceptable head.
        let scan_end = input.len().min(max_head_bytes);
        let new_bytes = input.get(self.scanned..scan_end).unwrap_or_default();
        let mut offset = 0;
        while offset < new_bytes.len() {
            if !self.at_line_start && !self.after_cr {
                offset += first_line_break(&new_bytes[offset..]);
            }
            let Some(&byte) = new_bytes.get(offset) else {
                break;
            };
            offset += 1;
            if self.after_cr {
                if byte != b'\n' {
                    return Err(HttpError::BadRequest("CR without LF in request head"));
                }
                self.after_cr = false;
                if self.at_line_start && !self.in_leading_empty_lines {
                    return Ok(Some(self.scanned + offset));
                }
                self.at_line_start = true;
                continue;
            }
            match byte {
                b'\r' => self.after_cr = true,
                b'\n' => return Err(HttpError::BadRequest("bare LF in request head")),
                b' ' | b'\t' if self.at_line_start && !self.in_leading_empty_lines => {
                    return Err(HttpError::BadRequest("obsolete line folding"));
                }
                _ => {
                    self.at_line_start = false;
                    self.in_leading_empty_lines = false;
                }
            }
        }
        self.scanned = scan_end;
        if input.len() > max_head_bytes {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(None)
    }
}

/// The index of the first CR or LF in `bytes`, or its length if none.
///
/// Looks at a word at a time: most of a head is line content that only
/// needs skipping.
fn first_line_break(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const CRS: u64 = u64::from_le_bytes([b'\r'; 8]);
    const LFS: u64 = u64::from_le_bytes([b'\n'; 8]);
    // Sets the high bit of each zero byte; a borrow can mark a byte above a
    // real zero byte too, but never one below it, so the lowest mark is exact.
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;

    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let Ok(array) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(array);
        let marks = zero_bytes(word ^ CRS) | zero_bytes(word ^ LFS);
        if marks != 0 {
            // Little-endian load: the lowest mark is the earliest byte.
            return offset + (marks.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    let tail = chunks.remainder();
    offset
        + tail
            .iter()
            .position(|&byte| byte == b'\r' || byte == b'\n')
            .unwrap_or(tail.len())
}

/// A parsed head and how its body is framed (`None`: no body).
struct Head {
    request: Request,
    body: Option<BodyDecoder>,
    expects_continue: bool,
}

/// Runs httparse over a head known to be complete and CRLF-clean, then
/// applies the framing rules.
fn parse_head(head: &[u8], limits: &HttpLimits) -> Result<Head, HttpError> {
    let mut stack_slots = [httparse::EMPTY_HEADER; STACK_HEADER_SLOTS];
    let mut heap_slots = Vec::new();
    let slots: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADER_SLOTS {
        &mut stack_slots[..limits.max_headers]
    } else {
        heap_slots.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut heap_slots
    };

    let mut parsed = httparse::Request::new(slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        // The scan found the blank line, so httparse must agree on where the
        // head ends; anything else means we disagree about the syntax.
        Ok(_) => return Err(HttpError::BadRequest("malformed request head")),
        Err(error) => return Err(map_httparse_error(error, head)),
    }
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::BadRequest("malformed request line"));
    };

    let framing = Framing::from_headers(parsed.headers, minor_version)?;
    let body = match framing.body_length {
        BodyLength::Chunked => Some(BodyDecoder::Chunked(ChunkedDecoder::default())),
        BodyLength::Fixed(0) => None,
        BodyLength::Fixed(length) => {
            if length > u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX) {
                return Err(HttpError::BodyTooLarge);
            }
            Some(BodyDecoder::Fixed { remaining: length })
        }
    };

    let headers = parsed
        .headers
        .iter()
        .map(|header| Header {
            name: header.name.to_ascii_lowercase(),
            value: trim_whitespace(header.value).to_vec(),
        })
        .collect();
    Ok(Head {
        request: Request {
            method: method.to_owned(),
            target: target.to_owned(),
            minor_version,
            headers,
            body: Vec::new(),
        },
        expects_continue: framing.expects_continue && body.is_some(),
        body,
    })
}

fn map_httparse_error(error: httparse::Error, head: &[u8]) -> HttpError {
    match error {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version if names_http_version(request_line_version(head)) => {
            HttpError::VersionNotSupported
        }
        httparse::Error::Version => HttpError::BadRequest("malformed HTTP version"),
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::Token | httparse::Error::NewLine | httparse::Error::Status => {
            HttpError::BadRequest("malformed request line")
        }
    }
}

/// The last space-separated word of the request line, where the version is.
fn request_line_version(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&byte| byte != b'\r' && byte != b'\n')
        .unwrap_or(head.len());
    let line = &head[start..];
    let line = match line.iter().position(|&byte| byte == b'\r') {
        Some(end) => &line[..end],
        None => line,
    };
    match line.iter().rposition(|&byte| byte == b' ') {
        Some(space) => &line[space + 1..],
        None => line,
    }
}

/// A syntactically valid HTTP-version (RFC 9112 §2.3) that merely is not one
/// we speak deserves 505; anything else is just malformed.
fn names_http_version(word: &[u8]) -> bool {
    matches!(word, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

enum BodyLength {
    Fixed(u64),
    Chunked,
}

struct Framing {
    body_length: BodyLength,
    expects_continue: bool,
}

impl Framing {
    fn from_headers(
        headers: &[httparse::Header<'_>],
        minor_version: u8,
    ) -> Result<Framing, HttpError> {
        let mut content_length: Option<u64> = None;
        let mut transfer_encoding: Option<&[u8]> = None;
        let mut host_seen = false;
        let mut expects_continue = false;
        let mut unknown_expectation = false;

        for header in headers {
            let name = header.name;
            let value = trim_whitespace(header.value);
            if name.eq_ignore_ascii_case("content-length") {
                // Even a repeated identical value is refused: being strict
                // costs honest clients nothing and leaves no room for a proxy
                // that picks the other one.
                if content_length.is_some() {
                    return Err(HttpError::BadRequest("multiple Content-Length headers"));
                }
                content_length = Some(parse_content_length(value)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if transfer_encoding.is_some() {
                    return Err(HttpError::BadRequest("multiple Transfer-Encoding headers"));
                }
                transfer_encoding = Some(value);
            } else if name.eq_ignore_ascii_case("host") {
                // RFC 9112 §3.2: two Host lines make the target authority
                // ambiguous.
                if host_seen {
                    return Err(HttpError::BadRequest("multiple Host headers"));
                }
                host_seen = true;
            } else if name.eq_ignore_ascii_case("expect") {
                for member in list_members(value) {
                    if member.eq_ignore_ascii_case(b"100-continue") {
                        expects_continue = true;
                    } else {
                        unknown_expectation = true;
                    }
                }
            }
        }

        let body_length = match (transfer_encoding, content_length) {
            (Some(_), Some(_)) => {
                return Err(HttpError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            (Some(_), None) if minor_version == 0 => {
                // RFC 9112 §6.1: 1.0 has no chunked framing, so a 1.0 message
                // carrying it was made to be read two ways.
                return Err(HttpError::BadRequest(
                    "Transfer-Encoding in HTTP/1.0 request",
                ));
            }
            (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => BodyLength::Chunked,
            (Some(_), None) => return Err(HttpError::BadRequest("unsupported transfer coding")),
            (None, Some(length)) => BodyLength::Fixed(length),
            (None, None) => BodyLength::Fixed(0),
        };

        // RFC 9110 §10.1.1: a 1.0 client cannot understand 100 or 417, so its
        // expectations are ignored.
        if minor_version == 0 {
            expects_continue = false;
        } else if unknown_expectation {
            return Err(HttpError::ExpectationFailed);
        }
        Ok(Framing {
            body_length,
            expects_continue,
        })
    }
}

/// `Content-Length = 1*DIGIT`, nothing else: no sign, list, or padding.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    const INVALID: HttpError = HttpError::BadRequest("invalid Content-Length");
    if value.is_empty() {
        return Err(INVALID);
    }
    value.iter().try_fold(0u64, |length, &byte| {
        if !byte.is_ascii_digit() {
            return Err(INVALID);
        }
        length
            .checked_mul(10)
            .and_then(|length| length.checked_add(u64::from(byte - b'0')))
            .ok_or(INVALID)
    })
}

fn trim_whitespace(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The non-empty members of a comma-separated field value, trimmed.
fn list_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(trim_whitespace)
        .filter(|member| !member.is_empty())
}

#[derive(Debug)]
enum BodyDecoder {
    Fixed { remaining: u64 },
    Chunked(ChunkedDecoder),
}

impl BodyDecoder {
    /// Moves body bytes from `input` into `body`; returns how many bytes were
    /// used and whether the body is complete.
    fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &HttpLimits,
    ) -> Result<(usize, bool), HttpError> {
        match self {
            BodyDecoder::Fixed { remaining } => {
                let take = clamp_to_len(*remaining, input.len());
                body.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                Ok((take, *remaining == 0))
            }
            BodyDecoder::Chunked(decoder) => decoder.decode(input, body, limits),
        }
    }
}

/// `min(wanted, available)` without a lossy cast on 32-bit targets.
fn clamp_to_len(wanted: u64, available: usize) -> usize {
    usize::try_from(wanted).map_or(available, |wanted| wanted.min(available))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex digits of a chunk-size.
    Size,
    /// Whitespace after the size, before `;` or CR.
    AfterSize,
    /// Skipping a chunk extension up to the CR.
    Extension,
    /// CR seen at the end of a chunk-size line.
    SizeLineLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer field or the final CRLF.
    TrailerLineStart,
    TrailerLine,
    TrailerLineLf,
    FinalLf,
    Done,
}

#[derive(Debug)]
struct ChunkedDecoder {
    state: ChunkState,
    /// The chunk-size being read, then the data still owed for that chunk.
    chunk_size: u64,
    size_digits: u8,
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            chunk_size: 0,
            size_digits: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &HttpLimits,
    ) -> Result<(usize, bool), HttpError> {
        let mut position = 0;
        while position < input.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                // Data is the bulk of the stream: copy it in one go.
                let take = clamp_to_len(self.chunk_size, input.len() - position);
                body.extend_from_slice(&input[position..position + take]);
                position += take;
                self.chunk_size -= take as u64;
                if self.chunk_size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            self.step(input[position], body.len(), limits)?;
            position += 1;
        }
        Ok((position, self.state == ChunkState::Done))
    }

    /// Advances the framing state machine by one byte outside chunk data.
    fn step(&mut self, byte: u8, body_len: usize, limits: &HttpLimits) -> Result<(), HttpError> {
        use ChunkState::*;
        self.state = match (self.state, byte) {
            (Size, _) if byte.is_ascii_hexdigit() => {
                // 16 hex digits fill a u64, so the digit count alone rules out
                // overflow (hyper's CVE-2021-32714 was a wrapping chunk size).
                if self.size_digits >= 16 {
                    return Err(HttpError::BadRequest("chunk size too long"));
                }
                self.size_digits += 1;
                self.chunk_size = (self.chunk_size << 4) | u64::from(hex_value(byte));
                // The size only grows with more digits, so the limit can be
                // enforced before the line is even finished.
                let max_body = u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX);
                let announced_total = (body_len as u64).saturating_add(self.chunk_size);
                if announced_total > max_body {
                    return Err(HttpError::BodyTooLarge);
                }
                Size
            }
            (Size, _) if self.size_digits == 0 => {
                return Err(HttpError::BadRequest("invalid chunk size"));
            }
            (Size | AfterSize, b' ' | b'\t') => AfterSize,
            (Size | AfterSize, b';') => Extension,
            (Size | AfterSize | Extension, b'\r') => SizeLineLf,
            (Size | AfterSize, _) => return Err(HttpError::BadRequest("invalid chunk size")),
            (Extension, _) if is_forbidden_control(byte) => {
                return Err(HttpError::BadRequest("invalid chunk extension"));
            }
            (Extension, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes > MAX_CHUNK_EXTENSION_BYTES {
                    return Err(HttpError::BadRequest("chunk extensions too long"));
                }
                Extension
            }
            (SizeLineLf, b'\n') => {
                self.size_digits = 0;
                if self.chunk_size == 0 {
                    TrailerLineStart
                } else {
                    Data
                }
            }
            (SizeLineLf, _) => return Err(HttpError::BadRequest("invalid chunk size line")),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => {
                return Err(HttpError::BadRequest("missing CRLF after chunk data"));
            }
            (TrailerLineStart, b'\r') => FinalLf,
            (TrailerLineStart, _) if is_token_byte(byte) => {
                self.count_trailer_byte(limits)?;
                TrailerLine
            }
            (TrailerLineStart, _) => return Err(HttpError::BadRequest("invalid trailer field")),
            (TrailerLine, b'\r') => TrailerLineLf,
            (TrailerLine, _) if is_forbidden_control(byte) => {
                return Err(HttpError::BadRequest("invalid trailer field"));
            }
            (TrailerLine, _) => {
                self.count_trailer_byte(limits)?;
                TrailerLine
            }
            (TrailerLineLf, b'\n') => TrailerLineStart,
            (FinalLf, b'\n') => Done,
            (TrailerLineLf | FinalLf, _) => {
                return Err(HttpError::BadRequest("invalid trailer section"));
            }
            // `decode` copies data itself and stops at Done; reaching here
            // would be a bug, and refusing is safer than guessing.
            (Data | Done, _) => return Err(HttpError::BadRequest("invalid chunked body")),
        };
        Ok(())
    }

    /// Trailers are discarded, but they still cost parse time, so they share
    /// the head's size limit.
    fn count_trailer_byte(&mut self, limits: &HttpLimits) -> Result<(), HttpError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

/// Control bytes (other than HTAB) have no place in a field or extension; a
/// bare LF among them is what lets a lenient reader see a different line.
fn is_forbidden_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// RFC 9110 §5.6.2 tchar.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a parser produced from a byte stream.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        events: Vec<Event>,
        error: Option<HttpError>,
        /// Bytes the parser left for the caller (a partial head, or what
        /// follows an upgrade).
        unconsumed: Vec<u8>,
    }

    /// Drives a parser the way the reactor does: append each piece to the
    /// connection buffer, then parse until nothing more happens.
    fn feed_pieces(limits: HttpLimits, pieces: &[&[u8]]) -> Outcome {
        let mut parser = RequestParser::new(limits);
        let mut buffer = Vec::new();
        let mut events = Vec::new();
        for piece in pieces {
            buffer.extend_from_slice(piece);
            loop {
                match parser.parse(&buffer) {
                    Ok((consumed, event)) => {
                        assert!(consumed <= buffer.len(), "consumed more than given");
                        buffer.drain(..consumed);
                        let progressed = consumed > 0 || event.is_some();
                        events.extend(event);
                        if !progressed {
                            break;
                        }
                    }
                    Err(error) => {
                        assert_eq!(parser.parse(&buffer), Err(error.clone()), "not sticky");
                        // What is left in the buffer on error depends on
                        // how the bytes arrived, and the caller only closes
                        // the connection, so it is not compared.
                        return Outcome {
                            events,
                            error: Some(error),
                            unconsumed: Vec::new(),
                        };
                    }
                }
            }
        }
        Outcome {
            events,
            error: None,
            unconsumed: buffer,
        }
    }

    fn feed(stream: &[u8]) -> Outcome {
        feed_pieces(HttpLimits::default(), &[stream])
    }

    fn requests(outcome: &Outcome) -> Vec<&Request> {
        outcome
            .events
            .iter()
            .filter_map(|event| match event {
                Event::Request(request) => Some(request),
                Event::ContinueExpected => None,
            })
            .collect()
    }

    fn only_request(stream: &[u8]) -> Request {
        let outcome = feed(stream);
        assert_eq!(outcome.error, None, "{outcome:?}");
        assert!(outcome.unconsumed.is_empty(), "{outcome:?}");
        match outcome.events.as_slice() {
            [Event::Request(request)] => request.clone(),
            other => panic!("expected one request, got {other:?}"),
        }
    }

    fn error_of(stream: &[u8]) -> HttpError {
        error_with(HttpLimits::default(), stream)
    }

    fn error_with(limits: HttpLimits, stream: &[u8]) -> HttpError {
        match feed_pieces(limits, &[stream]).error {
            Some(error) => error,
            None => panic!("accepted: {:?}", String::from_utf8_lossy(stream)),
        }
    }

    fn assert_bad_request(stream: &[u8]) {
        match error_of(stream) {
            HttpError::BadRequest(_) => {}
            other => panic!(
                "{:?}: expected 400, got {other:?}",
                String::from_utf8_lossy(stream)
            ),
        }
    }

    /// Feeds `stream` whole, split at every point, and byte by byte, and
    /// requires the same outcome every time.
    fn assert_split_invariant(limits: HttpLimits, stream: &[u8]) -> Outcome {
        let whole = feed_pieces(limits, &[stream]);
        for split in 0..=stream.len() {
            let (first, second) = stream.split_at(split);
            assert_eq!(
                feed_pieces(limits, &[first, second]),
                whole,
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_pieces(limits, &bytes), whole, "byte at a time");
        whole
    }

    const PIPELINE: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;name=value\r\nabc\r\n1\r\nd\r\n0\r\nTrailer-One: x\r\n\r\n\
        PUT /d HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz\
        POST /e HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n\
        2\r\nhi\r\n0\r\n\r\n\
        GET /f HTTP/1.0\r\nConnection: close\r\n\r\n";

    #[test]
    fn simple_get() {
        let stream = b"GET /auth/login?user_tel=1&x=2 HTTP/1.1\r\nHost: example\r\nX-Thing:  padded \t\r\n\r\n";
        let mut parser = RequestParser::new(HttpLimits::default());
        let (consumed, event) = parser.parse(stream).unwrap();
        assert_eq!(consumed, stream.len());
        let Some(Event::Request(request)) = event else {
            panic!("no request: {event:?}");
        };
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/auth/login?user_tel=1&x=2");
        assert_eq!(request.path(), "/auth/login");
        assert_eq!(request.query(), Some("user_tel=1&x=2"));
        assert_eq!(request.minor_version, 1);
        assert_eq!(request.header("host"), Some(&b"example"[..]));
        assert_eq!(request.header("x-thing"), Some(&b"padded"[..]));
        assert_eq!(request.header("X-Thing"), Some(&b"padded"[..]));
        assert_eq!(request.headers[1].name, "x-thing");
        assert_eq!(request.header("missing"), None);
        assert!(request.body.is_empty());
        assert!(request.keep_alive());
        assert!(!parser.in_body());
        assert_eq!(parser.parse(b"").unwrap(), (0, None));
    }

    #[test]
    fn path_and_query_forms() {
        let target = |target: &str| Request {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers: Vec::new(),
            body: Vec::new(),
        };
        assert_eq!(target("/p").query(), None);
        assert_eq!(target("/p?").query(), Some(""));
        assert_eq!(target("/p?a?b").path(), "/p");
        assert_eq!(target("/p?a?b").query(), Some("a?b"));
        assert_eq!(target("http://host:5000/x/y?q=1").path(), "/x/y");
        assert_eq!(target("HTTP://host/x?q=1").query(), Some("q=1"));
        assert_eq!(target("https://host").path(), "/");
        assert_eq!(target("http://host?q").path(), "/");
        assert_eq!(target("http://host?q").query(), Some("q"));
        assert_eq!(target("*").path(), "*");
    }

    #[test]
    fn post_with_content_length() {
        let request =
            only_request(b"POST /auth/register HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!(request.method, "POST");
        assert_eq!(request.body, b"hello world");
    }

    #[test]
    fn content_length_body_arriving_later_is_consumed_as_it_comes() {
        let mut parser = RequestParser::new(HttpLimits::default());
        let head = b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nab";
        assert_eq!(parser.parse(head).unwrap(), (head.len(), None));
        assert!(parser.in_body());
        assert_eq!(parser.parse(b"cd").unwrap(), (2, None));
        let (consumed, event) = parser.parse(b"efGET").unwrap();
        assert_eq!(consumed, 2, "must stop exactly at the end of the body");
        let Some(Event::Request(request)) = event else {
            panic!("{event:?}");
        };
        assert_eq!(request.body, b"abcdef");
        assert!(!parser.in_body());
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let first = b"GET /1 HTTP/1.1\r\n\r\n";
        let second = b"POST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        let third = b"GET /3 HTTP/1.1\r\n\r\n";
        let stream = [&first[..], second, third].concat();
        let mut parser = RequestParser::new(HttpLimits::default());
        let mut offset = 0;
        for (expected_len, expected_path) in [
            (first.len(), "/1"),
            (second.len(), "/2"),
            (third.len(), "/3"),
        ] {
            let (consumed, event) = parser.parse(&stream[offset..]).unwrap();
            assert_eq!(consumed, expected_len);
            match event {
                Some(Event::Request(request)) => assert_eq!(request.path(), expected_path),
                other => panic!("{other:?}"),
            }
            offset += consumed;
        }
        assert_eq!(parser.parse(&stream[offset..]).unwrap(), (0, None));
    }

    #[test]
    fn every_split_of_a_pipeline_gives_the_same_events() {
        let outcome = assert_split_invariant(HttpLimits::default(), PIPELINE);
        assert_eq!(outcome.error, None);
        assert!(outcome.unconsumed.is_empty());
        let continues = outcome
            .events
            .iter()
            .filter(|event| **event == Event::ContinueExpected)
            .count();
        assert_eq!(continues, 2);
        let got: Vec<(&str, &[u8])> = requests(&outcome)
            .iter()
            .map(|request| (request.path(), request.body.as_slice()))
            .collect();
        let expected: Vec<(&str, &[u8])> = vec![
            ("/a", b""),
            ("/b", b"hello"),
            ("/c", b"abcd"),
            ("/d", b"xyz"),
            ("/e", b"hi"),
            ("/f", b""),
        ];
        assert_eq!(got, expected);
        // The continue comes straight before the request it belongs to.
        assert_eq!(outcome.events[3], Event::ContinueExpected);
        assert!(matches!(&outcome.events[4], Event::Request(r) if r.path() == "/d"));
    }

    #[test]
    fn every_split_gives_the_same_error() {
        let limits = HttpLimits {
            max_body_bytes: 8,
            ..HttpLimits::default()
        };
        let streams: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n",
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
        ];
        for stream in streams {
            let outcome = assert_split_invariant(limits, stream);
            assert!(outcome.error.is_some(), "{outcome:?}");
        }
    }

    #[test]
    fn every_pair_of_splits_of_a_short_stream() {
        let stream: &[u8] = b"\r\nPOST /x HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\r\nz\r\n0\r\nT: 1\r\n\r\nGET /y HTTP/1.1\r\n\r\n";
        let whole = feed(stream);
        assert_eq!(requests(&whole).len(), 2);
        for first in 0..=stream.len() {
            for second in first..=stream.len() {
                let pieces = [&stream[..first], &stream[first..second], &stream[second..]];
                assert_eq!(
                    feed_pieces(HttpLimits::default(), &pieces),
                    whole,
                    "splits at {first} and {second}"
                );
            }
        }
    }

    #[test]
    fn partial_head_is_not_consumed_and_not_rescanned() {
        let mut parser = RequestParser::new(HttpLimits::default());
        let stream = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n";
        for end in 1..stream.len() {
            assert_eq!(parser.parse(&stream[..end]).unwrap(), (0, None));
            // Only new bytes are scanned on the next call.
            assert_eq!(parser.head_scan.scanned, end);
        }
        let (consumed, event) = parser.parse(stream).unwrap();
        assert_eq!(consumed, stream.len());
        assert!(matches!(event, Some(Event::Request(_))));
        assert_eq!(parser.head_scan.scanned, 0);
    }

    #[test]
    fn line_break_search_matches_a_plain_scan() {
        // Neighbours of CR and LF and high bytes are where a word-at-a-time
        // search could misfire.
        let fillers = [b'a', 0x0b, 0x0c, 0x0e, 0x09, 0x00, 0x8d, 0x8a, 0xff, 0x01];
        for len in 0..40 {
            for filler in fillers {
                for line_break in [b'\r', b'\n'] {
                    for at in 0..=len {
                        let mut bytes = vec![filler; len];
                        if let Some(byte) = bytes.get_mut(at) {
                            *byte = line_break;
                        }
                        if let Some(byte) = bytes.get_mut(at + 1) {
                            *byte = b'\r';
                        }
                        let expected = bytes
                            .iter()
                            .position(|&byte| byte == b'\r' || byte == b'\n')
                            .unwrap_or(len);
                        assert_eq!(first_line_break(&bytes), expected, "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_bare_lf_anywhere_in_a_long_line_is_found() {
        let line = "x".repeat(37);
        for at in 0..line.len() {
            let mut value = line.clone().into_bytes();
            value[at] = b'\n';
            let stream = [&b"GET / HTTP/1.1\r\nX: "[..], &value, b"\r\n\r\n"].concat();
            assert_eq!(
                error_of(&stream),
                HttpError::BadRequest("bare LF in request head"),
                "at {at}"
            );
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let request = only_request(b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
        assert_eq!(request.path(), "/x");
        // A stray CRLF after a body, as old clients send, does not break the
        // next request.
        let outcome =
            feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\nGET /y HTTP/1.1\r\n\r\n");
        assert_eq!(outcome.error, None);
        assert_eq!(requests(&outcome)[1].path(), "/y");
        // Bare LFs are not empty lines.
        assert_bad_request(b"\nGET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let request = only_request(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n\
              5 ;ext=1;quoted=\"a b\"\r\nhello\r\n\
              6\r\n world\r\n\
              A\r\n0123456789\r\n\
              0;last\r\nExpires: never\r\nX-Checksum: abc\r\n\r\n",
        );
        assert_eq!(request.body, b"hello world0123456789");
        assert_eq!(request.header("transfer-encoding"), Some(&b"Chunked"[..]));
        // Trailers are discarded, not merged into the header list.
        assert_eq!(request.header("expires"), None);
    }

    #[test]
    fn chunked_framing_errors() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            "x\r\n",                    // not hex
            "\r\n",                     // no digits
            "-1\r\n",                   // sign
            "+1\r\n",                   // sign
            "1 1\r\na\r\n0\r\n\r\n",    // digits after whitespace
            "1\na\r\n0\r\n\r\n",        // bare LF after size
            "1\rxa\r\n0\r\n\r\n",       // lone CR after size
            "1\r\nab\r\n0\r\n\r\n",     // data longer than announced
            "1\r\na\n0\r\n\r\n",        // bare LF after data
            "1\r\nax\n0\r\n\r\n",       // junk instead of the CR after data
            "1\r\na\rx0\r\n\r\n",       // junk instead of the LF after data
            "1\r\na\r\n0\r\n\n",        // bare LF ending trailers
            "1;a\nb\r\na\r\n0\r\n\r\n", // LF inside an extension
            "1;a\0\r\na\r\n0\r\n\r\n",  // NUL inside an extension
            "0\r\n folded: x\r\n\r\n",  // whitespace-led trailer line
            "0\r\nBad\0: x\r\n\r\n",    // NUL in a trailer
            "0\r\nA: b\nC: d\r\n\r\n",  // bare LF in trailers
            "0\r\nA: b\rC: d\r\n\r\n",  // lone CR in trailers
        ] {
            assert_bad_request(format!("{head}{body}").as_bytes());
        }
    }

    #[test]
    fn chunk_extensions_are_bounded() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let long = format!(
            "{head}1;{}\r\na\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_EXTENSION_BYTES + 1)
        );
        assert_bad_request(long.as_bytes());
        // The bound is per request, not per chunk.
        let extension = "e".repeat(MAX_CHUNK_EXTENSION_BYTES / 2 + 1);
        let many = format!("{head}1;{extension}\r\na\r\n1;{extension}\r\na\r\n0\r\n\r\n");
        assert_bad_request(many.as_bytes());
        let fits = format!(
            "{head}1;{}\r\na\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_EXTENSION_BYTES)
        );
        assert_eq!(only_request(fits.as_bytes()).body, b"a");
    }

    #[test]
    fn trailers_are_bounded() {
        let limits = HttpLimits {
            max_head_bytes: 64,
            ..HttpLimits::default()
        };
        let stream = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {}\r\n\r\n",
            "v".repeat(100)
        );
        assert_eq!(
            error_with(limits, stream.as_bytes()),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn chunk_size_overflow_is_rejected() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let unlimited = HttpLimits {
            max_body_bytes: usize::MAX,
            ..HttpLimits::default()
        };
        // 17 digits could wrap a u64 (hyper CVE-2021-32714), even with
        // leading zeros.
        for size in [
            "10000000000000000",
            "00000000000000001",
            "fffffffffffffffff",
        ] {
            assert_eq!(
                error_with(unlimited, format!("{head}{size}\r\n").as_bytes()),
                HttpError::BadRequest("chunk size too long"),
                "{size}"
            );
        }
        // 16 digits fit: accepted as a size, nothing allocated up front.
        let mut parser = RequestParser::new(unlimited);
        let stream = format!("{head}ffffffffffffffff\r\nabc");
        let (consumed, event) = parser.parse(stream.as_bytes()).unwrap();
        assert_eq!((consumed, event), (stream.len(), None));
        assert!(parser.in_body());
        let Some((request, _)) = &parser.in_progress else {
            panic!("no request in progress");
        };
        assert!(request.body.capacity() < 1024);
    }

    #[test]
    fn smuggling_attempts_are_bad_requests() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                "multiple Content-Length headers",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "multiple Content-Length headers",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "multiple Transfer-Encoding headers",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                "multiple Transfer-Encoding headers",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "Transfer-Encoding in HTTP/1.0 request",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "multiple Host headers",
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                "obsolete line folding",
            ),
            (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", "bare LF in request head"),
            (b"GET / HTTP/1.1\nX: a\r\n\r\n", "bare LF in request head"),
            (b"GET / HTTP/1.1\r\nX: a\r\n\n", "bare LF in request head"),
            (b"GET / HTTP/1.1\r\nX: a\rY: b\r\n\r\n", "CR without LF in request head"),
            (b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", "invalid header value"),
            (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", "invalid header value"),
            (b"GET / HTTP/1.1\r\nX : a\r\n\r\n", "invalid header name"),
            (b"GET / HTTP/1.1\r\nX\0: a\r\n\r\n", "invalid header name"),
            (b"GET / HTTP/1.1\r\n: a\r\n\r\n", "invalid header name"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "invalid header name"),
            (b"G\0T / HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET /\xff HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.1 x\r\n\r\n", "malformed request line"),
            (b" GET / HTTP/1.1\r\n\r\n", "malformed request line"),
        ];
        for (stream, reason) in cases {
            assert_eq!(
                error_of(stream),
                HttpError::BadRequest(reason),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn only_plain_chunked_is_an_accepted_transfer_coding() {
        for coding in [
            "gzip, chunked",
            "chunked, chunked",
            "chunked,",
            "identity",
            "gzip",
            "chunked;q=1",
            "",
            "chunkedx",
        ] {
            let stream = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
            assert_eq!(
                error_of(stream.as_bytes()),
                HttpError::BadRequest("unsupported transfer coding"),
                "{coding:?}"
            );
        }
        for coding in ["chunked", "CHUNKED", "  chunked  "] {
            let stream = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
            assert!(only_request(stream.as_bytes()).body.is_empty());
        }
    }

    #[test]
    fn malformed_content_lengths_are_rejected() {
        for value in [
            "",
            "+5",
            "-5",
            "5,5",
            "5, 5",
            "0x10",
            "5a",
            "1 2",
            "1.0",
            "５",
            "99999999999999999999999",
        ] {
            let stream = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                error_of(stream.as_bytes()),
                HttpError::BadRequest("invalid Content-Length"),
                "{value:?}"
            );
        }
        // Leading zeros and surrounding whitespace are still 1*DIGIT.
        let request = only_request(b"POST / HTTP/1.1\r\nContent-Length:  003 \r\n\r\nabc");
        assert_eq!(request.body, b"abc");
    }

    #[test]
    fn oversized_heads_are_431() {
        let limits = HttpLimits {
            max_head_bytes: 64,
            ..HttpLimits::default()
        };
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 - 23));
        assert_eq!(exact.len(), 64);
        assert_eq!(feed_pieces(limits, &[exact.as_bytes()]).events.len(), 1);

        // Complete but one byte too long.
        let complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 - 22));
        assert_eq!(
            error_with(limits, complete.as_bytes()),
            HttpError::HeadTooLarge
        );

        // Incomplete: refused as soon as the buffer passes the limit.
        let incomplete = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        let mut parser = RequestParser::new(limits);
        assert_eq!(parser.parse(&incomplete.as_bytes()[..64]), Ok((0, None)));
        assert_eq!(
            parser.parse(&incomplete.as_bytes()[..65]),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(parser.parse(b""), Err(HttpError::HeadTooLarge));

        // Leading empty lines count too, so they cannot pad forever.
        let padding = "\r\n".repeat(40);
        assert_eq!(
            error_with(limits, padding.as_bytes()),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn too_many_headers_are_431() {
        let limits = HttpLimits {
            max_headers: 4,
            ..HttpLimits::default()
        };
        let head = |count: usize| {
            let mut head = String::from("GET / HTTP/1.1\r\n");
            for index in 0..count {
                head.push_str(&format!("X-{index}: v\r\n"));
            }
            head.push_str("\r\n");
            head
        };
        assert_eq!(feed_pieces(limits, &[head(4).as_bytes()]).events.len(), 1);
        assert_eq!(
            error_with(limits, head(5).as_bytes()),
            HttpError::TooManyHeaders
        );
        // More slots than fit on the stack.
        let many = HttpLimits {
            max_headers: 100,
            ..HttpLimits::default()
        };
        assert_eq!(feed_pieces(many, &[head(100).as_bytes()]).events.len(), 1);
        assert_eq!(
            error_with(many, head(101).as_bytes()),
            HttpError::TooManyHeaders
        );
        assert_eq!(error_of(head(65).as_bytes()), HttpError::TooManyHeaders);
    }

    #[test]
    fn content_length_over_the_limit_is_413_before_the_body() {
        let limits = HttpLimits {
            max_body_bytes: 10,
            ..HttpLimits::default()
        };
        let mut parser = RequestParser::new(limits);
        assert_eq!(
            parser.parse(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        let at_limit = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        assert_eq!(feed_pieces(limits, &[at_limit]).events.len(), 1);
    }

    #[test]
    fn chunked_total_over_the_limit_is_413_when_announced() {
        let limits = HttpLimits {
            max_body_bytes: 10,
            ..HttpLimits::default()
        };
        let mut parser = RequestParser::new(limits);
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n";
        assert_eq!(parser.parse(head), Ok((head.len(), None)));
        // The second chunk's size alone settles it; its data never comes.
        assert_eq!(parser.parse(b"5"), Err(HttpError::BodyTooLarge));

        let exact = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n";
        let outcome = feed_pieces(limits, &[exact]);
        assert_eq!(requests(&outcome)[0].body, b"abcdefghij");
    }

    #[test]
    fn http_1_0_keep_alive_semantics() {
        let keep_alive = |stream: &[u8]| only_request(stream).keep_alive();
        assert!(!keep_alive(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep_alive(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        ));
        assert!(keep_alive(
            b"GET / HTTP/1.0\r\nConnection: foo , keep-alive\r\n\r\n"
        ));
        assert!(!keep_alive(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keep_alive(
            b"GET / HTTP/1.0\r\nConnection: keep-alived\r\n\r\n"
        ));
        assert!(keep_alive(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(keep_alive(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!keep_alive(b"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n"));
        assert!(!keep_alive(
            b"GET / HTTP/1.1\r\nConnection: upgrade,\tclose\r\n\r\n"
        ));
        assert!(!keep_alive(
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nConnection: close\r\n\r\n"
        ));
        assert!(keep_alive(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"));
        assert_eq!(only_request(b"GET / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn unsupported_versions() {
        for line in [
            "GET / HTTP/2.0",
            "GET / HTTP/1.2",
            "GET / HTTP/0.9",
            "GET / HTTP/3.0",
        ] {
            assert_eq!(
                error_of(format!("{line}\r\n\r\n").as_bytes()),
                HttpError::VersionNotSupported,
                "{line}"
            );
        }
        for line in [
            "GET / HTTP/2",
            "GET / HTTP/1.10",
            "GET / HTTX/1.1",
            "GET / http/1.1",
            "GET /",
        ] {
            assert!(
                matches!(
                    error_of(format!("{line}\r\n\r\n").as_bytes()),
                    HttpError::BadRequest(_)
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn expect_100_continue() {
        let mut parser = RequestParser::new(HttpLimits::default());
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            parser.parse(head),
            Ok((head.len(), Some(Event::ContinueExpected)))
        );
        assert!(parser.in_body());
        assert_eq!(parser.parse(b""), Ok((0, None)), "continue is emitted once");
        assert_eq!(parser.parse(b"ab"), Ok((2, None)));
        let (consumed, event) = parser.parse(b"cd").unwrap();
        assert_eq!(consumed, 2);
        assert!(matches!(event, Some(Event::Request(r)) if r.body == b"abcd"));

        // No body to wait for, nothing to continue.
        let outcome = feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(outcome.events.as_slice(), [Event::Request(_)]));
        let outcome = feed(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(matches!(outcome.events.as_slice(), [Event::Request(_)]));
    }

    #[test]
    fn unknown_expectations_are_417() {
        for value in ["200-ok", "100-continue, foo", "100-continuex"] {
            let stream =
                format!("POST / HTTP/1.1\r\nExpect: {value}\r\nContent-Length: 1\r\n\r\nx");
            assert_eq!(
                error_of(stream.as_bytes()),
                HttpError::ExpectationFailed,
                "{value}"
            );
        }
        assert_eq!(
            error_of(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: nope\r\n\r\n"),
            HttpError::ExpectationFailed
        );
        // HTTP/1.0 expectations are ignored, good or bad.
        let outcome = feed(b"POST / HTTP/1.0\r\nExpect: nope\r\nContent-Length: 1\r\n\r\nx");
        assert!(matches!(outcome.events.as_slice(), [Event::Request(_)]));
        let outcome =
            feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx");
        assert!(matches!(outcome.events.as_slice(), [Event::Request(_)]));
    }

    #[test]
    fn bytes_after_an_upgrade_request_are_left_alone() {
        let head = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let frame: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        let stream = [&head[..], frame].concat();
        let mut parser = RequestParser::new(HttpLimits::default());
        let (consumed, event) = parser.parse(&stream).unwrap();
        assert_eq!(consumed, head.len());
        let Some(Event::Request(request)) = event else {
            panic!("{event:?}");
        };
        assert!(request.has_token("connection", "upgrade"));
        assert!(request.has_token("upgrade", "WebSocket"));
        assert_eq!(&stream[consumed..], frame);
    }

    #[test]
    fn errors_are_sticky() {
        let mut parser = RequestParser::new(HttpLimits::default());
        let bad = b"GET / HTTP/2.0\r\n\r\n";
        assert_eq!(parser.parse(bad), Err(HttpError::VersionNotSupported));
        assert_eq!(
            parser.parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HttpError::VersionNotSupported)
        );
        assert!(!parser.in_body());
    }

    #[test]
    fn status_and_reason() {
        let table = [
            (
                HttpError::BadRequest("malformed request"),
                400,
                "malformed request",
            ),
            (
                HttpError::HeadTooLarge,
                431,
                "request header fields too large",
            ),
            (HttpError::TooManyHeaders, 431, "too many header fields"),
            (HttpError::BodyTooLarge, 413, "request body too large"),
            (
                HttpError::VersionNotSupported,
                505,
                "HTTP version not supported",
            ),
            (HttpError::ExpectationFailed, 417, "expectation failed"),
        ];
        for (error, status, reason) in table {
            assert_eq!(error.status(), status);
            assert_eq!(error.reason(), reason);
            assert_eq!(error.to_string(), reason);
        }
    }

    /// The `res` strings are the documented contract; the body carries the
    /// reason beside it so a client can tell 431s apart.
    #[test]
    fn each_error_answers_with_its_res_and_reason() {
        let table = [
            (HttpError::BadRequest("malformed request"), "bad request"),
            (HttpError::HeadTooLarge, "request header fields too large"),
            (HttpError::TooManyHeaders, "request header fields too large"),
            (HttpError::BodyTooLarge, "payload too large"),
            (HttpError::VersionNotSupported, "http version not supported"),
            (HttpError::ExpectationFailed, "expectation failed"),
        ];
        for (error, res) in table {
            assert_eq!(error.res(), res);
            let response = error.response();
            assert_eq!(response.status, error.status(), "{error:?}");
            assert_eq!(response.outcome, res, "{error:?}");
            let body = format!(r#"{{"res":"{res}","error":"{}"}}"#, error.reason());
            assert_eq!(String::from_utf8(response.body).unwrap(), body);
        }
    }

    /// A deterministic stand-in for the fuzz target: mangled requests must
    /// never panic, never over-consume, and never loop without progress.
    #[test]
    fn mangled_input_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet =
            b"\r\n \t:;0123456789abcdefABCDEF\0\x7f\xffGETPOSTHTP/1.chunkedContent-Length";
        let limits = HttpLimits {
            max_head_bytes: 256,
            max_headers: 8,
            max_body_bytes: 64,
        };
        for _ in 0..3000 {
            let mut stream = PIPELINE.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % stream.len();
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => stream[at] = byte,
                    1 => stream.insert(at, byte),
                    _ => {
                        stream.remove(at);
                    }
                }
            }
            let cut = (next() as usize) % (stream.len() + 1);
            let whole = feed_pieces(limits, &[&stream]);
            let split = feed_pieces(limits, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                whole,
                split,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(&stream)
            );
        }
    }
}

//! Sans-IO HTTP/1.1 request parser on top of `httparse`.
//!
//! INTERFACE SKELETON — the implementation replaces the bodies; the public
//! signatures below are what the rest of the crate codes against.

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
    pub fn header(&self, _name: &str) -> Option<&[u8]> {
        unimplemented!()
    }
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        unimplemented!()
    }
    /// The raw query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        unimplemented!()
    }
    /// Whether the connection stays open after the response: HTTP/1.1
    /// unless a `Connection: close` token; HTTP/1.0 only with a
    /// `Connection: keep-alive` token.
    pub fn keep_alive(&self) -> bool {
        unimplemented!()
    }
}

/// What the parser produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The head is complete, it carried `Expect: 100-continue`, and the body
    /// has not fully arrived: the caller writes `HTTP/1.1 100 Continue` now.
    /// Emitted at most once per request.
    ContinueExpected,
    /// A complete request.
    Request(Request),
}

/// A request the parser refuses. After any error the connection is answered
/// with `status()` and closed; the parser stays failed.
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
        unimplemented!()
    }
    /// A short human-readable reason, used in the JSON error body.
    pub fn reason(&self) -> &'static str {
        unimplemented!()
    }
}

/// Incremental parser for the requests on one connection.
#[derive(Debug)]
pub struct RequestParser {
    _limits: HttpLimits,
}

impl RequestParser {
    pub fn new(limits: HttpLimits) -> Self {
        RequestParser { _limits: limits }
    }

    /// Parses from `input`, the connection's unconsumed bytes. Returns how
    /// many bytes of `input` were consumed and at most one event. A partial
    /// head is not consumed (0, None): the caller keeps the bytes and calls
    /// again with them plus whatever arrives next. Body bytes are consumed as
    /// they arrive and kept by the parser until the request is complete.
    pub fn parse(&mut self, _input: &[u8]) -> Result<(usize, Option<Event>), HttpError> {
        unimplemented!()
    }

    /// True while a request's body is partly received (the head is done).
    pub fn in_body(&self) -> bool {
        unimplemented!()
    }
}

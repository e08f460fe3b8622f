//! The request parser and body framing on arbitrary bytes, split at
//! fuzzer-chosen points. It must never panic; the same stream split
//! differently must give the same events and the same error; the bytes a
//! connection is left holding never pass the head limit; and nothing it
//! hands out breaks a limit or the framing it announced.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use chatroom::http::request::{Event, HttpError, HttpLimits, Request, RequestParser};
use libfuzzer_sys::fuzz_target;

const LIMITS: HttpLimits = HttpLimits {
    max_head_bytes: 1024,
    max_headers: 16,
    max_body_bytes: 4096,
};

fn run(data: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<HttpError>) {
    let mut parser = RequestParser::new(LIMITS);
    let fed = split::feed_in_pieces(data, pieces, |input| parser.parse(input));
    // A partial head is left with the caller; past the limit it must be
    // refused rather than buffered further.
    assert!(
        fed.max_held <= LIMITS.max_head_bytes,
        "the caller was left holding {} bytes of a head",
        fed.max_held
    );
    for (index, event) in fed.events.iter().enumerate() {
        match event {
            Event::Request(request) => check_request(request),
            // The interim response is owed only for a request still to come.
            Event::ContinueExpected => {
                if let Some(next) = fed.events.get(index + 1) {
                    assert!(matches!(next, Event::Request(_)), "100-continue twice");
                }
            }
        }
    }
    if let Some(error) = &fed.error {
        assert!(matches!(error.status(), 400 | 413 | 417 | 431 | 505));
    }
    (fed.events, fed.error)
}

fn check_request(request: &Request) {
    assert!(
        request.body.len() <= LIMITS.max_body_bytes,
        "body over limit"
    );
    assert!(
        request.headers.len() <= LIMITS.max_headers,
        "too many headers"
    );
    assert!(
        request.minor_version <= 1,
        "HTTP/1.{}",
        request.minor_version
    );
    assert!(!request.method.is_empty());
    assert!(request.method.len() + request.target.len() <= LIMITS.max_head_bytes);
    for header in &request.headers {
        assert!(!header.name.is_empty());
        assert!(
            !header.name.bytes().any(|b| b.is_ascii_uppercase()),
            "header name not lower-cased: {:?}",
            header.name
        );
    }
    // Framing: a request with both headers is refused, a Content-Length is
    // exactly the body's length.
    let has_te = request.header("transfer-encoding").is_some();
    let content_length = request.header("content-length");
    assert!(
        !(has_te && content_length.is_some()),
        "CL and TE both accepted"
    );
    if let Some(value) = content_length {
        let text = std::str::from_utf8(value).expect("accepted Content-Length is ASCII");
        let declared: usize = text
            .trim()
            .parse()
            .expect("accepted Content-Length is a number");
        assert_eq!(
            declared,
            request.body.len(),
            "body differs from Content-Length"
        );
    } else if let Some(coding) = request.header("transfer-encoding") {
        assert!(
            coding.eq_ignore_ascii_case(b"chunked"),
            "a coding other than chunked"
        );
        assert_eq!(request.minor_version, 1, "chunked framing in HTTP/1.0");
    } else {
        assert!(request.body.is_empty(), "a body with no framing header");
    }
}

// Layout: see `split::sized_stream`.
fuzz_target!(|data: &[u8]| {
    let (pieces, data) = split::sized_stream(data);
    let whole = run(data, &[data.len().max(1)]);
    let split = run(data, &pieces);
    assert_eq!(whole, split, "splitting the stream changed the outcome");
    let bytewise = run(data, &[1]);
    assert_eq!(
        whole, bytewise,
        "feeding one byte at a time changed the outcome"
    );
});

//! The opening handshake (RFC 6455 §4.2): validating a client's upgrade request and
//! building the `101 Switching Protocols` response.
//!
//! Takes plain inputs (method, header pairs) rather than a parsed request type, so it
//! serves both listeners and any HTTP parser.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt;

/// Appended to the client's key before hashing (RFC 6455 §1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version this server speaks.
pub const SUPPORTED_VERSION: &str = "13";

/// Base64 of a 16-byte nonce, with its `==` padding, is always 24 characters.
const ENCODED_KEY_LEN: usize = 24;

/// Why an upgrade request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The method was not `GET`.
    MethodNotGet,
    /// No `Upgrade` header listed the `websocket` token.
    MissingUpgradeToken,
    /// No `Connection` header listed the `upgrade` token.
    MissingConnectionToken,
    /// `Sec-WebSocket-Key` was absent, repeated, or not 16 base64-encoded bytes.
    InvalidKey,
    /// `Sec-WebSocket-Version` was absent: not a WebSocket client we can talk to.
    MissingVersion,
    /// `Sec-WebSocket-Version` named another version (or several).
    UnsupportedVersion,
    /// Origins are restricted and the request's `Origin` is absent or not allowed.
    OriginNotAllowed,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::OriginNotAllowed => 403,
            HandshakeError::MethodNotGet
            | HandshakeError::MissingVersion
            | HandshakeError::MissingUpgradeToken
            | HandshakeError::MissingConnectionToken
            | HandshakeError::InvalidKey => 400,
        }
    }

    /// A short human-readable explanation for the response body or the log.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::MethodNotGet => "websocket upgrade requires GET",
            HandshakeError::MissingUpgradeToken => "Upgrade header must include websocket",
            HandshakeError::MissingConnectionToken => "Connection header must include upgrade",
            HandshakeError::InvalidKey => "Sec-WebSocket-Key must be 16 bytes in base64",
            HandshakeError::MissingVersion => "Sec-WebSocket-Version is required",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::OriginNotAllowed => "origin not allowed",
        }
    }

    /// Headers the error response must carry: a `426` tells the client which version
    /// to retry with (RFC 6455 §4.4).
    pub fn response_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", SUPPORTED_VERSION)],
            _ => &[],
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for HandshakeError {}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(sec_websocket_key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(sec_websocket_key.as_bytes());
    hasher.update(WEBSOCKET_GUID.as_bytes());
    STANDARD.encode(hasher.finalize())
}

fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !matches!(byte, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|byte| !matches!(byte, b' ' | b'\t'))
        .map_or(start, |last| last + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Whether a comma-separated token list names `token` (ASCII case-insensitively).
fn lists_token(value: &[u8], token: &str) -> bool {
    value
        .split(|byte| *byte == b',')
        .any(|item| trim_whitespace(item).eq_ignore_ascii_case(token.as_bytes()))
}

fn is_valid_key(key: &[u8]) -> bool {
    // The length check comes first so a huge header is never decoded.
    key.len() == ENCODED_KEY_LEN && STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value to send.
///
/// `headers` yields every header field as sent, repeats included — a `Connection`
/// or `Upgrade` token list may be split over several fields. Names are compared
/// ASCII case-insensitively. An empty `allowed_origins` accepts any origin; otherwise
/// exactly one `Origin` header must equal (ASCII case-insensitively) one entry.
///
/// Checks run in a fixed order, so the first failing one decides the status:
/// method, `Upgrade`, `Connection`, version, key, origin.
pub fn validate_upgrade<'h, I, O>(
    method: &str,
    headers: I,
    allowed_origins: &[O],
) -> Result<String, HandshakeError>
where
    I: IntoIterator<Item = (&'h str, &'h [u8])>,
    O: AsRef<str>,
{
    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut keys = Vec::with_capacity(1);
    let mut versions_seen = 0usize;
    let mut version_is_13 = false;
    let mut origins = Vec::with_capacity(1);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= lists_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= lists_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            keys.push(trim_whitespace(value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            versions_seen += 1;
            version_is_13 = trim_whitespace(value) == SUPPORTED_VERSION.as_bytes();
        } else if name.eq_ignore_ascii_case("origin") {
            origins.push(trim_whitespace(value));
        }
    }

    if method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if !upgrade_websocket {
        return Err(HandshakeError::MissingUpgradeToken);
    }
    if !connection_upgrade {
        return Err(HandshakeError::MissingConnectionToken);
    }
    // Conflicting repeated versions are as unusable as a wrong one.
    if versions_seen == 0 {
        return Err(HandshakeError::MissingVersion);
    }
    if versions_seen != 1 || !version_is_13 {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match keys.as_slice() {
        [key] if is_valid_key(key) => *key,
        _ => return Err(HandshakeError::InvalidKey),
    };
    if !allowed_origins.is_empty() {
        let allowed = match origins.as_slice() {
            [origin] => allowed_origins
                .iter()
                .any(|allowed| allowed.as_ref().as_bytes().eq_ignore_ascii_case(origin)),
            _ => false,
        };
        if !allowed {
            return Err(HandshakeError::OriginNotAllowed);
        }
    }
    // A valid key is 24 base64 characters, hence ASCII.
    let key = std::str::from_utf8(key).map_err(|_| HandshakeError::InvalidKey)?;
    Ok(accept_key(key))
}

/// The complete `101 Switching Protocols` response head for an accepted upgrade.
/// No extension or subprotocol is negotiated, so none is named.
pub fn switching_protocols_response(accept: &str) -> Vec<u8> {
    let mut response = Vec::with_capacity(128);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept.as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    // RFC 6455 §1.3; confirmed independently with Python's hashlib.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    const NO_ORIGIN_RULE: &[&str] = &[];

    fn valid_headers() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("host", b"server.example.com"),
            ("upgrade", b"websocket"),
            ("connection", b"Upgrade"),
            ("sec-websocket-key", KEY.as_bytes()),
            ("origin", b"http://example.com"),
            ("sec-websocket-version", b"13"),
        ]
    }

    fn replace(
        headers: &[(&'static str, &'static [u8])],
        name: &str,
        value: Option<&'static [u8]>,
    ) -> Vec<(&'static str, &'static [u8])> {
        let mut changed: Vec<_> = headers
            .iter()
            .copied()
            .filter(|(header, _)| *header != name)
            .collect();
        if let Some(value) = value {
            changed.push((
                headers
                    .iter()
                    .find(|(header, _)| *header == name)
                    .map_or("unknown", |(header, _)| header),
                value,
            ));
        }
        changed
    }

    fn check(headers: &[(&str, &[u8])]) -> Result<String, HandshakeError> {
        validate_upgrade("GET", headers.iter().copied(), NO_ORIGIN_RULE)
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(accept_key(KEY), ACCEPT);
    }

    #[test]
    fn valid_request_is_accepted_with_the_accept_key() {
        assert_eq!(check(&valid_headers()), Ok(ACCEPT.to_owned()));
    }

    #[test]
    fn response_names_the_upgrade_and_the_accept_key() {
        let response = switching_protocols_response(ACCEPT);
        assert_eq!(
            response,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn other_methods_are_400() {
        let headers = valid_headers();
        for method in ["POST", "get", "HEAD"] {
            let error = validate_upgrade(method, headers.iter().copied(), NO_ORIGIN_RULE);
            assert_eq!(error, Err(HandshakeError::MethodNotGet));
            assert_eq!(HandshakeError::MethodNotGet.status(), 400);
        }
    }

    #[test]
    fn missing_upgrade_tokens_are_400() {
        let headers = valid_headers();
        for value in [None, Some(&b"h2c"[..]), Some(&b"websockets"[..])] {
            let error = check(&replace(&headers, "upgrade", value)).unwrap_err();
            assert_eq!(error, HandshakeError::MissingUpgradeToken);
            assert_eq!(error.status(), 400);
        }
        for value in [None, Some(&b"keep-alive"[..]), Some(&b"upgrades"[..])] {
            let error = check(&replace(&headers, "connection", value)).unwrap_err();
            assert_eq!(error, HandshakeError::MissingConnectionToken);
            assert_eq!(error.status(), 400);
        }
    }

    #[test]
    fn tokens_are_found_in_lists_and_across_repeated_headers() {
        let listed = replace(&valid_headers(), "connection", Some(b"keep-alive, Upgrade"));
        assert_eq!(check(&listed), Ok(ACCEPT.to_owned()));

        let mut split = replace(&valid_headers(), "connection", Some(b"keep-alive"));
        split.push(("connection", b" upgrade "));
        split = replace(&split, "upgrade", Some(b"h2c"));
        split.push(("upgrade", b"foo/2,\tWebSocket"));
        assert_eq!(check(&split), Ok(ACCEPT.to_owned()));
    }

    #[test]
    fn names_and_tokens_are_case_insensitive() {
        let shouting: Vec<(&str, &[u8])> = vec![
            ("Upgrade", b"WEBSOCKET"),
            ("CONNECTION", b"UPGRADE"),
            ("Sec-WebSocket-Key", KEY.as_bytes()),
            ("Sec-WebSocket-Version", b"13"),
        ];
        assert_eq!(check(&shouting), Ok(ACCEPT.to_owned()));
    }

    #[test]
    fn other_versions_are_426_naming_version_13_and_a_missing_one_is_400() {
        let headers = valid_headers();
        let missing = check(&replace(&headers, "sec-websocket-version", None)).unwrap_err();
        assert_eq!(missing, HandshakeError::MissingVersion);
        assert_eq!(missing.status(), 400);
        for value in [Some(&b"8"[..]), Some(&b"14"[..]), Some(&b"13, 8"[..])] {
            let error = check(&replace(&headers, "sec-websocket-version", value)).unwrap_err();
            assert_eq!(error, HandshakeError::UnsupportedVersion);
            assert_eq!(error.status(), 426);
            assert_eq!(error.response_headers(), &[("Sec-WebSocket-Version", "13")]);
        }
        let mut repeated = valid_headers();
        repeated.push(("sec-websocket-version", b"8"));
        assert_eq!(check(&repeated), Err(HandshakeError::UnsupportedVersion));
        assert!(HandshakeError::InvalidKey.response_headers().is_empty());
    }

    #[test]
    fn keys_that_are_not_16_base64_bytes_are_400() {
        let headers = valid_headers();
        let bad_keys: [Option<&'static [u8]>; 6] = [
            None,
            Some(b""),
            // 15 and 17 bytes encoded:
            Some(b"AAAAAAAAAAAAAAAAAAAA"),
            Some(b"AAAAAAAAAAAAAAAAAAAAAAA="),
            Some(b"AAAAAAAAAAAAAAAAAAAAAAAA"),
            // right length, not base64:
            Some(b"dGhlIHNhbXBsZSBub25jZQ!!"),
        ];
        for key in bad_keys {
            let error = check(&replace(&headers, "sec-websocket-key", key)).unwrap_err();
            assert_eq!(error, HandshakeError::InvalidKey, "key {key:?}");
            assert_eq!(error.status(), 400);
        }
        let mut repeated = valid_headers();
        repeated.push(("sec-websocket-key", KEY.as_bytes()));
        assert_eq!(check(&repeated), Err(HandshakeError::InvalidKey));
    }

    #[test]
    fn origin_is_checked_only_against_a_non_empty_list() {
        let headers = valid_headers();
        let allowed = ["https://chat.example", "http://example.com"];
        let accepted = validate_upgrade("GET", headers.iter().copied(), &allowed);
        assert_eq!(accepted, Ok(ACCEPT.to_owned()));

        let upper = replace(&headers, "origin", Some(b"HTTP://Example.COM"));
        assert_eq!(
            validate_upgrade("GET", upper.iter().copied(), &allowed),
            Ok(ACCEPT.to_owned())
        );

        for origin in [
            None,
            Some(&b"http://evil.example"[..]),
            Some(&b"http://example.com.evil"[..]),
        ] {
            let changed = replace(&headers, "origin", origin);
            let error = validate_upgrade("GET", changed.iter().copied(), &allowed).unwrap_err();
            assert_eq!(error, HandshakeError::OriginNotAllowed);
            assert_eq!(error.status(), 403);
        }

        let anything = replace(&headers, "origin", Some(b"http://evil.example"));
        assert_eq!(check(&anything), Ok(ACCEPT.to_owned()));
        let allowed_owned = vec!["http://example.com".to_owned()];
        assert_eq!(
            validate_upgrade("GET", headers.iter().copied(), &allowed_owned),
            Ok(ACCEPT.to_owned())
        );
    }
}

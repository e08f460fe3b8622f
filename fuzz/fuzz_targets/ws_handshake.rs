//! Upgrade validation (RFC 6455 §4.2.1, SPEC §5) against a model written
//! from the SPEC, on header lists built by the fuzzer and on raw requests
//! read by our HTTP parser. Also: the outcome does not depend on the order
//! of the fields or the case of their names, and the accept key matches
//! tungstenite's independent derivation.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chatroom::http::request::{Event, HttpLimits, RequestParser};
use chatroom::ws::{accept_key, validate_upgrade, HandshakeError};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    Upgrade,
    Connection,
    Key,
    Version,
    Origin,
    Other(String),
}

fn name_text(name: &Name, upper: bool) -> String {
    let text = match name {
        Name::Upgrade => "Upgrade",
        Name::Connection => "Connection",
        Name::Key => "Sec-WebSocket-Key",
        Name::Version => "Sec-WebSocket-Version",
        Name::Origin => "Origin",
        Name::Other(other) => other.as_str(),
    };
    if upper {
        text.to_ascii_uppercase()
    } else {
        text.to_ascii_lowercase()
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let mut bytes = bytes;
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|member| trim(member).eq_ignore_ascii_case(token))
}

fn base64_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// 16 bytes in canonical padded base64: 21 full sextets, one carrying the
/// last 2 bits (its low 4 bits zero), then "==".
fn is_key(key: &[u8]) -> bool {
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22].iter().all(|&b| base64_value(b).is_some())
        && base64_value(key[21]).is_some_and(|last| last & 0x0F == 0)
}

/// SPEC §5's handshake rules, checked in the order the SPEC's status codes
/// imply: method, Upgrade, Connection, version, key, origin.
fn model(
    method: &str,
    fields: &[(String, Vec<u8>)],
    allowed: &[String],
) -> Result<Vec<u8>, HandshakeError> {
    fn named<'f>(
        fields: &'f [(String, Vec<u8>)],
        name: &'static str,
    ) -> impl Iterator<Item = &'f [u8]> {
        fields
            .iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if !named(fields, "upgrade").any(|value| lists(value, b"websocket")) {
        return Err(HandshakeError::MissingUpgradeToken);
    }
    if !named(fields, "connection").any(|value| lists(value, b"upgrade")) {
        return Err(HandshakeError::MissingConnectionToken);
    }
    let versions: Vec<&[u8]> = named(fields, "sec-websocket-version").collect();
    match versions.as_slice() {
        [] => return Err(HandshakeError::MissingVersion),
        [version] if trim(version) == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let keys: Vec<&[u8]> = named(fields, "sec-websocket-key").map(trim).collect();
    let key = match keys.as_slice() {
        [key] if is_key(key) => key.to_vec(),
        _ => return Err(HandshakeError::InvalidKey),
    };
    if !allowed.is_empty() {
        let origins: Vec<&[u8]> = named(fields, "origin").map(trim).collect();
        let ok = match origins.as_slice() {
            [origin] => allowed
                .iter()
                .any(|entry| entry.as_bytes().eq_ignore_ascii_case(origin)),
            _ => false,
        };
        if !ok {
            return Err(HandshakeError::OriginNotAllowed);
        }
    }
    Ok(key)
}

fn validate(
    method: &str,
    fields: &[(String, Vec<u8>)],
    allowed: &[String],
) -> Result<String, HandshakeError> {
    validate_upgrade(
        method,
        fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice())),
        allowed,
    )
}

fn check(method: &str, fields: &[(String, Vec<u8>)], allowed: &[String]) {
    let ours = validate(method, fields, allowed);
    match (&ours, model(method, fields, allowed)) {
        (Ok(accept), Ok(key)) => {
            assert_eq!(
                accept.as_bytes(),
                tungstenite::handshake::derive_accept_key(&key).as_bytes(),
                "accept key differs from tungstenite's"
            );
            let key = std::str::from_utf8(&key).expect("a valid key is ASCII");
            assert_eq!(*accept, accept_key(key));
            assert_eq!(accept.len(), 28);
        }
        (Err(error), Err(expected)) => {
            assert_eq!(*error, expected, "different refusal");
            assert!(matches!(error.status(), 400 | 403 | 426));
            assert_eq!(
                error.response_headers().is_empty(),
                error.status() != 426,
                "a 426 names the version, nothing else adds headers"
            );
        }
        (ours, model) => panic!("ours {ours:?}, the model {model:?}"),
    }

    // Neither the order of the fields nor the case of their names matters.
    let reversed: Vec<(String, Vec<u8>)> = fields.iter().rev().cloned().collect();
    assert_eq!(validate(method, &reversed, allowed), ours, "field order");
    let shouted: Vec<(String, Vec<u8>)> = fields
        .iter()
        .map(|(name, value)| (name.to_ascii_uppercase(), value.clone()))
        .collect();
    assert_eq!(validate(method, &shouted, allowed), ours, "name case");
}

// Layout: a mode byte. Even: the rest is a raw request, read by our HTTP
// parser (a hand-written seed is `\0` and the request); allowed origins
// come from a first line `origins: a b` after the mode byte, if present.
// Odd: a field list read with `arbitrary`.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (allowed, request) = match rest.strip_prefix(b"origins:") {
            Some(after) => {
                let end = after
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(after.len());
                let origins = String::from_utf8_lossy(&after[..end])
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                (origins, after.get(end + 1..).unwrap_or_default())
            }
            None => (Vec::new(), rest),
        };
        let mut parser = RequestParser::new(HttpLimits::default());
        if let Ok((_, Some(Event::Request(request)))) = parser.parse(request) {
            let fields: Vec<(String, Vec<u8>)> = request
                .headers
                .iter()
                .map(|header| (header.name.clone(), header.value.clone()))
                .collect();
            check(&request.method, &fields, &allowed);
        }
        return;
    }
    let input =
        <(bool, Vec<(Name, Vec<u8>)>, Vec<String>)>::arbitrary_take_rest(Unstructured::new(rest));
    if let Ok((get, fields, allowed_origins)) = input {
        let method = if get { "GET" } else { "POST" };
        let fields: Vec<(String, Vec<u8>)> = fields
            .iter()
            .enumerate()
            .map(|(index, (name, value))| (name_text(name, index % 2 == 0), value.clone()))
            .collect();
        check(method, &fields, &allowed_origins);
    }
});

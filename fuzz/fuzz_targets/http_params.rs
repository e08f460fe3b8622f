//! Parameter extraction: the query string and urlencoded, JSON and
//! multipart bodies. On arbitrary input, errors are fine and panics are not;
//! on parameters the target encodes itself (as browsers, curl and JSON
//! clients would), extraction must give back exactly what was encoded, the
//! body overriding the query.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chatroom::http::params::{self, ParamError};
use libfuzzer_sys::fuzz_target;

/// What `extract` allows one request.
const MAX_PARAMS: usize = 64;

#[derive(Arbitrary, Debug)]
enum Body {
    Form,
    Json { numbers_bare: bool },
    Multipart { preamble: bool, charset: bool },
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn form(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A JSON number the way a client would write a phone number: no sign, no
/// leading zero, no fraction.
fn is_plain_integer(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'))
}

fn json(pairs: &[(String, String)], numbers_bare: bool) -> String {
    let members: Vec<String> = pairs
        .iter()
        .map(|(name, value)| {
            let name = serde_json::to_string(name).expect("a string serialises");
            let value = if numbers_bare && is_plain_integer(value) {
                value.clone()
            } else {
                serde_json::to_string(value).expect("a string serialises")
            };
            format!("{name}:{value}")
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A quoted-string for a header parameter.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Returns the content type and body, or `None` when the pairs cannot be
/// expressed (a boundary that occurs in a value is the client's bug).
fn multipart(pairs: &[(String, String)], preamble: bool, charset: bool) -> (String, Vec<u8>) {
    let mut boundary = String::from("fuzzBoundary");
    let mut n = 0u32;
    while pairs
        .iter()
        .any(|(name, value)| name.contains(&boundary) || value.contains(&boundary))
    {
        n += 1;
        boundary = format!("fuzzBoundary{n:x}");
    }
    let mut body = Vec::new();
    if preamble {
        body.extend_from_slice(b"This is the preamble.\r\n");
    }
    for (name, value) in pairs {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name={}\r\n", quoted(name)).as_bytes(),
        );
        if charset {
            body.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(value.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn check_encoded(query: Vec<(String, String)>, mut body: Vec<(String, String)>, kind: Body) {
    if let Body::Multipart { .. } = kind {
        // A name is a quoted-string on one header line.
        for (name, _) in &mut body {
            name.retain(|ch| ch != '\r' && ch != '\n');
        }
    }
    let query_text = form(&query);
    let (content_type, body_bytes) = match kind {
        Body::Form => (
            "application/x-www-form-urlencoded".to_owned(),
            form(&body).into_bytes(),
        ),
        Body::Json { numbers_bare } => (
            "application/json; charset=utf-8".to_owned(),
            json(&body, numbers_bare).into_bytes(),
        ),
        Body::Multipart { preamble, charset } => multipart(&body, preamble, charset),
    };
    // An empty form body is no body at all: its pairs are none anyway.
    let result = params::extract(
        Some(&query_text),
        Some(content_type.as_bytes()),
        &body_bytes,
    );
    // Empty query segments are skipped: a pair with an empty name and value
    // encodes to "=", which is kept, so every pair counts.
    let total = query.len() + body.len();
    if total > MAX_PARAMS {
        assert_eq!(
            result,
            Err(ParamError::Invalid("too many parameters".to_owned()))
        );
        return;
    }
    let found = match result {
        Ok(found) => found,
        Err(error) => panic!("well-formed parameters refused: {error:?}"),
    };
    for (name, _) in query.iter().chain(body.iter()) {
        let expected = query
            .iter()
            .chain(body.iter())
            .rev()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str());
        assert_eq!(found.get(name), expected, "parameter {name:?}");
    }
}

// Layout: a mode byte. Even: raw parts, one per line: the query string
// (`-` for none), the Content-Type (`-` for none), then the body (a
// hand-written seed is `\0` and those lines). Odd: parameter lists and a
// body kind read with `arbitrary`, encoded by this target.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut parts = rest.splitn(3, |&b| b == b'\n');
        let query = parts.next().unwrap_or_default();
        let content_type = parts.next().unwrap_or_default();
        let body = parts.next().unwrap_or_default();
        let Ok(query) = std::str::from_utf8(query) else {
            // The request parser hands over the target as a str.
            return;
        };
        let query = (query != "-").then_some(query);
        let content_type = (content_type != b"-").then_some(content_type);
        let result = params::extract(query, content_type, body);
        if let Err(ParamError::Invalid(reason) | ParamError::UnsupportedMediaType(reason)) = &result
        {
            assert!(!reason.is_empty(), "an error without a reason");
        }
        assert_eq!(
            params::extract(query, content_type, body),
            result,
            "deterministic"
        );
        return;
    }
    let input = <(Vec<(String, String)>, Vec<(String, String)>, Body)>::arbitrary_take_rest(
        Unstructured::new(rest),
    );
    if let Ok((query, body, kind)) = input {
        check_encoded(query, body, kind);
    }
});

//! Responses: a small value type and its encoding to bytes.

use serde::Serialize;

pub const JSON: &str = "application/json; charset=utf-8";

/// Methods every endpoint answers; also the `Allow` header of a 405.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, OPTIONS";

/// A response before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// What the response means, for metrics: the `res` string, or a short
    /// label for responses without one.
    pub outcome: &'static str,
}

impl Response {
    /// A JSON response from any serialisable value.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        // Serialising our own plain structs cannot fail; fall back to an
        // empty object rather than panic if it ever does.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            outcome: "ok",
        }
    }

    /// `{"res": res}`, the shape of every business answer.
    pub fn res(status: u16, res: &'static str) -> Response {
        #[derive(Serialize)]
        struct Res<'a> {
            res: &'a str,
        }
        Response::json(status, &Res { res }).with_outcome(res)
    }

    /// `{"res": res, "error": error}`.
    pub fn res_with_error(status: u16, res: &'static str, error: &str) -> Response {
        #[derive(Serialize)]
        struct WithError<'a> {
            res: &'a str,
            error: &'a str,
        }
        Response::json(status, &WithError { res, error }).with_outcome(res)
    }

    pub fn with_outcome(mut self, outcome: &'static str) -> Response {
        self.outcome = outcome;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises status line, headers and (unless `head_only`) the body.
    /// `keep_alive` is what the connection will do after this response;
    /// `http10` selects how that is announced.
    pub fn encode(
        &self,
        head_only: bool,
        keep_alive: bool,
        http10: bool,
        cors_origin: &str,
    ) -> Vec<u8> {
        // One allocation, sized for the head and the body: this runs for
        // every request.
        let extra: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        let mut out = Vec::with_capacity(192 + cors_origin.len() + extra + self.body.len());
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        push_decimal(&mut out, usize::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\nServer: chatroom\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
        // RFC 9110 §8.6: a 204 carries no Content-Length, and a 304 may
        // only repeat the length of the 200 it stands for, so it has none.
        let bodiless = matches!(self.status, 204 | 304);
        if !bodiless {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut out, self.body.len());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(cors_origin.as_bytes());
        out.extend_from_slice(b"\r\n");
        if cors_origin != "*" {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodiless {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Appends `value` in decimal, without going through `fmt`.
fn push_decimal(out: &mut Vec<u8>, mut value: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn json_response_has_length_type_and_cors() {
        let encoded = text(&Response::res(200, "ok").encode(false, true, false, "*"));
        assert!(encoded.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(encoded.contains("Content-Type: application/json; charset=utf-8\r\n"));
        assert!(encoded.contains("Content-Length: 12\r\n"));
        assert!(encoded.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(!encoded.contains("Connection:"));
        assert!(encoded.ends_with("\r\n\r\n{\"res\":\"ok\"}"));
    }

    #[test]
    fn head_keeps_length_but_drops_body() {
        let encoded = text(&Response::res(200, "ok").encode(true, true, false, "*"));
        assert!(encoded.contains("Content-Length: 12\r\n"));
        assert!(encoded.ends_with("\r\n\r\n"));
    }

    #[test]
    fn connection_header_follows_version_and_keep_alive() {
        let close = text(&Response::res(200, "ok").encode(false, false, false, "*"));
        assert!(close.contains("Connection: close\r\n"));
        let http10 = text(&Response::res(200, "ok").encode(false, true, true, "*"));
        assert!(http10.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(http10.contains("Connection: keep-alive\r\n"));
    }

    #[test]
    fn specific_origin_varies() {
        let encoded =
            text(&Response::res(200, "ok").encode(false, true, false, "https://chat.example"));
        assert!(encoded
            .contains("Access-Control-Allow-Origin: https://chat.example\r\nVary: Origin\r\n"));
    }

    #[test]
    fn no_content_has_no_length() {
        let encoded = text(&Response::json(204, &()).encode(false, true, false, "*"));
        assert!(!encoded.contains("Content-Length"));
    }

    #[test]
    fn not_modified_has_no_length_and_no_body() {
        let encoded = text(&Response::json(304, &()).encode(false, true, false, "*"));
        assert!(encoded.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(!encoded.contains("Content-Length"));
        assert!(encoded.ends_with("\r\n\r\n"));
    }

    #[test]
    fn decimals_are_written_exactly() {
        for value in [0, 7, 10, 27, 404, 65_536, usize::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, value);
            assert_eq!(out, format!("x{value}").into_bytes());
        }
    }
}

//! Request parameters from the query string and the body (SPEC §2.2).
//!
//! Everything here reads peer-controlled bytes, so every step is bounded and
//! reports a reason instead of panicking: the reason ends up in the 400 body
//! and is the only hint a client author gets.

/// Requests to this API carry a handful of fields; anything far beyond that
/// is abuse, and the bound keeps `Params` a small linear-scan vector.
const MAX_PARAMS: usize = 64;

/// RFC 2046 §5.1.1 limits a boundary to 70 characters.
const MAX_BOUNDARY_LEN: usize = 70;

/// Parameters by name; a later source overrides an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The value that wins for `name` (the last one set), if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str())
    }

    /// Sets `name`, overriding any earlier value. Meant for building
    /// parameters by hand (handler tests); it does not apply the request
    /// bound that `extract` enforces.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((name.into(), value.into()));
    }

    fn push_bounded(&mut self, name: String, value: String) -> Result<(), ParamError> {
        if self.pairs.len() >= MAX_PARAMS {
            return Err(ParamError::Invalid("too many parameters".to_owned()));
        }
        self.pairs.push((name, value));
        Ok(())
    }
}

/// Why parameters could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// 400 `{"res":"invalid parameters","error":<text>}`.
    Invalid(String),
    /// 415 for a body whose content type we do not read.
    UnsupportedMediaType(String),
}

fn invalid(reason: impl Into<String>) -> ParamError {
    ParamError::Invalid(reason.into())
}

/// Reads the parameters of one request: the query string first, then the
/// body according to `content_type` (the raw header value, if any).
pub fn extract(
    query: Option<&str>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Params, ParamError> {
    let mut params = Params::default();
    if let Some(query) = query {
        read_urlencoded(query.as_bytes(), &mut params)?;
    }
    // Clients (and proxies) often send a Content-Type on an empty POST; with
    // nothing to read, there is nothing to refuse.
    if body.is_empty() {
        return Ok(params);
    }
    let Some(content_type) = content_type else {
        return Err(ParamError::UnsupportedMediaType(
            "a request body needs a Content-Type".to_owned(),
        ));
    };
    let content_type = std::str::from_utf8(content_type).map_err(|_| {
        ParamError::UnsupportedMediaType("the Content-Type is not valid UTF-8".to_owned())
    })?;
    let (essence, rest) = content_type.split_once(';').unwrap_or((content_type, ""));
    let essence = essence.trim();
    let kind = if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if essence.eq_ignore_ascii_case("application/json") {
        BodyKind::Json
    } else if essence.eq_ignore_ascii_case("multipart/form-data") {
        BodyKind::Multipart
    } else {
        return Err(ParamError::UnsupportedMediaType(format!(
            "content type {essence:?} is not accepted; use application/x-www-form-urlencoded, \
             application/json or multipart/form-data"
        )));
    };
    let media_params =
        parse_header_params(rest).map_err(|reason| invalid(format!("Content-Type: {reason}")))?;
    match kind {
        BodyKind::Form => {
            require_utf8_charset(&media_params)?;
            read_urlencoded(body, &mut params)?;
        }
        BodyKind::Json => {
            require_utf8_charset(&media_params)?;
            read_json(body, &mut params)?;
        }
        BodyKind::Multipart => {
            let boundary = find_param(&media_params, "boundary")
                .ok_or_else(|| invalid("multipart body: the Content-Type has no boundary"))?;
            if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
                return Err(invalid(
                    "multipart body: the boundary must be 1-70 characters",
                ));
            }
            read_multipart(body, boundary, &mut params)?;
        }
    }
    Ok(params)
}

enum BodyKind {
    Form,
    Json,
    Multipart,
}

fn find_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Form and JSON text is decoded as UTF-8 whatever the client claims, so a
/// client declaring another charset is told so rather than getting mojibake.
fn require_utf8_charset(media_params: &[(String, String)]) -> Result<(), ParamError> {
    match find_param(media_params, "charset") {
        None => Ok(()),
        Some(charset)
            if ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|accepted| charset.eq_ignore_ascii_case(accepted)) =>
        {
            Ok(())
        }
        Some(charset) => Err(ParamError::UnsupportedMediaType(format!(
            "charset {charset:?} is not supported; use utf-8"
        ))),
    }
}

/// Parses the `; name=value; name="quoted"` tail of a header value.
/// Names come back lower-cased; a parameter without `=` gets an empty value.
fn parse_header_params(text: &str) -> Result<Vec<(String, String)>, &'static str> {
    let bytes = text.as_bytes();
    let mut params = Vec::new();
    let mut i = 0;
    loop {
        while matches!(bytes.get(i), Some(b' ' | b'\t' | b';')) {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(params);
        }
        let name_start = i;
        while !matches!(bytes.get(i), None | Some(b'=' | b';')) {
            i += 1;
        }
        let name = text
            .get(name_start..i)
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if bytes.get(i) != Some(&b'=') {
            params.push((name, String::new()));
            continue;
        }
        i += 1;
        while matches!(bytes.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let value = if bytes.get(i) == Some(&b'"') {
            let (value, after) = parse_quoted_string(text, i + 1)?;
            i = after;
            while matches!(bytes.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
            if !matches!(bytes.get(i), None | Some(b';')) {
                return Err("unexpected text after a quoted parameter value");
            }
            value
        } else {
            let value_start = i;
            while !matches!(bytes.get(i), None | Some(b';')) {
                i += 1;
            }
            text.get(value_start..i).unwrap_or("").trim().to_owned()
        };
        params.push((name, value));
    }
}

/// Reads a quoted-string whose opening quote ends just before `start`;
/// returns its unescaped content and the index after the closing quote.
fn parse_quoted_string(text: &str, start: usize) -> Result<(String, usize), &'static str> {
    let mut value = String::new();
    let mut chars = text
        .get(start..)
        .ok_or("unterminated quoted string")?
        .char_indices();
    while let Some((offset, ch)) = chars.next() {
        match ch {
            '"' => return Ok((value, start + offset + 1)),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            other => value.push(other),
        }
    }
    Err("unterminated quoted string")
}

/// application/x-www-form-urlencoded, as browsers and curl produce it.
fn read_urlencoded(input: &[u8], params: &mut Params) -> Result<(), ParamError> {
    for segment in input.split(|&b| b == b'&') {
        if segment.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match segment.iter().position(|&b| b == b'=') {
            Some(eq) => (&segment[..eq], &segment[eq + 1..]),
            None => (segment, &[][..]),
        };
        let name = percent_decode(raw_name)
            .ok_or_else(|| invalid("parameter name: invalid percent-encoding"))?;
        let name =
            String::from_utf8(name).map_err(|_| invalid("parameter name: not valid UTF-8"))?;
        let value = percent_decode(raw_value)
            .ok_or_else(|| invalid(format!("{name}: invalid percent-encoding")))?;
        let value =
            String::from_utf8(value).map_err(|_| invalid(format!("{name}: not valid UTF-8")))?;
        params.push_bounded(name, value)?;
    }
    Ok(())
}

/// Decodes `+` and `%XX`; `None` for a `%` not followed by two hex digits,
/// which is a broken client worth telling about rather than guessing at.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'+' => decoded.push(b' '),
            b'%' => {
                let high = hex_value(*bytes.next()?)?;
                let low = hex_value(*bytes.next()?)?;
                decoded.push(high << 4 | low);
            }
            other => decoded.push(other),
        }
    }
    Some(decoded)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// A JSON object of string or number values. Numbers keep the exact text the
/// client wrote: a 20-digit phone number overflows u64, and going through f64
/// would turn it into `1e20`, so we cannot let serde_json convert them.
fn read_json(body: &[u8], params: &mut Params) -> Result<(), ParamError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("JSON body: not valid UTF-8"))?;
    // serde_json checks the whole document first (with its line/column
    // messages and nesting limit), so the scan below only walks the top
    // level of text already known to be well-formed.
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|error| invalid(format!("JSON body: not valid JSON: {error}")))?;
    let mut scanner = JsonScanner { text, pos: 0 };
    scanner.skip_whitespace();
    if !scanner.eat(b'{') {
        return Err(invalid("JSON body: must be an object"));
    }
    scanner.skip_whitespace();
    if scanner.eat(b'}') {
        return Ok(());
    }
    loop {
        scanner.skip_whitespace();
        let name = scanner.string()?;
        scanner.skip_whitespace();
        if !scanner.eat(b':') {
            return Err(scanner.malformed());
        }
        scanner.skip_whitespace();
        let value = match scanner.peek() {
            Some(b'"') => scanner.string()?,
            Some(b'-' | b'0'..=b'9') => scanner.number(),
            _ => return Err(invalid(format!("{name}: must be a string or a number"))),
        };
        params.push_bounded(name, value)?;
        scanner.skip_whitespace();
        if scanner.eat(b'}') {
            return Ok(());
        }
        if !scanner.eat(b',') {
            return Err(scanner.malformed());
        }
    }
}

struct JsonScanner<'a> {
    text: &'a str,
    pos: usize,
}

impl JsonScanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, expected: u8) -> bool {
        let matched = self.peek() == Some(expected);
        if matched {
            self.pos += 1;
        }
        matched
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Unreachable after serde_json accepted the text; kept so that a
    /// disagreement between the two parsers is a 400, not a panic.
    fn malformed(&self) -> ParamError {
        invalid(format!("JSON body: unexpected input at byte {}", self.pos))
    }

    /// A string token, unescaped by serde_json so escapes (surrogate pairs
    /// included) follow the JSON rules exactly.
    fn string(&mut self) -> Result<String, ParamError> {
        let start = self.pos;
        if !self.eat(b'"') {
            return Err(self.malformed());
        }
        loop {
            match self.peek() {
                None => return Err(self.malformed()),
                Some(b'"') => break,
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
            }
        }
        self.pos += 1;
        let token = self
            .text
            .get(start..self.pos)
            .ok_or_else(|| self.malformed())?;
        serde_json::from_str::<String>(token)
            .map_err(|error| invalid(format!("JSON body: invalid string: {error}")))
    }

    fn number(&mut self) -> String {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or("").to_owned()
    }
}

/// multipart/form-data (RFC 7578 over the RFC 2046 framing), text fields only.
fn read_multipart(body: &[u8], boundary: &str, params: &mut Params) -> Result<(), ParamError> {
    let dash_boundary = format!("--{boundary}");
    let dash_boundary = dash_boundary.as_bytes();
    let delimiter = [b"\r\n", dash_boundary].concat();

    // The first boundary may open the body or follow a preamble (which
    // belongs to nobody and is skipped).
    let mut pos = if body.starts_with(dash_boundary) {
        dash_boundary.len()
    } else {
        find(body, &delimiter, 0)
            .map(|at| at + delimiter.len())
            .ok_or_else(|| invalid("multipart body: the boundary does not occur in the body"))?
    };
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            // The close delimiter; anything after it is epilogue.
            return Ok(());
        }
        // RFC 2046 allows linear whitespace ("transport padding") before
        // the CRLF that ends a boundary line.
        let padding = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !rest.get(padding..).unwrap_or_default().starts_with(b"\r\n") {
            return Err(invalid(
                "multipart body: a boundary line must end with CRLF or --",
            ));
        }
        let part_start = pos + padding + 2;
        let part_end = find(body, &delimiter, part_start)
            .ok_or_else(|| invalid("multipart body: no closing boundary"))?;
        let part = body.get(part_start..part_end).unwrap_or_default();
        read_multipart_field(part, params)?;
        pos = part_end + delimiter.len();
    }
}

fn read_multipart_field(part: &[u8], params: &mut Params) -> Result<(), ParamError> {
    // A part with no headers begins with the blank line itself.
    let (headers, content) = if let Some(content) = part.strip_prefix(b"\r\n") {
        (&[][..], content)
    } else {
        let end = find(part, b"\r\n\r\n", 0)
            .ok_or_else(|| invalid("multipart body: a part's headers do not end"))?;
        (&part[..end], &part[end + 4..])
    };
    let headers = std::str::from_utf8(headers)
        .map_err(|_| invalid("multipart body: a part's headers are not valid UTF-8"))?;
    let mut disposition = None;
    for line in headers.split("\r\n").filter(|line| !line.is_empty()) {
        let (header_name, header_value) = line
            .split_once(':')
            .ok_or_else(|| invalid("multipart body: malformed part header"))?;
        if header_name
            .trim()
            .eq_ignore_ascii_case("content-disposition")
            && disposition.is_none()
        {
            disposition = Some(header_value.trim());
        }
    }
    let disposition =
        disposition.ok_or_else(|| invalid("multipart body: a part has no Content-Disposition"))?;
    let (disposition_type, rest) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !disposition_type.trim().eq_ignore_ascii_case("form-data") {
        return Err(invalid(
            "multipart body: a part's Content-Disposition is not form-data",
        ));
    }
    let disposition_params = parse_header_params(rest)
        .map_err(|reason| invalid(format!("multipart body: Content-Disposition: {reason}")))?;
    let name = find_param(&disposition_params, "name")
        .ok_or_else(|| invalid("multipart body: a part has no name"))?;
    if find_param(&disposition_params, "filename").is_some()
        || find_param(&disposition_params, "filename*").is_some()
    {
        return Err(invalid(format!("{name}: file uploads are not accepted")));
    }
    let value =
        std::str::from_utf8(content).map_err(|_| invalid(format!("{name}: not valid UTF-8")))?;
    params.push_bounded(name.to_owned(), value.to_owned())
}

/// First index at or after `from` where `needle` occurs. Needles here are
/// at most 74 bytes and bodies at most 64 KiB, so the plain scan is cheap.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| at + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    const JSON: &[u8] = b"application/json";

    fn invalid_reason(result: Result<Params, ParamError>) -> String {
        match result {
            Err(ParamError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn is_unsupported(result: &Result<Params, ParamError>) -> bool {
        matches!(result, Err(ParamError::UnsupportedMediaType(_)))
    }

    fn multipart(boundary_param: &str, body: &str) -> Result<Params, ParamError> {
        let content_type = format!("multipart/form-data; boundary={boundary_param}");
        extract(None, Some(content_type.as_bytes()), body.as_bytes())
    }

    #[test]
    fn query_string_pairs_are_decoded() {
        let params = extract(
            Some("user_tel=%2B8613800000000&user_name=Li+Lei&room_name=%E6%88%BF%20a"),
            None,
            b"",
        )
        .unwrap();
        assert_eq!(params.get("user_tel"), Some("+8613800000000"));
        assert_eq!(params.get("user_name"), Some("Li Lei"));
        assert_eq!(params.get("room_name"), Some("房 a"));
        assert_eq!(params.get("missing"), None);
    }

    #[test]
    fn query_string_edge_cases() {
        let params = extract(Some("&&flag&a=1=2&=anon&b=&%61%62=c&"), None, b"").unwrap();
        assert_eq!(params.get("flag"), Some(""));
        // Only the first `=` splits; the rest belongs to the value.
        assert_eq!(params.get("a"), Some("1=2"));
        assert_eq!(params.get(""), Some("anon"));
        assert_eq!(params.get("b"), Some(""));
        assert_eq!(params.get("ab"), Some("c"));
        assert_eq!(extract(Some(""), None, b"").unwrap(), Params::default());
    }

    #[test]
    fn later_values_override_earlier_ones() {
        let params = extract(Some("a=1&a=2"), None, b"").unwrap();
        assert_eq!(params.get("a"), Some("2"));

        let params = extract(Some("a=query&b=query"), Some(FORM), b"a=body").unwrap();
        assert_eq!(params.get("a"), Some("body"));
        assert_eq!(params.get("b"), Some("query"));

        let params = extract(Some("a=query"), Some(JSON), br#"{"a":"body"}"#).unwrap();
        assert_eq!(params.get("a"), Some("body"));

        let body = "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nbody\r\n--b--";
        let params = extract(
            Some("a=query"),
            Some(b"multipart/form-data; boundary=b"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(params.get("a"), Some("body"));
    }

    #[test]
    fn bad_percent_escapes_are_refused() {
        assert_eq!(
            invalid_reason(extract(Some("a=%zz"), None, b"")),
            "a: invalid percent-encoding"
        );
        assert_eq!(
            invalid_reason(extract(Some("a=%4"), None, b"")),
            "a: invalid percent-encoding"
        );
        assert_eq!(
            invalid_reason(extract(Some("a=%"), None, b"")),
            "a: invalid percent-encoding"
        );
        assert_eq!(
            invalid_reason(extract(Some("%g1=x"), None, b"")),
            "parameter name: invalid percent-encoding"
        );
        assert_eq!(
            invalid_reason(extract(None, Some(FORM), b"a=%4g")),
            "a: invalid percent-encoding"
        );
    }

    #[test]
    fn decoded_text_must_be_utf8() {
        assert_eq!(
            invalid_reason(extract(Some("a=%FF"), None, b"")),
            "a: not valid UTF-8"
        );
        assert_eq!(
            invalid_reason(extract(Some("%C3=x"), None, b"")),
            "parameter name: not valid UTF-8"
        );
        assert_eq!(
            invalid_reason(extract(None, Some(FORM), b"a=\xff")),
            "a: not valid UTF-8"
        );
        // A complete encoded sequence is fine.
        let params = extract(Some("a=%C3%A9"), None, b"").unwrap();
        assert_eq!(params.get("a"), Some("é"));
    }

    #[test]
    fn urlencoded_body() {
        let params = extract(
            None,
            Some(b"application/x-www-form-urlencoded"),
            b"user_tel=13800000000&user_password=p%40ss+word",
        )
        .unwrap();
        assert_eq!(params.get("user_tel"), Some("13800000000"));
        assert_eq!(params.get("user_password"), Some("p@ss word"));
    }

    #[test]
    fn media_type_is_case_insensitive_and_takes_parameters() {
        for content_type in [
            &b"Application/X-WWW-Form-Urlencoded"[..],
            b"application/x-www-form-urlencoded; charset=utf-8",
            b"application/x-www-form-urlencoded;charset=\"UTF-8\"",
            b"  application/x-www-form-urlencoded ; charset=utf8 ; foo=bar",
        ] {
            let params = extract(None, Some(content_type), b"a=1").unwrap();
            assert_eq!(params.get("a"), Some("1"), "{content_type:?}");
        }
        let params = extract(
            None,
            Some(b"APPLICATION/JSON; charset=UTF-8"),
            br#"{"a":"1"}"#,
        )
        .unwrap();
        assert_eq!(params.get("a"), Some("1"));
    }

    #[test]
    fn other_charsets_are_refused() {
        assert!(is_unsupported(&extract(
            None,
            Some(b"application/x-www-form-urlencoded; charset=iso-8859-1"),
            b"a=1",
        )));
        assert!(is_unsupported(&extract(
            None,
            Some(b"application/json; charset=utf-16"),
            br#"{"a":"1"}"#,
        )));
    }

    #[test]
    fn other_or_missing_content_types_are_unsupported_for_a_body() {
        assert!(is_unsupported(&extract(None, None, b"a=1")));
        assert!(is_unsupported(&extract(None, Some(b"text/plain"), b"a=1")));
        assert!(is_unsupported(&extract(
            None,
            Some(b"application/xml"),
            b"<a/>"
        )));
        assert!(is_unsupported(&extract(
            None,
            Some(b"application/jsonx"),
            b"{}"
        )));
        assert!(is_unsupported(&extract(None, Some(b"\xff\xfe"), b"a=1")));
        // A type that merely starts like a supported one is still another type.
        assert!(is_unsupported(&extract(
            None,
            Some(b"multipart/mixed; boundary=b"),
            b"--b--"
        )));
    }

    #[test]
    fn empty_body_ignores_content_type() {
        for content_type in [
            None,
            Some(&b"text/plain"[..]),
            Some(JSON),
            Some(b"multipart/form-data"),
        ] {
            let params = extract(Some("a=1"), content_type, b"").unwrap();
            assert_eq!(params.get("a"), Some("1"));
        }
    }

    #[test]
    fn json_strings_and_numbers_become_text() {
        let params = extract(
            None,
            Some(JSON),
            br#" { "user_tel" : 13800000000, "big": 123456789012345678901234,
                  "neg": -7, "frac": 1.50, "exp": 1e3, "name": "Li \"Lei\" \u00e9\ud83d\ude00",
                  "empty": "" } "#,
        )
        .unwrap();
        assert_eq!(params.get("user_tel"), Some("13800000000"));
        // Beyond u64 and f64 precision, the digits still come through as sent.
        assert_eq!(params.get("big"), Some("123456789012345678901234"));
        assert_eq!(params.get("neg"), Some("-7"));
        assert_eq!(params.get("frac"), Some("1.50"));
        assert_eq!(params.get("exp"), Some("1e3"));
        assert_eq!(params.get("name"), Some("Li \"Lei\" é😀"));
        assert_eq!(params.get("empty"), Some(""));
    }

    #[test]
    fn json_escaped_keys_and_duplicates() {
        let params = extract(None, Some(JSON), br#"{"a\u0062":"1","ab":"2"}"#).unwrap();
        assert_eq!(params.get("ab"), Some("2"));
        assert_eq!(extract(None, Some(JSON), b"{}").unwrap(), Params::default());
    }

    #[test]
    fn json_values_of_other_types_are_refused() {
        for (body, field) in [
            (&br#"{"a":"1","flag":true}"#[..], "flag"),
            (br#"{"flag":false}"#, "flag"),
            (br#"{"n":null}"#, "n"),
            (br#"{"list":[1,2]}"#, "list"),
            (br#"{"obj":{"x":"1"}}"#, "obj"),
        ] {
            assert_eq!(
                invalid_reason(extract(None, Some(JSON), body)),
                format!("{field}: must be a string or a number")
            );
        }
    }

    #[test]
    fn json_body_must_be_a_valid_object() {
        for body in [&b"[]"[..], b"\"text\"", b"12", b"null"] {
            assert_eq!(
                invalid_reason(extract(None, Some(JSON), body)),
                "JSON body: must be an object"
            );
        }
        for body in [
            &b"{"[..],
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{} {}",
            b"{'a':1}",
            b"nope",
        ] {
            let reason = invalid_reason(extract(None, Some(JSON), body));
            assert!(reason.starts_with("JSON body: not valid JSON"), "{reason}");
        }
        // A lone surrogate is not a Unicode scalar value.
        let reason = invalid_reason(extract(None, Some(JSON), br#"{"a":"\ud800"}"#));
        assert!(reason.starts_with("JSON body:"), "{reason}");
        assert_eq!(
            invalid_reason(extract(None, Some(JSON), b"{\"a\":\"\xff\"}")),
            "JSON body: not valid UTF-8"
        );
    }

    #[test]
    fn deep_json_nesting_does_not_overflow_the_stack() {
        let body = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            invalid_reason(extract(None, Some(JSON), body.as_bytes())),
            "a: must be a string or a number"
        );
    }

    #[test]
    fn multipart_text_fields() {
        let body = "preamble to ignore\r\n\
                    --XyZ\r\n\
                    Content-Disposition: form-data; name=\"user_name\"\r\n\
                    \r\n\
                    李雷\r\n\
                    --XyZ\r\n\
                    content-disposition: FORM-DATA; name=user_tel\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\
                    \r\n\
                    13800000000\r\n\
                    --XyZ  \r\n\
                    Content-Disposition: form-data; name=\"multi\"\r\n\
                    \r\n\
                    line one\r\nline two\r\n--not-the-boundary\r\n\
                    --XyZ--\r\n\
                    epilogue --XyZ garbage";
        let params = multipart("XyZ", body).unwrap();
        assert_eq!(params.get("user_name"), Some("李雷"));
        assert_eq!(params.get("user_tel"), Some("13800000000"));
        assert_eq!(
            params.get("multi"),
            Some("line one\r\nline two\r\n--not-the-boundary")
        );
    }

    #[test]
    fn multipart_quoted_boundary() {
        let body = "--a b:c\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--a b:c--";
        let params = multipart("\"a b:c\"", body).unwrap();
        assert_eq!(params.get("x"), Some("1"));
        // Inside quotes a `;` belongs to the boundary instead of ending it.
        let params = multipart(
            "\"---;x\"",
            "-----;x\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n2\r\n-----;x--",
        )
        .unwrap();
        assert_eq!(params.get("x"), Some("2"));
    }

    #[test]
    fn multipart_empty_value_and_escaped_name() {
        let body =
            "--b\r\nContent-Disposition: form-data; name=\"say \\\"hi\\\"\"\r\n\r\n\r\n--b--";
        let params = multipart("b", body).unwrap();
        assert_eq!(params.get("say \"hi\""), Some(""));
    }

    #[test]
    fn multipart_file_parts_are_refused() {
        let body = "--b\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.png\"\r\n\
                    Content-Type: image/png\r\n\r\n\x01\x02\r\n--b--";
        assert_eq!(
            invalid_reason(multipart("b", body)),
            "avatar: file uploads are not accepted"
        );
        let body = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename*=utf-8''a.txt\r\n\
                    \r\nx\r\n--b--";
        assert_eq!(
            invalid_reason(multipart("b", body)),
            "f: file uploads are not accepted"
        );
    }

    #[test]
    fn multipart_without_boundary_is_refused() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--";
        for content_type in [
            &b"multipart/form-data"[..],
            b"multipart/form-data; charset=utf-8",
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=\"\"",
        ] {
            let reason = invalid_reason(extract(None, Some(content_type), body));
            assert!(reason.contains("boundary"), "{reason}");
        }
        let long = "b".repeat(71);
        let reason = invalid_reason(multipart(&long, &format!("--{long}--")));
        assert!(reason.contains("1-70"), "{reason}");
        let reason = invalid_reason(multipart("\"unterminated", "--x--"));
        assert_eq!(reason, "Content-Type: unterminated quoted string");
    }

    #[test]
    fn malformed_multipart_is_refused() {
        let cases = [
            // The boundary never appears.
            ("no delimiter at all", "the boundary does not occur"),
            // No closing delimiter.
            (
                "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1",
                "no closing boundary",
            ),
            (
                "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b",
                "must end with CRLF or --",
            ),
            // Part without a name.
            (
                "--b\r\nContent-Disposition: form-data\r\n\r\n1\r\n--b--",
                "a part has no name",
            ),
            (
                "--b\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\n1\r\n--b--",
                "a part has no name",
            ),
            (
                "--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--",
                "no Content-Disposition",
            ),
            ("--b\r\n\r\n1\r\n--b--", "no Content-Disposition"),
            // Not even the blank line that ends a part's headers.
            ("--b\r\n\r\n--b--", "headers do not end"),
            (
                "--b\r\nContent-Disposition: attachment; name=\"x\"\r\n\r\n1\r\n--b--",
                "not form-data",
            ),
            (
                "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n1\r\n--b--",
                "headers do not end",
            ),
            (
                "--b\r\nno colon here\r\n\r\n1\r\n--b--",
                "malformed part header",
            ),
            (
                "--bc\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--",
                "must end with CRLF or --",
            ),
            (
                "--b\r\nContent-Disposition: form-data; name=\"x\r\n\r\n1\r\n--b--",
                "unterminated quoted string",
            ),
        ];
        for (body, expected) in cases {
            let reason = invalid_reason(multipart("b", body));
            assert!(reason.contains(expected), "{body:?}: {reason}");
        }
    }

    #[test]
    fn multipart_field_text_must_be_utf8() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\xff\r\n--b--";
        assert_eq!(
            invalid_reason(extract(
                None,
                Some(b"multipart/form-data; boundary=b"),
                body
            )),
            "x: not valid UTF-8"
        );
        let body = b"--b\r\nContent-Disposition: form-data; name=\"\xff\"\r\n\r\n1\r\n--b--";
        let reason = invalid_reason(extract(
            None,
            Some(b"multipart/form-data; boundary=b"),
            body,
        ));
        assert!(reason.contains("not valid UTF-8"), "{reason}");
    }

    #[test]
    fn multipart_hostile_input_never_panics() {
        let content_type = Some(&b"multipart/form-data; boundary=b"[..]);
        let seed =
            b"--b\r\nContent-Disposition: form-data; name=\"x\"; filename=\"\\\r\n\r\n1\r\n--b--";
        // Every prefix of a valid-looking body, and a few odd shapes, must
        // come back as Ok or Invalid.
        for end in 0..=seed.len() {
            let _ = extract(None, content_type, &seed[..end]);
        }
        for body in [
            &b"--"[..],
            b"--b",
            b"\r\n--b",
            b"--b\r\n",
            b"--b\r\n\r\n",
            b"\r\n\r\n--b--",
        ] {
            let _ = extract(None, content_type, body);
        }
    }

    #[test]
    fn the_number_of_parameters_is_bounded() {
        let at_limit: Vec<String> = (0..MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        let params = extract(Some(&at_limit.join("&")), None, b"").unwrap();
        assert_eq!(params.get("p63"), Some("v"));

        let over = format!("{}&extra=1", at_limit.join("&"));
        assert_eq!(
            invalid_reason(extract(Some(&over), None, b"")),
            "too many parameters"
        );
        // The bound spans sources: a full query leaves no room in the body.
        assert_eq!(
            invalid_reason(extract(
                Some(&at_limit.join("&")),
                Some(JSON),
                br#"{"a":1}"#
            )),
            "too many parameters"
        );
    }

    #[test]
    fn insert_overrides_like_a_later_source() {
        let mut params = Params::default();
        params.insert("a", "1");
        params.insert("a", "2");
        assert_eq!(params.get("a"), Some("2"));
    }
}

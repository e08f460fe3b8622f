//! The browser chat client: `web/index.html`, `web/app.css` and `web/app.js`
//! compiled into the binary and served from the HTTP port (a page that works
//! offline on a LAN: no build step, no CDN).
//!
//! Sans-IO like the rest of the HTTP layer: [`respond`] is a pure function
//! from a request to a response, so the reactor needs one dispatch branch and
//! the tests here need no socket.

use crate::http::request::Request;
use crate::http::response::Response;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Strong validator: a hash of the body, computed at compile time, so a
    /// new binary with a changed file gets a new tag and an unchanged file
    /// keeps its tag across upgrades.
    etag: u64,
    /// Whether this is the page itself, which carries the document policies
    /// (CSP, referrer policy).
    page: bool,
}

const INDEX: &[u8] = include_bytes!("../web/index.html");
const CSS: &[u8] = include_bytes!("../web/app.css");
const JS: &[u8] = include_bytes!("../web/app.js");

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
        etag: fnv1a64(INDEX),
        page: true,
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: CSS,
        etag: fnv1a64(CSS),
        page: false,
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: JS,
        etag: fnv1a64(JS),
        page: false,
    },
];

/// Methods the web paths answer; the `Allow` header of their 405.
pub const ALLOWED: &str = "GET, HEAD";

/// Every response is revalidated (cheap: a 304 without a body), so a page and
/// its script can never come from two different releases.
const CACHE_CONTROL: &str = "no-cache";

/// Whether `path` belongs to the web client.
pub fn serves(path: &str) -> bool {
    find(path).is_some()
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

/// The answer to a request for one of the web client's paths, or `None` when
/// the path is not one of them (the caller routes it elsewhere).
///
/// `GET`/`HEAD` get the file (the caller drops the body of a `HEAD`), or
/// `304` when `If-None-Match` names the current tag; other methods get `405`.
pub fn respond(request: &Request) -> Option<Response> {
    let asset = find(request.path())?;
    match request.method.as_str() {
        "GET" | "HEAD" => {}
        _ => {
            return Some(Response::res(405, "method not allowed").with_header("Allow", ALLOWED));
        }
    }
    let etag = format!("\"{:016x}\"", asset.etag);
    let not_modified = request
        .header("if-none-match")
        .is_some_and(|value| if_none_match_hits(value, &etag));
    let mut response = Response::json(200, &());
    response.content_type = asset.content_type;
    if not_modified {
        response.status = 304;
        response.body = Vec::new();
        response.outcome = "not modified";
    } else {
        response.body = asset.body.to_vec();
        response.outcome = "ok";
    }
    response = response
        .with_header("ETag", etag)
        .with_header("Cache-Control", CACHE_CONTROL)
        .with_header("X-Content-Type-Options", "nosniff");
    if asset.page {
        let host = request.header("host").and_then(plain_host);
        response = response
            .with_header("Content-Security-Policy", content_security_policy(host))
            .with_header("Referrer-Policy", "no-referrer")
            .with_header("X-Frame-Options", "DENY");
    }
    Some(response)
}

/// The page's policy: its own script and style only, no inline code, no
/// plugins, no framing; it may talk to its own origin over HTTP and to the
/// same host over WebSocket (`'self'` covers `ws:`/`wss:` only in newer
/// browsers, so the host is named when it is known and well-formed).
fn content_security_policy(host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = host {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// A `Host` value safe to repeat in a header: a name, IPv4 or bracketed IPv6
/// address with an optional port, nothing else. Anything odd is dropped (the
/// policy then relies on `'self'`) rather than reflected.
fn plain_host(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > 255 {
        return None;
    }
    let allowed =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']');
    if !value.iter().all(allowed) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// RFC 9110 §13.1.2: `*` matches any current representation; otherwise a
/// list of entity tags compared weakly (a `W/` prefix is ignored).
fn if_none_match_hits(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// 64-bit FNV-1a, usable in a `const`: a content fingerprint for the ETag,
/// not a security measure.
const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::Header;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.to_string(),
                    value: value.as_bytes().to_vec(),
                })
                .collect(),
            body: Vec::new(),
        }
    }

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn get(target: &str) -> Response {
        respond(&request("GET", target, &[("host", "chat.example:8080")])).expect("a web path")
    }

    #[test]
    fn other_paths_are_not_ours() {
        for path in ["/auth/login", "/ws", "/metrics", "/index", "/app.js/x", ""] {
            assert!(respond(&request("GET", path, &[])).is_none(), "{path}");
            assert!(!serves(path), "{path}");
        }
    }

    #[test]
    fn page_and_assets_have_their_types_and_bodies() {
        let page = get("/");
        assert_eq!(page.status, 200);
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert_eq!(page.body, INDEX);
        let css = get("/app.css");
        assert_eq!(css.content_type, "text/css; charset=utf-8");
        assert_eq!(css.body, CSS);
        let js = get("/app.js?v=1");
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert_eq!(js.body, JS);
    }

    #[test]
    fn the_page_references_only_its_own_assets() {
        let page = std::str::from_utf8(INDEX).unwrap();
        assert!(page.contains("src=\"app.js\""));
        assert!(page.contains("href=\"app.css\""));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>"), "inline scripts break the CSP");
        assert!(!page.contains("style="), "inline styles break the CSP");
        let script = std::str::from_utf8(JS).unwrap();
        assert!(!script.contains("innerHTML"), "text is inserted as text");
    }

    #[test]
    fn security_headers_on_the_page() {
        let page = get("/");
        let csp = header(&page, "Content-Security-Policy").unwrap();
        assert!(csp.contains("script-src 'self'"));
        assert!(csp.contains("style-src 'self'"));
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("connect-src 'self' ws://chat.example:8080 wss://chat.example:8080"));
        assert_eq!(header(&page, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(&page, "Referrer-Policy"), Some("no-referrer"));
        assert_eq!(header(&page, "Cache-Control"), Some("no-cache"));
        let js = get("/app.js");
        assert_eq!(header(&js, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(&js, "Content-Security-Policy"), None);
    }

    #[test]
    fn an_odd_host_is_not_reflected() {
        for host in ["evil.example; script-src *", "a b", "x\"y", ""] {
            let page = respond(&request("GET", "/", &[("host", host)])).unwrap();
            let csp = header(&page, "Content-Security-Policy").unwrap();
            assert!(csp.contains("connect-src 'self'; "), "{host}: {csp}");
            assert!(!csp.contains("script-src *"));
        }
        let page = respond(&request("GET", "/", &[])).unwrap();
        assert!(header(&page, "Content-Security-Policy")
            .unwrap()
            .contains("connect-src 'self'; "));
    }

    #[test]
    fn etags_are_strong_distinct_and_stable() {
        let tags: Vec<String> = ["/", "/app.css", "/app.js"]
            .iter()
            .map(|path| header(&get(path), "ETag").unwrap().to_string())
            .collect();
        for tag in &tags {
            assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"));
        }
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[1], tags[2]);
        assert_eq!(header(&get("/"), "ETag").unwrap(), tags[0]);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn if_none_match_gives_304_without_body() {
        let etag = header(&get("/app.js"), "ETag").unwrap().to_string();
        for value in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".to_string(),
        ] {
            let response =
                respond(&request("GET", "/app.js", &[("if-none-match", &value)])).unwrap();
            assert_eq!(response.status, 304, "{value}");
            assert!(response.body.is_empty());
            assert_eq!(header(&response, "ETag"), Some(etag.as_str()));
            assert_eq!(header(&response, "Cache-Control"), Some("no-cache"));
        }
        for value in ["\"other\"", "", "\u{1}", &etag[1..]] {
            let response =
                respond(&request("GET", "/app.js", &[("if-none-match", value)])).unwrap();
            assert_eq!(response.status, 200, "{value:?}");
        }
        let page_tag = header(&get("/"), "ETag").unwrap().to_string();
        let wrong_file = respond(&request("GET", "/app.js", &[("if-none-match", &page_tag)]));
        assert_eq!(wrong_file.unwrap().status, 200);
    }

    #[test]
    fn head_is_answered_like_get() {
        let head = respond(&request("HEAD", "/", &[])).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body, INDEX, "the reactor drops the body of a HEAD");
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            let response = respond(&request(method, "/", &[])).unwrap();
            assert_eq!(response.status, 405, "{method}");
            assert_eq!(header(&response, "Allow"), Some(ALLOWED));
            assert_eq!(response.outcome, "method not allowed");
        }
    }
}

//! The web client's files over real sockets: `/` and its assets, their
//! types and headers, revalidation with 304, HEAD, 405, and that serving
//! them leaves the API's behaviour alone.

mod common;

use common::*;

#[test]
fn the_page_and_its_assets_are_served_with_their_types() {
    let server = TestServer::start();
    let page = get(server.http_addr(), "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
    assert!(page.body.contains(r#"data-testid="message-input""#));
    assert!(page.body.contains(r#"src="app.js""#));
    assert!(page.body.contains(r#"href="app.css""#));
    assert_eq!(
        page.header("content-length"),
        Some(page.body.len().to_string().as_str())
    );

    let js = get(server.http_addr(), "/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.body.contains("new WebSocket("));

    let css = get(server.http_addr(), "/app.css");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(css.body.contains("@media"));

    // The files are those in web/, byte for byte.
    assert_eq!(page.body, include_str!("../web/index.html"));
    assert_eq!(js.body, include_str!("../web/app.js"));
    assert_eq!(css.body, include_str!("../web/app.css"));
}

#[test]
fn the_page_carries_its_security_headers() {
    let server = TestServer::start();
    let page = get(server.http_addr(), "/");
    let csp = page
        .header("content-security-policy")
        .expect("a Content-Security-Policy on the page");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("style-src 'self'"), "{csp}");
    let host = server.http_addr().to_string();
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{host} wss://{host}")),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // CORS stays as on every other response.
    assert_eq!(page.header("access-control-allow-origin"), Some("*"));
    for path in ["/app.js", "/app.css"] {
        let asset = get(server.http_addr(), path);
        assert_eq!(asset.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(asset.header("cache-control"), Some("no-cache"));
    }
}

#[test]
fn cors_origin_flag_applies_to_the_page_too() {
    let server = TestServer::start_with(|config| {
        config.cors_origin = "https://chat.example".to_string();
    });
    let page = get(server.http_addr(), "/");
    assert_eq!(
        page.header("access-control-allow-origin"),
        Some("https://chat.example")
    );
}

#[test]
fn a_matching_etag_gets_304_without_a_body() {
    let server = TestServer::start();
    for path in ["/", "/app.js", "/app.css"] {
        let first = get(server.http_addr(), path);
        let etag = first.header("etag").expect("an ETag").to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong: {etag}"
        );

        let again = get_with(server.http_addr(), path, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{path}");
        assert_eq!(again.body, "");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        assert_eq!(again.header("cache-control"), Some("no-cache"));

        let listed = format!("\"nope\", W/{etag}");
        let weak_in_list = get_with(server.http_addr(), path, &[("If-None-Match", &listed)]);
        assert_eq!(weak_in_list.status, 304, "{path}");

        let stale = get_with(server.http_addr(), path, &[("If-None-Match", "\"0000\"")]);
        assert_eq!(stale.status, 200, "{path}");
        assert_eq!(stale.body, first.body);
    }
}

#[test]
fn a_304_on_a_kept_alive_connection_is_framed_without_a_body() {
    let server = TestServer::start();
    let mut raw = server.raw();
    let first = raw.roundtrip(&raw_request("GET", "/app.css", &[], b""));
    let etag = first.header("etag").expect("an ETag").to_string();
    let condition = format!("If-None-Match: {etag}");
    let not_modified = raw.roundtrip(&raw_request("GET", "/app.css", &[&condition], b""));
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("content-length"), None);
    // The next response on the same connection starts right after the
    // 304's head: no stray body bytes in between.
    let health = raw.roundtrip(&raw_request("GET", "/healthz", &[], b""));
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
}

#[test]
fn head_answers_the_headers_of_get() {
    let server = TestServer::start();
    let mut raw = server.raw();
    let got = raw.roundtrip(&raw_request("GET", "/", &[], b""));
    raw.send(&raw_request("HEAD", "/", &[], b""));
    let head = raw.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(head.content_length(), Some(got.body.len()));
    assert_eq!(head.header("etag"), got.header("etag"));
    // Nothing follows the head: the next request is answered next.
    let health = raw.roundtrip(&raw_request("GET", "/healthz", &[], b""));
    assert_eq!(health.status, 200);
}

#[test]
fn other_methods_on_the_web_paths_are_405() {
    let server = TestServer::start();
    for path in ["/", "/app.js", "/app.css"] {
        let posted = post_form(server.http_addr(), path, &[("a", "b")]);
        assert_eq!(posted.status, 405, "{path}");
        assert_eq!(posted.header("allow"), Some("GET, HEAD"));
        assert_eq!(posted.res(), "method not allowed");
        let mut raw = server.raw();
        for method in ["PUT", "DELETE", "OPTIONS"] {
            let response = raw.roundtrip(&raw_request(method, path, &[], b""));
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(response.header("allow"), Some("GET, HEAD"));
            assert_common_headers(&response, "*");
        }
    }
}

#[test]
fn neighbouring_paths_stay_404_and_the_api_is_unchanged() {
    let server = TestServer::start();
    for path in ["/index.html", "/app.jsx", "/web/app.js", "/app.js/"] {
        let reply = get(server.http_addr(), path);
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.res(), "not found");
    }
    let health = get(server.http_addr(), "/healthz");
    assert_eq!(health.header("content-type"), Some(JSON_TYPE));
    let list = get(server.http_addr(), "/chatroom/list");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-security-policy"), None);
}

#[test]
fn page_requests_are_counted_under_their_own_label() {
    let server = TestServer::start();
    get(server.http_addr(), "/");
    get(server.http_addr(), "/app.js");
    let metrics = get(server.http_addr(), "/metrics").body;
    assert!(
        metrics.contains(r#"chatroom_http_requests_total{endpoint="web",outcome="ok"} 2"#),
        "{metrics}"
    );
}

//! HTTP/1.x transport (SPEC §2.1, §7 caps) over raw sockets: persistence
//! of connections, pipelining, body framing, smuggling defences, limits and
//! timeouts, and the headers every response carries.

mod common;

use std::time::Duration;

use common::*;

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

fn assert_health(response: &RawResponse) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), r#"{"status":"ok"}"#);
}

fn register_body(tel: &str, name: &str) -> String {
    format!("user_tel={tel}&user_name={name}&user_password=password1")
}

// ---------------------------------------------------------------------------
// Connection persistence and pipelining
// ---------------------------------------------------------------------------

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let first = conn.roundtrip(HEALTH);
    assert_health(&first);
    assert!(!first.says_close(), "{first:?}");
    let second = conn.roundtrip(b"GET /chatroom/list HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), r#"{"rooms":[],"room_list":[]}"#);
    // A third, a POST with a body, on the same connection.
    let third = conn.roundtrip(&raw_form_post("/chatroom/create", "room_name=kept", &[]));
    assert_eq!(third.res(), "chatroom create successfully");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let mut batch = Vec::new();
    batch.extend_from_slice(&raw_form_post("/chatroom/create", "room_name=piped", &[]));
    batch.extend_from_slice(&raw_form_post(
        "/auth/register",
        &register_body("4242", "piper"),
        &[],
    ));
    batch.extend_from_slice(HEALTH);
    batch.extend_from_slice(b"GET /chatroom/list HTTP/1.1\r\nHost: test\r\n\r\n");
    batch.extend_from_slice(&raw_form_post(
        "/chatroom/room",
        "room_name=piped&user_name=piper&status=1",
        &[],
    ));
    batch.extend_from_slice(b"GET /chatroom/list HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send(&batch);

    assert_eq!(conn.read_response().res(), "chatroom create successfully");
    assert_eq!(conn.read_response().res(), "register successfully");
    assert_health(&conn.read_response());
    let listed = conn.read_response();
    assert_eq!(
        listed.text(),
        r#"{"rooms":[{"name":"piped","room_name":"piped","population":0}],"room_list":[{"name":"piped","room_name":"piped","population":0}]}"#
    );
    assert_eq!(conn.read_response().res(), "join chatroom");
    let listed = conn.read_response();
    assert_eq!(rooms_of(&listed.json()), vec![("piped".to_string(), 1)]);
    // And the connection is still usable.
    assert_health(&conn.roundtrip(HEALTH));
}

#[test]
fn three_pipelined_requests_with_a_slow_one_in_the_middle() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let mut batch = Vec::new();
    batch.extend_from_slice(HEALTH);
    batch.extend_from_slice(&raw_form_post(
        "/auth/register",
        &register_body("5151", "slow"),
        &[],
    ));
    batch.extend_from_slice(b"GET /missing HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send(&batch);
    assert_health(&conn.read_response());
    let middle = conn.read_response();
    assert_eq!(middle.res(), "register successfully");
    let last = conn.read_response();
    assert_eq!(last.status, 404);
    assert_eq!(last.res(), "not found");
}

#[test]
fn connection_close_is_honoured() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let response =
        conn.roundtrip(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    assert_health(&response);
    assert!(response.says_close(), "{response:?}");
    conn.assert_closed();
}

#[test]
fn connection_close_after_a_slow_request() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let response = conn.roundtrip(&raw_form_post(
        "/auth/register",
        &register_body("6161", "closer"),
        &["Connection: close"],
    ));
    assert_eq!(response.res(), "register successfully");
    assert!(response.says_close(), "{response:?}");
    conn.assert_closed();
}

#[test]
fn pipelined_requests_after_connection_close_are_not_answered() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let mut batch = b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec();
    batch.extend_from_slice(&raw_form_post("/chatroom/create", "room_name=never", &[]));
    conn.send(&batch);
    assert_health(&conn.read_response());
    conn.assert_closed();
    assert_eq!(rooms_of(&list(server.http_addr())).len(), 0);
}

#[test]
fn http10_closes_by_default() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let response = conn.roundtrip(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_health(&response);
    assert!(
        response.version == "HTTP/1.0" || response.version == "HTTP/1.1",
        "{response:?}"
    );
    conn.assert_closed();
}

#[test]
fn http10_keep_alive_on_request() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let first = conn.roundtrip(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_health(&first);
    assert!(
        first
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
        "{first:?}"
    );
    let second = conn.roundtrip(b"POST /chatroom/create HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\nroom_name=ten1");
    assert_eq!(second.res(), "chatroom create successfully");
    // Without the token the next one closes.
    let third = conn.roundtrip(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_health(&third);
    conn.assert_closed();
}

#[test]
fn a_request_split_byte_by_byte() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let request = raw_form_post("/auth/register", &register_body("7171", "bytewise"), &[]);
    conn.send_bytewise(&request);
    assert_eq!(conn.read_response().res(), "register successfully");
    conn.send_bytewise(HEALTH);
    assert_health(&conn.read_response());
    assert_eq!(
        login(server.http_addr(), "7171", "password1").res(),
        "login successfully"
    );
}

// ---------------------------------------------------------------------------
// Bodies: chunked, 100-continue
// ---------------------------------------------------------------------------

#[test]
fn chunked_body_with_extension() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let body = register_body("8181", "chunky");
    let (a, rest) = body.split_at(10);
    let (b, c) = rest.split_at(17);
    let request = format!(
        "POST /auth/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x};name=value\r\n{a}\r\n{:X}\r\n{b}\r\n{:x};x=\"quoted\"\r\n{c}\r\n0\r\n\r\n",
        a.len(),
        b.len(),
        c.len()
    );
    let response = conn.roundtrip(request.as_bytes());
    assert_eq!(response.res(), "register successfully");
    // The connection stays in sync after the chunked body.
    assert_health(&conn.roundtrip(HEALTH));
    assert_eq!(
        login(server.http_addr(), "8181", "password1").res(),
        "login successfully"
    );
}

#[test]
fn chunked_body_with_trailer_fields() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let body = "room_name=trailed";
    let request = format!(
        "POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nX-Checksum: abc\r\n\r\n",
        body.len()
    );
    let response = conn.roundtrip(request.as_bytes());
    assert_eq!(response.res(), "chatroom create successfully");
    assert_health(&conn.roundtrip(HEALTH));
}

#[test]
fn chunked_body_sent_in_pieces() {
    let server = TestServer::start();
    let mut conn = server.raw();
    conn.send(b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.send(b"5\r\nroom_");
    conn.send(b"\r\n9\r\nname=sl");
    conn.send(b"ow\r\n0\r");
    conn.send(b"\n\r\n");
    assert_eq!(conn.read_response().res(), "chatroom create successfully");
    assert_eq!(
        rooms_of(&list(server.http_addr())),
        vec![("slow".to_string(), 0)]
    );
}

#[test]
fn expect_100_continue() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let body = register_body("9191", "expecting");
    let head = format!(
        "POST /auth/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes());
    let interim = conn.read_head();
    assert_eq!(interim.version, "HTTP/1.1");
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.send(body.as_bytes());
    let response = conn.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.res(), "register successfully");
    assert_health(&conn.roundtrip(HEALTH));
}

// ---------------------------------------------------------------------------
// Smuggling defences: 400 and close
// ---------------------------------------------------------------------------

fn assert_rejected_and_closed(request: &[u8], status: u16) {
    let server = TestServer::start();
    let mut conn = server.raw();
    conn.send_lossy(request);
    let response = conn.read_response();
    assert_eq!(
        response.status,
        status,
        "request {:?} got {response:?}",
        String::from_utf8_lossy(request)
    );
    assert_common_headers(&response, "*");
    assert_eq!(response.content_length(), Some(response.body.len()));
    assert!(response.json().is_object());
    conn.assert_closed();
    // Nothing in the request had any effect, and the server still serves.
    assert_eq!(rooms_of(&list(server.http_addr())).len(), 0);
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    // A smuggled request follows; it must not be answered.
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /chatroom/create?room_name=smuggled HTTP/1.1\r\nHost: test\r\n\r\n",
        400,
    );
}

#[test]
fn transfer_encoding_then_content_length_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn two_differing_content_lengths_are_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\nContent-Length: 12\r\n\r\nroom_name=ab",
        400,
    );
}

#[test]
fn non_numeric_content_length_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\nroom_name=x",
        400,
    );
}

#[test]
fn signed_content_length_is_400() {
    // RFC 9110 §8.6: Content-Length = 1*DIGIT; a sign is malformed.
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: +11\r\n\r\nroom_name=x",
        400,
    );
}

#[test]
fn content_length_list_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11, 12\r\n\r\nroom_name=x",
        400,
    );
}

#[test]
fn gzip_transfer_coding_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn unknown_transfer_coding_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
    );
}

#[test]
fn obs_fold_is_400() {
    assert_rejected_and_closed(
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Folded: first\r\n second\r\n\r\n",
        400,
    );
}

#[test]
fn bad_chunk_size_is_400() {
    assert_rejected_and_closed(
        b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nroom_name=x\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn garbage_request_line_is_400() {
    assert_rejected_and_closed(b"this is not http\r\n\r\n", 400);
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn oversize_head_is_431() {
    let padding = format!("X-Padding: {}", "a".repeat(9 * 1024));
    assert_rejected_and_closed(&raw_request("GET", "/healthz", &[&padding], b""), 431);
}

#[test]
fn oversize_request_line_is_431() {
    let target = format!("/healthz?pad={}", "a".repeat(9 * 1024));
    assert_rejected_and_closed(&raw_request("GET", &target, &[], b""), 431);
}

#[test]
fn a_head_under_the_limit_is_served() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let padding = format!("X-Padding: {}", "a".repeat(7 * 1024));
    assert_health(&conn.roundtrip(&raw_request("GET", "/healthz", &[&padding], b"")));
}

fn with_header_count(total: usize) -> Vec<u8> {
    // `Host` is one of the fields.
    let extra: Vec<String> = (1..total).map(|i| format!("X-Field-{i}: {i}")).collect();
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    raw_request("GET", "/healthz", &refs, b"")
}

#[test]
fn sixty_five_headers_is_431() {
    assert_rejected_and_closed(&with_header_count(65), 431);
}

#[test]
fn sixty_four_headers_are_served() {
    let server = TestServer::start();
    let mut conn = server.raw();
    assert_health(&conn.roundtrip(&with_header_count(64)));
}

#[test]
fn body_over_64_kib_is_413() {
    let body = format!("room_name=x&pad={}", "a".repeat(64 * 1024));
    assert_rejected_and_closed(
        &raw_request(
            "POST",
            "/chatroom/create",
            &["Content-Type: application/x-www-form-urlencoded"],
            body.as_bytes(),
        ),
        413,
    );
}

#[test]
fn chunked_body_over_64_kib_is_413() {
    let chunk = "a".repeat(16 * 1024);
    let mut request = b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(b"10\r\nroom_name=x&pad=\r\n");
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert_rejected_and_closed(&request, 413);
}

#[test]
fn body_of_exactly_64_kib_is_accepted() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let prefix = "room_name=big&pad=";
    let body = format!("{prefix}{}", "a".repeat(64 * 1024 - prefix.len()));
    assert_eq!(body.len(), 64 * 1024);
    let response = conn.roundtrip(&raw_request(
        "POST",
        "/chatroom/create",
        &["Content-Type: application/x-www-form-urlencoded"],
        body.as_bytes(),
    ));
    assert_eq!(response.res(), "chatroom create successfully");
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

#[test]
fn slow_headers_get_408_and_close() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_millis(300));
    let mut conn = server.raw();
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: te");
    let response = conn.read_response();
    assert_eq!(response.status, 408, "{response:?}");
    assert_common_headers(&response, "*");
    conn.assert_closed();
}

#[test]
fn slow_body_gets_408_and_close() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_millis(300));
    let mut conn = server.raw();
    conn.send(b"POST /chatroom/create HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\nroom_");
    let response = conn.read_response();
    assert_eq!(response.status, 408, "{response:?}");
    conn.assert_closed();
    assert_eq!(rooms_of(&list(server.http_addr())).len(), 0);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let server = TestServer::start_with(|c| c.keep_alive_timeout = Duration::from_millis(300));
    let mut conn = server.raw();
    assert_health(&conn.roundtrip(HEALTH));
    conn.assert_closed();
}

#[test]
fn keep_alive_idleness_is_measured_from_the_last_request() {
    // Requests every 1.5 s on a 3 s keep-alive: the connection outlives the
    // timeout counted from when it opened, because it is never idle that
    // long; the margins are wide so a busy machine does not matter.
    let server = TestServer::start_with(|c| c.keep_alive_timeout = Duration::from_secs(3));
    let mut conn = server.raw();
    for _ in 0..4 {
        assert_health(&conn.roundtrip(HEALTH));
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_health(&conn.roundtrip(HEALTH));
    conn.assert_closed();
}

#[test]
fn a_connection_that_never_sends_is_closed() {
    let server = TestServer::start_with(|c| {
        c.keep_alive_timeout = Duration::from_millis(300);
        c.header_timeout = Duration::from_millis(300);
    });
    let mut conn = server.raw();
    conn.assert_closed();
}

// ---------------------------------------------------------------------------
// Response headers
// ---------------------------------------------------------------------------

/// Sends `request` with `Connection: close` semantics and reads to EOF, so
/// that any byte beyond Content-Length would be noticed.
fn exact_response(server: &TestServer, request: &[u8]) -> RawResponse {
    let mut conn = server.raw();
    conn.send(request);
    let response = conn.read_response();
    conn.assert_closed();
    response
}

#[test]
fn every_response_has_type_length_and_cors() {
    let server = TestServer::start();
    register_ok(server.http_addr(), "1212", "header user", "password1");
    let close = ["Connection: close"];
    let form = [
        "Connection: close",
        "Content-Type: application/x-www-form-urlencoded",
    ];
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (200, raw_request("GET", "/healthz", &close, b"")),
        (200, raw_request("GET", "/chatroom/list", &close, b"")),
        (200, raw_request("POST", "/chatroom/create", &form, b"room_name=hdr")),
        (200, raw_request("POST", "/auth/login", &form, b"user_tel=1212&user_password=password1")),
        (200, raw_request("POST", "/auth/register", &form, b"user_tel=1313&user_name=h2&user_password=password1")),
        (200, raw_request("POST", "/chatroom/room", &form, b"room_name=hdr&user_name=h2&status=1")),
        (400, raw_request("POST", "/chatroom/create", &form, b"room_name=")),
        (404, raw_request("GET", "/nope", &close, b"")),
        (405, raw_request("PUT", "/healthz", &close, b"")),
        (415, raw_request("POST", "/chatroom/create", &["Connection: close", "Content-Type: text/plain"], b"x")),
        (400, b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec()),
    ];
    for (status, request) in cases {
        let response = exact_response(&server, &request);
        assert_eq!(
            response.status,
            status,
            "{:?} -> {response:?}",
            String::from_utf8_lossy(&request)
        );
        assert_common_headers(&response, "*");
        assert_eq!(response.content_length(), Some(response.body.len()));
        assert!(response.json().is_object(), "{response:?}");
    }
}

#[test]
fn configured_cors_origin_on_raw_responses() {
    let server = TestServer::start_with(|c| c.cors_origin = "https://chat.example".to_string());
    for request in [
        raw_request("GET", "/healthz", &["Connection: close"], b""),
        raw_request("GET", "/nope", &["Connection: close"], b""),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(),
    ] {
        let response = exact_response(&server, &request);
        assert_common_headers(&response, "https://chat.example");
    }
    let mut conn = server.raw();
    let preflight = conn.roundtrip(b"OPTIONS /chatroom/create HTTP/1.1\r\nHost: t\r\nOrigin: https://chat.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://chat.example")
    );
}

#[test]
fn options_preflight_on_raw_socket() {
    let server = TestServer::start();
    let mut conn = server.raw();
    let response = conn.roundtrip(b"OPTIONS /auth/register HTTP/1.1\r\nHost: t\r\nOrigin: https://x.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n");
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    let methods = response
        .header("access-control-allow-methods")
        .expect("allowed methods");
    for method in ["GET", "POST"] {
        assert!(methods.contains(method), "{methods:?}");
    }
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    // 204 carries no body, so the next response follows directly.
    assert_health(&conn.roundtrip(HEALTH));
}

#[test]
fn head_gives_get_headers_without_a_body() {
    let server = TestServer::start();
    create_room_ok(server.http_addr(), "head room");
    let mut conn = server.raw();
    let got = conn.roundtrip(b"GET /chatroom/list HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(b"HEAD /chatroom/list HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(got.body.len()));
    assert_eq!(head.header("content-type"), Some(JSON_TYPE));
    assert_eq!(head.header("access-control-allow-origin"), Some("*"));
    // Had the HEAD response carried a body, this would read it instead.
    assert_health(&conn.roundtrip(HEALTH));

    conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let head = conn.read_head();
    assert_eq!(head.content_length(), Some(r#"{"status":"ok"}"#.len()));
    conn.assert_closed();
}

// ---------------------------------------------------------------------------
// Connection cap (SPEC §7)
// ---------------------------------------------------------------------------

#[test]
fn connections_past_the_cap_get_503_and_the_rest_keep_working() {
    if common::embedded_only("the cap is per process and the connections alternate nodes") {
        return;
    }
    let server = TestServer::start_with(|c| c.max_connections = 2);
    let mut first = server.raw();
    let mut second = server.raw();
    assert_health(&first.roundtrip(HEALTH));
    assert_health(&second.roundtrip(HEALTH));

    let mut third = server.raw();
    let refused = third.read_response();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_common_headers(&refused, "*");
    third.assert_closed();

    assert_health(&first.roundtrip(HEALTH));
    assert_health(&second.roundtrip(HEALTH));

    // Once a connection goes, a new one is served again.
    drop(first);
    wait_until("a slot to free up", || {
        let mut conn = server.raw();
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = conn.read_response();
        response.status == 200
    });
}

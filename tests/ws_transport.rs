//! The WebSocket transport (SPEC §5): handshake refusals, frame rules and
//! close codes, keep-alive pings, the idle close, and the slow-consumer limit.

mod common;
mod ws_common;

use std::io::{Read, Write};
use std::time::Duration;

use common::TestServer;
use serde_json::Value;
use tungstenite::Message;
use ws_common::{
    build_frame, masked, packet, Client, RawWs, KEY, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING,
    OP_PONG, OP_TEXT,
};

fn upgrade_lines(version: &str, key: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = RawWs::upgrade_headers(version, key);
    lines.extend(extra.iter().map(|s| s.to_string()));
    lines
}

/// Sends an upgrade request with the given lines and reads the answer.
fn handshake(addr: std::net::SocketAddr, path: &str, lines: &[String]) -> ws_common::HttpReply {
    let mut raw = RawWs::tcp(addr);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    raw.send_request(path, &lines);
    raw.read_reply()
}

fn assert_json_refusal(reply: &ws_common::HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    let body: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {reply:?}"));
    assert!(body["res"].is_string(), "no res in {body}");
}

#[test]
fn upgrade_on_any_path_of_the_chat_port() {
    let server = TestServer::start();
    for path in ["/", "/chat", "/a/b/c?x=1&y=2", "/ws"] {
        let mut raw = RawWs::connect(server.ws_addr(), path);
        raw.send_raw(&masked(OP_PING, path.as_bytes()));
        let pong = raw.frame();
        assert_eq!(
            (pong.opcode, pong.payload.as_slice()),
            (OP_PONG, path.as_bytes())
        );
    }
}

#[test]
fn upgrade_at_ws_on_the_http_port() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.http_addr(), "/ws");
    raw.send_raw(&masked(OP_PING, b"api port"));
    let pong = raw.frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"api port"[..])
    );
    // The API keeps answering beside it.
    server.assert_healthy();
    assert_eq!(server.post("/chatroom/list", &[]).0, 200);
}

#[test]
fn wrong_version_is_426_naming_13() {
    let server = TestServer::start();
    for addr in [server.ws_addr(), server.http_addr()] {
        let path = "/ws";
        let reply = handshake(addr, path, &upgrade_lines("8", KEY, &[]));
        assert_json_refusal(&reply, 426);
        assert_eq!(
            reply.header("sec-websocket-version"),
            Some("13"),
            "{reply:?}"
        );
    }
}

#[test]
fn bad_key_is_400_with_a_json_body() {
    let server = TestServer::start();
    for key in ["abc", "not base64 at all!!!!!!!", "dGhlIHNhbXBsZSBub25jZQ"] {
        for addr in [server.ws_addr(), server.http_addr()] {
            let reply = handshake(addr, "/ws", &upgrade_lines("13", key, &[]));
            assert_json_refusal(&reply, 400);
        }
    }
}

#[test]
fn missing_key_is_400() {
    let server = TestServer::start();
    let lines = vec![
        "Upgrade: websocket".to_string(),
        "Connection: Upgrade".to_string(),
        "Sec-WebSocket-Version: 13".to_string(),
    ];
    assert_json_refusal(&handshake(server.ws_addr(), "/", &lines), 400);
}

#[test]
fn incomplete_upgrade_requests_are_400() {
    let server = TestServer::start();
    let key_line = format!("Sec-WebSocket-Key: {KEY}");
    let without_upgrade = [
        "Connection: Upgrade",
        key_line.as_str(),
        "Sec-WebSocket-Version: 13",
    ];
    let without_connection = [
        "Upgrade: websocket",
        key_line.as_str(),
        "Sec-WebSocket-Version: 13",
    ];
    let wrong_upgrade = [
        "Upgrade: h2c",
        "Connection: Upgrade",
        key_line.as_str(),
        "Sec-WebSocket-Version: 13",
    ];
    for lines in [&without_upgrade[..], &without_connection, &wrong_upgrade] {
        for addr in [server.ws_addr(), server.http_addr()] {
            let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            assert_json_refusal(&handshake(addr, "/ws", &lines), 400);
        }
    }
    // Not a GET.
    let mut raw = RawWs::tcp(server.ws_addr());
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {key_line}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    raw.send_raw(head.as_bytes());
    assert_json_refusal(&raw.read_reply(), 400);
}

#[test]
fn plain_get_on_the_chat_port_is_400() {
    let server = TestServer::start();
    let mut raw = RawWs::tcp(server.ws_addr());
    raw.send_request("/", &[]);
    let reply = raw.read_reply();
    assert_json_refusal(&reply, 400);
}

#[test]
fn a_handshake_that_does_not_complete_in_time_gets_408_and_a_close() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_millis(300));
    let mut raw = RawWs::tcp(server.ws_addr());
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .unwrap();
    let reply = raw.read_reply();
    assert_eq!(reply.status, 408);
    let mut rest = Vec::new();
    raw.stream
        .read_to_end(&mut rest)
        .expect("the server closes the connection");
    assert!(rest.is_empty());
    server.assert_healthy();
}

#[test]
fn token_lists_and_case_are_accepted() {
    let server = TestServer::start();
    let lines = vec![
        "upgrade: WebSocket".to_string(),
        "connection: keep-alive, Upgrade".to_string(),
        format!("sec-websocket-key: {KEY}"),
        "sec-websocket-version: 13".to_string(),
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits".to_string(),
    ];
    let reply = handshake(server.ws_addr(), "/", &lines);
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(
        reply.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // No extension is negotiated.
    assert_eq!(reply.header("sec-websocket-extensions"), None, "{reply:?}");
}

#[test]
fn allowed_origins_restrict_the_handshake() {
    let server = TestServer::start_with(|c| c.allowed_origins = vec!["https://ok.example".into()]);
    for addr in [server.ws_addr(), server.http_addr()] {
        let reply = handshake(
            addr,
            "/ws",
            &upgrade_lines("13", KEY, &["Origin: https://evil.example"]),
        );
        assert_json_refusal(&reply, 403);
        let reply = handshake(
            addr,
            "/ws",
            &upgrade_lines("13", KEY, &["Origin: https://ok.example"]),
        );
        assert_eq!(reply.status, 101, "{reply:?}");
    }
}

#[test]
fn any_origin_without_a_list() {
    let server = TestServer::start();
    let reply = handshake(
        server.ws_addr(),
        "/",
        &upgrade_lines("13", KEY, &["Origin: https://anything.example"]),
    );
    assert_eq!(reply.status, 101, "{reply:?}");
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    for payload in [&b""[..], b"x", &[0u8, 255, 7, 128][..], &[b'p'; 125][..]] {
        raw.send_raw(&masked(OP_PING, payload));
        let pong = raw.frame();
        assert_eq!(pong.opcode, OP_PONG, "{pong:?}");
        assert!(pong.fin);
        assert_eq!(pong.payload, payload);
    }
    // Unsolicited pongs are ignored.
    raw.send_raw(&masked(OP_PONG, b"whatever"));
    raw.send_raw(&masked(OP_PING, b"after"));
    assert_eq!(raw.frame().payload, b"after");
}

#[test]
fn ping_between_fragments_is_answered() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    let key = Some([1, 2, 3, 4]);
    raw.send_raw(&build_frame(false, OP_TEXT, b"not ", key));
    raw.send_raw(&masked(OP_PING, b"mid"));
    let pong = raw.frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"mid"[..])
    );
    raw.send_raw(&build_frame(true, OP_CONT, b"json", key));
    // The reassembled message reaches the chat: not JSON.
    let p = raw.recv();
    assert_eq!(p["type"], "error");
    assert_eq!(p["data"]["msg"], "invalid message");
}

#[test]
fn fragmented_packet_is_reassembled() {
    let server = TestServer::start();
    server.register("alice", "");
    server.create_room("r");
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    let text = packet("join", "alice", "", "r", "").to_string();
    let bytes = text.as_bytes();
    let key = Some([9, 8, 7, 6]);
    raw.send_raw(&build_frame(false, OP_TEXT, &bytes[..5], key));
    raw.send_raw(&build_frame(false, OP_CONT, &bytes[5..20], key));
    raw.send_raw(&build_frame(true, OP_CONT, &bytes[20..], key));
    let p = raw.recv();
    assert_eq!(p["type"], "user");
    assert_eq!(p["data"]["msg"], "create");
}

#[test]
fn close_is_echoed_then_tcp_closes() {
    let server = TestServer::start();
    for code in [1000u16, 1001, 3000, 4999] {
        let mut raw = RawWs::connect(server.ws_addr(), "/");
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        raw.send_raw(&masked(OP_CLOSE, &payload));
        let close = raw.frame();
        assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
        assert_eq!(close.close_code(), Some(code), "the peer's code is echoed");
        raw.expect_eof();
    }
}

#[test]
fn close_without_a_code_is_echoed() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    raw.send_raw(&masked(OP_CLOSE, b""));
    let close = raw.frame();
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert!(close.payload.is_empty(), "{close:?}");
    raw.expect_eof();
}

/// Sends `bytes` on a fresh connection and expects a close with `code`,
/// then the end of the TCP connection.
fn expect_close_after(server: &TestServer, bytes: &[u8], code: u16) {
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    raw.send_raw(bytes);
    assert_eq!(raw.expect_close(), Some(code), "after {bytes:02x?}");
    raw.expect_eof();
}

#[test]
fn unmasked_frame_is_1002() {
    let server = TestServer::start();
    expect_close_after(&server, &build_frame(true, OP_TEXT, b"{}", None), 1002);
}

#[test]
fn protocol_violations_are_1002() {
    let server = TestServer::start();
    let key = Some([5, 6, 7, 8]);
    // RSV1 set (no extension was negotiated).
    let mut rsv = masked(OP_TEXT, b"{}");
    rsv[0] |= 0x40;
    expect_close_after(&server, &rsv, 1002);
    // Unknown opcodes.
    expect_close_after(&server, &masked(0x3, b"x"), 1002);
    expect_close_after(&server, &masked(0xB, b"x"), 1002);
    // Control frame over 125 bytes.
    expect_close_after(&server, &masked(OP_PING, &[0u8; 126]), 1002);
    // Fragmented control frame.
    expect_close_after(&server, &build_frame(false, OP_PING, b"x", key), 1002);
    // Continuation without a message to continue.
    expect_close_after(&server, &masked(OP_CONT, b"x"), 1002);
    // A new message inside a fragmented one.
    let mut bytes = build_frame(false, OP_TEXT, b"a", key);
    bytes.extend(masked(OP_TEXT, b"b"));
    expect_close_after(&server, &bytes, 1002);
    // Close codes that may not be sent, and a one-byte close payload.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 5000] {
        expect_close_after(&server, &masked(OP_CLOSE, &code.to_be_bytes()), 1002);
    }
    expect_close_after(&server, &masked(OP_CLOSE, &[3]), 1002);
}

#[test]
fn invalid_utf8_text_is_1007() {
    let server = TestServer::start();
    expect_close_after(&server, &masked(OP_TEXT, b"{\"a\":\"\xff\"}"), 1007);
    // Checked as fragments arrive: the first fragment is already invalid,
    // and the close comes without waiting for the rest.
    let key = Some([1, 1, 2, 3]);
    expect_close_after(
        &server,
        &build_frame(false, OP_TEXT, b"ok \xc3\x28 then", key),
        1007,
    );
    // Invalid UTF-8 in a close reason.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"\xff");
    expect_close_after(&server, &masked(OP_CLOSE, &payload), 1007);
}

#[test]
fn binary_frames_are_not_closed_but_refused_by_the_chat() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    raw.send_raw(&masked(OP_BINARY, &[0xff, 0xfe]));
    let p = raw.recv();
    assert_eq!(p["type"], "error");
    assert_eq!(p["data"]["msg"], "invalid message");
}

#[test]
fn message_over_the_size_limit_is_1009() {
    let server = TestServer::start_with(|c| c.ws_limits.max_message_bytes = 1024);
    // Exactly at the limit: delivered (and refused by the chat as not JSON).
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    raw.send_raw(&masked(OP_TEXT, &[b'a'; 1024]));
    assert_eq!(raw.recv()["data"]["msg"], "invalid message");
    // One byte over, in one frame.
    expect_close_after(&server, &masked(OP_TEXT, &[b'a'; 1025]), 1009);
    // Over the limit across fragments.
    let key = Some([4, 3, 2, 1]);
    let mut bytes = build_frame(false, OP_TEXT, &[b'a'; 600], key);
    bytes.extend(build_frame(true, OP_CONT, &[b'a'; 600], key));
    expect_close_after(&server, &bytes, 1009);
}

#[test]
fn default_message_limit_is_64_kib() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    raw.send_raw(&masked(OP_TEXT, &vec![b'a'; 64 * 1024]));
    assert_eq!(raw.recv()["data"]["msg"], "invalid message");
    expect_close_after(&server, &masked(OP_TEXT, &vec![b'a'; 64 * 1024 + 1]), 1009);
}

#[test]
fn protocol_close_makes_the_chat_see_a_leave() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    let mut b = server.client();
    b.join_ok("b", "r");
    let mut a = RawWs::connect(server.ws_addr(), "/");
    a.send_packet(&packet("join", "a", "", "r", ""));
    assert_eq!(a.recv()["data"]["msg"], "join");
    b.expect("user", "a", "r", "join");
    a.send_raw(&build_frame(true, OP_TEXT, b"{}", None));
    assert_eq!(a.expect_close(), Some(1002));
    b.expect("user", "a", "r", "leave");
}

#[test]
fn server_pings_an_idle_connection() {
    let server = TestServer::start_with(|c| {
        c.ws_ping_after = Duration::from_millis(200);
        c.ws_idle_timeout = Duration::from_secs(60);
    });
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    let frame = raw.frame();
    assert_eq!(frame.opcode, OP_PING, "{frame:?}");
    // Answering keeps it open: it pings again later rather than closing.
    raw.send_raw(&masked(OP_PONG, &frame.payload));
    let frame = raw.frame();
    assert_eq!(frame.opcode, OP_PING, "{frame:?}");
}

#[test]
fn answering_pings_keeps_a_connection_past_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.ws_ping_after = Duration::from_millis(100);
        c.ws_idle_timeout = Duration::from_millis(500);
    });
    // tungstenite answers each ping with a pong while reading. Twelve pings
    // take at least 1.2 s, more than twice the idle timeout.
    let mut client = Client::connect(server.ws_addr(), "/");
    for _ in 0..12 {
        match client.ws.read() {
            Ok(Message::Ping(_)) => {}
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    client.send_text("still here");
    let p = client.recv();
    assert_eq!(p["data"]["msg"], "invalid message");
}

#[test]
fn silent_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.ws_ping_after = Duration::from_millis(100);
        c.ws_idle_timeout = Duration::from_millis(400);
    });
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    let mut b = server.client();
    b.join_ok("b", "r");
    let mut silent = RawWs::connect(server.ws_addr(), "/");
    silent.send_packet(&packet("join", "a", "", "r", ""));
    assert_eq!(silent.recv()["data"]["msg"], "join");
    b.expect("user", "a", "r", "join");

    // b keeps reading (and so answering pings) on its own thread until it
    // hears a's leave.
    let listener = std::thread::spawn(move || {
        b.expect("user", "a", "r", "leave");
        b.say_ok("b", "r", "still here");
    });

    // The silent client never answers; it sees a ping, then the close.
    let mut saw_ping = false;
    loop {
        match silent.read_frame() {
            Ok(Some(frame)) if frame.opcode == OP_PING => saw_ping = true,
            Ok(Some(frame)) if frame.opcode == OP_CLOSE => {
                assert_eq!(frame.close_code(), Some(1001), "{frame:?}");
                silent.expect_eof();
                break;
            }
            Ok(Some(frame)) => panic!("unexpected {frame:?}"),
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("waiting for the idle close: {e}"),
        }
    }
    assert!(saw_ping, "closed without a ping first");
    // b, which answers pings, stays, and hears the leave.
    listener.join().expect("b heard a leave and stayed open");
}

#[test]
fn slow_consumer_is_closed_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| {
        c.max_outbound_bytes = 64 * 1024;
        c.chat.ws_rate = 0;
    });
    for name in ["slow", "fast", "bystander"] {
        server.register(name, "");
    }
    server.create_room("r");
    server.create_room("elsewhere");

    // The slow client joins and then never reads again.
    let mut slow = RawWs::connect(server.ws_addr(), "/");
    slow.send_packet(&packet("join", "slow", "", "r", ""));
    assert_eq!(slow.recv()["data"]["msg"], "create");

    let mut fast = server.client();
    fast.join_ok("fast", "r");
    let mut bystander = server.client();
    bystander.join_ok("bystander", "elsewhere");

    let body = "x".repeat(1000);
    const BATCH: usize = 20;
    const MAX_MESSAGES: usize = 60_000;
    let mut sent = 0usize;
    let mut echoed = 0usize;
    let mut saw_leave = false;
    while !saw_leave {
        assert!(
            sent < MAX_MESSAGES,
            "{sent} messages sent and the slow consumer is still connected"
        );
        for i in 0..BATCH {
            fast.queue(&packet(
                "msg",
                "fast",
                "",
                "r",
                &format!("{}{body}", sent + i),
            ));
        }
        fast.flush();
        let batch_end = sent + BATCH;
        while echoed < batch_end {
            let p = fast.recv();
            if p["type"] == "user" {
                assert_eq!(p["data"]["user"]["user_name"], "slow", "{p}");
                assert_eq!(p["data"]["msg"], "leave", "{p}");
                saw_leave = true;
                continue;
            }
            assert_eq!(p["type"], "msg", "{p}");
            assert_eq!(
                p["data"]["msg"],
                format!("{echoed}{body}"),
                "lost or reordered"
            );
            echoed += 1;
        }
        sent = batch_end;
        if (sent / BATCH).is_multiple_of(50) {
            bystander.say_ok("bystander", "elsewhere", "unaffected");
            server.assert_healthy();
        }
    }
    assert_eq!(
        echoed, sent,
        "the fast client got every one of its messages"
    );

    // The slow client, reading at last, finds whole frames and then a 1008
    // close, or the connection ended.
    let mut code = None;
    let mut messages = 0usize;
    loop {
        match slow.read_frame() {
            Ok(Some(frame)) if frame.opcode == OP_TEXT => {
                let p: Value = serde_json::from_str(frame.text()).expect("whole JSON frames");
                if p["type"] == "msg" {
                    messages += 1;
                } else {
                    assert_eq!(p["type"], "user", "{p}");
                }
            }
            Ok(Some(frame)) if frame.opcode == OP_CLOSE => code = frame.close_code(),
            Ok(Some(frame)) if frame.opcode == OP_PING => {}
            Ok(Some(frame)) => panic!("unexpected {frame:?}"),
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the slow consumer: {e}"),
        }
    }
    assert!(messages < sent, "the slow consumer got everything?");
    if let Some(code) = code {
        assert_eq!(code, 1008);
    }

    // Everyone else carries on.
    fast.say_ok("fast", "r", "after");
    bystander.say_ok("bystander", "elsewhere", "after");
    server.assert_healthy();
    let mut late = server.client();
    late.join("slow", "r");
    late.expect("user", "slow", "r", "join");
    fast.expect("user", "slow", "r", "join");
}

#[test]
fn stopping_the_server_closes_websockets_with_1001() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.ws_addr(), "/");
    let mut via_api = RawWs::connect(server.http_addr(), "/ws");
    let dir = server.stop();
    for client in [&mut raw, &mut via_api] {
        assert_eq!(client.expect_close(), Some(1001));
        client.expect_eof();
    }
    drop(dir);
}

#[test]
fn stopping_the_server_closes_room_members_without_leave_storms() {
    let server = TestServer::start();
    server.create_room("hall");
    let mut members = Vec::new();
    for index in 0..3 {
        let name = format!("member{index}");
        server.register(&name, "");
        let mut raw = RawWs::connect(server.ws_addr(), "/");
        raw.send_packet(&packet("join", &name, "", "hall", ""));
        members.push(raw);
    }
    // Each member sees its own join and the later ones.
    for (index, member) in members.iter_mut().enumerate() {
        for _ in index..3 {
            assert_eq!(member.recv()["type"], "user");
        }
    }
    let dir = server.stop();
    for member in &mut members {
        let frame = member.frame();
        assert_eq!(
            frame.opcode, OP_CLOSE,
            "the first thing after a stop is the close"
        );
        assert_eq!(frame.close_code(), Some(1001));
        member.expect_eof();
    }
    drop(dir);
}

#[test]
fn an_upgrade_completed_during_shutdown_is_refused_with_503() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_secs(30));
    let mut raw = RawWs::tcp(server.ws_addr());
    // Half a handshake: the server owes this request an answer.
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n");
    server.assert_healthy();
    let stopping = std::thread::spawn(move || server.stop());
    // Once the listeners are gone, the server is shutting down.
    let deadline = std::time::Instant::now() + ws_common::POLL_DEADLINE;
    let http_addr = raw.stream.peer_addr().expect("peer");
    while std::net::TcpStream::connect(http_addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept accepting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    raw.send_raw(
        format!(
            "Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    let reply = raw.read_reply();
    assert_eq!(reply.status, 503);
    raw.expect_eof();
    // A stop that is not clean panics the thread.
    let dir = stopping.join().expect("stop thread");
    drop(dir);
}

fn metric_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample for {name} in\n{text}"))
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut raw = RawWs::tcp(addr);
    raw.send_request("/metrics", &[]);
    String::from_utf8(raw.read_reply().body).expect("UTF-8 metrics")
}

#[test]
fn metrics_count_upgrades_messages_and_bytes() {
    let server = TestServer::start();
    let before = scrape(server.http_addr());
    assert_eq!(
        metric_value(&before, "chatroom_websocket_upgrades_total"),
        0
    );
    let bytes_before = metric_value(&before, "chatroom_bytes_in_total");

    let mut chat_port = RawWs::connect(server.ws_addr(), "/");
    let mut api_port = RawWs::connect(server.http_addr(), "/ws");
    let mut sent = 0;
    for text in ["not json", "[]", "{}"] {
        let frame = masked(OP_TEXT, text.as_bytes());
        sent += frame.len();
        chat_port.send_raw(&frame);
    }
    let binary = masked(OP_BINARY, b"\x00\x01");
    sent += binary.len();
    api_port.send_raw(&binary);
    // Each packet earns an error packet: four frames out in all.
    for _ in 0..3 {
        assert_eq!(chat_port.recv()["type"], "error");
    }
    assert_eq!(api_port.recv()["type"], "error");

    let after = scrape(server.http_addr());
    assert_eq!(metric_value(&after, "chatroom_websocket_upgrades_total"), 2);
    assert_eq!(metric_value(&after, "chatroom_ws_messages_in_total"), 4);
    assert_eq!(metric_value(&after, "chatroom_ws_messages_out_total"), 4);
    assert_eq!(
        metric_value(&after, "chatroom_open_connections_websocket"),
        2
    );
    let bytes_in = metric_value(&after, "chatroom_bytes_in_total") - bytes_before;
    assert!(
        bytes_in >= sent as u64,
        "{bytes_in} bytes in, {sent} sent as frames alone"
    );
}

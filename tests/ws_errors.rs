//! Every error of the SPEC §4 table: an `error` packet to the sender only,
//! echoing what it sent, and the connection stays usable.

mod common;
mod ws_common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use tungstenite::Message;
use ws_common::{packet, packet_with_token, Client, POLL_DEADLINE};

/// A server with users "alice" and "bob" and a room "r".
fn setup() -> TestServer {
    let server = TestServer::start();
    server.register("alice", "");
    server.register("bob", "");
    server.create_room("r");
    server
}

/// After an error the connection still works: a join (or a message in a
/// joined room) succeeds.
fn still_works(ws: &mut Client) {
    ws.join("alice", "r");
    let p = ws.recv();
    assert_eq!(p["type"], "user", "{p}");
    assert_eq!(p["data"]["user"]["user_name"], "alice");
    ws.say_ok("alice", "r", "still open");
}

/// Sends raw text and expects the given error with empty echo fields.
fn expect_bare_error(ws: &mut Client, text: &str, error: &str) {
    ws.send_text(text);
    let p = ws.recv();
    assert_eq!(p["type"], "error", "after {text:?}: {p}");
    assert_eq!(p["data"]["msg"], error, "after {text:?}: {p}");
}

#[test]
fn invalid_message() {
    let server = setup();
    let mut ws = server.client();
    for text in [
        "not json",
        "",
        "[1,2,3]",
        "\"join\"",
        "42",
        "null",
        "{\"type\":\"join\"",
    ] {
        expect_bare_error(&mut ws, text, "invalid message");
    }
    // Missing type, missing data, wrong JSON types for them.
    let data = json!({"user": {"user_name": "alice", "user_avatar": "av"}, "room_name": "r"});
    for bad in [
        json!({"data": data}),
        json!({"type": "join"}),
        json!({"type": 1, "data": data}),
        json!({"type": "join", "data": "r"}),
        json!({"type": "join", "data": [data]}),
        json!({"type": null, "data": data}),
    ] {
        ws.send(&bad);
        let p = ws.recv();
        assert_eq!(p["type"], "error", "after {bad}: {p}");
        assert_eq!(p["data"]["msg"], "invalid message", "after {bad}: {p}");
    }
    // Echo of what was sent, when there was a data object to read it from.
    ws.send(&json!({"data": data}));
    let p = ws.expect_error("invalid message", "alice", "r");
    assert_eq!(p["data"]["user"]["user_avatar"], "av");
    // Empty echo when there was none.
    ws.send_text("garbage");
    let p = ws.expect_error("invalid message", "", "");
    assert_eq!(p["data"]["user"]["user_avatar"], "");

    // A binary frame, even one holding a valid packet.
    ws.ws
        .send(Message::binary(
            packet("join", "alice", "", "r", "")
                .to_string()
                .into_bytes(),
        ))
        .unwrap();
    ws.expect_error("invalid message", "", "");

    still_works(&mut ws);
}

#[test]
fn invalid_type() {
    let server = setup();
    let mut ws = server.client();
    for kind in ["hello", "JOIN", "user", "error", ""] {
        ws.send(&packet(kind, "alice", "av", "r", "x"));
        let p = ws.expect_error("invalid type", "alice", "r");
        assert_eq!(p["data"]["user"]["user_avatar"], "av");
    }
    still_works(&mut ws);
}

#[test]
fn invalid_data() {
    let server = setup();
    let mut ws = server.client();
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"type": "join", "data": {"room_name": "r"}}), "", "r"),
        (
            json!({"type": "join", "data": {"user": "alice", "room_name": "r"}}),
            "",
            "r",
        ),
        (
            json!({"type": "join", "data": {"user": {}, "room_name": "r"}}),
            "",
            "r",
        ),
        (
            json!({"type": "join", "data": {"user": {"user_name": 7}, "room_name": "r"}}),
            "",
            "r",
        ),
        (
            json!({"type": "join", "data": {"user": {"user_name": "alice"}}}),
            "alice",
            "",
        ),
        (
            json!({"type": "join", "data": {"user": {"user_name": "alice"}, "room_name": 3}}),
            "alice",
            "",
        ),
        (
            json!({"type": "msg", "data": {"user": {"user_name": "alice"}, "room_name": "r"}}),
            "alice",
            "r",
        ),
        (
            json!({"type": "msg", "data": {"user": {"user_name": "alice"}, "room_name": "r", "msg": 5}}),
            "alice",
            "r",
        ),
    ];
    for (bad, user, room) in cases {
        ws.send(&bad);
        let p = ws.recv();
        assert_eq!(p["type"], "error", "after {bad}: {p}");
        assert_eq!(p["data"]["msg"], "invalid data", "after {bad}: {p}");
        assert_eq!(p["data"]["user"]["user_name"], user, "after {bad}: {p}");
        assert_eq!(p["data"]["room_name"], room, "after {bad}: {p}");
    }
    // msg and user_avatar may be absent for join and leave.
    ws.send(&json!({"type": "join", "data": {"user": {"user_name": "alice"}, "room_name": "r"}}));
    ws.expect("user", "alice", "r", "create");
    ws.send(&json!({"type": "leave", "data": {"user": {"user_name": "alice"}, "room_name": "r"}}));
    ws.expect("user", "alice", "r", "leave");
    still_works(&mut ws);
}

#[test]
fn illegal_data() {
    let server = setup();
    let mut ws = server.client();
    ws.send(&packet("join", "", "av", "r", ""));
    let p = ws.expect_error("illegal data", "", "r");
    assert_eq!(p["data"]["user"]["user_avatar"], "av");
    ws.send(&packet("join", "alice", "", "", ""));
    ws.expect_error("illegal data", "alice", "");
    ws.send(&packet("msg", "alice", "", "", "hi"));
    ws.expect_error("illegal data", "alice", "");
    still_works(&mut ws);
}

#[test]
fn null_message() {
    let server = setup();
    let mut ws = server.client();
    ws.join("alice", "r");
    ws.expect("user", "alice", "r", "create");
    ws.say("alice", "r", "");
    ws.expect_error("null message", "alice", "r");
    ws.say_ok("alice", "r", "not empty");
}

#[test]
fn unauthorized_with_a_bad_token() {
    let server = setup();
    let token = server.register_with_token("carol", "");
    let mut ws = server.client();
    ws.send(&packet_with_token("join", "carol", "r", "", "bogus"));
    ws.expect_error("unauthorized", "carol", "r");
    // A token from a login is accepted on the same connection.
    ws.send(&packet_with_token("join", "carol", "r", "", &token));
    ws.expect("user", "carol", "r", "create");
    // A bad token on a later packet is still refused.
    ws.send(&packet_with_token("msg", "carol", "r", "x", "bogus"));
    ws.expect_error("unauthorized", "carol", "r");
    ws.say_ok("carol", "r", "ok");
}

#[test]
fn unauthorized_without_a_token_when_required() {
    let server = TestServer::start_with(|c| c.chat.require_token = true);
    let token = server.register_with_token("alice", "");
    server.create_room("r");
    let mut ws = server.client();
    ws.join("alice", "r");
    ws.expect_error("unauthorized", "alice", "r");
    ws.send(&packet_with_token("join", "alice", "r", "", &token));
    ws.expect("user", "alice", "r", "create");
    // Bound now, but every packet still needs its token.
    ws.say("alice", "r", "no token");
    ws.expect_error("unauthorized", "alice", "r");
    ws.send(&packet_with_token(
        "msg",
        "alice",
        "r",
        "with token",
        &token,
    ));
    ws.expect("msg", "alice", "r", "with token");
}

#[test]
fn user_not_exist() {
    let server = setup();
    let mut ws = server.client();
    ws.join("nobody", "r");
    ws.expect_error("user not exist", "nobody", "r");
    // It is checked before the room.
    ws.join("nobody", "no such room");
    ws.expect_error("user not exist", "nobody", "no such room");
    still_works(&mut ws);
}

#[test]
fn user_mismatch_on_a_bound_connection() {
    let server = setup();
    let mut ws = server.client();
    ws.join("alice", "r");
    ws.expect("user", "alice", "r", "create");
    ws.join("bob", "r");
    ws.expect_error("user mismatch", "bob", "r");
    ws.say("bob", "r", "as bob");
    ws.expect_error("user mismatch", "bob", "r");
    ws.say_ok("alice", "r", "as alice");
    // Bob was never admitted.
    assert_eq!(server.population("r"), 1);
}

#[test]
fn user_mismatch_with_another_users_token() {
    let server = setup();
    let token = server.register_with_token("carol", "");
    let mut ws = server.client();
    ws.send(&packet_with_token("join", "alice", "r", "", &token));
    ws.expect_error("user mismatch", "alice", "r");
    ws.send(&packet_with_token("join", "carol", "r", "", &token));
    ws.expect("user", "carol", "r", "create");
}

#[test]
fn invalid_room() {
    let server = setup();
    let mut ws = server.client();
    ws.join("alice", "nowhere");
    ws.expect_error("invalid room", "alice", "nowhere");
    ws.say("alice", "nowhere", "hi");
    ws.expect_error("invalid room", "alice", "nowhere");
    ws.leave("alice", "nowhere");
    ws.expect_error("invalid room", "alice", "nowhere");
    still_works(&mut ws);
}

#[test]
fn full_room() {
    let server = setup();
    server.create_room_with_capacity("solo", 1);
    assert_eq!(server.room("solo", "bob", 1), "join chatroom");
    let mut ws = server.client();
    ws.join("alice", "solo");
    ws.expect_error("full room", "alice", "solo");
    ws.say("alice", "solo", "let me in");
    ws.expect_error("not in room", "alice", "solo");
    assert_eq!(server.population("solo"), 1);
    still_works(&mut ws);

    // The seat holder fits.
    let mut bob = server.client();
    bob.join("bob", "solo");
    bob.expect("user", "bob", "solo", "join");
}

#[test]
fn not_in_room() {
    let server = setup();
    let mut ws = server.client();
    ws.say("alice", "r", "before join");
    ws.expect_error("not in room", "alice", "r");
    ws.leave("alice", "r");
    ws.expect_error("not in room", "alice", "r");
    still_works(&mut ws);
    ws.leave("alice", "r");
    ws.expect("user", "alice", "r", "leave");
    ws.leave("alice", "r");
    ws.expect_error("not in room", "alice", "r");
    ws.say("alice", "r", "after leave");
    ws.expect_error("not in room", "alice", "r");
}

#[test]
fn too_many_rooms() {
    let server = setup();
    for i in 0..17 {
        server.create_room(&format!("room{i}"));
    }
    let mut ws = server.client();
    for i in 0..16 {
        ws.join_ok("alice", &format!("room{i}"));
    }
    ws.join("alice", "room16");
    ws.expect_error("too many rooms", "alice", "room16");
    assert_eq!(server.population("room16"), 0);
    // Another connection of the same user may join it.
    let mut other = server.client();
    other.join_ok("alice", "room16");
    // Leaving one makes room on the first connection.
    ws.leave("alice", "room0");
    ws.expect("user", "alice", "room0", "leave");
    ws.join("alice", "room16");
    ws.expect("user", "alice", "room16", "join");
    other.expect("user", "alice", "room16", "join");
}

#[test]
fn message_too_long() {
    let server = setup();
    let mut ws = server.client();
    ws.join_ok("alice", "r");
    // Counted in characters, not bytes: 2000 two-byte characters fit.
    let longest = "é".repeat(2000);
    ws.say_ok("alice", "r", &longest);
    let longest_ascii = "x".repeat(2000);
    ws.say_ok("alice", "r", &longest_ascii);
    ws.say("alice", "r", &"é".repeat(2001));
    ws.expect_error("message too long", "alice", "r");
    ws.say("alice", "r", &"x".repeat(2001));
    ws.expect_error("message too long", "alice", "r");
    ws.say_ok("alice", "r", "short");
}

#[test]
fn rate_limited_past_the_burst() {
    let server = TestServer::start_with(|c| {
        c.chat.ws_rate = 1;
        c.chat.ws_burst = 3;
    });
    server.register("alice", "");
    server.create_room("r");
    let mut ws = server.client();
    // Four packets in one write: the fourth is over the burst of three.
    ws.queue(&packet("join", "alice", "", "r", ""));
    ws.queue(&packet("msg", "alice", "", "r", "one"));
    ws.queue(&packet("msg", "alice", "", "r", "two"));
    ws.queue(&packet("msg", "alice", "", "r", "three"));
    ws.flush();
    ws.expect("user", "alice", "r", "create");
    ws.expect("msg", "alice", "r", "one");
    ws.expect("msg", "alice", "r", "two");
    ws.expect_error("rate limited", "alice", "r");

    // The connection stays open; once the bucket refills, packets pass.
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        ws.say("alice", "r", "later");
        let p = ws.recv();
        if p["type"] == "msg" {
            assert_eq!(p["data"]["msg"], "later");
            break;
        }
        assert_eq!(p["data"]["msg"], "rate limited", "{p}");
        assert!(Instant::now() < deadline, "the rate limit never lifted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rate_limit_applies_to_invalid_packets_too() {
    let server = TestServer::start_with(|c| {
        c.chat.ws_rate = 1;
        c.chat.ws_burst = 3;
    });
    server.register("alice", "");
    server.create_room("r");
    let mut ws = server.client();
    ws.ws.write(Message::text("garbage")).unwrap();
    ws.ws.write(Message::text("garbage")).unwrap();
    ws.ws.write(Message::text("garbage")).unwrap();
    ws.queue(&packet("join", "alice", "", "r", ""));
    ws.flush();
    for _ in 0..3 {
        ws.expect_error("invalid message", "", "");
    }
    ws.expect_error("rate limited", "alice", "r");
}

#[test]
fn rate_zero_turns_the_limit_off() {
    let server = TestServer::start_with(|c| {
        c.chat.ws_rate = 0;
        c.chat.ws_burst = 3;
    });
    server.register("alice", "");
    server.create_room("r");
    let mut ws = server.client();
    ws.queue(&packet("join", "alice", "", "r", ""));
    for i in 0..200 {
        ws.queue(&packet("msg", "alice", "", "r", &format!("n{i}")));
    }
    ws.flush();
    ws.expect("user", "alice", "r", "create");
    for i in 0..200 {
        ws.expect("msg", "alice", "r", &format!("n{i}"));
    }
}

#[test]
fn errors_go_to_the_sender_only() {
    let server = setup();
    let mut alice = server.client();
    let mut bob = server.client();
    alice.join_ok("alice", "r");
    bob.join_ok("bob", "r");
    alice.expect("user", "bob", "r", "join");
    bob.say("bob", "r", "");
    bob.expect_error("null message", "bob", "r");
    bob.send_text("{");
    bob.expect_error("invalid message", "", "");
    bob.say_ok("bob", "r", "marker");
    // alice's next packet is the marker, not an error.
    alice.expect("msg", "bob", "r", "marker");
}

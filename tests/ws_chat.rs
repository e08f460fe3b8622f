//! The chat protocol over WebSocket (SPEC §3, §4, and the flows of the
//! original API document): joins, leaves, messages, identity and seats.

mod common;
mod ws_common;

use common::TestServer;
use serde_json::json;
use ws_common::{packet, packet_with_token, Client};

/// "创建聊天室": create over HTTP, then a WebSocket join answers `create`.
#[test]
fn flow_create_room_then_join_gets_create() {
    let server = TestServer::start();
    server.register("test", "");
    server.create_room("TEST");

    let mut ws = server.client();
    ws.send(&packet("join", "test", "", "TEST", ""));
    let p = ws.recv();
    assert_eq!(
        p,
        json!({
            "type": "user",
            "data": {
                "user": {"user_name": "test", "user_avatar": ""},
                "room_name": "TEST",
                "msg": "create"
            }
        })
    );
    assert_eq!(server.population("TEST"), 1);
}

/// "进入聊天室" then "退出聊天室": admit over HTTP, join over WebSocket
/// (`join`), leave over WebSocket (`leave` to the leaver), release over
/// HTTP (`leave chatroom`).
#[test]
fn flow_admit_join_leave_release() {
    let server = TestServer::start();
    server.register("owner", "");
    server.register("guest", "");
    server.create_room("TEST");

    let mut owner = server.client();
    owner.join_ok("owner", "TEST");

    assert_eq!(server.room("TEST", "guest", 1), "join chatroom");
    assert_eq!(server.population("TEST"), 2);

    let mut guest = server.client();
    guest.join("guest", "TEST");
    guest.expect("user", "guest", "TEST", "join");
    owner.expect("user", "guest", "TEST", "join");
    // The admission's seat was used, not a second one.
    assert_eq!(server.population("TEST"), 2);

    guest.leave("guest", "TEST");
    let p = guest.expect("user", "guest", "TEST", "leave");
    assert_eq!(p["data"]["user"]["user_avatar"], "");
    owner.expect("user", "guest", "TEST", "leave");

    assert_eq!(server.room("TEST", "guest", 0), "leave chatroom");
    assert_eq!(server.population("TEST"), 1);
    // Released: a second release finds no seat.
    assert_eq!(server.room("TEST", "guest", 0), "user not exist");

    // The owner's connection is unaffected.
    owner.say_ok("owner", "TEST", "still here");
}

#[test]
fn two_members_see_each_others_messages_and_their_own_echo() {
    let server = TestServer::start();
    server.register("alice", "");
    server.register("bob", "");
    server.create_room("lobby");

    let mut alice = server.client();
    let mut bob = server.client();
    alice.join_ok("alice", "lobby");
    bob.join_ok("bob", "lobby");
    alice.expect("user", "bob", "lobby", "join");

    alice.send(&packet("msg", "alice", "", "lobby", "hello bob"));
    let own = alice.recv();
    let seen = bob.recv();
    assert_eq!(own, seen, "sender and receiver get the same packet");
    assert_eq!(own["type"], "msg");
    assert_eq!(own["data"]["user"]["user_name"], "alice");
    assert_eq!(own["data"]["user"]["user_avatar"], "");
    assert_eq!(own["data"]["room_name"], "lobby");
    assert_eq!(own["data"]["msg"], "hello bob");
    let keys: Vec<&String> = own["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "user, room_name, msg, ts, seq: {own}");
    assert_eq!(own["data"]["seq"], 1, "the room's first message");

    bob.send(&packet("msg", "bob", "", "lobby", "héllo ✓ 你好"));
    let own = bob.expect("msg", "bob", "lobby", "héllo ✓ 你好");
    let seen = alice.expect("msg", "bob", "lobby", "héllo ✓ 你好");
    assert_eq!(own, seen);

    // Order is preserved per sender.
    for i in 0..20 {
        alice.say("alice", "lobby", &format!("m{i}"));
    }
    for i in 0..20 {
        alice.expect("msg", "alice", "lobby", &format!("m{i}"));
        bob.expect("msg", "alice", "lobby", &format!("m{i}"));
    }
}

#[test]
fn three_members_see_joins_messages_and_leaves() {
    let server = TestServer::start();
    for name in ["a", "b", "c"] {
        server.register(name, "");
    }
    server.create_room("trio");

    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    a.join("a", "trio");
    a.expect("user", "a", "trio", "create");
    b.join("b", "trio");
    b.expect("user", "b", "trio", "join");
    a.expect("user", "b", "trio", "join");
    c.join("c", "trio");
    c.expect("user", "c", "trio", "join");
    a.expect("user", "c", "trio", "join");
    b.expect("user", "c", "trio", "join");
    assert_eq!(server.population("trio"), 3);

    for (sender, name) in [(0, "a"), (1, "b"), (2, "c")] {
        let text = format!("from {name}");
        [&mut a, &mut b, &mut c][sender].say(name, "trio", &text);
        for client in [&mut a, &mut b, &mut c] {
            client.expect("msg", name, "trio", &text);
        }
    }

    b.leave("b", "trio");
    for client in [&mut a, &mut b, &mut c] {
        client.expect("user", "b", "trio", "leave");
    }
    // b no longer receives the room's messages; a and c do.
    a.say_ok("a", "trio", "after b left");
    c.expect("msg", "a", "trio", "after b left");
    b.say("b", "trio", "ghost");
    b.expect_error("not in room", "b", "trio");
    // The next thing a and c see is c's message, not b's ghost.
    c.say_ok("c", "trio", "marker");
    a.expect("msg", "c", "trio", "marker");
}

#[test]
fn joining_an_already_joined_room_resends_to_that_connection_only() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    let mut a = server.client();
    let mut b = server.client();
    a.join_ok("a", "r");
    b.join_ok("b", "r");
    a.expect("user", "b", "r", "join");

    a.join("a", "r");
    a.expect("user", "a", "r", "join");
    // b saw nothing of it: its next packet is its own message.
    b.say_ok("b", "r", "marker");
    a.expect("msg", "b", "r", "marker");
    assert_eq!(server.population("r"), 2);
}

#[test]
fn messages_stay_in_their_room() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("one");
    server.create_room("two");
    let mut a = server.client();
    let mut b = server.client();
    a.join_ok("a", "one");
    a.join_ok("a", "two");
    b.join_ok("b", "two");
    a.expect("user", "b", "two", "join");

    a.say_ok("a", "one", "only one");
    a.say_ok("a", "two", "only two");
    // b is in "two" only.
    b.expect("msg", "a", "two", "only two");
}

#[test]
fn token_in_packet_decides_identity() {
    let server = TestServer::start();
    let token = server.register_with_token("alice", "");
    server.register("bob", "");
    server.create_room("r");

    let mut ws = server.client();
    ws.send(&packet_with_token("join", "alice", "r", "", &token));
    ws.expect("user", "alice", "r", "create");
    ws.send(&packet_with_token("msg", "alice", "r", "hi", &token));
    ws.expect("msg", "alice", "r", "hi");

    // A's token with B's name.
    let mut other = server.client();
    other.send(&packet_with_token("join", "bob", "r", "", &token));
    other.expect_error("user mismatch", "bob", "r");
    // Still open, and bob may join without a token (compatibility).
    other.join("bob", "r");
    other.expect("user", "bob", "r", "join");
    ws.expect("user", "bob", "r", "join");
}

#[test]
fn token_in_upgrade_url_decides_identity() {
    let server = TestServer::start();
    let token = server.register_with_token("alice", "");
    server.register("bob", "");
    server.create_room("r");

    let mut mismatch = server.client_with_url_token(&token);
    mismatch.join("bob", "r");
    mismatch.expect_error("user mismatch", "bob", "r");

    let mut ws = server.client_with_url_token(&token);
    ws.join("alice", "r");
    ws.expect("user", "alice", "r", "create");
    ws.say_ok("alice", "r", "via url token");

    // An invalid URL token is refused at the first packet.
    let mut bad = server.client_with_url_token("not-a-token");
    bad.join("alice", "r");
    bad.expect_error("unauthorized", "alice", "r");
}

#[test]
fn require_token_accepts_tokens_only() {
    let server = TestServer::start_with(|c| c.chat.require_token = true);
    let token = server.register_with_token("alice", "");
    server.create_room("r");

    let mut ws = server.client();
    ws.join("alice", "r");
    ws.expect_error("unauthorized", "alice", "r");
    ws.send(&packet_with_token("join", "alice", "r", "", &token));
    ws.expect("user", "alice", "r", "create");
    ws.send(&packet_with_token("msg", "alice", "r", "ok", &token));
    ws.expect("msg", "alice", "r", "ok");

    let mut url = server.client_with_url_token(&token);
    url.join("alice", "r");
    url.expect("user", "alice", "r", "join");
    ws.expect("user", "alice", "r", "join");
}

#[test]
fn outgoing_packets_carry_the_registered_avatar() {
    let server = TestServer::start();
    server.register("alice", "https://a.example/x.png");
    server.register("bob", "");
    server.create_room("r");

    let mut alice = server.client();
    let mut bob = server.client();
    alice.send(&packet(
        "join",
        "alice",
        "https://evil.example/y.png",
        "r",
        "",
    ));
    let p = alice.expect("user", "alice", "r", "create");
    assert_eq!(p["data"]["user"]["user_avatar"], "https://a.example/x.png");

    bob.send(&packet("join", "bob", "https://b.example/b.png", "r", ""));
    for client in [&mut alice, &mut bob] {
        let p = client.expect("user", "bob", "r", "join");
        assert_eq!(p["data"]["user"]["user_avatar"], "https://b.example/b.png");
    }

    alice.send(&packet(
        "msg",
        "alice",
        "https://evil.example/z.png",
        "r",
        "hi",
    ));
    for client in [&mut alice, &mut bob] {
        let p = client.expect("msg", "alice", "r", "hi");
        assert_eq!(p["data"]["user"]["user_avatar"], "https://a.example/x.png");
    }

    // Bob has no registered avatar: the one claimed at join sticks, a later
    // claim does not replace it.
    bob.send(&packet(
        "msg",
        "bob",
        "https://b.example/other.png",
        "r",
        "yo",
    ));
    for client in [&mut alice, &mut bob] {
        let p = client.expect("msg", "bob", "r", "yo");
        assert_eq!(p["data"]["user"]["user_avatar"], "https://b.example/b.png");
    }

    bob.leave("bob", "r");
    for client in [&mut alice, &mut bob] {
        let p = client.expect("user", "bob", "r", "leave");
        assert_eq!(p["data"]["user"]["user_avatar"], "https://b.example/b.png");
    }
}

#[test]
fn full_room_over_websocket() {
    let server = TestServer::start();
    for name in ["a", "b", "c"] {
        server.register(name, "");
    }
    server.create_room_with_capacity("pair", 2);

    let mut a = server.client();
    let mut b = server.client();
    a.join_ok("a", "pair");
    b.join_ok("b", "pair");
    a.expect("user", "b", "pair", "join");

    let mut c = server.client();
    c.join("c", "pair");
    c.expect_error("full room", "c", "pair");
    // Nobody else heard of c.
    a.say_ok("a", "pair", "marker");
    b.expect("msg", "a", "pair", "marker");

    // A seat holder's second connection fits.
    let mut a2 = server.client();
    a2.join("a", "pair");
    for client in [&mut a, &mut b, &mut a2] {
        client.expect("user", "a", "pair", "join");
    }
    // The newcomer connection catches up on what was said (SPEC §8).
    let earlier = a2.expect("msg", "a", "pair", "marker");
    assert_eq!(earlier["data"]["history"], true);
    assert_eq!(server.population("pair"), 2);

    // HTTP admission agrees.
    assert_eq!(server.room("pair", "c", 1), "full room");
    assert_eq!(server.room("pair", "b", 0), "leave chatroom");
    for client in [&mut a, &mut b, &mut a2] {
        client.expect("user", "b", "pair", "leave");
    }
    c.join("c", "pair");
    for client in [&mut a, &mut a2, &mut c] {
        client.expect("user", "c", "pair", "join");
    }
}

#[test]
fn dropped_connection_broadcasts_leave() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    server.create_room("s");
    let mut a = server.client();
    let mut b = server.client();
    b.join_ok("b", "r");
    b.join_ok("b", "s");
    a.join_ok("a", "r");
    a.join_ok("a", "s");
    b.expect("user", "a", "r", "join");
    b.expect("user", "a", "s", "join");

    a.vanish();
    let first = b.recv();
    let second = b.recv();
    let mut rooms = Vec::new();
    for p in [&first, &second] {
        assert_eq!(p["type"], "user", "{p}");
        assert_eq!(p["data"]["user"]["user_name"], "a", "{p}");
        assert_eq!(p["data"]["msg"], "leave", "{p}");
        rooms.push(p["data"]["room_name"].as_str().unwrap().to_string());
    }
    rooms.sort();
    assert_eq!(rooms, ["r", "s"]);
    b.say_ok("b", "r", "alone");
}

#[test]
fn clean_close_broadcasts_leave() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    let mut a = server.client();
    let mut b = server.client();
    b.join_ok("b", "r");
    a.join_ok("a", "r");
    b.expect("user", "a", "r", "join");

    a.close();
    b.expect("user", "a", "r", "leave");
    b.say_ok("b", "r", "alone");
}

#[test]
fn http_release_evicts_a_live_connection() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    server.create_room("other");
    let mut a = server.client();
    let mut b = server.client();
    a.join_ok("a", "r");
    a.join_ok("a", "other");
    b.join_ok("b", "r");
    a.expect("user", "b", "r", "join");
    assert_eq!(server.population("r"), 2);

    assert_eq!(server.room("r", "a", 0), "leave chatroom");
    a.expect("user", "a", "r", "leave");
    b.expect("user", "a", "r", "leave");
    assert_eq!(server.population("r"), 1);

    a.say("a", "r", "still there?");
    a.expect_error("not in room", "a", "r");
    // b did not get it.
    b.say_ok("b", "r", "marker");
    // a is still in its other room, and may come back.
    a.say_ok("a", "other", "fine");
    a.join("a", "r");
    a.expect("user", "a", "r", "join");
    b.expect("user", "a", "r", "join");
    assert_eq!(server.population("r"), 2);
}

#[test]
fn population_counts_seats() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    assert_eq!(server.population("r"), 0);

    let mut a1 = server.client();
    a1.join_ok("a", "r");
    assert_eq!(server.population("r"), 1);

    // The same user's second connection takes no second seat.
    let mut a2 = server.client();
    a2.join_ok("a", "r");
    a1.expect("user", "a", "r", "join");
    assert_eq!(server.population("r"), 1);

    let mut b = server.client();
    b.join_ok("b", "r");
    for a in [&mut a1, &mut a2] {
        a.expect("user", "b", "r", "join");
    }
    assert_eq!(server.population("r"), 2);

    // A WebSocket leave of the user's only connection there frees the seat
    // at once (SPEC §3: the Android app never sends the HTTP leave) ...
    b.leave("b", "r");
    for client in [&mut b, &mut a1, &mut a2] {
        client.expect("user", "b", "r", "leave");
    }
    assert_eq!(server.population("r"), 1);
    // ... and the documented HTTP leave that follows still succeeds, once.
    assert_eq!(server.room("r", "b", 0), "leave chatroom");
    assert_eq!(server.room("r", "b", 0), "user not exist");
    // A leave from one of two connections of a user keeps the seat.
    a1.leave("a", "r");
    for client in [&mut a1, &mut a2] {
        client.expect("user", "a", "r", "leave");
    }
    assert_eq!(server.population("r"), 1);
    a1.join("a", "r");
    for client in [&mut a1, &mut a2] {
        client.expect("user", "a", "r", "join");
    }
    // Coming back takes a seat again; a dropped connection keeps it.
    b.join("b", "r");
    for client in [&mut b, &mut a1, &mut a2] {
        client.expect("user", "b", "r", "join");
    }
    assert_eq!(server.population("r"), 2);
    b.vanish();
    for a in [&mut a1, &mut a2] {
        a.expect("user", "b", "r", "leave");
    }
    assert_eq!(server.population("r"), 2);
    // Until the HTTP release.
    assert_eq!(server.room("r", "b", 0), "leave chatroom");
    assert_eq!(server.population("r"), 1);
    // Both of a's connections closing leaves a's seat in place too.
    a1.close();
    a2.expect("user", "a", "r", "leave");
    a2.close();
    assert_eq!(server.population("r"), 1);
}

#[test]
fn seat_expires_after_ttl_without_connections() {
    let server = TestServer::start_with(|c| c.seat_ttl = std::time::Duration::from_millis(300));
    server.register("a", "");
    server.register("b", "");
    server.register("c", "");
    server.create_room("r");

    let mut a = server.client();
    a.join_ok("a", "r");
    // A second connection of a's comes and goes: a's seat must outlive it,
    // because a's first connection is still in the room.
    let mut a2 = server.client();
    a2.join_ok("a", "r");
    a.expect("user", "a", "r", "join");
    a2.leave("a", "r");
    a2.expect("user", "a", "r", "leave");
    a.expect("user", "a", "r", "leave");

    let mut b = server.client();
    b.join_ok("b", "r");
    a.expect("user", "b", "r", "join");
    // Admitted over HTTP and never connects: also expires.
    assert_eq!(server.room("r", "c", 1), "join chatroom");

    b.leave("b", "r");
    b.expect("user", "b", "r", "leave");
    a.expect("user", "b", "r", "leave");
    server.wait_population("r", 1);
    // The seat left is a's, held by a live connection.
    a.say_ok("a", "r", "still seated");
    assert_eq!(server.room("r", "b", 0), "user not exist");
    assert_eq!(server.room("r", "c", 0), "user not exist");
    assert_eq!(server.room("r", "a", 0), "leave chatroom");
    a.expect("user", "a", "r", "leave");
    assert_eq!(server.population("r"), 0);

    // The room is empty again: the next join is a "create".
    b.join("b", "r");
    b.expect("user", "b", "r", "create");
}

#[test]
fn http_release_evicts_every_connection_of_the_user() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");
    let mut a1 = server.client();
    let mut a2 = server.client();
    let mut b = server.client();
    a1.join_ok("a", "r");
    a2.join_ok("a", "r");
    a1.expect("user", "a", "r", "join");
    b.join_ok("b", "r");
    a1.expect("user", "b", "r", "join");
    a2.expect("user", "b", "r", "join");

    assert_eq!(server.room("r", "a", 0), "leave chatroom");
    // One leave each, no more: the next packet everyone sees is b's.
    for client in [&mut a1, &mut a2, &mut b] {
        client.expect("user", "a", "r", "leave");
    }
    b.say_ok("b", "r", "marker");
    for client in [&mut a1, &mut a2] {
        client.say("a", "r", "evicted?");
        client.expect_error("not in room", "a", "r");
    }
    b.say_ok("b", "r", "marker 2");
    assert_eq!(server.population("r"), 1);
}

#[test]
fn chat_works_over_the_http_port_at_ws() {
    let server = TestServer::start();
    server.register("a", "");
    server.register("b", "");
    server.create_room("r");

    let mut via_http = Client::connect(server.http_addr(), "/ws");
    let mut via_ws = Client::connect(server.ws_addr(), "/any/path?x=1");
    via_http.join("a", "r");
    via_http.expect("user", "a", "r", "create");
    via_ws.join_ok("b", "r");
    via_http.expect("user", "b", "r", "join");
    via_http.say_ok("a", "r", "from the API port");
    via_ws.expect("msg", "a", "r", "from the API port");
    via_ws.say_ok("b", "r", "from the chat port");
    via_http.expect("msg", "b", "r", "from the chat port");
    server.assert_healthy();
}

#[test]
fn an_admission_into_an_empty_room_makes_the_first_join_a_join() {
    let server = TestServer::start();
    server.register("first", "");
    server.create_room("fresh");
    // The original flow: admit over HTTP, then join over the WebSocket.
    assert_eq!(server.room("fresh", "first", 1), "join chatroom");
    let mut client = server.client();
    client.join("first", "fresh");
    client.expect("user", "first", "fresh", "join");
    assert_eq!(server.population("fresh"), 1);
}

//! History and presence (SPEC §8) through real sockets and real clients:
//! per-room seqs seen identically by every member; seqs and history across
//! a clean restart and across `kill -9` of the real binary, also in the
//! middle of a burst; compaction keeping the newest messages and the disk
//! bounded; `/chatroom/history` paging and its parameter checks; `since`
//! recovery, complete, incomplete and refused; a reconnect with `since`
//! while another member keeps sending; `/chatroom/members`; the token rule
//! of both endpoints; and what a client written before history sees.
//!
//! Nothing here sleeps to synchronise. Where a test must know that nothing
//! more is coming, it asks the server a question on the same connection
//! (a second `join` of a joined room is answered with a copy of the `user`
//! packet to that connection alone) and reads up to the answer: packets of
//! one connection are answered in order.

mod common;
mod fault_support;
mod ws_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::TestServer;
use fault_support::{ChildServer, Incoming};
use serde_json::{json, Value};
use tempfile::TempDir;
use tungstenite::Message;
use ws_common::{packet, Client};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An in-process server with the WebSocket rate limit off (bursts are the
/// point here) and `adjust` applied.
fn server_with(adjust: impl FnOnce(&mut chatroom::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.chat.ws_rate = 0;
        adjust(config);
    })
}

fn no_limits(config: &mut chatroom::Config) {
    config.chat.ws_rate = 0;
}

/// The `seq` of a live packet or of a history row.
fn seq_of(value: &Value) -> u64 {
    let seq = if value.get("data").is_some() {
        &value["data"]["seq"]
    } else {
        &value["seq"]
    };
    seq.as_u64()
        .unwrap_or_else(|| panic!("no integer seq in {value}"))
}

/// The row `/chatroom/history` must serve for a live `msg` packet.
fn row_of(live: &Value) -> Value {
    let data = &live["data"];
    assert_eq!(live["type"], "msg", "not a msg packet: {live}");
    assert!(data["seq"].is_u64() && data["ts"].is_u64(), "{live}");
    json!({
        "seq": data["seq"],
        "ts": data["ts"],
        "user": {
            "user_name": data["user"]["user_name"],
            "user_avatar": data["user"]["user_avatar"],
        },
        "msg": data["msg"],
    })
}

/// The packet a joiner gets as history for a live `msg` packet: the same
/// packet with `"history": true` in `data`.
fn as_history(live: &Value) -> Value {
    let mut packet = live.clone();
    packet["data"]["history"] = json!(true);
    packet
}

fn is_history(packet: &Value) -> bool {
    match packet["data"].get("history") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(other) => panic!("history is {other}, not true or absent: {packet}"),
    }
}

/// A form POST to the API: status and JSON body.
fn call(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let reply = common::post_form(addr, path, params);
    (reply.status, reply.json())
}

/// `/chatroom/history` for `room` with extra parameters; must succeed.
/// Returns the rows and `has_more`, having checked the reply's shape and
/// that its rows are consecutive seqs, oldest first.
fn history_page(addr: SocketAddr, room: &str, extra: &[(&str, &str)]) -> (Vec<Value>, bool) {
    let mut params = vec![("room_name", room)];
    params.extend_from_slice(extra);
    let (status, body) = call(addr, "/chatroom/history", &params);
    assert_eq!(status, 200, "history {params:?}: {body}");
    assert_eq!(body["res"], "get history successfully", "{body}");
    assert_eq!(body["room_name"], room, "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "res, room_name, messages, has_more: {body}");
    let rows = body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages is not an array: {body}"))
        .clone();
    let has_more = body["has_more"]
        .as_bool()
        .unwrap_or_else(|| panic!("has_more is not a bool: {body}"));
    for pair in rows.windows(2) {
        assert_eq!(
            seq_of(&pair[1]),
            seq_of(&pair[0]) + 1,
            "rows are not consecutive, oldest first: {body}"
        );
    }
    (rows, has_more)
}

/// The seqs of a history page and its `has_more`.
fn page_seqs(addr: SocketAddr, room: &str, extra: &[(&str, &str)]) -> (Vec<u64>, bool) {
    let (rows, has_more) = history_page(addr, room, extra);
    (rows.iter().map(seq_of).collect(), has_more)
}

/// Every message the server serves for `room`, walking forward with
/// `after=` in pages of 100; checks the pages join without gap or overlap.
fn all_history(addr: SocketAddr, room: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let after_text = after.to_string();
        let (page, has_more) =
            history_page(addr, room, &[("after", &after_text), ("limit", "100")]);
        assert!(page.len() <= 100, "a page of {} rows", page.len());
        if let (Some(last), Some(first)) = (rows.last(), page.first()) {
            assert_eq!(
                seq_of(first),
                seq_of(last) + 1,
                "pages after {after} do not join"
            );
        }
        if let Some(first) = page.first() {
            assert!(seq_of(first) > after, "after={after} served {first}");
        }
        let empty = page.is_empty();
        rows.extend(page);
        if !has_more {
            return rows;
        }
        assert!(!empty, "an empty page after {after} says has_more");
        after = seq_of(rows.last().unwrap());
    }
}

/// `n` messages from `user` into `room`, sent in one go and then read back
/// as their echoes (other packets are skipped): the live packets.
fn say_many(client: &mut Client, user: &str, room: &str, n: usize, tag: &str) -> Vec<Value> {
    for i in 0..n {
        client.queue(&packet("msg", user, "", room, &format!("{tag} {i}")));
    }
    client.flush();
    let mut echoes = Vec::with_capacity(n);
    while echoes.len() < n {
        let p = client.recv();
        assert_ne!(p["type"], "error", "{p}");
        if p["type"] == "msg" && p["data"]["room_name"] == room {
            assert_eq!(p["data"]["user"]["user_name"], user, "{p}");
            assert_eq!(p["data"]["msg"], format!("{tag} {}", echoes.len()), "{p}");
            assert!(!is_history(&p), "a live echo marked history: {p}");
            echoes.push(p);
        }
    }
    echoes
}

/// Sends a `join` of `room` as `user` (with `data.since` when given, any
/// JSON) and returns the `user` packet that must come first and every
/// packet the join produced after it. The end is found without waiting: a
/// second join of the room follows at once, and its answer, a copy of the
/// `user` packet to this connection alone, comes after everything the
/// first join produced.
fn join_collect(
    client: &mut Client,
    user: &str,
    room: &str,
    since: Option<Value>,
) -> (Value, Vec<Value>) {
    let mut join = packet("join", user, "", room, "");
    if let Some(since) = since {
        join["data"]["since"] = since;
    }
    client.queue(&join);
    client.queue(&packet("join", user, "", room, ""));
    client.flush();
    let first = client.recv();
    assert_eq!(
        first["type"], "user",
        "the join's user packet first: {first}"
    );
    assert_eq!(first["data"]["user"]["user_name"], user, "{first}");
    assert_eq!(first["data"]["room_name"], room, "{first}");
    assert!(
        first["data"]["msg"] == "join" || first["data"]["msg"] == "create",
        "{first}"
    );
    let mut after = Vec::new();
    loop {
        let p = client.recv();
        if p["type"] == "user"
            && p["data"]["user"]["user_name"] == user
            && p["data"]["room_name"] == room
            && p["data"]["msg"] == "join"
        {
            return (first, after);
        }
        after.push(p);
    }
}

/// Asserts that `packets` are exactly `expected` live packets as history,
/// in order.
fn assert_history_of(packets: &[Value], expected: &[Value], what: &str) {
    let seqs: Vec<u64> = packets.iter().map(seq_of).collect();
    let want: Vec<u64> = expected.iter().map(seq_of).collect();
    assert_eq!(seqs, want, "{what}: seqs");
    for (got, live) in packets.iter().zip(expected) {
        assert_eq!(got, &as_history(live), "{what}");
    }
}

/// Asserts a `history incomplete` error packet with its numbers.
fn assert_incomplete(p: &Value, user: &str, room: &str, since: u64, first: u64, last: u64) {
    assert_eq!(p["type"], "error", "{p}");
    assert_eq!(p["data"]["msg"], "history incomplete", "{p}");
    assert_eq!(p["data"]["user"]["user_name"], user, "{p}");
    assert_eq!(p["data"]["room_name"], room, "{p}");
    assert_eq!(p["data"]["since"], since, "{p}");
    assert_eq!(p["data"]["first_seq"], first, "{p}");
    assert_eq!(p["data"]["last_seq"], last, "{p}");
}

/// `chatroom_history_recoveries_total` by result.
/// Recoveries counted by every node of the server.
fn recoveries(server: &TestServer) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for addr in server.each_http_addr() {
        let text = fault_support::metrics_text(addr);
        let read = |result: &str| {
            let name = format!("chatroom_history_recoveries_total{{result=\"{result}\"}}");
            fault_support::metric_in(&text, &name)
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        };
        total.0 += read("complete");
        total.1 += read("incomplete");
    }
    total
}

/// A chat client of a child server.
fn child_client(server: &ChildServer) -> Client {
    Client::connect(server.ws, "/")
}

fn child_register(server: &ChildServer, tel: &str, name: &str) {
    let answer = fault_support::register(server.http, tel, name, "password1");
    assert!(answer.is(200, "register successfully"), "{answer:?}");
}

fn child_create(server: &ChildServer, room: &str) {
    let answer = fault_support::create_room(server.http, room);
    assert!(answer.is(200, "chatroom create successfully"), "{answer:?}");
}

/// Total size of the files in `dir` (not recursive).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().metadata().unwrap())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

// ---------------------------------------------------------------------------
// 1. Seqs
// ---------------------------------------------------------------------------

#[test]
fn seqs_count_per_room_and_every_member_sees_the_same_list() {
    let server = server_with(|_| {});
    for name in ["alice", "bob", "carol"] {
        server.register(name, "");
    }
    server.create_room("one");
    server.create_room("two");
    let mut alice = server.client();
    alice.join_ok("alice", "one");
    let mut bob = server.client();
    bob.join_ok("bob", "one");
    let mut carol = server.client();
    carol.join_ok("carol", "one");
    carol.join_ok("carol", "two");

    // alice and bob talk in "one" at the same time; carol, a member of
    // both rooms, talks in "two" only. Each reads until it has every
    // message of the rooms it is in.
    const EACH: usize = 40;
    const IN_TWO: usize = 15;
    let talk = |mut client: Client, user: &'static str, plan: Vec<(&'static str, usize)>| {
        std::thread::spawn(move || {
            for (room, n) in &plan {
                for i in 0..*n {
                    client.queue(&packet("msg", user, "", room, &format!("{user} {i}")));
                }
            }
            client.flush();
            let want = |room: &str| match room {
                "one" => 2 * EACH,
                _ => IN_TWO,
            };
            let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            let rooms: Vec<&str> = if user == "carol" {
                vec!["one", "two"]
            } else {
                vec!["one"]
            };
            while rooms
                .iter()
                .any(|r| seen.get(*r).map_or(0, Vec::len) < want(r))
            {
                let p = client.recv();
                assert_ne!(p["type"], "error", "{user}: {p}");
                if p["type"] == "msg" {
                    let room = p["data"]["room_name"].as_str().unwrap().to_string();
                    seen.entry(room).or_default().push(p);
                }
            }
            seen
        })
    };
    let a = talk(alice, "alice", vec![("one", EACH)]);
    let b = talk(bob, "bob", vec![("one", EACH)]);
    let c = talk(carol, "carol", vec![("two", IN_TWO)]);
    let (a, b, c) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());

    let one = &a["one"];
    let seqs: Vec<u64> = one.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "seqs of one"
    );
    assert_eq!(&b["one"], one, "bob's list differs from alice's");
    assert_eq!(&c["one"], one, "carol's list differs from alice's");
    // Each sender's messages keep their order.
    for user in ["alice", "bob"] {
        let texts: Vec<&str> = one
            .iter()
            .filter(|p| p["data"]["user"]["user_name"] == user)
            .map(|p| p["data"]["msg"].as_str().unwrap())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{user} {i}")).collect();
        assert_eq!(texts, sent, "{user}'s messages in order");
    }
    // Room two counts on its own.
    let two: Vec<u64> = c["two"].iter().map(seq_of).collect();
    assert_eq!(two, (1..=IN_TWO as u64).collect::<Vec<_>>(), "seqs of two");

    // History serves what everyone saw.
    let rows: Vec<Value> = one.iter().map(row_of).collect();
    assert_eq!(all_history(server.http_addr(), "one"), rows);
    let rows: Vec<Value> = c["two"].iter().map(row_of).collect();
    assert_eq!(all_history(server.http_addr(), "two"), rows);
}

#[test]
fn seqs_and_history_survive_a_clean_restart() {
    let server = server_with(|_| {});
    server.register("alice", "https://img.example/alice.png");
    server.register("bob", "");
    server.create_room("kept");
    server.create_room("other");
    let mut alice = server.client();
    alice.join_ok("alice", "kept");
    alice.join_ok("alice", "other");
    let mut kept = say_many(&mut alice, "alice", "kept", 5, "before");
    let other = say_many(&mut alice, "alice", "other", 3, "before");
    drop(alice);

    let server = server.restart_with(no_limits);
    let addr = server.http_addr();
    let rows: Vec<Value> = kept.iter().map(row_of).collect();
    assert_eq!(all_history(addr, "kept"), rows, "kept after restart");
    let rows: Vec<Value> = other.iter().map(row_of).collect();
    assert_eq!(all_history(addr, "other"), rows, "other after restart");

    // A joiner gets the very packets the members got, marked history.
    let mut bob = server.client();
    let (_, after) = join_collect(&mut bob, "bob", "kept", None);
    assert_history_of(&after, &kept, "history on join after a restart");
    // Seqs go on where they were, per room.
    let next = say_many(&mut bob, "bob", "kept", 1, "after");
    assert_eq!(seq_of(&next[0]), 6);
    let (_, after) = join_collect(&mut bob, "bob", "other", None);
    assert_history_of(&after, &other, "history on join of the other room");
    let next_other = say_many(&mut bob, "bob", "other", 2, "after");
    assert_eq!(next_other.iter().map(seq_of).collect::<Vec<_>>(), [4, 5]);
    kept.extend(next);
    drop(bob);

    // A restart on top of a restart.
    let server = server.restart_with(no_limits);
    let rows: Vec<Value> = kept.iter().map(row_of).collect();
    assert_eq!(all_history(server.http_addr(), "kept"), rows);
    let mut alice = server.client();
    let (_, after) = join_collect(&mut alice, "alice", "kept", None);
    assert_history_of(&after, &kept, "history on join after two restarts");
    assert_eq!(
        seq_of(&say_many(&mut alice, "alice", "kept", 1, "third")[0]),
        7
    );
}

#[test]
fn seqs_and_history_survive_kill_9() {
    let dir = TempDir::new().unwrap();
    let args = ["--ws-rate", "0"];
    let mut server = ChildServer::start(dir.path(), &args);
    child_register(&server, "7300001", "alice");
    child_register(&server, "7300002", "bob");
    child_create(&server, "kept");
    child_create(&server, "other");
    let mut alice = child_client(&server);
    alice.join_ok("alice", "kept");
    alice.join_ok("alice", "other");
    let mut kept = say_many(&mut alice, "alice", "kept", 7, "first life");
    let other = say_many(&mut alice, "alice", "other", 2, "first life");
    // Every one of them was received (the echoes): none may be lost.
    server.kill9();
    drop(alice);
    drop(server);

    let mut server = ChildServer::start(dir.path(), &args);
    let rows: Vec<Value> = kept.iter().map(row_of).collect();
    assert_eq!(all_history(server.http, "kept"), rows, "kept after kill -9");
    let rows: Vec<Value> = other.iter().map(row_of).collect();
    assert_eq!(
        all_history(server.http, "other"),
        rows,
        "other after kill -9"
    );
    let mut bob = child_client(&server);
    let (_, after) = join_collect(&mut bob, "bob", "kept", None);
    assert_history_of(&after, &kept, "history on join after kill -9");
    let next = say_many(&mut bob, "bob", "kept", 1, "second life");
    assert_eq!(seq_of(&next[0]), 8, "the seq goes on after kill -9");
    kept.extend(next);
    let (_, after) = join_collect(&mut bob, "bob", "other", None);
    assert_history_of(&after, &other, "history on join of the other room");
    assert_eq!(
        seq_of(&say_many(&mut bob, "bob", "other", 1, "second life")[0]),
        3
    );
    server.kill9();
    drop(bob);
    drop(server);

    // Killed again right after a message was received.
    let mut server = ChildServer::start(dir.path(), &args);
    let rows: Vec<Value> = kept.iter().map(row_of).collect();
    assert_eq!(
        all_history(server.http, "kept"),
        rows,
        "after a second kill"
    );
    let mut alice = child_client(&server);
    let (_, after) = join_collect(&mut alice, "alice", "kept", None);
    assert_history_of(&after, &kept, "history on join after a second kill");
    let next = say_many(&mut alice, "alice", "kept", 1, "third life");
    assert_eq!(seq_of(&next[0]), 9);
    kept.extend(next);

    // SIGTERM: the binary's own clean shutdown, then a fourth life.
    server.signal("TERM");
    assert_eq!(alice.read_until_closed(), Some(1001));
    let status = server.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    drop(server);
    let server = ChildServer::start(dir.path(), &args);
    let rows: Vec<Value> = kept.iter().map(row_of).collect();
    assert_eq!(all_history(server.http, "kept"), rows, "after SIGTERM");
    let mut bob = child_client(&server);
    let (_, after) = join_collect(&mut bob, "bob", "kept", None);
    assert_history_of(&after, &kept, "history on join after SIGTERM");
    let next = say_many(&mut bob, "bob", "kept", 1, "fourth life");
    assert_eq!(seq_of(&next[0]), 10);
}

/// Texts whose frames cross the WebSocket length encodings (a live frame
/// and its history copy, 15 bytes longer, may fall on either side of 126)
/// and that need escaping in JSON.
fn awkward_texts() -> Vec<String> {
    let mut texts: Vec<String> = (1..=40).map(|n| "a".repeat(n)).collect();
    texts.extend(
        [
            "\"quoted\" and \\ back\\slashed",
            "tab\tnew\nline\r\n",
            "\u{1}\u{1f}\u{7f} controls",
            "emoji 😀 ✓ 你好 é",
            "</script><b>&amp;</b>",
            "{\"type\":\"msg\"}}",
        ]
        .map(String::from),
    );
    texts.push("\"".repeat(2000));
    texts.push("\u{1}".repeat(2000));
    texts.push("😀".repeat(2000));
    texts
}

#[test]
fn history_keeps_every_text_exactly_across_a_restart() {
    let server = server_with(|c| c.chat.history_on_join = 100);
    server.register("t", "");
    server.register("x", "");
    server.create_room("r");
    let mut t = server.client();
    t.join_ok("t", "r");
    let mut live = Vec::new();
    for text in awkward_texts() {
        let p = t.say_ok("t", "r", &text);
        live.push(p);
    }
    let check = |server: &TestServer, what: &str| {
        let rows: Vec<Value> = live.iter().map(row_of).collect();
        assert_eq!(all_history(server.http_addr(), "r"), rows, "{what}: rows");
        let mut x = server.client();
        let (_, after) = join_collect(&mut x, "x", "r", None);
        assert_history_of(&after, &live, what);
        x.close();
    };
    check(&server, "before a restart");
    drop(t);
    let server = server.restart_with(|c| {
        c.chat.ws_rate = 0;
        c.chat.history_on_join = 100;
    });
    check(&server, "after a restart");
}

// ---------------------------------------------------------------------------
// 2. kill -9 in the middle of a burst
// ---------------------------------------------------------------------------

/// What one client of the burst read: every `msg` packet, in order, and
/// whether it was a sender that got all its messages echoed before the
/// server died.
struct Received {
    who: String,
    packets: Vec<Value>,
    finished: bool,
}

fn burst_text(sender: &str, i: usize) -> String {
    format!("{sender} #{i}")
}

#[test]
fn kill_9_in_a_burst_loses_no_message_anyone_received() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 2500;
    /// Messages a sender may have sent and not yet seen echoed.
    const WINDOW: usize = 16;
    /// The observer kills the server once it has read this many.
    const KILL_AFTER: usize = 400;

    let dir = TempDir::new().unwrap();
    // Retention above anything the burst can send: every message that was
    // accepted may be served, none may be missing for retention's sake.
    let args = ["--ws-rate", "0", "--history-size", "20000"];
    let mut server = ChildServer::start(dir.path(), &args);
    child_create(&server, "burst");
    child_register(&server, "7400000", "observer");
    let mut observer = child_client(&server);
    observer.join_ok("observer", "burst");
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let name = format!("sender{s}");
        child_register(&server, &format!("74000{:02}", s + 1), &name);
        let mut client = child_client(&server);
        client.join_ok(&name, "burst");
        senders.push((name, client));
    }

    // Senders keep WINDOW messages in flight each and read everything the
    // room sends them, until they are done or the server is gone.
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(name, mut client)| {
            std::thread::spawn(move || {
                let mut packets = Vec::new();
                let (mut sent, mut echoed) = (0, 0);
                loop {
                    while sent < PER_SENDER && sent - echoed < WINDOW {
                        let text = packet("msg", &name, "", "burst", &burst_text(&name, sent));
                        if client.ws.send(Message::text(text.to_string())).is_err() {
                            return Received {
                                who: name,
                                packets,
                                finished: false,
                            };
                        }
                        sent += 1;
                    }
                    if echoed == PER_SENDER {
                        return Received {
                            who: name,
                            packets,
                            finished: true,
                        };
                    }
                    match fault_support::next_incoming(&mut client.ws) {
                        Incoming::Packet(p) if p["type"] == "msg" => {
                            if p["data"]["user"]["user_name"] == name.as_str() {
                                assert_eq!(p["data"]["msg"], burst_text(&name, echoed), "{p}");
                                echoed += 1;
                            }
                            packets.push(p);
                        }
                        Incoming::Packet(p) => {
                            assert_ne!(p["type"], "error", "{name}: {p}");
                        }
                        _ => {
                            return Received {
                                who: name,
                                packets,
                                finished: false,
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // The observer reads, kills the server mid-burst, and then reads what
    // had already reached it.
    let mut observed = Vec::new();
    loop {
        match fault_support::next_incoming(&mut observer.ws) {
            Incoming::Packet(p) if p["type"] == "msg" => {
                observed.push(p);
                if observed.len() == KILL_AFTER {
                    server.kill9();
                }
            }
            Incoming::Packet(p) => assert_ne!(p["type"], "error", "observer: {p}"),
            other => {
                assert!(
                    observed.len() >= KILL_AFTER,
                    "the connection ended before the kill: {other:?}"
                );
                break;
            }
        }
    }
    drop(server);
    let mut everyone = vec![Received {
        who: "observer".to_string(),
        packets: observed,
        finished: false,
    }];
    for thread in threads {
        everyone.push(thread.join().expect("sender thread"));
    }
    assert!(
        everyone.iter().any(|r| !r.finished),
        "every sender finished before the kill: the kill was not mid-burst"
    );

    // Every client joined before the first message: each read the room's
    // messages from seq 1 without a gap, and all agree on each seq.
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    for received in &everyone {
        for (i, p) in received.packets.iter().enumerate() {
            assert_eq!(
                seq_of(p),
                i as u64 + 1,
                "{} read seqs with a gap or out of order",
                received.who
            );
            assert!(!is_history(p), "{p}");
            let row = row_of(p);
            match by_seq.get(&seq_of(p)) {
                Some(other) => assert_eq!(other, &row, "clients disagree on a seq"),
                None => {
                    by_seq.insert(seq_of(p), row);
                }
            }
        }
    }
    let last_received = *by_seq.keys().next_back().unwrap();
    assert!(last_received >= KILL_AFTER as u64);

    let server = ChildServer::start(dir.path(), &args);
    let served = all_history(server.http, "burst");
    let last_served = served.last().map_or(0, seq_of);
    assert!(
        last_served >= last_received,
        "received up to seq {last_received}, served up to {last_served}"
    );
    assert_eq!(
        served.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=last_served).collect::<Vec<_>>(),
        "served history has gaps"
    );
    for (seq, row) in &by_seq {
        assert_eq!(
            &served[*seq as usize - 1],
            row,
            "seq {seq} is served differently from how it was received"
        );
    }
    // What nobody received but the server kept is still each sender's own
    // messages, once each, in the order sent.
    let mut next_of: BTreeMap<String, usize> = BTreeMap::new();
    for row in &served {
        let who = row["user"]["user_name"].as_str().unwrap().to_string();
        let i = next_of.entry(who.clone()).or_default();
        assert_eq!(row["msg"], burst_text(&who, *i), "{row}");
        *i += 1;
    }

    // A newcomer's history and the next seq agree with the served log.
    child_register(&server, "7400099", "late");
    let mut late = child_client(&server);
    let (_, after) = join_collect(&mut late, "late", "burst", None);
    let tail: Vec<Value> = after.iter().map(row_of).collect();
    assert_eq!(tail, served[served.len() - 50..], "history on join");
    assert_eq!(
        seq_of(&say_many(&mut late, "late", "burst", 1, "after")[0]),
        last_served + 1
    );
}

// ---------------------------------------------------------------------------
// 3. Compaction under load
// ---------------------------------------------------------------------------

/// The message log's segment size: the head segment grows to this before
/// it is closed, and only closed segments are compacted.
const SEGMENT_BYTES: u64 = 8 << 20;

#[test]
fn compaction_keeps_the_newest_per_room_and_bounds_the_disk() {
    if common::embedded_only("the message log's segments are the embedded store") {
        return;
    }
    const ROOMS: usize = 5;
    const KEEP: usize = 20;
    const CHUNK: usize = 250;
    let filler = "m".repeat(1900);
    // Enough to close several segments, so that compaction has to run.
    let per_room = (4 * SEGMENT_BYTES as usize) / (ROOMS * filler.len()) + 1;
    let server = server_with(|c| c.chat.history_size = KEEP);
    let messages_dir = server.dir.path().join("messages");
    server.register("talker", "");
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room {r}")).collect();
    let mut talker = server.client();
    for room in &rooms {
        server.create_room(room);
        talker.join_ok("talker", room);
    }
    // Round robin over the rooms, CHUNK messages in flight at a time; the
    // newest KEEP live packets of each room are kept.
    let mut newest: Vec<std::collections::VecDeque<Value>> = vec![Default::default(); ROOMS];
    let total = per_room * ROOMS;
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        for i in sent..sent + n {
            let room = &rooms[i % ROOMS];
            let text = format!("{} {filler}", i / ROOMS);
            talker.queue(&packet("msg", "talker", "", room, &text));
        }
        talker.flush();
        for i in sent..sent + n {
            let p = talker.recv();
            assert_eq!(p["type"], "msg", "{p}");
            assert_eq!(p["data"]["room_name"], rooms[i % ROOMS].as_str(), "{p}");
            assert_eq!(seq_of(&p), (i / ROOMS) as u64 + 1, "{p}");
            let kept = &mut newest[i % ROOMS];
            kept.push_back(p);
            if kept.len() > KEEP {
                kept.pop_front();
            }
        }
        sent += n;
    }
    drop(talker);

    // The bound, from the store: compaction runs whenever the closed
    // segments take more than twice what they retain plus half a segment,
    // and the head segment is closed once it passes SEGMENT_BYTES (by at
    // most one line). Retained: KEEP lines per room, each the message and
    // under 200 bytes of JSON around it.
    let line = filler.len() as u64 + 200;
    let retained = (ROOMS * KEEP) as u64 * line;
    let bound = 2 * retained + SEGMENT_BYTES * 3 / 2 + line;
    let written = total as u64 * filler.len() as u64;
    assert!(written > 2 * bound, "too little written to tell");
    common::wait_until(
        &format!("{} holds at most {bound} bytes", messages_dir.display()),
        || dir_bytes(&messages_dir) <= bound,
    );
    // The metrics say the same: compactions ran, the bytes on disk are the
    // directory's, the window holds KEEP per room.
    let addr = server.http_addr();
    assert!(fault_support::metric(addr, "chatroom_history_compactions_total") >= 1.0);
    assert_eq!(
        fault_support::metric(addr, "chatroom_history_messages_retained"),
        (ROOMS * KEEP) as f64
    );
    common::wait_until("the disk bytes metric matches the directory", || {
        fault_support::metric(addr, "chatroom_history_disk_bytes")
            == dir_bytes(&messages_dir) as f64
    });

    let server = server.restart_with(|c| {
        c.chat.ws_rate = 0;
        c.chat.history_size = KEEP;
    });
    for (room, kept) in rooms.iter().zip(&newest) {
        let rows: Vec<Value> = kept.iter().map(row_of).collect();
        assert_eq!(all_history(server.http_addr(), room), rows, "{room}");
    }
    common::wait_until("the bound holds after the restart", || {
        dir_bytes(&messages_dir) <= bound
    });
    let mut talker = server.client();
    let (_, after) = join_collect(&mut talker, "talker", &rooms[0], None);
    assert_history_of(&after, newest[0].make_contiguous(), "history on join");
    let next = say_many(&mut talker, "talker", &rooms[0], 1, "next");
    assert_eq!(seq_of(&next[0]), per_room as u64 + 1);
    drop(talker);

    // Retention lowered between runs: start-up keeps the newest 5.
    let server = server.restart_with(|c| {
        c.chat.ws_rate = 0;
        c.chat.history_size = 5;
    });
    let rows: Vec<Value> = newest[1].iter().skip(KEEP - 5).map(row_of).collect();
    assert_eq!(all_history(server.http_addr(), &rooms[1]), rows);
}

// ---------------------------------------------------------------------------
// 4. /chatroom/history paging
// ---------------------------------------------------------------------------

#[test]
fn history_pages_walk_both_ways_and_say_when_more_exist() {
    let server = server_with(|c| c.chat.history_size = 25);
    let addr = server.http_addr();
    server.register("pager", "");
    server.create_room("paged");
    server.create_room("quiet");
    let mut pager = server.client();
    pager.join_ok("pager", "paged");
    let live = say_many(&mut pager, "pager", "paged", 30, "page");
    // Retention keeps 6..=30.
    let seqs = |range: std::ops::RangeInclusive<u64>| range.collect::<Vec<u64>>();
    // (parameters, the seqs served, has_more)
    type Case<'a> = (&'a [(&'a str, &'a str)], Vec<u64>, bool);
    let cases: &[Case] = &[
        (&[], seqs(6..=30), false),
        (&[("limit", "10")], seqs(21..=30), true),
        (&[("limit", "1")], vec![30], true),
        (&[("limit", "100")], seqs(6..=30), false),
        (&[("limit", "25")], seqs(6..=30), false),
        (&[("limit", "24")], seqs(7..=30), true),
        (&[("before", "21"), ("limit", "10")], seqs(11..=20), true),
        (&[("before", "11"), ("limit", "10")], seqs(6..=10), false),
        (&[("before", "16"), ("limit", "10")], seqs(6..=15), false),
        (&[("before", "7")], vec![6], false),
        (&[("before", "6")], vec![], false),
        (&[("before", "1")], vec![], false),
        (&[("before", "0")], vec![], false),
        (&[("before", "31"), ("limit", "5")], seqs(26..=30), true),
        (&[("before", "1000"), ("limit", "5")], seqs(26..=30), true),
        (&[("after", "0"), ("limit", "10")], seqs(6..=15), true),
        (&[("after", "3"), ("limit", "10")], seqs(6..=15), true),
        (&[("after", "19"), ("limit", "10")], seqs(20..=29), true),
        (&[("after", "20"), ("limit", "10")], seqs(21..=30), false),
        (&[("after", "29")], vec![30], false),
        (&[("after", "30")], vec![], false),
        (&[("after", "1000")], vec![], false),
        (&[("after", "18446744073709551615")], vec![], false),
        (
            &[("before", "18446744073709551615"), ("limit", "5")],
            seqs(26..=30),
            true,
        ),
    ];
    for (params, want, more) in cases {
        assert_eq!(
            page_seqs(addr, "paged", params),
            (want.clone(), *more),
            "history of paged with {params:?}"
        );
    }
    // Rows are the messages as they were sent live.
    let (rows, _) = history_page(addr, "paged", &[]);
    let want: Vec<Value> = live[5..].iter().map(row_of).collect();
    assert_eq!(rows, want);
    // GET with a query string serves the same.
    let reply = common::get_query(
        addr,
        "/chatroom/history",
        &[("room_name", "paged"), ("before", "21"), ("limit", "10")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["messages"],
        json!(live[10..20].iter().map(row_of).collect::<Vec<_>>())
    );

    // A JSON body with numbers, as a JavaScript client sends it.
    let reply = common::post_json(
        addr,
        "/chatroom/history",
        &json!({"room_name": "paged", "after": 19, "limit": 10}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(
        body["messages"],
        json!(live[19..29].iter().map(row_of).collect::<Vec<_>>())
    );
    assert_eq!(body["has_more"], true);

    // Walking back from the newest with `before` visits every retained
    // message once.
    let mut walked: Vec<u64> = Vec::new();
    let (mut page, mut more) = page_seqs(addr, "paged", &[("limit", "7")]);
    loop {
        walked.splice(0..0, page.iter().copied());
        if !more {
            break;
        }
        let before = walked[0].to_string();
        (page, more) = page_seqs(addr, "paged", &[("before", &before), ("limit", "7")]);
        assert!(!page.is_empty());
    }
    assert_eq!(walked, seqs(6..=30));

    // A room without messages.
    for params in [
        &[][..],
        &[("before", "1")][..],
        &[("after", "0")][..],
        &[("limit", "1")][..],
    ] {
        assert_eq!(
            page_seqs(addr, "quiet", params),
            (vec![], false),
            "{params:?}"
        );
    }
}

#[test]
fn history_parameters_are_checked() {
    let server = server_with(|_| {});
    let addr = server.http_addr();
    server.create_room("checked");
    let bad = |params: &[(&str, &str)], field: &str| {
        let mut all = vec![("room_name", "checked")];
        all.extend_from_slice(params);
        common::post_form(addr, "/chatroom/history", &all).assert_invalid(field);
    };
    for limit in ["0", "101", "ten", "-1", "1.5", "1e2", "5 "] {
        bad(&[("limit", limit)], "limit");
    }
    for seq in ["x", "-1", "1.5", "18446744073709551616"] {
        bad(&[("before", seq)], "before");
        bad(&[("after", seq)], "after");
    }
    let both = common::post_form(
        addr,
        "/chatroom/history",
        &[("room_name", "checked"), ("before", "5"), ("after", "1")],
    );
    both.assert_invalid("before");
    both.assert_invalid("after");
    common::post_form(addr, "/chatroom/history", &[]).assert_invalid("room_name");
    common::post_form(addr, "/chatroom/history", &[("room_name", "  ")])
        .assert_invalid("room_name");

    // A room that does not exist is a business outcome.
    for path in ["/chatroom/history", "/chatroom/members"] {
        let (status, body) = call(addr, path, &[("room_name", "nowhere")]);
        assert_eq!(
            (status, body),
            (200, json!({"res": "invalid room"})),
            "{path}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. since
// ---------------------------------------------------------------------------

#[test]
fn since_recovers_exactly_what_was_missed_or_says_what_is_gone() {
    let server = server_with(|c| c.chat.history_size = 20);
    server.register("talker", "");
    server.register("x", "");
    server.create_room("r");
    let mut talker = server.client();
    talker.join_ok("talker", "r");
    let live = say_many(&mut talker, "talker", "r", 30, "said");
    let retained = &live[10..]; // seqs 11..=30
    let (complete_before, incomplete_before) = recoveries(&server);

    // (since, the seq the error names first or none, what follows)
    let cases: &[(u64, Option<u64>, &[Value])] = &[
        (0, Some(11), retained),
        (9, Some(11), retained),
        (10, None, retained),
        (25, None, &live[25..]),
        (29, None, &live[29..]),
        (30, None, &[]),
        (31, None, &[]),
        (1_000_000_000_000, None, &[]),
        (u64::MAX, None, &[]),
    ];
    for (since, first, following) in cases {
        let mut x = server.client();
        let (_, mut after) = join_collect(&mut x, "x", "r", Some(json!(since)));
        if let Some(first) = first {
            assert!(!after.is_empty(), "since {since}: nothing after the join");
            let error = after.remove(0);
            assert_incomplete(&error, "x", "r", *since, *first, 30);
        }
        assert_history_of(&after, following, &format!("since {since}"));
        x.close();
    }
    let (complete, incomplete) = recoveries(&server);
    assert_eq!(complete - complete_before, 7.0, "complete recoveries");
    assert_eq!(incomplete - incomplete_before, 2.0, "incomplete recoveries");

    // Live messages follow a recovery on the same connection.
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "r", Some(json!(28)));
    assert_history_of(&after, &live[28..], "since 28");
    let more = say_many(&mut talker, "talker", "r", 1, "later");
    assert_eq!(x.recv(), more[0], "the live message after the recovery");
}

#[test]
fn since_that_is_not_a_non_negative_integer_is_invalid_data() {
    let server = server_with(|_| {});
    server.register("x", "");
    server.create_room("r");
    let mut x = server.client();
    for since in [
        json!(-1),
        json!("3"),
        json!(1.5),
        json!(true),
        json!([1]),
        json!({"seq": 1}),
        json!(18_446_744_073_709_551_616.0_f64),
    ] {
        let mut join = packet("join", "x", "", "r", "");
        join["data"]["since"] = since.clone();
        x.send(&join);
        x.expect_error("invalid data", "x", "r");
        // The join did not happen.
        x.say("x", "r", "am I in?");
        x.expect_error("not in room", "x", "r");
    }
    // The connection still works.
    let (first, after) = join_collect(&mut x, "x", "r", Some(json!(0)));
    assert_eq!(first["data"]["msg"], "create");
    assert_eq!(after, Vec::<Value>::new(), "an empty room owes nothing");
}

#[test]
fn since_recovers_at_most_300() {
    let server = server_with(|_| {}); // retention 1000, 50 on join
    let addr = server.http_addr();
    server.register("talker", "");
    server.register("x", "");
    server.create_room("busy");
    let mut talker = server.client();
    talker.join_ok("talker", "busy");
    let live = say_many(&mut talker, "talker", "busy", 350, "busy");

    // A plain join: the newest 50, oldest first.
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "busy", None);
    assert_history_of(&after, &live[300..], "history on join");
    x.close();

    let cases: &[(u64, Option<u64>, &[Value])] = &[
        (0, Some(51), &live[50..]),
        (49, Some(51), &live[50..]),
        (50, None, &live[50..]),
        (51, None, &live[51..]),
        (349, None, &live[349..]),
    ];
    for (since, first, following) in cases {
        let mut x = server.client();
        let (_, mut after) = join_collect(&mut x, "x", "busy", Some(json!(since)));
        if let Some(first) = first {
            let error = after.remove(0);
            assert_incomplete(&error, "x", "busy", *since, *first, 350);
        }
        assert_eq!(after.len(), following.len(), "since {since}");
        assert_history_of(&after, following, &format!("since {since}"));
        x.close();
    }
    // The missing part is there over HTTP.
    let (rows, more) = history_page(addr, "busy", &[("before", "51"), ("limit", "100")]);
    assert!(!more);
    assert_eq!(rows, live[..50].iter().map(row_of).collect::<Vec<_>>());
}

#[test]
fn history_off_still_counts_seqs_and_says_nothing_is_kept() {
    let server = server_with(|c| c.chat.history_size = 0);
    let addr = server.http_addr();
    server.register("talker", "");
    server.register("x", "");
    server.create_room("void");
    let mut talker = server.client();
    talker.join_ok("talker", "void");
    let live = say_many(&mut talker, "talker", "void", 3, "gone");
    assert_eq!(live.iter().map(seq_of).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(page_seqs(addr, "void", &[]), (vec![], false));
    assert_eq!(page_seqs(addr, "void", &[("after", "0")]), (vec![], false));

    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "void", None);
    assert_eq!(after, Vec::<Value>::new(), "no history on join");
    x.close();
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "void", Some(json!(1)));
    assert_eq!(after.len(), 1, "{after:?}");
    assert_incomplete(&after[0], "x", "void", 1, 4, 3);
    x.close();
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "void", Some(json!(3)));
    assert_eq!(after, Vec::<Value>::new(), "up to date");
    assert_eq!(
        seq_of(&say_many(&mut x, "x", "void", 1, "next")[0]),
        4,
        "seqs go on"
    );
}

// ---------------------------------------------------------------------------
// 6. A reconnect with since while another member keeps sending
// ---------------------------------------------------------------------------

#[test]
fn a_reconnect_with_since_gets_every_missed_message_once_then_live_ones() {
    // B sends TOTAL messages, each once the previous one came back, on its
    // own thread. A disconnects three times while B sends and comes back
    // with since = the last seq it read. A never misses more than
    // TOTAL - 20 = 300, so every recovery is complete.
    const TOTAL: u64 = 320;
    let server = server_with(|_| {});
    server.register("a", "");
    server.register("b", "");
    server.create_room("seam");
    let mut b = server.client();
    b.join_ok("b", "seam");
    let mut a = server.client();
    a.join_ok("a", "seam");
    b.expect("user", "a", "seam", "join");

    let sender = std::thread::spawn(move || {
        for i in 1..=TOTAL {
            b.say("b", "seam", &format!("b{i}"));
            loop {
                let p = b.recv();
                assert_ne!(p["type"], "error", "{p}");
                if p["type"] == "msg" {
                    assert_eq!(p["data"]["msg"], format!("b{i}"), "{p}");
                    assert_eq!(seq_of(&p), i, "{p}");
                    break;
                }
            }
        }
    });

    let mut read: Vec<u64> = Vec::new();
    let mut by_history = 0;
    let mut connections = 1;
    let mut last = 0;
    let mut next_drop = [20, 90, 160].into_iter();
    let mut drop_at = next_drop.next();
    // On each connection, history (if any) comes first, then live.
    let mut live_started = true;
    while last < TOTAL {
        if drop_at.is_some_and(|at| last >= at) {
            a.close();
            a = server.client();
            connections += 1;
            let mut join = packet("join", "a", "", "seam", "");
            join["data"]["since"] = json!(last);
            a.send(&join);
            let first = a.recv();
            assert_eq!(first["type"], "user", "the user packet first: {first}");
            assert_eq!(first["data"]["user"]["user_name"], "a", "{first}");
            live_started = false;
            drop_at = next_drop.next();
            continue;
        }
        let p = a.recv();
        assert_ne!(p["type"], "error", "connection {connections}: {p}");
        if p["type"] != "msg" {
            continue;
        }
        let seq = seq_of(&p);
        assert_eq!(
            seq,
            last + 1,
            "connection {connections}: after seq {last} came {p}"
        );
        assert_eq!(p["data"]["msg"], format!("b{seq}"), "{p}");
        if is_history(&p) {
            assert!(
                !live_started,
                "connection {connections}: history after a live message: {p}"
            );
            by_history += 1;
        } else {
            live_started = true;
        }
        read.push(seq);
        last = seq;
    }
    sender.join().expect("sender thread");
    assert_eq!(read, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(connections, 4);
    // Not asserted: how many came as history depends on how far B got
    // while A was away.
    eprintln!("{by_history} of {TOTAL} messages came as history");
}

#[test]
fn a_join_while_another_member_sends_gets_the_newest_then_live_without_a_seam() {
    const TOTAL: u64 = 200;
    let server = server_with(|_| {});
    server.register("a", "");
    server.register("b", "");
    server.create_room("seam");
    let mut b = server.client();
    b.join_ok("b", "seam");
    let (progress, sixty) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        for i in 1..=TOTAL {
            b.say("b", "seam", &format!("b{i}"));
            loop {
                let p = b.recv();
                assert_ne!(p["type"], "error", "{p}");
                if p["type"] == "msg" {
                    assert_eq!(seq_of(&p), i, "{p}");
                    break;
                }
            }
            if i == 60 {
                progress.send(()).unwrap();
            }
        }
    });
    sixty.recv().expect("b reached seq 60");
    // b keeps sending while a joins.
    let mut a = server.client();
    a.join_ok("a", "seam");
    let mut history = Vec::new();
    let mut live = Vec::new();
    while live
        .last()
        .or(history.last())
        .is_none_or(|&seq| seq < TOTAL)
    {
        let p = a.recv();
        assert_eq!(p["type"], "msg", "{p}");
        let seq = seq_of(&p);
        if let Some(&previous) = live.last().or(history.last()) {
            assert_eq!(seq, previous + 1, "after {previous} came {p}");
        }
        if is_history(&p) {
            assert!(live.is_empty(), "history after a live message: {p}");
            history.push(seq);
        } else {
            live.push(seq);
        }
    }
    sender.join().expect("sender thread");
    assert_eq!(history.len(), 50, "the newest 50 as history: {history:?}");
}

// ---------------------------------------------------------------------------
// 7. Members
// ---------------------------------------------------------------------------

/// The members of a room as (name, avatar, online), checking the reply.
fn members(addr: SocketAddr, room: &str) -> Vec<(String, String, bool)> {
    let (status, body) = call(addr, "/chatroom/members", &[("room_name", room)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["res"], "get members successfully", "{body}");
    assert_eq!(body["room_name"], room, "{body}");
    let list: Vec<(String, String, bool)> = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members is not an array: {body}"))
        .iter()
        .map(|m| {
            assert_eq!(m.as_object().unwrap().len(), 3, "{m}");
            (
                m["user_name"].as_str().unwrap().to_string(),
                m["user_avatar"].as_str().unwrap().to_string(),
                m["online"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(body["population"], list.len(), "one entry per seat: {body}");
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(list, sorted, "sorted by user_name");
    list
}

fn member(name: &str, avatar: &str, online: bool) -> (String, String, bool) {
    (name.to_string(), avatar.to_string(), online)
}

#[test]
fn members_are_the_seats_online_or_not() {
    let server = TestServer::start();
    let addr = server.http_addr();
    server.register("alice", "https://img.example/alice.png");
    for name in ["bob", "carol", "dave"] {
        server.register(name, "");
    }
    server.create_room("club");
    assert_eq!(members(addr, "club"), Vec::new());

    // Admitted over HTTP and never connected: a seat, not online.
    assert_eq!(server.room("club", "alice", 1), "join chatroom");
    let alice_avatar = "https://img.example/alice.png";
    assert_eq!(
        members(addr, "club"),
        vec![member("alice", alice_avatar, false)]
    );

    let mut bob = server.client();
    bob.send(&packet("join", "bob", "bob.png", "club", ""));
    bob.expect("user", "bob", "club", "join");
    let mut carol = server.client();
    carol.join_ok("carol", "club");
    let mut dave = server.client();
    dave.join_ok("dave", "club");
    bob.expect("user", "carol", "club", "join");
    bob.expect("user", "dave", "club", "join");
    assert_eq!(
        members(addr, "club"),
        vec![
            member("alice", alice_avatar, false),
            member("bob", "bob.png", true),
            member("carol", "", true),
            member("dave", "", true),
        ]
    );

    // carol's connection drops: her seat stays for the TTL, offline.
    carol.vanish();
    bob.expect("user", "carol", "club", "leave");
    let listed = members(addr, "club");
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[2].0, "carol");
    assert!(!listed[2].2, "carol is offline: {listed:?}");

    // dave leaves over WebSocket: his seat goes at once.
    dave.expect("user", "carol", "club", "leave");
    dave.leave("dave", "club");
    dave.expect("user", "dave", "club", "leave");
    bob.expect("user", "dave", "club", "leave");
    let listed = members(addr, "club");
    assert_eq!(
        listed.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["alice", "bob", "carol"]
    );

    // alice connects: the same seat, now online.
    let mut alice = server.client();
    alice.join_ok("alice", "club");
    bob.expect("user", "alice", "club", "join");
    assert_eq!(
        members(addr, "club")[0],
        member("alice", alice_avatar, true)
    );

    // An HTTP release takes the seat and the connection.
    assert_eq!(server.room("club", "alice", 0), "leave chatroom");
    bob.expect("user", "alice", "club", "leave");
    let listed = members(addr, "club");
    assert_eq!(
        listed.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert_eq!(server.population("club"), 2);
    common::post_form(addr, "/chatroom/members", &[]).assert_invalid("room_name");
}

#[test]
fn require_token_guards_history_and_members() {
    let server = TestServer::start_with(|c| c.chat.require_token = true);
    let addr = server.http_addr();
    let token = server.register_with_token("keyholder", "");
    server.create_room("vault");
    let forged = "AAAAAAAAAAAAAAAAAAAAAA";
    for (path, ok) in [
        ("/chatroom/history", "get history successfully"),
        ("/chatroom/members", "get members successfully"),
    ] {
        let refused = |reply: common::Reply, how: &str| {
            assert_eq!(reply.status, 401, "{path} {how}: {reply:?}");
            assert_eq!(reply.json(), json!({"res": "unauthorized"}), "{path} {how}");
        };
        let granted = |reply: common::Reply, how: &str| {
            assert_eq!(reply.status, 200, "{path} {how}: {reply:?}");
            assert_eq!(reply.res(), ok, "{path} {how}");
        };
        let query = format!("{path}?room_name=vault");
        refused(
            common::post_form(addr, path, &[("room_name", "vault")]),
            "no token",
        );
        refused(
            common::post_form(addr, path, &[("room_name", "vault"), ("token", forged)]),
            "forged token",
        );
        refused(
            common::get_with(
                addr,
                &query,
                &[("Authorization", &format!("Bearer {forged}"))],
            ),
            "forged bearer",
        );
        refused(
            common::get_with(
                addr,
                &query,
                &[("Authorization", &format!("Basic {token}"))],
            ),
            "another scheme",
        );
        refused(
            common::post_form(addr, path, &[("room_name", "vault"), ("token", "")]),
            "empty token",
        );
        granted(
            common::post_form(addr, path, &[("room_name", "vault"), ("token", &token)]),
            "token in the form",
        );
        granted(
            common::get_query(addr, path, &[("room_name", "vault"), ("token", &token)]),
            "token in the query",
        );
        granted(
            common::get_with(
                addr,
                &query,
                &[("Authorization", &format!("Bearer {token}"))],
            ),
            "bearer header",
        );
    }
    // The room list stays public.
    assert_eq!(common::get(addr, "/chatroom/list").status, 200);
}

// ---------------------------------------------------------------------------
// 8. Clients written before history
// ---------------------------------------------------------------------------

#[test]
fn an_old_client_gets_only_msg_packets_marked_history_after_its_join() {
    let server = server_with(|c| c.chat.history_on_join = 3);
    server.register("talker", "");
    server.register("old", "");
    server.create_room("legacy");
    server.create_room("empty");
    let mut talker = server.client();
    talker.join_ok("talker", "legacy");
    let live = say_many(&mut talker, "talker", "legacy", 5, "earlier");

    // The original client's join: no since, no token.
    let mut old = server.client();
    let (first, after) = join_collect(&mut old, "old", "legacy", None);
    let mut keys: Vec<&str> = first["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["msg", "room_name", "user"],
        "the user packet is unchanged"
    );
    // The newest 3, oldest first, each a plain msg packet for that client:
    // the fields it reads are those of the message.
    assert_history_of(&after, &live[2..], "history on join");
    for p in &after {
        assert_eq!(p["type"], "msg");
        let data = p["data"].as_object().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["history", "msg", "room_name", "seq", "ts", "user"]);
    }
    talker.expect("user", "old", "legacy", "join");

    // From then on, what it gets is as before: live messages, user packets.
    let said = say_many(&mut talker, "talker", "legacy", 1, "now");
    let p = old.recv();
    assert_eq!(p, said[0]);
    assert!(!is_history(&p));
    old.leave("old", "legacy");
    old.expect("user", "old", "legacy", "leave");

    // Joining again after a leave subscribes anew: the newest 3 again.
    let (_, after) = join_collect(&mut old, "old", "legacy", None);
    let newest: Vec<Value> = live[3..].iter().chain(&said).cloned().collect();
    assert_history_of(&after, &newest, "history on a join after a leave");

    // An empty room owes nothing after the user packet.
    let (first, after) = join_collect(&mut old, "old", "empty", None);
    assert_eq!(first["data"]["msg"], "create");
    assert_eq!(after, Vec::<Value>::new());
}

#[test]
fn history_on_join_off_sends_nothing_after_the_user_packet_but_since_still_recovers() {
    let server = server_with(|c| c.chat.history_on_join = 0);
    server.register("talker", "");
    server.register("x", "");
    server.create_room("r");
    let mut talker = server.client();
    talker.join_ok("talker", "r");
    let live = say_many(&mut talker, "talker", "r", 4, "said");
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "r", None);
    assert_eq!(after, Vec::<Value>::new(), "--history-on-join 0");
    x.close();
    let mut x = server.client();
    let (_, after) = join_collect(&mut x, "x", "r", Some(json!(2)));
    assert_history_of(&after, &live[2..], "since 2 with --history-on-join 0");
}

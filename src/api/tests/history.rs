//! Seqs, the wait for the log, history on join, `since` recovery, and the
//! history and members endpoints (SPEC §8), through the sans-IO API.

use super::*;

fn history_config(history_size: usize, history_on_join: usize) -> ApiConfig {
    let mut config = config();
    config.chat.history_size = history_size;
    config.chat.history_on_join = history_on_join;
    config
}

fn history_harness(history_size: usize, history_on_join: usize) -> Harness {
    Harness::seeded(
        &[
            ("1", "ann", "https://example.com/ann.png"),
            ("2", "bob", ""),
            ("3", "cat", ""),
        ],
        &[("hall", 10), ("den", 10)],
        history_config(history_size, history_on_join),
    )
}

fn with_since(mut packet: Value, since: Value) -> Value {
    packet["data"]["since"] = since;
    packet
}

/// The `msg` texts and seqs in frames to `conn`, with whether each is
/// marked as history.
fn messages_to(frames: &[(ConnRef, Value)], conn: ConnRef) -> Vec<(u64, String, bool)> {
    frames
        .iter()
        .filter(|(to, value)| *to == conn && value["type"] == "msg")
        .map(|(_, value)| {
            let data = &value["data"];
            (
                data["seq"].as_u64().expect("seq"),
                data["msg"].as_str().expect("msg").to_string(),
                data["history"] == json!(true),
            )
        })
        .collect()
}

/// Ann in `hall` on conn 1 says `m1` … `m{n}`.
fn chatter(h: &mut Harness, n: u64) {
    for i in 1..=n {
        let frames = h.send(1, &say("ann", "hall", &format!("m{i}")));
        assert!(!frames.is_empty());
    }
}

fn history_page(h: &mut Harness, query: &str) -> Value {
    let response = h.reply(&get(&format!("/chatroom/history?{query}")));
    assert_eq!(response.status, 200, "{query}");
    body(&response)
}

fn page_seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn seqs_count_per_room_and_every_message_reaches_the_log() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("bob", "den"));
    h.advance(Duration::from_millis(5));
    for (conn, user, room, seq) in [
        (1, "ann", "hall", 1),
        (1, "ann", "hall", 2),
        (2, "bob", "den", 1),
        (1, "ann", "hall", 3),
    ] {
        let frames = h.send(conn, &say(user, room, "hi"));
        assert_eq!(frames[0].1["data"]["seq"], seq, "{room}");
        assert_eq!(frames[0].1["data"]["ts"], h.now.unix_ms);
    }
    let logged: Vec<(&str, u64)> = h.log.iter().map(|r| (r.room.as_str(), r.seq)).collect();
    assert_eq!(logged, [("hall", 1), ("hall", 2), ("den", 1), ("hall", 3)]);
    let first = &h.log[0];
    assert_eq!(first.user_name, "ann");
    assert_eq!(first.user_avatar, "https://example.com/ann.png");
    assert_eq!(first.msg, "hi");
    assert_eq!(first.ts, EPOCH_MS + 5);
}

#[test]
fn frames_wait_for_the_write_and_keep_their_order() {
    let mut h = history_harness(1000, 0);
    for conn in 1..=2 {
        h.open(conn);
    }
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("bob", "hall"));
    h.api
        .ws_text(1, &say("ann", "hall", "first").to_string(), h.now);
    // Produced after the message, so they wait behind it too.
    h.api.ws_text(2, &leave("bob", "hall").to_string(), h.now);
    h.api
        .ws_text(1, &say("ann", "nowhere", "x").to_string(), h.now);
    assert!(h.frames_now().is_empty(), "nothing before the write");
    let (id, records) = h.api.poll_message_append().expect("an append");
    assert_eq!(records.len(), 1);
    assert!(h.api.poll_message_append().is_none());
    assert!(h.api.has_pending_work());
    assert!(h.frames_now().is_empty(), "still nothing");
    h.api.handle_messages_written(id);
    assert!(!h.api.has_pending_work());
    let frames = h.frames_now();
    let kinds: Vec<(ConnRef, String)> = frames
        .iter()
        .map(|(conn, v)| (*conn, format!("{}:{}", v["type"], v["data"]["msg"])))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "\"msg\":\"first\"".to_string()),
            (2, "\"msg\":\"first\"".to_string()),
            (1, "\"user\":\"leave\"".to_string()),
            (2, "\"user\":\"leave\"".to_string()),
            (1, "\"error\":\"invalid room\"".to_string()),
        ]
    );
    // Nothing waits now: frames flow at once.
    let frames = h.send_text(1, "nonsense");
    assert_error(&frames, 1, "invalid message");
}

#[test]
fn a_failing_log_refuses_messages_until_it_writes_again() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    h.send(1, &join("ann", "hall"));
    h.api
        .ws_text(1, &say("ann", "hall", "one").to_string(), h.now);
    let (id, _) = h.api.poll_message_append().expect("an append");
    h.api.handle_message_write_failing(id, "disk full");
    assert!(h.frames_now().is_empty());
    h.api
        .ws_text(1, &say("ann", "hall", "two").to_string(), h.now);
    assert!(h.api.poll_message_append().is_none(), "nothing accepted");
    assert_eq!(h.api.history_counters().messages_refused, 1);
    // The refusal waits behind "one" like any frame. The writer retried and
    // got through: "one" goes out, then the error, and new messages are
    // accepted again.
    assert!(h.frames_now().is_empty());
    h.api.handle_messages_written(id);
    let frames = h.frames_now();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].1["data"]["msg"], "one");
    assert_eq!(frames[0].1["data"]["seq"], 1);
    assert_error(&frames[1..], 1, "service unavailable");
    let frames = h.send(1, &say("ann", "hall", "three"));
    assert_eq!(
        frames[0].1["data"]["seq"], 2,
        "no seq was spent on the refusal"
    );
}

#[test]
fn a_late_joiner_gets_the_newest_messages_as_history() {
    let mut h = history_harness(1000, 3);
    h.open(1);
    h.open(2);
    h.open(3);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 5);
    h.send(3, &join("cat", "den"));
    let frames = h.send(2, &join("bob", "hall"));
    // The join goes to everyone in the room; the history to bob alone,
    // right after his user packet.
    assert_eq!(frames[0].1["type"], "user");
    let to_bob: Vec<&Value> = frames
        .iter()
        .filter(|(to, _)| *to == 2)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_bob[0]["type"], "user");
    assert_eq!(
        messages_to(&frames, 2),
        [
            (3, "m3".to_string(), true),
            (4, "m4".to_string(), true),
            (5, "m5".to_string(), true)
        ]
    );
    assert!(messages_to(&frames, 1).is_empty(), "ann saw them live");
    // A history packet is the live one plus the mark.
    let history = frames
        .iter()
        .find(|(to, v)| *to == 2 && v["type"] == "msg")
        .map(|(_, v)| v.clone())
        .expect("history");
    let keys: BTreeSet<&str> = history["data"]
        .as_object()
        .expect("data")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["user", "room_name", "msg", "ts", "seq", "history"])
    );
    assert_eq!(
        history["data"]["user"]["user_avatar"],
        "https://example.com/ann.png"
    );
    // A re-join of a room already joined sends no history again.
    let frames = h.send(2, &join("bob", "hall"));
    assert_eq!(frames.len(), 1);
    // A room without messages: nothing but the join.
    let frames = h.send(2, &join("bob", "den"));
    assert!(messages_to(&frames, 2).is_empty());
}

#[test]
fn since_recovers_exactly_what_was_missed() {
    let mut h = history_harness(1000, 2);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 10);
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(6)));
    let got: Vec<u64> = messages_to(&frames, 2).iter().map(|m| m.0).collect();
    assert_eq!(got, [7, 8, 9, 10], "all after since, none before");
    assert!(messages_to(&frames, 2).iter().all(|m| m.2), "marked");
    assert!(
        frames.iter().all(|(_, v)| v["type"] != "error"),
        "complete: no error"
    );
    assert_eq!(h.api.history_counters().recoveries_complete, 1);

    // since = the latest seq, or past it: nothing at all.
    for since in [10, 11, 1000] {
        h.send(2, &leave("bob", "hall"));
        let frames = h.send(2, &with_since(join("bob", "hall"), json!(since)));
        assert!(messages_to(&frames, 2).is_empty(), "since {since}");
        assert!(frames.iter().all(|(_, v)| v["type"] != "error"));
    }
    // since = 0: everything retained (10 messages, fewer than 300).
    h.send(2, &leave("bob", "hall"));
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(0)));
    assert_eq!(messages_to(&frames, 2).len(), 10);
    assert!(frames.iter().all(|(_, v)| v["type"] != "error"));
}

#[test]
fn since_older_than_retention_says_history_incomplete_first() {
    let mut h = history_harness(5, 2);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 12); // retained: 8..=12
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(3)));
    let to_bob: Vec<&Value> = frames
        .iter()
        .filter(|(to, _)| *to == 2)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_bob[0]["type"], "user");
    assert_eq!(to_bob[1]["type"], "error");
    assert_eq!(
        to_bob[1]["data"],
        json!({
            "user": {"user_name": "bob", "user_avatar": ""},
            "room_name": "hall",
            "msg": "history incomplete",
            "since": 3,
            "first_seq": 8,
            "last_seq": 12,
        })
    );
    let got: Vec<u64> = messages_to(&frames, 2).iter().map(|m| m.0).collect();
    assert_eq!(got, [8, 9, 10, 11, 12]);
    assert_eq!(h.api.history_counters().recoveries_incomplete, 1);
    // Exactly at the retention edge it is complete.
    h.send(2, &leave("bob", "hall"));
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(7)));
    assert!(frames.iter().all(|(_, v)| v["type"] != "error"));
    assert_eq!(messages_to(&frames, 2).len(), 5);
}

#[test]
fn more_than_300_missed_sends_the_newest_300_after_the_error() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 350);
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(40)));
    let error = frames
        .iter()
        .find(|(to, v)| *to == 2 && v["type"] == "error")
        .map(|(_, v)| v.clone())
        .expect("history incomplete");
    assert_eq!(error["data"]["first_seq"], 51);
    assert_eq!(error["data"]["last_seq"], 350);
    let got: Vec<u64> = messages_to(&frames, 2).iter().map(|m| m.0).collect();
    assert_eq!(got, (51..=350).collect::<Vec<u64>>());
    // 300 missed exactly is complete.
    h.send(2, &leave("bob", "hall"));
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(50)));
    assert!(frames.iter().all(|(_, v)| v["type"] != "error"));
    assert_eq!(messages_to(&frames, 2).len(), 300);
}

#[test]
fn history_off_keeps_counting_and_says_recovery_is_impossible() {
    let mut h = history_harness(0, 50);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 3);
    let frames = h.send(2, &join("bob", "hall"));
    assert!(messages_to(&frames, 2).is_empty());
    h.send(2, &leave("bob", "hall"));
    let frames = h.send(2, &with_since(join("bob", "hall"), json!(1)));
    let error = frames
        .iter()
        .find(|(_, v)| v["type"] == "error")
        .map(|(_, v)| v.clone())
        .expect("history incomplete");
    assert_eq!(error["data"]["msg"], "history incomplete");
    assert_eq!(error["data"]["first_seq"], 4, "an empty range");
    assert_eq!(error["data"]["last_seq"], 3);
    let frames = h.send(1, &say("ann", "hall", "next"));
    assert_eq!(frames[0].1["data"]["seq"], 4);
    let page = history_page(&mut h, "room_name=hall");
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["has_more"], false);
}

#[test]
fn since_must_be_a_non_negative_integer() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    for since in [json!(-1), json!(1.5), json!("3"), json!([1]), json!({})] {
        let frames = h.send(1, &with_since(join("ann", "hall"), since.clone()));
        assert_error(&frames, 1, "invalid data");
    }
    // null is as if absent.
    let frames = h.send(1, &with_since(join("ann", "hall"), Value::Null));
    assert_user_packets(&frames, "create", "ann", "hall");
}

#[test]
fn a_joiner_during_an_unwritten_message_gets_it_once() {
    let mut h = history_harness(1000, 50);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    // The message is accepted, not yet written, when bob joins: he is not
    // a recipient of its broadcast, so it must reach him as history.
    h.api
        .ws_text(1, &say("ann", "hall", "racing").to_string(), h.now);
    h.api.ws_text(2, &join("bob", "hall").to_string(), h.now);
    let frames = h.frames();
    assert_eq!(
        messages_to(&frames, 2),
        [(1, "racing".to_string(), true)],
        "exactly once, as history"
    );
    assert_eq!(messages_to(&frames, 1), [(1, "racing".to_string(), false)]);
}

#[test]
fn http_history_pages_with_before_after_and_has_more() {
    let mut h = history_harness(25, 0);
    h.open(1);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 30); // retained: 6..=30

    let page = history_page(&mut h, "room_name=hall&limit=10");
    assert_eq!(page["res"], "get history successfully");
    assert_eq!(page["room_name"], "hall");
    assert_eq!(page_seqs(&page), (21..=30).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(
        page["messages"][0],
        json!({
            "seq": 21,
            "ts": EPOCH_MS,
            "user": {"user_name": "ann", "user_avatar": "https://example.com/ann.png"},
            "msg": "m21",
        })
    );
    let page = history_page(&mut h, "room_name=hall&before=21&limit=10");
    assert_eq!(page_seqs(&page), (11..=20).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], true);
    let page = history_page(&mut h, "room_name=hall&before=11&limit=10");
    assert_eq!(page_seqs(&page), (6..=10).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], false);
    let page = history_page(&mut h, "room_name=hall&after=0&limit=10");
    assert_eq!(page_seqs(&page), (6..=15).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], true);
    let page = history_page(&mut h, "room_name=hall&after=25");
    assert_eq!(page_seqs(&page), (26..=30).collect::<Vec<u64>>());
    assert_eq!(page["has_more"], false);
    let page = history_page(&mut h, "room_name=hall&after=30");
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["has_more"], false);
    // Default limit 50, more than retained.
    let page = history_page(&mut h, "room_name=hall");
    assert_eq!(page_seqs(&page).len(), 25);
    assert_eq!(page["has_more"], false);
    // An empty room.
    let page = history_page(&mut h, "room_name=den");
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["has_more"], false);
    // An unknown room.
    let response = h.reply(&get("/chatroom/history?room_name=nowhere"));
    assert_eq!(body(&response), json!({"res": "invalid room"}));
    // Malformed paging is a 400 naming the field.
    for (query, field) in [
        ("room_name=hall&limit=0", "limit"),
        ("room_name=hall&limit=101", "limit"),
        ("room_name=hall&limit=x", "limit"),
        ("room_name=hall&before=-1", "before"),
        ("room_name=hall&after=1.5", "after"),
        ("room_name=hall&before=3&after=1", "before, after"),
        ("limit=5", "room_name"),
    ] {
        let response = h.reply(&get(&format!("/chatroom/history?{query}")));
        assert_eq!(response.status, 400, "{query}");
        let error = body(&response)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.starts_with(field), "{query}: {error}");
    }
    let page = history_page(&mut h, "room_name=hall&limit=100");
    assert_eq!(page_seqs(&page).len(), 25);
}

#[test]
fn http_history_shows_only_written_messages() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    h.send(1, &join("ann", "hall"));
    chatter(&mut h, 2);
    h.api
        .ws_text(1, &say("ann", "hall", "in flight").to_string(), h.now);
    let (id, _) = h.api.poll_message_append().expect("append");
    let page = history_page(&mut h, "room_name=hall");
    assert_eq!(page_seqs(&page), [1, 2]);
    h.api.handle_messages_written(id);
    let page = history_page(&mut h, "room_name=hall");
    assert_eq!(page_seqs(&page), [1, 2, 3]);
}

#[test]
fn members_lists_seats_online_or_not() {
    let mut h = history_harness(1000, 0);
    h.open(1);
    h.open(2);
    h.send(1, &join("ann", "hall"));
    h.send(
        2,
        &with_avatar(join("bob", "hall"), "https://example.com/b.png"),
    );
    assert_eq!(h.room("hall", "cat", "1"), "join chatroom");
    let response = h.reply(&get("/chatroom/members?room_name=hall"));
    assert_eq!(
        body(&response),
        json!({
            "res": "get members successfully",
            "room_name": "hall",
            "population": 3,
            "members": [
                {"user_name": "ann", "user_avatar": "https://example.com/ann.png", "online": true},
                {"user_name": "bob", "user_avatar": "https://example.com/b.png", "online": true},
                {"user_name": "cat", "user_avatar": "", "online": false},
            ],
        })
    );
    // bob drops: his seat stays for the TTL, offline.
    h.close(2);
    let members = body(&h.reply(&get("/chatroom/members?room_name=hall")))["members"].clone();
    assert_eq!(members[1]["user_name"], "bob");
    assert_eq!(members[1]["online"], false);
    // ann leaves: her seat is gone.
    h.send(1, &leave("ann", "hall"));
    let value = body(&h.reply(&get("/chatroom/members?room_name=hall")));
    assert_eq!(value["population"], 2);
    assert_eq!(value["members"].as_array().map(Vec::len), Some(2));
    let value = body(&h.reply(&get("/chatroom/members?room_name=den")));
    assert_eq!(value["members"], json!([]));
    assert_eq!(
        body(&h.reply(&get("/chatroom/members?room_name=zzz"))),
        json!({"res": "invalid room"})
    );
}

#[test]
fn require_token_covers_history_and_members() {
    let mut config = history_config(1000, 0);
    config.chat.require_token = true;
    let mut h = Harness::new(config);
    assert_eq!(res(&h.register("100", "ann", "")), "register successfully");
    assert_eq!(res(&h.create("hall")), "chatroom create successfully");
    let token = h.token("100");
    for path in ["/chatroom/history", "/chatroom/members"] {
        let response = h.reply(&get(&format!("{path}?room_name=hall")));
        assert_eq!(response.status, 401, "{path}");
        assert_eq!(body(&response), json!({"res": "unauthorized"}));
        let response = h.reply(&get(&format!("{path}?room_name=hall&token=forged")));
        assert_eq!(response.status, 401, "{path}");
        let response = h.reply(&get(&format!("{path}?room_name=hall&token={token}")));
        assert_eq!(response.status, 200, "{path}");
        let mut request = get(&format!("{path}?room_name=hall"));
        request.headers.push(Header {
            name: "authorization".to_string(),
            value: format!("Bearer {token}").into_bytes(),
        });
        assert_eq!(h.reply(&request).status, 200, "{path} with a bearer token");
    }
    // Without --require-token, no token is needed.
    let mut h = history_harness(1000, 0);
    assert_eq!(
        h.reply(&get("/chatroom/history?room_name=hall")).status,
        200
    );
}

#[test]
fn restored_history_continues_its_seqs() {
    let mut h = history_harness(3, 10);
    let record = |seq: u64| MessageRecord {
        room: "hall".to_string(),
        seq,
        ts: EPOCH_MS + seq,
        user_name: "ann".to_string(),
        user_avatar: String::new(),
        msg: format!("old {seq}"),
    };
    let mut logs = HashMap::new();
    logs.insert(
        "hall".to_string(),
        RoomLog {
            last_seq: 41,
            messages: (37..=41).map(record).collect(),
        },
    );
    logs.insert(
        "den".to_string(),
        RoomLog {
            last_seq: 9,
            messages: Vec::new(),
        },
    );
    logs.insert("gone".to_string(), RoomLog::default());
    h.api.restore_history(logs);
    assert_eq!(h.api.retained_messages(), 3, "history size 3");
    h.open(1);
    let frames = h.send(1, &join("ann", "hall"));
    assert_eq!(
        messages_to(&frames, 1),
        [
            (39, "old 39".to_string(), true),
            (40, "old 40".to_string(), true),
            (41, "old 41".to_string(), true)
        ]
    );
    let frames = h.send(1, &say("ann", "hall", "new"));
    assert_eq!(frames[0].1["data"]["seq"], 42);
    h.send(1, &join("ann", "den"));
    let frames = h.send(1, &say("ann", "den", "new"));
    assert_eq!(frames[0].1["data"]["seq"], 10);
}

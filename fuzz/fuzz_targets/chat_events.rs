//! The API driven by arbitrary sequences of WebSocket packets, closes, HTTP
//! admissions and releases, and the passing of time. After every step the
//! model's invariants must hold: no room over capacity, seats counted
//! consistently, every subscribed connection holding a seat, and no frame
//! addressed to a connection that is not open.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chatroom::api::{Api, ApiConfig, ChatConfig, Now};
use chatroom::chat::state::ChatState;
use chatroom::http::request::Request;
use chatroom::store::{RoomRecord, UserRecord};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
const ROOMS: [(&str, u32); 3] = [("one", 1), ("two", 2), ("three", 3)];
const CONNECTIONS: u64 = 6;

fn api() -> Api {
    let mut state = ChatState::new(Duration::from_secs(60));
    for (index, name) in USERS.iter().enumerate() {
        state.add_user(UserRecord {
            tel: format!("1000{index}"),
            name: name.to_string(),
            password_hash: String::new(),
            avatar_url: String::new(),
            created_ms: 0,
        });
    }
    for (name, capacity) in ROOMS {
        state.add_room(RoomRecord {
            name: name.to_string(),
            capacity,
            created_ms: 0,
        });
    }
    Api::new(
        state,
        ApiConfig {
            room_capacity: 100,
            max_rooms: 10,
            max_pending_hashes: 8,
            chat: ChatConfig {
                require_token: false,
                max_msg_chars: 50,
                ws_rate: 0,
                ws_burst: 40,
            },
        },
    )
}

fn packet(kind: &str, user: &str, room: &str, msg: &str) -> String {
    format!(
        r#"{{"type":"{kind}","data":{{"user":{{"user_name":"{user}","user_avatar":""}},"room_name":"{room}","msg":"{msg}"}}}}"#
    )
}

fn seat_request(user: &str, room: &str, status: u8) -> Request {
    Request {
        method: "GET".to_string(),
        target: format!("/chatroom/room?room_name={room}&user_name={user}&status={status}"),
        minor_version: 1,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn check_invariants(api: &Api) {
    let state = api.state();
    let mut seats = 0;
    for room in state.rooms() {
        assert!(
            room.population() <= room.capacity as usize,
            "room {} over capacity",
            room.name
        );
        seats += room.population();
        let room_id = state.room_id(&room.name).expect("listed room has an id");
        for (_, user) in room.members() {
            assert!(
                state.holds_seat(room_id, *user),
                "a member of {} holds no seat",
                room.name
            );
        }
    }
    assert_eq!(seats, state.seats_held());
}

fuzz_target!(|ops: &[u8]| {
    let mut api = api();
    let start = Instant::now();
    let mut now = Now {
        mono: start,
        unix_ms: 1,
    };
    let mut open: HashSet<u64> = HashSet::new();
    let mut frames: Vec<(u64, Rc<[u8]>)> = Vec::new();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for chunk in ops.chunks(2) {
        let op = chunk[0];
        let arg = chunk.get(1).copied().unwrap_or(0);
        let conn = u64::from(arg) % CONNECTIONS;
        let user = USERS[usize::from(arg >> 3) % USERS.len()];
        let room = ROOMS[usize::from(arg >> 5) % ROOMS.len()].0;
        match op % 9 {
            0 => {
                if open.insert(conn) {
                    api.ws_open(conn, None, now);
                }
            }
            1 => {
                if open.remove(&conn) {
                    api.ws_closed(conn, now);
                }
            }
            2 if open.contains(&conn) => api.ws_text(conn, &packet("join", user, room, ""), now),
            3 if open.contains(&conn) => api.ws_text(conn, &packet("leave", user, room, ""), now),
            4 if open.contains(&conn) => api.ws_text(conn, &packet("msg", user, room, "hi"), now),
            5 => {
                let _ = api.handle(999, &seat_request(user, room, 1), peer, now);
            }
            6 => {
                let _ = api.handle(999, &seat_request(user, room, 0), peer, now);
            }
            7 => {
                now.mono = now.mono + Duration::from_secs(u64::from(arg));
                now.unix_ms += u64::from(arg) * 1000;
                api.tick(now);
            }
            8 if open.contains(&conn) => {
                let text = String::from_utf8_lossy(chunk);
                api.ws_text(conn, &text, now);
            }
            _ => {}
        }
        api.swap_outbox(&mut frames);
        for (to, _) in frames.drain(..) {
            assert!(
                open.contains(&to),
                "a frame went to connection {to}, which is not open"
            );
        }
        check_invariants(&api);
    }
});

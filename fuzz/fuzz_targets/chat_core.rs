//! The chat core driven through the sans-IO API by arbitrary sequences of
//! HTTP calls (admissions, releases, room creation, registration, login,
//! room lists), WebSocket opens, packets (well-formed or arbitrary text),
//! binary frames and closes, and the passing of time with or without a tick.
//!
//! A model written from SPEC §2.3, §3 and §4 runs alongside. After every
//! step:
//! - every HTTP answer and every frame the API produced is exactly the one
//!   the model expects, to exactly the connections it expects: nothing is
//!   delivered to a connection outside the room, and nobody in it is missed;
//! - population = seats taken ≤ capacity, per room and in total, and the
//!   room list says the same;
//! - every connection's rooms agree with every room's members, and both
//!   with the model;
//! - the seats held are exactly the model's, so TTL expiry freed exactly the
//!   seats whose time ran out, and the next deadline is the model's earliest;
//! - every `msg` carries its room's next seq, a new join gets the newest
//!   retained messages as history, and a join with `since` gets exactly the
//!   retained messages after it, with "history incomplete" first when some
//!   are gone (SPEC §8). The message log may stall for any number of steps:
//!   frames then wait, and arrive (all of them, once) when it writes.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use chatroom::api::{Api, ApiConfig, ChatConfig, ConnRef, Now, Outcome};
use chatroom::auth::PasswordOutcome;
use chatroom::chat::packet::{self, ClientPacket, PacketError, PacketKind};
use chatroom::chat::state::ChatState;
use chatroom::http::request::Request;
use chatroom::http::response::Response;
use chatroom::store::{Completion, RoomRecord, UserRecord};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(60);
const TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TOKENS_PER_USER: usize = 16;
const MAX_MSG_CHARS: usize = 20;
const DEFAULT_CAPACITY: u32 = 2;
const MAX_ROOMS: usize = 4;
const CONNECTIONS: u8 = 6;
/// Small, so retention drops messages within a short run.
const HISTORY_SIZE: usize = 4;
const HISTORY_ON_JOIN: usize = 2;
const MAX_RECOVERY: u64 = 300;
/// The HTTP connection: not a WebSocket, so never a recipient of a frame.
const HTTP_CONN: ConnRef = 999;

/// Registered at the start; `eve` and `fay` may register; `zed` never does.
const USERS: [&str; 7] = ["ann", "bob", "cy", "dee", "eve", "fay", "zed"];
const REPLAYED_USERS: usize = 4;
/// Replayed at the start; `four` and `five` may be created (only one fits
/// under MAX_ROOMS); `nowhere` never is.
const ROOMS: [(&str, u32); 3] = [("one", 1), ("two", 2), ("three", 3)];
const ROOM_NAMES: [&str; 6] = ["one", "two", "three", "four", "five", "nowhere"];

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        conn: u8,
        url_token: Option<u8>,
    },
    Close {
        conn: u8,
    },
    Join {
        conn: u8,
        user: u8,
        room: u8,
        token: Option<u8>,
        since: Option<u8>,
    },
    Leave {
        conn: u8,
        user: u8,
        room: u8,
    },
    Say {
        conn: u8,
        user: u8,
        room: u8,
        long: bool,
    },
    Text {
        conn: u8,
        text: String,
    },
    Binary {
        conn: u8,
    },
    Admit {
        user: u8,
        room: u8,
    },
    Release {
        user: u8,
        room: u8,
    },
    BadStatus {
        user: u8,
        room: u8,
        status: String,
    },
    List,
    Create {
        room: u8,
        capacity: Option<u16>,
        durable: bool,
    },
    Register {
        user: u8,
        durable: bool,
    },
    Login {
        user: u8,
    },
    /// The message log stops writing (frames behind a message wait) or
    /// writes everything it was given.
    StallLog,
    WriteLog,
    Wait {
        by: Wait,
        tick: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum Wait {
    Seconds(u16),
    /// Exactly to the earliest seat expiry, where `<` and `<=` part ways.
    ToDeadline,
    /// A millisecond short of it.
    JustBeforeDeadline,
}

/// A frame as the model predicts it: recipient, type, msg, room, user, and
/// the history fields (`seq=N`, ` history`, `since=S first=F last=L`).
type Delivery = (ConnRef, String, String, String, String, String);

/// A room's seqs as the model keeps them: the last one, and the retained
/// messages (seq, user, text), oldest first.
#[derive(Debug, Default)]
struct RoomLog {
    last_seq: u64,
    retained: VecDeque<(u64, String, String)>,
}

#[derive(Debug, Default, Clone)]
struct Session {
    user: Option<String>,
    url_token: Option<String>,
    rooms: Vec<String>,
}

#[derive(Debug)]
struct Model {
    now: Instant,
    users: Vec<String>,
    rooms: Vec<(String, u32)>,
    /// (room, user) → when the seat expires; `None` while connected.
    seats: BTreeMap<(String, String), Option<Instant>>,
    /// (room, user) → until when the HTTP leave after a WebSocket `leave`
    /// that freed the seat still answers "leave chatroom" (SPEC §3).
    ws_left: BTreeMap<(String, String), Instant>,
    sessions: BTreeMap<ConnRef, Session>,
    /// Per user, in issuing order: (token, expires).
    tokens: BTreeMap<String, Vec<(String, Instant)>>,
    history: BTreeMap<String, RoomLog>,
    expected: Vec<Delivery>,
}

impl Model {
    fn capacity(&self, room: &str) -> Option<u32> {
        self.rooms
            .iter()
            .find(|(name, _)| name == room)
            .map(|(_, c)| *c)
    }

    fn population(&self, room: &str) -> usize {
        self.seats.keys().filter(|(r, _)| r == room).count()
    }

    fn members(&self, room: &str) -> Vec<ConnRef> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.rooms.iter().any(|r| r == room))
            .map(|(conn, _)| *conn)
            .collect()
    }

    fn connected(&self, room: &str, user: &str) -> bool {
        self.sessions
            .values()
            .any(|s| s.user.as_deref() == Some(user) && s.rooms.iter().any(|r| r == room))
    }

    fn send(&mut self, to: &[ConnRef], kind: &str, msg: &str, room: &str, user: &str) {
        self.send_with(to, kind, msg, room, user, String::new());
    }

    fn send_with(
        &mut self,
        to: &[ConnRef],
        kind: &str,
        msg: &str,
        room: &str,
        user: &str,
        extra: String,
    ) {
        for conn in to {
            self.expected.push((
                *conn,
                kind.to_owned(),
                msg.to_owned(),
                room.to_owned(),
                user.to_owned(),
                extra.clone(),
            ));
        }
    }

    /// SPEC §8: what a new joiner is owed after its `user` packet.
    fn join_history(&mut self, conn: ConnRef, room: &str, user: &str, since: Option<u64>) {
        let log = self.history.entry(room.to_owned()).or_default();
        let last = log.last_seq;
        let first_retained = last + 1 - log.retained.len() as u64;
        let (from, incomplete) = match since {
            None => (
                (last + 1)
                    .saturating_sub(HISTORY_ON_JOIN as u64)
                    .max(first_retained),
                None,
            ),
            Some(since) if since >= last => (last + 1, None),
            Some(since) => {
                let from = (since + 1)
                    .max(first_retained)
                    .max((last + 1).saturating_sub(MAX_RECOVERY));
                (from, (from != since + 1).then_some(since))
            }
        };
        let owed: Vec<(u64, String, String)> = log
            .retained
            .iter()
            .filter(|(seq, _, _)| *seq >= from)
            .cloned()
            .collect();
        if let Some(since) = incomplete {
            let extra = format!("since={since} first={from} last={last}");
            self.send_with(&[conn], "error", "history incomplete", room, user, extra);
        }
        for (seq, author, text) in owed {
            self.send_with(
                &[conn],
                "msg",
                &text,
                room,
                &author,
                format!("seq={seq} history"),
            );
        }
    }

    fn token_user(&self, token: &str) -> Option<String> {
        self.tokens.iter().find_map(|(user, issued)| {
            issued
                .iter()
                .any(|(t, expires)| t == token && *expires > self.now)
                .then(|| user.clone())
        })
    }

    fn issue(&mut self, user: &str, token: String) {
        let now = self.now;
        let issued = self.tokens.entry(user.to_owned()).or_default();
        issued.retain(|(_, expires)| *expires > now);
        if issued.len() >= MAX_TOKENS_PER_USER {
            issued.remove(0);
        }
        issued.push((token, now + TOKEN_LIFETIME));
    }

    fn all_tokens(&self) -> Vec<String> {
        self.tokens
            .values()
            .flat_map(|issued| issued.iter().map(|(t, _)| t.clone()))
            .collect()
    }

    /// The last connection of `user` in `room` went: the seat's TTL starts.
    fn after_unsubscribe(&mut self, room: &str, user: &str) {
        if !self.connected(room, user) {
            let expires = self.now + TTL;
            if let Some(seat) = self.seats.get_mut(&(room.to_owned(), user.to_owned())) {
                if seat.is_none() {
                    *seat = Some(expires);
                }
            }
        }
    }

    /// SPEC §4, past the structural checks: what a packet does.
    fn packet(&mut self, conn: ConnRef, packet: &ClientPacket) -> Result<(), PacketError> {
        let session = self.sessions.get(&conn).cloned().unwrap_or_default();
        let token = packet.token.clone().or(session.url_token.clone());
        let user = match token {
            Some(token) => {
                let user = self.token_user(&token).ok_or(PacketError::Unauthorized)?;
                if user != packet.user_name {
                    return Err(PacketError::UserMismatch);
                }
                user
            }
            None if self.users.contains(&packet.user_name) => packet.user_name.clone(),
            None => return Err(PacketError::UserNotExist),
        };
        if session.user.as_ref().is_some_and(|bound| *bound != user) {
            return Err(PacketError::UserMismatch);
        }
        let room = packet.room_name.clone();
        let capacity = self.capacity(&room).ok_or(PacketError::InvalidRoom)?;
        let joined = session.rooms.contains(&room);
        match packet.kind {
            PacketKind::Join if joined => self.send(&[conn], "user", "join", &room, &user),
            PacketKind::Join => {
                let seat = (room.clone(), user.clone());
                if !self.seats.contains_key(&seat) && self.population(&room) >= capacity as usize {
                    return Err(PacketError::FullRoom);
                }
                let kind = if self.population(&room) == 0 {
                    "create"
                } else {
                    "join"
                };
                self.ws_left.remove(&seat);
                self.seats.insert(seat, None);
                let session = self.sessions.entry(conn).or_default();
                session.user.get_or_insert_with(|| user.clone());
                session.rooms.push(room.clone());
                let members = self.members(&room);
                self.send(&members, "user", kind, &room, &user);
                self.join_history(conn, &room, &user, packet.since);
            }
            PacketKind::Leave if !joined => return Err(PacketError::NotInRoom),
            PacketKind::Leave => {
                let members = self.members(&room);
                self.send(&members, "user", "leave", &room, &user);
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.rooms.retain(|r| *r != room);
                }
                // A leave frees the seat at once unless another connection
                // of the user is still in the room.
                if !self.connected(&room, &user) {
                    let seat = (room.clone(), user.clone());
                    self.seats.remove(&seat);
                    self.ws_left.insert(seat, self.now + TTL);
                }
            }
            PacketKind::Msg if !joined => return Err(PacketError::NotInRoom),
            PacketKind::Msg if packet.msg.chars().count() > MAX_MSG_CHARS => {
                return Err(PacketError::MessageTooLong)
            }
            PacketKind::Msg => {
                let log = self.history.entry(room.clone()).or_default();
                log.last_seq += 1;
                let seq = log.last_seq;
                if log.retained.len() >= HISTORY_SIZE {
                    log.retained.pop_front();
                }
                log.retained
                    .push_back((seq, user.clone(), packet.msg.clone()));
                let members = self.members(&room);
                self.send_with(
                    &members,
                    "msg",
                    &packet.msg,
                    &room,
                    &user,
                    format!("seq={seq}"),
                );
            }
        }
        Ok(())
    }

    fn text(&mut self, conn: ConnRef, text: &str) {
        if !self.sessions.contains_key(&conn) {
            return;
        }
        match packet::parse(text) {
            Err((error, echo)) => self.send(
                &[conn],
                "error",
                error.as_str(),
                &echo.room_name,
                &echo.user_name,
            ),
            Ok(packet) => {
                if let Err(error) = self.packet(conn, &packet) {
                    self.send(
                        &[conn],
                        "error",
                        error.as_str(),
                        &packet.room_name,
                        &packet.user_name,
                    );
                }
            }
        }
    }

    fn close(&mut self, conn: ConnRef) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let Some(user) = session.user else {
            return;
        };
        for room in session.rooms {
            self.after_unsubscribe(&room, &user);
            let members = self.members(&room);
            self.send(&members, "user", "leave", &room, &user);
        }
    }

    /// `/chatroom/room`, SPEC §2.3.
    fn room(&mut self, user: &str, room: &str, status: &str) -> &'static str {
        let Some(capacity) = self.capacity(room) else {
            return "invalid room";
        };
        let seat = (room.to_owned(), user.to_owned());
        match status {
            "1" if !self.users.iter().any(|u| u == user) => "user not exist",
            "1" => {
                if let Some(expires) = self.seats.get(&seat).copied() {
                    if expires.is_some() {
                        self.seats.insert(seat, Some(self.now + TTL));
                    }
                    "join chatroom"
                } else if self.population(room) >= capacity as usize {
                    "full room"
                } else {
                    self.ws_left.remove(&seat);
                    self.seats.insert(seat, Some(self.now + TTL));
                    "join chatroom"
                }
            }
            "0" if !self.seats.contains_key(&seat) => {
                let now = self.now;
                match self.ws_left.remove(&seat) {
                    Some(until) if until > now => "leave chatroom",
                    _ => "user not exist",
                }
            }
            "0" => {
                self.seats.remove(&seat);
                let before = self.members(room);
                let evicted: Vec<ConnRef> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| {
                        s.user.as_deref() == Some(user) && s.rooms.iter().any(|r| r == room)
                    })
                    .map(|(conn, _)| *conn)
                    .collect();
                if !evicted.is_empty() {
                    self.send(&before, "user", "leave", room, user);
                }
                for conn in evicted {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.rooms.retain(|r| r != room);
                    }
                }
                "leave chatroom"
            }
            _ => "invalid status",
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        self.seats
            .retain(|_, expires| expires.is_none_or(|expires| expires > now));
        self.ws_left.retain(|_, until| *until > now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let seat = self.seats.values().flatten().min().copied();
        let memo = self.ws_left.values().min().copied();
        seat.into_iter().chain(memo).min()
    }
}

fn get(target: String) -> Request {
    Request {
        method: "GET".to_owned(),
        target,
        minor_version: 1,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).expect("API responses are JSON")
}

fn res_of(response: &Response) -> String {
    json_of(response)["res"]
        .as_str()
        .expect("a res string")
        .to_owned()
}

fn reply(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Reply(response) => response,
        Outcome::Pending => panic!("an answer was expected now"),
    }
}

/// A server frame's packet as the model describes it.
fn delivery(to: ConnRef, frame: &[u8]) -> Delivery {
    assert_eq!(frame[0], 0x81, "a final text frame");
    let header_len = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let json: Value = serde_json::from_slice(&frame[header_len..]).expect("packets are JSON");
    let field = |value: &Value| value.as_str().expect("a string field").to_owned();
    let data = &json["data"];
    let mut extra = String::new();
    if let Some(seq) = data.get("seq") {
        extra = format!("seq={}", seq.as_u64().expect("a seq number"));
        match data.get("history") {
            Some(Value::Bool(true)) => extra.push_str(" history"),
            None => {}
            Some(other) => panic!("history is true or absent, not {other}"),
        }
    }
    if let Some(since) = data.get("since") {
        extra = format!(
            "since={} first={} last={}",
            since.as_u64().expect("since"),
            data["first_seq"].as_u64().expect("first_seq"),
            data["last_seq"].as_u64().expect("last_seq")
        );
    }
    (
        to,
        field(&json["type"]),
        field(&data["msg"]),
        field(&data["room_name"]),
        field(&data["user"]["user_name"]),
        extra,
    )
}

struct Harness {
    api: Api,
    model: Model,
    unix_ms: u64,
    peer: IpAddr,
    outbox: Vec<(ConnRef, Rc<[u8]>)>,
    /// The message log writes nothing while stalled.
    log_stalled: bool,
    /// Appends the log was given and has not written, oldest first.
    log_queue: VecDeque<u64>,
    /// Frames that left the API while some message was still unwritten:
    /// compared with the model once everything is written.
    delivered: Vec<Delivery>,
}

impl Harness {
    fn new() -> Harness {
        let mut state = ChatState::new(TTL);
        for name in &USERS[..REPLAYED_USERS] {
            state.add_user(user_record(name));
        }
        for (name, capacity) in ROOMS {
            state.add_room(RoomRecord {
                name: name.to_owned(),
                capacity,
                created_ms: 0,
            });
        }
        let api = Api::new(
            state,
            ApiConfig {
                room_capacity: DEFAULT_CAPACITY,
                max_rooms: MAX_ROOMS,
                max_pending_hashes: 8,
                chat: ChatConfig {
                    require_token: false,
                    max_msg_chars: MAX_MSG_CHARS,
                    // The rate limit is its own unit tests' business: here
                    // every packet must be judged on its content.
                    ws_rate: 0,
                    ws_burst: 40,
                    history_size: HISTORY_SIZE,
                    history_on_join: HISTORY_ON_JOIN,
                },
            },
        );
        Harness {
            api,
            model: Model {
                now: Instant::now(),
                users: USERS[..REPLAYED_USERS]
                    .iter()
                    .map(|u| u.to_string())
                    .collect(),
                rooms: ROOMS.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
                seats: BTreeMap::new(),
                ws_left: BTreeMap::new(),
                sessions: BTreeMap::new(),
                tokens: BTreeMap::new(),
                history: BTreeMap::new(),
                expected: Vec::new(),
            },
            unix_ms: 1_700_000_000_000,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            outbox: Vec::new(),
            log_stalled: false,
            log_queue: VecDeque::new(),
            delivered: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.model.now,
            unix_ms: self.unix_ms,
        }
    }

    fn http(&mut self, target: String) -> Outcome {
        let now = self.now();
        self.api.handle(HTTP_CONN, &get(target), self.peer, now)
    }

    /// The record batch queued by the last request, completed.
    fn complete_batch(&mut self, durable: bool) -> Response {
        let (batch, records) = self
            .api
            .take_persist_batch()
            .expect("a record waits for the disk");
        assert_eq!(records.len(), 1);
        let mut replies = self.api.on_batch_done(Completion {
            batch,
            result: if durable {
                Ok(())
            } else {
                Err("injected".to_owned())
            },
            sync_micros: 0,
            first_in_group: true,
        });
        assert_eq!(replies.len(), 1);
        let (conn, response) = replies.remove(0);
        assert_eq!(conn, HTTP_CONN);
        response
    }

    /// The one password job queued by the last request, finished.
    fn finish_password_job(&mut self, outcome: PasswordOutcome) -> Option<Response> {
        let mut jobs = self.api.take_password_jobs();
        assert_eq!(jobs.len(), 1);
        let (job, _) = jobs.remove(0);
        let now = self.now();
        self.api
            .on_password_done(job, outcome, now)
            .map(|(conn, response)| {
                assert_eq!(conn, HTTP_CONN);
                response
            })
    }

    fn step(&mut self, op: Op) {
        let now = self.now();
        match op {
            Op::Open { conn, url_token } => {
                let conn = conn_of(conn);
                if !self.model.sessions.contains_key(&conn) {
                    let tokens = self.model.all_tokens();
                    let url_token = url_token.and_then(|i| pick(&tokens, i).cloned());
                    self.api.ws_open(conn, url_token.clone(), now);
                    self.model.sessions.insert(
                        conn,
                        Session {
                            url_token,
                            ..Session::default()
                        },
                    );
                }
            }
            Op::Close { conn } => {
                let conn = conn_of(conn);
                if self.model.sessions.contains_key(&conn) {
                    self.api.ws_closed(conn, now);
                    self.model.close(conn);
                }
            }
            Op::Join {
                conn,
                user,
                room,
                token,
                since,
            } => {
                let tokens = self.model.all_tokens();
                let mut packet = packet_json("join", user, room, None);
                if let Some(token) = token.and_then(|i| pick(&tokens, i)) {
                    packet["data"]["token"] = Value::from(token.as_str());
                }
                if let Some(since) = since {
                    // Small seqs: around what a short run reaches.
                    packet["data"]["since"] = Value::from(since % 16);
                }
                self.text(conn_of(conn), &packet.to_string());
            }
            Op::Leave { conn, user, room } => {
                let packet = packet_json("leave", user, room, None);
                self.text(conn_of(conn), &packet.to_string());
            }
            Op::Say {
                conn,
                user,
                room,
                long,
            } => {
                let msg = if long {
                    "x".repeat(MAX_MSG_CHARS + 1)
                } else {
                    "héllo".to_owned()
                };
                let packet = packet_json("msg", user, room, Some(&msg));
                self.text(conn_of(conn), &packet.to_string());
            }
            Op::Text { conn, text } => self.text(conn_of(conn), &text),
            Op::Binary { conn } => {
                let conn = conn_of(conn);
                if self.model.sessions.contains_key(&conn) {
                    self.api.ws_binary(conn, now);
                    self.model.send(&[conn], "error", "invalid message", "", "");
                }
            }
            Op::Admit { user, room } => self.room(user, room, "1"),
            Op::Release { user, room } => self.room(user, room, "0"),
            Op::BadStatus { user, room, status } => {
                if !status.is_empty()
                    && status != "0"
                    && status != "1"
                    && status.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    self.room(user, room, &status);
                }
            }
            Op::List => {
                let response = reply(self.http("/chatroom/list".to_owned()));
                let json = json_of(&response);
                let expected: Vec<(String, usize)> = self
                    .model
                    .rooms
                    .iter()
                    .map(|(name, _)| (name.clone(), self.model.population(name)))
                    .collect();
                for (key, name_key) in [("rooms", "name"), ("room_list", "room_name")] {
                    let listed: Vec<(String, usize)> = json[key]
                        .as_array()
                        .expect("a list")
                        .iter()
                        .map(|entry| {
                            (
                                entry[name_key].as_str().expect("a name").to_owned(),
                                entry["population"].as_u64().expect("a number") as usize,
                            )
                        })
                        .collect();
                    assert_eq!(listed, expected, "/chatroom/list {key}");
                }
            }
            Op::Create {
                room,
                capacity,
                durable,
            } => {
                let name = match room_of(room) {
                    "four" => "four",
                    "five" => "five",
                    _ if room % 2 == 0 => "four",
                    _ => "five",
                };
                let mut target = format!("/chatroom/create?room_name={name}");
                if let Some(capacity) = capacity {
                    target.push_str(&format!("&capacity={capacity}"));
                }
                let outcome = self.http(target);
                let valid = capacity.is_none_or(|c| (1..=10_000).contains(&c));
                let exists = self.model.capacity(name).is_some();
                let expected = if !valid {
                    "invalid parameters"
                } else if exists {
                    "chatroom already exist"
                } else if self.model.rooms.len() >= MAX_ROOMS {
                    "too many rooms"
                } else {
                    assert!(
                        matches!(outcome, Outcome::Pending),
                        "create waits for the disk"
                    );
                    let response = self.complete_batch(durable);
                    if durable {
                        assert_eq!(res_of(&response), "chatroom create successfully");
                        let capacity = capacity.map_or(DEFAULT_CAPACITY, u32::from);
                        self.model.rooms.push((name.to_owned(), capacity));
                    } else {
                        assert_eq!(response.status, 503);
                    }
                    return;
                };
                assert_eq!(res_of(&reply(outcome)), expected);
            }
            Op::Register { user, durable } => {
                let name = user_of(user);
                let index = USERS.iter().position(|u| *u == name).unwrap_or(0);
                let target = format!(
                    "/auth/register?user_tel=1380000{index:04}&user_name={name}&user_password=secret{index}"
                );
                let outcome = self.http(target);
                if self.model.users.iter().any(|u| u == name) {
                    assert_eq!(res_of(&reply(outcome)), "user exist");
                    return;
                }
                assert!(
                    matches!(outcome, Outcome::Pending),
                    "register waits for the hash"
                );
                let hashed = PasswordOutcome::Hashed(Ok(format!("$argon2id$fake${name}")));
                assert!(
                    self.finish_password_job(hashed).is_none(),
                    "then for the disk"
                );
                let response = self.complete_batch(durable);
                if durable {
                    assert_eq!(res_of(&response), "register successfully");
                    self.model.users.push(name.to_owned());
                } else {
                    assert_eq!(response.status, 503);
                }
            }
            Op::Login { user } => {
                let name = user_of(user);
                if !self.model.users.iter().any(|u| u == name) {
                    // Unknown numbers count against the client address;
                    // the limit is the login tests' business.
                    return;
                }
                let index = USERS.iter().position(|u| *u == name).unwrap_or(0);
                let outcome = self.http(format!(
                    "/auth/login?user_tel=1380000{index:04}&user_password=secret{index}"
                ));
                assert!(
                    matches!(outcome, Outcome::Pending),
                    "login waits for the check"
                );
                let response = self
                    .finish_password_job(PasswordOutcome::Verified(true))
                    .expect("a login answer");
                let json = json_of(&response);
                assert_eq!(json["res"], "login successfully");
                assert_eq!(json["data"]["user_name"], name);
                let token = json["data"]["token"].as_str().expect("a token").to_owned();
                self.model.issue(name, token);
            }
            Op::StallLog => self.log_stalled = true,
            Op::WriteLog => self.log_stalled = false,
            Op::Wait { by, tick } => {
                let deadline = self.model.next_deadline();
                let until = |deadline: Instant| deadline.saturating_duration_since(self.model.now);
                let by = match (by, deadline) {
                    (Wait::Seconds(seconds), _) => Duration::from_secs(u64::from(seconds)),
                    (Wait::ToDeadline, Some(deadline)) => until(deadline),
                    (Wait::JustBeforeDeadline, Some(deadline)) => {
                        until(deadline).saturating_sub(Duration::from_millis(1))
                    }
                    (_, None) => Duration::from_millis(1),
                };
                self.model.now += by;
                self.unix_ms += by.as_millis() as u64;
                if tick {
                    let now = self.now();
                    self.api.tick(now);
                    self.model.tick();
                }
            }
        }
    }

    fn text(&mut self, conn: ConnRef, text: &str) {
        let now = self.now();
        self.api.ws_text(conn, text, now);
        self.model.text(conn, text);
    }

    fn room(&mut self, user: u8, room: u8, status: &str) {
        let (user, room) = (user_of(user), room_of(room));
        let response = reply(self.http(format!(
            "/chatroom/room?room_name={room}&user_name={user}&status={status}"
        )));
        assert_eq!(response.status, 200);
        assert_eq!(res_of(&response), self.model.room(user, room, status));
    }

    /// The reactor's part with the message log: hand over what was
    /// accepted, and unless stalled, report all of it written.
    fn run_log(&mut self) {
        while let Some((id, records)) = self.api.poll_message_append() {
            assert!(!records.is_empty());
            self.log_queue.push_back(id);
        }
        if !self.log_stalled {
            if let Some(newest) = self.log_queue.back().copied() {
                self.api.handle_messages_written(newest);
                self.log_queue.clear();
            }
        }
    }

    fn check(&mut self) {
        self.run_log();
        self.api.swap_outbox(&mut self.outbox);
        let frames: Vec<Delivery> = self
            .outbox
            .drain(..)
            .map(|(to, frame)| delivery(to, &frame))
            .collect();
        self.delivered.extend(frames);
        if self.log_queue.is_empty() {
            // Exactly the frames the model expects, to exactly its
            // recipients, once every message is written.
            let mut delivered = std::mem::take(&mut self.delivered);
            let mut expected = std::mem::take(&mut self.model.expected);
            delivered.sort();
            expected.sort();
            assert_eq!(delivered, expected, "frames delivered");
        } else {
            assert!(
                self.delivered.len() <= self.model.expected.len(),
                "more frames than the model expects while the log is stalled"
            );
        }

        let state = self.api.state();
        let mut seats = 0;
        let mut members_seen = BTreeSet::new();
        for room in state.rooms() {
            let room_id = state.room_id(&room.name).expect("a listed room has an id");
            // population = seats ≤ capacity.
            assert!(room.population() <= room.capacity as usize, "over capacity");
            assert_eq!(room.population(), self.model.population(&room.name));
            seats += room.population();
            // Seats held: exactly the model's, so expiry freed the right ones.
            for name in USERS {
                let held = state
                    .user_id_by_name(name)
                    .is_some_and(|user| state.holds_seat(room_id, user));
                let modelled = self
                    .model
                    .seats
                    .contains_key(&(room.name.clone(), name.to_owned()));
                assert_eq!(held, modelled, "{name}'s seat in {}", room.name);
            }
            // Rooms' members agree with the connections' rooms.
            for (conn, user) in room.members() {
                assert!(members_seen.insert((*conn, room_id)), "a member twice");
                let (bound, rooms) = self
                    .api
                    .ws_session(*conn)
                    .expect("a member is an open connection");
                assert_eq!(bound, Some(*user), "a member under another user");
                assert!(
                    rooms.contains(&room_id),
                    "a member whose session lacks the room"
                );
                assert!(state.holds_seat(room_id, *user), "a member without a seat");
            }
        }
        assert_eq!(seats, state.seats_held());
        assert_eq!(self.api.ws_sessions(), self.model.sessions.len());
        for (conn, session) in &self.model.sessions {
            let (bound, rooms) = self.api.ws_session(*conn).expect("an open session");
            let bound_name = bound.and_then(|u| state.user(u)).map(|u| u.name.clone());
            assert_eq!(bound_name, session.user, "connection {conn} bound");
            let names: Vec<&str> = rooms
                .iter()
                .filter_map(|id| state.room(*id))
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(names, session.rooms, "connection {conn}'s rooms");
            for id in rooms {
                assert!(
                    members_seen.contains(&(*conn, *id)),
                    "a session's room that does not list it"
                );
            }
        }
        assert_eq!(
            self.api.next_deadline(),
            self.model.next_deadline(),
            "next expiry"
        );
    }
}

fn user_record(name: &str) -> UserRecord {
    let index = USERS.iter().position(|u| *u == name).unwrap_or(0);
    UserRecord {
        tel: format!("1380000{index:04}"),
        name: name.to_owned(),
        password_hash: String::new(),
        avatar_url: String::new(),
        created_ms: 0,
    }
}

fn conn_of(conn: u8) -> ConnRef {
    ConnRef::from(conn % CONNECTIONS)
}

fn user_of(user: u8) -> &'static str {
    USERS[usize::from(user) % USERS.len()]
}

fn room_of(room: u8) -> &'static str {
    ROOM_NAMES[usize::from(room) % ROOM_NAMES.len()]
}

fn pick<T>(items: &[T], index: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[usize::from(index) % items.len()])
}

fn packet_json(kind: &str, user: u8, room: u8, msg: Option<&str>) -> Value {
    let mut data = serde_json::json!({
        "user": {"user_name": user_of(user), "user_avatar": ""},
        "room_name": room_of(room),
    });
    if let Some(msg) = msg {
        data["msg"] = Value::from(msg);
    }
    serde_json::json!({"type": kind, "data": data})
}

/// One line of a hand-written script: `open C [T]`, `close C`,
/// `join C U R [T]`, `leave C U R`, `say C U R [long]`, `text C ...`,
/// `binary C`, `admit U R`, `release U R`, `status U R S`, `list`,
/// `create R [CAP] [fail]`, `register U [fail]`, `login U`, `stall`,
/// `write`, `wait SECONDS|deadline|before [tick]`; a join may end with
/// `since=N`. C is a connection number, T a
/// token index, U a user and R a room by name (or index); unknown lines are
/// skipped.
fn script_op(line: &str) -> Option<Op> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u8>().ok());
    let user = |i: usize| {
        let word = words.get(i)?;
        USERS
            .iter()
            .position(|u| u == word)
            .and_then(|p| u8::try_from(p).ok())
            .or_else(|| word.parse().ok())
    };
    let room = |i: usize| {
        let word = words.get(i)?;
        ROOM_NAMES
            .iter()
            .position(|r| r == word)
            .and_then(|p| u8::try_from(p).ok())
            .or_else(|| word.parse().ok())
    };
    let flag = |word: &str| words.contains(&word);
    Some(match *words.first()? {
        "open" => Op::Open {
            conn: num(1)?,
            url_token: num(2),
        },
        "close" => Op::Close { conn: num(1)? },
        "join" => Op::Join {
            conn: num(1)?,
            user: user(2)?,
            room: room(3)?,
            token: num(4),
            since: words
                .iter()
                .find_map(|w| w.strip_prefix("since=")?.parse().ok()),
        },
        "leave" => Op::Leave {
            conn: num(1)?,
            user: user(2)?,
            room: room(3)?,
        },
        "say" => Op::Say {
            conn: num(1)?,
            user: user(2)?,
            room: room(3)?,
            long: flag("long"),
        },
        "text" => Op::Text {
            conn: num(1)?,
            text: line
                .trim_start()
                .splitn(3, ' ')
                .nth(2)
                .unwrap_or("")
                .to_owned(),
        },
        "binary" => Op::Binary { conn: num(1)? },
        "admit" => Op::Admit {
            user: user(1)?,
            room: room(2)?,
        },
        "release" => Op::Release {
            user: user(1)?,
            room: room(2)?,
        },
        "status" => Op::BadStatus {
            user: user(1)?,
            room: room(2)?,
            status: words.get(3)?.to_string(),
        },
        "list" => Op::List,
        "create" => Op::Create {
            room: room(1)?,
            capacity: words.get(2).and_then(|w| w.parse().ok()),
            durable: !flag("fail"),
        },
        "register" => Op::Register {
            user: user(1)?,
            durable: !flag("fail"),
        },
        "login" => Op::Login { user: user(1)? },
        "stall" => Op::StallLog,
        "write" => Op::WriteLog,
        "wait" => Op::Wait {
            by: match *words.get(1)? {
                "deadline" => Wait::ToDeadline,
                "before" => Wait::JustBeforeDeadline,
                seconds => Wait::Seconds(seconds.parse().ok()?),
            },
            tick: flag("tick"),
        },
        _ => return None,
    })
}

// Layout: a mode byte. Even: the rest is a script, one op per line (a
// hand-written seed is `\0` and the script). Odd: ops read with
// `arbitrary`.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let ops: Vec<Op> = if mode % 2 == 0 {
        String::from_utf8_lossy(rest)
            .lines()
            .filter_map(script_op)
            .collect()
    } else {
        match Vec::<Op>::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(ops) => ops,
            Err(_) => return,
        }
    };
    let mut harness = Harness::new();
    for op in ops {
        harness.step(op);
        harness.check();
    }
});

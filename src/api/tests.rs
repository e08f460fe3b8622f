//! Unit tests of the API state machine: requests and completions in, replies and frames out.

use super::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::auth::{hash_password, verify_password, HashCost};
use crate::http::request::Header;
use crate::store::{MessageRecord, Replayed, RoomLog};

const CHEAP: HashCost = HashCost {
    memory_kib: 8,
    iterations: 1,
};
const TTL: Duration = Duration::from_secs(60);
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const EPOCH_MS: u64 = 1_700_000_000_000;
/// The connection id HTTP requests come in on (WebSocket tests use small ids).
const HTTP: ConnRef = 10_000;
const PASSWORD: &str = "secret-1";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn chat_config() -> ChatConfig {
    ChatConfig {
        require_token: false,
        max_msg_chars: 2000,
        ws_rate: 0,
        ws_burst: 40,
        history_size: 1000,
        // Most tests count the frames of a join: history on join is off
        // unless a test turns it on.
        history_on_join: 0,
    }
}

fn config() -> ApiConfig {
    ApiConfig {
        room_capacity: 100,
        max_rooms: 100,
        max_pending_hashes: 8,
        chat: chat_config(),
    }
}

fn user_record(tel: &str, name: &str, avatar: &str) -> UserRecord {
    UserRecord {
        tel: tel.to_string(),
        name: name.to_string(),
        // Not a real hash: these users only chat, they never log in.
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$not-a-real-hash".to_string(),
        avatar_url: avatar.to_string(),
        created_ms: 0,
    }
}

fn room_record(name: &str, capacity: u32) -> RoomRecord {
    RoomRecord {
        name: name.to_string(),
        capacity,
        created_ms: 0,
    }
}

struct Harness {
    api: Api,
    start: Instant,
    now: Now,
    /// Every message record the API handed to the log, in order.
    log: Vec<MessageRecord>,
}

impl Harness {
    fn new(config: ApiConfig) -> Harness {
        Harness::with_state(ChatState::new(TTL), config)
    }

    /// Users (tel, name, avatar) and rooms (name, capacity) as if replayed.
    fn seeded(users: &[(&str, &str, &str)], rooms: &[(&str, u32)], config: ApiConfig) -> Harness {
        let replayed = Replayed {
            users: users
                .iter()
                .map(|(tel, name, avatar)| user_record(tel, name, avatar))
                .collect(),
            rooms: rooms
                .iter()
                .map(|(name, capacity)| room_record(name, *capacity))
                .collect(),
        };
        Harness::with_state(ChatState::from_replay(replayed, TTL), config)
    }

    fn with_state(state: ChatState, config: ApiConfig) -> Harness {
        let start = Instant::now();
        Harness {
            api: Api::new(state, config),
            log: Vec::new(),
            start,
            now: Now {
                mono: start,
                unix_ms: EPOCH_MS,
            },
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.unix_ms += by.as_millis() as u64;
    }

    fn at(&self, since_start: Duration) -> Now {
        Now {
            mono: self.start + since_start,
            unix_ms: EPOCH_MS + since_start.as_millis() as u64,
        }
    }

    fn handle(&mut self, conn: ConnRef, request: &Request) -> Outcome {
        self.api.handle(conn, request, PEER, self.now)
    }

    /// A request that must be answered at once.
    fn reply(&mut self, request: &Request) -> Response {
        match self.handle(HTTP, request) {
            Outcome::Reply(response) => response,
            Outcome::Pending => panic!("{} {}: pending", request.method, request.target),
        }
    }

    /// Runs the queued password jobs for real and feeds the results back.
    fn run_password_jobs(&mut self) -> Vec<(ConnRef, Response)> {
        let jobs = self.api.take_password_jobs();
        let mut replies = Vec::new();
        for (id, job) in jobs {
            let outcome = match job {
                PasswordJob::Hash { password } => {
                    PasswordOutcome::Hashed(hash_password(&password, CHEAP))
                }
                PasswordJob::Verify { password, phc } => {
                    PasswordOutcome::Verified(verify_password(&password, &phc))
                }
            };
            replies.extend(self.api.on_password_done(id, outcome, self.now));
        }
        replies
    }

    /// Submits the queued records as one batch and reports `result` for it.
    fn flush(&mut self, result: Result<(), String>) -> Vec<(ConnRef, Response)> {
        let Some((batch, _records)) = self.api.take_persist_batch() else {
            return Vec::new();
        };
        self.api.on_batch_done(Completion {
            batch,
            result,
            sync_micros: 0,
            first_in_group: true,
        })
    }

    /// Drives a request through hashing and storage (which succeeds).
    fn complete(&mut self, conn: ConnRef, request: &Request) -> Response {
        self.complete_from(conn, request, PEER)
    }

    fn complete_from(&mut self, conn: ConnRef, request: &Request, peer: IpAddr) -> Response {
        if let Outcome::Reply(response) = self.api.handle(conn, request, peer, self.now) {
            return response;
        }
        let mut replies = self.run_password_jobs();
        replies.extend(self.flush(Ok(())));
        assert_eq!(replies.len(), 1, "one reply per request: {replies:?}");
        let (to, response) = replies.pop().unwrap();
        assert_eq!(to, conn);
        response
    }

    fn register(&mut self, tel: &str, name: &str, avatar: &str) -> Response {
        let request = form(
            "/auth/register",
            &[
                ("user_tel", tel),
                ("user_name", name),
                ("user_password", PASSWORD),
                ("user_avatar_url", avatar),
            ],
        );
        self.complete(HTTP, &request)
    }

    fn login(&mut self, tel: &str, password: &str) -> Response {
        let request = form(
            "/auth/login",
            &[("user_tel", tel), ("user_password", password)],
        );
        self.complete(HTTP, &request)
    }

    fn login_from(&mut self, tel: &str, password: &str, peer: IpAddr) -> Response {
        let request = form(
            "/auth/login",
            &[("user_tel", tel), ("user_password", password)],
        );
        self.complete_from(HTTP, &request, peer)
    }

    /// Logs in and returns the token.
    fn token(&mut self, tel: &str) -> String {
        let response = self.login(tel, PASSWORD);
        let body = body(&response);
        assert_eq!(body["res"], "login successfully", "{body}");
        body["data"]["token"].as_str().unwrap().to_string()
    }

    fn create(&mut self, name: &str) -> Response {
        let request = form("/chatroom/create", &[("room_name", name)]);
        self.complete(HTTP, &request)
    }

    fn room(&mut self, room: &str, user: &str, status: &str) -> String {
        let request = form(
            "/chatroom/room",
            &[("room_name", room), ("user_name", user), ("status", status)],
        );
        res(&self.reply(&request))
    }

    fn list(&mut self) -> Value {
        let response = self.reply(&get("/chatroom/list"));
        assert_eq!(response.status, 200);
        body(&response)
    }

    fn population(&self, room: &str) -> usize {
        let id = self.api.state().room_id(room).expect("room exists");
        self.api.state().room(id).unwrap().population()
    }

    fn members(&self, room: &str) -> BTreeSet<ConnRef> {
        let id = self.api.state().room_id(room).expect("room exists");
        self.api
            .state()
            .room(id)
            .unwrap()
            .members()
            .iter()
            .map(|(conn, _)| *conn)
            .collect()
    }

    fn open(&mut self, conn: ConnRef) {
        self.api.ws_open(conn, None, self.now);
    }

    /// What the connections receive once the log has written every
    /// accepted message (the message log's part, played at once).
    fn frames(&mut self) -> Vec<(ConnRef, Value)> {
        while let Some((id, records)) = self.api.poll_message_append() {
            self.log.extend(records);
            self.api.handle_messages_written(id);
        }
        self.frames_now()
    }

    /// What the connections receive now, with any message still unwritten.
    fn frames_now(&mut self) -> Vec<(ConnRef, Value)> {
        let mut out = Vec::new();
        self.api.swap_outbox(&mut out);
        out.iter()
            .map(|(conn, frame)| (*conn, decode_frame(frame)))
            .collect()
    }

    fn send_text(&mut self, conn: ConnRef, text: &str) -> Vec<(ConnRef, Value)> {
        self.api.ws_text(conn, text, self.now);
        self.frames()
    }

    fn send(&mut self, conn: ConnRef, packet: &Value) -> Vec<(ConnRef, Value)> {
        self.send_text(conn, &packet.to_string())
    }

    fn close(&mut self, conn: ConnRef) -> Vec<(ConnRef, Value)> {
        self.api.ws_closed(conn, self.now);
        self.frames()
    }

    fn tick(&mut self, at: Now) {
        self.api.tick(at);
    }
}

// ---------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------

fn request(method: &str, target: &str, content_type: Option<&str>, body: &[u8]) -> Request {
    let mut headers = vec![Header {
        name: "host".to_string(),
        value: b"localhost".to_vec(),
    }];
    if let Some(content_type) = content_type {
        headers.push(Header {
            name: "content-type".to_string(),
            value: content_type.as_bytes().to_vec(),
        });
    }
    if !body.is_empty() {
        headers.push(Header {
            name: "content-length".to_string(),
            value: body.len().to_string().into_bytes(),
        });
    }
    Request {
        method: method.to_string(),
        target: target.to_string(),
        minor_version: 1,
        headers,
        body: body.to_vec(),
    }
}

fn get(target: &str) -> Request {
    request("GET", target, None, b"")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form(target: &str, pairs: &[(&str, &str)]) -> Request {
    request(
        "POST",
        target,
        Some("application/x-www-form-urlencoded"),
        form_body(pairs).as_bytes(),
    )
}

fn json_post(target: &str, value: &Value) -> Request {
    request(
        "POST",
        target,
        Some("application/json"),
        value.to_string().as_bytes(),
    )
}

fn body(response: &Response) -> Value {
    assert_eq!(response.content_type, crate::http::response::JSON);
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", response.body))
}

fn res(response: &Response) -> String {
    body(response)["res"]
        .as_str()
        .unwrap_or_else(|| panic!("no res in {:?}", String::from_utf8_lossy(&response.body)))
        .to_string()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Checks a 400 for bad parameters and that its error names `field`.
fn assert_invalid(response: &Response, field: &str) {
    assert_eq!(response.status, 400, "{:?}", body(response));
    let body = body(response);
    assert_eq!(body["res"], "invalid parameters");
    let error = body["error"].as_str().expect("an error string");
    assert!(error.contains(field), "error {error:?} should name {field}");
}

// ---------------------------------------------------------------------------
// WebSocket frames and packets
// ---------------------------------------------------------------------------

/// A complete unmasked server text frame, its header stripped, as JSON.
fn decode_frame(frame: &[u8]) -> Value {
    assert_eq!(frame[0], 0x81, "FIN + text opcode");
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    let (len, offset) = match frame[1] & 0x7f {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&frame[2..10]);
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (n as usize, 2),
    };
    assert_eq!(frame.len() - offset, len, "payload length matches header");
    let value: Value = serde_json::from_slice(&frame[offset..]).expect("frame holds JSON");
    let data = &value["data"];
    assert!(data["user"]["user_name"].is_string(), "full shape: {value}");
    assert!(
        data["user"]["user_avatar"].is_string(),
        "full shape: {value}"
    );
    assert!(data["room_name"].is_string(), "full shape: {value}");
    assert!(data["msg"].is_string(), "full shape: {value}");
    value
}

fn packet(kind: &str, user: &str, room: &str, msg: &str) -> Value {
    json!({
        "type": kind,
        "data": {"user": {"user_name": user, "user_avatar": ""}, "room_name": room, "msg": msg}
    })
}

fn join(user: &str, room: &str) -> Value {
    packet("join", user, room, "")
}

fn leave(user: &str, room: &str) -> Value {
    packet("leave", user, room, "")
}

fn say(user: &str, room: &str, text: &str) -> Value {
    packet("msg", user, room, text)
}

fn with_token(mut packet: Value, token: &str) -> Value {
    packet["data"]["token"] = json!(token);
    packet
}

fn with_avatar(mut packet: Value, avatar: &str) -> Value {
    packet["data"]["user"]["user_avatar"] = json!(avatar);
    packet
}

/// Exactly one error packet, to `conn`, holding `error`; returns it.
fn assert_error(frames: &[(ConnRef, Value)], conn: ConnRef, error: &str) -> Value {
    assert_eq!(frames.len(), 1, "one error frame expected: {frames:?}");
    let (to, value) = &frames[0];
    assert_eq!(*to, conn, "errors go to the sender only");
    assert_eq!(value["type"], "error", "{value}");
    assert_eq!(value["data"]["msg"], error, "{value}");
    value.clone()
}

fn recipients(frames: &[(ConnRef, Value)]) -> Vec<ConnRef> {
    let mut conns: Vec<ConnRef> = frames.iter().map(|(conn, _)| *conn).collect();
    conns.sort_unstable();
    conns
}

/// Every frame is a `user` packet with `msg`, for `user` in `room`.
fn assert_user_packets(frames: &[(ConnRef, Value)], msg: &str, user: &str, room: &str) {
    assert!(!frames.is_empty());
    for (_, value) in frames {
        assert_eq!(value["type"], "user", "{value}");
        assert_eq!(value["data"]["msg"], msg, "{value}");
        assert_eq!(value["data"]["user"]["user_name"], user, "{value}");
        assert_eq!(value["data"]["room_name"], room, "{value}");
    }
}

// ---------------------------------------------------------------------------
// HTTP: routing, parameters
// ---------------------------------------------------------------------------

#[test]
fn unknown_paths_are_404_and_unknown_methods_405_with_allow() {
    let mut h = Harness::new(config());
    let response = h.reply(&get("/nowhere"));
    assert_eq!(response.status, 404);
    assert_eq!(res(&response), "not found");

    for method in ["DELETE", "PUT", "PATCH"] {
        let response = h.reply(&request(method, "/auth/login", None, b""));
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(res(&response), "method not allowed");
        let allow = header(&response, "Allow").expect("405 carries Allow");
        for allowed in ["GET", "POST"] {
            assert!(allow.contains(allowed), "Allow: {allow}");
        }
    }

    let response = h.reply(&request("OPTIONS", "/chatroom/create", None, b""));
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    let methods = header(&response, "Access-Control-Allow-Methods").expect("preflight methods");
    assert!(methods.contains("POST"), "{methods}");
    assert!(header(&response, "Access-Control-Allow-Headers").is_some());

    let response = h.reply(&get("/healthz"));
    assert_eq!(response.status, 200);
    assert_eq!(body(&response), json!({"status": "ok"}));

    // GET, HEAD and POST all reach the endpoint.
    for method in ["GET", "HEAD", "POST"] {
        let response = h.reply(&request(method, "/chatroom/list", None, b""));
        assert_eq!(response.status, 200, "{method}");
    }
    assert!(!h.api.has_pending_work());
}

#[test]
fn bad_parameters_are_400_naming_the_field() {
    let mut h = Harness::new(config());
    let register = |pairs: &[(&str, &str)]| form("/auth/register", pairs);
    let good = [
        ("user_tel", "13800000000"),
        ("user_name", "ann"),
        ("user_password", PASSWORD),
    ];
    let with = |field: &str, value: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    if *n == field { value } else { v }.to_string(),
                )
            })
            .collect()
    };
    let as_refs = |pairs: &[(String, String)]| -> Request {
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        register(&refs)
    };

    for (field, bad) in [
        ("user_tel", ""),
        ("user_tel", "12"),
        ("user_tel", "12a456"),
        ("user_tel", "123456789012345678901"),
        ("user_name", ""),
        ("user_name", "   "),
        ("user_name", &"n".repeat(33)),
        ("user_name", "a\u{7}b"),
        ("user_password", "12345"),
        ("user_password", &"p".repeat(129)),
    ] {
        let response = h.reply(&as_refs(&with(field, bad)));
        assert_invalid(&response, field);
    }
    // A missing field, not just an empty one.
    let response = h.reply(&register(&[("user_tel", "123"), ("user_name", "ann")]));
    assert_invalid(&response, "user_password");

    let mut pairs = with("user_tel", "13800000000");
    pairs.push(("user_avatar_url".into(), "ftp://example.com/a.png".into()));
    assert_invalid(&h.reply(&as_refs(&pairs)), "user_avatar_url");

    assert_invalid(
        &h.reply(&form("/auth/login", &[("user_tel", "123")])),
        "user_password",
    );
    assert_invalid(
        &h.reply(&form("/auth/login", &[("user_password", PASSWORD)])),
        "user_tel",
    );
    assert_invalid(
        &h.reply(&form("/chatroom/create", &[("room_name", "")])),
        "room_name",
    );
    assert_invalid(
        &h.reply(&form("/chatroom/create", &[("room_name", &"r".repeat(65))])),
        "room_name",
    );
    for capacity in ["0", "10001", "-1", "ten"] {
        let response = h.reply(&form(
            "/chatroom/create",
            &[("room_name", "hall"), ("capacity", capacity)],
        ));
        assert_invalid(&response, "capacity");
    }
    assert_invalid(
        &h.reply(&form(
            "/chatroom/room",
            &[("room_name", "hall"), ("user_name", "ann")],
        )),
        "status",
    );
    assert_invalid(
        &h.reply(&form(
            "/chatroom/room",
            &[("room_name", "hall"), ("status", "1")],
        )),
        "user_name",
    );

    // JSON values must be strings or numbers; the text must be valid.
    let response = h.reply(&json_post(
        "/auth/login",
        &json!({"user_tel": ["123"], "user_password": PASSWORD}),
    ));
    assert_eq!(response.status, 400);
    assert_eq!(res(&response), "invalid parameters");
    let response = h.reply(&request(
        "POST",
        "/auth/login",
        Some("application/json"),
        b"{\"user_tel\": ",
    ));
    assert_eq!(response.status, 400);
    // Percent-decoding that is not UTF-8.
    let response = h.reply(&get("/auth/login?user_tel=%FF%FE&user_password=secret-1"));
    assert_eq!(response.status, 400);
    assert_eq!(res(&response), "invalid parameters");

    // Nothing was reserved or queued by any of these.
    assert!(!h.api.has_pending_work());
    assert!(h.api.take_password_jobs().is_empty());
    assert!(h.api.take_persist_batch().is_none());
}

#[test]
fn a_body_of_another_content_type_is_415() {
    let mut h = Harness::new(config());
    let response = h.reply(&request(
        "POST",
        "/auth/login",
        Some("text/plain"),
        b"user_tel=123&user_password=secret-1",
    ));
    assert_eq!(response.status, 415);
    let response = h.reply(&request(
        "POST",
        "/auth/login",
        None,
        b"user_tel=123&user_password=secret-1",
    ));
    assert_eq!(response.status, 415);
}

#[test]
fn parameters_come_from_query_and_body_with_the_body_winning() {
    let mut h = Harness::new(config());
    // The query's tel is invalid; the body overrides it.
    let request = request(
        "POST",
        "/auth/register?user_tel=bad&user_name=ann",
        Some("application/x-www-form-urlencoded"),
        form_body(&[("user_tel", "+123456"), ("user_password", PASSWORD)]).as_bytes(),
    );
    assert_eq!(res(&h.complete(HTTP, &request)), "register successfully");
    // A JSON number becomes its decimal text.
    let response = h.complete(
        HTTP,
        &json_post(
            "/auth/register",
            &json!({"user_tel": 13800000000_u64, "user_name": "bob", "user_password": PASSWORD}),
        ),
    );
    assert_eq!(res(&response), "register successfully");
    assert!(h.api.state().user_id_by_tel("13800000000").is_some());
    // Query only.
    let response = h.complete(
        HTTP,
        &get("/auth/login?user_tel=13800000000&user_password=secret-1"),
    );
    assert_eq!(res(&response), "login successfully");
}

// ---------------------------------------------------------------------------
// HTTP: register and login
// ---------------------------------------------------------------------------

#[test]
fn register_is_answered_only_once_the_record_is_durable() {
    let mut h = Harness::new(config());
    let request = form(
        "/auth/register",
        &[
            ("user_tel", "13800000000"),
            ("user_name", "ann"),
            ("user_password", PASSWORD),
            ("user_avatar_url", "https://example.com/ann.png"),
        ],
    );
    assert!(matches!(h.handle(7, &request), Outcome::Pending));
    assert!(h.api.has_pending_work());
    assert!(
        h.api.take_persist_batch().is_none(),
        "nothing to write before the hash"
    );

    let jobs = h.api.take_password_jobs();
    assert_eq!(jobs.len(), 1);
    let (job, PasswordJob::Hash { password }) = jobs[0].clone() else {
        panic!("a hash job: {jobs:?}");
    };
    assert_eq!(password, PASSWORD);
    let phc = hash_password(&password, CHEAP).unwrap();
    let reply = h
        .api
        .on_password_done(job, PasswordOutcome::Hashed(Ok(phc.clone())), h.now);
    assert!(reply.is_none(), "no reply before the write: {reply:?}");
    assert_eq!(h.api.state().user_count(), 0);

    let (batch, records) = h.api.take_persist_batch().expect("a batch");
    assert!(h.api.take_persist_batch().is_none(), "drained");
    let [Record::User(user)] = records.as_slice() else {
        panic!("one user record: {records:?}");
    };
    assert_eq!(user.tel, "13800000000");
    assert_eq!(user.name, "ann");
    assert_eq!(user.avatar_url, "https://example.com/ann.png");
    assert_eq!(user.password_hash, phc);
    assert!(user.password_hash.starts_with("$argon2id$"));
    assert!(verify_password(PASSWORD, &user.password_hash));
    assert_eq!(user.created_ms, EPOCH_MS);
    assert_eq!(h.api.state().user_count(), 0, "not before the fsync");
    assert!(
        h.login("13800000000", PASSWORD)
            .body
            .windows(14)
            .any(|w| w == b"user not exist"),
        "cannot log in before the record is durable"
    );

    let replies = h.api.on_batch_done(Completion {
        batch,
        result: Ok(()),
        sync_micros: 0,
        first_in_group: true,
    });
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, 7, "answered on the connection that asked");
    assert_eq!(replies[0].1.status, 200);
    assert_eq!(res(&replies[0].1), "register successfully");
    assert_eq!(h.api.state().user_count(), 1);
    assert!(!h.api.has_pending_work());
    // A completion for an unknown batch is ignored.
    assert!(h
        .api
        .on_batch_done(Completion {
            batch,
            result: Ok(()),
            sync_micros: 0,
            first_in_group: true,
        })
        .is_empty());
}

#[test]
fn a_tel_or_name_claimed_by_a_pending_registration_is_taken() {
    let mut h = Harness::new(config());
    let first = form(
        "/auth/register",
        &[
            ("user_tel", "111"),
            ("user_name", "ann"),
            ("user_password", PASSWORD),
        ],
    );
    let same_tel = form(
        "/auth/register",
        &[
            ("user_tel", "111"),
            ("user_name", "bob"),
            ("user_password", PASSWORD),
        ],
    );
    let same_name = form(
        "/auth/register",
        &[
            ("user_tel", "222"),
            ("user_name", "ann"),
            ("user_password", PASSWORD),
        ],
    );
    assert!(matches!(h.handle(1, &first), Outcome::Pending));
    // While hashing.
    assert_eq!(res(&h.reply(&same_tel)), "user exist");
    assert_eq!(res(&h.reply(&same_name)), "user exist");
    assert!(h.run_password_jobs().is_empty());
    // While writing.
    assert_eq!(res(&h.reply(&same_tel)), "user exist");
    assert_eq!(res(&h.reply(&same_name)), "user exist");
    let replies = h.flush(Ok(()));
    assert_eq!(res(&replies[0].1), "register successfully");
    // And once registered.
    assert_eq!(res(&h.reply(&same_tel)), "user exist");
    assert_eq!(res(&h.reply(&same_name)), "user exist");
    assert_eq!(h.api.state().user_count(), 1);
    assert!(
        h.api.take_password_jobs().is_empty(),
        "no job for a refusal"
    );
}

#[test]
fn a_failed_write_is_503_and_frees_the_tel_and_name() {
    let mut h = Harness::new(config());
    let request = form(
        "/auth/register",
        &[
            ("user_tel", "111"),
            ("user_name", "ann"),
            ("user_password", PASSWORD),
        ],
    );
    assert!(matches!(h.handle(3, &request), Outcome::Pending));
    assert!(h.run_password_jobs().is_empty());
    let replies = h.flush(Err("disk full".to_string()));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, 3);
    assert_eq!(replies[0].1.status, 503);
    assert_eq!(res(&replies[0].1), "storage unavailable");
    assert_eq!(h.api.state().user_count(), 0);
    assert!(!h.api.has_pending_work());
    assert_eq!(res(&h.login("111", PASSWORD)), "user not exist");
    // Both the tel and the name are free again.
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    assert_eq!(res(&h.login("111", PASSWORD)), "login successfully");
}

#[test]
fn login_with_a_password_of_any_length_is_an_outcome_not_a_400() {
    let mut h = Harness::new(config());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    for password in ["", "12345", &"x".repeat(129), &"x".repeat(4000)] {
        let response = h.login("111", password);
        assert_eq!(response.status, 200, "{password:?}");
        assert_eq!(
            body(&response),
            json!({"res": "password wrong", "data": null})
        );
        let response = h.login("999", password);
        assert_eq!(
            body(&response),
            json!({"res": "user not exist", "data": null})
        );
    }
    // The four wrong guesses count toward the per-user limit like others:
    // a fifth fails, and then the limit holds.
    assert_eq!(res(&h.login("111", "short")), "password wrong");
    assert_eq!(res(&h.login("111", "short")), "too many attempts");
    // A missing password is still a malformed request.
    let response = h.reply(&form("/auth/login", &[("user_tel", "111")]));
    assert_eq!(response.status, 400);
    assert_eq!(body(&response)["error"], "user_password: required");
}

#[test]
fn typed_spaces_and_dashes_in_phone_numbers_are_the_same_number() {
    let mut h = Harness::new(config());
    assert_eq!(
        res(&h.register("138 0013-8000", "ann", "")),
        "register successfully"
    );
    assert_eq!(
        res(&h.register("13800138000", "bob", "")),
        "user exist",
        "the stored number has no spaces or dashes"
    );
    assert_eq!(res(&h.login("13800138000", PASSWORD)), "login successfully");
    assert_eq!(
        res(&h.login("138-0013-8000", PASSWORD)),
        "login successfully"
    );
    assert_eq!(
        res(&h.login(" 138 00138000 ", PASSWORD)),
        "login successfully"
    );
    // Other characters are still refused.
    let response = h.login("138.0013.8000", PASSWORD);
    assert_eq!(response.status, 400);
    let response = h.login(" - ", PASSWORD);
    assert_eq!(response.status, 400);
}

#[test]
fn user_tel_is_a_number_only_when_a_32_bit_int_can_hold_it() {
    let mut h = Harness::new(config());
    for (tel, name) in [
        ("2147483647", "ann"),
        ("2147483648", "bob"),
        ("0123", "cat"),
    ] {
        assert_eq!(res(&h.register(tel, name, "")), "register successfully");
    }
    let tel_of =
        |h: &mut Harness, tel: &str| body(&h.login(tel, PASSWORD))["data"]["user_tel"].clone();
    assert_eq!(tel_of(&mut h, "2147483647"), json!(2147483647));
    assert_eq!(tel_of(&mut h, "2147483648"), Value::Null);
    assert_eq!(tel_of(&mut h, "0123"), Value::Null, "not canonical");
}

#[test]
fn user_data_answers_a_public_profile_in_both_shapes() {
    let mut h = Harness::new(config());
    assert_eq!(
        res(&h.register("12345", "ann", "https://example.com/a.png")),
        "register successfully"
    );
    assert_eq!(
        res(&h.register("13800138000", "bob", "")),
        "register successfully"
    );
    let ann = json!({
        "user_tel": 12345,
        "user_name": "ann",
        "user_avatar_url": "https://example.com/a.png",
    });
    let expected = json!({
        "res": "get user data successfully",
        "data": {
            "user_tel": 12345,
            "user_name": "ann",
            "user_avatar_url": "https://example.com/a.png",
            "user": ann,
        },
    });
    for target in [
        "/auth/user_data?user_name=ann",
        "/auth/user_data?user_tel=12345",
        "/auth/user_data?user_tel=123-45",
        "/auth/user_data?user_tel=12345&user_name=bob",
    ] {
        let response = h.reply(&get(target));
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(body(&response), expected, "{target}");
    }
    let response = h.reply(&form("/auth/user_data", &[("user_name", "bob")]));
    assert_eq!(body(&response)["data"]["user_tel"], Value::Null);
    assert_eq!(body(&response)["data"]["user"]["user_name"], "bob");
    let text = String::from_utf8(response.body.clone()).unwrap();
    assert!(
        !text.contains("argon2") && !text.contains("token"),
        "{text}"
    );

    for target in [
        "/auth/user_data?user_name=nobody",
        "/auth/user_data?user_tel=999",
    ] {
        let response = h.reply(&get(target));
        assert_eq!(
            body(&response),
            json!({"res": "user not exist", "data": null}),
            "{target}"
        );
    }
    for target in [
        "/auth/user_data",
        "/auth/user_data?user_name=&user_tel=",
        "/auth/user_data?user_tel=abc",
    ] {
        let response = h.reply(&get(target));
        assert_eq!(response.status, 400, "{target}");
        assert_eq!(res(&response), "invalid parameters", "{target}");
    }
}

#[test]
fn login_outcomes_and_tokens() {
    let mut h = Harness::new(config());
    assert_eq!(
        res(&h.register("+8613800000000", "ann", "https://example.com/a.png")),
        "register successfully"
    );

    let response = h.reply(&form(
        "/auth/login",
        &[("user_tel", "999"), ("user_password", PASSWORD)],
    ));
    assert_eq!(response.status, 200);
    assert_eq!(
        body(&response),
        json!({"res": "user not exist", "data": null})
    );

    let wrong = form(
        "/auth/login",
        &[
            ("user_tel", "+8613800000000"),
            ("user_password", "wrong-pw"),
        ],
    );
    assert!(matches!(h.handle(5, &wrong), Outcome::Pending));
    let replies = h.run_password_jobs();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, 5);
    assert_eq!(
        body(&replies[0].1),
        json!({"res": "password wrong", "data": null})
    );
    assert!(h.api.tokens().is_empty());

    let response = h.login("+8613800000000", PASSWORD);
    assert_eq!(response.status, 200);
    let value = body(&response);
    assert_eq!(value["res"], "login successfully");
    let data = value["data"].as_object().expect("data object");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["user_tel", "user_name", "user_avatar_url", "token"])
    );
    // Not a 32-bit integer: null, as the Android app's Int can take it.
    assert_eq!(data["user_tel"], Value::Null);
    assert_eq!(data["user_name"], "ann");
    assert_eq!(data["user_avatar_url"], "https://example.com/a.png");
    let token = data["token"].as_str().unwrap();
    assert!(token.len() >= 22, "128 bits: {token}");
    let text = String::from_utf8(response.body.clone()).unwrap();
    assert!(!text.contains(PASSWORD), "password echoed: {text}");
    assert!(!text.contains("argon2"), "hash leaked: {text}");
    assert!(!text.contains("password"), "password field: {text}");

    let ann = h.api.state().user_id_by_name("ann").unwrap();
    assert_eq!(h.api.tokens().user_of(token, h.now.mono), Some(ann));
    assert_eq!(h.api.tokens().user_of("forged-token", h.now.mono), None);
    let second = h.token("+8613800000000");
    assert_ne!(second, token, "every login gets a fresh token");
    assert_eq!(h.api.tokens().user_of(&second, h.now.mono), Some(ann));
}

#[test]
fn a_failed_hash_is_500_and_frees_the_claim() {
    let mut h = Harness::new(config());
    let request = form(
        "/auth/register",
        &[
            ("user_tel", "111"),
            ("user_name", "ann"),
            ("user_password", PASSWORD),
        ],
    );
    assert!(matches!(h.handle(6, &request), Outcome::Pending));
    let jobs = h.api.take_password_jobs();
    let reply = h.api.on_password_done(
        jobs[0].0,
        PasswordOutcome::Hashed(Err("no memory".into())),
        h.now,
    );
    let (conn, response) = reply.expect("answered at once");
    assert_eq!(conn, 6);
    assert_eq!(response.status, 500);
    assert!(h.api.take_persist_batch().is_none(), "nothing to write");
    assert!(!h.api.has_pending_work());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    // A late duplicate completion is ignored.
    assert!(h
        .api
        .on_password_done(jobs[0].0, PasswordOutcome::Verified(true), h.now)
        .is_none());
}

#[test]
fn tokens_expire_after_seven_days() {
    let mut h = Harness::seeded(&[], &[("hall", 10)], config());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    let token = h.token("111");
    let ann = h.api.state().user_id_by_name("ann").unwrap();
    let lifetime = crate::auth::TOKEN_LIFETIME;
    assert_eq!(
        h.api
            .tokens()
            .user_of(&token, h.now.mono + lifetime - Duration::from_secs(1)),
        Some(ann)
    );
    h.advance(lifetime);
    assert_eq!(h.api.tokens().user_of(&token, h.now.mono), None);
    h.open(1);
    assert_error(
        &h.send(1, &with_token(join("ann", "hall"), &token)),
        1,
        "unauthorized",
    );
    h.api.ws_open(2, Some(token.clone()), h.now);
    assert_error(&h.send(2, &join("ann", "hall")), 2, "unauthorized");
    h.tick(h.now);
    assert!(h.api.tokens().is_empty(), "purged by tick");
}

/// SPEC §2.3: "too many attempts" after 5 failed logins for one phone
/// number within 15 minutes.
#[test]
fn five_failed_logins_for_one_tel_lock_it_for_fifteen_minutes() {
    let mut h = Harness::new(config());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    assert_eq!(res(&h.register("222", "bob", "")), "register successfully");
    for attempt in 0..5 {
        h.advance(Duration::from_secs(10));
        assert_eq!(
            res(&h.login("111", "wrong-pw")),
            "password wrong",
            "attempt {attempt}"
        );
    }
    h.advance(Duration::from_secs(10));
    let response = h.login("111", PASSWORD);
    assert_eq!(
        body(&response),
        json!({"res": "too many attempts", "data": null}),
        "the sixth attempt within 15 minutes is refused, even with the right password"
    );
    // Another phone number is not affected.
    assert_eq!(res(&h.login("222", PASSWORD)), "login successfully");
    // Once the window has passed, the right password works again.
    h.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(res(&h.login("111", PASSWORD)), "login successfully");
}

/// SPEC §2.3: "too many attempts" after 30 failures from one client IP
/// within a minute.
#[test]
fn thirty_failed_logins_from_one_ip_lock_it_for_a_minute() {
    let mut h = Harness::new(config());
    let tels: Vec<String> = (0..8).map(|i| format!("30{i}")).collect();
    for (i, tel) in tels.iter().enumerate() {
        let name = format!("user{i}");
        assert_eq!(res(&h.register(tel, &name, "")), "register successfully");
    }
    let attacker = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    // 30 failures spread over 8 numbers: at most 4 per number, so only the
    // per-IP limit can apply.
    for attempt in 0..30 {
        let tel = &tels[attempt % tels.len()];
        assert_eq!(
            res(&h.login_from(tel, "wrong-pw", attacker)),
            "password wrong",
            "attempt {attempt}"
        );
    }
    let response = h.login_from(&tels[7], PASSWORD, attacker);
    assert_eq!(
        body(&response),
        json!({"res": "too many attempts", "data": null}),
        "the 31st attempt from that IP within a minute is refused"
    );
    assert_eq!(
        res(&h.login_from(&tels[7], PASSWORD, other)),
        "login successfully",
        "another client is not affected"
    );
    h.advance(Duration::from_secs(61));
    assert_eq!(
        res(&h.login_from(&tels[6], PASSWORD, attacker)),
        "login successfully"
    );
}

#[test]
fn too_many_pending_hashes_is_503_server_busy_and_releases_the_claim() {
    let mut h = Harness::new(ApiConfig {
        max_pending_hashes: 2,
        ..config()
    });
    let register = |tel: &str, name: &str| {
        form(
            "/auth/register",
            &[
                ("user_tel", tel),
                ("user_name", name),
                ("user_password", PASSWORD),
            ],
        )
    };
    assert!(matches!(
        h.handle(1, &register("111", "ann")),
        Outcome::Pending
    ));
    assert!(matches!(
        h.handle(2, &register("222", "bob")),
        Outcome::Pending
    ));
    let busy = h.reply(&register("333", "cat"));
    assert_eq!(busy.status, 503);
    assert_eq!(res(&busy), "server busy");
    assert!(header(&busy, "Retry-After").is_some());
    // An unknown tel needs no hash job, so it is answered even now.
    let response = h.reply(&form(
        "/auth/login",
        &[("user_tel", "999"), ("user_password", PASSWORD)],
    ));
    assert_eq!(res(&response), "user not exist");

    let jobs = h.api.take_password_jobs();
    assert_eq!(jobs.len(), 2, "no job for the refused request");
    // The refused registration gave its claim back: while the slots are
    // still taken the answer is busy again, not "user exist".
    assert_eq!(res(&h.reply(&register("333", "cat"))), "server busy");
    let mut replies = Vec::new();
    for (id, job) in jobs {
        let PasswordJob::Hash { password } = job else {
            panic!("hash job expected");
        };
        let phc = hash_password(&password, CHEAP);
        replies.extend(
            h.api
                .on_password_done(id, PasswordOutcome::Hashed(phc), h.now),
        );
    }
    assert!(replies.is_empty());
    replies.extend(h.flush(Ok(())));
    assert_eq!(replies.len(), 2);
    assert!(replies
        .iter()
        .all(|(_, r)| res(r) == "register successfully"));
    assert_eq!(
        res(&h.complete(HTTP, &register("333", "cat"))),
        "register successfully"
    );

    // Login is refused the same way when the hash slots are full.
    let login = form(
        "/auth/login",
        &[("user_tel", "111"), ("user_password", PASSWORD)],
    );
    assert!(matches!(h.handle(1, &login), Outcome::Pending));
    assert!(matches!(h.handle(2, &login), Outcome::Pending));
    let busy = h.reply(&login);
    assert_eq!(busy.status, 503);
    assert_eq!(res(&busy), "server busy");
    let replies = h.run_password_jobs();
    assert_eq!(replies.len(), 2);
    assert_eq!(res(&h.login("111", PASSWORD)), "login successfully");
}

// ---------------------------------------------------------------------------
// HTTP: rooms
// ---------------------------------------------------------------------------

#[test]
fn create_is_pending_until_durable_and_names_are_unique() {
    let mut h = Harness::new(ApiConfig {
        room_capacity: 7,
        ..config()
    });
    let create = |name: &str| form("/chatroom/create", &[("room_name", name)]);
    assert!(matches!(h.handle(4, &create("hall")), Outcome::Pending));
    assert!(
        h.api.take_password_jobs().is_empty(),
        "no hashing for rooms"
    );
    assert_eq!(h.list()["rooms"], json!([]), "not listed before durable");
    assert_eq!(res(&h.reply(&create("hall"))), "chatroom already exist");

    let (batch, records) = h.api.take_persist_batch().expect("a batch");
    assert_eq!(
        records,
        vec![Record::Room(RoomRecord {
            name: "hall".into(),
            capacity: 7,
            created_ms: EPOCH_MS
        })]
    );
    assert_eq!(res(&h.reply(&create("hall"))), "chatroom already exist");
    assert_eq!(h.room("hall", "ann", "1"), "invalid room", "not usable yet");
    let replies = h.api.on_batch_done(Completion {
        batch,
        result: Ok(()),
        sync_micros: 0,
        first_in_group: true,
    });
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, 4);
    assert_eq!(res(&replies[0].1), "chatroom create successfully");
    assert_eq!(res(&h.reply(&create("hall"))), "chatroom already exist");
    assert_eq!(
        h.list()["room_list"],
        json!([{"name": "hall", "room_name": "hall", "population": 0}])
    );

    // An explicit capacity.
    let response = h.complete(
        HTTP,
        &form(
            "/chatroom/create",
            &[("room_name", "den"), ("capacity", "2")],
        ),
    );
    assert_eq!(res(&response), "chatroom create successfully");
    let den = h.api.state().room_id("den").unwrap();
    assert_eq!(h.api.state().room(den).unwrap().capacity, 2);
    let hall = h.api.state().room_id("hall").unwrap();
    assert_eq!(h.api.state().room(hall).unwrap().capacity, 7);
}

#[test]
fn several_records_of_one_turn_share_one_batch() {
    let mut h = Harness::new(config());
    for (conn, name) in [(1, "a"), (2, "b"), (3, "c")] {
        let request = form("/chatroom/create", &[("room_name", name)]);
        assert!(matches!(h.handle(conn, &request), Outcome::Pending));
    }
    let (batch, records) = h.api.take_persist_batch().unwrap();
    assert_eq!(records.len(), 3);
    let replies = h.api.on_batch_done(Completion {
        batch,
        result: Ok(()),
        sync_micros: 0,
        first_in_group: true,
    });
    let mut conns: Vec<ConnRef> = replies.iter().map(|(c, _)| *c).collect();
    conns.sort_unstable();
    assert_eq!(conns, [1, 2, 3]);
    assert!(replies
        .iter()
        .all(|(_, r)| res(r) == "chatroom create successfully"));
}

#[test]
fn room_limit_counts_pending_creations_and_a_failed_write_frees_the_name() {
    let mut h = Harness::new(ApiConfig {
        max_rooms: 2,
        ..config()
    });
    let create = |name: &str| form("/chatroom/create", &[("room_name", name)]);
    assert_eq!(res(&h.create("a")), "chatroom create successfully");
    assert!(matches!(h.handle(1, &create("b")), Outcome::Pending));
    assert_eq!(res(&h.reply(&create("c"))), "too many rooms");
    assert_eq!(res(&h.reply(&create("b"))), "chatroom already exist");

    let replies = h.flush(Err("EIO".to_string()));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].1.status, 503);
    assert_eq!(res(&replies[0].1), "storage unavailable");
    assert_eq!(h.api.state().room_count(), 1);
    assert!(h.api.state().room_id("b").is_none());

    // The failed name is free and no longer counts against the limit.
    assert_eq!(res(&h.create("b")), "chatroom create successfully");
    assert_eq!(res(&h.reply(&create("c"))), "too many rooms");
    assert_eq!(res(&h.reply(&create("a"))), "chatroom already exist");
}

#[test]
fn list_serves_both_shapes_in_creation_order_with_population() {
    let mut h = Harness::seeded(&[("1", "ann", ""), ("2", "bob", "")], &[], config());
    for name in ["zeta", "alpha", "mid"] {
        assert_eq!(res(&h.create(name)), "chatroom create successfully");
    }
    assert_eq!(h.room("alpha", "ann", "1"), "join chatroom");
    assert_eq!(h.room("alpha", "bob", "1"), "join chatroom");
    assert_eq!(h.room("mid", "bob", "1"), "join chatroom");
    let list = h.list();
    let keys: BTreeSet<&str> = list
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["rooms", "room_list"]));
    assert_eq!(
        list["rooms"],
        json!([
            {"name": "zeta", "room_name": "zeta", "population": 0},
            {"name": "alpha", "room_name": "alpha", "population": 2},
            {"name": "mid", "room_name": "mid", "population": 1},
        ])
    );
    assert_eq!(
        list["room_list"],
        json!([
            {"name": "zeta", "room_name": "zeta", "population": 0},
            {"name": "alpha", "room_name": "alpha", "population": 2},
            {"name": "mid", "room_name": "mid", "population": 1},
        ])
    );
}

#[test]
fn room_endpoint_checks_in_order() {
    let mut h = Harness::seeded(
        &[("1", "ann", ""), ("2", "bob", "")],
        &[("solo", 1)],
        config(),
    );
    // invalid room before invalid status (and before the user).
    assert_eq!(h.room("nowhere", "ghost", "7"), "invalid room");
    assert_eq!(h.room("nowhere", "ann", "1"), "invalid room");
    assert_eq!(h.room("nowhere", "ann", "0"), "invalid room");
    // invalid status before the user.
    assert_eq!(h.room("solo", "ghost", "7"), "invalid status");
    assert_eq!(h.room("solo", "ann", "2"), "invalid status");
    assert_eq!(h.room("solo", "ann", "01x"), "invalid status");

    // status 1
    assert_eq!(h.room("solo", "ghost", "1"), "user not exist");
    assert_eq!(h.room("solo", "ann", "1"), "join chatroom");
    assert_eq!(h.population("solo"), 1);
    assert_eq!(h.room("solo", "ann", "1"), "join chatroom", "refresh");
    assert_eq!(h.population("solo"), 1, "a refresh is not a second seat");
    assert_eq!(h.room("solo", "bob", "1"), "full room");
    assert_eq!(
        h.room("solo", "ghost", "1"),
        "user not exist",
        "before full room"
    );
    assert_eq!(h.population("solo"), 1);

    // status 0
    assert_eq!(h.room("solo", "ghost", "0"), "user not exist");
    assert_eq!(
        h.room("solo", "bob", "0"),
        "user not exist",
        "bob holds no seat"
    );
    assert_eq!(h.room("solo", "ann", "0"), "leave chatroom");
    assert_eq!(h.population("solo"), 0);
    assert_eq!(h.room("solo", "ann", "0"), "user not exist", "seat is gone");
    assert_eq!(
        h.room("solo", "bob", "1"),
        "join chatroom",
        "the seat is free"
    );
    assert_eq!(h.api.state().seats_held(), 1);
}

#[test]
fn admitted_seats_expire_after_the_ttl_and_refresh_pushes_it() {
    let mut h = Harness::seeded(
        &[("1", "ann", ""), ("2", "bob", "")],
        &[("hall", 10)],
        config(),
    );
    assert_eq!(h.api.next_deadline(), None);
    assert_eq!(h.room("hall", "ann", "1"), "join chatroom");
    assert_eq!(h.api.next_deadline(), Some(h.start + TTL));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.room("hall", "bob", "1"), "join chatroom");
    assert_eq!(h.api.next_deadline(), Some(h.start + TTL));
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.room("hall", "ann", "1"),
        "join chatroom",
        "refresh at 40 s"
    );
    let deadline = h.api.next_deadline().unwrap();
    assert_eq!(
        deadline,
        h.start + Duration::from_secs(30) + TTL,
        "bob first now"
    );

    h.tick(h.at(TTL));
    assert_eq!(h.population("hall"), 2, "ann was refreshed");
    h.tick(h.at(Duration::from_secs(30) + TTL - Duration::from_millis(1)));
    assert_eq!(h.population("hall"), 2);
    h.tick(h.at(Duration::from_secs(30) + TTL));
    assert_eq!(h.population("hall"), 1, "bob's seat expired");
    assert_eq!(
        h.api.next_deadline(),
        Some(h.start + Duration::from_secs(40) + TTL)
    );
    h.tick(h.at(Duration::from_secs(40) + TTL));
    assert_eq!(h.population("hall"), 0);
    assert_eq!(h.api.state().seats_held(), 0);
    assert_eq!(h.api.next_deadline(), None);
    assert_eq!(h.list()["rooms"][0]["population"], 0);
}

// ---------------------------------------------------------------------------
// WebSocket: the error table
// ---------------------------------------------------------------------------

fn chat_harness() -> Harness {
    Harness::seeded(
        &[("1", "ann", ""), ("2", "bob", ""), ("3", "cat", "")],
        &[("hall", 10), ("solo", 1)],
        config(),
    )
}

#[test]
fn structural_errors_follow_the_table_and_go_to_the_sender_only() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    assert_eq!(h.send(2, &join("bob", "hall")).len(), 1);

    for text in [
        "not json",
        "[1,2]",
        "\"join\"",
        "{\"data\":{}}",
        "{\"type\":\"join\"}",
    ] {
        let frames = h.send_text(1, text);
        let error = assert_error(&frames, 1, "invalid message");
        assert_eq!(error["data"]["user"]["user_name"], "");
        assert_eq!(error["data"]["room_name"], "");
    }
    h.api.ws_binary(1, h.now);
    assert_error(&h.frames(), 1, "invalid message");

    let frames = h.send(
        1,
        &json!({"type": "shout", "data": {"user": {"user_name": "ann"}, "room_name": "hall"}}),
    );
    let error = assert_error(&frames, 1, "invalid type");
    assert_eq!(error["data"]["user"]["user_name"], "ann", "echoed");
    assert_eq!(error["data"]["room_name"], "hall", "echoed");

    for bad in [
        json!({"type": "join", "data": {"room_name": "hall"}}),
        json!({"type": "join", "data": {"user": "ann", "room_name": "hall"}}),
        json!({"type": "join", "data": {"user": {"user_name": 5}, "room_name": "hall"}}),
        json!({"type": "join", "data": {"user": {"user_name": "ann"}}}),
        json!({"type": "join", "data": {"user": {"user_name": "ann"}, "room_name": ["hall"]}}),
        json!({"type": "msg", "data": {"user": {"user_name": "ann"}, "room_name": "hall"}}),
    ] {
        assert_error(&h.send(1, &bad), 1, "invalid data");
    }
    // Avatar and msg may be absent for join.
    let frames = h.send(
        1,
        &json!({"type": "join", "data": {"user": {"user_name": "ann"}, "room_name": "hall"}}),
    );
    assert_user_packets(&frames, "join", "ann", "hall");
    assert_eq!(recipients(&frames), [1, 2]);

    // Empty names: illegal data, even though the room (or user) is unknown.
    let error = assert_error(&h.send(1, &join("", "nowhere")), 1, "illegal data");
    assert_eq!(error["data"]["room_name"], "nowhere");
    assert_error(&h.send(1, &join("ghost", "")), 1, "illegal data");
    h.open(3);
    assert_error(&h.send(3, &say("", "hall", "hi")), 3, "illegal data");
    // Empty msg.
    let error = assert_error(&h.send(1, &say("ann", "hall", "")), 1, "null message");
    assert_eq!(error["data"]["user"]["user_name"], "ann");
    assert_eq!(error["data"]["room_name"], "hall");
    // Null message beats unknown user and unknown room.
    assert_error(&h.send(1, &say("ghost", "nowhere", "")), 1, "null message");
}

#[test]
fn identity_errors_come_in_order() {
    let mut h = Harness::seeded(&[], &[("hall", 10)], config());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    assert_eq!(res(&h.register("222", "bob", "")), "register successfully");
    let ann_token = h.token("111");
    h.open(1);

    // A bad token: unauthorized, before user not exist and invalid room.
    let frames = h.send(1, &with_token(join("ghost", "nowhere"), "forged"));
    let error = assert_error(&frames, 1, "unauthorized");
    assert_eq!(error["data"]["user"]["user_name"], "ghost");
    assert_error(
        &h.send(1, &with_token(join("ann", "hall"), "forged")),
        1,
        "unauthorized",
    );
    // No token: an unregistered user, before invalid room.
    assert_error(&h.send(1, &join("ghost", "nowhere")), 1, "user not exist");
    // A registered user, an unknown room.
    let error = assert_error(&h.send(1, &join("ann", "nowhere")), 1, "invalid room");
    assert_eq!(error["data"]["room_name"], "nowhere");
    // A token decides the user: a different name is a mismatch.
    assert_error(
        &h.send(1, &with_token(join("bob", "hall"), &ann_token)),
        1,
        "user mismatch",
    );
    assert!(h.members("hall").is_empty());

    // Bind the connection to ann.
    assert_eq!(h.send(1, &join("ann", "hall")).len(), 1);
    // Bound to ann: bob is a mismatch, before invalid room and not in room.
    assert_error(&h.send(1, &join("bob", "nowhere")), 1, "user mismatch");
    assert_error(&h.send(1, &say("bob", "hall", "hi")), 1, "user mismatch");
    assert_error(&h.send(1, &leave("bob", "hall")), 1, "user mismatch");
    // Still unauthorized before mismatch; user not exist before mismatch.
    assert_error(
        &h.send(1, &with_token(join("bob", "hall"), "forged")),
        1,
        "unauthorized",
    );
    assert_error(&h.send(1, &join("ghost", "hall")), 1, "user not exist");
    assert_eq!(h.members("hall"), BTreeSet::from([1]));
    assert_eq!(h.population("hall"), 1);
}

#[test]
fn require_token_makes_tokens_mandatory() {
    let mut h = Harness::seeded(
        &[],
        &[("hall", 10)],
        ApiConfig {
            chat: ChatConfig {
                require_token: true,
                ..chat_config()
            },
            ..config()
        },
    );
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    let token = h.token("111");
    h.open(1);
    assert_error(&h.send(1, &join("ann", "hall")), 1, "unauthorized");
    // Unauthorized comes before user not exist.
    assert_error(&h.send(1, &join("ghost", "hall")), 1, "unauthorized");
    let frames = h.send(1, &with_token(join("ann", "hall"), &token));
    assert_user_packets(&frames, "create", "ann", "hall");
    // Each packet must carry it (or the URL must).
    assert_error(&h.send(1, &say("ann", "hall", "hi")), 1, "unauthorized");
    let frames = h.send(1, &with_token(say("ann", "hall", "hi"), &token));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1["type"], "msg");

    h.api.ws_open(2, Some(token.clone()), h.now);
    let frames = h.send(2, &join("ann", "hall"));
    assert_user_packets(&frames, "join", "ann", "hall");
    assert_eq!(recipients(&frames), [1, 2]);
    let frames = h.send(2, &say("ann", "hall", "via url"));
    assert_eq!(recipients(&frames), [1, 2]);
}

#[test]
fn url_token_identifies_the_connection() {
    let mut h = Harness::seeded(&[], &[("hall", 10)], config());
    assert_eq!(res(&h.register("111", "ann", "")), "register successfully");
    assert_eq!(res(&h.register("222", "bob", "")), "register successfully");
    let token = h.token("111");

    h.api.ws_open(1, Some(token.clone()), h.now);
    assert_error(&h.send(1, &join("bob", "hall")), 1, "user mismatch");
    let frames = h.send(1, &join("ann", "hall"));
    assert_user_packets(&frames, "create", "ann", "hall");

    h.api.ws_open(2, Some("forged".to_string()), h.now);
    assert_error(&h.send(2, &join("bob", "hall")), 2, "unauthorized");
    // data.token takes precedence over a bad URL token.
    let bob_token = h.token("222");
    let frames = h.send(2, &with_token(join("bob", "hall"), &bob_token));
    assert_user_packets(&frames, "join", "bob", "hall");
    assert_eq!(recipients(&frames), [1, 2]);
}

#[test]
fn full_room_unless_the_user_already_holds_a_seat() {
    let mut h = chat_harness();
    for conn in 1..=3 {
        h.open(conn);
    }
    assert_user_packets(&h.send(1, &join("ann", "solo")), "create", "ann", "solo");
    let error = assert_error(&h.send(2, &join("bob", "solo")), 2, "full room");
    assert_eq!(error["data"]["user"]["user_name"], "bob");
    assert_eq!(error["data"]["room_name"], "solo");
    // ann's second connection uses her seat.
    let frames = h.send(3, &join("ann", "solo"));
    assert_user_packets(&frames, "join", "ann", "solo");
    assert_eq!(recipients(&frames), [1, 3]);
    assert_eq!(h.population("solo"), 1, "two connections, one seat");
    assert_eq!(h.members("solo"), BTreeSet::from([1, 3]));
    assert_eq!(h.api.state().seats_held(), 1);
    assert_eq!(h.list()["rooms"][1]["population"], 1);
    // A seat taken over HTTP counts too.
    assert_eq!(h.room("hall", "cat", "1"), "join chatroom");
    let mut small = Harness::seeded(
        &[("1", "ann", ""), ("2", "bob", "")],
        &[("solo", 1)],
        config(),
    );
    assert_eq!(small.room("solo", "bob", "1"), "join chatroom");
    small.open(1);
    assert_error(&small.send(1, &join("ann", "solo")), 1, "full room");
    small.open(2);
    assert_user_packets(&small.send(2, &join("bob", "solo")), "join", "bob", "solo");
}

#[test]
fn leave_or_msg_outside_the_room_is_not_in_room() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    h.send(2, &join("bob", "hall"));
    let error = assert_error(&h.send(1, &say("ann", "hall", "hi")), 1, "not in room");
    assert_eq!(error["data"]["room_name"], "hall");
    assert_error(&h.send(1, &leave("ann", "hall")), 1, "not in room");
    // Invalid room before not in room.
    assert_error(&h.send(1, &say("ann", "nowhere", "hi")), 1, "invalid room");
    // Another connection of bob has not joined either.
    h.open(3);
    assert_error(&h.send(3, &say("bob", "hall", "hi")), 3, "not in room");
}

#[test]
fn a_connection_may_join_sixteen_rooms() {
    let names: Vec<String> = (0..18).map(|i| format!("room{i:02}")).collect();
    let rooms: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 10)).collect();
    let mut h = Harness::seeded(&[("1", "ann", "")], &rooms, config());
    h.open(1);
    for name in &names[..16] {
        assert_user_packets(&h.send(1, &join("ann", name)), "create", "ann", name);
    }
    let error = assert_error(&h.send(1, &join("ann", &names[16])), 1, "too many rooms");
    assert_eq!(error["data"]["room_name"], names[16].as_str());
    assert_eq!(h.population(&names[16]), 0);
    assert!(h.members(&names[16]).is_empty());
    // Re-joining one already joined is not a 17th.
    let frames = h.send(1, &join("ann", &names[3]));
    assert_eq!(recipients(&frames), [1]);
    assert_eq!(frames[0].1["type"], "user");
    // Leaving one makes room for another.
    assert_eq!(h.send(1, &leave("ann", &names[0])).len(), 1);
    assert_user_packets(
        &h.send(1, &join("ann", &names[16])),
        "create",
        "ann",
        &names[16],
    );
    assert_error(&h.send(1, &join("ann", &names[17])), 1, "too many rooms");
    // Another connection has its own 16.
    h.open(2);
    assert_user_packets(
        &h.send(2, &join("ann", &names[17])),
        "create",
        "ann",
        &names[17],
    );
}

#[test]
fn an_http_eviction_frees_a_room_slot_on_the_connection() {
    let names: Vec<String> = (0..17).map(|i| format!("r{i}")).collect();
    let rooms: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 10)).collect();
    let mut h = Harness::seeded(&[("1", "ann", "")], &rooms, config());
    h.open(1);
    for name in &names[..16] {
        assert_eq!(h.send(1, &join("ann", name)).len(), 1);
    }
    assert_error(&h.send(1, &join("ann", "r16")), 1, "too many rooms");
    assert_eq!(h.room("r5", "ann", "0"), "leave chatroom");
    assert_eq!(recipients(&h.frames()), [1]);
    assert_user_packets(&h.send(1, &join("ann", "r16")), "create", "ann", "r16");
    // Closing now leaves exactly the 16 rooms it is in.
    h.close(1);
    assert_eq!(h.api.state().seats_held(), 16);
    assert_eq!(h.population("r5"), 0);
    h.tick(h.at(TTL));
    assert_eq!(h.api.state().seats_held(), 0);
}

#[test]
fn full_room_is_reported_before_too_many_rooms() {
    let names: Vec<String> = (0..16).map(|i| format!("r{i}")).collect();
    let mut rooms: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 10)).collect();
    rooms.push(("solo", 1));
    let mut h = Harness::seeded(&[("1", "ann", ""), ("2", "bob", "")], &rooms, config());
    h.open(1);
    h.open(2);
    for name in &names {
        assert_eq!(h.send(1, &join("ann", name)).len(), 1);
    }
    assert_eq!(h.send(2, &join("bob", "solo")).len(), 1);
    assert_error(&h.send(1, &join("ann", "solo")), 1, "full room");
}

#[test]
fn message_length_is_counted_in_characters() {
    let mut h = Harness::seeded(
        &[("1", "ann", "")],
        &[("hall", 10)],
        ApiConfig {
            chat: ChatConfig {
                max_msg_chars: 5,
                ..chat_config()
            },
            ..config()
        },
    );
    h.open(1);
    h.send(1, &join("ann", "hall"));
    for ok in ["ééééé", "😀😀😀😀😀", "abcde", "a"] {
        assert!(ok.len() > 5 || ok.chars().count() <= 5);
        let frames = h.send(1, &say("ann", "hall", ok));
        assert_eq!(frames.len(), 1, "{ok}: {frames:?}");
        assert_eq!(frames[0].1["type"], "msg");
        assert_eq!(frames[0].1["data"]["msg"], ok);
    }
    for long in ["éééééé", "😀😀😀😀😀😀", "abcdef"] {
        let error = assert_error(&h.send(1, &say("ann", "hall", long)), 1, "message too long");
        assert_eq!(error["data"]["room_name"], "hall");
    }
    // not in room comes first.
    h.open(2);
    assert_error(
        &h.send(2, &say("ann", "hall", "abcdefgh")),
        2,
        "not in room",
    );
}

#[test]
fn default_message_limit_is_two_thousand_characters() {
    let mut h = chat_harness();
    h.open(1);
    h.send(1, &join("ann", "hall"));
    let at_limit = "ж".repeat(2000);
    let frames = h.send(1, &say("ann", "hall", &at_limit));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1["data"]["msg"], at_limit.as_str());
    assert_error(
        &h.send(1, &say("ann", "hall", &"ж".repeat(2001))),
        1,
        "message too long",
    );
}

fn rate_harness(rate: u32, burst: u32) -> Harness {
    Harness::seeded(
        &[("1", "ann", ""), ("2", "bob", "")],
        &[("hall", 10)],
        ApiConfig {
            chat: ChatConfig {
                ws_rate: rate,
                ws_burst: burst,
                ..chat_config()
            },
            ..config()
        },
    )
}

#[test]
fn rate_limit_is_a_token_bucket() {
    let mut h = rate_harness(1, 3);
    h.open(1);
    h.open(2);
    assert_eq!(h.send(1, &join("ann", "hall")).len(), 1);
    assert_eq!(h.send(1, &say("ann", "hall", "one")).len(), 1);
    assert_eq!(h.send(1, &say("ann", "hall", "two")).len(), 1);
    let error = assert_error(&h.send(1, &say("ann", "hall", "three")), 1, "rate limited");
    assert_eq!(error["data"]["user"]["user_name"], "ann");
    assert_error(&h.send(1, &leave("ann", "hall")), 1, "rate limited");
    // Other connections have their own bucket.
    assert_eq!(h.send(2, &join("bob", "hall")).len(), 2);

    h.advance(Duration::from_secs(1));
    let frames = h.send(1, &say("ann", "hall", "refilled"));
    assert_eq!(recipients(&frames), [1, 2]);
    assert_error(&h.send(1, &say("ann", "hall", "again")), 1, "rate limited");
    h.advance(Duration::from_millis(500));
    assert_error(&h.send(1, &say("ann", "hall", "half")), 1, "rate limited");
    h.advance(Duration::from_millis(500));
    assert_eq!(h.send(1, &say("ann", "hall", "whole")).len(), 2);

    // A long pause refills at most the burst.
    h.advance(Duration::from_secs(100));
    for i in 0..3 {
        assert_eq!(h.send(1, &say("ann", "hall", &format!("m{i}"))).len(), 2);
    }
    assert_error(&h.send(1, &say("ann", "hall", "m3")), 1, "rate limited");
}

#[test]
fn rate_limit_counts_every_packet_and_reports_earlier_errors_first() {
    let mut h = rate_harness(1, 3);
    h.open(1);
    assert_eq!(h.send(1, &join("ann", "hall")).len(), 1);
    assert_error(&h.send_text(1, "garbage"), 1, "invalid message");
    h.api.ws_binary(1, h.now);
    assert_error(&h.frames(), 1, "invalid message");
    // The bucket is empty; an earlier error in the table still wins.
    assert_error(&h.send(1, &say("ann", "nowhere", "x")), 1, "invalid room");
    assert_error(
        &h.send(1, &say("ann", "hall", &"x".repeat(2001))),
        1,
        "message too long",
    );
    assert_error(&h.send(1, &say("bob", "hall", "x")), 1, "user mismatch");
    assert_error(&h.send(1, &say("ann", "hall", "x")), 1, "rate limited");
}

#[test]
fn rate_zero_turns_the_limit_off() {
    let mut h = rate_harness(0, 1);
    h.open(1);
    assert_eq!(h.send(1, &join("ann", "hall")).len(), 1);
    for i in 0..200 {
        let frames = h.send(1, &say("ann", "hall", &format!("m{i}")));
        assert_eq!(frames.len(), 1, "packet {i}: {frames:?}");
        assert_eq!(frames[0].1["type"], "msg");
    }
}

// ---------------------------------------------------------------------------
// WebSocket: join, leave, msg
// ---------------------------------------------------------------------------

#[test]
fn first_join_creates_later_joins_join_and_rejoin_goes_to_the_joiner_only() {
    let mut h = chat_harness();
    for conn in 1..=3 {
        h.open(conn);
    }
    let frames = h.send(1, &join("ann", "hall"));
    assert_eq!(recipients(&frames), [1]);
    assert_user_packets(&frames, "create", "ann", "hall");
    assert!(frames[0].1["data"].get("ts").is_none());

    let frames = h.send(2, &join("bob", "hall"));
    assert_eq!(recipients(&frames), [1, 2]);
    assert_user_packets(&frames, "join", "bob", "hall");

    let frames = h.send(3, &join("cat", "hall"));
    assert_eq!(recipients(&frames), [1, 2, 3]);
    assert_user_packets(&frames, "join", "cat", "hall");

    // Re-joining: to that connection only, no new seat or membership.
    let frames = h.send(2, &join("bob", "hall"));
    assert_eq!(recipients(&frames), [2]);
    assert_eq!(frames[0].1["type"], "user");
    assert_eq!(frames[0].1["data"]["user"]["user_name"], "bob");
    assert_eq!(frames[0].1["data"]["room_name"], "hall");
    let msg = frames[0].1["data"]["msg"].as_str().unwrap();
    assert!(msg == "join" || msg == "create", "{msg}");
    assert_eq!(h.population("hall"), 3);
    assert_eq!(h.members("hall"), BTreeSet::from([1, 2, 3]));

    // A message after the re-join reaches bob's connection once.
    let frames = h.send(1, &say("ann", "hall", "hi"));
    assert_eq!(recipients(&frames), [1, 2, 3]);
}

#[test]
fn a_room_emptied_of_seats_is_created_again() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    assert_user_packets(&h.send(1, &join("ann", "hall")), "create", "ann", "hall");
    h.send(1, &leave("ann", "hall"));
    // A leave frees the seat at once: the room is empty again.
    assert_eq!(h.population("hall"), 0);
    assert_user_packets(&h.send(2, &join("bob", "hall")), "create", "bob", "hall");
    // A dropped connection's seat lingers for the TTL: a join now is a join.
    h.close(2);
    h.open(3);
    assert_user_packets(&h.send(1, &join("ann", "hall")), "join", "ann", "hall");
    h.send(1, &leave("ann", "hall"));
    h.advance(TTL);
    h.tick(h.now);
    assert_eq!(h.population("hall"), 0);
    assert_user_packets(&h.send(3, &join("cat", "hall")), "create", "cat", "hall");
}

#[test]
fn the_http_leave_after_a_ws_leave_answers_leave_chatroom_once() {
    let mut h = chat_harness();
    h.open(1);
    h.send(1, &join("ann", "hall"));
    h.send(1, &leave("ann", "hall"));
    assert_eq!(h.population("hall"), 0);
    assert_eq!(h.room("hall", "ann", "0"), "leave chatroom");
    assert_eq!(h.room("hall", "ann", "0"), "user not exist", "only once");

    // Not after the TTL has passed.
    h.send(1, &join("ann", "hall"));
    h.send(1, &leave("ann", "hall"));
    h.advance(TTL);
    h.tick(h.now);
    assert_eq!(h.room("hall", "ann", "0"), "user not exist");

    // Not once the user took a new seat and gave it back over HTTP.
    h.send(1, &join("ann", "hall"));
    h.send(1, &leave("ann", "hall"));
    assert_eq!(h.room("hall", "ann", "1"), "join chatroom");
    assert_eq!(h.room("hall", "ann", "0"), "leave chatroom");
    assert_eq!(h.room("hall", "ann", "0"), "user not exist");
    assert_eq!(h.api.next_deadline(), None, "nothing left to expire");
}

#[test]
fn a_leave_keeps_the_seat_while_another_connection_of_the_user_is_in() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    h.open(3);
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("ann", "hall"));
    h.send(3, &join("bob", "hall"));
    h.send(1, &leave("ann", "hall"));
    assert_eq!(h.population("hall"), 2, "ann is still there on conn 2");
    assert_eq!(h.api.next_deadline(), None, "and her seat does not expire");
    let frames = h.send(2, &leave("ann", "hall"));
    assert_eq!(recipients(&frames), [2, 3]);
    assert_user_packets(&frames, "leave", "ann", "hall");
    assert_eq!(h.population("hall"), 1);
}

#[test]
fn join_after_an_http_admission_is_join() {
    let mut h = chat_harness();
    assert_eq!(h.room("hall", "ann", "1"), "join chatroom");
    h.open(1);
    let frames = h.send(1, &join("ann", "hall"));
    assert_eq!(recipients(&frames), [1]);
    assert_user_packets(&frames, "join", "ann", "hall");
    assert_eq!(h.population("hall"), 1);
    // A connected seat does not expire.
    assert_eq!(h.api.next_deadline(), None);
    h.tick(h.at(TTL * 3));
    assert_eq!(h.population("hall"), 1);
}

#[test]
fn leave_is_broadcast_to_the_leaver_too_then_it_is_out() {
    let mut h = chat_harness();
    for conn in 1..=3 {
        h.open(conn);
    }
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("bob", "hall"));
    h.send(3, &join("cat", "hall"));
    let frames = h.send(1, &leave("ann", "hall"));
    assert_eq!(recipients(&frames), [1, 2, 3]);
    assert_user_packets(&frames, "leave", "ann", "hall");
    assert_eq!(h.members("hall"), BTreeSet::from([2, 3]));
    assert_error(
        &h.send(1, &say("ann", "hall", "still here?")),
        1,
        "not in room",
    );
    assert_error(&h.send(1, &leave("ann", "hall")), 1, "not in room");
    let frames = h.send(2, &say("bob", "hall", "bye ann"));
    assert_eq!(recipients(&frames), [2, 3]);

    // The seat went with the leave (SPEC §3), not after a TTL.
    assert_eq!(h.population("hall"), 2);
    assert!(!h.api.state().holds_seat(0, 0));
    // A dropped connection's seat does wait for the TTL, and a return
    // before it runs out keeps the seat.
    h.close(2);
    assert_eq!(h.population("hall"), 2);
    let memo_until = h.now.mono + TTL;
    assert_eq!(h.api.next_deadline(), Some(memo_until));
    h.advance(TTL / 2);
    h.open(4);
    assert_user_packets(&h.send(4, &join("bob", "hall")), "join", "bob", "hall");
    assert_eq!(h.api.next_deadline(), Some(memo_until), "ann's memo only");
    h.advance(TTL * 4);
    h.tick(h.now);
    assert_eq!(h.population("hall"), 2);
    assert_eq!(h.api.next_deadline(), None);
    h.close(3);
    h.advance(TTL - Duration::from_millis(1));
    h.tick(h.now);
    assert_eq!(h.population("hall"), 2);
    h.advance(Duration::from_millis(1));
    h.tick(h.now);
    assert_eq!(h.population("hall"), 1);
}

#[test]
fn msg_reaches_every_member_with_a_timestamp() {
    let mut h = chat_harness();
    for conn in 1..=4 {
        h.open(conn);
    }
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("bob", "hall"));
    h.send(3, &join("cat", "hall"));
    h.send(4, &join("ann", "solo"));
    h.advance(Duration::from_millis(1234));
    let frames = h.send(2, &with_avatar(say("bob", "hall", "hello, 世界"), "x"));
    assert_eq!(recipients(&frames), [1, 2, 3], "conn 4 is in another room");
    for (_, value) in &frames {
        assert_eq!(value["type"], "msg");
        let data = value["data"].as_object().unwrap();
        let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["user", "room_name", "msg", "ts", "seq"])
        );
        assert_eq!(data["seq"], 1);
        assert_eq!(data["user"]["user_name"], "bob");
        assert_eq!(data["room_name"], "hall");
        assert_eq!(data["msg"], "hello, 世界");
        assert_eq!(data["ts"], EPOCH_MS + 1234);
        assert_eq!(data["ts"], h.now.unix_ms);
    }
}

#[test]
fn packets_carry_the_registered_avatar_else_the_one_claimed_at_join() {
    let mut h = Harness::seeded(
        &[
            ("1", "ann", "https://example.com/ann.png"),
            ("2", "bob", ""),
        ],
        &[("hall", 10), ("den", 10)],
        config(),
    );
    h.open(1);
    h.open(2);
    let frames = h.send(1, &with_avatar(join("ann", "hall"), "https://evil/x.png"));
    assert_eq!(
        frames[0].1["data"]["user"]["user_avatar"],
        "https://example.com/ann.png"
    );
    let frames = h.send(
        2,
        &with_avatar(join("bob", "hall"), "https://example.com/bob.png"),
    );
    for (_, value) in &frames {
        assert_eq!(
            value["data"]["user"]["user_avatar"],
            "https://example.com/bob.png"
        );
    }
    // Later claims do not change it.
    let frames = h.send(
        2,
        &with_avatar(say("bob", "hall", "hi"), "https://evil/other.png"),
    );
    for (_, value) in &frames {
        assert_eq!(value["data"]["user"]["user_name"], "bob");
        assert_eq!(
            value["data"]["user"]["user_avatar"],
            "https://example.com/bob.png"
        );
    }
    let frames = h.send(
        1,
        &with_avatar(say("ann", "hall", "hi"), "https://evil/y.png"),
    );
    for (_, value) in &frames {
        assert_eq!(
            value["data"]["user"]["user_avatar"],
            "https://example.com/ann.png"
        );
    }
    // Nor does a claim made when joining a second room.
    let frames = h.send(2, &with_avatar(join("bob", "den"), "https://evil/z.png"));
    assert_eq!(
        frames[0].1["data"]["user"]["user_avatar"],
        "https://example.com/bob.png"
    );
    let frames = h.send(2, &say("bob", "den", "hi"));
    assert_eq!(
        frames[0].1["data"]["user"]["user_avatar"],
        "https://example.com/bob.png"
    );
    // A second connection of bob binds with its own claim.
    h.open(3);
    let frames = h.send(
        3,
        &with_avatar(join("bob", "den"), "https://example.com/bob2.png"),
    );
    assert_eq!(recipients(&frames), [2, 3]);
    for (_, value) in &frames {
        assert_eq!(
            value["data"]["user"]["user_avatar"],
            "https://example.com/bob2.png"
        );
    }
    let frames = h.send(2, &with_avatar(leave("bob", "hall"), ""));
    assert_eq!(recipients(&frames), [1, 2]);
    for (_, value) in &frames {
        assert_eq!(
            value["data"]["user"]["user_avatar"],
            "https://example.com/bob.png"
        );
    }
}

#[test]
fn token_users_are_shown_by_their_registered_name() {
    let mut h = Harness::seeded(&[], &[("hall", 10)], config());
    assert_eq!(
        res(&h.register("111", "ann", "https://example.com/ann.png")),
        "register successfully"
    );
    let token = h.token("111");
    h.open(1);
    let frames = h.send(1, &with_token(join("ann", "hall"), &token));
    assert_user_packets(&frames, "create", "ann", "hall");
    assert_eq!(
        frames[0].1["data"]["user"]["user_avatar"],
        "https://example.com/ann.png"
    );
    let frames = h.send(1, &with_token(say("ann", "hall", "hi"), &token));
    assert_eq!(frames[0].1["data"]["user"]["user_name"], "ann");
    // Without the token, the bound name still works (the user is registered).
    let frames = h.send(1, &say("ann", "hall", "plain"));
    assert_eq!(frames.len(), 1);
}

#[test]
fn a_closed_connection_leaves_its_rooms_and_starts_the_ttl() {
    let mut h = chat_harness();
    for conn in 1..=3 {
        h.open(conn);
    }
    h.send(1, &join("ann", "hall"));
    h.send(1, &join("ann", "solo"));
    h.send(2, &join("ann", "hall"));
    h.send(3, &join("bob", "hall"));
    assert_eq!(h.api.ws_sessions(), 3);
    assert_eq!(h.population("hall"), 2);
    let ann = h.api.state().user_id_by_name("ann");
    let rooms: Vec<_> = ["hall", "solo"]
        .iter()
        .filter_map(|name| h.api.state().room_id(name))
        .collect();
    assert_eq!(h.api.ws_session(1), Some((ann, rooms.as_slice())));

    let frames = h.close(1);
    assert_eq!(h.api.ws_sessions(), 2);
    assert_eq!(h.api.ws_session(1), None);
    // hall: the remaining members are told; solo has nobody left to tell.
    assert_eq!(recipients(&frames), [2, 3]);
    assert_user_packets(&frames, "leave", "ann", "hall");
    assert_eq!(h.members("hall"), BTreeSet::from([2, 3]));
    assert!(h.members("solo").is_empty());
    // ann still has connection 2 in hall: her seat there does not expire;
    // her seat in solo does.
    assert_eq!(h.api.next_deadline(), Some(h.now.mono + TTL));
    h.tick(h.at(TTL));
    assert_eq!(h.population("hall"), 2);
    assert_eq!(h.population("solo"), 0);
    assert_eq!(h.api.next_deadline(), None);

    h.advance(Duration::from_secs(5));
    let frames = h.close(2);
    assert_eq!(recipients(&frames), [3]);
    assert_user_packets(&frames, "leave", "ann", "hall");
    let closed_at = h.now.mono;
    assert_eq!(h.api.next_deadline(), Some(closed_at + TTL));
    h.tick(Now {
        mono: closed_at + TTL - Duration::from_millis(1),
        unix_ms: 0,
    });
    assert_eq!(h.population("hall"), 2);
    h.tick(Now {
        mono: closed_at + TTL,
        unix_ms: 0,
    });
    assert_eq!(h.population("hall"), 1);
    assert_eq!(h.api.state().seats_held(), 1);
    // Closing twice, or an unknown connection, is harmless.
    assert!(h.close(2).is_empty());
    assert!(h.close(99).is_empty());
    // Packets on a closed connection are ignored.
    assert!(h.send(2, &say("ann", "hall", "ghost")).is_empty());
}

#[test]
fn a_connection_that_never_joined_closes_quietly() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    h.send(2, &join("bob", "hall"));
    assert_error(&h.send(1, &join("ghost", "hall")), 1, "user not exist");
    assert!(h.close(1).is_empty());
    assert_eq!(h.members("hall"), BTreeSet::from([2]));
}

#[test]
fn http_leave_evicts_live_connections_with_a_leave_everyone_sees() {
    let mut h = chat_harness();
    for conn in 1..=4 {
        h.open(conn);
    }
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("ann", "hall"));
    h.send(3, &join("bob", "hall"));
    h.send(4, &join("ann", "solo"));
    assert_eq!(h.population("hall"), 2);

    assert_eq!(h.room("hall", "ann", "0"), "leave chatroom");
    let frames = h.frames();
    assert_eq!(
        recipients(&frames),
        [1, 2, 3],
        "evicted connections included"
    );
    assert_user_packets(&frames, "leave", "ann", "hall");
    assert_eq!(h.population("hall"), 1);
    assert_eq!(h.members("hall"), BTreeSet::from([3]));
    assert_eq!(
        h.members("solo"),
        BTreeSet::from([4]),
        "other rooms untouched"
    );
    assert_error(&h.send(1, &say("ann", "hall", "hi")), 1, "not in room");
    assert_error(&h.send(2, &leave("ann", "hall")), 2, "not in room");
    let frames = h.send(3, &say("bob", "hall", "alone"));
    assert_eq!(recipients(&frames), [3]);
    // No seat is left to expire.
    assert_eq!(h.api.next_deadline(), None);
    // Closing an evicted connection tells nobody in hall.
    let frames = h.close(1);
    assert!(frames.is_empty(), "{frames:?}");
    // The evicted connection can come back.
    let frames = h.send(2, &join("ann", "hall"));
    assert_eq!(recipients(&frames), [2, 3]);
    assert_user_packets(&frames, "join", "ann", "hall");
    assert_eq!(h.population("hall"), 2);
}

#[test]
fn http_leave_of_a_seat_without_connections_sends_no_frames_to_outsiders() {
    let mut h = chat_harness();
    h.open(1);
    h.send(1, &join("bob", "solo"));
    assert_eq!(h.room("hall", "ann", "1"), "join chatroom");
    assert_eq!(h.room("hall", "ann", "0"), "leave chatroom");
    assert!(h.frames().is_empty());
    assert_eq!(h.population("hall"), 0);
}

// ---------------------------------------------------------------------------
// Invariants under a pseudo-random sequence
// ---------------------------------------------------------------------------

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FUZZ_USERS: [&str; 4] = ["ann", "bob", "cat", "dan"];
const FUZZ_ROOMS: [(&str, u32); 3] = [("r0", 1), ("r1", 2), ("r2", 3)];
const FUZZ_CONNS: usize = 6;

/// What the test believes, from the frames it saw.
#[derive(Default)]
struct Model {
    open: BTreeSet<ConnRef>,
    bound: BTreeMap<ConnRef, &'static str>,
    /// (room, conn)
    members: BTreeSet<(&'static str, ConnRef)>,
    /// Seats a WebSocket `leave` freed, until when the HTTP leave that
    /// follows still answers "leave chatroom".
    ws_left: BTreeMap<(&'static str, &'static str), Instant>,
}

impl Model {
    fn in_room(&self, room: &'static str) -> BTreeSet<ConnRef> {
        self.members
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, c)| *c)
            .collect()
    }
}

struct Before {
    members: BTreeMap<&'static str, BTreeSet<ConnRef>>,
    population: BTreeMap<&'static str, usize>,
}

fn snapshot(h: &Harness) -> Before {
    let mut members = BTreeMap::new();
    let mut population = BTreeMap::new();
    for (room, _) in FUZZ_ROOMS {
        members.insert(room, h.members(room));
        population.insert(room, h.population(room));
    }
    Before {
        members,
        population,
    }
}

fn holds_seat(h: &Harness, room: &str, user: &str) -> bool {
    let state = h.api.state();
    state.holds_seat(
        state.room_id(room).unwrap(),
        state.user_id_by_name(user).unwrap(),
    )
}

fn check_invariants(h: &Harness, model: &Model, step: usize) {
    let state = h.api.state();
    let mut total = 0;
    for (name, capacity) in FUZZ_ROOMS {
        let id = state.room_id(name).unwrap();
        let room = state.room(id).unwrap();
        assert!(
            room.population() <= capacity as usize,
            "step {step}: {name} population {} > {capacity}",
            room.population()
        );
        total += room.population();
        let members = h.members(name);
        assert_eq!(
            members,
            model.in_room(name),
            "step {step}: members of {name} differ from the frames seen"
        );
        assert_eq!(
            members.len(),
            room.members().len(),
            "step {step}: duplicate member"
        );
        for (conn, user) in room.members() {
            assert!(
                model.open.contains(conn),
                "step {step}: closed conn {conn} in {name}"
            );
            let bound = model.bound.get(conn).copied();
            let name_of = state.user(*user).map(|u| u.name.as_str());
            assert_eq!(
                name_of, bound,
                "step {step}: conn {conn} bound to another user"
            );
            assert!(
                state.holds_seat(id, *user),
                "step {step}: member without a seat"
            );
        }
    }
    assert_eq!(state.seats_held(), total, "step {step}: seats_held");
    assert_eq!(
        h.api.ws_sessions(),
        model.open.len(),
        "step {step}: sessions"
    );
}

/// Frames of one broadcast: the same packet to exactly `expected`, once each.
fn assert_broadcast(frames: &[(ConnRef, Value)], expected: &BTreeSet<ConnRef>, step: usize) {
    let got = recipients(frames);
    let want: Vec<ConnRef> = expected.iter().copied().collect();
    assert_eq!(got, want, "step {step}: recipients {frames:?}");
    for (_, value) in frames {
        assert_eq!(*value, frames[0].1, "step {step}: one packet for all");
    }
}

fn run_random(seed: u64, steps: usize) -> BTreeMap<&'static str, usize> {
    let users: Vec<(String, &str, &str)> = FUZZ_USERS
        .iter()
        .enumerate()
        .map(|(i, name)| (format!("10{i}"), *name, ""))
        .collect();
    let users: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|(tel, name, avatar)| (tel.as_str(), *name, *avatar))
        .collect();
    let mut h = Harness::seeded(&users, &FUZZ_ROOMS, config());
    let mut rng = Lcg(seed);
    let mut model = Model::default();
    let mut counts = BTreeMap::<&str, usize>::new();

    for step in 0..steps {
        let before = snapshot(&h);
        let conn = (rng.below(FUZZ_CONNS) + 1) as ConnRef;
        let user = FUZZ_USERS[rng.below(FUZZ_USERS.len())];
        let (room, capacity) = FUZZ_ROOMS[rng.below(FUZZ_ROOMS.len())];
        let choice = rng.below(100);
        let open = model.open.contains(&conn);
        let mismatch = model.bound.get(&conn).is_some_and(|b| *b != user);
        let member = model.members.contains(&(room, conn));
        match choice {
            0..=9 => {
                *counts.entry("open").or_default() += 1;
                if !open {
                    h.open(conn);
                    model.open.insert(conn);
                }
                assert!(h.frames().is_empty(), "step {step}: open sends nothing");
            }
            10..=17 => {
                *counts.entry("close").or_default() += 1;
                let frames = h.close(conn);
                let rooms: Vec<&'static str> = model
                    .members
                    .iter()
                    .filter(|(_, c)| *c == conn)
                    .map(|(r, _)| *r)
                    .collect();
                let mut seen = 0;
                for left in &rooms {
                    let mut expected = before.members[left].clone();
                    expected.remove(&conn);
                    let part: Vec<(ConnRef, Value)> = frames
                        .iter()
                        .filter(|(_, v)| v["data"]["room_name"] == *left)
                        .cloned()
                        .collect();
                    seen += part.len();
                    if !expected.is_empty() {
                        assert_broadcast(&part, &expected, step);
                        assert_user_packets(&part, "leave", model.bound[&conn], left);
                    }
                }
                assert_eq!(seen, frames.len(), "step {step}: stray frames {frames:?}");
                model.members.retain(|(_, c)| *c != conn);
                model.open.remove(&conn);
                model.bound.remove(&conn);
            }
            18..=44 => {
                *counts.entry("join").or_default() += 1;
                let seat = holds_seat(&h, room, user);
                let frames = h.send(conn, &join(user, room));
                if !open {
                    assert!(frames.is_empty());
                } else if mismatch {
                    assert_error(&frames, conn, "user mismatch");
                } else if member {
                    assert_eq!(recipients(&frames), [conn], "step {step}: re-join");
                    assert_eq!(frames[0].1["type"], "user");
                } else if !seat && before.population[room] >= capacity as usize {
                    assert_error(&frames, conn, "full room");
                } else {
                    let kind = if before.population[room] == 0 {
                        "create"
                    } else {
                        "join"
                    };
                    let mut expected = before.members[room].clone();
                    expected.insert(conn);
                    assert_broadcast(&frames, &expected, step);
                    assert_user_packets(&frames, kind, user, room);
                    model.members.insert((room, conn));
                    model.bound.insert(conn, user);
                    if !seat {
                        model.ws_left.remove(&(room, user));
                    }
                    *counts.entry("join ok").or_default() += 1;
                }
            }
            45..=57 => {
                *counts.entry("leave").or_default() += 1;
                let frames = h.send(conn, &leave(user, room));
                if !open {
                    assert!(frames.is_empty());
                } else if mismatch {
                    assert_error(&frames, conn, "user mismatch");
                } else if !member {
                    // An unbound connection names a registered user, so the
                    // only error left is not in room.
                    assert_error(&frames, conn, "not in room");
                } else {
                    assert_broadcast(&frames, &before.members[room], step);
                    assert_user_packets(&frames, "leave", user, room);
                    model.members.remove(&(room, conn));
                    let still_connected = model
                        .members
                        .iter()
                        .any(|(r, c)| *r == room && model.bound.get(c) == Some(&user));
                    assert_eq!(
                        holds_seat(&h, room, user),
                        still_connected,
                        "step {step}: a leave frees the seat unless the user is still there"
                    );
                    if !still_connected {
                        model.ws_left.insert((room, user), h.now.mono + TTL);
                        *counts.entry("leave frees").or_default() += 1;
                    }
                    *counts.entry("leave ok").or_default() += 1;
                }
            }
            58..=77 => {
                *counts.entry("msg").or_default() += 1;
                let text = format!("m{step}");
                let frames = h.send(conn, &say(user, room, &text));
                if !open {
                    assert!(frames.is_empty());
                } else if mismatch {
                    assert_error(&frames, conn, "user mismatch");
                } else if !member {
                    assert_error(&frames, conn, "not in room");
                } else {
                    assert_broadcast(&frames, &before.members[room], step);
                    for (_, value) in &frames {
                        assert_eq!(value["type"], "msg");
                        assert_eq!(value["data"]["msg"], text.as_str());
                        assert_eq!(value["data"]["user"]["user_name"], user);
                        assert_eq!(value["data"]["room_name"], room);
                        assert_eq!(value["data"]["ts"], h.now.unix_ms);
                    }
                    *counts.entry("msg ok").or_default() += 1;
                }
            }
            78..=85 => {
                *counts.entry("admit").or_default() += 1;
                let seat = holds_seat(&h, room, user);
                let answer = h.room(room, user, "1");
                let expected = if !seat && before.population[room] >= capacity as usize {
                    "full room"
                } else {
                    "join chatroom"
                };
                assert_eq!(answer, expected, "step {step}");
                if !seat && expected == "join chatroom" {
                    model.ws_left.remove(&(room, user));
                }
                assert!(
                    h.frames().is_empty(),
                    "step {step}: admission sends nothing"
                );
            }
            86..=93 => {
                *counts.entry("release").or_default() += 1;
                let seat = holds_seat(&h, room, user);
                let answer = h.room(room, user, "0");
                let frames = h.frames();
                let recent_ws_leave = model
                    .ws_left
                    .remove(&(room, user))
                    .is_some_and(|until| until > h.now.mono);
                if !seat && recent_ws_leave {
                    assert_eq!(answer, "leave chatroom", "step {step}: after a ws leave");
                    assert!(frames.is_empty());
                    *counts.entry("http leave after ws leave").or_default() += 1;
                } else if !seat {
                    assert_eq!(answer, "user not exist", "step {step}");
                    assert!(frames.is_empty());
                } else {
                    assert_eq!(answer, "leave chatroom", "step {step}");
                    let evicted: Vec<ConnRef> = model
                        .members
                        .iter()
                        .filter(|(r, c)| *r == room && model.bound.get(c) == Some(&user))
                        .map(|(_, c)| *c)
                        .collect();
                    if evicted.is_empty() {
                        assert!(frames.is_empty(), "step {step}: {frames:?}");
                    } else {
                        assert_broadcast(&frames, &before.members[room], step);
                        assert_user_packets(&frames, "leave", user, room);
                        *counts.entry("evict").or_default() += 1;
                    }
                    for conn in evicted {
                        model.members.remove(&(room, conn));
                    }
                    assert!(!holds_seat(&h, room, user));
                }
            }
            _ => {
                *counts.entry("tick").or_default() += 1;
                let by = Duration::from_millis(rng.below(40_000) as u64);
                h.advance(by);
                h.tick(h.now);
                assert!(h.frames().is_empty(), "step {step}: tick sends nothing");
                if let Some(deadline) = h.api.next_deadline() {
                    assert!(deadline > h.now.mono, "step {step}: overdue seat");
                }
            }
        }
        check_invariants(&h, &model, step);
    }
    // The run must have exercised the interesting paths.
    for key in ["join ok", "leave ok", "msg ok", "evict", "close", "tick"] {
        assert!(
            counts.get(key).copied().unwrap_or(0) > 5,
            "seed {seed}: too few {key}: {counts:?}"
        );
    }
    counts
}

#[test]
fn random_sequences_keep_seats_members_and_frames_consistent() {
    let mut totals = BTreeMap::<&str, usize>::new();
    for seed in [1, 42, 0xdead_beef, 2024] {
        for (key, n) in run_random(seed, 3000) {
            *totals.entry(key).or_default() += n;
        }
    }
    // Rarer paths, over all seeds: a leave that frees the seat, and the
    // HTTP leave of the same user and room that follows it.
    for key in ["leave frees", "http leave after ws leave"] {
        assert!(
            totals.get(key).copied().unwrap_or(0) > 0,
            "no {key}: {totals:?}"
        );
    }
}

#[test]
fn closing_every_connection_at_shutdown_tells_nobody_and_starts_the_ttls() {
    let mut h = chat_harness();
    h.open(1);
    h.open(2);
    h.open(3);
    h.send(1, &join("ann", "hall"));
    h.send(2, &join("bob", "hall"));
    h.send(3, &join("bob", "solo"));
    h.frames();
    let now = h.now;
    h.api.ws_close_all(now);
    assert!(h.frames().is_empty(), "nobody is left to hear a leave");
    assert_eq!(h.api.ws_sessions(), 0);
    assert!(h.members("hall").is_empty());
    assert!(h.members("solo").is_empty());
    assert_eq!(h.population("hall"), 2, "seats outlive their connections");
    assert_eq!(h.api.next_deadline(), Some(now.mono + TTL));
    h.tick(h.at(TTL));
    assert_eq!(h.api.state().seats_held(), 0);
}

mod history;

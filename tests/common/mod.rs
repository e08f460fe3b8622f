//! Shared helpers for the integration tests: the one in-process server
//! (`TestServer`, on free ports and a temporary data directory) with calls
//! on its HTTP API, an independent HTTP client (ureq) for ordinary endpoint
//! calls, and a small raw-socket client for framing edge cases. WebSocket
//! clients are in `ws_common`, which adds them to `TestServer`; a real
//! redis-server and cluster nodes on it are in `redis`.

#![allow(dead_code)]

pub mod redis;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatroom::{Config, RunningServer, Server, StartError};
use serde_json::Value;
use tempfile::TempDir;

/// How long any single socket read may block before the test gives up: a
/// guard against hangs, never a pass/fail threshold.
pub const IO_GUARD: Duration = Duration::from_secs(20);

/// Overall deadline for polling loops.
pub const POLL_DEADLINE: Duration = Duration::from_secs(20);

pub const JSON_TYPE: &str = "application/json; charset=utf-8";

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A configuration for tests: ephemeral ports, cheap argon2, the given dir.
pub fn test_config(dir: &Path) -> Config {
    Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        hash_threads: 2,
        ..Config::default()
    }
}

/// `CHATROOM_TEST_CLUSTER=1`: every `TestServer` is two cluster nodes on
/// a Redis of its own, and calls alternate between them, so the embedded
/// suites check that a cluster answers as one server (SPEC §9).
pub fn cluster_env() -> bool {
    std::env::var("CHATROOM_TEST_CLUSTER").as_deref() == Ok("1")
}

/// For a test of what only the embedded mode has (its data directory, its
/// files, its single process): true, with a note on stderr, when the suite
/// runs against a cluster and the test should end here.
pub fn embedded_only(why: &str) -> bool {
    if cluster_env() {
        let _ = writeln!(std::io::stderr(), "not run against the cluster ({why})");
        return true;
    }
    false
}

/// The first phone number `TestServer::register` hands out.
const FIRST_TEL: u64 = 13_800_000_000;

/// A server running in-process on free ports, with its own data directory.
/// Dropping it stops the server (errors ignored); `stop` insists on a clean
/// stop.
pub struct TestServer {
    // Field order matters: the servers stop before their directory and
    // their Redis go.
    server: RunningServer,
    /// Under `CHATROOM_TEST_CLUSTER=1` (see `cluster_env`): the second
    /// node of a two-node cluster, and the Redis both run on.
    second: Option<RunningServer>,
    redis: Option<redis::RedisServer>,
    /// Which node the next `http_addr` / `ws_addr` names.
    turn: std::sync::atomic::AtomicUsize,
    /// The data directory, unless the configuration was pointed elsewhere.
    pub dir: TempDir,
    /// One client for the helper calls below, so they reuse a connection
    /// the way a real client would instead of opening one per call.
    agent: ureq::Agent,
    next_tel: AtomicU64,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::try_start_with(tweak).expect("server starts")
    }

    /// For tests of start-up itself. A `tweak` that points `data_dir` at a
    /// directory the test holds (one with bad files, or in use) leaves the
    /// server's own `dir` unused.
    pub fn try_start_with(tweak: impl FnOnce(&mut Config)) -> Result<TestServer, StartError> {
        let dir = TempDir::new().expect("temp dir");
        TestServer::launch(dir, tweak, FIRST_TEL)
    }

    /// Starts on a directory an earlier server left (see `stop`), which
    /// the new server then owns.
    pub fn start_in(dir: TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::launch(dir, tweak, FIRST_TEL).expect("server starts on the given dir")
    }

    fn launch(
        dir: TempDir,
        tweak: impl FnOnce(&mut Config),
        next_tel: u64,
    ) -> Result<TestServer, StartError> {
        TestServer::launch_on(dir, tweak, next_tel, None)
    }

    fn launch_on(
        dir: TempDir,
        tweak: impl FnOnce(&mut Config),
        next_tel: u64,
        redis: Option<redis::RedisServer>,
    ) -> Result<TestServer, StartError> {
        let mut config = test_config(dir.path());
        tweak(&mut config);
        // The embedded suites once more, on two cluster nodes: every call
        // below alternates between them.
        let redis = match redis {
            Some(redis) => Some(redis),
            None if cluster_env() && config.redis.is_none() => {
                Some(redis::RedisServer::start_temp())
            }
            None => None,
        };
        let mut second = None;
        if let Some(redis) = &redis {
            let url = chatroom::redis::RedisUrl::parse(&redis.url()).expect("a redis url");
            config.redis = Some(url);
            second = Some(
                Server::bind(config.clone())?
                    .spawn()
                    .expect("spawn the second node"),
            );
        }
        let server = Server::bind(config)?
            .spawn()
            .expect("spawn the reactor thread");
        for node in [Some(&server), second.as_ref()].into_iter().flatten() {
            if redis.is_some() {
                redis::wait_healthz(node.http_addr(), 200, "a cluster node");
            }
        }
        Ok(TestServer {
            server,
            second,
            redis,
            turn: std::sync::atomic::AtomicUsize::new(0),
            dir,
            agent: agent(),
            next_tel: AtomicU64::new(next_tel),
        })
    }

    /// Stops the server and hands back its data directory.
    pub fn stop(self) -> TempDir {
        self.stop_keeping_redis().0
    }

    fn stop_keeping_redis(self) -> (TempDir, Option<redis::RedisServer>) {
        let TestServer {
            server,
            second,
            redis,
            dir,
            ..
        } = self;
        server.stop().expect("server stops cleanly");
        if let Some(second) = second {
            second.stop().expect("the second node stops cleanly");
        }
        (dir, redis)
    }

    /// Stops the server (a clean shutdown: pending writes finish) and
    /// starts a new one on the same data directory, the test configuration
    /// with `tweak` applied. Phone numbers keep counting, so users
    /// registered after the restart do not collide with earlier ones.
    pub fn restart_with(self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let next_tel = self.next_tel.load(Ordering::Relaxed);
        let (dir, redis) = self.stop_keeping_redis();
        TestServer::launch_on(dir, tweak, next_tel, redis).expect("the restarted server starts")
    }

    /// The node the next call goes to: the one node, or in turn each of
    /// a cluster's two.
    fn node(&self) -> &RunningServer {
        match &self.second {
            Some(second) if self.turn.fetch_add(1, Ordering::Relaxed) % 2 == 1 => second,
            _ => &self.server,
        }
    }

    /// The HTTP API (which also upgrades to WebSocket at `/ws`).
    pub fn http_addr(&self) -> SocketAddr {
        self.node().http_addr()
    }

    /// The WebSocket chat listener.
    pub fn ws_addr(&self) -> SocketAddr {
        self.node().ws_addr()
    }

    /// Every node's HTTP API, for what each counts on its own (metrics).
    pub fn each_http_addr(&self) -> Vec<SocketAddr> {
        [Some(&self.server), self.second.as_ref()]
            .into_iter()
            .flatten()
            .map(RunningServer::http_addr)
            .collect()
    }

    /// Whether this is the two-node cluster of `CHATROOM_TEST_CLUSTER=1`.
    pub fn is_cluster(&self) -> bool {
        self.second.is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr(), path)
    }

    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.http_addr())
    }

    /// POSTs a form to the API; returns the status and the JSON body.
    pub fn post(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut response = self
            .agent
            .post(self.url(path))
            .send_form(params.iter().copied())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("POST {path} body: {e}"));
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("POST {path}: body is not JSON ({e}): {body}"));
        (status, json)
    }

    /// POSTs and returns the `res` string, insisting on status 200.
    pub fn res(&self, path: &str, params: &[(&str, &str)]) -> String {
        let (status, body) = self.post(path, params);
        assert_eq!(status, 200, "POST {path} {params:?}: {body}");
        body["res"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {path}: no res in {body}"))
            .to_string()
    }

    /// `GET /healthz` answers ok: the HTTP side is alive.
    pub fn assert_healthy(&self) {
        let mut response = self
            .agent
            .get(self.url("/healthz"))
            .call()
            .expect("GET /healthz");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "ok");
    }

    /// Registers a user (phone number generated, password "secret123").
    /// Returns the phone number.
    pub fn register(&self, name: &str, avatar: &str) -> String {
        let tel = self.next_tel.fetch_add(1, Ordering::Relaxed).to_string();
        let mut params = vec![
            ("user_tel", tel.as_str()),
            ("user_name", name),
            ("user_password", "secret123"),
        ];
        if !avatar.is_empty() {
            params.push(("user_avatar_url", avatar));
        }
        assert_eq!(
            self.res("/auth/register", &params),
            "register successfully",
            "register {name}"
        );
        tel
    }

    /// Registers a user and logs in; returns the token.
    pub fn register_with_token(&self, name: &str, avatar: &str) -> String {
        let tel = self.register(name, avatar);
        let (status, body) = self.post(
            "/auth/login",
            &[("user_tel", &tel), ("user_password", "secret123")],
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["res"], "login successfully", "{body}");
        body["data"]["token"]
            .as_str()
            .expect("token in login data")
            .to_string()
    }

    pub fn create_room(&self, name: &str) {
        assert_eq!(
            self.res("/chatroom/create", &[("room_name", name)]),
            "chatroom create successfully"
        );
    }

    pub fn create_room_with_capacity(&self, name: &str, capacity: u32) {
        let capacity = capacity.to_string();
        assert_eq!(
            self.res(
                "/chatroom/create",
                &[("room_name", name), ("capacity", &capacity)]
            ),
            "chatroom create successfully"
        );
    }

    /// `/chatroom/room`: status 1 admits, 0 releases. Returns `res`.
    pub fn room(&self, room: &str, user: &str, status: u8) -> String {
        let status = status.to_string();
        self.res(
            "/chatroom/room",
            &[
                ("room_name", room),
                ("user_name", user),
                ("status", &status),
            ],
        )
    }

    /// The population `/chatroom/list` reports for a room, checking both
    /// shapes agree.
    pub fn population(&self, room: &str) -> u64 {
        let (status, body) = self.post("/chatroom/list", &[]);
        assert_eq!(status, 200, "{body}");
        let rooms = body["rooms"].as_array().expect("rooms array");
        let room_list = body["room_list"].as_array().expect("room_list array");
        let a = rooms
            .iter()
            .find(|r| r["name"] == room)
            .unwrap_or_else(|| panic!("room {room} not in {body}"))["population"]
            .as_u64()
            .expect("population");
        let b = room_list
            .iter()
            .find(|r| r["room_name"] == room)
            .unwrap_or_else(|| panic!("room {room} not in {body}"))["population"]
            .as_u64()
            .expect("population");
        assert_eq!(a, b, "rooms and room_list disagree: {body}");
        a
    }

    /// Polls `/chatroom/list` until the room's population is `expected`.
    pub fn wait_population(&self, room: &str, expected: u64) {
        let deadline = Instant::now() + POLL_DEADLINE;
        loop {
            let population = self.population(room);
            if population == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "population of {room} stayed {population}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// Ordinary calls through ureq
// ---------------------------------------------------------------------------

/// A response as the independent client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `res` string of the body.
    pub fn res(&self) -> String {
        match self.json().get("res") {
            Some(Value::String(s)) => s.clone(),
            other => panic!("no string `res` in {:?} (got {other:?})", self.body),
        }
    }

    /// The `error` string of a 400 body.
    pub fn error(&self) -> String {
        match self.json().get("error") {
            Some(Value::String(s)) => s.clone(),
            other => panic!("no string `error` in {:?} (got {other:?})", self.body),
        }
    }

    /// Asserts a 400 `invalid parameters` whose error names `field`.
    pub fn assert_invalid(&self, field: &str) {
        assert_eq!(self.status, 400, "expected 400 for bad {field}: {self:?}");
        assert_eq!(self.res(), "invalid parameters", "{self:?}");
        let error = self.error();
        assert!(
            error.contains(field),
            "error {error:?} does not name {field}"
        );
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(IO_GUARD))
        .build()
        .new_agent()
}

fn into_reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("HTTP call succeeds at the transport level");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                v.to_str().unwrap_or("<non-ascii>").to_string(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .read_to_string()
        .expect("response body is readable text");
    Reply {
        status,
        headers,
        body,
    }
}

/// A GET with extra request headers.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    into_reply(request.call())
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    into_reply(agent().get(format!("http://{addr}{path}")).call())
}

pub fn get_query(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Reply {
    into_reply(
        agent()
            .get(format!("http://{addr}{path}"))
            .query_pairs(params.iter().copied())
            .call(),
    )
}

pub fn post_form(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Reply {
    into_reply(
        agent()
            .post(format!("http://{addr}{path}"))
            .send_form(params.iter().copied()),
    )
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    post_body(
        addr,
        path,
        "application/json",
        body.to_string().into_bytes(),
    )
}

pub fn post_body(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    into_reply(
        agent()
            .post(format!("http://{addr}{path}"))
            .header("Content-Type", content_type)
            .send(body),
    )
}

/// A `multipart/form-data` body of text fields, and its Content-Type.
pub fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "----chatroom-test-boundary-7MA4YWxk";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

// ---------------------------------------------------------------------------
// Domain helpers (form POSTs)
// ---------------------------------------------------------------------------

pub fn register(addr: SocketAddr, tel: &str, name: &str, password: &str) -> Reply {
    post_form(
        addr,
        "/auth/register",
        &[
            ("user_tel", tel),
            ("user_name", name),
            ("user_password", password),
        ],
    )
}

pub fn register_ok(addr: SocketAddr, tel: &str, name: &str, password: &str) {
    let reply = register(addr, tel, name, password);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.res(), "register successfully", "{reply:?}");
}

pub fn login(addr: SocketAddr, tel: &str, password: &str) -> Reply {
    post_form(
        addr,
        "/auth/login",
        &[("user_tel", tel), ("user_password", password)],
    )
}

pub fn create_room(addr: SocketAddr, name: &str) -> Reply {
    post_form(addr, "/chatroom/create", &[("room_name", name)])
}

pub fn create_room_ok(addr: SocketAddr, name: &str) {
    let reply = create_room(addr, name);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.res(), "chatroom create successfully", "{reply:?}");
}

pub fn create_room_with_capacity(addr: SocketAddr, name: &str, capacity: &str) -> Reply {
    post_form(
        addr,
        "/chatroom/create",
        &[("room_name", name), ("capacity", capacity)],
    )
}

pub fn room(addr: SocketAddr, room_name: &str, user_name: &str, status: &str) -> Reply {
    post_form(
        addr,
        "/chatroom/room",
        &[
            ("room_name", room_name),
            ("user_name", user_name),
            ("status", status),
        ],
    )
}

/// `res` of a `/chatroom/room` call that must be a 200.
pub fn room_res(addr: SocketAddr, room_name: &str, user_name: &str, status: &str) -> String {
    let reply = room(addr, room_name, user_name, status);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.res()
}

pub fn list(addr: SocketAddr) -> Value {
    let reply = get(addr, "/chatroom/list");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// The rooms of a list reply as (name, population), checking that the
/// `rooms` and `room_list` shapes agree.
pub fn rooms_of(list: &Value) -> Vec<(String, u64)> {
    let rooms = list["rooms"].as_array().expect("`rooms` is an array");
    let room_list = list["room_list"]
        .as_array()
        .expect("`room_list` is an array");
    let a: Vec<(String, u64)> = rooms
        .iter()
        .map(|r| {
            (
                r["name"]
                    .as_str()
                    .expect("rooms[].name is a string")
                    .to_string(),
                r["population"]
                    .as_u64()
                    .expect("rooms[].population is an integer"),
            )
        })
        .collect();
    let b: Vec<(String, u64)> = room_list
        .iter()
        .map(|r| {
            (
                r["room_name"]
                    .as_str()
                    .expect("room_list[].room_name is a string")
                    .to_string(),
                r["population"]
                    .as_u64()
                    .expect("room_list[].population is an integer"),
            )
        })
        .collect();
    assert_eq!(a, b, "`rooms` and `room_list` disagree: {list}");
    a
}

/// The population the list shows for `name`, if the room is listed.
pub fn population(addr: SocketAddr, name: &str) -> Option<u64> {
    rooms_of(&list(addr))
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
}

/// Polls `condition` until it holds or the overall deadline passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        if condition() {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn res(&self) -> String {
        self.json()["res"]
            .as_str()
            .unwrap_or_else(|| panic!("no `res` in {:?}", self.text()))
            .to_string()
    }

    /// Whether the server announced it will close the connection.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// A client connection that reads responses with exact framing: status line,
/// headers, then exactly Content-Length bytes; leftovers stay buffered for
/// the next response.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_GUARD)).unwrap();
        stream.set_write_timeout(Some(IO_GUARD)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
        self.stream.flush().unwrap();
    }

    /// Writes, tolerating a server that already closed (it may answer an
    /// oversize request before reading all of it).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one byte per write.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.stream
                .write_all(std::slice::from_ref(byte))
                .expect("write byte");
            self.stream.flush().unwrap();
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn read_head_block(&mut self) -> RawResponse {
        let end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "reading a response head failed ({e}); got so far {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("ASCII response head");
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        RawResponse {
            version,
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads a response head only (for HEAD requests and interim 1xx).
    pub fn read_head(&mut self) -> RawResponse {
        self.read_head_block()
    }

    /// Reads one complete response framed by Content-Length.
    pub fn read_response(&mut self) -> RawResponse {
        let mut response = self.read_head_block();
        if response.status < 200 || response.status == 204 || response.status == 304 {
            return response;
        }
        let length = response
            .content_length()
            .unwrap_or_else(|| panic!("response without Content-Length: {response:?}"));
        while self.buf.len() < length {
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed after {} of {length} body bytes",
                    self.buf.len()
                ),
                Ok(_) => {}
                Err(e) => panic!("reading a response body failed: {e}"),
            }
        }
        response.body = self.buf.drain(..length).collect();
        response
    }

    /// True if nothing is buffered and nothing is readable right now.
    pub fn nothing_received_yet(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let result = self.stream.peek(&mut byte);
        self.stream.set_nonblocking(false).unwrap();
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Ok(_) => false,
            Err(e) => panic!("peek failed: {e}"),
        }
    }

    /// Asserts that the server closes the connection without sending any
    /// further bytes. A reset counts as closed.
    pub fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        loop {
            match self.fill() {
                Ok(0) => return,
                Ok(_) => panic!(
                    "server sent more bytes instead of closing: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("connection was not closed by the server ({e})"),
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Sends a request and reads its response.
    pub fn roundtrip(&mut self, request: &[u8]) -> RawResponse {
        self.send(request);
        self.read_response()
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A raw request with `Host`, optional extra header lines and a body with
/// Content-Length when non-empty.
pub fn raw_request(method: &str, target: &str, extra_headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for header in extra_headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A urlencoded form POST as raw bytes.
pub fn raw_form_post(target: &str, body: &str, extra_headers: &[&str]) -> Vec<u8> {
    let mut headers = vec!["Content-Type: application/x-www-form-urlencoded"];
    headers.extend_from_slice(extra_headers);
    raw_request("POST", target, &headers, body.as_bytes())
}

/// Checks the headers SPEC §2.1 puts on every JSON response.
pub fn assert_common_headers(response: &RawResponse, cors: &str) {
    assert_eq!(
        response.header("content-type"),
        Some(JSON_TYPE),
        "Content-Type of {response:?}"
    );
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some(cors),
        "Access-Control-Allow-Origin of {response:?}"
    );
    assert_eq!(response.header_count("content-type"), 1, "{response:?}");
    assert_eq!(response.header_count("content-length"), 1, "{response:?}");
    assert_eq!(
        response.header_count("access-control-allow-origin"),
        1,
        "{response:?}"
    );
}

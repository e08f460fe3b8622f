//! Helpers for the fault and abuse suites: the real binary as a child
//! process (killed on every path), HTTP calls that report transport failures
//! instead of panicking, WebSocket chat clients, `/metrics` reading and a
//! small deterministic byte generator.
//!
//! Test files that use this module also declare `mod common;` (the shared
//! helpers of the HTTP suites), which this module builds on.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::common::{IO_GUARD, POLL_DEADLINE};

/// Flags every child gets: loopback, free ports, cheap password hashing.
pub const CHEAP_ARGON2: [&str; 4] = ["--argon2-memory-kib", "8", "--argon2-iterations", "1"];

// ---------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------

/// A `chatroom` process. Dropping it kills it (SIGKILL) and reaps it, so no
/// test path leaves a server running.
pub struct ChildServer {
    child: Child,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// Lines of the log already present when the server was ready.
    pub ready_log_len: usize,
}

/// The arguments for a child on `dir` with ephemeral loopback ports.
pub fn server_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--http".into(),
        "127.0.0.1:0".into(),
        "--ws".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if !extra.contains(&"--hash-threads") {
        args.extend(["--hash-threads".to_string(), "2".to_string()]);
    }
    if !extra.iter().any(|a| a.starts_with("--argon2")) {
        args.extend(CHEAP_ARGON2.iter().map(|s| s.to_string()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn listening_addr(lines: &[String], marker: &str) -> Option<SocketAddr> {
    lines.iter().find_map(|line| {
        let at = line.find(marker)?;
        line[at + marker.len()..].trim().parse().ok()
    })
}

impl ChildServer {
    /// Starts the binary on `dir` and waits until both listeners are logged.
    pub fn start(dir: &Path, extra: &[&str]) -> ChildServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatroom"));
        command.args(server_args(dir, extra));
        ChildServer::launch(command).unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Starts the binary through `sh -c '<prelude>; exec "$0" "$@"'`, so the
    /// prelude can set signal dispositions and resource limits that the
    /// server inherits; `exec` keeps the pid the server's.
    pub fn start_wrapped(prelude: &str, dir: &Path, extra: &[&str]) -> ChildServer {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_chatroom"))
            .args(server_args(dir, extra));
        ChildServer::launch(command).unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Spawns `command` and waits for the listening lines; on an early exit
    /// returns the log.
    pub fn launch(mut command: Command) -> Result<ChildServer, String> {
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the chatroom binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        // The log is drained all the time: a full pipe would block the
        // server's logging, and so the server.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = ChildServer {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            ws: "0.0.0.0:0".parse().unwrap(),
            log,
            reader: Some(reader),
            ready_log_len: 0,
        };
        let deadline = Instant::now() + POLL_DEADLINE;
        loop {
            {
                let lines = server.log.lock().unwrap();
                let http = listening_addr(&lines, "HTTP API listening on ");
                let ws = listening_addr(&lines, "WebSocket chat listening on ");
                if let (Some(http), Some(ws)) = (http, ws) {
                    let ready_log_len = lines.len();
                    drop(lines);
                    server.http = http;
                    server.ws = ws;
                    server.ready_log_len = ready_log_len;
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                // Let the reader take the last lines.
                if let Some(reader) = server.reader.take() {
                    let _ = reader.join();
                }
                return Err(format!(
                    "exited with {status} before listening; log:\n{}",
                    server.log_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not listening after {POLL_DEADLINE:?}; log:\n{}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits for the process to exit. `limit` is a safety net against a
    /// hang, not a measurement.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Log lines at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP that tolerates a dead server
// ---------------------------------------------------------------------------

/// Status and body of an HTTP call that completed.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn res(&self) -> String {
        self.json()["res"]
            .as_str()
            .unwrap_or_else(|| panic!("no `res` in {:?}", self.body))
            .to_string()
    }

    pub fn is(&self, status: u16, res: &str) -> bool {
        self.status == status
            && serde_json::from_str::<Value>(&self.body)
                .ok()
                .is_some_and(|v| v["res"] == res)
    }
}

/// A form POST; `Err` when the transport failed (refused, reset, cut short).
pub fn try_post(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Result<Answer, String> {
    let agent = crate::common::agent();
    let mut response = agent
        .post(format!("http://{addr}{path}"))
        .send_form(params.iter().copied())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Answer { status, body })
}

pub fn post(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Answer {
    try_post(addr, path, params).unwrap_or_else(|e| panic!("POST {path} failed: {e}"))
}

pub fn try_register(addr: SocketAddr, tel: &str, name: &str, pw: &str) -> Result<Answer, String> {
    try_post(
        addr,
        "/auth/register",
        &[
            ("user_tel", tel),
            ("user_name", name),
            ("user_password", pw),
        ],
    )
}

pub fn register(addr: SocketAddr, tel: &str, name: &str, pw: &str) -> Answer {
    try_register(addr, tel, name, pw).unwrap_or_else(|e| panic!("register {tel} failed: {e}"))
}

pub fn login(addr: SocketAddr, tel: &str, pw: &str) -> Answer {
    post(
        addr,
        "/auth/login",
        &[("user_tel", tel), ("user_password", pw)],
    )
}

pub fn try_create_room(addr: SocketAddr, name: &str) -> Result<Answer, String> {
    try_post(addr, "/chatroom/create", &[("room_name", name)])
}

pub fn create_room(addr: SocketAddr, name: &str) -> Answer {
    try_create_room(addr, name).unwrap_or_else(|e| panic!("create {name} failed: {e}"))
}

pub fn room_names(addr: SocketAddr) -> Vec<String> {
    crate::common::rooms_of(&crate::common::list(addr))
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

pub fn healthz_ok(addr: SocketAddr) -> bool {
    let reply = crate::common::get(addr, "/healthz");
    reply.status == 200 && reply.json() == json!({"status": "ok"})
}

/// The `/metrics` text.
pub fn metrics_text(addr: SocketAddr) -> String {
    let reply = crate::common::get(addr, "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// One sample of `/metrics` by its full name (with labels, if any).
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = metrics_text(addr);
    metric_in(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The status of a fresh `GET /healthz` on its own connection, or `None`
/// when the connection ended without a complete status line.
pub fn fresh_get_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(IO_GUARD)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let (bytes, _) = read_to_end_lossy(&mut stream);
    let text = String::from_utf8_lossy(&bytes);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

// ---------------------------------------------------------------------------
// JSON-lines data files
// ---------------------------------------------------------------------------

/// The records of a data file (which must parse completely, line by line).
pub fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} does not end with a newline after start-up",
        path.display()
    );
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: not JSON ({e}): {line:?}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Asserts that no value of `field` appears twice among `records`.
pub fn assert_unique(records: &[Value], field: &str, what: &str) {
    let mut seen = std::collections::HashSet::new();
    for record in records {
        let value = record[field].as_str().unwrap_or_else(|| {
            panic!("{what} record without a string {field}: {record}");
        });
        assert!(
            seen.insert(value.to_string()),
            "{what} {value:?} is stored twice"
        );
    }
}

// ---------------------------------------------------------------------------
// WebSocket chat clients
// ---------------------------------------------------------------------------

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket; `Err` if the TCP connect or the handshake fails.
pub fn try_ws_connect(addr: SocketAddr) -> Result<Ws, String> {
    try_ws_connect_path(addr, "/")
}

/// A WebSocket at `path` (the API port upgrades only at `/ws`).
pub fn try_ws_connect_path(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_GUARD)).unwrap();
    stream.set_write_timeout(Some(IO_GUARD)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, _response) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).map_err(|e| e.to_string())?;
    Ok(ws)
}

pub fn ws_connect(addr: SocketAddr) -> Ws {
    try_ws_connect(addr).unwrap_or_else(|e| panic!("WebSocket to {addr}: {e}"))
}

/// A client packet as JSON text.
pub fn packet(kind: &str, user: &str, room: &str, msg: &str) -> String {
    json!({
        "type": kind,
        "data": {"user": {"user_name": user, "user_avatar": ""}, "room_name": room, "msg": msg}
    })
    .to_string()
}

pub fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).expect("send a WebSocket text");
}

/// What a client read: a chat packet, or the end of the connection.
#[derive(Debug)]
pub enum Incoming {
    Packet(Value),
    /// A close frame, with its code.
    Closed(Option<u16>),
    /// The connection ended without a close frame: EOF or a reset.
    Ended(String),
    /// Anything else, a read timeout included.
    Error(String),
}

fn ended_or_error(error: tungstenite::Error) -> Incoming {
    use std::io::ErrorKind;
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Incoming::Ended(error.to_string())
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Incoming::Ended(error.to_string())
        }
        tungstenite::Error::Io(ref e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            ) =>
        {
            Incoming::Ended(error.to_string())
        }
        other => Incoming::Error(other.to_string()),
    }
}

/// Reads the next text packet, skipping pings and pongs.
pub fn next_incoming(ws: &mut Ws) -> Incoming {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text:?}"));
                return Incoming::Packet(value);
            }
            Ok(Message::Close(frame)) => {
                return Incoming::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
            }
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
            Ok(Message::Binary(data)) => panic!("server sent a binary frame: {data:?}"),
            Err(e) => return ended_or_error(e),
        }
    }
}

/// Reads the next packet, which must be a packet.
pub fn next_packet(ws: &mut Ws) -> Value {
    match next_incoming(ws) {
        Incoming::Packet(value) => value,
        other => panic!("expected a packet, got {other:?}"),
    }
}

/// Joins `room` as `user` and reads packets until this join is announced.
pub fn join(ws: &mut Ws, user: &str, room: &str) {
    send_text(ws, packet("join", user, room, ""));
    loop {
        let value = next_packet(ws);
        if value["type"] == "error" {
            panic!("join {room} as {user} refused: {value}");
        }
        if value["type"] == "user"
            && value["data"]["user"]["user_name"] == user
            && value["data"]["room_name"] == room
            && (value["data"]["msg"] == "join" || value["data"]["msg"] == "create")
        {
            return;
        }
    }
}

/// Sends a chat message and reads until its echo comes back.
pub fn say_and_hear(ws: &mut Ws, user: &str, room: &str, msg: &str) {
    send_text(ws, packet("msg", user, room, msg));
    loop {
        let value = next_packet(ws);
        assert_ne!(value["type"], "error", "message refused: {value}");
        if value["type"] == "msg" && value["data"]["msg"] == msg {
            assert_eq!(value["data"]["user"]["user_name"], user, "{value}");
            return;
        }
    }
}

/// Reads until the close frame (or the end of the connection).
pub fn read_until_closed(ws: &mut Ws) -> Incoming {
    loop {
        match next_incoming(ws) {
            Incoming::Packet(_) => {}
            end => return end,
        }
    }
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// Reads until EOF, a reset or the guard timeout; returns what arrived and
/// whether the connection ended (EOF or reset) rather than timing out.
pub fn read_to_end_lossy(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (out, true)
            }
            Err(_) => return (out, false),
        }
    }
}

/// Writes ignoring errors (the server may hang up on garbage at any time).
pub fn write_lossy(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).is_ok()
}

/// A tiny deterministic generator (xorshift64*) for garbage bytes.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A phone number no other call in this test process has used.
pub fn unique_tel() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "2{:08}{:05}",
        std::process::id() % 100_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

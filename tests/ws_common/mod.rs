//! Shared helpers for the WebSocket integration tests: an in-process server,
//! a small HTTP client for the API, a chat client over `tungstenite`, and a
//! raw frame-level client for transport edge cases.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The safety net on every blocking read: a test that waits this long has
/// failed, it is not a synchronisation mechanism.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Overall deadline for polling loops.
pub const POLL_DEADLINE: Duration = Duration::from_secs(15);

/// A server running in-process on free ports, with its own data directory.
pub struct TestServer {
    // Field order matters: the server stops before its directory goes.
    pub server: chatroom::RunningServer,
    pub dir: tempfile::TempDir,
    agent: ureq::Agent,
    next_tel: AtomicU64,
}

/// The configuration every test starts from: free ports, a temp data dir,
/// cheap password hashing.
pub fn base_config(dir: &tempfile::TempDir) -> chatroom::Config {
    chatroom::Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        ..chatroom::Config::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut chatroom::Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = base_config(&dir);
        adjust(&mut config);
        let server = chatroom::Server::bind(config)
            .expect("bind server")
            .spawn()
            .expect("spawn server");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(READ_TIMEOUT))
            .build()
            .into();
        TestServer {
            server,
            dir,
            agent,
            next_tel: AtomicU64::new(13_800_000_000),
        }
    }

    /// Stops the server (a clean shutdown: pending writes finish) and
    /// starts a new one on the same data directory, the base configuration
    /// with `adjust` applied. Phone numbers keep counting, so users
    /// registered after the restart do not collide with earlier ones.
    pub fn restart_with(self, adjust: impl FnOnce(&mut chatroom::Config)) -> TestServer {
        let TestServer {
            server,
            dir,
            agent,
            next_tel,
        } = self;
        server.stop().expect("the server stops cleanly");
        let mut config = base_config(&dir);
        adjust(&mut config);
        let server = chatroom::Server::bind(config)
            .expect("bind the restarted server")
            .spawn()
            .expect("spawn the restarted server");
        TestServer {
            server,
            dir,
            agent,
            next_tel,
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.server.ws_addr()
    }

    /// POSTs a form to the API; returns the status and the JSON body.
    pub fn post(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("http://{}{}", self.http_addr(), path);
        let mut response = self
            .agent
            .post(&url)
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
        let url = format!("http://{}/healthz", self.http_addr());
        let mut response = self.agent.get(&url).call().expect("GET /healthz");
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

    /// A chat client on the WebSocket port.
    pub fn client(&self) -> Client {
        Client::connect(self.ws_addr(), "/")
    }

    /// A chat client on the WebSocket port with `?token=` in the URL.
    pub fn client_with_url_token(&self, token: &str) -> Client {
        Client::connect(self.ws_addr(), &format!("/?token={token}"))
    }
}

/// Current Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A client packet.
pub fn packet(kind: &str, user: &str, avatar: &str, room: &str, msg: &str) -> Value {
    json!({
        "type": kind,
        "data": {
            "user": {"user_name": user, "user_avatar": avatar},
            "room_name": room,
            "msg": msg,
        }
    })
}

/// A client packet carrying `data.token`.
pub fn packet_with_token(kind: &str, user: &str, room: &str, msg: &str, token: &str) -> Value {
    let mut p = packet(kind, user, "", room, msg);
    p["data"]["token"] = json!(token);
    p
}

/// Checks a server packet's full shape and returns it.
pub fn assert_shape(p: &Value) {
    let kind = p["type"].as_str().unwrap_or_else(|| panic!("no type: {p}"));
    assert!(
        matches!(kind, "user" | "msg" | "error"),
        "unknown server type in {p}"
    );
    let data = &p["data"];
    assert!(data.is_object(), "no data object: {p}");
    assert!(data["user"]["user_name"].is_string(), "user_name: {p}");
    assert!(data["user"]["user_avatar"].is_string(), "user_avatar: {p}");
    assert!(data["room_name"].is_string(), "room_name: {p}");
    assert!(data["msg"].is_string(), "msg: {p}");
    if kind == "msg" {
        let ts = data["ts"]
            .as_u64()
            .unwrap_or_else(|| panic!("msg without ts: {p}"));
        let now = unix_ms();
        let day = 86_400_000;
        assert!(
            ts + day > now && ts < now + day,
            "ts {ts} is not within a day of {now}: {p}"
        );
    }
}

/// A chat client over `tungstenite`.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{addr}{path}");
        let (ws, response) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("handshake at {url}: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        Client { ws }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send text");
    }

    pub fn send(&mut self, packet: &Value) {
        self.send_text(&packet.to_string());
    }

    /// Queues a packet without flushing (for pipelining several at once).
    pub fn queue(&mut self, packet: &Value) {
        self.ws
            .write(Message::text(packet.to_string()))
            .expect("queue text");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    /// The next data message, as JSON with its shape checked. Pings and
    /// pongs are skipped (tungstenite answers pings itself).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let p: Value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON ({e}): {text}"));
                    assert_shape(&p);
                    return p;
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text packet, got {other:?}"),
                Err(e) => panic!("expected a text packet, got error {e}"),
            }
        }
    }

    /// Receives a packet and checks type, user, room and msg.
    pub fn expect(&mut self, kind: &str, user: &str, room: &str, msg: &str) -> Value {
        let p = self.recv();
        assert_eq!(p["type"], kind, "type of {p}");
        assert_eq!(p["data"]["user"]["user_name"], user, "user of {p}");
        assert_eq!(p["data"]["room_name"], room, "room of {p}");
        assert_eq!(p["data"]["msg"], msg, "msg of {p}");
        p
    }

    /// Receives an error packet with the given string and echo fields.
    pub fn expect_error(&mut self, error: &str, user: &str, room: &str) -> Value {
        self.expect("error", user, room, error)
    }

    pub fn join(&mut self, user: &str, room: &str) {
        self.send(&packet("join", user, "", room, ""));
    }

    pub fn leave(&mut self, user: &str, room: &str) {
        self.send(&packet("leave", user, "", room, ""));
    }

    pub fn say(&mut self, user: &str, room: &str, msg: &str) {
        self.send(&packet("msg", user, "", room, msg));
    }

    /// Joins and consumes the `user` packet this connection gets back.
    pub fn join_ok(&mut self, user: &str, room: &str) -> Value {
        self.join(user, room);
        let p = self.recv();
        assert_eq!(p["type"], "user", "join of {user} to {room}: {p}");
        assert!(
            p["data"]["msg"] == "join" || p["data"]["msg"] == "create",
            "join of {user} to {room}: {p}"
        );
        assert_eq!(p["data"]["user"]["user_name"], user);
        assert_eq!(p["data"]["room_name"], room);
        p
    }

    /// Sends a message and checks its echo.
    pub fn say_ok(&mut self, user: &str, room: &str, msg: &str) -> Value {
        self.say(user, room, msg);
        self.expect("msg", user, room, msg)
    }

    /// A clean close: sends close 1000 and waits for the server's echo.
    pub fn close(mut self) {
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .expect("send close");
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) | Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("closing: {e}"),
            }
        }
    }

    /// Drops the TCP connection without a close frame.
    pub fn vanish(self) {
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
    }

    /// Reads until the server closes the connection; returns the close
    /// code if a close frame came.
    pub fn read_until_closed(&mut self) -> Option<u16> {
        let mut code = None;
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => code = frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return code,
            }
        }
    }
}

/// One frame as the raw client decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode == 0x8 && self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("text frame is UTF-8")
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Builds one client frame by hand. `mask` = None sends it unmasked.
pub fn build_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame with a fixed, non-trivial key.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    build_frame(true, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// The result of reading a raw HTTP response (a refused handshake).
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw TCP client that speaks WebSocket frames by hand.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A syntactically valid client key.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl RawWs {
    pub fn tcp(addr: SocketAddr) -> RawWs {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawWs {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends an HTTP request head made of `path` and `headers` (each a full
    /// `Name: value` line).
    pub fn send_request(&mut self, path: &str, headers: &[&str]) {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).unwrap();
    }

    /// The standard upgrade headers, with the given overrides for version
    /// and key, plus extra lines.
    pub fn upgrade_headers<'a>(version: &'a str, key: &'a str) -> Vec<String> {
        vec![
            "Upgrade: websocket".to_string(),
            "Connection: Upgrade".to_string(),
            format!("Sec-WebSocket-Key: {key}"),
            format!("Sec-WebSocket-Version: {version}"),
        ]
    }

    /// Reads an HTTP response head, and a body by Content-Length.
    pub fn read_reply(&mut self) -> HttpReply {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            assert!(self.fill().expect("read response") > 0, "EOF in head");
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        self.buf.drain(..head_end);
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        while self.buf.len() < len {
            assert!(self.fill().expect("read body") > 0, "EOF in body");
        }
        let body = self.buf.drain(..len).collect();
        HttpReply {
            status,
            headers,
            body,
        }
    }

    /// Connects and completes a handshake at `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let mut raw = RawWs::tcp(addr);
        let headers = RawWs::upgrade_headers("13", KEY);
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        raw.send_request(path, &headers);
        let reply = raw.read_reply();
        assert_eq!(reply.status, 101, "handshake: {reply:?}");
        assert_eq!(
            reply.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key"
        );
        raw
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write frame");
    }

    pub fn send_packet(&mut self, packet: &Value) {
        self.send_raw(&masked(OP_TEXT, packet.to_string().as_bytes()));
    }

    /// The next frame; `Ok(None)` on a clean EOF, `Err` on a reset or the
    /// safety-net timeout.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            if self.fill()? == 0 {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return Ok(None);
            }
        }
    }

    /// The next frame, insisting there is one.
    pub fn frame(&mut self) -> Frame {
        self.read_frame()
            .expect("read frame")
            .expect("a frame, not EOF")
    }

    /// The next text frame as JSON (control frames other than close are
    /// skipped; a close frame is a failure).
    pub fn recv(&mut self) -> Value {
        loop {
            let frame = self.frame();
            match frame.opcode {
                OP_TEXT => {
                    let p: Value = serde_json::from_str(frame.text()).expect("JSON");
                    assert_shape(&p);
                    return p;
                }
                OP_PING | OP_PONG => continue,
                _ => panic!("expected a text frame, got {frame:?}"),
            }
        }
    }

    /// Reads frames until a close frame; returns its code (`None` for a
    /// close without one). Panics if the connection ends first.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = self.frame();
            if frame.opcode == OP_CLOSE {
                return frame.close_code();
            }
        }
    }

    /// After a close, the server closes TCP: reading returns 0.
    pub fn expect_eof(&mut self) {
        match self.read_frame() {
            Ok(None) => {}
            Ok(Some(frame)) => panic!("expected EOF, got {frame:?}"),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

/// Decodes one server frame (unmasked) from the front of `buf`.
pub fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    assert_eq!(buf[0] & 0x70, 0, "server frame with RSV bits set");
    let opcode = buf[0] & 0x0F;
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, header) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    Some((
        Frame {
            fin,
            opcode,
            payload: buf[header..header + len].to_vec(),
        },
        header + len,
    ))
}

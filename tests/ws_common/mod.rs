//! Shared helpers for the WebSocket integration tests: a chat client over
//! `tungstenite`, and a raw frame-level client for transport edge cases.
//! The server is `common::TestServer`; this module gives it `client()`.
//!
//! Test files that use this module also declare `mod common;`.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::common::TestServer;

/// The safety net on every blocking read: a test that waits this long has
/// failed, it is not a synchronisation mechanism.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Overall deadline for polling loops.
pub const POLL_DEADLINE: Duration = Duration::from_secs(15);

// The WebSocket side of the one in-process server (`common::TestServer`).
impl TestServer {
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

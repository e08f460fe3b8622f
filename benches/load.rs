//! Load benchmarks against the real release binary on loopback.
//!
//! `cargo bench --bench load` runs every scenario; `cargo bench --bench load
//! -- broadcast` runs the ones whose name contains the argument. Each
//! scenario is repeated and the median reported; see BENCHMARKS.md for the
//! method and the numbers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

const RUNS: usize = 5;

struct ServerProcess {
    child: Child,
    http: SocketAddr,
    ws: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn start(extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatroom"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--ws-rate",
                "0",
            ])
            .args(["--argon2-memory-kib", "64", "--argon2-iterations", "1"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "info,chatroom::conn=warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the chatroom binary");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut http = None;
        let mut ws = None;
        while http.is_none() || ws.is_none() {
            let line = lines
                .next()
                .expect("server exited early")
                .expect("log line");
            let address = || line.rsplit(' ').next().and_then(|a| a.parse().ok());
            if line.contains("HTTP API listening on") {
                http = address();
            } else if line.contains("WebSocket chat listening on") {
                ws = address();
            }
        }
        // Keep draining the log so the server never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            http: http.expect("http address"),
            ws: ws.expect("ws address"),
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a keep-alive connection; returns the body.
fn http_request(stream: &mut TcpStream, buffer: &mut Vec<u8>, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).expect("write request");
    loop {
        if let Some(head_end) = buffer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
        {
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= head_end + length {
                let body = buffer[head_end..head_end + length].to_vec();
                buffer.drain(..head_end + length);
                return body;
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "server closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn get(addr: SocketAddr, path_and_query: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: bench\r\n\r\n");
    String::from_utf8(http_request(
        &mut stream,
        &mut Vec::new(),
        request.as_bytes(),
    ))
    .expect("utf-8")
}

/// Opens a WebSocket with a raw handshake; the stream is ready for frames.
fn ws_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("handshake reply");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    stream
}

/// A masked client text frame.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads server frames until `count` have arrived; returns when done.
fn read_frames(stream: &mut TcpStream, count: usize) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut header = [0u8; 2];
    let mut skip = vec![0u8; 64 * 1024];
    for _ in 0..count {
        reader.read_exact(&mut header).expect("frame header");
        let length = match header[1] & 0x7f {
            126 => {
                let mut extended = [0u8; 2];
                reader.read_exact(&mut extended).expect("length");
                u16::from_be_bytes(extended) as usize
            }
            127 => {
                let mut extended = [0u8; 8];
                reader.read_exact(&mut extended).expect("length");
                u64::from_be_bytes(extended) as usize
            }
            n => n as usize,
        };
        reader.read_exact(&mut skip[..length]).expect("payload");
    }
}

fn join_packet(user: &str, room: &str) -> Vec<u8> {
    format!(r#"{{"type":"join","data":{{"user":{{"user_name":"{user}","user_avatar":""}},"room_name":"{room}"}}}}"#)
        .into_bytes()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn report(name: &str, unit: &str, values: Vec<f64>) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<40} median {:>12.0} {unit}   (min {min:.0}, max {max:.0}, {} runs)",
        median(values.clone()),
        values.len()
    );
}

/// One sender, `members` receivers in one room: chat frames delivered per
/// second, counting every recipient's copy.
fn broadcast(members: usize, messages: usize) {
    let server = ServerProcess::start(&["--max-outbound-bytes", "67108864"]);
    let mut results = Vec::new();
    for run in 0..RUNS {
        let room = format!("bench{run}");
        get(
            server.http,
            &format!("/chatroom/create?room_name={room}&capacity=10000"),
        );
        let mut sockets = Vec::new();
        for member in 0..members {
            let name = format!("m{run}x{member}");
            get(
                server.http,
                &format!("/auth/register?user_tel=1{run:02}{member:05}&user_name={name}&user_password=secret1"),
            );
            let mut socket = ws_connect(server.ws);
            socket
                .write_all(&client_frame(&join_packet(&name, &room)))
                .expect("join");
            sockets.push(socket);
        }
        // Each member sees its own join and every later one.
        for (index, socket) in sockets.iter_mut().enumerate() {
            read_frames(socket, members - index);
        }
        let mut sender = sockets.remove(0);
        // The other members' readers, and this thread.
        let start = Arc::new(Barrier::new(sockets.len() + 1));
        let readers: Vec<_> = sockets
            .into_iter()
            .map(|mut socket| {
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    read_frames(&mut socket, messages);
                })
            })
            .collect();
        let sender_name = format!("m{run}x0");
        let frames: Vec<u8> = (0..messages)
            .flat_map(|i| {
                client_frame(
                    format!(
                        r#"{{"type":"msg","data":{{"user":{{"user_name":"{sender_name}"}},"room_name":"{room}","msg":"message number {i} with some text"}}}}"#
                    )
                    .as_bytes(),
                )
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut own = sender.try_clone().expect("clone");
        let echo = thread::spawn(move || read_frames(&mut own, messages));
        sender.write_all(&frames).expect("send");
        for reader in readers {
            reader.join().expect("reader");
        }
        echo.join().expect("echo reader");
        let elapsed = began.elapsed().as_secs_f64();
        results.push((members * messages) as f64 / elapsed);
    }
    report(
        &format!("broadcast {members} members x {messages} msgs"),
        "deliveries/s",
        results,
    );
}

/// Keep-alive HTTP: `/chatroom/list` from `clients` threads.
fn http_keepalive(clients: usize, requests: usize) {
    let server = ServerProcess::start(&[]);
    for i in 0..20 {
        get(server.http, &format!("/chatroom/create?room_name=room{i}"));
    }
    let mut results = Vec::new();
    for _ in 0..RUNS {
        let start = Arc::new(Barrier::new(clients + 1));
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let start = Arc::clone(&start);
                let addr = server.http;
                thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    let mut buffer = Vec::new();
                    let request = b"GET /chatroom/list HTTP/1.1\r\nHost: bench\r\n\r\n";
                    start.wait();
                    for _ in 0..requests {
                        http_request(&mut stream, &mut buffer, request);
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for worker in workers {
            worker.join().expect("worker");
        }
        results.push((clients * requests) as f64 / began.elapsed().as_secs_f64());
    }
    report(
        &format!("http keep-alive list, {clients} clients"),
        "requests/s",
        results,
    );
}

/// Resident memory the server gains per idle connection.
fn idle_memory(connections: usize) {
    let mut ws_results = Vec::new();
    let mut http_results = Vec::new();
    for _ in 0..RUNS {
        let server = ServerProcess::start(&[]);
        get(server.http, "/healthz");
        let before = server.rss_kib();
        let sockets: Vec<TcpStream> = (0..connections).map(|_| ws_connect(server.ws)).collect();
        get(server.http, "/healthz");
        let after_ws = server.rss_kib();
        let http: Vec<TcpStream> = (0..connections)
            .map(|_| {
                let mut stream = TcpStream::connect(server.http).expect("connect");
                http_request(
                    &mut stream,
                    &mut Vec::new(),
                    b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n",
                );
                stream
            })
            .collect();
        let after_http = server.rss_kib();
        ws_results.push((after_ws.saturating_sub(before) * 1024) as f64 / connections as f64);
        http_results.push((after_http.saturating_sub(after_ws) * 1024) as f64 / connections as f64);
        drop(sockets);
        drop(http);
    }
    report(
        &format!("idle WebSocket, {connections} connections"),
        "bytes/conn",
        ws_results,
    );
    report(
        &format!("idle HTTP keep-alive, {connections} connections"),
        "bytes/conn",
        http_results,
    );
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!("chatroom load benchmarks: release binary on loopback, {RUNS} runs each, medians");
    if wanted("broadcast") {
        broadcast(10, 20_000);
        broadcast(100, 2_000);
        broadcast(500, 200);
    }
    if wanted("http") {
        http_keepalive(1, 20_000);
        http_keepalive(4, 10_000);
    }
    if wanted("memory") {
        idle_memory(2_000);
    }
}

//! Hostile clients against an in-process server: slowloris heads, a
//! WebSocket member that never reads, the connection cap, a WebSocket
//! flood, login guessing with an expensive hash, and plain garbage. In every
//! case the server must keep serving well-behaved clients correctly and
//! shed the abusers by the rules of SPEC §2.1, §4, §5 and §7.

mod common;
mod fault_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{find, wait_until, RawConn, TestServer, IO_GUARD, POLL_DEADLINE};
use fault_support::*;

/// Registers a few users and reads them back, as an ordinary client would;
/// `tag` keeps names unique across calls.
fn ordinary_client_round(addr: SocketAddr, tag: &str) {
    let tel = unique_tel();
    let name = format!("calm {tag}");
    let registered = register(addr, &tel, &name, "password1");
    assert!(
        registered.is(200, "register successfully"),
        "{tag}: {registered:?}"
    );
    let logged_in = login(addr, &tel, "password1");
    assert!(
        logged_in.is(200, "login successfully"),
        "{tag}: {logged_in:?}"
    );
    assert_eq!(logged_in.json()["data"]["user_name"], name.as_str());
    let room = format!("calm room {tag}");
    let created = create_room(addr, &room);
    assert!(
        created.is(200, "chatroom create successfully"),
        "{tag}: {created:?}"
    );
    assert!(room_names(addr).contains(&room), "{tag}: room not listed");
    assert!(healthz_ok(addr));
}

// ---------------------------------------------------------------------------
// 3. Slowloris
// ---------------------------------------------------------------------------

enum SlowEnd {
    TimedOut,
    Closed,
}

struct Slow {
    stream: TcpStream,
    /// The bytes this connection sends, never a complete request.
    script: Arc<Vec<u8>>,
    /// Dribbles a byte per pass; otherwise sent its start and stalled.
    dribble: bool,
    sent: usize,
    received: Vec<u8>,
    end: Option<SlowEnd>,
}

#[test]
fn slowloris_heads_get_408_while_ordinary_clients_are_served() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_millis(500));
    let addr = server.http_addr();
    // A head that is never finished (no blank line), well under 8 KiB.
    let head = Arc::new(
        format!(
            "POST /auth/register HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Padding: {}\r\n",
            "p".repeat(200)
        )
        .into_bytes(),
    );
    // A complete head whose body never completes (the body has a timeout
    // of its own).
    let body = Arc::new(
        format!(
            "POST /auth/register HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nuser_tel=1&user_name={}",
            "n".repeat(300)
        )
        .into_bytes(),
    );
    let body_start = find(&body, b"\r\n\r\n").unwrap() + 4;
    let count = 300;
    let mut slow: Vec<Slow> = (0..count)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).unwrap();
            // Dribbled heads, stalled heads, dribbled bodies.
            let (script, dribble, sent) = match i % 3 {
                0 => (Arc::clone(&head), true, 1),
                1 => (Arc::clone(&head), false, 40),
                _ => (Arc::clone(&body), true, body_start + 1),
            };
            stream.write_all(&script[..sent]).unwrap();
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                script,
                dribble,
                sent,
                received: Vec::new(),
                end: None,
            }
        })
        .collect();

    // An ordinary client, served meanwhile.
    let ordinary = thread::spawn(move || {
        for round in 0..5 {
            ordinary_client_round(addr, &format!("slowloris {round}"));
        }
    });

    let deadline = Instant::now() + POLL_DEADLINE;
    let mut buf = [0u8; 4096];
    while slow.iter().any(|s| s.end.is_none()) {
        assert!(
            Instant::now() < deadline,
            "{} slow connections neither answered nor closed",
            slow.iter().filter(|s| s.end.is_none()).count()
        );
        for s in slow.iter_mut().filter(|s| s.end.is_none()) {
            loop {
                match s.stream.read(&mut buf) {
                    Ok(0) => {
                        s.end = Some(SlowEnd::Closed);
                        break;
                    }
                    Ok(n) => s.received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if s.dribble && s.sent < s.script.len() {
                            match s.stream.write(&s.script[s.sent..s.sent + 1]) {
                                Ok(n) => s.sent += n,
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                                Err(_) => s.end = Some(SlowEnd::Closed),
                            }
                        }
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        s.end = Some(SlowEnd::Closed);
                        break;
                    }
                }
            }
            if s.end.is_some() {
                if !s.received.is_empty() {
                    let text = String::from_utf8_lossy(&s.received);
                    assert!(
                        text.starts_with("HTTP/1.1 408 ")
                            && text.contains(r#""res":"request timeout""#),
                        "a slow connection got something other than 408: {text:?}"
                    );
                    s.end = Some(SlowEnd::TimedOut);
                }
                // Hang up at once, as a client that read its answer would.
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        // Pacing of the dribble (a byte per connection per pass).
        thread::sleep(Duration::from_millis(20));
    }
    let timed_out = slow
        .iter()
        .filter(|s| matches!(s.end, Some(SlowEnd::TimedOut)))
        .count();
    assert!(timed_out > 0, "no slow connection was answered 408");
    drop(slow);

    ordinary
        .join()
        .expect("the ordinary client was served correctly");
    ordinary_client_round(addr, "slowloris after");
    wait_until("open HTTP connections back to a handful", || {
        // The metrics request itself is one of them.
        metric(addr, "chatroom_open_connections_http") <= 2.0
    });
}

/// A connection that never sends a byte has not sent its headers either:
/// it is held to the header timeout (SPEC §2.1 "headers must arrive within
/// 10 s"; docs/websocket.md "the handshake must complete within
/// --header-timeout"), not to the much longer keep-alive timeout, or a
/// silent slowloris holds a connection slot for the keep-alive period.
#[test]
fn silent_connections_are_held_to_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_timeout = Duration::from_millis(500);
        c.keep_alive_timeout = Duration::from_secs(3600);
    });
    let guard = Duration::from_secs(10);
    let waiters: Vec<_> = [
        (server.http_addr(), "API port"),
        (server.ws_addr(), "chat port"),
    ]
    .into_iter()
    .map(|(port, what)| {
        thread::spawn(move || {
            let mut stream = TcpStream::connect(port).expect("connect");
            stream.set_read_timeout(Some(guard)).unwrap();
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(
                ended,
                "{what}: a connection that never sent a byte was still open after {guard:?} \
                     (header timeout 500 ms)"
            );
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                bytes.is_empty() || text.starts_with("HTTP/1.1 408 "),
                "{what}: {text:?}"
            );
        })
    })
    .collect();
    let mut failures = Vec::new();
    for waiter in waiters {
        if let Err(panic) = waiter.join() {
            failures.push(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panicked".to_string()),
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    server.stop();
}

// ---------------------------------------------------------------------------
// 4. Slow consumer in a busy room
// ---------------------------------------------------------------------------

/// What a reading member saw: the indices of the sender's messages, and
/// whether the slow member's `leave` came by.
struct Seen {
    indices: Vec<usize>,
    slow_left: bool,
}

/// How far each reading member has read. The sender stays at most
/// `WINDOW` messages ahead of them, so that on a loaded machine a reader
/// thread that is slow to be scheduled never becomes a slow consumer itself.
#[derive(Default)]
struct Progress {
    read: Mutex<[usize; 2]>,
    changed: Condvar,
}

const WINDOW: usize = 4;

impl Progress {
    fn advance(&self, slot: usize, count: usize) {
        self.read.lock().unwrap()[slot] = count;
        self.changed.notify_all();
    }

    /// Waits until every reader has read all but `WINDOW` of `sent`.
    fn wait_for_readers(&self, sent: usize) {
        let deadline = Instant::now() + POLL_DEADLINE;
        let mut read = self.read.lock().unwrap();
        while read.iter().min().copied().unwrap_or(0) + WINDOW < sent {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the reading members stopped reading at {read:?} of {sent} (see their panics)"
            );
            read = self.changed.wait_timeout(read, left).unwrap().0;
        }
    }
}

fn read_member(mut ws: Ws, who: &str, slot: usize, progress: &Progress) -> Seen {
    let mut seen = Seen {
        indices: Vec::new(),
        slow_left: false,
    };
    loop {
        let value = match next_incoming(&mut ws) {
            Incoming::Packet(value) => value,
            other => panic!("{who}: connection ended early: {other:?}"),
        };
        let data = &value["data"];
        match value["type"].as_str() {
            Some("msg") => {
                let msg = data["msg"].as_str().unwrap();
                if msg == "END" {
                    return seen;
                }
                let index = msg.split(':').next().unwrap()[1..].parse().unwrap();
                seen.indices.push(index);
                progress.advance(slot, seen.indices.len());
            }
            Some("user") => {
                if data["user"]["user_name"] == "sloth" && data["msg"] == "leave" {
                    seen.slow_left = true;
                }
            }
            _ => panic!("{who}: unexpected packet {value}"),
        }
    }
}

#[test]
fn a_member_that_never_reads_is_cut_off_and_nobody_else_loses_a_message() {
    let server = TestServer::start_with(|c| {
        c.max_outbound_bytes = 64 * 1024;
        c.chat.ws_rate = 0;
        c.chat.max_msg_chars = 8000;
    });
    let addr = server.http_addr();
    for (i, name) in ["sloth", "rita", "rolf", "sam"].iter().enumerate() {
        assert!(register(addr, &format!("80000{i}"), name, "password1")
            .is(200, "register successfully"));
    }
    assert!(create_room(addr, "busy").is(200, "chatroom create successfully"));
    let connect = |name: &str| {
        let mut ws = ws_connect(server.ws_addr());
        join(&mut ws, name, "busy");
        ws
    };
    let sloth = connect("sloth");
    let progress = Arc::new(Progress::default());
    let readers: Vec<_> = ["rita", "rolf"]
        .into_iter()
        .enumerate()
        .map(|(slot, name)| {
            let ws = connect(name);
            let progress = Arc::clone(&progress);
            thread::spawn(move || read_member(ws, name, slot, &progress))
        })
        .collect();
    let mut sam = connect("sam");

    let filler = "x".repeat(7900);
    let mut sent = 0usize;
    let mut slow_left = false;
    let mut extra_after_leave = 0;
    while extra_after_leave < 3 {
        assert!(
            sent < 20_000,
            "the member that never reads was never cut off"
        );
        progress.wait_for_readers(sent);
        let msg = format!("m{sent}:{filler}");
        send_text(&mut sam, packet("msg", "sam", "busy", &msg));
        // Lockstep: the sender reads its own echo (and anything before it),
        // so it is never a slow consumer itself.
        loop {
            let value = next_packet(&mut sam);
            if value["type"] == "user"
                && value["data"]["user"]["user_name"] == "sloth"
                && value["data"]["msg"] == "leave"
            {
                slow_left = true;
                continue;
            }
            assert_eq!(value["type"], "msg", "{value}");
            if value["data"]["msg"] == msg.as_str() {
                break;
            }
        }
        sent += 1;
        if slow_left {
            extra_after_leave += 1;
        }
    }
    send_text(&mut sam, packet("msg", "sam", "busy", "END"));

    for (reader, name) in readers.into_iter().zip(["rita", "rolf"]) {
        let seen = reader.join().expect("reader thread");
        assert_eq!(
            seen.indices,
            (0..sent).collect::<Vec<_>>(),
            "{name} did not receive every message exactly once, in order"
        );
        assert!(seen.slow_left, "{name} never saw the slow member leave");
    }

    // The member that never read finds its connection closed: after what
    // was already in flight, a 1008 close or a reset.
    let mut sloth = sloth;
    match read_until_closed(&mut sloth) {
        Incoming::Closed(Some(code)) => assert_eq!(code, 1008, "close code for a slow consumer"),
        Incoming::Ended(_) => {}
        other => panic!("the slow member's connection was not closed: {other:?}"),
    }
    assert!(metric(addr, "chatroom_backpressure_closes_total") >= 1.0);
    // The frames queued for it when it was cut off were dropped, and counted.
    assert!(metric(addr, "chatroom_backpressure_dropped_frames_total") >= 1.0);
}

/// Pongs are output like any other: a client that sends pings as fast as it
/// can and never reads must hit the slow-consumer limit (SPEC §5: a
/// connection whose unsent output passes --max-outbound-bytes is closed with
/// 1008), not make the server queue pongs without bound.
#[test]
fn a_closing_connection_cannot_hold_itself_open_by_trickling_bytes() {
    // A client that never reads is closed as a slow consumer; its close frame
    // cannot be delivered, so the server lingers. Bytes trickling in after
    // that must not keep pushing the linger back.
    let server = TestServer::start_with(|c| c.max_outbound_bytes = 16 * 1024);
    let mut stream = raw_ws(server.ws_addr());
    let mask = [1u8, 2, 3, 4];
    let mut ping = vec![0x89, 0x80 | 125];
    ping.extend_from_slice(&mask);
    ping.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    let batch = ping.repeat(1000);
    // About 20 MB of pongs owed: more than loopback buffers hold.
    for _ in 0..160 {
        if stream.write_all(&batch).is_err() {
            break;
        }
    }
    // The linger is 2 s; keep trickling for up to 30 s. Closed means a write
    // fails (the server reset the connection it no longer reads).
    let mut closed = false;
    for _ in 0..300 {
        if stream.write_all(&ping[..1]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a trickle of bytes kept a closing connection open");
    assert!(healthz_ok(server.http_addr()));
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_cut_off() {
    let limit = 64 * 1024;
    let server = TestServer::start_with(|c| c.max_outbound_bytes = limit);
    let mut stream = raw_ws(server.http_addr());
    let mask = [1u8, 2, 3, 4];
    let mut ping = vec![0x89, 0x80 | 125];
    ping.extend_from_slice(&mask);
    ping.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    let batch = ping.repeat(1000);
    // About 20 MB of pongs owed: hundreds of times the limit.
    let mut pings = 0usize;
    for _ in 0..160 {
        if stream.write_all(&batch).is_err() {
            break;
        }
        pings += 1000;
    }

    // Read what comes back: pongs, then (once the limit is passed) a 1008
    // close or the end of the connection.
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pongs = 0usize;
    let ending = 'read: loop {
        while buf.len() >= 2 {
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < header + len {
                break;
            }
            match buf[0] {
                0x8A => pongs += 1,
                0x88 => break 'read format!("close {:?}", close_code(&buf)),
                other => panic!("unexpected frame type {other:#x}"),
            }
            buf.drain(..header + len);
        }
        if pongs == pings {
            break 'read "every ping answered, connection still open".to_string();
        }
        match stream.read(&mut chunk) {
            Ok(0) => break 'read "EOF".to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                break 'read "reset".to_string()
            }
            Err(e) => break 'read format!("read error {e}"),
        }
    };
    assert!(
        ending == "close Some(1008)" || ending == "EOF" || ending == "reset",
        "a client that sent {pings} pings without reading got {pongs} pongs back ({} bytes, \
         far more than max_outbound_bytes = {limit} plus socket buffers) and then: {ending}",
        pongs * 127
    );
    assert!(pongs < pings, "every ping was answered: {pongs}");
    server.stop();
}

// ---------------------------------------------------------------------------
// 5. Connection cap reached and recovered
// ---------------------------------------------------------------------------

/// Reads one keep-alive response off a raw connection and returns its
/// status and body.
fn keepalive_get(conn: &mut RawConn, path: &str) -> (u16, String) {
    let response = conn.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    (response.status, response.text())
}

#[test]
fn the_connection_cap_refuses_newcomers_and_keeps_serving_members() {
    let server = TestServer::start_with(|c| c.max_connections = 20);
    let addr = server.http_addr();
    assert!(register(addr, "9000001", "capper", "password1").is(200, "register successfully"));
    assert!(create_room(addr, "capped").is(200, "chatroom create successfully"));

    // The first member is also the probe: it waits until the setup
    // connections are gone, so that exactly our 20 are open.
    let mut probe = RawConn::connect(addr);
    wait_until("only the probe connection open", || {
        let (status, text) = keepalive_get(&mut probe, "/metrics");
        status == 200
            && metric_in(&text, "chatroom_open_connections_http") == Some(1.0)
            && metric_in(&text, "chatroom_open_connections_websocket") == Some(0.0)
    });
    let mut http: Vec<RawConn> = vec![probe];
    for _ in 0..9 {
        let mut conn = RawConn::connect(addr);
        let (status, _) = keepalive_get(&mut conn, "/healthz");
        assert_eq!(status, 200);
        http.push(conn);
    }
    // Half on the chat port, half upgraded on the API port.
    let mut sockets: Vec<Ws> = (0..10)
        .map(|i| {
            let socket = if i % 2 == 0 {
                try_ws_connect(server.ws_addr())
            } else {
                try_ws_connect_path(addr, "/ws")
            };
            socket.expect("WebSocket under the cap")
        })
        .collect();
    join(&mut sockets[0], "capper", "capped");

    // The 21st HTTP connection: 503, without having to send anything.
    let mut refused = TcpStream::connect(addr).expect("TCP connect (the kernel accepts)");
    refused.set_read_timeout(Some(IO_GUARD)).unwrap();
    let (bytes, ended) = read_to_end_lossy(&mut refused);
    let text = String::from_utf8_lossy(&bytes);
    assert!(ended, "the refused connection was left open");
    assert!(
        text.starts_with("HTTP/1.1 503 ") && text.contains(r#"{"res":"too many connections"}"#),
        "21st HTTP connection: {text:?}"
    );
    // The 21st WebSocket: refused before the handshake completes, on
    // either port.
    for (port, path) in [(server.ws_addr(), "/"), (addr, "/ws")] {
        if let Ok(_socket) = try_ws_connect_path(port, path) {
            panic!("a WebSocket handshake on {port}{path} completed past the cap");
        }
    }

    // Members are still served.
    say_and_hear(&mut sockets[0], "capper", "capped", "still here");
    let (status, body) = keepalive_get(&mut http[3], "/chatroom/list");
    assert_eq!(status, 200);
    assert!(body.contains(r#""name":"capped""#), "{body}");
    assert!(metric_in(
        &keepalive_get(&mut http[0], "/metrics").1,
        "chatroom_connections_refused_total"
    )
    .is_some_and(|n| n >= 2.0));

    // Some leave; newcomers get in again.
    http.truncate(7);
    sockets.truncate(8);
    wait_until("a new HTTP connection is served", || {
        fresh_get_status(addr) == Some(200)
    });
    let mut newcomer = None;
    wait_until("a new WebSocket is accepted", || {
        newcomer = try_ws_connect(server.ws_addr()).ok();
        newcomer.is_some()
    });
    let mut newcomer = newcomer.unwrap();
    join(&mut newcomer, "capper", "capped");
    say_and_hear(&mut newcomer, "capper", "capped", "got in");
}

// ---------------------------------------------------------------------------
// 7. WebSocket rate limit under a flood
// ---------------------------------------------------------------------------

#[test]
fn a_websocket_flood_is_rate_limited_per_connection_and_others_are_served() {
    const FLOODERS: usize = 50;
    const PACKETS: usize = 200;
    const RATE: f64 = 20.0;
    const BURST: f64 = 40.0;
    let server = TestServer::start();
    let addr = server.http_addr();
    assert!(register(addr, "6000001", "flood", "password1").is(200, "register successfully"));
    assert!(register(addr, "6000002", "calm", "password1").is(200, "register successfully"));
    for i in 0..FLOODERS {
        assert!(create_room(addr, &format!("f{i}")).is(200, "chatroom create successfully"));
    }
    assert!(create_room(addr, "quiet").is(200, "chatroom create successfully"));

    let start = Arc::new(Barrier::new(FLOODERS + 1));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let room = format!("f{i}");
                let mut ws = try_ws_connect_path(addr, "/ws").expect("WebSocket");
                join(&mut ws, "flood", &room);
                start.wait();
                let began = Instant::now();
                for n in 0..PACKETS {
                    ws.write(tungstenite::Message::text(packet(
                        "msg",
                        "flood",
                        &room,
                        &format!("n{n}"),
                    )))
                    .expect("queue a frame");
                }
                ws.flush().expect("send the flood");
                let (mut accepted, mut limited) = (0usize, 0usize);
                while accepted + limited < PACKETS {
                    let value = next_packet(&mut ws);
                    match value["type"].as_str() {
                        Some("msg") => {
                            assert_eq!(value["data"]["room_name"], room.as_str());
                            accepted += 1;
                        }
                        Some("error") => {
                            assert_eq!(value["data"]["msg"], "rate limited", "{value}");
                            limited += 1;
                        }
                        _ => panic!("unexpected packet {value}"),
                    }
                }
                let window = began.elapsed().as_secs_f64();
                (accepted, limited, window)
            })
        })
        .collect();

    start.wait();
    let http_client = thread::spawn(move || {
        for round in 0..4 {
            ordinary_client_round(addr, &format!("flood {round}"));
        }
    });
    let calm = thread::spawn(move || {
        let mut ws = try_ws_connect_path(addr, "/ws").expect("WebSocket");
        join(&mut ws, "calm", "quiet");
        for n in 0..12 {
            say_and_hear(&mut ws, "calm", "quiet", &format!("calm {n}"));
            // Well under the sustained rate.
            thread::sleep(Duration::from_millis(100));
        }
    });

    for flooder in flooders {
        let (accepted, limited, window) = flooder.join().expect("flooder thread");
        assert_eq!(accepted + limited, PACKETS);
        assert!(limited >= 1, "a flooder was never rate limited");
        assert!(accepted < PACKETS / 2, "{accepted} of {PACKETS} accepted");
        // However long the flood took, the bucket cannot have given more
        // than its burst plus what refilled meanwhile.
        assert!(
            accepted as f64 <= BURST + RATE * window + 1.0,
            "{accepted} accepted within {window:.3} s"
        );
    }
    http_client
        .join()
        .expect("the HTTP client was served correctly");
    calm.join()
        .expect("the calm WebSocket client was served without limits");
}

// ---------------------------------------------------------------------------
// 8. Failed-login limits, with an expensive hash
// ---------------------------------------------------------------------------

#[test]
fn failed_login_limits_answer_without_hashing() {
    // The victim is registered with a cheap hash; verifying its password
    // stays cheap afterwards (the cost is read from the stored hash).
    let setup = TestServer::start();
    assert!(
        register(setup.http_addr(), "4000001", "victim", "rightpass")
            .is(200, "register successfully")
    );
    assert!(
        register(setup.http_addr(), "4000002", "bystander", "rightpass")
            .is(200, "register successfully")
    );

    // Now new hashes are expensive, and there is one hash thread.
    let server = setup.restart_with(|c| {
        c.argon2_memory_kib = 65_536;
        c.argon2_iterations = 2;
        c.hash_threads = 1;
    });
    let addr = server.http_addr();

    for _ in 0..5 {
        let wrong = login(addr, "4000001", "wrongpass");
        assert!(wrong.is(200, "password wrong"), "{wrong:?}");
    }

    // Occupy the only hash thread with an expensive register.
    let mut busy = RawConn::connect(addr);
    busy.send(&common::raw_form_post(
        "/auth/register",
        "user_tel=4000003&user_name=latecomer&user_password=password1",
        &[],
    ));

    // 50 more attempts, the right password among them: all refused, and
    // all answered while the hash thread is busy, so none waited for it.
    let mut conn = RawConn::connect(addr);
    for n in 0..50 {
        let password = if n % 2 == 0 { "rightpass" } else { "wrongpass" };
        let response = conn.roundtrip(&common::raw_form_post(
            "/auth/login",
            &format!("user_tel=4000001&user_password={password}"),
            &[],
        ));
        assert_eq!(response.status, 200);
        assert_eq!(
            response.text(),
            r#"{"res":"too many attempts","data":null}"#,
            "attempt {n}"
        );
    }
    assert!(
        busy.nothing_received_yet(),
        "the register finished first: the test did not show the attempts skip hashing"
    );
    let registered = busy.read_response();
    assert_eq!(registered.res(), "register successfully");

    // Per client address: 5 failures so far; 25 more (unknown phones, no
    // hash needed) make 30, and then every phone is refused.
    for n in 0..25 {
        let unknown = login(addr, &format!("41{n:05}"), "whatever1");
        assert!(unknown.is(200, "user not exist"), "{unknown:?}");
    }
    let bystander = login(addr, "4000002", "rightpass");
    assert!(bystander.is(200, "too many attempts"), "{bystander:?}");
    let unknown = login(addr, "4199999", "whatever1");
    assert!(unknown.is(200, "too many attempts"), "{unknown:?}");
    server.stop();
}

// ---------------------------------------------------------------------------
// 9. A flood of garbage
// ---------------------------------------------------------------------------

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a raw WebSocket on the API port and reads the 101.
fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_GUARD)).unwrap();
    stream.set_write_timeout(Some(IO_GUARD)).unwrap();
    stream.write_all(UPGRADE).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while find(&head, b"\r\n\r\n").is_none() {
        assert_eq!(stream.read(&mut byte).expect("read the handshake"), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// The close code of the first frame in `bytes`, if it is a close frame.
fn close_code(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 4 && bytes[0] == 0x88).then(|| u16::from_be_bytes([bytes[2], bytes[3]]))
}

fn garbage_attack(addr: SocketAddr, kind: usize, seed: u64) {
    let mut noise = Noise::new(seed);
    match kind {
        // Random bytes on the HTTP port.
        0 => {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(IO_GUARD)).unwrap();
            let len = 1 + noise.below(16 * 1024) as usize;
            write_lossy(&mut stream, &noise.bytes(len));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(ended, "garbage connection left hanging");
            if !bytes.is_empty() {
                assert!(
                    bytes.starts_with(b"HTTP/1.1 4"),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        // A chunked body that never ends.
        1 => {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(IO_GUARD)).unwrap();
            stream.set_write_timeout(Some(IO_GUARD)).unwrap();
            let _ = stream.write_all(b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = [b"1000\r\n".as_slice(), &[b'a'; 0x1000], b"\r\n"].concat();
            for _ in 0..256 {
                if !write_lossy(&mut stream, &chunk) {
                    break;
                }
            }
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(ended, "endless chunked body left hanging");
            if !bytes.is_empty() {
                assert!(
                    bytes.starts_with(b"HTTP/1.1 413 "),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        // An absurd chunk size.
        2 => {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(IO_GUARD)).unwrap();
            let _ = stream.write_all(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFFFFFF\r\n");
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(ended);
            assert!(
                bytes.starts_with(b"HTTP/1.1 4"),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // A WebSocket frame announcing 2^62 bytes.
        3 => {
            let mut stream = raw_ws(addr);
            let mut frame = vec![0x81, 0xFF];
            frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            frame.extend(noise.bytes(1000));
            write_lossy(&mut stream, &frame);
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(ended);
            assert_eq!(close_code(&bytes), Some(1009), "{bytes:?}");
        }
        // A real message over the 64 KiB limit.
        4 => {
            let mut stream = raw_ws(addr);
            let len: u64 = 100 * 1024;
            let mut frame = vec![0x81, 0xFF];
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&[9, 9, 9, 9]);
            frame.extend(vec![b'a' ^ 9; len as usize]);
            write_lossy(&mut stream, &frame);
            let (bytes, ended) = read_to_end_lossy(&mut stream);
            assert!(ended);
            assert_eq!(close_code(&bytes), Some(1009), "{bytes:?}");
        }
        // Random bytes after a good handshake.
        5 => {
            let mut stream = raw_ws(addr);
            let len = 1 + noise.below(8 * 1024) as usize;
            write_lossy(&mut stream, &noise.bytes(len));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let (_, ended) = read_to_end_lossy(&mut stream);
            assert!(ended);
        }
        // Random bytes where a handshake should be, on the chat path.
        _ => {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(IO_GUARD)).unwrap();
            let mut bytes = b"GET /ws HTTP/1.1\r\n".to_vec();
            let len = 1 + noise.below(4096) as usize;
            bytes.extend(noise.bytes(len));
            write_lossy(&mut stream, &bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let (_, ended) = read_to_end_lossy(&mut stream);
            assert!(ended);
        }
    }
}

#[test]
fn garbage_from_many_connections_does_not_disturb_the_server() {
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_secs(2));
    let addr = server.http_addr();
    assert!(register(addr, "3000001", "steady", "password1").is(200, "register successfully"));
    assert!(create_room(addr, "steady room").is(200, "chatroom create successfully"));

    let attackers: Vec<_> = (0..28u64)
        .map(|t| {
            thread::spawn(move || {
                for round in 0..4u64 {
                    garbage_attack(addr, ((t + round) % 7) as usize, t * 131 + round);
                }
            })
        })
        .collect();

    let ordinary = thread::spawn(move || {
        let mut ws = try_ws_connect_path(addr, "/ws").expect("WebSocket");
        join(&mut ws, "steady", "steady room");
        for round in 0..4 {
            ordinary_client_round(addr, &format!("garbage {round}"));
            say_and_hear(
                &mut ws,
                "steady",
                "steady room",
                &format!("still fine {round}"),
            );
        }
    });

    for attacker in attackers {
        attacker.join().expect("attacker saw the server misbehave");
    }
    ordinary
        .join()
        .expect("the ordinary client was served correctly");
    assert!(healthz_ok(addr), "the server no longer answers /healthz");
    ordinary_client_round(addr, "garbage after");
    // A panicked reactor thread would make this an error.
    server.stop();
}

// ---------------------------------------------------------------------------
// Races: limits and uniqueness hold under concurrency
// ---------------------------------------------------------------------------

/// Failures are counted before the hash runs, so twenty simultaneous
/// guesses get exactly five password checks.
#[test]
fn simultaneous_guesses_get_exactly_five_checks() {
    let server = TestServer::start_with(|c| c.hash_threads = 1);
    let addr = server.http_addr();
    assert!(register(addr, "4100001", "target", "rightpass").is(200, "register successfully"));
    let start = Arc::new(Barrier::new(20));
    let guesses: Vec<_> = (0..20)
        .map(|n| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut conn = RawConn::connect(addr);
                let request = common::raw_form_post(
                    "/auth/login",
                    &format!("user_tel=4100001&user_password=guess{n:04}"),
                    &[],
                );
                start.wait();
                conn.roundtrip(&request).res()
            })
        })
        .collect();
    let answers: Vec<String> = guesses
        .into_iter()
        .map(|g| g.join().expect("guess thread"))
        .collect();
    let checked = answers.iter().filter(|a| *a == "password wrong").count();
    let refused = answers.iter().filter(|a| *a == "too many attempts").count();
    assert_eq!(
        (checked, refused),
        (5, 15),
        "answers to 20 simultaneous guesses: {answers:?}"
    );
    let right = login(addr, "4100001", "rightpass");
    assert!(right.is(200, "too many attempts"), "{right:?}");
}

/// The same phone number, user name or room name from many connections at
/// once: exactly one wins, and exactly one record is stored.
#[test]
fn racing_duplicates_store_exactly_one_record() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let start = Arc::new(Barrier::new(24));
    let racers: Vec<_> = (0..24)
        .map(|n| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                match n % 3 {
                    // Same phone, different names.
                    0 => register(addr, "4200001", &format!("twin {n}"), "password1").res(),
                    // Same name, different phones.
                    1 => register(addr, &format!("42001{n:02}"), "namesake", "password1").res(),
                    _ => create_room(addr, "contested").res(),
                }
            })
        })
        .collect();
    let answers: Vec<String> = racers
        .into_iter()
        .map(|r| r.join().expect("racer"))
        .collect();
    for (kind, won, lost) in [
        (0, "register successfully", "user exist"),
        (1, "register successfully", "user exist"),
        (2, "chatroom create successfully", "chatroom already exist"),
    ] {
        let mine: Vec<&String> = answers.iter().skip(kind).step_by(3).collect();
        assert_eq!(
            mine.iter().filter(|a| **a == won).count(),
            1,
            "kind {kind}: {mine:?}"
        );
        assert!(mine.iter().all(|a| *a == won || *a == lost), "{mine:?}");
    }
    let dir = server.stop();
    let users = records(&dir.path().join("users.jsonl"));
    assert_eq!(users.len(), 2, "{users:?}");
    assert_unique(&users, "tel", "user tel");
    assert_unique(&users, "name", "user name");
    let rooms = records(&dir.path().join("rooms.jsonl"));
    assert_eq!(rooms.len(), 1, "{rooms:?}");

    // And a restart agrees.
    let again = TestServer::start_in(dir, |_| {});
    assert_eq!(room_names(again.http_addr()), vec!["contested".to_string()]);
    again.stop();
}

//! Many WebSocket connections, joined to rooms, served by one mio loop.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::net::{self, ReadEnd};

/// Tokens from here up belong to the handler (HTTP load connections).
pub const OTHER_TOKENS: usize = 1 << 30;

pub struct WsConn {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
    pub open: bool,
}

pub trait Handler {
    /// Called before each event's frames, so a handler can take the time
    /// once per read rather than once per frame.
    fn begin_event(&mut self) {}
    fn frame(&mut self, conn: usize, op: OpCode, payload: &[u8]);
    fn ended(&mut self, conn: usize, why: String);
    fn writable(&mut self, _conn: usize, _stream: &mut TcpStream) {}
    fn other(&mut self, _event: &mio::event::Event) {}
}

pub struct Swarm {
    pub poll: Poll,
    events: Events,
    pub conns: Vec<WsConn>,
    buffer: Vec<u8>,
    pub mask_seed: u32,
}

/// Counts the `user` packets of joins and anything unexpected during setup.
#[derive(Default)]
struct JoinDrain {
    user_packets: u64,
    /// Per connection: whether any `user` packet reached it. A joiner's
    /// first is the answer to its own join.
    answered: Vec<bool>,
    unanswered: usize,
    errors: Vec<String>,
}

impl Handler for JoinDrain {
    fn frame(&mut self, conn: usize, op: OpCode, payload: &[u8]) {
        match op {
            OpCode::Data(Data::Text)
                if memchr::memmem::find(payload, br#""type":"user""#).is_some() =>
            {
                self.user_packets += 1;
                if let Some(answered) = self.answered.get_mut(conn) {
                    if !*answered {
                        *answered = true;
                        self.unanswered -= 1;
                    }
                }
            }
            OpCode::Control(Control::Ping) | OpCode::Control(Control::Pong) => {}
            _ => {
                if self.errors.len() < 5 {
                    self.errors.push(format!(
                        "connection {conn}: {:?} {}",
                        op,
                        String::from_utf8_lossy(&payload[..payload.len().min(200)])
                    ));
                }
            }
        }
    }

    fn ended(&mut self, conn: usize, why: String) {
        self.errors
            .push(format!("connection {conn} ended during setup: {why}"));
    }
}

impl Swarm {
    pub fn new() -> Swarm {
        Swarm {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            buffer: vec![0; 256 * 1024],
            mask_seed: 0x9e37_79b9,
        }
    }

    /// Opens `total` (at most `rooms.len() × members`) connections, connection `r * members + m`
    /// joining room `r` as `user(r, m)` on node `ws[m % ws.len()]`, and
    /// waits for every join to be announced. Stops early (returning the
    /// error) when the server or the fd limit refuses a connection: the
    /// `idle` scenario wants to know how many it got.
    ///
    /// The k-th joiner of a room is announced to k connections (itself and
    /// those before it), on one server or across cluster nodes, and every
    /// one of those packets is waited for. Returns how many more arrived
    /// than that (0 from a correct server).
    pub fn join_rooms(
        &mut self,
        ws: &[SocketAddr],
        rooms: &[String],
        members: usize,
        total: usize,
        user: impl Fn(usize, usize) -> String,
    ) -> Result<i64, String> {
        const BATCH: usize = 500;
        let total = total.min(rooms.len() * members);
        let mut expected = 0u64;
        let mut drain = JoinDrain::default();
        let mut out = Vec::new();
        let mut start = 0;
        while start < total {
            let end = (start + BATCH).min(total);
            for i in start..end {
                let (room, member) = (i / members, i % members);
                let addr = ws[member % ws.len()];
                let mut stream = match net::open_ws(i, addr) {
                    Ok(stream) => stream,
                    Err(e) => {
                        self.finish_joins(&mut drain, expected)?;
                        return Err(format!("connection {i}: {e}"));
                    }
                };
                let token = Token(self.conns.len());
                self.poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                    .map_err(|e| e.to_string())?;
                out.clear();
                let join = net::packet("join", &user(room, member), &rooms[room], None);
                net::push_text_frame(&mut out, join.as_bytes(), &mut self.mask_seed);
                stream
                    .write_all(&out)
                    .map_err(|e| format!("join {i}: {e}"))?;
                // The k-th joiner of a room is announced to k connections.
                expected += member as u64 + 1;
                self.conns.push(WsConn {
                    stream,
                    leftover: Vec::new(),
                    open: true,
                });
                drain.answered.push(false);
                drain.unanswered += 1;
            }
            self.finish_joins(&mut drain, expected)?;
            start = end;
        }
        Ok(drain.user_packets as i64 - expected as i64)
    }

    fn finish_joins(&mut self, drain: &mut JoinDrain, expected: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while drain.user_packets < expected {
            if !drain.errors.is_empty() {
                return Err(format!("during joins: {}", drain.errors.join("; ")));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "joins not all announced after 60 s: {} of {expected} user packets, {} connection(s) not answered",
                    drain.user_packets, drain.unanswered
                ));
            }
            self.pump(Some(Duration::from_millis(100)), drain);
        }
        if drain.errors.is_empty() {
            Ok(())
        } else {
            Err(format!("during joins: {}", drain.errors.join("; ")))
        }
    }

    /// One poll round: waits up to `timeout`, then reads every readable
    /// connection and hands its frames to `handler`.
    pub fn pump(&mut self, timeout: Option<Duration>, handler: &mut impl Handler) {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                panic!("poll: {e}");
            }
        }
        for event in self.events.iter() {
            let index = event.token().0;
            if index >= OTHER_TOKENS {
                handler.other(event);
                continue;
            }
            let conn = &mut self.conns[index];
            if !conn.open {
                continue;
            }
            handler.begin_event();
            if event.is_writable() {
                handler.writable(index, &mut conn.stream);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                let end = net::read_frames(
                    &mut conn.stream,
                    &mut conn.leftover,
                    &mut self.buffer,
                    |op, payload| handler.frame(index, op, payload),
                );
                match end {
                    ReadEnd::Drained => {}
                    ReadEnd::Eof => {
                        conn.open = false;
                        handler.ended(index, "the server closed the connection".into());
                    }
                    ReadEnd::Failed(e) => {
                        conn.open = false;
                        handler.ended(index, e);
                    }
                }
            }
        }
    }
}

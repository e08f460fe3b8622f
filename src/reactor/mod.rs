//! The reactor: the one thread that owns every socket. It reads until
//! `WouldBlock`, hands bytes to the connection's codec, runs what the codec
//! and the API ask for, and writes queued output with vectored writes. It
//! knows nothing about rooms or users.
//!
//! This file holds what every connection shares: accepting, reading,
//! flushing, closing, timers, helper results and shutdown. What a
//! connection does with its bytes depends on its protocol and lives beside
//! it, in `http.rs` and `websocket.rs`.

mod engine;
mod http;
mod outqueue;
mod redis;
mod timers;
mod websocket;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::api::{Api, ApiConfig, ConnRef, Now};
use crate::auth::{HashPool, JobId, PasswordOutcome};
use crate::chat::state::ChatState;
use crate::cluster::ClusterApi;
use crate::config::Config;
use crate::http::response::Response;
use crate::metrics::Metrics;
use crate::redis::RedisUrl;
use crate::store::{Completion, DataDir, LogEvent, LogWriter, Replayed, RoomLog, Writer};
use signal_hook_mio::v1_0::Signals;

use engine::{Cluster, Embedded, Engine, REDIS_COMMANDS, REDIS_SUBSCRIBER};
use http::HttpConn;
pub use outqueue::{Flushed, OutQueue, SpareRings};
use timers::Timers;
use websocket::WsConn;

pub const HTTP_LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);
pub const WS_LISTENER: Token = Token(usize::MAX - 3);
pub const SIGNALS: Token = Token(usize::MAX - 4);

/// How long a stopping server waits for replies owed, writes and closing
/// handshakes before it closes what is left (SPEC §7: exit within 5 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// How long a closing connection keeps draining input after its last
/// response, so that the peer reads that response instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
/// After an accept error such as EMFILE, wait this long before retrying
/// instead of spinning on a listener that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Shared read buffer size; one read never takes more than this.
const READ_CHUNK: usize = 64 * 1024;

/// Results that helper threads send back to the reactor.
#[derive(Debug)]
pub enum HelperEvent {
    Password(JobId, PasswordOutcome),
    Stored(Completion),
    MessageLog(LogEvent),
}

/// The input buffer of the last connection whose input was all consumed,
/// for the next one that reads: an idle connection keeps no buffer, and a
/// stream of whole messages does not allocate one per read either.
#[derive(Debug, Default)]
struct SpareBuffer(Vec<u8>);

impl SpareBuffer {
    /// Larger buffers (a big upload) are freed rather than kept.
    const MAX_KEPT: usize = 64 * 1024;

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }

    /// Takes an emptied buffer from a connection, which is left with none.
    fn recycle(&mut self, buffer: &mut Vec<u8>) {
        let buffer = std::mem::take(buffer);
        if buffer.capacity() <= Self::MAX_KEPT && buffer.capacity() > self.0.capacity() {
            self.0 = buffer;
            self.0.clear();
        }
    }
}

/// How far a readiness event lets us read before stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadUntil {
    /// A read that returns less than the buffer drained the socket at that
    /// moment; later bytes raise a new edge, so asking again would only
    /// cost a syscall that answers EAGAIN.
    ShortRead,
    /// The peer's FIN or an error is already signalled (it raises no new
    /// edge), or nothing was signalled at all: read until the kernel says
    /// there is nothing left.
    WouldBlock,
}

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The API port: WebSocket only by upgrade at `/ws`.
    Http,
    /// The chat port: every request must be a WebSocket upgrade.
    Ws,
}

#[derive(Debug)]
enum Protocol {
    /// Boxed: the request parser is twice the size of a WebSocket's state,
    /// and every held WebSocket would otherwise pay for it in the slab.
    Http(Box<HttpConn>),
    WebSocket(WsConn),
    /// Output is flushed and the write side shut; input is drained until EOF
    /// or the linger deadline.
    Closing,
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    /// The client a trusted proxy named in the last request (`--trusted-proxy`),
    /// when that is not the peer itself. A WebSocket keeps the one of its
    /// upgrade; a proxy's reused HTTP connection carries several clients'
    /// requests, and this is the latest.
    client: Option<IpAddr>,
    listener: Listener,
    generation: u32,
    inbuf: Vec<u8>,
    out: OutQueue,
    protocol: Protocol,
    /// When this connection next needs attention from the timer.
    deadline: Option<Instant>,
    /// Where its entry in the timer set is: at or before `deadline`.
    armed: Option<Instant>,
    /// Last read or write: what keep-alive idleness is measured from.
    last_activity: Instant,
    /// Last read: what WebSocket silence is measured from.
    last_read: Instant,
    /// The last write found the socket buffer full; a writable event resumes.
    write_blocked: bool,
    peer_closed: bool,
    /// Why we decided to close, once we have.
    close_reason: Option<&'static str>,
    was_websocket: bool,
    opened: Instant,
    bytes_in: u64,
    bytes_out: u64,
    /// Reading stopped with input left in the socket; edge-triggered
    /// polling will not report it again, so it must be resumed by hand.
    read_paused: bool,
    in_dirty_list: bool,
}

impl Connection {
    fn conn_ref(&self, key: usize) -> ConnRef {
        ((self.generation as u64) << 32) | key as u64
    }

    /// The client's address, for logs: the one a trusted proxy named, or
    /// the peer's.
    fn client_ip(&self) -> IpAddr {
        self.client.unwrap_or(self.peer.ip())
    }

    /// How logs name the other end: `203.0.113.5 via 127.0.0.1:41234`
    /// behind a trusted proxy, else the peer.
    fn who(&self) -> Who<'_> {
        Who(self)
    }
}

struct Who<'a>(&'a Connection);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.client {
            Some(client) => write!(f, "{client} via {}", self.0.peer),
            None => write!(f, "{}", self.0.peer),
        }
    }
}

fn token_for(key: usize, generation: u32) -> Token {
    Token(((generation as usize) << 32) | key)
}

fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xffff_ffff, (token.0 >> 32) as u32)
}

fn split_conn_ref(conn: ConnRef) -> (usize, u32) {
    ((conn & 0xffff_ffff) as usize, (conn >> 32) as u32)
}

/// Deadlines move lazily: most moves push a deadline later (every read of
/// a WebSocket, every keep-alive request), and those leave the timer entry
/// where it is. It fires early, finds the deadline moved, and re-arms; only
/// a deadline earlier than the armed one touches the timer set at once.
fn set_deadline(timers: &mut Timers, key: usize, conn: &mut Connection, deadline: Option<Instant>) {
    conn.deadline = deadline;
    if let Some(at) = deadline {
        if conn.armed.is_none_or(|armed| at < armed) {
            timers.reschedule(key, conn.generation, conn.armed, Some(at));
            conn.armed = Some(at);
        }
    }
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == 24 /* EMFILE */ || code == 23 /* ENFILE */ || code == 105 /* ENOBUFS */ || code == 12 /* ENOMEM */
    )
}

pub struct Reactor {
    poll: Poll,
    /// Closed (taken) when shutdown begins, so newcomers are refused by
    /// the kernel instead of waiting in a backlog nobody accepts from.
    http_listener: Option<TcpListener>,
    ws_listener: Option<TcpListener>,
    config: Config,
    engine: Engine,
    conns: Slab<Connection>,
    timers: Timers,
    next_generation: u32,
    helper_events: Receiver<HelperEvent>,
    hash_pool: HashPool,
    stop: Arc<AtomicBool>,
    scratch: Vec<u8>,
    spare_rings: SpareRings,
    spare_inbuf: SpareBuffer,
    dirty: Vec<usize>,
    resume_reads: Vec<usize>,
    accept_paused_until: Option<Instant>,
    /// Frames taken from the API's outbox, kept to reuse its allocation.
    outbox: Vec<(ConnRef, std::rc::Rc<[u8]>)>,
    /// The clocks read at the start of this turn.
    now: Now,
    metrics: Metrics,
    /// Set once a stop was asked for: the moment we give up waiting.
    shutdown_deadline: Option<Instant>,
    signals: Option<Signals>,
}

/// The parts the reactor is built from (see `Server::bind`).
pub struct ReactorParts {
    pub poll: Poll,
    pub http_listener: TcpListener,
    pub ws_listener: TcpListener,
    pub config: Config,
    pub store: StoreParts,
    pub api_config: ApiConfig,
    pub helper_events: Receiver<HelperEvent>,
    pub hash_pool: HashPool,
    pub stop: Arc<AtomicBool>,
    /// SIGINT/SIGTERM, when this server handles them (the binary does).
    pub signals: Option<Signals>,
}

/// Where the state lives: the data directory, or Redis.
pub enum StoreParts {
    Embedded {
        /// Users and rooms as replayed: the chat state is built on the
        /// reactor thread, because what it holds (shared frames) may not
        /// cross threads.
        replayed: Replayed,
        /// Each room's retained messages and last seq, as replayed.
        history: HashMap<String, RoomLog>,
        writer: Writer,
        message_log: LogWriter,
        data_dir: DataDir,
    },
    Cluster {
        url: RedisUrl,
        /// The address `url` named, resolved at start.
        addr: SocketAddr,
    },
}

impl Reactor {
    pub fn new(parts: ReactorParts) -> io::Result<Reactor> {
        let ReactorParts {
            poll,
            mut http_listener,
            mut ws_listener,
            config,
            store,
            api_config,
            helper_events,
            hash_pool,
            stop,
            mut signals,
        } = parts;
        let engine = match store {
            StoreParts::Embedded {
                replayed,
                history,
                writer,
                message_log,
                data_dir,
            } => {
                let state = ChatState::from_replay(replayed, config.seat_ttl);
                let mut api = Api::new(state, api_config);
                api.restore_history(history);
                Engine::Embedded(Box::new(Embedded {
                    api,
                    writer: Some(writer),
                    message_log: Some(message_log),
                    _data_dir: data_dir,
                }))
            }
            StoreParts::Cluster { url, addr } => {
                let api = ClusterApi::new(api_config, config.seat_ttl, &url, Instant::now());
                Engine::Cluster(Box::new(Cluster::new(api, addr)))
            }
        };
        poll.registry()
            .register(&mut http_listener, HTTP_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut ws_listener, WS_LISTENER, Interest::READABLE)?;
        if let Some(signals) = &mut signals {
            poll.registry()
                .register(signals, SIGNALS, Interest::READABLE)?;
        }
        Ok(Reactor {
            poll,
            http_listener: Some(http_listener),
            ws_listener: Some(ws_listener),
            config,
            engine,
            conns: Slab::new(),
            timers: Timers::default(),
            next_generation: 0,
            helper_events,
            hash_pool,
            stop,
            scratch: vec![0; READ_CHUNK],
            spare_rings: SpareRings::default(),
            spare_inbuf: SpareBuffer::default(),
            dirty: Vec::new(),
            resume_reads: Vec::new(),
            accept_paused_until: None,
            outbox: Vec::new(),
            now: Now::read(),
            metrics: Metrics::default(),
            shutdown_deadline: None,
            signals,
        })
    }

    /// Runs until stopped (the stop flag with the waker, or a signal), then
    /// shuts down gracefully.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shutdown_deadline.is_none() && self.stop.load(Ordering::Acquire) {
                self.begin_shutdown(Now::read());
            }
            if let Some(deadline) = self.shutdown_deadline {
                let settled = self.conns.is_empty() && !self.engine.has_pending_work();
                if settled || Instant::now() >= deadline {
                    break;
                }
            }
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Now::read();
            self.now = now;
            self.engine.tick(now);
            for event in events.iter() {
                match event.token() {
                    REDIS_COMMANDS | REDIS_SUBSCRIBER => {
                        let registry = self.poll.registry();
                        self.engine
                            .on_redis_ready(event, registry, &mut self.scratch, now);
                    }
                    HTTP_LISTENER => self.accept(Listener::Http, now),
                    WS_LISTENER => self.accept(Listener::Ws, now),
                    WAKER => self.drain_helper_events(now),
                    SIGNALS => self.on_signals(now),
                    token => {
                        let (key, generation) = split_token(token);
                        if self
                            .conns
                            .get(key)
                            .is_some_and(|c| c.generation == generation)
                        {
                            if event.is_writable()
                                && self.conns.get(key).is_some_and(|c| c.write_blocked)
                            {
                                self.flush(key, now);
                            }
                            if event.is_read_closed() || event.is_error() {
                                self.on_readable(key, ReadUntil::WouldBlock, now);
                            } else if event.is_readable() {
                                self.on_readable(key, ReadUntil::ShortRead, now);
                            }
                        }
                    }
                }
            }
            self.fire_timers(now);
            self.end_of_turn(now);
        }
        self.finish_shutdown();
        Ok(())
    }

    fn on_signals(&mut self, now: Now) {
        let received: Vec<i32> = match &mut self.signals {
            Some(signals) => signals.pending().collect(),
            None => return,
        };
        if let Some(signal) = received.first() {
            log::info!("received signal {signal}");
            if self.shutdown_deadline.is_none() {
                self.begin_shutdown(now);
            }
        }
    }

    /// Stops accepting, closes WebSockets with 1001 and idle HTTP
    /// connections; requests in progress get their answers, then close.
    fn begin_shutdown(&mut self, now: Now) {
        log::info!("shutting down: {} connection(s) open", self.conns.len());
        self.shutdown_deadline = Some(now.mono + SHUTDOWN_GRACE);
        for listener in [self.http_listener.take(), self.ws_listener.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.engine.ws_close_all(now);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match &mut conn.protocol {
                Protocol::WebSocket(socket) => {
                    socket.in_chat = false;
                    let frame = crate::ws::close_frame(
                        crate::ws::close_code::GOING_AWAY,
                        "server shutting down",
                    );
                    self.close_ws(key, frame, "shutdown", now);
                }
                Protocol::Http(_) => self.http_shutdown(key),
                Protocol::Closing => {}
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.resume_reads.is_empty() || !self.dirty.is_empty() || self.engine.has_turn_work() {
            return Some(Duration::ZERO);
        }
        [
            self.timers.next(),
            self.engine.next_deadline(),
            self.accept_paused_until,
            self.shutdown_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// The grace period is over (or nothing is left): close what remains and
    /// let the writer finish every queued record before returning.
    fn finish_shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.flush_quietly(key);
            self.remove(key, "shutdown");
        }
        self.engine.finish();
        log::info!("stopped");
    }

    fn accept(&mut self, listener: Listener, now: Now) {
        if self.accept_paused_until.is_some() || self.shutdown_deadline.is_some() {
            return;
        }
        loop {
            let socket = match listener {
                Listener::Http => self.http_listener.as_ref(),
                Listener::Ws => self.ws_listener.as_ref(),
            };
            let Some(socket) = socket else {
                return;
            };
            let accepted = socket.accept();
            match accepted {
                Ok((socket, peer)) => self.admit_connection(socket, peer, listener, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    if is_resource_exhaustion(&e) {
                        log::warn!("accept failed ({e}); pausing accepts for {ACCEPT_BACKOFF:?}");
                    } else {
                        log::error!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    }
                    self.accept_paused_until = Some(now.mono + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn admit_connection(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        listener: Listener,
        now: Now,
    ) {
        if self.conns.len() >= self.config.max_connections {
            if listener == Listener::Http {
                // Best effort: the socket is fresh, so a short response fits
                // in its send buffer; if not, the client only sees the close.
                let busy =
                    Response::res(503, "too many connections").with_header("Retry-After", "1");
                let _ = socket.write(&busy.encode(false, false, false, &self.config.cors_origin));
            }
            self.metrics.connections_refused += 1;
            log::warn!("refused {peer}: {} connections open", self.conns.len());
            return;
        }
        self.metrics.connections_accepted += 1;
        let _ = socket.set_nodelay(true);
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key > 0xffff_ffff {
            return;
        }
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            token_for(key, generation),
            // Both, once: edge-triggered writability is only signalled after
            // a write found the buffer full, so it costs nothing while output
            // flows, and saves two epoll_ctl calls per backlog.
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("could not register {peer}: {e}");
            return;
        }
        entry.insert(Connection {
            socket,
            peer,
            client: None,
            listener,
            generation,
            inbuf: Vec::new(),
            out: OutQueue::default(),
            protocol: Protocol::Http(Box::new(HttpConn::new(self.config.http_limits))),
            deadline: None,
            armed: None,
            last_activity: now.mono,
            last_read: now.mono,
            write_blocked: false,
            peer_closed: false,
            close_reason: None,
            was_websocket: false,
            opened: now.mono,
            bytes_in: 0,
            bytes_out: 0,
            read_paused: false,
            in_dirty_list: false,
        });
        log::debug!("accepted {peer}");
        // Edge-triggered: bytes that arrived with the connection would never
        // raise another event, so read them now.
        self.on_readable(key, ReadUntil::WouldBlock, now);
    }

    /// Reads what the socket has, then lets the protocol consume it.
    fn on_readable(&mut self, key: usize, until: ReadUntil, now: Now) {
        let cap = self.read_cap();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut read_now = 0;
        loop {
            if conn.inbuf.len() >= cap || read_now >= cap {
                // Stop taking bytes until the protocol catches up (or, for a
                // closing connection, until the next turn); the kernel
                // buffer and TCP flow control hold the rest.
                conn.read_paused = true;
                break;
            }
            match conn.socket.read(&mut self.scratch) {
                Ok(0) => {
                    conn.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    conn.last_activity = now.mono;
                    conn.last_read = now.mono;
                    conn.bytes_in += n as u64;
                    read_now += n;
                    self.metrics.bytes_in += n as u64;
                    if !matches!(conn.protocol, Protocol::Closing) {
                        if conn.inbuf.capacity() == 0 {
                            conn.inbuf = self.spare_inbuf.take();
                        }
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    }
                    if until == ReadUntil::ShortRead && n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read from {} failed: {e}", conn.who());
                    self.remove(key, "read error");
                    return;
                }
            }
        }
        self.process(key, now);
    }

    fn process(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.protocol {
            Protocol::Http(_) => self.process_http(key, now),
            Protocol::WebSocket(_) => self.process_ws(key, now),
            Protocol::Closing => {
                if conn.peer_closed {
                    self.remove(key, "peer closed");
                } else if std::mem::take(&mut conn.read_paused) {
                    self.resume_reads.push(key);
                }
            }
        }
    }

    /// Decides what a connection is waiting for after its input was handled.
    fn after_input(&mut self, key: usize, now: Now) {
        let read_cap = self.read_cap();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.protocol {
            Protocol::Http(http) if conn.peer_closed && http.awaiting.is_none() => {
                // Nothing more can arrive: send what is owed, then close.
                if conn.out.is_empty() {
                    self.remove(key, "peer closed");
                    return;
                }
                http.close_after_flush = true;
            }
            Protocol::WebSocket(_) if conn.peer_closed => {
                // The peer vanished without a close frame.
                self.remove(key, "peer vanished");
                return;
            }
            _ => {}
        }
        if conn.read_paused && conn.inbuf.len() < read_cap {
            conn.read_paused = false;
            self.resume_reads.push(key);
        }
        self.mark_dirty(key);
        self.update_deadline(key, now);
    }

    /// Input a connection may hold unparsed before we stop reading it.
    fn read_cap(&self) -> usize {
        self.config.http_limits.max_head_bytes + READ_CHUNK
    }

    fn update_deadline(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = match &conn.protocol {
            Protocol::Http(http) => http.deadline(conn.opened, conn.last_activity, &self.config),
            Protocol::WebSocket(ws) => {
                Some(ws.deadline(conn.deadline, conn.last_read, &self.config, now.mono))
            }
            Protocol::Closing => conn.deadline.or(Some(now.mono + LINGER)),
        };
        set_deadline(&mut self.timers, key, conn, deadline);
    }

    fn fire_timers(&mut self, now: Now) {
        while let Some((key, generation)) = self.timers.pop_due(now.mono) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.armed = None;
            match conn.deadline {
                Some(at) if at <= now.mono => {
                    conn.deadline = None;
                    self.on_deadline(key, now);
                }
                Some(later) => {
                    self.timers.reschedule(key, generation, None, Some(later));
                    conn.armed = Some(later);
                }
                None => {}
            }
        }
        if self.accept_paused_until.is_some_and(|at| at <= now.mono) {
            self.accept_paused_until = None;
            self.accept(Listener::Http, now);
            self.accept(Listener::Ws, now);
        }
    }

    fn on_deadline(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match &conn.protocol {
            Protocol::WebSocket(_) => self.ws_deadline(key, now),
            Protocol::Http(http) if http.receiving_request() => self.request_timeout(key, now),
            _ => {
                log::debug!("closing idle connection {}", conn.who());
                self.remove(key, "idle timeout");
            }
        }
    }

    /// Hands this turn's chat messages to the message log; their frames
    /// wait until it reports them written.
    fn submit_messages(&mut self) {
        let Some(embedded) = self.engine.embedded() else {
            return;
        };
        while let Some((id, records)) = embedded.api.poll_message_append() {
            match &embedded.message_log {
                Some(log) => log.append(id, records),
                // Only after shutdown has stopped the log: nobody is left
                // to deliver to.
                None => embedded.api.handle_messages_written(id),
            }
        }
    }

    fn on_message_log(&mut self, event: LogEvent) {
        let Some(embedded) = self.engine.embedded() else {
            return;
        };
        match event {
            LogEvent::Written { id } => embedded.api.handle_messages_written(id),
            LogEvent::WriteFailing { id, error } => {
                self.metrics.message_log_write_failures += 1;
                embedded.api.handle_message_write_failing(id, &error);
            }
            LogEvent::Synced { micros } => self
                .metrics
                .message_log_sync_seconds
                .observe(micros as f64 / 1e6),
            LogEvent::Compacted {
                bytes_before,
                bytes_after,
            } => {
                self.metrics.history_compactions += 1;
                log::debug!("message log compacted: {bytes_before} -> {bytes_after} bytes");
            }
        }
    }

    fn drain_helper_events(&mut self, now: Now) {
        while let Ok(event) = self.helper_events.try_recv() {
            match event {
                HelperEvent::Password(job, outcome) => {
                    if let Some((conn, response)) = self.engine.on_password_done(job, outcome, now)
                    {
                        self.deliver(conn, response, now);
                    }
                }
                HelperEvent::Stored(completion) => {
                    if completion.first_in_group {
                        self.metrics
                            .fsync_seconds
                            .observe(completion.sync_micros as f64 / 1e6);
                    }
                    if completion.result.is_err() {
                        self.metrics.storage_failures += 1;
                    }
                    let responses = match self.engine.embedded() {
                        Some(embedded) => embedded.api.on_batch_done(completion),
                        None => Vec::new(),
                    };
                    for (conn, response) in responses {
                        self.deliver(conn, response, now);
                    }
                }
                HelperEvent::MessageLog(event) => self.on_message_log(event),
            }
        }
    }

    fn end_of_turn(&mut self, now: Now) {
        self.submit_messages();
        self.deliver_frames(now);
        // One pass per turn, so one flooding client cannot hold the loop.
        for key in std::mem::take(&mut self.resume_reads) {
            self.on_readable(key, ReadUntil::WouldBlock, now);
        }
        for (conn, response) in self.engine.flush_work(self.poll.registry(), now) {
            self.deliver(conn, response, now);
        }
        // After Redis's replies: a lookup answered may have started a hash.
        for (job, work) in self.engine.take_password_jobs() {
            self.hash_pool.submit(job, work);
        }
        if self.engine.take_drop_all_websockets() {
            self.drop_all_websockets(now);
        }
        // Redis replies may have produced frames.
        self.deliver_frames(now);
        self.spare_rings.trim(now.mono);
        // Cork: everything a connection was owed this turn leaves in one
        // vectored write.
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.in_dirty_list = false;
            }
            self.flush(key, now);
        }
        // Flushing may make more work (held-back requests); it waits for the
        // next turn, which then does not block in poll.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.in_dirty_list {
                conn.in_dirty_list = true;
                self.dirty.push(key);
            }
        }
    }

    /// Writes queued output; completes a pending close once everything is
    /// out.
    fn flush(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let result = conn.out.flush_to(&mut conn.socket, &mut self.spare_rings);
        let blocked = match result {
            Ok((written, how)) => {
                if written > 0 {
                    conn.last_activity = now.mono;
                    conn.bytes_out += written as u64;
                    self.metrics.bytes_out += written as u64;
                }
                how == Flushed::Blocked
            }
            Err(e) => {
                log::debug!("write to {} failed: {e}", conn.who());
                self.remove(key, "write error");
                return;
            }
        };
        conn.write_blocked = blocked;
        if blocked {
            return;
        }
        let close_now = match &conn.protocol {
            Protocol::Http(http) => http.close_after_flush,
            Protocol::WebSocket(ws) => ws.close_after_flush,
            Protocol::Closing => false,
        };
        if close_now {
            self.begin_close(key, now);
        } else if matches!(conn.protocol, Protocol::Http(_)) {
            self.http_flushed(key, now);
        }
    }

    /// Everything is written: shut our side and drain the peer's until it
    /// closes, so our last response is read rather than reset.
    fn begin_close(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.peer_closed {
            self.remove(key, "peer closed");
            return;
        }
        let _ = conn.socket.shutdown(Shutdown::Write);
        conn.protocol = Protocol::Closing;
        conn.inbuf = Vec::new();
        set_deadline(&mut self.timers, key, conn, Some(now.mono + LINGER));
    }

    /// Used at shutdown: one non-blocking attempt to send what is queued.
    fn flush_quietly(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let _ = conn.out.flush_to(&mut conn.socket, &mut self.spare_rings);
        }
    }

    /// Drops a connection. `reason` is logged unless an earlier decision
    /// to close it recorded its own.
    fn remove(&mut self, key: usize, reason: &'static str) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let protocol = match conn.protocol {
                Protocol::WebSocket(_) => "websocket",
                Protocol::Http(_) => "http",
                Protocol::Closing if conn.was_websocket => "websocket",
                Protocol::Closing => "http",
            };
            log::info!(
                target: "chatroom::conn",
                "closed peer={} client={} protocol={} reason=\"{}\" duration_ms={} bytes_in={} bytes_out={}",
                conn.peer,
                conn.client_ip(),
                protocol,
                conn.close_reason.unwrap_or(reason),
                self.now.mono.saturating_duration_since(conn.opened).as_millis(),
                conn.bytes_in,
                conn.bytes_out
            );
            if let Protocol::WebSocket(ws) = &conn.protocol {
                if ws.in_chat {
                    self.engine.ws_closed(conn.conn_ref(key), self.now);
                }
            }
            self.timers
                .reschedule(key, conn.generation, conn.armed, None);
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
    }
}

/// A stop request for a running reactor, usable from any thread.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::SpareBuffer;

    #[test]
    fn an_emptied_input_buffer_passes_to_the_next_reader() {
        let mut spare = SpareBuffer::default();
        let mut first = Vec::with_capacity(512);
        first.extend_from_slice(b"consumed");
        first.clear();
        spare.recycle(&mut first);
        assert_eq!(first.capacity(), 0, "the idle connection keeps no buffer");

        let reused = spare.take();
        assert!(reused.is_empty() && reused.capacity() >= 512);
        assert_eq!(spare.take().capacity(), 0, "one buffer serves one reader");
    }

    #[test]
    fn the_spare_keeps_the_larger_buffer_and_never_a_huge_one() {
        let mut spare = SpareBuffer::default();
        spare.recycle(&mut Vec::with_capacity(4096));
        spare.recycle(&mut Vec::with_capacity(64));
        assert!(spare.take().capacity() >= 4096);

        spare.recycle(&mut Vec::with_capacity(SpareBuffer::MAX_KEPT + 1));
        assert_eq!(spare.take().capacity(), 0, "a big upload's buffer is freed");
    }
}

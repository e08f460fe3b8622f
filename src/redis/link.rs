//! One Redis connection as a sans-IO state machine, in the quinn-proto
//! style: the driver (the reactor; a blocking loop in tests) owns the
//! socket and the clock, feeds bytes and time in, and polls for bytes to
//! write, the next deadline and events. The link owns everything else:
//! the handshake, the FIFO of commands awaiting replies, pub/sub, reply
//! deadlines, idle pings, and when to reconnect.
//!
//! The same type serves both connections a node keeps: [`Role::Commands`]
//! pipelines commands and matches replies to tags in order;
//! [`Role::Subscriber`] keeps a set of wanted channels subscribed across
//! reconnects and turns pushes into messages.
//!
//! Driver contract, per turn:
//! 1. `poll_event` until `None`. On [`LinkEvent::Connect`], drop any old
//!    socket and start connecting; report `handle_connected` when the
//!    connection is established or `handle_disconnected` if it fails. On
//!    [`LinkEvent::Down`], close the socket.
//! 2. Write `poll_transmit` and report what was written with
//!    `advance_transmit`.
//! 3. Feed what was read to `handle_input`; report end of stream or a
//!    socket error with `handle_disconnected`.
//! 4. Wake by `poll_timeout` and call `handle_timeout`.
//!
//! Every `Connect` is followed by exactly one `Down`, with at most one `Up`
//! between them, so the driver never has two sockets for one link and the
//! consumer can count on the pairing. Calls that arrive for a connection
//! the link has already given up (bytes after `Down`, a second
//! disconnect) are ignored.
//!
//! Nothing from the server is trusted before it is bounded: replies and
//! pub/sub messages pass the RESP limits, replies must match what was
//! asked, and anything else resets the connection.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use super::resp::{Command, Reply, RespDecoder, RespError, RespLimits, Status};
use super::url::RedisUrl;

/// The caller's name for a command, handed back with its reply.
pub type Tag = u64;

/// Which of a node's two connections this link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Pipelined commands, one reply each, in order.
    Commands,
    /// SUBSCRIBE only: Redis refuses other commands on a subscribed
    /// connection in RESP2, and its pushes could not be told from replies.
    Subscriber,
}

/// How a link connects, authenticates, and bounds itself.
#[derive(Clone)]
pub struct LinkConfig {
    pub role: Role,
    /// ACL user for `AUTH` (Redis 6+); `None` sends `AUTH password`.
    pub username: Option<String>,
    /// Sent with `AUTH` first thing after connecting; `None` sends no AUTH.
    pub password: Option<String>,
    /// `SELECT`ed after AUTH; 0 needs no SELECT.
    pub db: u32,
    /// `CLIENT SETNAME`, so an operator can tell this node in
    /// `CLIENT LIST`.
    pub client_name: Option<String>,
    /// Bounds on every reply and pub/sub message.
    pub limits: RespLimits,
    /// Commands awaiting replies before `send` says `Full`.
    pub max_outstanding: usize,
    /// Encoded commands not yet written before `send` says `Full`.
    pub max_unsent_bytes: usize,
    /// Channels a subscriber link may want at once.
    pub max_channels: usize,
    /// From `Connect` to `handle_connected`.
    pub connect_timeout: Duration,
    /// From queueing a command to its reply; past it the connection is
    /// deemed dead and everything outstanding fails.
    pub reply_timeout: Duration,
    /// Silence after which an idle link sends PING, so a half-open
    /// connection (no RST ever comes) is found by `reply_timeout`. `None`:
    /// never.
    pub ping_after: Option<Duration>,
    /// The first reconnect waits between half of this and this.
    pub backoff_initial: Duration,
    /// Reconnect waits double up to this ceiling.
    pub backoff_max: Duration,
    /// Seeds the reconnect jitter. Nodes should differ (seed from
    /// `getrandom`), so that nodes that lost Redis together do not all
    /// come back at the same instant; tests fix it to replay exactly.
    pub jitter_seed: u64,
}

impl LinkConfig {
    pub fn new(role: Role) -> Self {
        LinkConfig {
            role,
            username: None,
            password: None,
            db: 0,
            client_name: None,
            limits: RespLimits::default(),
            max_outstanding: 10_000,
            max_unsent_bytes: 4 * 1024 * 1024,
            max_channels: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            ping_after: Some(Duration::from_secs(5)),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            jitter_seed: 0,
        }
    }

    /// The defaults, with the credentials and database of `url`.
    pub fn from_url(url: &RedisUrl, role: Role) -> Self {
        LinkConfig {
            username: url.username.clone(),
            password: url.password.clone(),
            db: url.db,
            ..LinkConfig::new(role)
        }
    }
}

/// Hand-written so that a password never reaches a log.
impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("role", &self.role)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("client_name", &self.client_name)
            .field("limits", &self.limits)
            .field("max_outstanding", &self.max_outstanding)
            .field("max_unsent_bytes", &self.max_unsent_bytes)
            .field("max_channels", &self.max_channels)
            .field("connect_timeout", &self.connect_timeout)
            .field("reply_timeout", &self.reply_timeout)
            .field("ping_after", &self.ping_after)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("jitter_seed", &self.jitter_seed)
            .finish()
    }
}

/// What the link tells its driver and its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Open a new connection now (dropping any old one).
    Connect,
    /// Handshake done: commands may be sent. Subscriptions follow as
    /// `Subscribed` events.
    Up,
    /// The connection (or the attempt at one) is over: close the socket.
    /// The next `Connect` comes after `retry_in`. Every command that was
    /// outstanding is reported `Failed` right after this.
    Down {
        reason: DownReason,
        retry_in: Duration,
    },
    /// The reply to the command sent with `tag`. An `Error` reply is an
    /// answer like any other: the link is fine.
    Reply { tag: Tag, reply: Reply },
    /// The command sent with `tag` will get no reply: the connection went
    /// down first. It may or may not have been executed.
    Failed { tag: Tag },
    /// A message published on a wanted channel.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// Redis confirmed a subscription, after `subscribe` or a reconnect:
    /// messages on the channel flow from here on, and anything published
    /// before it was missed.
    Subscribed { channel: Vec<u8> },
}

/// Why a connection went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The server closed the connection.
    PeerClosed,
    /// Connecting, reading or writing failed (reported by the driver).
    Io(io::ErrorKind),
    /// `handle_connected` did not come within `connect_timeout`.
    ConnectTimeout,
    /// A reply did not come within `reply_timeout`.
    ReplyTimeout,
    /// The server sent bytes that are not RESP2 within the limits.
    Protocol(RespError),
    /// The server refused a command the link itself sent (AUTH, SELECT,
    /// SUBSCRIBE, PING), with its error text.
    Refused(String),
    /// A reply nothing asked for, or not the shape its command promises.
    UnexpectedReply,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::PeerClosed => f.write_str("closed by Redis"),
            DownReason::Io(kind) => write!(f, "I/O error: {kind}"),
            DownReason::ConnectTimeout => f.write_str("connect timed out"),
            DownReason::ReplyTimeout => f.write_str("reply timed out"),
            DownReason::Protocol(error) => write!(f, "protocol error: {error}"),
            DownReason::Refused(text) => write!(f, "refused: {text}"),
            DownReason::UnexpectedReply => f.write_str("unexpected reply"),
        }
    }
}

/// Why `send` did not queue a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The link is not up; wait for `Up`.
    NotConnected,
    /// Back-pressure: too many commands outstanding or too many bytes
    /// unsent. Retry after replies arrive or the driver writes.
    Full,
    /// The command alone is over `max_unsent_bytes`: it can never be sent.
    TooLarge,
    /// A subscriber link sends no commands.
    WrongRole,
    /// A command that would break one-reply-per-command or survive only
    /// until the next reconnect (SUBSCRIBE, MONITOR, SELECT, HELLO, ...).
    Unsupported,
}

/// Why `subscribe` or `unsubscribe` did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// Only a subscriber link subscribes.
    WrongRole,
    /// Already `max_channels` channels wanted.
    TooManyChannels,
    /// A channel name over the reply string limit: its confirmations
    /// could never be accepted.
    ChannelTooLong,
    /// Back-pressure, as for `send`.
    Full,
}

/// Room for what the handshake queues besides subscriptions: AUTH,
/// SELECT, CLIENT SETNAME.
const HANDSHAKE_STEPS: usize = 3;

/// Buffers larger than this are given back once empty, so an idle link
/// does not pin the memory of its busiest moment.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// The transmit buffer is compacted once this much of it has been
/// written and that is at least half of it: amortised O(1) per byte.
const COMPACT_AFTER_BYTES: usize = 16 * 1024;

/// One Redis connection. See the module documentation for the driver
/// contract.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    state: State,
    decoder: RespDecoder,
    /// Bytes of a reply that has not fully arrived.
    rx: Vec<u8>,
    /// Encoded commands; `tx[tx_written..]` is still to be written.
    tx: Vec<u8>,
    tx_written: usize,
    /// What each reply still to come answers, oldest first.
    awaiting: VecDeque<Pending>,
    /// How many of `awaiting` are the consumer's commands.
    user_awaiting: usize,
    /// Handshake replies still to come before `Up`.
    handshake_left: usize,
    events: VecDeque<LinkEvent>,
    /// Channels to be subscribed to whenever connected. While connected,
    /// every one has had its SUBSCRIBE sent on this connection.
    wanted: BTreeSet<Vec<u8>>,
    /// Connection attempts that failed since the last `Up`.
    failures: u32,
    /// splitmix64 state for the jitter.
    rng: u64,
    /// When bytes last arrived (or the connection was made).
    last_heard: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting out the backoff.
    Waiting { retry_at: Instant },
    /// `Connect` emitted; waiting for `handle_connected`.
    Connecting { deadline: Instant },
    /// Connected, handshake replies outstanding.
    Handshaking,
    /// `Up` emitted.
    Up,
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    deadline: Instant,
}

/// What a reply answers.
#[derive(Debug)]
enum Expect {
    Handshake(Step),
    User(Tag),
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
    Ping,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Auth,
    Select,
    SetName,
}

impl Step {
    fn command_name(self) -> &'static str {
        match self {
            Step::Auth => "AUTH",
            Step::Select => "SELECT",
            Step::SetName => "CLIENT SETNAME",
        }
    }
}

impl Link {
    /// A link that wants to connect at once: the first event is `Connect`.
    pub fn new(config: LinkConfig, now: Instant) -> Link {
        let mut link = Link {
            decoder: RespDecoder::new(config.limits),
            rng: config.jitter_seed,
            config,
            state: State::Waiting { retry_at: now },
            rx: Vec::new(),
            tx: Vec::new(),
            tx_written: 0,
            awaiting: VecDeque::new(),
            user_awaiting: 0,
            handshake_left: 0,
            events: VecDeque::new(),
            wanted: BTreeSet::new(),
            failures: 0,
            last_heard: now,
        };
        link.start_connecting(now);
        link
    }

    pub fn role(&self) -> Role {
        self.config.role
    }

    /// Whether commands may be sent.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The consumer's commands awaiting replies.
    pub fn outstanding(&self) -> usize {
        self.user_awaiting
    }

    /// Encoded bytes not yet written.
    pub fn unsent_bytes(&self) -> usize {
        self.tx.len() - self.tx_written
    }

    /// The channels a subscriber link keeps subscribed.
    pub fn wanted_channels(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.wanted.iter().map(Vec::as_slice)
    }

    /// Connection attempts that failed since the link was last up.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The connection the last `Connect` asked for is established.
    pub fn handle_connected(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting { .. }) {
            return;
        }
        self.state = State::Handshaking;
        self.last_heard = now;
        if let Some(password) = self.config.password.clone() {
            let mut auth = Command::new("AUTH");
            if let Some(username) = &self.config.username {
                auth.push_arg(username.as_bytes());
            }
            auth.push_arg(password.as_bytes());
            self.queue_handshake(&auth, Step::Auth, now);
        }
        if self.config.db != 0 {
            let select = Command::new("SELECT").arg(self.config.db.to_string());
            self.queue_handshake(&select, Step::Select, now);
        }
        if let Some(name) = &self.config.client_name {
            let set_name = Command::new("CLIENT").arg("SETNAME").arg(name);
            self.queue_handshake(&set_name, Step::SetName, now);
        }
        // Subscriptions ride right behind the handshake: if it fails the
        // connection goes down with them, and if not they are in flight a
        // round trip sooner.
        let channels: Vec<Vec<u8>> = self.wanted.iter().cloned().collect();
        for channel in channels {
            let subscribe = Command::new("SUBSCRIBE").arg(&channel);
            self.queue(&subscribe, Expect::Subscribe(channel), now);
        }
        if self.handshake_left == 0 {
            self.become_up();
        }
    }

    /// The connection, or the attempt at one, ended: end of stream
    /// (`DownReason::PeerClosed`) or a socket error (`DownReason::Io`).
    pub fn handle_disconnected(&mut self, now: Instant, reason: DownReason) {
        if matches!(self.state, State::Waiting { .. }) {
            return;
        }
        self.go_down(now, reason);
    }

    /// Bytes read from the connection.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) {
        if !self.is_connected() || input.is_empty() {
            return;
        }
        self.last_heard = now;
        if self.rx.is_empty() {
            // The common case, a read holding whole replies: decode straight
            // from the driver's buffer and keep only a partial tail.
            let consumed = self.decode_replies(input, now);
            if self.is_connected() {
                self.rx
                    .extend_from_slice(input.get(consumed..).unwrap_or_default());
            }
        } else {
            let mut rx = std::mem::take(&mut self.rx);
            rx.extend_from_slice(input);
            let consumed = self.decode_replies(&rx, now);
            if self.is_connected() {
                rx.drain(..consumed.min(rx.len()));
                if rx.is_empty() && rx.capacity() > KEEP_BUFFER_BYTES {
                    rx = Vec::new();
                }
                self.rx = rx;
            }
        }
    }

    /// Bytes to write, if any.
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        if !self.is_connected() {
            return None;
        }
        self.tx
            .get(self.tx_written..)
            .filter(|rest| !rest.is_empty())
    }

    /// `written` bytes of `poll_transmit` went out.
    pub fn advance_transmit(&mut self, written: usize) {
        self.tx_written = self.tx_written.saturating_add(written).min(self.tx.len());
        if self.tx_written == self.tx.len() {
            self.tx.clear();
            self.tx_written = 0;
            if self.tx.capacity() > KEEP_BUFFER_BYTES {
                self.tx = Vec::new();
            }
        } else if self.tx_written >= COMPACT_AFTER_BYTES && self.tx_written * 2 >= self.tx.len() {
            self.tx.drain(..self.tx_written);
            self.tx_written = 0;
        }
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { retry_at } => Some(retry_at),
            State::Connecting { deadline } => Some(deadline),
            State::Handshaking | State::Up => match self.awaiting.front() {
                Some(oldest) => Some(oldest.deadline),
                None if self.state == State::Up => {
                    self.config.ping_after.map(|quiet| self.last_heard + quiet)
                }
                None => None,
            },
        }
    }

    /// Time passed; acts on whatever deadline is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Waiting { retry_at } if now >= retry_at => self.start_connecting(now),
            State::Connecting { deadline } if now >= deadline => {
                self.go_down(now, DownReason::ConnectTimeout);
            }
            State::Handshaking | State::Up => {
                if let Some(oldest) = self.awaiting.front() {
                    if now >= oldest.deadline {
                        self.go_down(now, DownReason::ReplyTimeout);
                    }
                    return;
                }
                let ping_due = self
                    .config
                    .ping_after
                    .is_some_and(|quiet| now >= self.last_heard + quiet);
                if self.state == State::Up && ping_due {
                    self.queue(&Command::new("PING"), Expect::Ping, now);
                }
            }
            State::Waiting { .. } | State::Connecting { .. } => {}
        }
    }

    /// Whether `poll_event` has anything.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Queues `command`; its reply comes back as `Reply { tag, .. }` (or
    /// `Failed { tag }`), in the order commands were sent.
    pub fn send(&mut self, command: &Command, tag: Tag, now: Instant) -> Result<(), SendError> {
        if self.config.role != Role::Commands {
            return Err(SendError::WrongRole);
        }
        if self.state != State::Up {
            return Err(SendError::NotConnected);
        }
        if breaks_reply_order(command) {
            return Err(SendError::Unsupported);
        }
        if self.user_awaiting >= self.config.max_outstanding {
            return Err(SendError::Full);
        }
        let before = self.tx.len();
        let written = command.encode(&mut self.tx);
        if written > self.config.max_unsent_bytes {
            self.tx.truncate(before);
            return Err(SendError::TooLarge);
        }
        if self.unsent_bytes() > self.config.max_unsent_bytes {
            self.tx.truncate(before);
            return Err(SendError::Full);
        }
        self.awaiting.push_back(Pending {
            expect: Expect::User(tag),
            deadline: now + self.config.reply_timeout,
        });
        self.user_awaiting += 1;
        Ok(())
    }

    /// Wants `channel` subscribed from now on, across reconnects. While
    /// connected SUBSCRIBE goes out at once; otherwise after the next
    /// handshake. `Subscribed` confirms it.
    pub fn subscribe(&mut self, channel: &[u8], now: Instant) -> Result<(), SubscribeError> {
        self.check_subscriber(channel)?;
        if self.wanted.contains(channel) {
            return Ok(());
        }
        if self.wanted.len() >= self.config.max_channels {
            return Err(SubscribeError::TooManyChannels);
        }
        if self.is_connected() {
            let subscribe = Command::new("SUBSCRIBE").arg(channel);
            self.queue_bounded(&subscribe, Expect::Subscribe(channel.to_vec()), now)?;
        }
        self.wanted.insert(channel.to_vec());
        Ok(())
    }

    /// No longer wants `channel`. Messages on it that arrive before Redis
    /// confirms are dropped.
    pub fn unsubscribe(&mut self, channel: &[u8], now: Instant) -> Result<(), SubscribeError> {
        self.check_subscriber(channel)?;
        if !self.wanted.contains(channel) {
            return Ok(());
        }
        if self.is_connected() {
            let unsubscribe = Command::new("UNSUBSCRIBE").arg(channel);
            self.queue_bounded(&unsubscribe, Expect::Unsubscribe(channel.to_vec()), now)?;
        }
        self.wanted.remove(channel);
        Ok(())
    }

    fn check_subscriber(&self, channel: &[u8]) -> Result<(), SubscribeError> {
        if self.config.role != Role::Subscriber {
            return Err(SubscribeError::WrongRole);
        }
        if channel.len() > self.config.limits.max_bulk_bytes {
            return Err(SubscribeError::ChannelTooLong);
        }
        Ok(())
    }

    fn is_connected(&self) -> bool {
        matches!(self.state, State::Handshaking | State::Up)
    }

    fn start_connecting(&mut self, now: Instant) {
        self.state = State::Connecting {
            deadline: now + self.config.connect_timeout,
        };
        self.events.push_back(LinkEvent::Connect);
    }

    fn become_up(&mut self) {
        self.state = State::Up;
        self.failures = 0;
        self.events.push_back(LinkEvent::Up);
    }

    /// Ends the connection: `Down`, then `Failed` for each command in the
    /// order sent, and a fresh start for the next connection.
    fn go_down(&mut self, now: Instant, reason: DownReason) {
        let retry_in = self.next_backoff();
        self.state = State::Waiting {
            retry_at: now + retry_in,
        };
        self.events.push_back(LinkEvent::Down { reason, retry_in });
        for pending in self.awaiting.drain(..) {
            if let Expect::User(tag) = pending.expect {
                self.events.push_back(LinkEvent::Failed { tag });
            }
        }
        self.user_awaiting = 0;
        self.handshake_left = 0;
        self.tx = Vec::new();
        self.tx_written = 0;
        self.rx = Vec::new();
        self.decoder = RespDecoder::new(self.config.limits);
    }

    /// The wait before the next attempt: a window that doubles with each
    /// consecutive failure up to `backoff_max`, and a random point in its
    /// upper half. Using the upper half means successive waits never
    /// shrink until the ceiling (each window starts where the last one
    /// ended), while nodes that lost Redis at the same moment still spread
    /// out.
    fn next_backoff(&mut self) -> Duration {
        let doublings = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self
            .config
            .backoff_initial
            .checked_mul(1 << doublings)
            .map_or(self.config.backoff_max, |wait| {
                wait.min(self.config.backoff_max)
            });
        let floor = ceiling / 2;
        let spread = u64::try_from((ceiling - floor).as_nanos()).unwrap_or(u64::MAX);
        let jitter = match spread.checked_add(1) {
            Some(choices) => self.next_random() % choices,
            None => self.next_random(),
        };
        floor + Duration::from_nanos(jitter)
    }

    /// splitmix64: tiny, seedable, and good enough to spread reconnects.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.rng;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn queue_handshake(&mut self, command: &Command, step: Step, now: Instant) {
        self.queue(command, Expect::Handshake(step), now);
        self.handshake_left += 1;
    }

    /// Queues a command of the link's own, outside the consumer's bounds:
    /// the handshake, resubscriptions (at most `max_channels`) and pings
    /// (only when nothing else is outstanding).
    fn queue(&mut self, command: &Command, expect: Expect, now: Instant) {
        command.encode(&mut self.tx);
        self.awaiting.push_back(Pending {
            expect,
            deadline: now + self.config.reply_timeout,
        });
    }

    /// Queues a SUBSCRIBE or UNSUBSCRIBE the consumer asked for, within
    /// the byte bound and a bound on entries that a subscribe/unsubscribe
    /// loop against a silent server cannot pass.
    fn queue_bounded(
        &mut self,
        command: &Command,
        expect: Expect,
        now: Instant,
    ) -> Result<(), SubscribeError> {
        let max_awaiting = self
            .config
            .max_channels
            .saturating_add(self.config.max_outstanding)
            .saturating_add(HANDSHAKE_STEPS);
        if self.awaiting.len() >= max_awaiting {
            return Err(SubscribeError::Full);
        }
        let before = self.tx.len();
        command.encode(&mut self.tx);
        if self.unsent_bytes() > self.config.max_unsent_bytes {
            self.tx.truncate(before);
            return Err(SubscribeError::Full);
        }
        self.awaiting.push_back(Pending {
            expect,
            deadline: now + self.config.reply_timeout,
        });
        Ok(())
    }

    /// Decodes and handles every complete reply at the front of `input`;
    /// returns how many bytes that was. Stops early if the link goes down.
    fn decode_replies(&mut self, input: &[u8], now: Instant) -> usize {
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            match self.decoder.decode(rest) {
                Ok(Status::Complete((reply, len))) => {
                    consumed += len;
                    if let Err(reason) = self.handle_reply(reply) {
                        self.go_down(now, reason);
                        return consumed;
                    }
                }
                Ok(Status::Partial) => return consumed,
                Err(error) => {
                    self.go_down(now, DownReason::Protocol(error));
                    return consumed;
                }
            }
        }
    }

    fn handle_reply(&mut self, reply: Reply) -> Result<(), DownReason> {
        if self.config.role == Role::Subscriber && push_kind(&reply) == Some(b"message") {
            let (channel, payload) = into_message(reply)?;
            // A message can overtake the confirmation of an UNSUBSCRIBE the
            // consumer asked for; it no longer wants it.
            if self.wanted.contains(&channel) {
                self.events
                    .push_back(LinkEvent::Message { channel, payload });
            }
            return Ok(());
        }
        let Some(pending) = self.awaiting.pop_front() else {
            return Err(DownReason::UnexpectedReply);
        };
        match (pending.expect, reply) {
            (Expect::User(tag), reply) => {
                self.user_awaiting -= 1;
                self.events.push_back(LinkEvent::Reply { tag, reply });
            }
            (Expect::Handshake(step), Reply::Error(text)) => {
                return Err(DownReason::Refused(format!(
                    "{}: {text}",
                    step.command_name()
                )));
            }
            (Expect::Subscribe(_), Reply::Error(text)) => {
                return Err(DownReason::Refused(format!("SUBSCRIBE: {text}")));
            }
            (Expect::Unsubscribe(_), Reply::Error(text)) => {
                return Err(DownReason::Refused(format!("UNSUBSCRIBE: {text}")));
            }
            (Expect::Ping, Reply::Error(text)) => {
                return Err(DownReason::Refused(format!("PING: {text}")));
            }
            (Expect::Handshake(_), reply) if reply.is_ok() => {
                self.handshake_left -= 1;
                if self.handshake_left == 0 {
                    self.become_up();
                }
            }
            (Expect::Subscribe(channel), reply) if confirms(&reply, b"subscribe", &channel) => {
                if self.wanted.contains(&channel) {
                    self.events.push_back(LinkEvent::Subscribed { channel });
                }
            }
            (Expect::Unsubscribe(channel), reply) if confirms(&reply, b"unsubscribe", &channel) => {
            }
            // Unsubscribed from everything (or never subscribed), Redis
            // answers PING the ordinary way; subscribed, as a push.
            (Expect::Ping, Reply::Simple(status)) if status == "PONG" => {}
            (Expect::Ping, reply) if push_kind(&reply) == Some(b"pong") => {}
            _ => return Err(DownReason::UnexpectedReply),
        }
        Ok(())
    }
}

/// Commands whose replies do not come one per command, or whose effect
/// would silently vanish at the next reconnect.
fn breaks_reply_order(command: &Command) -> bool {
    let mut args = command.args();
    let Some(name) = args.next() else {
        return true;
    };
    const REFUSED: [&str; 10] = [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "MONITOR",
        "HELLO",
        "RESET",
        "SELECT",
    ];
    if REFUSED
        .iter()
        .any(|refused| name.eq_ignore_ascii_case(refused.as_bytes()))
    {
        return true;
    }
    // CLIENT REPLY OFF|SKIP suppresses replies.
    name.eq_ignore_ascii_case(b"CLIENT")
        && args
            .next()
            .is_some_and(|sub| sub.eq_ignore_ascii_case(b"REPLY"))
}

/// The first element of a pub/sub push (`message`, `subscribe`, `pong`
/// ...), if `reply` looks like one.
fn push_kind(reply: &Reply) -> Option<&[u8]> {
    reply.as_array()?.first()?.as_bulk()
}

/// `["message", channel, payload]`, all bulk strings.
fn into_message(reply: Reply) -> Result<(Vec<u8>, Vec<u8>), DownReason> {
    let Reply::Array(Some(items)) = reply else {
        return Err(DownReason::UnexpectedReply);
    };
    match <[Reply; 3]>::try_from(items) {
        Ok([_, Reply::Bulk(Some(channel)), Reply::Bulk(Some(payload))]) => Ok((channel, payload)),
        _ => Err(DownReason::UnexpectedReply),
    }
}

/// `[kind, channel, count]`, as Redis confirms SUBSCRIBE and UNSUBSCRIBE.
fn confirms(reply: &Reply, kind: &[u8], channel: &[u8]) -> bool {
    matches!(
        reply.as_array(),
        Some([Reply::Bulk(Some(got_kind)), Reply::Bulk(Some(got_channel)), Reply::Integer(_)])
            if got_kind.as_slice() == kind && got_channel.as_slice() == channel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    fn config(role: Role) -> LinkConfig {
        LinkConfig {
            connect_timeout: CONNECT_TIMEOUT,
            reply_timeout: REPLY_TIMEOUT,
            ping_after: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1600),
            jitter_seed: 7,
            ..LinkConfig::new(role)
        }
    }

    fn ms(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    fn events(link: &mut Link) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    /// Writes out everything the link wants written and reads it as a
    /// server would: each command an array of bulk strings.
    fn written(link: &mut Link) -> Vec<Vec<String>> {
        let mut bytes = Vec::new();
        while let Some(chunk) = link.poll_transmit() {
            let len = chunk.len();
            bytes.extend_from_slice(chunk);
            link.advance_transmit(len);
        }
        let mut decoder = RespDecoder::new(RespLimits::default());
        let mut commands = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Ok(Status::Complete((Reply::Array(Some(args)), len))) = decoder.decode(rest) else {
                panic!("not a command: {:?}", String::from_utf8_lossy(rest));
            };
            rest = &rest[len..];
            commands.push(
                args.iter()
                    .map(|arg| String::from_utf8_lossy(arg.as_bulk().expect("bulk")).into_owned())
                    .collect(),
            );
        }
        commands
    }

    fn command(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    fn bulk(bytes: &[u8]) -> Reply {
        Reply::Bulk(Some(bytes.to_vec()))
    }

    fn push(words: &[&[u8]]) -> Vec<u8> {
        Reply::Array(Some(words.iter().map(|word| bulk(word)).collect())).to_bytes()
    }

    fn confirmation(kind: &str, channel: &str, count: i64) -> Vec<u8> {
        Reply::Array(Some(vec![
            bulk(kind.as_bytes()),
            bulk(channel.as_bytes()),
            Reply::Integer(count),
        ]))
        .to_bytes()
    }

    /// A link that has connected, with the first events checked.
    fn connected(config: LinkConfig, now: Instant) -> Link {
        let mut link = Link::new(config, now);
        assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
        link.handle_connected(now);
        link
    }

    /// A link that is up with nothing outstanding.
    fn up(config: LinkConfig, now: Instant) -> Link {
        let mut link = connected(config, now);
        assert_eq!(events(&mut link), vec![LinkEvent::Up]);
        link
    }

    /// Feeds `input` split at `split` (two reads) and returns the events.
    fn feed_split(link: &mut Link, input: &[u8], split: usize, now: Instant) -> Vec<LinkEvent> {
        let (first, second) = input.split_at(split.min(input.len()));
        link.handle_input(first, now);
        link.handle_input(second, now);
        events(link)
    }

    #[test]
    fn pipelines_commands_and_matches_replies_in_order_however_split() {
        let replies = b"+OK\r\n$1\r\n5\r\n:1\r\n-ERR no such key\r\n".to_vec();
        let mut outcomes = Vec::new();
        for split in 0..=replies.len() {
            let now = Instant::now();
            let mut link = Link::new(config(Role::Commands), now);
            assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
            assert_eq!(
                link.send(&Command::new("PING"), 1, now),
                Err(SendError::NotConnected)
            );
            link.handle_connected(now);
            assert_eq!(events(&mut link), vec![LinkEvent::Up]);
            let commands = [
                Command::new("SET").arg("k").arg("5"),
                Command::new("GET").arg("k"),
                Command::new("INCR").arg("n"),
                Command::new("RENAME").arg("x").arg("y"),
            ];
            for (tag, command) in (10..).zip(&commands) {
                assert_eq!(link.send(command, tag, now), Ok(()));
            }
            assert_eq!(link.outstanding(), 4);
            assert_eq!(
                written(&mut link),
                vec![
                    command(&["SET", "k", "5"]),
                    command(&["GET", "k"]),
                    command(&["INCR", "n"]),
                    command(&["RENAME", "x", "y"]),
                ]
            );
            outcomes.push(feed_split(&mut link, &replies, split, now));
            assert_eq!(link.outstanding(), 0);
        }
        for outcome in &outcomes {
            assert_eq!(
                outcome,
                &vec![
                    LinkEvent::Reply {
                        tag: 10,
                        reply: Reply::Simple("OK".into())
                    },
                    LinkEvent::Reply {
                        tag: 11,
                        reply: bulk(b"5")
                    },
                    LinkEvent::Reply {
                        tag: 12,
                        reply: Reply::Integer(1)
                    },
                    LinkEvent::Reply {
                        tag: 13,
                        reply: Reply::Error("ERR no such key".into())
                    },
                ]
            );
        }
    }

    #[test]
    fn replies_arriving_a_byte_at_a_time_are_matched() {
        let now = Instant::now();
        let mut link = up(config(Role::Commands), now);
        for tag in 0..3 {
            assert_eq!(
                link.send(&Command::new("GET").arg_int(tag), tag as Tag, now),
                Ok(())
            );
        }
        written(&mut link);
        let replies = b"$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:2\r\n";
        for byte in replies {
            link.handle_input(&[*byte], now);
        }
        assert_eq!(
            events(&mut link),
            vec![
                LinkEvent::Reply {
                    tag: 0,
                    reply: bulk(b"abc")
                },
                LinkEvent::Reply {
                    tag: 1,
                    reply: Reply::Bulk(None)
                },
                LinkEvent::Reply {
                    tag: 2,
                    reply: Reply::Array(Some(vec![bulk(b"a"), Reply::Integer(2)]))
                },
            ]
        );
    }

    #[test]
    fn handshake_goes_first_and_up_waits_for_it() {
        let now = Instant::now();
        let mut link = connected(
            LinkConfig {
                username: Some("chat".into()),
                password: Some("s3cret".into()),
                db: 3,
                client_name: Some("chatroom-node".into()),
                ..config(Role::Commands)
            },
            now,
        );
        assert_eq!(events(&mut link), vec![]);
        assert_eq!(
            written(&mut link),
            vec![
                command(&["AUTH", "chat", "s3cret"]),
                command(&["SELECT", "3"]),
                command(&["CLIENT", "SETNAME", "chatroom-node"]),
            ]
        );
        assert!(!link.is_up());
        assert_eq!(
            link.send(&Command::new("PING"), 1, now),
            Err(SendError::NotConnected)
        );
        link.handle_input(b"+OK\r\n+OK\r\n", now);
        assert_eq!(events(&mut link), vec![]);
        link.handle_input(b"+OK\r\n", now);
        assert_eq!(events(&mut link), vec![LinkEvent::Up]);
        assert_eq!(link.send(&Command::new("PING"), 1, now), Ok(()));
    }

    #[test]
    fn a_password_alone_sends_auth_with_one_argument_and_db_zero_no_select() {
        let now = Instant::now();
        let url = RedisUrl::parse("redis://:pw@localhost/0").expect("valid");
        let mut link = connected(LinkConfig::from_url(&url, Role::Commands), now);
        assert_eq!(written(&mut link), vec![command(&["AUTH", "pw"])]);
        link.handle_input(b"+OK\r\n", now);
        assert_eq!(events(&mut link), vec![LinkEvent::Up]);
        assert!(!format!("{:?}", link.config).contains("pw\""));
    }

    #[test]
    fn a_refused_handshake_goes_down_and_retries_after_the_backoff() {
        let now = Instant::now();
        let mut link = connected(
            LinkConfig {
                password: Some("wrong".into()),
                ..config(Role::Commands)
            },
            now,
        );
        written(&mut link);
        link.handle_input(b"-WRONGPASS invalid username-password pair\r\n", now);
        let events_now = events(&mut link);
        let [LinkEvent::Down { reason, retry_in }] = events_now.as_slice() else {
            panic!("{events_now:?}");
        };
        assert_eq!(
            reason,
            &DownReason::Refused("AUTH: WRONGPASS invalid username-password pair".into())
        );
        assert_eq!(link.poll_timeout(), Some(now + *retry_in));
        assert_eq!(link.poll_transmit(), None);
        link.handle_timeout(now + *retry_in - Duration::from_millis(1));
        assert_eq!(events(&mut link), vec![]);
        link.handle_timeout(now + *retry_in);
        assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
        assert_eq!(link.poll_timeout(), Some(now + *retry_in + CONNECT_TIMEOUT));
    }

    #[test]
    fn an_unanswered_command_takes_the_link_down_and_fails_all_in_order() {
        let t0 = Instant::now();
        let mut link = up(config(Role::Commands), t0);
        for tag in 1..=3 {
            let now = ms(t0, tag * 10);
            assert_eq!(link.send(&Command::new("GET").arg("k"), tag, now), Ok(()));
        }
        written(&mut link);
        assert_eq!(link.poll_timeout(), Some(ms(t0, 10) + REPLY_TIMEOUT));
        link.handle_input(b"$-1\r\n", ms(t0, 50));
        assert_eq!(
            events(&mut link),
            vec![LinkEvent::Reply {
                tag: 1,
                reply: Reply::Bulk(None)
            }]
        );
        // The deadline is now the second command's.
        assert_eq!(link.poll_timeout(), Some(ms(t0, 20) + REPLY_TIMEOUT));
        link.handle_timeout(ms(t0, 19) + REPLY_TIMEOUT);
        assert_eq!(events(&mut link), vec![]);
        link.handle_timeout(ms(t0, 20) + REPLY_TIMEOUT);
        let down = events(&mut link);
        assert!(
            matches!(
                down.as_slice(),
                [
                    LinkEvent::Down {
                        reason: DownReason::ReplyTimeout,
                        ..
                    },
                    LinkEvent::Failed { tag: 2 },
                    LinkEvent::Failed { tag: 3 },
                ]
            ),
            "{down:?}"
        );
        assert_eq!(link.outstanding(), 0);
        assert!(!link.is_up());
        // The connection is given up: a late reply, a late close are ignored,
        // and no second Down comes for the same connection.
        link.handle_input(b"$-1\r\n", ms(t0, 2000));
        link.handle_disconnected(ms(t0, 2000), DownReason::PeerClosed);
        assert_eq!(events(&mut link), vec![]);
    }

    #[test]
    fn a_dropped_connection_fails_sent_and_unsent_commands_and_resends_nothing() {
        let now = Instant::now();
        let mut link = up(config(Role::Commands), now);
        assert_eq!(link.send(&Command::new("INCR").arg("a"), 1, now), Ok(()));
        written(&mut link);
        assert_eq!(link.send(&Command::new("INCR").arg("b"), 2, now), Ok(()));
        assert!(link.unsent_bytes() > 0);
        link.handle_disconnected(now, DownReason::Io(io::ErrorKind::ConnectionReset));
        let down = events(&mut link);
        assert!(
            matches!(
                down.as_slice(),
                [
                    LinkEvent::Down {
                        reason: DownReason::Io(io::ErrorKind::ConnectionReset),
                        ..
                    },
                    LinkEvent::Failed { tag: 1 },
                    LinkEvent::Failed { tag: 2 },
                ]
            ),
            "{down:?}"
        );
        assert_eq!(link.unsent_bytes(), 0);
        let retry_at = link.poll_timeout().expect("a retry");
        link.handle_timeout(retry_at);
        assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
        link.handle_connected(retry_at);
        assert_eq!(events(&mut link), vec![LinkEvent::Up]);
        assert_eq!(written(&mut link), Vec::<Vec<String>>::new());
    }

    /// The waits of `rounds` failed attempts in a row.
    fn failed_attempt_waits(link: &mut Link, start: Instant, rounds: usize) -> Vec<Duration> {
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..rounds {
            link.handle_disconnected(now, DownReason::Io(io::ErrorKind::ConnectionRefused));
            match events(link).as_slice() {
                [LinkEvent::Down { retry_in, .. }] => waits.push(*retry_in),
                other => panic!("{other:?}"),
            }
            now += *waits.last().expect("pushed");
            assert_eq!(link.poll_timeout(), Some(now));
            link.handle_timeout(now);
            assert_eq!(events(link), vec![LinkEvent::Connect]);
        }
        waits
    }

    #[test]
    fn backoff_doubles_within_its_jitter_window_and_resets_once_up() {
        let t0 = Instant::now();
        let mut link = Link::new(config(Role::Commands), t0);
        events(&mut link);
        let waits = failed_attempt_waits(&mut link, t0, 8);
        for (attempt, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_millis((100u64 << attempt).min(1600));
            assert!(
                *wait >= ceiling / 2 && *wait <= ceiling,
                "attempt {attempt}: {wait:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        // Until the ceiling (attempt 4), each wait's window starts where the
        // last one's ended: the waits never shrink.
        assert!(
            waits[..5].windows(2).all(|pair| pair[0] <= pair[1]),
            "{waits:?}"
        );
        assert!(waits[5..]
            .iter()
            .all(|wait| *wait >= Duration::from_millis(800)));
        assert_eq!(link.consecutive_failures(), 8);
        // Jittered: not all the same fraction of their window.
        assert!(waits.iter().any(|wait| wait.as_nanos() % 1_000_000 != 0));

        let now = t0 + Duration::from_secs(60);
        link.handle_connected(now);
        assert_eq!(events(&mut link), vec![LinkEvent::Up]);
        assert_eq!(link.consecutive_failures(), 0);
        link.handle_disconnected(now, DownReason::PeerClosed);
        match events(&mut link).as_slice() {
            [LinkEvent::Down { retry_in, .. }] => {
                assert!(*retry_in >= Duration::from_millis(50));
                assert!(*retry_in <= Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jitter_replays_from_its_seed() {
        let now = Instant::now();
        let waits_for = |seed: u64| {
            let mut link = Link::new(
                LinkConfig {
                    jitter_seed: seed,
                    ..config(Role::Commands)
                },
                now,
            );
            events(&mut link);
            failed_attempt_waits(&mut link, now, 6)
        };
        assert_eq!(waits_for(1), waits_for(1));
        assert_ne!(waits_for(1), waits_for(2));
    }

    #[test]
    fn a_connect_that_never_completes_times_out() {
        let t0 = Instant::now();
        let mut link = Link::new(config(Role::Commands), t0);
        assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
        assert_eq!(link.poll_timeout(), Some(t0 + CONNECT_TIMEOUT));
        link.handle_timeout(t0 + CONNECT_TIMEOUT);
        assert!(matches!(
            events(&mut link).as_slice(),
            [LinkEvent::Down {
                reason: DownReason::ConnectTimeout,
                ..
            }]
        ));
        // The driver's late news of the abandoned attempt changes nothing.
        link.handle_connected(t0 + CONNECT_TIMEOUT);
        assert_eq!(events(&mut link), vec![]);
        assert!(!link.is_up());
    }

    #[test]
    fn back_pressure_bounds_outstanding_commands_and_unsent_bytes() {
        let now = Instant::now();
        let mut link = up(
            LinkConfig {
                max_outstanding: 2,
                max_unsent_bytes: 64,
                ..config(Role::Commands)
            },
            now,
        );
        let get = Command::new("GET").arg("key"); // 22 bytes
        assert_eq!(link.send(&get, 1, now), Ok(()));
        assert_eq!(link.send(&get, 2, now), Ok(()));
        assert_eq!(link.send(&get, 3, now), Err(SendError::Full));
        written(&mut link);
        link.handle_input(b"$-1\r\n", now);
        assert_eq!(link.send(&get, 3, now), Ok(()));
        written(&mut link);
        link.handle_input(b"$-1\r\n$-1\r\n", now);
        events(&mut link);

        let huge = Command::new("SET").arg("k").arg([b'x'; 64]);
        assert_eq!(link.send(&huge, 4, now), Err(SendError::TooLarge));
        let medium = Command::new("SET").arg("k").arg([b'x'; 20]); // 47 bytes
        assert_eq!(link.send(&medium, 5, now), Ok(()));
        assert_eq!(link.send(&get, 6, now), Err(SendError::Full));
        assert_eq!(link.unsent_bytes(), 47);
        // Refused commands left nothing behind.
        assert_eq!(
            written(&mut link),
            vec![command(&["SET", "k", &"x".repeat(20)])]
        );
        assert_eq!(link.send(&get, 6, now), Ok(()));
    }

    #[test]
    fn commands_that_break_one_reply_each_are_refused() {
        let now = Instant::now();
        let mut link = up(config(Role::Commands), now);
        for refused in [
            Command::new("subscribe").arg("c"),
            Command::new("PSUBSCRIBE").arg("c*"),
            Command::new("MONITOR"),
            Command::new("SELECT").arg("2"),
            Command::new("HELLO").arg("3"),
            Command::new("client").arg("reply").arg("off"),
            Command::default(),
        ] {
            assert_eq!(link.send(&refused, 1, now), Err(SendError::Unsupported));
        }
        assert_eq!(
            link.send(&Command::new("CLIENT").arg("LIST"), 1, now),
            Ok(())
        );
        assert_eq!(link.subscribe(b"c", now), Err(SubscribeError::WrongRole));
        let mut subscriber = up(config(Role::Subscriber), now);
        assert_eq!(
            subscriber.send(&Command::new("PING"), 1, now),
            Err(SendError::WrongRole)
        );
    }

    #[test]
    fn subscriber_subscribes_behind_the_handshake_and_delivers_messages() {
        let mut stream = b"+OK\r\n".to_vec();
        stream.extend(confirmation("subscribe", "room:a", 1));
        stream.extend(confirmation("subscribe", "room:b", 2));
        stream.extend(push(&[b"message", b"room:a", b"hello \r\n\0 there"]));
        stream.extend(push(&[b"message", b"room:zzz", b"not wanted"]));
        stream.extend(push(&[b"message", b"room:b", b""]));
        let mut outcomes = Vec::new();
        for split in 0..=stream.len() {
            let now = Instant::now();
            let mut link = Link::new(
                LinkConfig {
                    password: Some("pw".into()),
                    ..config(Role::Subscriber)
                },
                now,
            );
            assert_eq!(link.subscribe(b"room:a", now), Ok(()));
            assert_eq!(link.subscribe(b"room:b", now), Ok(()));
            assert_eq!(link.subscribe(b"room:a", now), Ok(()));
            assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
            assert_eq!(written(&mut link), Vec::<Vec<String>>::new());
            link.handle_connected(now);
            assert_eq!(
                written(&mut link),
                vec![
                    command(&["AUTH", "pw"]),
                    command(&["SUBSCRIBE", "room:a"]),
                    command(&["SUBSCRIBE", "room:b"]),
                ]
            );
            outcomes.push(feed_split(&mut link, &stream, split, now));
        }
        for outcome in outcomes {
            assert_eq!(
                outcome,
                vec![
                    LinkEvent::Up,
                    LinkEvent::Subscribed {
                        channel: b"room:a".to_vec()
                    },
                    LinkEvent::Subscribed {
                        channel: b"room:b".to_vec()
                    },
                    LinkEvent::Message {
                        channel: b"room:a".to_vec(),
                        payload: b"hello \r\n\0 there".to_vec()
                    },
                    LinkEvent::Message {
                        channel: b"room:b".to_vec(),
                        payload: Vec::new()
                    },
                ]
            );
        }
    }

    #[test]
    fn wanted_channels_are_resubscribed_after_every_reconnect() {
        let now = Instant::now();
        let mut link = up(config(Role::Subscriber), now);
        for channel in [&b"a"[..], b"b"] {
            assert_eq!(link.subscribe(channel, now), Ok(()));
        }
        assert_eq!(
            written(&mut link),
            vec![command(&["SUBSCRIBE", "a"]), command(&["SUBSCRIBE", "b"])]
        );
        let mut confirmations = confirmation("subscribe", "a", 1);
        confirmations.extend(confirmation("subscribe", "b", 2));
        link.handle_input(&confirmations, now);
        assert_eq!(events(&mut link).len(), 2);

        assert_eq!(link.unsubscribe(b"b", now), Ok(()));
        assert_eq!(link.unsubscribe(b"never", now), Ok(()));
        assert_eq!(link.subscribe(b"c", now), Ok(()));
        assert_eq!(
            written(&mut link),
            vec![command(&["UNSUBSCRIBE", "b"]), command(&["SUBSCRIBE", "c"])]
        );
        // A message on b overtakes the UNSUBSCRIBE's confirmation: dropped.
        let mut replies = push(&[b"message", b"b", b"late"]);
        replies.extend(confirmation("unsubscribe", "b", 1));
        replies.extend(confirmation("subscribe", "c", 2));
        link.handle_input(&replies, now);
        assert_eq!(
            events(&mut link),
            vec![LinkEvent::Subscribed {
                channel: b"c".to_vec()
            }]
        );

        for round in 0..3 {
            link.handle_disconnected(now, DownReason::PeerClosed);
            assert!(matches!(
                events(&mut link).as_slice(),
                [LinkEvent::Down { .. }]
            ));
            // Changes while down take effect at the next connection.
            if round == 1 {
                assert_eq!(link.subscribe(b"d", now), Ok(()));
                assert_eq!(link.unsubscribe(b"a", now), Ok(()));
            }
            let retry_at = link.poll_timeout().expect("a retry");
            link.handle_timeout(retry_at);
            assert_eq!(events(&mut link), vec![LinkEvent::Connect]);
            link.handle_connected(retry_at);
            assert_eq!(events(&mut link), vec![LinkEvent::Up]);
            let expected: Vec<&str> = if round == 0 {
                vec!["a", "c"]
            } else {
                vec!["c", "d"]
            };
            assert_eq!(
                written(&mut link),
                expected
                    .iter()
                    .map(|channel| command(&["SUBSCRIBE", channel]))
                    .collect::<Vec<_>>()
            );
            let mut confirmations = Vec::new();
            for (count, channel) in (1..).zip(&expected) {
                confirmations.extend(confirmation("subscribe", channel, count));
            }
            link.handle_input(&confirmations, retry_at);
            let subscribed: Vec<LinkEvent> = expected
                .iter()
                .map(|channel| LinkEvent::Subscribed {
                    channel: channel.as_bytes().to_vec(),
                })
                .collect();
            assert_eq!(events(&mut link), subscribed);
        }
        let wanted: Vec<&[u8]> = link.wanted_channels().collect();
        assert_eq!(wanted, vec![&b"c"[..], b"d"]);
    }

    #[test]
    fn subscriptions_are_bounded() {
        let now = Instant::now();
        let mut link = Link::new(
            LinkConfig {
                max_channels: 2,
                limits: RespLimits {
                    max_bulk_bytes: 8,
                    ..RespLimits::default()
                },
                ..config(Role::Subscriber)
            },
            now,
        );
        assert_eq!(
            link.subscribe(b"123456789", now),
            Err(SubscribeError::ChannelTooLong)
        );
        assert_eq!(link.subscribe(b"a", now), Ok(()));
        assert_eq!(link.subscribe(b"b", now), Ok(()));
        assert_eq!(
            link.subscribe(b"c", now),
            Err(SubscribeError::TooManyChannels)
        );
        assert_eq!(link.unsubscribe(b"a", now), Ok(()));
        assert_eq!(link.subscribe(b"c", now), Ok(()));
    }

    #[test]
    fn subscription_back_pressure_leaves_the_wanted_set_alone() {
        let now = Instant::now();
        let mut link = up(
            LinkConfig {
                max_unsent_bytes: 40,
                ..config(Role::Subscriber)
            },
            now,
        );
        assert_eq!(link.subscribe(b"aaaa", now), Ok(())); // 30 bytes
        assert_eq!(link.subscribe(b"bbbb", now), Err(SubscribeError::Full));
        assert_eq!(link.unsubscribe(b"aaaa", now), Err(SubscribeError::Full));
        let wanted: Vec<&[u8]> = link.wanted_channels().collect();
        assert_eq!(wanted, vec![&b"aaaa"[..]]);
        assert_eq!(written(&mut link), vec![command(&["SUBSCRIBE", "aaaa"])]);
        assert_eq!(link.subscribe(b"bbbb", now), Ok(()));
    }

    #[test]
    fn bytes_that_break_the_protocol_or_its_bounds_reset_the_link() {
        let now = Instant::now();
        let small = RespLimits {
            max_bulk_bytes: 16,
            ..RespLimits::default()
        };
        let subscribed = |now| {
            let mut link = up(
                LinkConfig {
                    limits: small,
                    ..config(Role::Subscriber)
                },
                now,
            );
            assert_eq!(link.subscribe(b"c", now), Ok(()));
            written(&mut link);
            link.handle_input(&confirmation("subscribe", "c", 1), now);
            events(&mut link);
            link
        };
        let down_reason = |link: &mut Link| match events(link).as_slice() {
            [LinkEvent::Down { reason, .. }, ..] => reason.clone(),
            other => panic!("{other:?}"),
        };

        let mut link = subscribed(now);
        link.handle_input(&push(&[b"message", b"c", &[b'x'; 17]]), now);
        assert_eq!(
            down_reason(&mut link),
            DownReason::Protocol(RespError::BulkTooLarge)
        );
        let mut link = subscribed(now);
        link.handle_input(b"hello\r\n", now);
        assert!(matches!(
            down_reason(&mut link),
            DownReason::Protocol(RespError::Malformed(_))
        ));
        for bad in [
            // A message whose payload is not a bulk string.
            Reply::Array(Some(vec![bulk(b"message"), bulk(b"c"), Reply::Integer(1)])).to_bytes(),
            // A message with a fourth element.
            push(&[b"message", b"c", b"x", b"y"]),
            // A confirmation nobody asked for.
            confirmation("subscribe", "c", 1),
            // Not a push at all.
            b"+OK\r\n".to_vec(),
        ] {
            let mut link = subscribed(now);
            link.handle_input(&bad, now);
            assert_eq!(down_reason(&mut link), DownReason::UnexpectedReply);
        }

        // A confirmation for another channel than the one asked for.
        let mut link = subscribed(now);
        assert_eq!(link.subscribe(b"d", now), Ok(()));
        link.handle_input(&confirmation("subscribe", "e", 2), now);
        assert_eq!(down_reason(&mut link), DownReason::UnexpectedReply);

        // On a commands link: a reply with nothing outstanding.
        let mut link = up(config(Role::Commands), now);
        link.handle_input(b":1\r\n", now);
        assert_eq!(down_reason(&mut link), DownReason::UnexpectedReply);
        // A handshake answered with something other than OK.
        let mut link = connected(
            LinkConfig {
                db: 1,
                ..config(Role::Commands)
            },
            now,
        );
        link.handle_input(b":1\r\n", now);
        assert_eq!(down_reason(&mut link), DownReason::UnexpectedReply);
        // Replies after the bad one in the same read are not acted on.
        let mut link = up(config(Role::Commands), now);
        assert_eq!(link.send(&Command::new("GET").arg("k"), 1, now), Ok(()));
        link.handle_input(b"?\r\n$1\r\nx\r\n", now);
        let down = events(&mut link);
        assert!(
            matches!(
                down.as_slice(),
                [LinkEvent::Down { .. }, LinkEvent::Failed { tag: 1 }]
            ),
            "{down:?}"
        );
    }

    #[test]
    fn an_idle_link_pings_and_finds_a_silent_server() {
        let t0 = Instant::now();
        let quiet = Duration::from_secs(5);
        let mut link = up(
            LinkConfig {
                ping_after: Some(quiet),
                ..config(Role::Commands)
            },
            t0,
        );
        assert_eq!(link.poll_timeout(), Some(t0 + quiet));
        link.handle_timeout(t0 + quiet - Duration::from_millis(1));
        assert_eq!(written(&mut link), Vec::<Vec<String>>::new());
        link.handle_timeout(t0 + quiet);
        assert_eq!(written(&mut link), vec![command(&["PING"])]);
        assert_eq!(link.poll_timeout(), Some(t0 + quiet + REPLY_TIMEOUT));
        let answered = t0 + quiet + Duration::from_millis(3);
        link.handle_input(b"+PONG\r\n", answered);
        assert_eq!(events(&mut link), vec![]);
        assert_eq!(link.outstanding(), 0);
        assert_eq!(link.poll_timeout(), Some(answered + quiet));
        link.handle_timeout(answered + quiet);
        assert_eq!(written(&mut link), vec![command(&["PING"])]);
        link.handle_timeout(answered + quiet + REPLY_TIMEOUT);
        assert!(matches!(
            events(&mut link).as_slice(),
            [LinkEvent::Down {
                reason: DownReason::ReplyTimeout,
                ..
            }]
        ));

        // A subscribed connection answers PING as a push.
        let mut link = up(
            LinkConfig {
                ping_after: Some(quiet),
                ..config(Role::Subscriber)
            },
            t0,
        );
        assert_eq!(link.subscribe(b"c", t0), Ok(()));
        link.handle_input(&confirmation("subscribe", "c", 1), t0);
        events(&mut link);
        written(&mut link);
        link.handle_timeout(t0 + quiet);
        assert_eq!(written(&mut link), vec![command(&["PING"])]);
        link.handle_input(&push(&[b"pong", b""]), t0 + quiet);
        assert_eq!(events(&mut link), vec![]);
        assert!(link.is_up());
    }

    #[test]
    fn transmit_in_small_writes_sends_every_byte_once_in_order() {
        let now = Instant::now();
        let mut link = up(
            LinkConfig {
                max_outstanding: 5000,
                ..config(Role::Commands)
            },
            now,
        );
        let mut expected = Vec::new();
        for tag in 0..3000 {
            let command = Command::new("SET").arg(format!("key:{tag}")).arg_int(tag);
            expected.extend(command.to_bytes());
            assert_eq!(link.send(&command, tag as Tag, now), Ok(()));
        }
        let mut sent = Vec::new();
        while let Some(chunk) = link.poll_transmit() {
            let len = chunk.len().min(1000);
            sent.extend_from_slice(&chunk[..len]);
            link.advance_transmit(len);
        }
        assert_eq!(sent, expected);
        assert_eq!(link.unsent_bytes(), 0);
        link.handle_input(&b"+OK\r\n".repeat(3000), now);
        let replies = events(&mut link);
        assert_eq!(replies.len(), 3000);
        assert!(replies
            .iter()
            .zip(0..)
            .all(|(event, tag)| matches!(event, LinkEvent::Reply { tag: got, .. } if *got == tag)));
    }

    #[test]
    fn every_connect_is_followed_by_exactly_one_down() {
        // Ways a connection can end, one after another on one link.
        let t0 = Instant::now();
        let mut link = Link::new(
            LinkConfig {
                password: Some("pw".into()),
                ..config(Role::Commands)
            },
            t0,
        );
        let mut log = events(&mut link);
        let mut now = t0;
        for ending in 0..5 {
            match ending {
                0 => {
                    link.handle_disconnected(now, DownReason::Io(io::ErrorKind::ConnectionRefused))
                }
                1 => link.handle_timeout(now + CONNECT_TIMEOUT),
                2 => {
                    link.handle_connected(now);
                    link.handle_input(b"-ERR nope\r\n", now);
                }
                3 => {
                    link.handle_connected(now);
                    link.handle_input(b"+OK\r\n", now);
                    link.handle_input(b"+OK\r\n", now);
                }
                _ => {
                    link.handle_connected(now);
                    link.handle_timeout(now + REPLY_TIMEOUT);
                    link.handle_disconnected(now + REPLY_TIMEOUT, DownReason::PeerClosed);
                }
            }
            log.extend(events(&mut link));
            now = link.poll_timeout().expect("a retry") + CONNECT_TIMEOUT;
            link.handle_timeout(now - CONNECT_TIMEOUT);
            log.extend(events(&mut link));
        }
        let mut open = false;
        for event in &log {
            match event {
                LinkEvent::Connect => {
                    assert!(!open, "{log:?}");
                    open = true;
                }
                LinkEvent::Down { .. } => {
                    assert!(open, "{log:?}");
                    open = false;
                }
                _ => {}
            }
        }
        assert_eq!(
            log.iter()
                .filter(|event| matches!(event, LinkEvent::Down { .. }))
                .count(),
            5
        );
    }
}

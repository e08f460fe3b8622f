//! The HTTP API and the WebSocket chat in cluster mode (SPEC §9,
//! docs/cluster.md): the same requests, packets and answers as the embedded
//! [`Api`](crate::api::Api), with Redis as the store.
//!
//! Sans-IO like the rest: requests, packets and Redis replies and pub/sub
//! messages come in; responses, frames and Redis commands (queued on the two
//! [`Link`]s, which the reactor connects and feeds) go out.
//!
//! What this node keeps is a cache of what cannot change once written
//! (users, rooms, tokens until they expire) plus its own connections. A
//! request that needs something not cached parks, the lookup goes to Redis,
//! and the request runs again with the answer. Each WebSocket connection's
//! packets run one at a time, in order, so a `msg` never overtakes the
//! `join` before it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::feed::{Feed, Refill};
use super::keys::{self, RoomKeys};
use super::scripts::{Script, Scripts};
use crate::api::history::{
    optional_seq, page_limit, HistoryReply, Member, MembersReply, Row, StoredPacket,
};
use crate::api::limits::{client_key, FailureWindow};
use crate::api::{
    invalid, login_failure, non_empty, parse_capacity, preflight, required, required_tel, route,
    ApiConfig, ConnRef, Endpoint, LoginData, LoginReply, Now, Outcome, Profile, RateBucket,
    RoomEntry, RoomList, UserData, UserDataReply,
};
use crate::auth::{self, JobId, PasswordJob, PasswordOutcome, TOKEN_LIFETIME};
use crate::chat::history::{page_of, Anchor, MAX_RECOVERY};
use crate::chat::packet::{self, ClientPacket, Echo, PacketError, PacketKind};
use crate::chat::validate;
use crate::http::params::{self, ParamError, Params};
use crate::http::request::Request;
use crate::http::response::{Response, ALLOWED_METHODS};
use crate::redis::{Command, Link, LinkConfig, LinkEvent, RedisUrl, Reply, Role, Tag};
use crate::store::{RoomRecord, UserRecord};

/// Rooms one connection may be in at once (as in the embedded mode).
const MAX_ROOMS_PER_CONNECTION: usize = crate::api::MAX_ROOMS_PER_CONNECTION;
/// Packets a connection may have waiting behind the one in flight.
const MAX_QUEUED_PACKETS: usize = 4096;
/// Bytes of packets a connection may have waiting.
const MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Lease: held for this long, renewed this often; dead nodes are swept
/// this often (docs/cluster.md, "Dead nodes": 10 + 5 + a round trip < 20 s).
const LEASE: Duration = Duration::from_secs(10);
const LEASE_RENEW: Duration = Duration::from_secs(3);
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Delivered messages a room keeps, for a joiner whose history ended just
/// before messages this node had already delivered.
const RECENT_KEPT: usize = 256;
/// Stream entries kept beyond what history shows, so a node that missed
/// pub/sub traffic can refill even with `--history-size 0`.
const MIN_STREAM_LEN: usize = 256;
/// Messages one refill reads.
const REFILL_BATCH: usize = 1000;

/// What this node can cache, by what a request looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    UserByTel(String),
    UserByName(String),
    Room(String),
    Token(String),
}

/// Who waits for a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Http(ConnRef),
    Ws(ConnRef),
}

/// What a command's reply is for.
#[derive(Debug)]
enum Op {
    LoadScript,
    Settings,
    Lease,
    Sweep,
    Lookup(Lookup),
    Register {
        conn: ConnRef,
        user: UserRecord,
    },
    Create {
        conn: ConnRef,
        room: RoomRecord,
    },
    Token {
        conn: ConnRef,
        token: String,
        user: Rc<UserRecord>,
    },
    List {
        conn: ConnRef,
    },
    Admit {
        conn: ConnRef,
    },
    Release {
        conn: ConnRef,
    },
    Members {
        conn: ConnRef,
        room: String,
    },
    Bounds {
        conn: ConnRef,
        room: String,
        anchor: Anchor,
        limit: usize,
    },
    Page {
        conn: ConnRef,
        room: String,
        has_more: bool,
    },
    Join {
        conn: ConnRef,
        room: String,
        since: Option<u64>,
        echo: Echo,
        claimed_avatar: String,
        user: Rc<UserRecord>,
    },
    Publish {
        conn: ConnRef,
        room: String,
        echo: Echo,
    },
    Leave {
        conn: ConnRef,
    },
    /// A leave nobody waits for (a dropped connection).
    Quiet,
    Refill {
        room: String,
        refill: Refill,
    },
}

/// An HTTP request parked until its lookups are answered.
#[derive(Debug)]
struct Parked {
    endpoint: Endpoint,
    params: Params,
    bearer: Option<String>,
    from: IpAddr,
    /// Lookups already answered for it: a miss on one of these is final.
    looked_up: Vec<Lookup>,
}

#[derive(Debug)]
enum PasswordWait {
    Register {
        conn: ConnRef,
        tel: String,
        name: String,
        avatar_url: String,
    },
    Login {
        conn: ConnRef,
        user: Rc<UserRecord>,
        client: IpAddr,
    },
}

#[derive(Debug)]
struct Session {
    /// Bound by the first successful join.
    user: Option<Rc<UserRecord>>,
    claimed_avatar: String,
    url_token: Option<String>,
    rooms: Vec<String>,
    bucket: RateBucket,
    /// Packets waiting, each with whether it was within the rate when it
    /// came.
    queue: VecDeque<(String, bool)>,
    queued_bytes: usize,
    /// A lookup or command for the packet at the head of `queue` is out.
    busy: bool,
    looked_up: Vec<Lookup>,
    /// Messages published from this connection whose echo has not been
    /// delivered to it here yet, and their room. Further `msg`s to that
    /// room go out behind them (Redis runs one connection's scripts in
    /// order, so their seqs and echoes follow); any other packet waits.
    publishing: usize,
    publishing_room: String,
    /// Frames for this connection that must follow those echoes (an error
    /// for a later packet); while any wait, no further packet runs.
    held: Vec<Rc<[u8]>>,
}

impl Session {
    fn pop_packet(&mut self) -> Option<(String, bool)> {
        let head = self.queue.pop_front();
        if let Some((text, _)) = &head {
            self.queued_bytes -= text.len();
        }
        head
    }
}

/// A room with members on this node.
#[derive(Debug, Default)]
struct LocalRoom {
    channel: Vec<u8>,
    members: Vec<LocalMember>,
    feed: Feed<Rc<[u8]>>,
    /// The newest delivered messages.
    recent: VecDeque<(u64, Rc<[u8]>)>,
    /// Joins sent and not yet answered: the room stays subscribed for them.
    joining: usize,
    /// Seat events heard while joins were out: a joiner is owed those that
    /// Redis ran after its own join, which may arrive before its reply.
    heard: VecDeque<HeardEvent>,
    /// Redis confirmed the subscription (since the subscriber link last
    /// came up): seat events published from now on reach this node.
    subscribed: bool,
    /// Joins held until then, so that none runs while its room's events
    /// could still be missed (counted in `joining`).
    awaiting_subscription: Vec<ConnRef>,
    /// Senders whose message has its seq and is not delivered here yet
    /// (`Session::publishing`): what a connection receives follows the
    /// order of what it sent, as in the embedded mode.
    senders: Vec<(ConnRef, u64)>,
}

impl LocalRoom {
    /// Keeps a seat event for the joins still out.
    /// (What is kept after the last join is answered is stale but
    /// harmless: every later join's number is above it.)
    fn hear(&mut self, number: u64, frame: &Rc<[u8]>, evicts: Option<&str>) {
        if self.joining == 0 {
            self.heard.clear();
            return;
        }
        if self.heard.len() >= HEARD_KEPT {
            self.heard.pop_front();
        }
        self.heard.push_back(HeardEvent {
            number,
            frame: Rc::clone(frame),
            evicts: evicts.map(str::to_string),
        });
    }
}

/// A connection in a room here.
#[derive(Debug)]
struct LocalMember {
    conn: ConnRef,
    user: String,
    /// The last seq its join's history held: it gets later messages.
    history_until: u64,
    /// Its join's event number: it hears of later seat events only.
    joined_event: u64,
}

/// A seat event, kept for joiners whose reply has not come yet.
#[derive(Debug)]
struct HeardEvent {
    /// The room's event number (`RoomKeys::events`).
    number: u64,
    frame: Rc<[u8]>,
    /// An HTTP release: the user whose connections it put out of the room.
    evicts: Option<String>,
}

/// At most this many seat events are kept for joiners.
const HEARD_KEPT: usize = 1024;

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCounters {
    pub refills: u64,
    pub duplicates_dropped: u64,
    pub seats_swept: u64,
    pub lease_losses: u64,
    pub redis_reconnects: u64,
    pub ops_failed: u64,
    pub recoveries_complete: u64,
    pub recoveries_incomplete: u64,
    /// `msg`s answered "service unavailable" (Redis away).
    pub messages_refused: u64,
}

/// The user record as Redis holds it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredUser {
    tel: String,
    name: String,
    password_hash: String,
    avatar_url: String,
    created_ms: u64,
}

#[derive(Deserialize)]
struct EventUser {
    u: String,
    a: String,
}

pub struct ClusterApi {
    config: ApiConfig,
    seat_ttl: Duration,
    node: String,
    scripts: Scripts,
    commands: Link,
    subscriber: Link,
    /// Scripts loaded on the current command connection.
    ready: bool,
    /// The subscriber link is connected (for logging its loss once).
    subscriber_up: bool,
    loading: usize,
    settings_checked: bool,
    next_tag: Tag,
    ops: HashMap<Tag, Op>,
    users_by_tel: HashMap<String, Rc<UserRecord>>,
    users_by_name: HashMap<String, Rc<UserRecord>>,
    rooms: HashMap<String, u32>,
    tokens: HashMap<String, (String, Instant)>,
    lookups: HashMap<Lookup, Vec<Waiter>>,
    parked: HashMap<ConnRef, Parked>,
    next_job: JobId,
    password_waits: HashMap<JobId, PasswordWait>,
    password_jobs: Vec<(JobId, PasswordJob)>,
    login_failures_by_tel: FailureWindow<String>,
    login_failures_by_client: FailureWindow<IpAddr>,
    replies: Vec<(ConnRef, Response)>,
    sessions: HashMap<ConnRef, Session>,
    local_rooms: HashMap<String, LocalRoom>,
    channels: HashMap<Vec<u8>, String>,
    /// Connections whose head packet can run now.
    runnable: Vec<ConnRef>,
    outbox: Vec<(ConnRef, Rc<[u8]>)>,
    /// Leaves that could not be sent while Redis was away, sent when it
    /// is back (the script is idempotent): room, user, conn, event.
    unsent_leaves: Vec<UnsentLeave>,
    lease_due: Option<Instant>,
    sweep_due: Option<Instant>,
    /// When the lease was last confirmed.
    lease_held_at: Option<Instant>,
    /// The lease lapsed: every WebSocket must go (the reactor asks).
    drop_all_websockets: bool,
    stopping: bool,
    counters: ClusterCounters,
}

fn random_node_id() -> String {
    let mut bits = [0u8; 16];
    if getrandom::fill(&mut bits).is_err() {
        // No randomness: the clock still makes a restarted node new.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bits = nanos.to_le_bytes();
    }
    bits.iter().map(|b| format!("{b:02x}")).collect()
}

fn seed() -> u64 {
    let mut bits = [0u8; 8];
    let _ = getrandom::fill(&mut bits);
    u64::from_le_bytes(bits)
}

fn unavailable() -> Response {
    Response::res(503, "storage unavailable").with_header("Retry-After", "1")
}

fn text(reply: &Reply) -> Option<&str> {
    reply.as_bulk().and_then(|b| std::str::from_utf8(b).ok())
}

fn decode_user(reply: &Reply) -> Option<UserRecord> {
    let stored: StoredUser = serde_json::from_slice(reply.as_bulk()?).ok()?;
    Some(UserRecord {
        tel: stored.tel,
        name: stored.name,
        password_hash: stored.password_hash,
        avatar_url: stored.avatar_url,
        created_ms: stored.created_ms,
    })
}

fn encode_user(user: &UserRecord) -> String {
    let stored = StoredUser {
        tel: user.tel.clone(),
        name: user.name.clone(),
        password_hash: user.password_hash.clone(),
        avatar_url: user.avatar_url.clone(),
        created_ms: user.created_ms,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The capacity in a stored room record.
fn decode_capacity(reply: &Reply) -> Option<u32> {
    let room: RoomRecord = serde_json::from_slice(reply.as_bulk()?).ok()?;
    Some(room.capacity)
}

/// `<seq>-0` → seq.
fn seq_of_id(id: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(id).ok()?;
    text.split('-').next()?.parse().ok()
}

/// The packets of an XRANGE reply, with their seqs.
fn stream_entries(reply: &Reply) -> Vec<(u64, Vec<u8>)> {
    let Some(entries) = reply.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let parts = entry.as_array()?;
            let seq = seq_of_id(parts.first()?.as_bulk()?)?;
            let fields = parts.get(1)?.as_array()?;
            Some((seq, fields.get(1)?.as_bulk()?.to_vec()))
        })
        .collect()
}

fn event_json(name: &str, avatar: &str) -> String {
    serde_json::json!({"u": name, "a": avatar}).to_string()
}

impl ClusterApi {
    pub fn new(config: ApiConfig, seat_ttl: Duration, url: &RedisUrl, now: Instant) -> ClusterApi {
        let node = random_node_id();
        let mut commands_config = LinkConfig::from_url(url, Role::Commands);
        commands_config.client_name = Some(format!("chatroom-{}", &node[..8]));
        commands_config.jitter_seed = seed();
        let mut subscriber_config = LinkConfig::from_url(url, Role::Subscriber);
        subscriber_config.client_name = Some(format!("chatroom-{}-sub", &node[..8]));
        subscriber_config.jitter_seed = seed();
        log::info!("cluster node {node} on Redis {}", url.host_port());
        ClusterApi {
            config,
            seat_ttl,
            node,
            scripts: Scripts::default(),
            commands: Link::new(commands_config, now),
            subscriber: Link::new(subscriber_config, now),
            ready: false,
            subscriber_up: false,
            loading: 0,
            settings_checked: false,
            next_tag: 1,
            ops: HashMap::new(),
            users_by_tel: HashMap::new(),
            users_by_name: HashMap::new(),
            rooms: HashMap::new(),
            tokens: HashMap::new(),
            lookups: HashMap::new(),
            parked: HashMap::new(),
            next_job: 1,
            password_waits: HashMap::new(),
            password_jobs: Vec::new(),
            login_failures_by_tel: FailureWindow::new(5, Duration::from_secs(15 * 60), 50_000),
            login_failures_by_client: FailureWindow::new(30, Duration::from_secs(60), 50_000),
            replies: Vec::new(),
            sessions: HashMap::new(),
            local_rooms: HashMap::new(),
            channels: HashMap::new(),
            runnable: Vec::new(),
            outbox: Vec::new(),
            unsent_leaves: Vec::new(),
            lease_due: None,
            sweep_due: None,
            lease_held_at: None,
            drop_all_websockets: false,
            stopping: false,
            counters: ClusterCounters::default(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn counters(&self) -> ClusterCounters {
        let mut counters = self.counters;
        counters.duplicates_dropped += self
            .local_rooms
            .values()
            .map(|room| room.feed.duplicates())
            .sum::<u64>();
        counters
    }

    /// Redis answers commands on this node: `/healthz` is 200.
    pub fn is_serving(&self) -> bool {
        self.ready && self.commands.is_up()
    }

    pub fn link_mut(&mut self, role: Role) -> &mut Link {
        match role {
            Role::Commands => &mut self.commands,
            Role::Subscriber => &mut self.subscriber,
        }
    }

    pub fn link(&self, role: Role) -> &Link {
        match role {
            Role::Commands => &self.commands,
            Role::Subscriber => &self.subscriber,
        }
    }

    pub fn ws_sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn local_rooms(&self) -> usize {
        self.local_rooms.len()
    }

    /// The lease was lost: true once, and the reactor closes every
    /// WebSocket with 1011.
    pub fn take_drop_all_websockets(&mut self) -> bool {
        std::mem::take(&mut self.drop_all_websockets)
    }

    // ------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------

    /// Sends `command` for `op`; false (and nothing waits) when the link is
    /// down or full.
    fn send(&mut self, command: Command, op: Op, now: Instant) -> bool {
        let tag = self.next_tag;
        self.next_tag += 1;
        match self.commands.send(&command, tag, now) {
            Ok(()) => {
                self.ops.insert(tag, op);
                true
            }
            Err(error) => {
                log::debug!("redis command not sent: {error:?}");
                self.counters.ops_failed += 1;
                false
            }
        }
    }

    fn script(&self, script: Script, keys: &[&str], args: &[&[u8]]) -> Command {
        let mut command = Command::new("EVALSHA")
            .arg(self.scripts.sha(script))
            .arg_int(keys.len() as i64);
        for key in keys {
            command.push_arg(key.as_bytes());
        }
        for arg in args {
            command.push_arg(arg);
        }
        command
    }

    /// A script call for `op`, or false when Redis cannot take it now.
    fn run(&mut self, script: Script, keys: &[&str], args: &[&[u8]], op: Op, now: Instant) -> bool {
        if !self.is_serving() {
            return false;
        }
        let command = self.script(script, keys, args);
        self.send(command, op, now)
    }

    /// Feeds the link events the reactor did not consume (`Connect` and
    /// `Down` are the reactor's).
    pub fn handle_link_event(&mut self, role: Role, event: LinkEvent, now: Now) {
        match (role, event) {
            (Role::Commands, LinkEvent::Up) => self.on_commands_up(now),
            (Role::Commands, LinkEvent::Down { reason, retry_in }) => {
                if self.ready {
                    log::warn!("Redis unreachable ({reason}); retrying in {retry_in:?}");
                    self.counters.redis_reconnects += 1;
                }
                self.ready = false;
                self.loading = 0;
            }
            (Role::Commands, LinkEvent::Reply { tag, reply }) => {
                if let Some(op) = self.ops.remove(&tag) {
                    self.on_reply(op, Some(reply), now);
                }
            }
            (Role::Commands, LinkEvent::Failed { tag }) => {
                if let Some(op) = self.ops.remove(&tag) {
                    self.counters.ops_failed += 1;
                    self.on_reply(op, None, now);
                }
            }
            (Role::Subscriber, LinkEvent::Message { channel, payload }) => {
                self.on_published(&channel, &payload, now);
            }
            (Role::Subscriber, LinkEvent::Subscribed { channel }) => {
                if let Some(name) = self.channels.get(&channel).cloned() {
                    let mut held = Vec::new();
                    if let Some(room) = self.local_rooms.get_mut(&name) {
                        room.feed.catch_up();
                        room.subscribed = true;
                        held = std::mem::take(&mut room.awaiting_subscription);
                        room.joining = room.joining.saturating_sub(held.len());
                    }
                    for conn in held {
                        if let Some(session) = self.sessions.get_mut(&conn) {
                            session.busy = false;
                            self.runnable.push(conn);
                        }
                    }
                    self.run_sessions(now);
                    self.unsubscribe_if_empty(&name, now.mono);
                    self.advance(&name, now);
                }
            }
            (Role::Subscriber, LinkEvent::Up) => self.subscriber_up = true,
            (Role::Subscriber, LinkEvent::Down { reason, .. }) => {
                // Events published until the link resubscribes are lost:
                // joins wait for that.
                for room in self.local_rooms.values_mut() {
                    room.subscribed = false;
                }
                if self.subscriber_up {
                    self.subscriber_up = false;
                    log::warn!("Redis subscriber link down ({reason}); reconnecting");
                }
            }
            _ => {}
        }
    }

    fn on_commands_up(&mut self, now: Now) {
        self.loading = 0;
        for script in Script::ALL {
            let command = Command::new("SCRIPT")
                .arg("LOAD")
                .arg(self.scripts.source(script));
            if self.send(command, Op::LoadScript, now.mono) {
                self.loading += 1;
            }
        }
        if !self.settings_checked {
            let command = Command::new("CONFIG")
                .arg("GET")
                .arg("append*")
                .arg("maxmemory-policy");
            self.send(command, Op::Settings, now.mono);
        }
    }

    fn on_scripts_loaded(&mut self, now: Now) {
        self.ready = true;
        log::info!("Redis ready: serving");
        for leave in std::mem::take(&mut self.unsent_leaves) {
            self.send_leave(
                leave.conn,
                &leave.room,
                &leave.user,
                leave.mode,
                &leave.event,
                Op::Quiet,
                now.mono,
            );
        }
        // Rooms whose refills failed while Redis was away catch up now.
        let names: Vec<String> = self.local_rooms.keys().cloned().collect();
        for name in names {
            if let Some(room) = self.local_rooms.get_mut(&name) {
                room.feed.catch_up();
            }
            self.advance(&name, now);
        }
        self.renew_lease(now.mono);
    }

    fn check_settings(&mut self, reply: &Reply) {
        self.settings_checked = true;
        let Some(items) = reply.as_array() else {
            log::warn!("could not read Redis settings (CONFIG GET refused?): the promises below are unchecked");
            return;
        };
        let mut settings = HashMap::new();
        for pair in items.chunks(2) {
            if let [name, value] = pair {
                if let (Some(name), Some(value)) = (text(name), text(value)) {
                    settings.insert(name.to_string(), value.to_string());
                }
            }
        }
        let wanted = [
            (
                "appendonly",
                "yes",
                "acknowledged registrations, rooms and messages survive a Redis restart",
            ),
            (
                "appendfsync",
                "always",
                "an acknowledged registration or room survives a power loss",
            ),
            (
                "maxmemory-policy",
                "noeviction",
                "seqs are never reused and history is never lost to eviction",
            ),
        ];
        for (name, value, promise) in wanted {
            match settings.get(name) {
                Some(actual) if actual == value => {}
                actual => log::warn!(
                    "Redis {name} is {:?}, not {value}: no longer true that {promise}",
                    actual.map(String::as_str).unwrap_or("unknown")
                ),
            }
        }
    }

    fn renew_lease(&mut self, now: Instant) {
        self.lease_due = Some(now + LEASE_RENEW);
        if !self.is_serving() {
            return;
        }
        let lease = keys::node_lease(&self.node);
        let mut set = Command::new("SET")
            .arg(&lease)
            .arg("1")
            .arg("PX")
            .arg_int(LEASE.as_millis() as i64);
        // After the first, renewals only extend a lease that is still
        // there: a lapsed one means others may have released our seats.
        if self.lease_held_at.is_some() {
            set = set.arg("XX");
        }
        let register = Command::new("SADD").arg(keys::nodes()).arg(&self.node);
        self.send(set, Op::Lease, now);
        self.send(register, Op::Quiet, now);
    }

    fn on_lease(&mut self, reply: Option<Reply>, now: Instant) {
        match reply {
            Some(reply) if reply.is_ok() => self.lease_held_at = Some(now),
            Some(Reply::Bulk(None)) => self.lose_lease(now),
            _ => {
                if self.lease_held_at.is_some_and(|at| now >= at + LEASE) {
                    self.lose_lease(now);
                }
            }
        }
    }

    /// Others may have released this node's seats: it cannot tell which, so
    /// it drops every WebSocket and starts again as a new node.
    fn lose_lease(&mut self, now: Instant) {
        log::error!(
            "cluster lease of node {} lapsed: closing every WebSocket and rejoining as a new node",
            self.node
        );
        self.counters.lease_losses += 1;
        self.drop_all_websockets = true;
        // What this node knew of its connections belongs to the old
        // identity; the sweep of that identity releases it.
        self.sessions.clear();
        self.runnable.clear();
        for (_, room) in self.local_rooms.drain() {
            let _ = self.subscriber.unsubscribe(&room.channel, now);
        }
        self.channels.clear();
        self.node = random_node_id();
        self.lease_held_at = None;
        self.unsent_leaves.clear();
        self.renew_lease(now);
    }

    fn sweep(&mut self, now: Instant, own: bool) {
        self.sweep_due = Some(now + SWEEP_EVERY);
        let nodes = keys::nodes();
        let own_flag: &[u8] = if own { b"1" } else { b"0" };
        let node = self.node.clone();
        self.run(
            Script::Sweep,
            &[&nodes],
            &[keys::KEY_PREFIX.as_bytes(), node.as_bytes(), own_flag],
            Op::Sweep,
            now,
        );
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

    pub fn tick(&mut self, now: Now) {
        if self.lease_due.is_some_and(|due| now.mono >= due) {
            self.renew_lease(now.mono);
            if self.lease_held_at.is_some_and(|at| now.mono >= at + LEASE) {
                self.lose_lease(now.mono);
            }
        }
        if self.is_serving() && self.sweep_due.is_none_or(|due| now.mono >= due) {
            self.sweep(now.mono, false);
        }
        self.login_failures_by_tel.prune(now.mono);
        self.login_failures_by_client.prune(now.mono);
        self.tokens.retain(|_, (_, expires)| *expires > now.mono);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.lease_due,
            self.sweep_due.filter(|_| self.is_serving()),
            self.commands.poll_timeout(),
            self.subscriber.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn has_pending_work(&self) -> bool {
        !self.password_waits.is_empty() || !self.parked.is_empty() || !self.ops.is_empty()
    }

    // ------------------------------------------------------------------
    // HTTP
    // ------------------------------------------------------------------

    pub fn handle(&mut self, conn: ConnRef, request: &Request, from: IpAddr, now: Now) -> Outcome {
        let Some(endpoint) = route(request.path()) else {
            return Outcome::Reply(Response::res(404, "not found"));
        };
        match request.method.as_str() {
            "GET" | "HEAD" | "POST" => {}
            "OPTIONS" => return Outcome::Reply(preflight()),
            _ => {
                return Outcome::Reply(
                    Response::res(405, "method not allowed").with_header("Allow", ALLOWED_METHODS),
                );
            }
        }
        let params = match params::extract(
            request.query(),
            request.header("content-type"),
            &request.body,
        ) {
            Ok(params) => params,
            Err(ParamError::Invalid(error)) => return Outcome::Reply(invalid(error)),
            Err(ParamError::UnsupportedMediaType(error)) => {
                return Outcome::Reply(Response::res_with_error(
                    415,
                    "unsupported media type",
                    &error,
                ));
            }
        };
        let bearer = request.header("authorization").and_then(|value| {
            let (scheme, token) = std::str::from_utf8(value).ok()?.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
        let parked = Parked {
            endpoint,
            params,
            bearer,
            from,
            looked_up: Vec::new(),
        };
        self.run_request(conn, parked, now)
    }

    fn run_request(&mut self, conn: ConnRef, mut request: Parked, now: Now) -> Outcome {
        if request.endpoint == Endpoint::Health {
            return Outcome::Reply(if self.is_serving() {
                Response::json(200, &serde_json::json!({"status": "ok"}))
            } else {
                Response::json(503, &serde_json::json!({"status": "storage unavailable"}))
            });
        }
        let result = match request.endpoint {
            Endpoint::Register => self.register(conn, &request),
            Endpoint::Login => self.login(conn, &request, now),
            Endpoint::List => self.list(conn, now),
            Endpoint::Create => self.create(conn, &request, now),
            Endpoint::Room => self.room(conn, &request, now),
            Endpoint::UserData => self.user_data(&request),
            Endpoint::History => self.history(conn, &request, now),
            Endpoint::Members => self.members(conn, &request, now),
            Endpoint::Health => Ok(Step::Done(Outcome::Pending)),
        };
        match result {
            Ok(Step::Done(outcome)) => outcome,
            Ok(Step::Need(lookup)) => {
                if !self.look_up(lookup.clone(), Waiter::Http(conn), now.mono) {
                    return Outcome::Reply(unavailable());
                }
                request.looked_up.push(lookup);
                self.parked.insert(conn, request);
                Outcome::Pending
            }
            Err(response) => Outcome::Reply(response),
        }
    }

    /// Starts (or joins) a lookup; false when Redis cannot be asked.
    fn look_up(&mut self, lookup: Lookup, waiter: Waiter, now: Instant) -> bool {
        if let Some(waiters) = self.lookups.get_mut(&lookup) {
            waiters.push(waiter);
            return true;
        }
        if !self.is_serving() {
            return false;
        }
        let command = match &lookup {
            Lookup::UserByTel(tel) => Command::new("GET").arg(keys::user_by_tel(tel)),
            Lookup::UserByName(name) => Command::new("GET").arg(keys::user_by_name(name)),
            Lookup::Room(name) => Command::new("HGET").arg(keys::rooms_index()).arg(name),
            Lookup::Token(token) => Command::new("GET").arg(keys::token(token)),
        };
        if !self.send(command, Op::Lookup(lookup.clone()), now) {
            return false;
        }
        self.lookups.insert(lookup, vec![waiter]);
        true
    }

    fn on_lookup(&mut self, lookup: Lookup, reply: Option<Reply>, now: Now) {
        let answered = reply.is_some();
        if let Some(reply) = &reply {
            match &lookup {
                Lookup::UserByTel(_) | Lookup::UserByName(_) => {
                    if let Some(user) = decode_user(reply) {
                        self.cache_user(user);
                    }
                }
                Lookup::Room(name) => {
                    if let Some(capacity) = decode_capacity(reply) {
                        self.rooms.insert(name.clone(), capacity);
                    }
                }
                Lookup::Token(token) => {
                    if let Some(name) = text(reply) {
                        // Tokens live 7 days in Redis; a node trusts its
                        // copy for a minute at most, so an expired token
                        // stops working everywhere within that.
                        let until = now.mono + Duration::from_secs(60);
                        self.tokens.insert(token.clone(), (name.to_string(), until));
                    }
                }
            }
        }
        for waiter in self.lookups.remove(&lookup).unwrap_or_default() {
            match waiter {
                Waiter::Http(conn) => {
                    let Some(request) = self.parked.remove(&conn) else {
                        continue;
                    };
                    let outcome = if answered {
                        self.run_request(conn, request, now)
                    } else {
                        Outcome::Reply(unavailable())
                    };
                    if let Outcome::Reply(response) = outcome {
                        self.replies.push((conn, response));
                    }
                }
                Waiter::Ws(conn) => {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.busy = false;
                        if answered {
                            session.looked_up.push(lookup.clone());
                        } else {
                            let text = session.pop_packet();
                            session.looked_up.clear();
                            if let Some((text, _)) = text {
                                let echo = packet::parse(&text)
                                    .map(|p| Echo {
                                        user_name: p.user_name,
                                        user_avatar: p.user_avatar,
                                        room_name: p.room_name,
                                    })
                                    .unwrap_or_default();
                                self.emit_in_order(
                                    conn,
                                    packet::error_frame(PacketError::ServiceUnavailable, &echo),
                                );
                            }
                        }
                        self.runnable.push(conn);
                    }
                }
            }
        }
        self.run_sessions(now);
    }

    fn cache_user(&mut self, user: UserRecord) -> Rc<UserRecord> {
        let user = Rc::new(user);
        self.users_by_tel.insert(user.tel.clone(), Rc::clone(&user));
        self.users_by_name
            .insert(user.name.clone(), Rc::clone(&user));
        user
    }

    /// The cached user by phone number; a lookup when unknown.
    fn user_by_tel(
        &self,
        tel: &str,
        looked_up: &[Lookup],
    ) -> Result<Option<Rc<UserRecord>>, Lookup> {
        if let Some(user) = self.users_by_tel.get(tel) {
            return Ok(Some(Rc::clone(user)));
        }
        let lookup = Lookup::UserByTel(tel.to_string());
        if looked_up.contains(&lookup) {
            Ok(None)
        } else {
            Err(lookup)
        }
    }

    fn user_by_name(
        &self,
        name: &str,
        looked_up: &[Lookup],
    ) -> Result<Option<Rc<UserRecord>>, Lookup> {
        if let Some(user) = self.users_by_name.get(name) {
            return Ok(Some(Rc::clone(user)));
        }
        let lookup = Lookup::UserByName(name.to_string());
        if looked_up.contains(&lookup) {
            Ok(None)
        } else {
            Err(lookup)
        }
    }

    fn room_capacity(&self, name: &str, looked_up: &[Lookup]) -> Result<Option<u32>, Lookup> {
        if let Some(capacity) = self.rooms.get(name) {
            return Ok(Some(*capacity));
        }
        let lookup = Lookup::Room(name.to_string());
        if looked_up.contains(&lookup) {
            Ok(None)
        } else {
            Err(lookup)
        }
    }

    fn token_user(
        &self,
        token: &str,
        looked_up: &[Lookup],
        now: Instant,
    ) -> Result<Option<String>, Lookup> {
        match self.tokens.get(token) {
            Some((name, until)) if *until > now => return Ok(Some(name.clone())),
            _ => {}
        }
        let lookup = Lookup::Token(token.to_string());
        if looked_up.contains(&lookup) {
            Ok(None)
        } else {
            Err(lookup)
        }
    }

    fn password_job(&mut self, wait: PasswordWait, job: PasswordJob) -> Result<Step, Response> {
        if self.password_waits.len() >= self.config.max_pending_hashes {
            return Err(Response::res(503, "server busy").with_header("Retry-After", "1"));
        }
        let id = self.next_job;
        self.next_job += 1;
        self.password_waits.insert(id, wait);
        self.password_jobs.push((id, job));
        Ok(Step::Done(Outcome::Pending))
    }

    fn register(&mut self, conn: ConnRef, request: &Parked) -> Result<Step, Response> {
        let params = &request.params;
        let tel = required_tel(params)?;
        let name = required(params, "user_name", validate::user_name)?;
        let password = required(params, "user_password", validate::user_password)?;
        let avatar_url = params.get("user_avatar_url").unwrap_or("");
        validate::user_avatar_url(avatar_url)
            .map_err(|why| invalid(format!("user_avatar_url: {why}")))?;
        if self.users_by_tel.contains_key(tel.as_ref()) || self.users_by_name.contains_key(name) {
            return Ok(Step::Done(Outcome::Reply(Response::res(200, "user exist"))));
        }
        if !self.is_serving() {
            return Err(unavailable());
        }
        let wait = PasswordWait::Register {
            conn,
            tel: tel.to_string(),
            name: name.to_string(),
            avatar_url: avatar_url.to_string(),
        };
        let job = PasswordJob::Hash {
            password: password.to_string(),
        };
        self.password_job(wait, job)
    }

    fn login(&mut self, conn: ConnRef, request: &Parked, now: Now) -> Result<Step, Response> {
        let params = &request.params;
        let tel = required_tel(params)?;
        let password = params
            .get("user_password")
            .ok_or_else(|| invalid("user_password: required".to_string()))?;
        let client = client_key(request.from);
        if self.login_failures_by_client.is_blocked(&client, now.mono) {
            return Ok(Step::Done(Outcome::Reply(login_failure(
                "too many attempts",
            ))));
        }
        let user = match self.user_by_tel(&tel, &request.looked_up) {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.login_failures_by_client.record(&client, now.mono);
                return Ok(Step::Done(Outcome::Reply(login_failure("user not exist"))));
            }
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        let key = user.tel.clone();
        if self.login_failures_by_tel.is_blocked(&key, now.mono) {
            return Ok(Step::Done(Outcome::Reply(login_failure(
                "too many attempts",
            ))));
        }
        self.login_failures_by_tel.record(&key, now.mono);
        self.login_failures_by_client.record(&client, now.mono);
        if !validate::could_be_password(password) {
            return Ok(Step::Done(Outcome::Reply(login_failure("password wrong"))));
        }
        let job = PasswordJob::Verify {
            password: password.to_string(),
            phc: user.password_hash.clone(),
        };
        self.password_job(PasswordWait::Login { conn, user, client }, job)
    }

    fn list(&mut self, conn: ConnRef, now: Now) -> Result<Step, Response> {
        let order = keys::rooms_order();
        let prefix = keys::KEY_PREFIX;
        if self.run(
            Script::List,
            &[&order],
            &[prefix.as_bytes()],
            Op::List { conn },
            now.mono,
        ) {
            Ok(Step::Done(Outcome::Pending))
        } else {
            Err(unavailable())
        }
    }

    fn user_data(&mut self, request: &Parked) -> Result<Step, Response> {
        let params = &request.params;
        let found = match params.get("user_tel").filter(|tel| !tel.is_empty()) {
            Some(_) => self.user_by_tel(&required_tel(params)?, &request.looked_up),
            None => match params.get("user_name").filter(|name| !name.is_empty()) {
                Some(_) => {
                    let name = required(params, "user_name", validate::user_name)?;
                    self.user_by_name(name, &request.looked_up)
                }
                None => {
                    return Err(invalid(
                        "user_tel or user_name: one is required".to_string(),
                    ))
                }
            },
        };
        let user = match found {
            Ok(Some(user)) => user,
            Ok(None) => {
                let reply = UserDataReply {
                    res: "user not exist",
                    data: None,
                };
                return Ok(Step::Done(Outcome::Reply(
                    Response::json(200, &reply).with_outcome("user not exist"),
                )));
            }
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        let profile = Profile {
            user_tel: validate::tel_as_i32(&user.tel),
            user_name: &user.name,
            user_avatar_url: &user.avatar_url,
        };
        let reply = UserDataReply {
            res: "get user data successfully",
            data: Some(UserData {
                profile: &profile,
                user: &profile,
            }),
        };
        Ok(Step::Done(Outcome::Reply(
            Response::json(200, &reply).with_outcome("get user data successfully"),
        )))
    }

    fn create(&mut self, conn: ConnRef, request: &Parked, now: Now) -> Result<Step, Response> {
        let params = &request.params;
        let name = required(params, "room_name", validate::room_name)?;
        let capacity = parse_capacity(params, self.config.room_capacity)?;
        if self.rooms.contains_key(name) {
            return Ok(Step::Done(Outcome::Reply(Response::res(
                200,
                "chatroom already exist",
            ))));
        }
        let room = RoomRecord {
            name: name.to_string(),
            capacity,
            created_ms: now.unix_ms,
        };
        let record = serde_json::to_string(&room).unwrap_or_default();
        let max = self.config.max_rooms.to_string();
        let (index, order) = (keys::rooms_index(), keys::rooms_order());
        if self.run(
            Script::Create,
            &[&index, &order],
            &[name.as_bytes(), record.as_bytes(), max.as_bytes()],
            Op::Create { conn, room },
            now.mono,
        ) {
            Ok(Step::Done(Outcome::Pending))
        } else {
            Err(unavailable())
        }
    }

    fn room(&mut self, conn: ConnRef, request: &Parked, now: Now) -> Result<Step, Response> {
        let params = &request.params;
        let room_name = required(params, "room_name", validate::room_name)?;
        let user_name = required(params, "user_name", validate::user_name)?;
        let status = required(params, "status", non_empty)?;
        let reply = |res: &'static str| Ok(Step::Done(Outcome::Reply(Response::res(200, res))));
        let capacity = match self.room_capacity(room_name, &request.looked_up) {
            Ok(Some(capacity)) => capacity,
            Ok(None) => return reply("invalid room"),
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        if status != "1" && status != "0" {
            return reply("invalid status");
        }
        let user = match self.user_by_name(user_name, &request.looked_up) {
            Ok(Some(user)) => user,
            Ok(None) => return reply("user not exist"),
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        let room = RoomKeys::new(room_name);
        let sent = if status == "1" {
            let (capacity, ttl) = (capacity.to_string(), self.seat_ttl.as_millis().to_string());
            self.run(
                Script::Admit,
                &[&room.seats()],
                &[user.name.as_bytes(), capacity.as_bytes(), ttl.as_bytes()],
                Op::Admit { conn },
                now.mono,
            )
        } else {
            let event = event_json(&user.name, &user.avatar_url);
            self.run(
                Script::Release,
                &[
                    &room.seats(),
                    &room.connections(),
                    &room.channel(),
                    &room.avatars(),
                    &room.events(),
                ],
                &[user.name.as_bytes(), event.as_bytes()],
                Op::Release { conn },
                now.mono,
            )
        };
        if sent {
            Ok(Step::Done(Outcome::Pending))
        } else {
            Err(unavailable())
        }
    }

    /// `--require-token` covers history and members.
    fn authorized(&self, request: &Parked, now: Instant) -> Result<bool, Lookup> {
        if !self.config.chat.require_token {
            return Ok(true);
        }
        let token = request
            .params
            .get("token")
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .or_else(|| request.bearer.clone());
        match token {
            None => Ok(false),
            Some(token) => self
                .token_user(&token, &request.looked_up, now)
                .map(|user| user.is_some()),
        }
    }

    fn room_query<'p>(
        &self,
        request: &'p Parked,
        now: Now,
    ) -> Result<Result<&'p str, Lookup>, Response> {
        match self.authorized(request, now.mono) {
            Ok(true) => {}
            Ok(false) => return Err(Response::res(401, "unauthorized")),
            Err(lookup) => return Ok(Err(lookup)),
        }
        let name = required(&request.params, "room_name", validate::room_name)?;
        match self.room_capacity(name, &request.looked_up) {
            Ok(Some(_)) => Ok(Ok(name)),
            Ok(None) => Err(Response::res(200, "invalid room")),
            Err(lookup) => Ok(Err(lookup)),
        }
    }

    fn history(&mut self, conn: ConnRef, request: &Parked, now: Now) -> Result<Step, Response> {
        let params = &request.params;
        let before = optional_seq(params, "before")?;
        let after = optional_seq(params, "after")?;
        let limit = page_limit(params)?;
        let anchor = match (before, after) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "before, after: give one of them, not both".to_string(),
                ))
            }
            (Some(before), None) => Anchor::Before(before),
            (None, Some(after)) => Anchor::After(after),
            (None, None) => Anchor::Newest,
        };
        let name = match self.room_query(request, now)? {
            Ok(name) => name.to_string(),
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        let keys = RoomKeys::new(&name);
        let size = self.config.chat.history_size.to_string();
        let op = Op::Bounds {
            conn,
            room: name,
            anchor,
            limit,
        };
        if self.run(
            Script::Bounds,
            &[&keys.seq(), &keys.log()],
            &[size.as_bytes()],
            op,
            now.mono,
        ) {
            Ok(Step::Done(Outcome::Pending))
        } else {
            Err(unavailable())
        }
    }

    fn members(&mut self, conn: ConnRef, request: &Parked, now: Now) -> Result<Step, Response> {
        let name = match self.room_query(request, now)? {
            Ok(name) => name.to_string(),
            Err(lookup) => return Ok(Step::Need(lookup)),
        };
        let keys = RoomKeys::new(&name);
        let prefix = keys::KEY_PREFIX;
        if self.run(
            Script::Members,
            &[&keys.seats(), &keys.connections(), &keys.avatars()],
            &[prefix.as_bytes()],
            Op::Members { conn, room: name },
            now.mono,
        ) {
            Ok(Step::Done(Outcome::Pending))
        } else {
            Err(unavailable())
        }
    }

    /// Password jobs wait to go to the pool.
    pub fn has_password_jobs(&self) -> bool {
        !self.password_jobs.is_empty()
    }

    pub fn take_password_jobs(&mut self) -> Vec<(JobId, PasswordJob)> {
        std::mem::take(&mut self.password_jobs)
    }

    pub fn on_password_done(
        &mut self,
        job: JobId,
        outcome: PasswordOutcome,
        now: Now,
    ) -> Option<(ConnRef, Response)> {
        let wait = self.password_waits.remove(&job)?;
        match (wait, outcome) {
            (
                PasswordWait::Register {
                    conn,
                    tel,
                    name,
                    avatar_url,
                },
                PasswordOutcome::Hashed(Ok(password_hash)),
            ) => {
                let user = UserRecord {
                    tel,
                    name,
                    password_hash,
                    avatar_url,
                    created_ms: now.unix_ms,
                };
                let record = encode_user(&user);
                let (by_tel, by_name) =
                    (keys::user_by_tel(&user.tel), keys::user_by_name(&user.name));
                if self.run(
                    Script::Register,
                    &[&by_tel, &by_name],
                    &[record.as_bytes()],
                    Op::Register { conn, user },
                    now.mono,
                ) {
                    None
                } else {
                    Some((conn, unavailable()))
                }
            }
            (PasswordWait::Login { conn, user, client }, PasswordOutcome::Verified(true)) => {
                self.login_failures_by_tel.clear(&user.tel);
                self.login_failures_by_client.forgive_one(&client);
                let token = match auth::new_token() {
                    Ok(token) => token,
                    Err(error) => {
                        log::error!("{error}");
                        return Some((conn, Response::res(500, "internal error")));
                    }
                };
                let command = Command::new("SET")
                    .arg(keys::token(&token))
                    .arg(&user.name)
                    .arg("PX")
                    .arg_int(TOKEN_LIFETIME.as_millis() as i64);
                if self.is_serving()
                    && self.send(command, Op::Token { conn, token, user }, now.mono)
                {
                    None
                } else {
                    Some((conn, unavailable()))
                }
            }
            (PasswordWait::Login { conn, .. }, PasswordOutcome::Verified(false)) => {
                Some((conn, login_failure("password wrong")))
            }
            (PasswordWait::Register { conn, .. }, outcome) => {
                if let PasswordOutcome::Hashed(Err(error)) = outcome {
                    log::error!("password hashing failed: {error}");
                }
                Some((conn, Response::res(500, "internal error")))
            }
            (PasswordWait::Login { conn, .. }, PasswordOutcome::Hashed(_)) => {
                Some((conn, Response::res(500, "internal error")))
            }
        }
    }

    pub fn has_replies(&self) -> bool {
        !self.replies.is_empty()
    }

    /// Responses whose answers came from Redis since the last call.
    pub fn take_replies(&mut self) -> Vec<(ConnRef, Response)> {
        std::mem::take(&mut self.replies)
    }

    fn reply(&mut self, conn: ConnRef, response: Response) {
        self.replies.push((conn, response));
    }

    fn on_reply(&mut self, op: Op, reply: Option<Reply>, now: Now) {
        if let Some(Reply::Error(error)) = &reply {
            if error.starts_with("NOSCRIPT") {
                // Redis lost its scripts (SCRIPT FLUSH, or a restart the
                // link did not see): load them again.
                log::warn!("Redis lost the scripts; loading them again");
                self.ready = false;
                self.on_commands_up(now);
            } else if !matches!(op, Op::LoadScript | Op::Settings) {
                log::error!("Redis refused a command: {error}");
            }
        }
        let failed = !matches!(reply, Some(ref r) if !matches!(r, Reply::Error(_)));
        match op {
            Op::LoadScript => {
                if failed {
                    log::error!("Redis did not load a script: {reply:?}");
                    return;
                }
                self.loading = self.loading.saturating_sub(1);
                if self.loading == 0 && !self.ready {
                    self.on_scripts_loaded(now);
                }
            }
            Op::Settings => {
                if let Some(reply) = reply {
                    self.check_settings(&reply);
                }
            }
            Op::Lease => self.on_lease(reply, now.mono),
            Op::Sweep => {
                if let Some(released) = reply.as_ref().and_then(Reply::as_integer) {
                    if released > 0 {
                        log::info!("released {released} seat(s) of departed nodes");
                    }
                    self.counters.seats_swept += released.max(0) as u64;
                }
            }
            Op::Quiet => {}
            Op::Lookup(lookup) => {
                let reply = if failed { None } else { reply };
                self.on_lookup(lookup, reply, now);
            }
            Op::Register { conn, user } => {
                let response = match reply.as_ref().and_then(Reply::as_integer) {
                    Some(1) => {
                        self.cache_user(user);
                        Response::res(200, "register successfully")
                    }
                    Some(_) => Response::res(200, "user exist"),
                    None => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Create { conn, room } => {
                let response = match reply.as_ref().and_then(Reply::as_integer) {
                    Some(1) => {
                        self.rooms.insert(room.name, room.capacity);
                        Response::res(200, "chatroom create successfully")
                    }
                    Some(0) => Response::res(200, "chatroom already exist"),
                    Some(_) => Response::res(200, "too many rooms"),
                    None => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Token { conn, token, user } => {
                let response = if failed {
                    unavailable()
                } else {
                    self.tokens.insert(
                        token.clone(),
                        (user.name.clone(), now.mono + Duration::from_secs(60)),
                    );
                    Response::json(
                        200,
                        &LoginReply {
                            res: "login successfully",
                            data: Some(LoginData {
                                user_tel: validate::tel_as_i32(&user.tel),
                                user_name: &user.name,
                                user_avatar_url: &user.avatar_url,
                                token: &token,
                            }),
                        },
                    )
                    .with_outcome("login successfully")
                };
                self.reply(conn, response);
            }
            Op::List { conn } => {
                let response = match reply.as_ref().and_then(Reply::as_array) {
                    Some(items) if !failed => list_response(items),
                    _ => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Admit { conn } => {
                let response = match reply.as_ref().and_then(Reply::as_integer) {
                    Some(1) => Response::res(200, "join chatroom"),
                    Some(_) => Response::res(200, "full room"),
                    None => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Release { conn } => {
                let response = match reply.as_ref().and_then(Reply::as_integer) {
                    Some(1) | Some(2) => Response::res(200, "leave chatroom"),
                    Some(_) => Response::res(200, "user not exist"),
                    None => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Members { conn, room } => {
                let response = match reply.as_ref().and_then(Reply::as_array) {
                    Some(items) if !failed => self.members_response(&room, items),
                    _ => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Bounds {
                conn,
                room,
                anchor,
                limit,
            } => {
                let bounds = reply.as_ref().and_then(Reply::as_array).and_then(|items| {
                    Some((items.first()?.as_integer()?, items.get(1)?.as_integer()?))
                });
                let Some((last, first)) = bounds.filter(|_| !failed) else {
                    self.reply(conn, unavailable());
                    return;
                };
                let (last, first) = (last.max(0) as u64, first.max(1) as u64);
                let page = page_of(first, last + 1, anchor, limit);
                if page.seqs.is_empty() {
                    let response = history_response(&room, &[], page.has_more);
                    self.reply(conn, response);
                    return;
                }
                let keys = RoomKeys::new(&room);
                let command = Command::new("XRANGE")
                    .arg(keys.log())
                    .arg(format!("{}-0", page.seqs.start))
                    .arg(format!("{}-0", page.seqs.end - 1));
                let op = Op::Page {
                    conn,
                    room,
                    has_more: page.has_more,
                };
                if !self.send(command, op, now.mono) {
                    self.reply(conn, unavailable());
                }
            }
            Op::Page {
                conn,
                room,
                has_more,
            } => {
                let response = match &reply {
                    Some(reply) if !failed => {
                        history_response(&room, &stream_entries(reply), has_more)
                    }
                    _ => unavailable(),
                };
                self.reply(conn, response);
            }
            Op::Join {
                conn,
                room,
                since,
                echo,
                claimed_avatar,
                user,
            } => self.on_joined(conn, room, since, echo, claimed_avatar, user, reply, now),
            Op::Publish { conn, room, echo } => {
                let seq = reply
                    .as_ref()
                    .and_then(Reply::as_integer)
                    .filter(|_| !failed);
                let Some(seq) = seq else {
                    self.counters.messages_refused += 1;
                    // Behind the echoes of this connection's messages still
                    // out (all of them: a rare reorder when a later one
                    // succeeds where this failed).
                    self.publish_resolved(conn);
                    self.emit_in_order(
                        conn,
                        packet::error_frame(PacketError::ServiceUnavailable, &echo),
                    );
                    self.run_sessions(now);
                    return;
                };
                match self.local_rooms.get_mut(&room) {
                    Some(local) if local.feed.next_seq().is_none_or(|next| next <= seq as u64) => {
                        local.senders.push((conn, seq as u64));
                    }
                    _ => {
                        self.publish_resolved(conn);
                        self.run_sessions(now);
                    }
                }
            }
            Op::Leave { conn } => self.packet_done(conn, now),
            Op::Refill { room, refill } => self.on_refill(&room, refill, reply, now),
        }
    }

    // ------------------------------------------------------------------
    // WebSocket
    // ------------------------------------------------------------------

    pub fn ws_open(&mut self, conn: ConnRef, url_token: Option<String>, now: Now) {
        let session = Session {
            user: None,
            claimed_avatar: String::new(),
            url_token,
            rooms: Vec::new(),
            bucket: RateBucket::new(self.config.chat.ws_burst, now.mono),
            queue: VecDeque::new(),
            queued_bytes: 0,
            busy: false,
            looked_up: Vec::new(),
            publishing: 0,
            publishing_room: String::new(),
            held: Vec::new(),
        };
        self.sessions.insert(conn, session);
    }

    pub fn ws_binary(&mut self, conn: ConnRef, now: Now) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            let (rate, burst) = (self.config.chat.ws_rate, self.config.chat.ws_burst);
            session.bucket.take(rate, burst, now.mono);
        }
        self.emit(
            conn,
            packet::error_frame(PacketError::InvalidMessage, &Echo::default()),
        );
    }

    pub fn ws_text(&mut self, conn: ConnRef, text: &str, now: Now) {
        let (rate, burst) = (self.config.chat.ws_rate, self.config.chat.ws_burst);
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let within_rate = session.bucket.take(rate, burst, now.mono);
        // Packets wait only behind Redis round trips; a client that sends
        // far faster than those (with the rate limit off) is told so.
        if session.queue.len() >= MAX_QUEUED_PACKETS
            || session.queued_bytes + text.len() > MAX_QUEUED_BYTES
        {
            let echo = packet::parse(text)
                .map(|p| Echo {
                    user_name: p.user_name,
                    user_avatar: p.user_avatar,
                    room_name: p.room_name,
                })
                .unwrap_or_else(|(_, echo)| echo);
            self.emit(conn, packet::error_frame(PacketError::RateLimited, &echo));
            return;
        }
        session.queued_bytes += text.len();
        session.queue.push_back((text.to_string(), within_rate));
        if !session.busy {
            self.runnable.push(conn);
            self.run_sessions(now);
        }
    }

    fn run_sessions(&mut self, now: Now) {
        while let Some(conn) = self.runnable.pop() {
            self.run_session(conn, now);
        }
    }

    /// Runs the connection's queued packets until one has to wait.
    fn run_session(&mut self, conn: ConnRef, now: Now) {
        loop {
            let Some(session) = self.sessions.get_mut(&conn) else {
                return;
            };
            if session.busy || !session.held.is_empty() {
                return;
            }
            let Some((text, within_rate)) = session.queue.front().cloned() else {
                return;
            };
            let packet = match packet::parse(&text) {
                Ok(packet) => packet,
                Err((error, echo)) => {
                    self.finish_packet(conn);
                    self.emit_in_order(conn, packet::error_frame(error, &echo));
                    continue;
                }
            };
            let behind_own_messages = session.publishing > 0
                && !(packet.kind == PacketKind::Msg && packet.room_name == session.publishing_room);
            if behind_own_messages {
                return;
            }
            match self.apply(conn, &packet, within_rate, now) {
                Ok(Wait::No) => self.finish_packet(conn),
                Ok(Wait::Published) => {
                    self.finish_packet(conn);
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.publishing += 1;
                        if session.publishing_room != packet.room_name {
                            session.publishing_room = packet.room_name.clone();
                        }
                    }
                }
                Ok(Wait::Yes) => {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.busy = true;
                    }
                    return;
                }
                Ok(Wait::For(lookup)) => {
                    if self.look_up(lookup, Waiter::Ws(conn), now.mono) {
                        if let Some(session) = self.sessions.get_mut(&conn) {
                            session.busy = true;
                        }
                        return;
                    }
                    self.finish_packet(conn);
                    let echo = echo_of(&packet);
                    self.emit_in_order(
                        conn,
                        packet::error_frame(PacketError::ServiceUnavailable, &echo),
                    );
                }
                Err(error) => {
                    self.finish_packet(conn);
                    let echo = echo_of(&packet);
                    self.emit_in_order(conn, packet::error_frame(error, &echo));
                }
            }
        }
    }

    /// The head packet is done with.
    fn finish_packet(&mut self, conn: ConnRef) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.pop_packet();
            session.looked_up.clear();
            session.busy = false;
        }
    }

    /// One of the connection's published messages was delivered to it
    /// here, failed, or will not reach it (it left the room): when none is
    /// left, what waited behind them goes out and its packets run again.
    fn publish_resolved(&mut self, conn: ConnRef) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.publishing = session.publishing.saturating_sub(1);
        if session.publishing == 0 {
            for frame in std::mem::take(&mut session.held) {
                self.outbox.push((conn, frame));
            }
            self.runnable.push(conn);
        }
    }

    /// A frame for `conn` that must not overtake the echoes of its own
    /// messages still on their way.
    fn emit_in_order(&mut self, conn: ConnRef, frame: Rc<[u8]>) {
        match self.sessions.get_mut(&conn) {
            Some(session) if session.publishing > 0 => session.held.push(frame),
            _ => self.emit(conn, frame),
        }
    }

    /// The command the head packet waited for came back.
    fn packet_done(&mut self, conn: ConnRef, now: Now) {
        self.finish_packet(conn);
        self.runnable.push(conn);
        self.run_sessions(now);
    }

    fn identify(
        &self,
        conn: ConnRef,
        packet: &ClientPacket,
        now: Instant,
    ) -> Result<Result<Rc<UserRecord>, Lookup>, PacketError> {
        let session = self.sessions.get(&conn).ok_or(PacketError::Unauthorized)?;
        let looked_up = &session.looked_up;
        let token = packet.token.as_deref().or(session.url_token.as_deref());
        let user = match token {
            Some(token) => {
                let name = match self.token_user(token, looked_up, now) {
                    Ok(Some(name)) => name,
                    Ok(None) => return Err(PacketError::Unauthorized),
                    Err(lookup) => return Ok(Err(lookup)),
                };
                let user = match self.user_by_name(&name, looked_up) {
                    Ok(Some(user)) => user,
                    Ok(None) => return Err(PacketError::Unauthorized),
                    Err(lookup) => return Ok(Err(lookup)),
                };
                if user.name != packet.user_name {
                    return Err(PacketError::UserMismatch);
                }
                user
            }
            None if self.config.chat.require_token => return Err(PacketError::Unauthorized),
            None => match self.user_by_name(&packet.user_name, looked_up) {
                Ok(Some(user)) => user,
                Ok(None) => return Err(PacketError::UserNotExist),
                Err(lookup) => return Ok(Err(lookup)),
            },
        };
        match &session.user {
            Some(bound) if bound.name != user.name => Err(PacketError::UserMismatch),
            _ => Ok(Ok(user)),
        }
    }

    fn apply(
        &mut self,
        conn: ConnRef,
        packet: &ClientPacket,
        within_rate: bool,
        now: Now,
    ) -> Result<Wait, PacketError> {
        let user = match self.identify(conn, packet, now.mono)? {
            Ok(user) => user,
            Err(lookup) => return Ok(Wait::For(lookup)),
        };
        let looked_up = self
            .sessions
            .get(&conn)
            .map(|s| s.looked_up.clone())
            .unwrap_or_default();
        let capacity = match self.room_capacity(&packet.room_name, &looked_up) {
            Ok(Some(capacity)) => capacity,
            Ok(None) => return Err(PacketError::InvalidRoom),
            Err(lookup) => return Ok(Wait::For(lookup)),
        };
        let session = self.sessions.get(&conn).ok_or(PacketError::Unauthorized)?;
        let room = packet.room_name.as_str();
        let joined = session.rooms.iter().any(|r| r == room);
        let claimed = session.claimed_avatar.clone();
        match packet.kind {
            PacketKind::Join => {
                if joined {
                    if !within_rate {
                        return Err(PacketError::RateLimited);
                    }
                    let frame = user_frame(&user, &claimed, room, "join");
                    self.emit(conn, frame);
                    return Ok(Wait::No);
                }
                if session.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    return Err(PacketError::TooManyRooms);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                if !self.is_serving() {
                    return Err(PacketError::ServiceUnavailable);
                }
                let claimed = if session.user.is_none() {
                    packet.user_avatar.clone()
                } else {
                    claimed
                };
                let (name, avatar) = display(&user, &claimed);
                let echo = Echo {
                    user_name: name.to_string(),
                    user_avatar: avatar.to_string(),
                    room_name: packet.room_name.clone(),
                };
                let event = event_json(name, avatar);
                let origin = conn_part(conn);
                self.subscribe(room, now.mono);
                if let Some(local) = self.local_rooms.get_mut(room) {
                    local.joining += 1;
                    if !local.subscribed {
                        // Runs again once Redis confirms the subscription.
                        local.awaiting_subscription.push(conn);
                        return Ok(Wait::Yes);
                    }
                }
                let node_rooms = Command::new("SADD")
                    .arg(keys::node_rooms(&self.node))
                    .arg(room);
                self.send(node_rooms, Op::Quiet, now.mono);
                let keys = RoomKeys::new(room);
                let (mode, n) = match packet.since {
                    Some(since) => ("since", since.to_string()),
                    None => ("newest", self.config.chat.history_on_join.to_string()),
                };
                let capacity = capacity.to_string();
                let history_size = self.config.chat.history_size.to_string();
                let most = MAX_RECOVERY.to_string();
                let node = self.node.clone();
                let op = Op::Join {
                    conn,
                    room: room.to_string(),
                    since: packet.since,
                    echo,
                    claimed_avatar: claimed.clone(),
                    user: Rc::clone(&user),
                };
                let sent = self.run(
                    Script::Join,
                    &[
                        &keys.seats(),
                        &keys.connections(),
                        &keys.seq(),
                        &keys.log(),
                        &keys.channel(),
                        &keys.avatars(),
                        &keys.events(),
                    ],
                    &[
                        user.name.as_bytes(),
                        capacity.as_bytes(),
                        node.as_bytes(),
                        origin.as_bytes(),
                        event.as_bytes(),
                        history_size.as_bytes(),
                        mode.as_bytes(),
                        n.as_bytes(),
                        most.as_bytes(),
                        claimed.as_bytes(),
                    ],
                    op,
                    now.mono,
                );
                if !sent {
                    if let Some(local) = self.local_rooms.get_mut(room) {
                        local.joining = local.joining.saturating_sub(1);
                    }
                    self.unsubscribe_if_empty(room, now.mono);
                    return Err(PacketError::ServiceUnavailable);
                }
                Ok(Wait::Yes)
            }
            PacketKind::Leave => {
                if !joined {
                    return Err(PacketError::NotInRoom);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                let frame = user_frame(&user, &claimed, room, "leave");
                self.emit(conn, frame);
                let (name, avatar) = display(&user, &claimed);
                let event = event_json(name, avatar);
                self.remove_member(conn, room, now.mono);
                let sent = self.send_leave(
                    conn,
                    room,
                    &user.name,
                    "leave",
                    &event,
                    Op::Leave { conn },
                    now.mono,
                );
                Ok(if sent { Wait::Yes } else { Wait::No })
            }
            PacketKind::Msg => {
                if !joined {
                    return Err(PacketError::NotInRoom);
                }
                if packet.msg.chars().count() > self.config.chat.max_msg_chars {
                    return Err(PacketError::MessageTooLong);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                if !self.is_serving() {
                    self.counters.messages_refused += 1;
                    return Err(PacketError::ServiceUnavailable);
                }
                let (name, avatar) = display(&user, &claimed);
                let (before, after) =
                    packet::msg_packet_around_seq(name, avatar, room, &packet.msg, now.unix_ms);
                let keys = RoomKeys::new(room);
                let kept = self
                    .config
                    .chat
                    .history_size
                    .max(MIN_STREAM_LEN)
                    .to_string();
                let op = Op::Publish {
                    conn,
                    room: room.to_string(),
                    echo: echo_of(packet),
                };
                if self.run(
                    Script::Publish,
                    &[&keys.seq(), &keys.log(), &keys.channel()],
                    &[&before, &after, kept.as_bytes()],
                    op,
                    now.mono,
                ) {
                    Ok(Wait::Published)
                } else {
                    self.counters.messages_refused += 1;
                    Err(PacketError::ServiceUnavailable)
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Sends the LEAVE script; when Redis cannot take it now, it is kept
    /// and sent once Redis is back (false: nothing waits for a reply).
    fn send_leave(
        &mut self,
        conn: ConnRef,
        room: &str,
        user: &str,
        mode: &'static str,
        event: &str,
        op: Op,
        now: Instant,
    ) -> bool {
        let keys = RoomKeys::new(room);
        let ttl = self.seat_ttl.as_millis().to_string();
        let node = self.node.clone();
        let origin = conn_part(conn);
        let sent = self.run(
            Script::Leave,
            &[
                &keys.seats(),
                &keys.connections(),
                &keys.channel(),
                &keys.events(),
            ],
            &[
                user.as_bytes(),
                node.as_bytes(),
                origin.as_bytes(),
                mode.as_bytes(),
                ttl.as_bytes(),
                event.as_bytes(),
            ],
            op,
            now,
        );
        if !sent {
            self.unsent_leaves.push(UnsentLeave {
                room: room.to_string(),
                user: user.to_string(),
                conn,
                mode,
                event: event.to_string(),
            });
        }
        sent
    }

    #[allow(clippy::too_many_arguments)]
    fn on_joined(
        &mut self,
        conn: ConnRef,
        room: String,
        since: Option<u64>,
        echo: Echo,
        claimed_avatar: String,
        user: Rc<UserRecord>,
        reply: Option<Reply>,
        now: Now,
    ) {
        if let Some(local) = self.local_rooms.get_mut(&room) {
            local.joining = local.joining.saturating_sub(1);
        }
        let items = reply.as_ref().and_then(Reply::as_array);
        let Some(items) = items else {
            // No answer: the join may or may not have run. This connection
            // is not in the room, so its trace (if any) is taken back; the
            // leave is idempotent.
            let event = event_json(&echo.user_name, &echo.user_avatar);
            self.send_leave(conn, &room, &user.name, "drop", &event, Op::Quiet, now.mono);
            self.unsubscribe_if_empty(&room, now.mono);
            self.emit(
                conn,
                packet::error_frame(PacketError::ServiceUnavailable, &echo),
            );
            self.packet_done(conn, now);
            return;
        };
        if items.first().and_then(Reply::as_integer) != Some(1) {
            self.unsubscribe_if_empty(&room, now.mono);
            self.emit(conn, packet::error_frame(PacketError::FullRoom, &echo));
            self.packet_done(conn, now);
            return;
        }
        let kind = items.get(1).and_then(text).unwrap_or("join").to_string();
        let last = items.get(2).and_then(Reply::as_integer).unwrap_or(0).max(0) as u64;
        let first = items.get(3).and_then(Reply::as_integer).unwrap_or(1).max(1) as u64;
        let own_event = items.get(4).and_then(Reply::as_integer).unwrap_or(0).max(0) as u64;
        if !self.sessions.contains_key(&conn) {
            // Closed while the join was out: give the seat's connection back.
            let event = event_json(&echo.user_name, &echo.user_avatar);
            self.send_leave(conn, &room, &user.name, "drop", &event, Op::Quiet, now.mono);
            self.unsubscribe_if_empty(&room, now.mono);
            return;
        }
        if let Some(session) = self.sessions.get_mut(&conn) {
            if session.user.is_none() {
                session.user = Some(Rc::clone(&user));
                session.claimed_avatar = claimed_avatar;
            }
            session.rooms.push(room.clone());
        }
        let frame = packet::server_frame(
            "user",
            &echo.user_name,
            &echo.user_avatar,
            &room,
            &kind,
            None,
        );
        self.emit(conn, frame);
        if let Some(since) = since {
            let wanted_from = if since >= last { last + 1 } else { since + 1 };
            let from = wanted_from
                .max(first)
                .max((last + 1).saturating_sub(MAX_RECOVERY as u64));
            if since < last && from != wanted_from {
                self.counters.recoveries_incomplete += 1;
                self.emit(
                    conn,
                    packet::history_incomplete_frame(&echo, since, from, last),
                );
            } else {
                self.counters.recoveries_complete += 1;
            }
        }
        for item in items.iter().skip(5) {
            if let Some(payload) = item.as_bulk() {
                let live = packet::frame_from_payload(payload);
                self.emit(conn, packet::history_frame(&live));
            }
        }
        // Seat events Redis ran after this join that came before its reply.
        let mut put_out = false;
        if let Some(local) = self.local_rooms.get(&room) {
            for event in local.heard.iter().filter(|event| event.number > own_event) {
                self.outbox.push((conn, Rc::clone(&event.frame)));
                put_out |= event.evicts.as_deref() == Some(user.name.as_str());
            }
        }
        if put_out {
            // Its seat was released over HTTP just after: it is not in the
            // room (Redis already took its connection out).
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.rooms.retain(|r| *r != room);
            }
            self.unsubscribe_if_empty(&room, now.mono);
            self.packet_done(conn, now);
            return;
        }
        let local = self.local_rooms.entry(room.clone()).or_default();
        local.members.push(LocalMember {
            conn,
            user: user.name.clone(),
            history_until: last,
            joined_event: own_event,
        });
        match local.feed.next_seq() {
            None => local.feed.start_after(last),
            Some(expected) => {
                // Messages this node delivered before the joiner was a
                // member and after its history ended.
                let missed: Vec<Rc<[u8]>> = local
                    .recent
                    .iter()
                    .filter(|(seq, _)| *seq > last && *seq < expected)
                    .map(|(_, frame)| Rc::clone(frame))
                    .collect();
                for frame in missed {
                    self.outbox.push((conn, frame));
                }
            }
        }
        self.advance(&room, now);
        self.packet_done(conn, now);
    }

    pub fn ws_closed(&mut self, conn: ConnRef, now: Now) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let Some(user) = session.user else {
            return;
        };
        let (name, avatar) = display(&user, &session.claimed_avatar);
        let event = event_json(name, avatar);
        for room in session.rooms {
            self.remove_member(conn, &room, now.mono);
            self.send_leave(conn, &room, &user.name, "drop", &event, Op::Quiet, now.mono);
        }
    }

    /// The server is stopping: its seats go at once, with their `leave`s
    /// (docs/cluster.md, "Dead nodes"), and its lease with them.
    pub fn ws_close_all(&mut self, now: Now) {
        self.stopping = true;
        self.sessions.clear();
        self.runnable.clear();
        let names: Vec<String> = self.local_rooms.keys().cloned().collect();
        for name in names {
            if let Some(room) = self.local_rooms.remove(&name) {
                let _ = self.subscriber.unsubscribe(&room.channel, now.mono);
                self.channels.remove(&room.channel);
            }
        }
        self.sweep(now.mono, true);
        let lease = Command::new("DEL").arg(keys::node_lease(&self.node));
        if self.is_serving() {
            self.send(lease, Op::Quiet, now.mono);
        }
    }

    fn subscribe(&mut self, room: &str, now: Instant) {
        if self.local_rooms.contains_key(room) {
            return;
        }
        let channel = RoomKeys::new(room).channel().into_bytes();
        if let Err(error) = self.subscriber.subscribe(&channel, now) {
            log::warn!("cannot subscribe to room {room:?}: {error:?}");
        }
        self.channels.insert(channel.clone(), room.to_string());
        self.local_rooms.insert(
            room.to_string(),
            LocalRoom {
                channel,
                ..LocalRoom::default()
            },
        );
    }

    fn unsubscribe_if_empty(&mut self, room: &str, now: Instant) {
        // A join still out for this room keeps it.
        let unused = self
            .local_rooms
            .get(room)
            .is_some_and(|r| r.members.is_empty() && r.joining == 0);
        if unused {
            if let Some(local) = self.local_rooms.remove(room) {
                self.counters.duplicates_dropped += local.feed.duplicates();
                let _ = self.subscriber.unsubscribe(&local.channel, now);
                self.channels.remove(&local.channel);
            }
        }
    }

    fn remove_member(&mut self, conn: ConnRef, room: &str, now: Instant) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.rooms.retain(|r| r != room);
        }
        if let Some(local) = self.local_rooms.get_mut(room) {
            local.members.retain(|member| member.conn != conn);
        }
        self.unsubscribe_if_empty(room, now);
    }

    // ------------------------------------------------------------------
    // Delivery
    // ------------------------------------------------------------------

    fn on_published(&mut self, channel: &[u8], payload: &[u8], now: Now) {
        let Some(room) = self.channels.get(channel).cloned() else {
            return;
        };
        match payload.first() {
            Some(b'm') => {
                let rest = &payload[1..];
                let Some(space) = rest.iter().position(|b| *b == b' ') else {
                    return;
                };
                let Some(seq) = std::str::from_utf8(&rest[..space])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    return;
                };
                let frame = packet::frame_from_payload(&rest[space + 1..]);
                let Some(local) = self.local_rooms.get_mut(&room) else {
                    return;
                };
                local.feed.on_message(seq, frame);
                self.advance(&room, now);
            }
            Some(b'e') => self.on_user_event(&room, &payload[1..]),
            Some(b'x') => self.on_evicted(&room, &payload[1..], now),
            _ => log::debug!("unknown event on {room:?}"),
        }
    }

    /// `e<kind> <number> <node> <conn> <json>`
    fn on_user_event(&mut self, room: &str, event: &[u8]) {
        let mut parts = event.splitn(5, |b| *b == b' ');
        let (Some(kind), Some(number), Some(node), Some(origin), Some(json)) = (
            parts.next(),
            parts.next().and_then(parse_number),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return;
        };
        let Ok(user) = serde_json::from_slice::<EventUser>(json) else {
            return;
        };
        let kind = String::from_utf8_lossy(kind);
        let avatar = match self.users_by_name.get(&user.u) {
            Some(registered) if !registered.avatar_url.is_empty() => registered.avatar_url.clone(),
            _ => user.a,
        };
        let frame = packet::server_frame("user", &user.u, &avatar, room, &kind, None);
        // The connection that caused it, when on this node: it was told.
        let skip = (node == self.node.as_bytes())
            .then(|| std::str::from_utf8(origin).ok())
            .flatten()
            .and_then(|hex| ConnRef::from_str_radix(hex, 16).ok());
        let Some(local) = self.local_rooms.get_mut(room) else {
            return;
        };
        local.hear(number, &frame, None);
        for member in &local.members {
            // Its own event, or one Redis ran before its join (pub/sub and
            // join replies come on different connections).
            if number <= member.joined_event || skip == Some(member.conn) {
                continue;
            }
            self.outbox.push((member.conn, Rc::clone(&frame)));
        }
    }

    /// `x<number> <json>`: the user's seat was released by HTTP.
    fn on_evicted(&mut self, room: &str, event: &[u8], now: Now) {
        let mut parts = event.splitn(2, |b| *b == b' ');
        let (Some(number), Some(json)) = (parts.next().and_then(parse_number), parts.next()) else {
            return;
        };
        let Ok(user) = serde_json::from_slice::<EventUser>(json) else {
            return;
        };
        let frame = packet::server_frame("user", &user.u, &user.a, room, "leave", None);
        let Some(local) = self.local_rooms.get_mut(room) else {
            return;
        };
        local.hear(number, &frame, Some(&user.u));
        // A connection that joined after the release is not affected.
        let before = |member: &LocalMember| member.joined_event < number;
        for member in local.members.iter().filter(|m| before(m)) {
            self.outbox.push((member.conn, Rc::clone(&frame)));
        }
        let evicted: Vec<ConnRef> = local
            .members
            .iter()
            .filter(|m| m.user == user.u && before(m))
            .map(|m| m.conn)
            .collect();
        local.members.retain(|m| !evicted.contains(&m.conn));
        // Its own message will not be delivered to it here any more.
        let mut released = Vec::new();
        local.senders.retain(|(conn, _)| {
            let out = evicted.contains(conn);
            if out {
                released.push(*conn);
            }
            !out
        });
        for conn in evicted {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.rooms.retain(|r| r != room);
            }
        }
        for conn in released {
            self.publish_resolved(conn);
        }
        self.unsubscribe_if_empty(room, now.mono);
        self.run_sessions(now);
    }

    /// Delivers what is next in seq order; starts a refill at a gap.
    fn advance(&mut self, room_name: &str, now: Now) {
        let can_refill = self.is_serving();
        let Some(room) = self.local_rooms.get_mut(room_name) else {
            return;
        };
        let mut ready = Vec::new();
        let refill = room.feed.poll(can_refill, &mut ready);
        for (seq, frame) in ready {
            deliver(room, &mut self.outbox, seq, frame);
        }
        let next = room.feed.next_seq();
        let members = &room.members;
        let mut done = Vec::new();
        room.senders.retain(|(conn, seq)| {
            let delivered = next.is_some_and(|next| next > *seq);
            let gone = !members.iter().any(|member| member.conn == *conn);
            if delivered || gone {
                done.push(*conn);
            }
            !(delivered || gone)
        });
        if !done.is_empty() {
            for conn in done {
                self.publish_resolved(conn);
            }
            self.run_sessions(now);
        }
        // A released packet may have been a leave that closed the room.
        if !self.local_rooms.contains_key(room_name) {
            return;
        }
        let Some(refill) = refill else {
            return;
        };
        let (from, to) = match refill {
            Refill::Gap { from, to } => (from, format!("{to}-0")),
            Refill::After { from } => (from, "+".to_string()),
        };
        let command = Command::new("XRANGE")
            .arg(RoomKeys::new(room_name).log())
            .arg(format!("{from}-0"))
            .arg(to)
            .arg("COUNT")
            .arg_int(REFILL_BATCH as i64);
        self.counters.refills += 1;
        let op = Op::Refill {
            room: room_name.to_string(),
            refill,
        };
        if !self.send(command, op, now.mono) {
            if let Some(room) = self.local_rooms.get_mut(room_name) {
                room.feed.refill_failed();
            }
        }
    }

    fn on_refill(&mut self, room_name: &str, refill: Refill, reply: Option<Reply>, now: Now) {
        let Some(room) = self.local_rooms.get_mut(room_name) else {
            return;
        };
        let Some(reply) = reply.filter(|r| !matches!(r, Reply::Error(_))) else {
            room.feed.refill_failed();
            return;
        };
        let entries: Vec<(u64, Rc<[u8]>)> = stream_entries(&reply)
            .into_iter()
            .map(|(seq, payload)| (seq, packet::frame_from_payload(&payload)))
            .collect();
        let cut_short = entries.len() >= REFILL_BATCH;
        let mut ready = Vec::new();
        room.feed.on_refill(refill, entries, cut_short, &mut ready);
        for (seq, frame) in ready {
            deliver(room, &mut self.outbox, seq, frame);
        }
        self.advance(room_name, now);
    }

    pub fn swap_outbox(&mut self, empty: &mut Vec<(ConnRef, Rc<[u8]>)>) {
        std::mem::swap(&mut self.outbox, empty);
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    fn emit(&mut self, conn: ConnRef, frame: Rc<[u8]>) {
        self.outbox.push((conn, frame));
    }
}

/// A LEAVE to send once Redis is back.
#[derive(Debug)]
struct UnsentLeave {
    room: String,
    user: String,
    conn: ConnRef,
    mode: &'static str,
    event: String,
}

/// What a handler did: answered (or started the work of answering), or
/// needs something looked up first.
enum Step {
    Done(Outcome),
    Need(Lookup),
}

/// Whether a packet's work continues after `apply` returns.
enum Wait {
    No,
    /// A command is out; its reply finishes the packet.
    Yes,
    /// A message went to Redis: the packet is done, its echo on its way.
    Published,
    For(Lookup),
}

/// A decimal event number from a pub/sub payload.
fn parse_number(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn deliver(room: &mut LocalRoom, outbox: &mut Vec<(ConnRef, Rc<[u8]>)>, seq: u64, frame: Rc<[u8]>) {
    for member in &room.members {
        if seq > member.history_until {
            outbox.push((member.conn, Rc::clone(&frame)));
        }
    }
    if room.recent.len() >= RECENT_KEPT {
        room.recent.pop_front();
    }
    room.recent.push_back((seq, frame));
}

fn echo_of(packet: &ClientPacket) -> Echo {
    Echo {
        user_name: packet.user_name.clone(),
        user_avatar: packet.user_avatar.clone(),
        room_name: packet.room_name.clone(),
    }
}

fn display<'a>(user: &'a UserRecord, claimed: &'a str) -> (&'a str, &'a str) {
    if user.avatar_url.is_empty() {
        (&user.name, claimed)
    } else {
        (&user.name, &user.avatar_url)
    }
}

fn user_frame(user: &UserRecord, claimed: &str, room: &str, msg: &str) -> Rc<[u8]> {
    let (name, avatar) = display(user, claimed);
    packet::server_frame("user", name, avatar, room, msg, None)
}

/// How events name a connection of this node.
fn conn_part(conn: ConnRef) -> String {
    format!("{conn:x}")
}

fn list_response(items: &[Reply]) -> Response {
    let pairs: Vec<(String, usize)> = items
        .chunks(2)
        .filter_map(|pair| {
            let name = text(pair.first()?)?.to_string();
            let held = pair.get(1)?.as_integer()?.max(0) as usize;
            Some((name, held))
        })
        .collect();
    let entries: Vec<RoomEntry> = pairs
        .iter()
        .map(|(name, population)| RoomEntry {
            name,
            room_name: name,
            population: *population,
        })
        .collect();
    Response::json(
        200,
        &RoomList {
            rooms: &entries,
            room_list: &entries,
        },
    )
    .with_outcome("list")
}

fn history_response(room: &str, entries: &[(u64, Vec<u8>)], has_more: bool) -> Response {
    let mut messages: Vec<Row> = Vec::with_capacity(entries.len());
    for (seq, payload) in entries {
        match serde_json::from_slice::<StoredPacket>(payload) {
            Ok(stored) => messages.push(stored.data),
            Err(e) => log::error!("retained message {seq} of {room:?} unreadable: {e}"),
        }
    }
    let reply = HistoryReply {
        res: "get history successfully",
        room_name: room,
        messages,
        has_more,
    };
    Response::json(200, &reply).with_outcome("get history successfully")
}

impl ClusterApi {
    fn members_response(&self, room: &str, items: &[Reply]) -> Response {
        let mut rows: Vec<(String, String, bool)> = items
            .chunks(4)
            .filter_map(|row| {
                let name = text(row.first()?)?.to_string();
                let online = row.get(1)?.as_integer()? == 1;
                let registered = row.get(2).and_then(decode_user)?;
                // What the room's packets show for this user: the
                // registered avatar, else the one their connection claimed.
                let avatar = if registered.avatar_url.is_empty() {
                    row.get(3).and_then(text).unwrap_or_default().to_string()
                } else {
                    registered.avatar_url
                };
                Some((name, avatar, online))
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let members: Vec<Member> = rows
            .iter()
            .map(|(name, avatar, online)| Member {
                user_name: name,
                user_avatar: avatar,
                online: *online,
            })
            .collect();
        let reply = MembersReply {
            res: "get members successfully",
            room_name: room,
            population: members.len(),
            members,
        };
        Response::json(200, &reply).with_outcome("get members successfully")
    }
}

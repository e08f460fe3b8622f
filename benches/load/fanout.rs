//! Fan-out: R rooms × M members, S of them sending. The delivery path reads
//! frames in place, finds the marker the sender put in its message with a
//! byte search, and counts: no JSON is parsed.
//!
//! A message's text is `#L<sender>:<seq>:<ns>#` padded with `x`, where `ns`
//! is its send time in nanoseconds since the run began (in `--rate` mode the
//! time it was due, so a late generator shows up as latency rather than
//! hiding it). Every member of the room, the sender included, must receive
//! it. The window W bounds, per sender, the messages sent but not yet
//! received by every member of the room: the sender sends again as soon as
//! its oldest message has reached everyone.

use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::hist::{Histogram, Latency};
use crate::login::LoginLoad;
use crate::net;
use crate::server::{CpuMark, CpuUse, Server};
use crate::swarm::{Handler, Swarm};

#[derive(Clone, Debug)]
pub struct FanoutParams {
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub window: u32,
    /// Total messages per second over all senders; `None` is window mode.
    pub rate: Option<f64>,
    pub msg_bytes: usize,
    /// Distinct users per room; members share them round-robin (several
    /// connections of one user in a room are allowed). Fewer users make
    /// setup quicker when hashing is expensive.
    pub users_per_room: usize,
    /// In rate mode, the most messages a sender may have outstanding: past
    /// saturation the offered rate is not met rather than the server's
    /// queues growing until it closes members as slow consumers.
    pub max_inflight: u32,
}

pub struct Phase {
    pub name: String,
    pub warmup: Duration,
    pub seconds: Duration,
    pub login_clients: usize,
}

#[derive(Debug, Default, Clone)]
pub struct PhaseResult {
    pub name: String,
    pub deliveries: u64,
    pub sent: u64,
    pub latency: Latency,
    pub cpu: CpuUse,
    pub login_ops: u64,
    pub login_failures: u64,
    pub login_latency: Latency,
    /// Deliveries in the measured window to members of node 0, 1, … (one
    /// entry for a single server).
    pub deliveries_by_node: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct FanoutOutcome {
    pub phases: Vec<PhaseResult>,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: i64,
    pub problems: Vec<String>,
    pub drained: bool,
    pub behind: u64,
    /// Cluster mode: `user` packets received during the joins minus what
    /// one embedded server sends (see `Swarm::join_rooms`).
    pub join_announcements_delta: i64,
}

struct Sender {
    conn: usize,
    seq: u32,
    /// Every message below `done` has reached every member.
    done: u32,
    ring: Box<[u32]>,
    out: Vec<u8>,
    queued: bool,
    head: String,
    tail: String,
}

struct State {
    start: Instant,
    now_ns: u64,
    members: u32,
    senders_per_room: usize,
    senders: Vec<Sender>,
    /// Per (connection, sender of its room): the next sequence number due.
    next_seq: Vec<u32>,
    finder: memchr::memmem::Finder<'static>,
    window: Option<u32>,
    refill: Vec<u32>,
    measuring: bool,
    hist: Histogram,
    window_deliveries: u64,
    /// The node each connection is on, and the window's deliveries by node.
    node_of: Vec<u8>,
    window_by_node: Vec<u64>,
    delivered: u64,
    problems: Vec<String>,
    problem_count: u64,
    login: Option<LoginLoad>,
    timer: Option<net::Timer>,
}

const TIMER: mio::Token = mio::Token(crate::swarm::OTHER_TOKENS + (1 << 24));

impl State {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < 10 {
            self.problems.push(text);
        }
    }

    #[inline]
    fn delivery(&mut self, conn: usize, payload: &[u8]) -> bool {
        let Some(at) = self.finder.find(payload) else {
            return false;
        };
        let (sender, seq, sent_ns) = match parse_marker(&payload[at + 2..]) {
            Some(v) => v,
            None => return false,
        };
        let room = conn / self.members as usize;
        let s = sender as usize;
        if s >= self.senders.len() || s / self.senders_per_room != room {
            self.problem(format!(
                "connection {conn} (room {room}) got a message of sender {sender}"
            ));
            return true;
        }
        let slot = conn * self.senders_per_room + s % self.senders_per_room;
        let expected = self.next_seq[slot];
        if seq != expected {
            self.problem(format!(
                "connection {conn}: message {seq} of sender {sender} arrived when {expected} was due"
            ));
        }
        self.next_seq[slot] = seq.wrapping_add(1);
        self.delivered += 1;
        if self.measuring {
            self.window_deliveries += 1;
            self.window_by_node[self.node_of[conn] as usize] += 1;
            self.hist.record(self.now_ns.saturating_sub(sent_ns));
        }
        let members = self.members;
        let sender = &mut self.senders[s];
        let mask = sender.ring.len() - 1;
        if seq.wrapping_sub(sender.done) as usize > mask {
            self.problem(format!("sender {s}: message {seq} outside its window"));
            return true;
        }
        let count = &mut sender.ring[seq as usize & mask];
        *count += 1;
        if *count == members {
            let mut advanced = false;
            while sender.done != sender.seq && sender.ring[sender.done as usize & mask] == members {
                sender.ring[sender.done as usize & mask] = 0;
                sender.done = sender.done.wrapping_add(1);
                advanced = true;
            }
            if advanced && self.window.is_some() && !sender.queued {
                sender.queued = true;
                self.refill.push(s as u32);
            }
        }
        true
    }
}

/// Parses `<sender>:<seq>:<ns>#`.
#[inline]
fn parse_marker(bytes: &[u8]) -> Option<(u32, u32, u64)> {
    let mut fields = [0u64; 3];
    let mut field = 0;
    for &b in bytes {
        match b {
            b'0'..=b'9' => fields[field] = fields[field] * 10 + (b - b'0') as u64,
            b':' if field < 2 => field += 1,
            b'#' if field == 2 => return Some((fields[0] as u32, fields[1] as u32, fields[2])),
            _ => return None,
        }
    }
    None
}

impl Handler for State {
    fn begin_event(&mut self) {
        self.now_ns = self.start.elapsed().as_nanos() as u64;
    }

    #[inline]
    fn frame(&mut self, conn: usize, op: OpCode, payload: &[u8]) {
        match op {
            OpCode::Data(Data::Text) => {
                if !self.delivery(conn, payload) {
                    // A join/leave announcement is harmless; anything else
                    // (an error packet) means the run is not what it claims.
                    if memchr::memmem::find(payload, br#""type":"user""#).is_none() {
                        let text = String::from_utf8_lossy(&payload[..payload.len().min(200)])
                            .into_owned();
                        self.problem(format!("connection {conn}: unexpected packet {text}"));
                    }
                }
            }
            OpCode::Control(Control::Close) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                self.problem(format!(
                    "connection {conn}: close frame {code:?} {reason:?}"
                ));
            }
            OpCode::Control(Control::Ping) | OpCode::Control(Control::Pong) => {}
            other => self.problem(format!("connection {conn}: unexpected {other:?} frame")),
        }
    }

    fn ended(&mut self, conn: usize, why: String) {
        self.problem(format!("connection {conn} ended: {why}"));
    }

    fn writable(&mut self, conn: usize, stream: &mut TcpStream) {
        // Senders are the first members of each room.
        let m = self.members as usize;
        let (room, member) = (conn / m, conn % m);
        if member < self.senders_per_room {
            let g = room * self.senders_per_room + member;
            let sender = &mut self.senders[g];
            if !sender.out.is_empty() {
                if let Err(e) = net::flush(stream, &mut sender.out) {
                    self.problem(format!("sender {g}: write failed: {e}"));
                }
            }
        }
    }

    fn other(&mut self, event: &mio::event::Event) {
        if event.token() == TIMER {
            if let Some(timer) = &self.timer {
                timer.clear();
            }
        } else if let Some(login) = &mut self.login {
            login.event(event);
        }
    }
}

/// Sets up the rooms and connections on `server` and runs `phases` back to
/// back, then stops sending and waits for every message to arrive.
pub fn run(
    server: &Server,
    params: &FanoutParams,
    phases: &[Phase],
) -> Result<FanoutOutcome, String> {
    let tag = crate::server::run_tag();
    let rooms: Vec<String> = (0..params.rooms).map(|r| format!("f{tag}r{r}")).collect();
    let users = params.users_per_room.clamp(1, params.members);
    let user = |r: usize, m: usize| format!("f{tag}u{}", r * users + m % users);
    let names: Vec<(String, String)> = (0..params.rooms * users)
        .map(|i| (format!("1{tag:06}{i:07}"), format!("f{tag}u{i}")))
        .collect();
    crate::server::register_users(server, &names);
    crate::server::create_rooms(server, &rooms, params.members);
    let mut swarm = Swarm::new();
    // Members go to the nodes round-robin, so each room's first member (a
    // sender) is on node 0.
    let nodes = server.ws_addrs();
    let join_announcements_delta =
        swarm.join_rooms(&nodes, &rooms, params.members, usize::MAX, user)?;
    let node_of: Vec<u8> = (0..params.rooms * params.members)
        .map(|i| ((i % params.members) % nodes.len()) as u8)
        .collect();

    let senders_per_room = params.senders.clamp(1, params.members);
    let ring = match params.rate {
        Some(_) => params.max_inflight.max(1),
        None => params.window.max(1),
    }
    .next_power_of_two() as usize;
    let pad = "x".repeat(params.msg_bytes.saturating_sub(24));
    let mut senders = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for s in 0..senders_per_room {
            let packet = net::packet("msg", &user(r, s), room, Some("\u{0}"));
            let (head, tail) = packet.split_once('\u{0}').unwrap();
            senders.push(Sender {
                conn: r * params.members + s,
                seq: 0,
                done: 0,
                ring: vec![0; ring].into_boxed_slice(),
                out: Vec::new(),
                queued: true,
                head: head.to_string(),
                tail: format!("{pad}{tail}"),
            });
        }
    }
    let login = phases
        .iter()
        .map(|p| p.login_clients)
        .max()
        .filter(|&k| k > 0)
        .map(|k| LoginLoad::new(&swarm.poll, server.http, k, tag));
    let mut state = State {
        start: Instant::now(),
        now_ns: 0,
        members: params.members as u32,
        senders_per_room,
        refill: (0..senders.len() as u32).collect(),
        senders,
        next_seq: vec![0; params.rooms * params.members * senders_per_room],
        finder: memchr::memmem::Finder::new(b"#L").into_owned(),
        window: params.rate.is_none().then_some(params.window.max(1)),
        measuring: false,
        hist: Histogram::new(),
        window_deliveries: 0,
        node_of,
        window_by_node: vec![0; nodes.len()],
        delivered: 0,
        problems: Vec::new(),
        problem_count: 0,
        login,
        timer: None,
    };
    if params.rate.is_some() {
        state.timer = Some(
            net::Timer::new(swarm.poll.registry(), TIMER).map_err(|e| format!("timerfd: {e}"))?,
        );
    }

    let mut outcome = FanoutOutcome {
        join_announcements_delta,
        ..FanoutOutcome::default()
    };
    let mut text = Vec::with_capacity(params.msg_bytes + 256);
    let mut due_index: u64 = 0;
    let rate_start_ns = state.start.elapsed().as_nanos() as u64;
    let interval_ns = params.rate.map(|r| 1e9 / r.max(1e-3));
    let mut sent_in_window = 0u64;

    for phase in phases {
        if let Some(login) = &mut state.login {
            login.set_active(phase.login_clients);
        }
        let warm_until = Instant::now() + phase.warmup;
        let mut mark: Option<(CpuMark, Instant, u64, u64)> = None;
        loop {
            let now = Instant::now();
            if mark.is_none() && now >= warm_until {
                state.hist.clear();
                state.window_deliveries = 0;
                state.window_by_node.fill(0);
                state.measuring = true;
                sent_in_window = 0;
                let (ops, failures) = state
                    .login
                    .as_mut()
                    .map(|l| l.take_counts())
                    .unwrap_or((0, 0));
                let _ = (ops, failures);
                mark = Some((CpuMark::now(server), now + phase.seconds, 0, 0));
            }
            if let Some((begin, end, _, _)) = &mark {
                let end = *end;
                if now >= end {
                    let cpu = begin.since(&CpuMark::now(server));
                    state.measuring = false;
                    let (ops, failures) = state
                        .login
                        .as_mut()
                        .map(|l| l.take_counts())
                        .unwrap_or((0, 0));
                    outcome.phases.push(PhaseResult {
                        name: phase.name.clone(),
                        deliveries: state.window_deliveries,
                        sent: sent_in_window,
                        latency: Latency::of(&state.hist),
                        cpu,
                        login_ops: ops,
                        login_failures: failures,
                        login_latency: state
                            .login
                            .as_mut()
                            .map(|l| l.take_latency())
                            .unwrap_or_default(),
                        deliveries_by_node: state.window_by_node.clone(),
                    });
                    break;
                }
            }
            // Send what is due.
            let timeout = Duration::from_millis(50);
            let now_ns = state.start.elapsed().as_nanos() as u64;
            if let Some(interval) = interval_ns {
                let total = state.senders.len() as u64;
                loop {
                    let due = rate_start_ns + (due_index as f64 * interval) as u64;
                    if due > now_ns {
                        if let Some(timer) = &state.timer {
                            timer.arm(Duration::from_nanos(due - now_ns));
                        }
                        break;
                    }
                    let g = (due_index % total) as usize;
                    let sender = &mut state.senders[g];
                    if sender.seq.wrapping_sub(sender.done) < ring as u32 {
                        push_message(sender, g, due, &mut text, &mut swarm.mask_seed);
                        sent_in_window += 1;
                        if !sender.queued {
                            sender.queued = true;
                            state.refill.push(g as u32);
                        }
                    } else {
                        outcome.behind += 1;
                    }
                    due_index += 1;
                }
            } else {
                let window = params.window.max(1);
                for &g in &state.refill {
                    let sender = &mut state.senders[g as usize];
                    while sender.seq.wrapping_sub(sender.done) < window {
                        push_message(sender, g as usize, now_ns, &mut text, &mut swarm.mask_seed);
                        sent_in_window += 1;
                    }
                }
            }
            for g in state.refill.drain(..) {
                let sender = &mut state.senders[g as usize];
                sender.queued = false;
                if let Err(e) = net::flush(&mut swarm.conns[sender.conn].stream, &mut sender.out) {
                    let text = format!("sender {g}: write failed: {e}");
                    state.problems.push(text);
                }
            }
            if let Some(login) = &mut state.login {
                login.kick();
            }
            swarm.pump(Some(timeout), &mut state);
        }
    }

    // Stop sending; wait for what is in flight.
    state.measuring = false;
    if let Some(login) = &mut state.login {
        login.set_active(0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    outcome.drained = loop {
        if state
            .senders
            .iter()
            .all(|s| s.done == s.seq && s.out.is_empty())
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        for sender in &mut state.senders {
            if !sender.out.is_empty() {
                let _ = net::flush(&mut swarm.conns[sender.conn].stream, &mut sender.out);
            }
        }
        swarm.pump(Some(Duration::from_millis(20)), &mut state);
    };
    // Anything still on its way is counted as lost only after a short grace.
    swarm.pump(Some(Duration::from_millis(50)), &mut state);
    outcome.sent = state.senders.iter().map(|s| s.seq as u64).sum();
    outcome.expected = outcome.sent * params.members as u64;
    outcome.delivered = state.delivered;
    outcome.lost = outcome.expected as i64 - state.delivered as i64;
    if state.problem_count > state.problems.len() as u64 {
        let more = state.problem_count - state.problems.len() as u64;
        state.problems.push(format!("… and {more} more"));
    }
    outcome.problems = state.problems;
    Ok(outcome)
}

fn push_message(
    sender: &mut Sender,
    g: usize,
    sent_ns: u64,
    text: &mut Vec<u8>,
    mask_seed: &mut u32,
) {
    use std::io::Write;
    text.clear();
    write!(
        text,
        "{}#L{g}:{}:{sent_ns}#{}",
        sender.head, sender.seq, sender.tail
    )
    .unwrap();
    net::push_text_frame(&mut sender.out, text, mask_seed);
    sender.seq = sender.seq.wrapping_add(1);
}

//! Heap allocations on the reactor thread, per broadcast message and per
//! delivery, and per keep-alive HTTP request; a regression check for the
//! claim that nothing on the broadcast path allocates per recipient.
//!
//! ```sh
//! cargo bench --bench alloc                   # the table; exits 1 past the thresholds
//! cargo bench --bench alloc -- --quick        # a fifth of the messages (a smoke run)
//! cargo bench --bench alloc -- --sizes        # also the commonest allocation sizes
//! cargo bench --bench alloc -- --members 10,2000   # other room sizes
//! ```
//!
//! The server runs in-process on this program's main thread, the only thread
//! whose allocations are counted (helper threads, hashing and fsync, are
//! not); every client runs on another thread, over real loopback sockets,
//! through tungstenite. For rooms of 10, 100 and 1000 members, one member
//! sends with `--ws-rate 0`, first in lockstep (window 1: each message
//! reaches everyone before the next goes out), then in bursts (window 32:
//! several messages reach the server in one read, as from a busy room).
//! Each phase warms up, resets the counters, then counts until every member
//! has read every message.
//!
//! The verdict: at 1000 members, allocation events (allocations plus
//! reallocations) per delivery must stay at or below 0.05, and the events
//! per message must not grow by more than 2 from the smallest room to the
//! largest. Anything allocated once per recipient fails both.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use chatroom::reactor::StopHandle;
use chatroom::{Config, Server};
use mio::{Events, Interest, Poll, Token};
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------

thread_local! {
    // `const` initialisation and a type without a destructor: reading the
    // flag never allocates nor registers a destructor, so it is safe to do
    // from inside the allocator.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Allocation sizes in 8-byte classes (the last class holds everything
/// larger), for `--sizes`: which size recurs tells which structure grows.
const SIZE_CLASSES: usize = 129;
static ALLOC_SIZES: [AtomicU64; SIZE_CLASSES] = [const { AtomicU64::new(0) }; SIZE_CLASSES];
static REALLOC_SIZES: [AtomicU64; SIZE_CLASSES] = [const { AtomicU64::new(0) }; SIZE_CLASSES];

fn size_class(size: usize) -> usize {
    size.div_ceil(8).min(SIZE_CLASSES - 1)
}

struct CountingAlloc;

fn counted_thread() -> bool {
    // During thread teardown the slot may be gone; such a thread is not the
    // reactor.
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// atomics touched without allocating.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted_thread() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            ALLOC_SIZES[size_class(layout.size())].fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted_thread() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            ALLOC_SIZES[size_class(layout.size())].fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growth is a trip to the allocator like any other: it counts as
        // an allocation, and its bytes are the ones added.
        if counted_thread() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(
                new_size.saturating_sub(layout.size()) as u64,
                Ordering::Relaxed,
            );
            REALLOC_SIZES[size_class(new_size)].fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[derive(Debug, Clone, Copy)]
struct Tally {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
    alloc_sizes: [u64; SIZE_CLASSES],
    realloc_sizes: [u64; SIZE_CLASSES],
}

impl Tally {
    fn take() -> Tally {
        let drain = |classes: &[AtomicU64; SIZE_CLASSES]| {
            let mut counts = [0u64; SIZE_CLASSES];
            for (count, class) in counts.iter_mut().zip(classes) {
                *count = class.swap(0, Ordering::SeqCst);
            }
            counts
        };
        Tally {
            allocs: ALLOCS.swap(0, Ordering::SeqCst),
            reallocs: REALLOCS.swap(0, Ordering::SeqCst),
            bytes: BYTES.swap(0, Ordering::SeqCst),
            alloc_sizes: drain(&ALLOC_SIZES),
            realloc_sizes: drain(&REALLOC_SIZES),
        }
    }

    /// The most frequent size classes, per `unit` (message or request).
    fn size_summary(&self, units: f64) -> String {
        let top = |counts: &[u64; SIZE_CLASSES]| {
            let mut classes: Vec<(usize, u64)> = counts
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, count)| count > 0)
                .collect();
            classes.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
            classes
                .iter()
                .take(10)
                .map(|&(class, count)| {
                    let size = if class == SIZE_CLASSES - 1 {
                        format!(">{}", (SIZE_CLASSES - 2) * 8)
                    } else {
                        format!("{}", class * 8)
                    };
                    format!("{size}B×{:.2}", count as f64 / units)
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "    alloc sizes (≤, per unit): {}\n    realloc new sizes: {}",
            top(&self.alloc_sizes),
            top(&self.realloc_sizes)
        )
    }

    fn events(&self) -> u64 {
        self.allocs + self.reallocs
    }
}

// ---------------------------------------------------------------------------
// Running a server on this thread while a driver thread measures it
// ---------------------------------------------------------------------------

fn bench_config(dir: &std::path::Path, members: usize) -> Config {
    let mut config = Config {
        http_addr: "127.0.0.1:0".parse().expect("address"),
        ws_addr: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        hash_threads: 1,
        max_connections: members + 64,
        // The clients are one thread reading every member; a lagging one
        // must not be closed as a slow consumer in the middle of a count.
        max_outbound_bytes: 64 * 1024 * 1024,
        ws_ping_after: Duration::from_secs(600),
        ws_idle_timeout: Duration::from_secs(900),
        ..Config::default()
    };
    // `--ws-rate 0`: one sender floods the room.
    config.chat.ws_rate = 0;
    config
}

struct StopOnDrop(StopHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Binds a server, runs it on this thread with allocation counting on, and
/// runs `drive` on another thread against it; returns what `drive` returned.
fn with_server<T: Send + 'static>(
    members: usize,
    drive: impl FnOnce(SocketAddr, SocketAddr) -> T + Send + 'static,
) -> T {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = Server::bind(bench_config(dir.path(), members)).expect("server binds");
    let (http, ws) = (server.http_addr(), server.ws_addr());
    // Stops the server however the driver ends: a panicking driver must
    // not leave this thread in `run` for ever.
    let stop = StopOnDrop(server.stop_handle());
    let driver = thread::Builder::new()
        .name("driver".into())
        .spawn(move || {
            let _stop = stop;
            drive(http, ws)
        })
        .expect("driver thread");
    COUNTED.with(|flag| flag.set(true));
    let ran = server.run();
    COUNTED.with(|flag| flag.set(false));
    ran.expect("server ran");
    driver.join().expect("driver finished")
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// One request on a fresh connection; returns the body.
fn http_once(addr: SocketAddr, method: &str, target: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn expect_res(body: &str, res: &str) {
    assert!(body.contains(res), "expected {res:?}, got {body}");
}

const USER: &str = "bench";
const ROOM: &str = "bench-room";

fn setup_user_and_room(http: SocketAddr, capacity: usize) {
    let body = http_once(
        http,
        "POST",
        &format!("/auth/register?user_tel=13800000000&user_name={USER}&user_password=secret-123"),
    );
    expect_res(&body, "register successfully");
    let body = http_once(
        http,
        "POST",
        &format!("/chatroom/create?room_name={ROOM}&capacity={capacity}"),
    );
    expect_res(&body, "chatroom create successfully");
}

fn packet(kind: &str, msg: &str) -> String {
    serde_json::json!({
        "type": kind,
        "data": {"user": {"user_name": USER, "user_avatar": ""}, "room_name": ROOM, "msg": msg},
    })
    .to_string()
}

/// A connection that has completed its handshake, not yet in the room.
fn connect_member(ws_addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(ws_addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (ws, _) =
        tungstenite::client(format!("ws://{ws_addr}/"), stream).expect("WebSocket handshake");
    ws
}

/// What a member read: chat messages are counted, join announcements are
/// what the room's set-up waits for.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    messages: u64,
    announcements: u64,
}

fn classify(message: &Message, received: &mut Received) {
    if let Message::Text(text) = message {
        let text = text.as_str();
        if text.starts_with("{\"type\":\"msg\"") {
            received.messages += 1;
        } else if text.starts_with("{\"type\":\"user\"") {
            received.announcements += 1;
        }
    }
}

struct Member {
    ws: WebSocket<TcpStream>,
    /// A second handle on the same socket, registered with the poller;
    /// reads go through `ws`.
    _readiness: mio::net::TcpStream,
}

struct BroadcastRow {
    members: usize,
    window: usize,
    messages: usize,
    tally: Tally,
    elapsed: Duration,
}

/// One round of a broadcast measurement: `warmup` messages, then
/// `messages` counted ones, sent while at most `window` of them are not yet
/// delivered to everyone (counted over the room as a whole).
#[derive(Debug, Clone, Copy)]
struct Phase {
    window: usize,
    warmup: usize,
    messages: usize,
}

/// The room's members, as seen by the one client thread that reads them
/// all; member 0 is also the sender.
struct Room {
    members: Vec<Member>,
    poll: Poll,
    events: Events,
    /// Members with input to read.
    pending: Vec<usize>,
}

impl Room {
    /// Connects `count` members and has them all join; returns once every
    /// join announcement has been read.
    fn join(ws_addr: SocketAddr, count: usize) -> Room {
        let poll = Poll::new().expect("poll");
        let members = (0..count)
            .map(|index| {
                let ws = connect_member(ws_addr);
                ws.get_ref().set_nonblocking(true).expect("nonblocking");
                let mut readiness =
                    mio::net::TcpStream::from_std(ws.get_ref().try_clone().expect("dup socket"));
                poll.registry()
                    .register(&mut readiness, Token(index), Interest::READABLE)
                    .expect("register");
                Member {
                    ws,
                    _readiness: readiness,
                }
            })
            .collect();
        let mut room = Room {
            members,
            poll,
            events: Events::with_capacity(1024),
            pending: Vec::new(),
        };
        // Joins are sent without waiting for their announcements, so the
        // server fans many of them out per turn: far faster to set up than
        // one join per round trip. The i-th join processed is announced to
        // i members, whatever the order.
        let join = packet("join", "");
        for member in &mut room.members {
            member.ws.send(Message::text(&join)).expect("join");
        }
        let expected = (count as u64) * (count as u64 + 1) / 2;
        let mut announcements = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while announcements < expected {
            assert!(Instant::now() < deadline, "joins were not all announced");
            room.poll
                .poll(&mut room.events, Some(Duration::from_millis(5)))
                .expect("poll");
            room.pending
                .extend(room.events.iter().map(|event| event.token().0));
            let received = room.read_pending();
            assert_eq!(received.messages, 0, "a chat message before any was sent");
            announcements += received.announcements;
        }
        room
    }

    /// Reads what the pending members have.
    fn read_pending(&mut self) -> Received {
        let mut received = Received::default();
        for index in self.pending.drain(..) {
            let ws = &mut self.members[index].ws;
            loop {
                match ws.read() {
                    Ok(message) => classify(&message, &mut received),
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break
                    }
                    Err(e) => panic!("member {index}: {e}"),
                }
            }
        }
        received
    }

    /// Sends and reads until every member has every message of the phase;
    /// counts allocations from the end of the warm-up.
    fn run(&mut self, phase: Phase, text: &str) -> (Tally, Duration) {
        let members = self.members.len() as u64;
        let total = phase.warmup + phase.messages;
        let mut sent = 0usize;
        let mut delivered: u64 = 0;
        let mut started = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            delivered += self.read_pending().messages;
            if delivered == total as u64 * members {
                break;
            }
            if started.is_none() && sent == phase.warmup && delivered == sent as u64 * members {
                // The warm-up is delivered and the reactor is idle: count
                // from here.
                let _ = Tally::take();
                started = Some(Instant::now());
            }
            loop {
                let warming_up = started.is_none();
                let outstanding = (sent as u64 * members).saturating_sub(delivered);
                if sent == total
                    || (warming_up && sent == phase.warmup)
                    || outstanding > (phase.window as u64 - 1) * members
                {
                    break;
                }
                // As fast as the window allows: with a window above one,
                // several messages reach the server in one read, as they do
                // from a busy room.
                if let Err(e) = self.members[0].ws.write(Message::text(text)) {
                    panic!("sender: {e}");
                }
                sent += 1;
            }
            // A flush that would block leaves bytes in tungstenite's
            // buffer; it is retried on every pass until they are out.
            match self.members[0].ws.flush() {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("sender flush: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "broadcast did not finish in time"
            );
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(5)))
                .expect("poll");
            self.pending
                .extend(self.events.iter().map(|event| event.token().0));
        }
        let tally = Tally::take();
        (tally, started.map(|at| at.elapsed()).unwrap_or_default())
    }
}

/// One room of `members` connections on a fresh server, joined once and
/// then put through each phase in turn.
fn broadcast(members: usize, phases: Vec<Phase>) -> Vec<BroadcastRow> {
    with_server(members, move |http, ws_addr| {
        setup_user_and_room(http, members.max(1));
        let mut room = Room::join(ws_addr, members);
        let text = packet("msg", "hello everyone, the meeting moved to 3pm");
        phases
            .into_iter()
            .map(|phase| {
                let (tally, elapsed) = room.run(phase, &text);
                BroadcastRow {
                    members,
                    window: phase.window,
                    messages: phase.messages,
                    tally,
                    elapsed,
                }
            })
            .collect()
    })
}

/// What a browser sends for the room list on a kept-alive connection.
const LIST_REQUEST: &[u8] = b"GET /chatroom/list HTTP/1.1\r\n\
Host: chat.example.com:5000\r\n\
Connection: keep-alive\r\n\
Accept: application/json, text/plain, */*\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Origin: https://chat.example.com\r\n\
Sec-Fetch-Site: same-site\r\n\
Sec-Fetch-Mode: cors\r\n\
Sec-Fetch-Dest: empty\r\n\
Referer: https://chat.example.com/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: zh-CN,zh;q=0.9,en;q=0.8\r\n\
\r\n";

/// Reads one response with a Content-Length body off a kept-alive stream.
fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..head_end]).expect("head");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("Content-Length");
            let end = head_end + 4 + length;
            if buffer.len() >= end {
                assert!(buffer.starts_with(b"HTTP/1.1 200 "), "not a 200");
                buffer.drain(..end);
                return;
            }
        }
        let n = stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "server closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

struct HttpRow {
    requests: usize,
    rooms: usize,
    tally: Tally,
    elapsed: Duration,
}

fn http_keepalive(rooms: usize, warmup: usize, requests: usize) -> HttpRow {
    with_server(16, move |http, _| {
        for index in 0..rooms {
            let body = http_once(
                http,
                "POST",
                &format!("/chatroom/create?room_name=room-{index}"),
            );
            expect_res(&body, "chatroom create successfully");
        }
        let mut stream = TcpStream::connect(http).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut buffer = Vec::new();
        for _ in 0..warmup {
            stream.write_all(LIST_REQUEST).expect("send");
            read_response(&mut stream, &mut buffer);
        }
        let _ = Tally::take();
        let started = Instant::now();
        for _ in 0..requests {
            stream.write_all(LIST_REQUEST).expect("send");
            read_response(&mut stream, &mut buffer);
        }
        let tally = Tally::take();
        HttpRow {
            requests,
            rooms,
            tally,
            elapsed: started.elapsed(),
        }
    })
}

// ---------------------------------------------------------------------------
// The table and the verdict
// ---------------------------------------------------------------------------

/// Most allocation events per delivery allowed at the largest room. A
/// message costs a fixed number of allocations (decode, parse, one frame);
/// spread over 1000 recipients that is far below this, while a single
/// allocation per recipient would be 1.0.
const MAX_EVENTS_PER_DELIVERY: f64 = 0.05;

/// How much the allocations per message may grow from the smallest room to
/// the largest before the growth counts as per-recipient work: a little
/// slack for allocations that happen once per reactor turn, whose number per
/// message depends on how the messages were batched.
const MAX_GROWTH_PER_MESSAGE: f64 = 2.0;

const WINDOWS: [usize; 2] = [1, 32];
const ROOM_SIZES: [usize; 3] = [10, 100, 1000];

/// `--members 10,2000` replaces the room sizes; the thresholds then apply
/// to the first and the last.
fn room_sizes(args: &[String]) -> Vec<usize> {
    let Some(list) = args
        .iter()
        .position(|arg| arg == "--members")
        .and_then(|at| args.get(at + 1))
    else {
        return ROOM_SIZES.to_vec();
    };
    let sizes: Vec<usize> = list
        .split(',')
        .map(|size| match size.trim().parse() {
            Ok(size) if (1..=10_000).contains(&size) => size,
            _ => panic!("--members takes room sizes from 1 to 10000, e.g. 10,2000"),
        })
        .collect();
    assert!(!sizes.is_empty(), "--members needs at least one size");
    sizes
}

/// The phases for one room size. Window 1 is lockstep: each message reaches
/// everyone before the next is sent, so every reactor turn carries one frame
/// per recipient. Window 32 lets bursts of messages reach the server in one
/// read, as in a busy room, so a recipient is owed many frames in one turn.
fn phases_for(members: usize, scale: usize) -> Vec<Phase> {
    WINDOWS
        .iter()
        .map(|&window| {
            // Lockstep is bound by round trips, not by the server, and its
            // count is the same for every message: it needs fewer.
            let budget = if window == 1 { 100_000 } else { 2_000_000 } / scale;
            let messages = (budget / members).clamp(50, 10_000 / scale);
            Phase {
                window,
                warmup: (messages / 5).max(50),
                messages,
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let sizes_wanted = args.iter().any(|arg| arg == "--sizes");
    let scale = if quick { 5 } else { 1 };
    let began = Instant::now();
    let room_sizes = room_sizes(&args);

    let mut rows: Vec<BroadcastRow> = room_sizes
        .iter()
        .flat_map(|&members| broadcast(members, phases_for(members, scale)))
        .collect();
    rows.sort_by_key(|row| (row.window, row.members));
    let http = http_keepalive(20, 500, 5_000 / scale);

    println!("allocations on the reactor thread (events = allocations + reallocations)");
    println!();
    println!(
        "| scenario | window | measured | allocs/msg | reallocs/msg | bytes/msg | events/delivery | bytes/delivery | deliveries/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let smallest = room_sizes[0];
    let largest = room_sizes[room_sizes.len() - 1];
    for row in &rows {
        let msgs = row.messages as f64;
        let deliveries = msgs * row.members as f64;
        let per_delivery = row.tally.events() as f64 / deliveries;
        println!(
            "| broadcast, {} members | {} | {} msgs | {:.2} | {:.2} | {:.0} | {:.4} | {:.2} | {:.0} |",
            row.members,
            row.window,
            row.messages,
            row.tally.allocs as f64 / msgs,
            row.tally.reallocs as f64 / msgs,
            row.tally.bytes as f64 / msgs,
            per_delivery,
            row.tally.bytes as f64 / deliveries,
            deliveries / row.elapsed.as_secs_f64().max(1e-9),
        );
        if sizes_wanted {
            println!("{}", row.tally.size_summary(msgs));
        }
        if row.members == largest && per_delivery > MAX_EVENTS_PER_DELIVERY {
            failures.push(format!(
                "{} members, window {}: {per_delivery:.4} allocation events per delivery > {MAX_EVENTS_PER_DELIVERY}",
                row.members, row.window
            ));
        }
    }
    for window in WINDOWS {
        let per_message = |members: usize| {
            rows.iter()
                .find(|row| row.window == window && row.members == members)
                .map(|row| row.tally.events() as f64 / row.messages as f64)
        };
        if let (Some(small), Some(large)) = (per_message(smallest), per_message(largest)) {
            if large > small + MAX_GROWTH_PER_MESSAGE {
                failures.push(format!(
                    "window {window}: allocation events per message grow with the room: \
                     {small:.2} at {smallest} members, {large:.2} at {largest}"
                ));
            }
        }
    }

    let requests = http.requests as f64;
    println!(
        "| HTTP keep-alive GET /chatroom/list ({} rooms) | 1 | {} requests | {:.2} | {:.2} | {:.0} | – | – | {:.0} req/s |",
        http.rooms,
        http.requests,
        http.tally.allocs as f64 / requests,
        http.tally.reallocs as f64 / requests,
        http.tally.bytes as f64 / requests,
        requests / http.elapsed.as_secs_f64().max(1e-9),
    );
    if sizes_wanted {
        println!("{}", http.tally.size_summary(requests));
    }
    println!();
    println!("(the HTTP row's per-message columns are per request)");
    println!(
        "thresholds: events per delivery at {largest} members <= {MAX_EVENTS_PER_DELIVERY}; \
         events per message may grow by at most {MAX_GROWTH_PER_MESSAGE} from {smallest} to {largest} members"
    );
    println!("took {:.1} s", began.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            println!("FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}

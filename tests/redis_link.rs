//! The Redis link against a real `redis-server`, driven the way the
//! reactor will drive it, only over plain blocking `TcpStream`s: write what
//! `poll_transmit` holds, read into `handle_input`, open a socket on
//! `Connect`, close it on `Down`, honour `poll_timeout`.
//!
//! Each test starts its own `redis-server` on a free loopback port with no
//! persistence and a temporary directory, and kills it at the end. Without
//! `redis-server` installed the tests say so on stderr and pass, unless
//! `CI=true`, where a missing server is a failure (CI installs it).
//!
//! No sleeps and no timing thresholds: every wait is for an event, with
//! socket read timeouts and an overall deadline only as safety nets. When
//! the link waits out a backoff with no socket open, the driver moves the
//! link's clock forward instead of sleeping: the link is sans-IO, so its
//! time is whatever the driver says.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chatroom::redis::{
    Command, DownReason, Link, LinkConfig, LinkEvent, Reply, RespError, RespLimits, Role, Tag,
};
use tempfile::TempDir;

/// How long any single wait may take before the test gives up: a safety
/// net against a hang, far above anything the tests need.
const SAFETY: Duration = Duration::from_secs(60);

/// Whether redis-server can be run (the rule is `common::redis`'s: a
/// failure under CI, a loud SKIPPED line elsewhere).
fn redis_server_installed(test: &str) -> bool {
    common::redis::redis_server_installed(&format!("tests/redis_link.rs {test}"))
}

/// A redis-server child process, killed (SIGKILL) when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts redis-server on `port` with `dir` as its working directory
    /// and returns once it logs that it accepts connections.
    fn start(port: u16, dir: &Path) -> RedisServer {
        let mut child = Process::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log to its end, so that a full pipe never stalls the
        // server, and reports the line that says it is ready.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut server = RedisServer { child, port };
        if ready_rx.recv_timeout(SAFETY).is_err() {
            server.kill();
            panic!("redis-server on port {port} never said it was ready");
        }
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// kill -9, and reap it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Test settings: reply and connect timeouts far beyond anything loopback
/// needs (they are not what these tests measure), no idle pings, fast
/// backoff so reconnect tests do not wait for the defaults.
fn config(role: Role) -> LinkConfig {
    LinkConfig {
        reply_timeout: SAFETY,
        connect_timeout: SAFETY,
        ping_after: None,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_secs(1),
        jitter_seed: 0x5eed,
        max_outstanding: 10_000,
        client_name: Some(format!("chatroom-test-{role:?}").to_lowercase()),
        ..LinkConfig::new(role)
    }
}

/// The blocking driver: one link, at most one socket.
struct Driver {
    addr: SocketAddr,
    link: Link,
    stream: Option<TcpStream>,
    /// The link's clock runs this far ahead of the real one: the backoff
    /// waits skipped while no socket was open.
    skipped: Duration,
    /// Everything the link said, for the test to read.
    events: VecDeque<LinkEvent>,
    next_tag: Tag,
}

impl Driver {
    fn new(addr: SocketAddr, config: LinkConfig) -> Driver {
        Driver {
            addr,
            link: Link::new(config, Instant::now()),
            stream: None,
            skipped: Duration::ZERO,
            events: VecDeque::new(),
            next_tag: 1_000_000,
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + self.skipped
    }

    /// Acts on what the link asks of the driver and keeps every event.
    fn take_link_events(&mut self) {
        while let Some(event) = self.link.poll_event() {
            match &event {
                LinkEvent::Connect => {
                    self.stream = None;
                    match TcpStream::connect_timeout(&self.addr, SAFETY) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            self.stream = Some(stream);
                            self.link.handle_connected(self.now());
                        }
                        Err(error) => self
                            .link
                            .handle_disconnected(self.now(), DownReason::Io(error.kind())),
                    }
                }
                LinkEvent::Down { .. } => self.stream = None,
                _ => {}
            }
            self.events.push_back(event);
        }
    }

    /// One turn of the loop: write, read, timers.
    fn turn(&mut self) {
        self.take_link_events();
        if let Some(stream) = self.stream.as_mut() {
            if let Some(bytes) = self.link.poll_transmit() {
                // Blocking: Redis keeps reading while its replies to us
                // queue up, so a full socket buffer only ever waits on it.
                let _ = stream.set_nonblocking(false);
                match stream.write(bytes) {
                    Ok(written) => self.link.advance_transmit(written),
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => {
                        let now = self.now();
                        self.link
                            .handle_disconnected(now, DownReason::Io(error.kind()));
                    }
                }
            }
        }
        if let Some(stream) = self.stream.as_mut() {
            // With more to write, only take what has already arrived; with
            // nothing to write, wait for bytes until the link's next
            // deadline (bounded by the safety net).
            let more_to_write = self.link.poll_transmit().is_some();
            let wait = self
                .link
                .poll_timeout()
                .map_or(SAFETY, |deadline| {
                    deadline.saturating_duration_since(Instant::now() + self.skipped)
                })
                .clamp(Duration::from_millis(1), SAFETY);
            let _ = stream.set_nonblocking(more_to_write);
            let _ = stream.set_read_timeout(Some(wait));
            let mut buffer = [0u8; 64 * 1024];
            let result = stream.read(&mut buffer);
            let now = Instant::now() + self.skipped;
            match result {
                Ok(0) => self.link.handle_disconnected(now, DownReason::PeerClosed),
                Ok(read) => self.link.handle_input(&buffer[..read], now),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) => self
                    .link
                    .handle_disconnected(now, DownReason::Io(error.kind())),
            }
        } else if let Some(deadline) = self.link.poll_timeout() {
            // No socket: the link is waiting out its backoff. Jump its clock
            // to the deadline instead of sleeping.
            self.skipped += deadline.saturating_duration_since(self.now());
        }
        if self
            .link
            .poll_timeout()
            .is_some_and(|deadline| deadline <= self.now())
        {
            let now = self.now();
            self.link.handle_timeout(now);
        }
        self.take_link_events();
    }

    /// Writes everything queued, without reading (a turn would wait for a
    /// reply).
    fn flush(&mut self) {
        while let (Some(stream), Some(bytes)) = (self.stream.as_mut(), self.link.poll_transmit()) {
            let _ = stream.set_nonblocking(false);
            let written = stream.write(bytes).expect("write to redis-server");
            self.link.advance_transmit(written);
        }
    }

    /// Runs until an event matching `wanted` arrives; returns every event
    /// up to and including it.
    fn run_until(&mut self, what: &str, wanted: impl Fn(&LinkEvent) -> bool) -> Vec<LinkEvent> {
        let give_up = Instant::now() + SAFETY;
        let mut seen = Vec::new();
        loop {
            while let Some(event) = self.events.pop_front() {
                let done = wanted(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            assert!(
                Instant::now() < give_up,
                "no {what} within the safety net; saw {seen:?}"
            );
            self.turn();
        }
    }

    fn send(&mut self, command: &Command, tag: Tag) {
        let now = self.now();
        self.link
            .send(command, tag, now)
            .unwrap_or_else(|error| panic!("send {tag}: {error:?}"));
    }

    /// Sends one command and waits for its reply.
    fn request(&mut self, command: Command) -> Reply {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&command, tag);
        let seen = self.run_until("a reply", |event| {
            matches!(event, LinkEvent::Reply { tag: got, .. } | LinkEvent::Failed { tag: got } if *got == tag)
        });
        match seen.last() {
            Some(LinkEvent::Reply { reply, .. }) => reply.clone(),
            other => panic!("{command:?} failed: {other:?}"),
        }
    }

    fn wait_up(&mut self) {
        self.run_until("Up", |event| event == &LinkEvent::Up);
    }
}

fn is_down(event: &LinkEvent) -> bool {
    matches!(event, LinkEvent::Down { .. })
}

#[test]
fn ten_thousand_pipelined_commands_get_their_replies_in_order() {
    if !redis_server_installed("ten_thousand_pipelined_commands_get_their_replies_in_order") {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let server = RedisServer::start(free_port(), dir.path());
    let mut driver = Driver::new(server.addr(), config(Role::Commands));
    driver.wait_up();

    const COMMANDS: u64 = 10_000;
    let started = Instant::now();
    // All of them outstanding at once: sent before a single reply is read.
    for tag in 0..COMMANDS {
        let command = match tag % 3 {
            0 => Command::new("SET")
                .arg(format!("key:{tag}"))
                .arg(format!("value-{tag}")),
            1 => Command::new("GET").arg(format!("key:{}", tag - 1)),
            _ => Command::new("INCR").arg("counter"),
        };
        driver.send(&command, tag);
    }
    assert_eq!(driver.link.outstanding(), COMMANDS as usize);
    let sent_bytes = driver.link.unsent_bytes();
    let mut replies = Vec::new();
    while replies.len() < COMMANDS as usize {
        for event in driver.run_until("a reply", |event| matches!(event, LinkEvent::Reply { .. })) {
            match event {
                LinkEvent::Reply { tag, reply } => replies.push((tag, reply)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    for (expected_tag, (tag, reply)) in (0..).zip(&replies) {
        assert_eq!(*tag, expected_tag, "replies out of order");
        let expected = match tag % 3 {
            0 => Reply::Simple("OK".into()),
            1 => Reply::Bulk(Some(format!("value-{}", tag - 1).into_bytes())),
            _ => Reply::Integer((*tag / 3 + 1) as i64),
        };
        assert_eq!(reply, &expected, "reply to command {tag}");
    }
    assert_eq!(driver.link.outstanding(), 0);
    eprintln!(
        "redis_link: {COMMANDS} pipelined commands ({sent_bytes} bytes) answered in {elapsed:?} \
         ({:.0} commands/s, {} build)",
        COMMANDS as f64 / elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

/// The subscriber link runs on its own thread, its events sent back here.
struct Subscriber {
    events: mpsc::Receiver<LinkEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(addr: SocketAddr, config: LinkConfig, channels: &[&str]) -> Subscriber {
        let mut driver = Driver::new(addr, config);
        for channel in channels {
            let now = driver.now();
            driver
                .link
                .subscribe(channel.as_bytes(), now)
                .expect("subscribe");
        }
        let (events_tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                driver.turn();
                while let Some(event) = driver.events.pop_front() {
                    if events_tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Subscriber {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// Events until one matches `wanted`, that one included.
    fn until(&self, what: &str, wanted: impl Fn(&LinkEvent) -> bool) -> Vec<LinkEvent> {
        let mut seen = Vec::new();
        loop {
            match self.events.recv_timeout(SAFETY) {
                Ok(event) => {
                    let done = wanted(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("subscriber: no {what} within the safety net; saw {seen:?}"),
            }
        }
    }

    fn until_subscribed(&self, channels: &[&str]) -> Vec<LinkEvent> {
        let mut seen = Vec::new();
        for channel in channels {
            seen.extend(self.until("Subscribed", |event| {
                matches!(event, LinkEvent::Subscribed { channel: got } if got == channel.as_bytes())
            }));
        }
        seen
    }

    fn next_message(&self) -> (String, Vec<u8>) {
        let seen = self.until("a message", |event| {
            matches!(event, LinkEvent::Message { .. })
        });
        assert_eq!(seen.len(), 1, "something before the message: {seen:?}");
        match seen.into_iter().next() {
            Some(LinkEvent::Message { channel, payload }) => {
                (String::from_utf8(channel).expect("UTF-8 channel"), payload)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Stops the thread. `wake` must make its blocked read return (the
    /// test kills the subscriber's connection).
    fn stop(mut self, wake: impl FnOnce()) {
        self.stop.store(true, Ordering::SeqCst);
        wake();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("subscriber thread");
        }
    }
}

fn publish(driver: &mut Driver, channel: &str, payload: &[u8]) -> i64 {
    let reply = driver.request(Command::new("PUBLISH").arg(channel).arg(payload));
    reply.as_integer().expect("PUBLISH answers a count")
}

fn kill_subscribers(driver: &mut Driver) -> i64 {
    let reply = driver.request(Command::new("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    reply.as_integer().expect("CLIENT KILL answers a count")
}

#[test]
fn the_subscriber_receives_messages_and_resubscribes_after_being_killed() {
    if !redis_server_installed(
        "the_subscriber_receives_messages_and_resubscribes_after_being_killed",
    ) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let server = RedisServer::start(free_port(), dir.path());
    let mut commands = Driver::new(server.addr(), config(Role::Commands));
    commands.wait_up();

    const MAX_MESSAGE: usize = 64 * 1024;
    let subscriber = Subscriber::start(
        server.addr(),
        LinkConfig {
            limits: RespLimits {
                max_bulk_bytes: MAX_MESSAGE,
                ..RespLimits::default()
            },
            ..config(Role::Subscriber)
        },
        &["room:a", "room:b"],
    );
    let first = subscriber.until_subscribed(&["room:a", "room:b"]);
    assert_eq!(first[..2], [LinkEvent::Connect, LinkEvent::Up], "{first:?}");

    assert_eq!(publish(&mut commands, "room:a", b"hello"), 1);
    assert_eq!(
        subscriber.next_message(),
        ("room:a".into(), b"hello".to_vec())
    );
    assert_eq!(publish(&mut commands, "room:elsewhere", b"nobody"), 0);
    // Many, binary, in order.
    for n in 0..500u32 {
        let channel = if n % 2 == 0 { "room:a" } else { "room:b" };
        let payload = [&n.to_be_bytes()[..], b"\r\n\0 message"].concat();
        assert_eq!(publish(&mut commands, channel, &payload), 1);
    }
    for n in 0..500u32 {
        let channel = if n % 2 == 0 { "room:a" } else { "room:b" };
        let payload = [&n.to_be_bytes()[..], b"\r\n\0 message"].concat();
        assert_eq!(subscriber.next_message(), (channel.into(), payload));
    }

    // Killed by the server: down, back after the backoff, resubscribed.
    assert_eq!(kill_subscribers(&mut commands), 1);
    let seen = subscriber.until("Down", is_down);
    assert!(
        matches!(
            seen.as_slice(),
            [LinkEvent::Down {
                reason: DownReason::PeerClosed | DownReason::Io(_),
                ..
            }]
        ),
        "{seen:?}"
    );
    let back = subscriber.until_subscribed(&["room:a", "room:b"]);
    assert_eq!(back[..2], [LinkEvent::Connect, LinkEvent::Up], "{back:?}");
    assert_eq!(publish(&mut commands, "room:b", b"after the kill"), 1);
    assert_eq!(
        subscriber.next_message(),
        ("room:b".into(), b"after the kill".to_vec())
    );

    // A message over the subscriber's bound is refused before it is
    // trusted: the connection is reset and comes back.
    let at_limit = vec![b'x'; MAX_MESSAGE];
    assert_eq!(publish(&mut commands, "room:a", &at_limit), 1);
    assert_eq!(subscriber.next_message(), ("room:a".into(), at_limit));
    assert_eq!(
        publish(&mut commands, "room:a", &vec![b'y'; MAX_MESSAGE + 1]),
        1
    );
    let seen = subscriber.until("Down", is_down);
    assert!(
        matches!(
            seen.as_slice(),
            [LinkEvent::Down {
                reason: DownReason::Protocol(RespError::BulkTooLarge),
                ..
            }]
        ),
        "{seen:?}"
    );
    subscriber.until_subscribed(&["room:a", "room:b"]);
    assert_eq!(publish(&mut commands, "room:a", b"small again"), 1);
    assert_eq!(
        subscriber.next_message(),
        ("room:a".into(), b"small again".to_vec())
    );

    subscriber.stop(|| {
        kill_subscribers(&mut commands);
    });
}

#[test]
fn a_killed_server_fails_outstanding_commands_and_the_link_comes_back_with_it() {
    if !redis_server_installed(
        "a_killed_server_fails_outstanding_commands_and_the_link_comes_back_with_it",
    ) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let port = free_port();
    let mut server = RedisServer::start(port, dir.path());
    let mut driver = Driver::new(server.addr(), config(Role::Commands));
    driver.wait_up();
    assert!(driver
        .request(Command::new("SET").arg("k").arg("v"))
        .is_ok());

    // BLPOP on an empty list blocks for ever, so it and everything behind
    // it are certainly outstanding when the server dies.
    driver.send(&Command::new("BLPOP").arg("empty").arg("0"), 100);
    driver.send(&Command::new("GET").arg("k"), 101);
    driver.send(&Command::new("INCR").arg("n"), 102);
    driver.flush();
    server.kill();

    let seen = driver.run_until("Down", is_down);
    assert!(
        matches!(
            seen.last(),
            Some(LinkEvent::Down {
                reason: DownReason::PeerClosed | DownReason::Io(_),
                ..
            })
        ),
        "{seen:?}"
    );
    let failed = driver.run_until("the last Failed", |event| {
        event == &LinkEvent::Failed { tag: 102 }
    });
    assert_eq!(
        failed,
        vec![
            LinkEvent::Failed { tag: 100 },
            LinkEvent::Failed { tag: 101 },
            LinkEvent::Failed { tag: 102 },
        ]
    );
    assert_eq!(driver.link.outstanding(), 0);
    assert!(!driver.link.is_up());

    // Nobody listens now: each attempt is refused and the waits grow.
    let mut waits = Vec::new();
    for _ in 0..6 {
        let seen = driver.run_until("Down", is_down);
        assert_eq!(seen.first(), Some(&LinkEvent::Connect), "{seen:?}");
        match seen.last() {
            Some(LinkEvent::Down {
                reason: DownReason::Io(ErrorKind::ConnectionRefused),
                retry_in,
            }) => waits.push(*retry_in),
            other => panic!("{other:?}"),
        }
    }
    eprintln!("redis_link: backoff after a refused connect, attempt by attempt: {waits:?}");
    assert!(waits.windows(2).all(|pair| pair[0] <= pair[1]), "{waits:?}");
    assert!(waits[5] > waits[0] * 4, "{waits:?}");
    assert_eq!(driver.link.consecutive_failures(), 7);

    // The server comes back (empty: it keeps nothing), and so does the link.
    let _server = RedisServer::start(port, dir.path());
    let seen = driver.run_until("Up", |event| event == &LinkEvent::Up);
    assert!(!seen
        .iter()
        .any(|event| matches!(event, LinkEvent::Failed { .. })));
    assert_eq!(driver.link.consecutive_failures(), 0);
    assert_eq!(
        driver.request(Command::new("GET").arg("k")),
        Reply::Bulk(None)
    );
    assert!(driver
        .request(Command::new("SET").arg("k").arg("again"))
        .is_ok());
    assert_eq!(
        driver.request(Command::new("GET").arg("k")),
        Reply::Bulk(Some(b"again".to_vec()))
    );
}

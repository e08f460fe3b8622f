//! Faults around the process: `kill -9` at several moments (SPEC §6: no
//! acknowledged record is lost, a torn tail is cut, never a refusal), a disk
//! that stops accepting writes and comes back (503 `storage unavailable`,
//! nothing half-written), and SIGTERM/SIGINT with clients connected
//! (SPEC §7: WebSockets closed with 1001, replies owed are sent, exit 0, the
//! data directory released).
//!
//! Every test runs the real binary as a child process; `ChildServer` kills
//! it on every path.

mod common;
mod fault_support;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, RawConn};
use fault_support::*;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// 1. kill -9 durability
// ---------------------------------------------------------------------------

/// Records the server acknowledged: users as (tel, name, password).
#[derive(Default)]
struct Acked {
    users: Vec<(String, String, String)>,
    rooms: Vec<String>,
    /// Answers that were neither a success nor a transport failure.
    unexpected: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// SIGKILL once this many records were acknowledged (across threads).
    AfterAcks(usize),
    /// SIGKILL as soon as every client thread has a request under way.
    InFlight,
}

/// Checks, on a freshly restarted server, that every acknowledged record is
/// there exactly once.
fn verify_recovered(server: &ChildServer, dir: &Path, acked: &Acked, round: usize) {
    for (tel, name, password) in &acked.users {
        let answer = login(server.http, tel, password);
        assert!(
            answer.is(200, "login successfully"),
            "round {round}: acknowledged user {tel} cannot log in: {answer:?}"
        );
        assert_eq!(answer.json()["data"]["user_name"], name.as_str());
        let again = register(server.http, tel, name, password);
        assert!(
            again.is(200, "user exist"),
            "round {round}: acknowledged user {tel} registered twice: {again:?}"
        );
    }
    let listed = room_names(server.http);
    let distinct: HashSet<&String> = listed.iter().collect();
    assert_eq!(
        distinct.len(),
        listed.len(),
        "round {round}: a room is listed twice: {listed:?}"
    );
    for room in &acked.rooms {
        assert!(
            distinct.contains(room),
            "round {round}: acknowledged room {room:?} is missing after restart"
        );
    }

    let users = records(&dir.join("users.jsonl"));
    assert_unique(&users, "tel", "user tel");
    assert_unique(&users, "name", "user name");
    let rooms = records(&dir.join("rooms.jsonl"));
    assert_unique(&rooms, "name", "room");
    assert_eq!(rooms.len(), listed.len(), "rooms on disk vs listed");
    assert_eq!(metric(server.http, "chatroom_users") as usize, users.len());
    assert_eq!(metric(server.http, "chatroom_rooms") as usize, rooms.len());
}

/// Fires registers and room creations from several threads until told to
/// stop or until the server is gone, recording every acknowledgement.
fn load(
    addr: std::net::SocketAddr,
    round: usize,
    threads: usize,
    acked: &Arc<Mutex<Acked>>,
    ack_count: &Arc<AtomicUsize>,
    started: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|thread| {
            let acked = Arc::clone(acked);
            let ack_count = Arc::clone(ack_count);
            let started = Arc::clone(started);
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    started.fetch_add(1, Ordering::SeqCst);
                    if i % 3 == 2 {
                        let name = format!("room r{round} t{thread} #{i}");
                        match try_create_room(addr, &name) {
                            Ok(a) if a.is(200, "chatroom create successfully") => {
                                acked.lock().unwrap().rooms.push(name);
                                ack_count.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(a) => acked.lock().unwrap().unexpected.push(format!("{a:?}")),
                            Err(_) => return,
                        }
                    } else {
                        let tel = format!("1{round:02}{thread:02}{i:05}");
                        let name = format!("u{round}-{thread}-{i}");
                        let password = format!("pw-{tel}");
                        match try_register(addr, &tel, &name, &password) {
                            Ok(a) if a.is(200, "register successfully") => {
                                acked.lock().unwrap().users.push((tel, name, password));
                                ack_count.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(a) => acked.lock().unwrap().unexpected.push(format!("{a:?}")),
                            Err(_) => return,
                        }
                    }
                }
            })
        })
        .collect()
}

#[test]
fn acknowledged_records_survive_kill_9_at_several_moments() {
    let dir = TempDir::new().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let plan = [
        KillPoint::AfterAcks(1),
        KillPoint::AfterAcks(10),
        KillPoint::InFlight,
        KillPoint::AfterAcks(50),
        KillPoint::AfterAcks(5),
    ];
    let mut inject_torn_tail = false;
    for (round, kill_point) in plan.into_iter().enumerate() {
        // Each start recovers from the previous kill (recovery on top of
        // recovery); it must never refuse.
        let mut server = ChildServer::start(dir.path(), &[]);
        if inject_torn_tail {
            for file in ["users.jsonl", "rooms.jsonl"] {
                let cut = server.log_lines().iter().any(|l| {
                    l.contains(file) && l.contains("cut a torn last line") && l.contains("WARN")
                });
                assert!(
                    cut,
                    "round {round}: no warning about the torn {file} tail; log:\n{}",
                    server.log_text()
                );
            }
            inject_torn_tail = false;
        }
        verify_recovered(&server, dir.path(), &acked.lock().unwrap(), round);

        let ack_count = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = 4;
        let workers = load(
            server.http,
            round,
            threads,
            &acked,
            &ack_count,
            &started,
            &stop,
        );
        match kill_point {
            KillPoint::AfterAcks(n) => {
                wait_until(&format!("{n} acknowledgements"), || {
                    ack_count.load(Ordering::SeqCst) >= n
                });
            }
            KillPoint::InFlight => {
                wait_until("every client thread has a request under way", || {
                    started.load(Ordering::SeqCst) >= threads
                });
            }
        }
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.join().expect("client thread");
        }
        let unexpected = acked.lock().unwrap().unexpected.clone();
        assert!(
            unexpected.is_empty(),
            "round {round}: unexpected answers: {unexpected:?}"
        );

        if round == 1 {
            // A write cut short by the crash: a last line without its
            // newline. The next start must cut it and carry on.
            let mut users = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("users.jsonl"))
                .unwrap();
            users
                .write_all(br#"{"tel":"19999","name":"half a rec"#)
                .unwrap();
            let mut rooms = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("rooms.jsonl"))
                .unwrap();
            rooms.write_all(br#"{"name":"half a room","capa"#).unwrap();
            inject_torn_tail = true;
        }
    }
    let server = ChildServer::start(dir.path(), &[]);
    let acked = acked.lock().unwrap();
    assert!(
        acked.users.len() >= 20 && !acked.rooms.is_empty(),
        "too few acknowledgements to mean anything: {} users, {} rooms",
        acked.users.len(),
        acked.rooms.len()
    );
    verify_recovered(&server, dir.path(), &acked, plan.len());
}

// ---------------------------------------------------------------------------
// 2. Storage failure and recovery
// ---------------------------------------------------------------------------

/// The unit of `ulimit -f` in `sh` on this machine, found by experiment:
/// a limit of one block lets a file grow to exactly one block.
fn ulimit_block_bytes() -> u64 {
    let dir = TempDir::new().unwrap();
    let probe = dir.path().join("probe");
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -S -f 1; head -c 8192 /dev/zero > "$0" 2>/dev/null"#)
        .arg(&probe)
        .status()
        .expect("run sh");
    // head fails (EFBIG) once the limit is reached; that is the point.
    let _ = status;
    let len = std::fs::metadata(&probe).expect("probe file").len();
    assert!(
        len == 512 || len == 1024,
        "`ulimit -f 1` allowed {len} bytes; expected a 512- or 1024-byte block"
    );
    len
}

fn prlimit_available() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_write_failure_answers_503_and_the_store_recovers_when_space_returns() {
    assert!(
        prlimit_available(),
        "prlimit(1) is needed (apt-get install -y util-linux)"
    );
    let block = ulimit_block_bytes();
    // Room for a couple of dozen user records (about 170 bytes each).
    let limit_bytes = 4096;
    let blocks = limit_bytes / block;
    let dir = TempDir::new().unwrap();
    // SIGXFSZ ignored: a write past the limit fails with EFBIG instead of
    // killing the process. Only the soft limit is set, so raising it later
    // needs no privilege.
    let mut server = ChildServer::start_wrapped(
        &format!("trap \"\" XFSZ; ulimit -S -f {blocks}"),
        dir.path(),
        &[],
    );
    let addr = server.http;

    let mut acked: Vec<(String, String)> = Vec::new();
    let failed_tel = loop {
        let i = acked.len();
        assert!(i < 500, "the file limit never caused a failure");
        let tel = format!("5550{i:04}");
        let answer = register(addr, &tel, &format!("filler{i}"), "password1");
        if answer.is(200, "register successfully") {
            acked.push((tel, format!("filler{i}")));
            continue;
        }
        assert!(
            answer.is(503, "storage unavailable"),
            "a failed write must answer 503 storage unavailable, got {answer:?}"
        );
        assert_eq!(answer.body, r#"{"res":"storage unavailable"}"#);
        break tel;
    };
    assert!(
        acked.len() >= 3,
        "only {} registrations fitted under the limit",
        acked.len()
    );
    let failed_name = format!("filler{}", acked.len());
    let users_path = dir.path().join("users.jsonl");
    let on_disk = records(&users_path);
    assert_eq!(
        on_disk.len(),
        acked.len(),
        "the failed write was not cut back cleanly"
    );

    // Everything else keeps working while the disk is full.
    assert!(healthz_ok(addr));
    assert_eq!(room_names(addr), Vec::<String>::new());
    let first = login(addr, &acked[0].0, "password1");
    assert!(first.is(200, "login successfully"), "{first:?}");
    // The other journal still has room: the writer is not wedged.
    let created = create_room(addr, "still writable");
    assert!(
        created.is(200, "chatroom create successfully"),
        "{created:?}"
    );
    // The failed phone number is free to be tried again (and fails again,
    // for the same reason: it is not "user exist").
    let retry = register(addr, &failed_tel, &failed_name, "password1");
    assert!(retry.is(503, "storage unavailable"), "{retry:?}");
    // A second user that fails and is never retried.
    let lost = register(addr, "5559999", "never stored", "password1");
    assert!(lost.is(503, "storage unavailable"), "{lost:?}");
    let lost_login = login(addr, "5559999", "password1");
    assert!(lost_login.is(200, "user not exist"), "{lost_login:?}");
    assert_eq!(records(&users_path).len(), acked.len());

    // The rooms journal fills up too; a failed room is not listed and its
    // name is free again.
    let mut rooms = vec!["still writable".to_string()];
    let failed_room = loop {
        assert!(rooms.len() < 1000, "the file limit never failed a room");
        let name = format!("room {:04}", rooms.len());
        let answer = create_room(addr, &name);
        if answer.is(200, "chatroom create successfully") {
            rooms.push(name);
            continue;
        }
        assert!(answer.is(503, "storage unavailable"), "{answer:?}");
        break name;
    };
    assert_eq!(room_names(addr), rooms, "a failed room is listed");
    let retry = create_room(addr, &failed_room);
    assert!(retry.is(503, "storage unavailable"), "{retry:?}");
    let lost_room = create_room(addr, "lost room");
    assert!(lost_room.is(503, "storage unavailable"), "{lost_room:?}");
    assert_eq!(room_names(addr), rooms);
    assert_eq!(records(&dir.path().join("rooms.jsonl")).len(), rooms.len());
    assert!(metric(addr, "chatroom_storage_failures_total") >= 6.0);

    // Space comes back.
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(server.pid().to_string())
        .arg("--fsize=unlimited:unlimited")
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed: {status}");
    let again = register(addr, &failed_tel, &failed_name, "password1");
    assert!(again.is(200, "register successfully"), "{again:?}");
    acked.push((failed_tel.clone(), failed_name.clone()));
    let again = create_room(addr, &failed_room);
    assert!(again.is(200, "chatroom create successfully"), "{again:?}");
    rooms.push(failed_room);
    for i in 0..3 {
        let tel = format!("5551{i:04}");
        let name = format!("after{i}");
        let answer = register(addr, &tel, &name, "password1");
        assert!(answer.is(200, "register successfully"), "{answer:?}");
        acked.push((tel, name));
    }

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    drop(server);

    let restarted = ChildServer::start(dir.path(), &[]);
    let startup_warnings = restarted.warnings();
    assert!(
        startup_warnings.is_empty(),
        "start-up after recovery is not clean: {startup_warnings:?}"
    );
    for (tel, name) in &acked {
        let answer = login(restarted.http, tel, "password1");
        assert!(
            answer.is(200, "login successfully"),
            "acknowledged {tel} lost: {answer:?}"
        );
        assert_eq!(answer.json()["data"]["user_name"], name.as_str());
    }
    let lost_login = login(restarted.http, "5559999", "password1");
    assert!(
        lost_login.is(200, "user not exist"),
        "a user whose register failed was stored: {lost_login:?}"
    );
    let users = records(&users_path);
    assert_eq!(users.len(), acked.len(), "users on disk: {users:?}");
    assert_unique(&users, "tel", "user tel");
    assert_unique(&users, "name", "user name");
    assert_eq!(
        room_names(restarted.http),
        rooms,
        "rooms after restart: exactly the acknowledged ones, in order"
    );
}

// ---------------------------------------------------------------------------
// 6. SIGTERM / SIGINT with clients connected
// ---------------------------------------------------------------------------

fn graceful_stop_on(signal: &str) {
    let dir = TempDir::new().unwrap();
    // A hash slow enough that a register is still in progress when the
    // signal arrives, cheap enough to keep the test short.
    let cost = ["--argon2-memory-kib", "32768", "--argon2-iterations", "1"];
    let mut server = ChildServer::start(dir.path(), &cost);
    let addr = server.http;
    assert!(register(addr, "7000001", "alice", "password1").is(200, "register successfully"));
    assert!(create_room(addr, "hall").is(200, "chatroom create successfully"));

    // Two chat clients, one on each port.
    let mut chat_port = ws_connect(server.ws);
    join(&mut chat_port, "alice", "hall");
    let mut api_port = try_ws_connect_path(addr, "/ws").expect("WebSocket at /ws");
    join(&mut api_port, "alice", "hall");

    // An idle keep-alive HTTP connection.
    let mut idle = RawConn::connect(addr);
    let health = idle.roundtrip(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(health.status, 200);
    assert!(!health.says_close());

    // A register whose hash is running when the signal comes. Once another
    // connection's request sent later has been answered, the server has
    // read this one.
    let mut pending = RawConn::connect(addr);
    pending.send(&common::raw_form_post(
        "/auth/register",
        "user_tel=7000002&user_name=bob&user_password=password2",
        &[],
    ));
    let mut probe = RawConn::connect(addr);
    assert_eq!(
        probe
            .roundtrip(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .status,
        200
    );
    drop(probe);

    server.signal(signal);

    for (which, ws) in [("chat port", &mut chat_port), ("/ws", &mut api_port)] {
        match read_until_closed(ws) {
            Incoming::Closed(Some(code)) => {
                assert_eq!(code, 1001, "{which}: close code on shutdown")
            }
            other => panic!("{which}: expected a close frame with 1001, got {other:?}"),
        }
    }
    drop(chat_port);
    drop(api_port);
    idle.assert_closed();
    drop(idle);
    let answer = pending.read_response();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.res(), "register successfully");
    drop(pending);

    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status after SIG{signal}: {status}; log:\n{}",
        server.log_text()
    );
    drop(server);

    // The lock is released: a new server starts on the directory, and the
    // register answered during shutdown is on disk.
    let next = ChildServer::start(dir.path(), &cost);
    let bob = login(next.http, "7000002", "password2");
    assert!(bob.is(200, "login successfully"), "{bob:?}");
}

#[test]
fn sigterm_closes_clients_with_1001_answers_what_is_owed_and_exits_0() {
    graceful_stop_on("TERM");
}

#[test]
fn sigint_closes_clients_with_1001_answers_what_is_owed_and_exits_0() {
    graceful_stop_on("INT");
}

#[test]
fn sigterm_with_a_client_that_never_reads_still_exits_0() {
    let dir = TempDir::new().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]);
    assert!(register(server.http, "7100001", "carol", "password1").is(200, "register successfully"));
    assert!(create_room(server.http, "den").is(200, "chatroom create successfully"));
    let mut member = ws_connect(server.ws);
    join(&mut member, "carol", "den");

    // Pipelines requests and never reads the answers, until the server
    // stops taking its input (our writes then block).
    let mut stuck = std::net::TcpStream::connect(server.http).unwrap();
    stuck
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(4096);
    let deadline = std::time::Instant::now() + common::POLL_DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept reading from a client that never reads"
        );
        match stuck.write(&requests) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("the server dropped the pipelining client: {e}"),
        }
    }

    server.signal("TERM");
    match read_until_closed(&mut member) {
        Incoming::Closed(Some(code)) => assert_eq!(code, 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    drop(member);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log_text()
    );
    drop(stuck);
    drop(server);
    let next = ChildServer::start(dir.path(), &[]);
    assert!(login(next.http, "7100001", "password1").is(200, "login successfully"));
}

// ---------------------------------------------------------------------------
// Running out of file descriptors
// ---------------------------------------------------------------------------

#[test]
fn running_out_of_file_descriptors_is_survived() {
    let dir = TempDir::new().unwrap();
    // Room for a couple of dozen connections after the server's own files.
    let mut server = ChildServer::start_wrapped("ulimit -n 48", dir.path(), &[]);
    let addr = server.http;
    assert!(register(addr, "7200001", "dora", "password1").is(200, "register successfully"));

    let mut member = RawConn::connect(addr);
    assert_eq!(
        member
            .roundtrip(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );

    // Far more connections than descriptors: the kernel completes them all,
    // the server can accept only some.
    let flood: Vec<std::net::TcpStream> = (0..120)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    wait_until("the server reports running out of descriptors", || {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("accept failed"))
    });

    // The connection it already had is served, writes included.
    let listed = member.roundtrip(b"GET /chatroom/list HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(listed.status, 200);
    let created = member.roundtrip(&common::raw_form_post(
        "/chatroom/create",
        "room_name=fd%20room",
        &[],
    ));
    assert_eq!(created.res(), "chatroom create successfully");
    let login = member.roundtrip(&common::raw_form_post(
        "/auth/login",
        "user_tel=7200001&user_password=password1",
        &[],
    ));
    assert_eq!(login.res(), "login successfully");

    // Descriptors come back: new connections are accepted again.
    drop(flood);
    wait_until("a new connection is served", || {
        fresh_get_status(addr) == Some(200)
    });
    assert!(healthz_ok(addr));
    assert!(
        server.warnings().iter().all(|l| !l.contains("panicked")),
        "{}",
        server.log_text()
    );
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

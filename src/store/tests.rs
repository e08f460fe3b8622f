use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use super::writer::{Journal, JournalFile};
use super::*;

fn user(i: usize) -> UserRecord {
    UserRecord {
        tel: format!("1380000{i:04}"),
        name: format!("user{i}"),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt{i}$hash"),
        avatar_url: if i.is_multiple_of(2) {
            String::new()
        } else {
            format!("https://example.com/a/{i}.png")
        },
        created_ms: 1_700_000_000_000 + i as u64,
    }
}

fn room(i: usize) -> RoomRecord {
    RoomRecord {
        name: format!("room \"{i}\" ✓"),
        capacity: 10 + i as u32,
        created_ms: 1_700_000_000_000 + i as u64,
    }
}

fn line<T: Serialize>(record: &T) -> String {
    let mut s = serde_json::to_string(record).unwrap();
    s.push('\n');
    s
}

fn collector() -> (Box<dyn Fn(Completion) + Send>, Receiver<Completion>) {
    let (tx, rx) = mpsc::channel();
    let notify = Box::new(move |c: Completion| {
        // The test may have stopped listening; that is its business.
        let _ = tx.send(c);
    });
    (notify, rx)
}

fn reopen(path: &Path) -> Replayed {
    let (_dir, replayed) = DataDir::open(path).unwrap();
    replayed
}

fn malformed(err: StoreError) -> (PathBuf, usize, String) {
    match err {
        StoreError::Malformed { file, line, reason } => (file, line, reason),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn open_creates_missing_dir_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a/b/data");
    let (dir, replayed) = DataDir::open(&path).unwrap();
    assert_eq!(replayed, Replayed::default());
    assert_eq!(dir.path(), path);
    for name in [USERS_FILE, ROOMS_FILE] {
        assert_eq!(fs::metadata(path.join(name)).unwrap().len(), 0, "{name}");
    }
    let pid = fs::read_to_string(path.join(LOCK_FILE)).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());
}

#[test]
fn written_records_replay_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    writer.submit(
        7,
        vec![
            Record::User(user(0)),
            Record::Room(room(0)),
            Record::User(user(1)),
        ],
    );
    writer.submit(3, vec![Record::Room(room(1)), Record::User(user(2))]);
    for expected in [7, 3] {
        let c = done.recv().unwrap();
        assert_eq!((c.batch, c.result), (expected, Ok(())));
    }
    writer.shutdown();
    drop(dir);

    let users = fs::read_to_string(tmp.path().join(USERS_FILE)).unwrap();
    assert_eq!(
        users,
        [user(0), user(1), user(2)]
            .iter()
            .map(line)
            .collect::<String>()
    );

    let replayed = reopen(tmp.path());
    assert_eq!(replayed.users, vec![user(0), user(1), user(2)]);
    assert_eq!(replayed.rooms, vec![room(0), room(1)]);
}

#[test]
fn many_quick_batches_each_complete_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    let n = 300;
    for i in 0..n {
        let record = if i % 3 == 0 {
            Record::Room(room(i))
        } else {
            Record::User(user(i))
        };
        writer.submit(1000 + i as u64, vec![record]);
    }
    writer.shutdown();
    let got: Vec<Completion> = done.try_iter().collect();
    assert_eq!(
        got.iter().map(|c| c.batch).collect::<Vec<_>>(),
        (0..n).map(|i| 1000 + i as u64).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|c| c.result.is_ok()));
    drop(dir);

    let replayed = reopen(tmp.path());
    let users: Vec<_> = (0..n).filter(|i| i % 3 != 0).map(user).collect();
    let rooms: Vec<_> = (0..n).filter(|i| i % 3 == 0).map(room).collect();
    assert_eq!(replayed, Replayed { users, rooms });
}

#[test]
fn empty_batch_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    writer.submit(1, Vec::new());
    let c = done.recv().unwrap();
    assert_eq!((c.batch, c.result), (1, Ok(())));
}

#[test]
fn dropping_the_writer_finishes_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    for i in 0..50 {
        writer.submit(i as u64, vec![Record::User(user(i))]);
    }
    drop(writer);
    let batches: Vec<u64> = done.try_iter().map(|c| c.batch).collect();
    assert_eq!(batches, (0..50).collect::<Vec<u64>>());
    drop(dir);
    assert_eq!(reopen(tmp.path()).users.len(), 50);
}

#[test]
fn second_writer_on_one_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, _done) = collector();
    let _writer = Writer::spawn(&dir, notify).unwrap();
    let (notify, _done2) = collector();
    let err = Writer::spawn(&dir, notify)
        .err()
        .expect("second writer refused");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
}

#[test]
fn torn_tail_is_cut_and_complete_lines_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    let good = line(&user(0)) + &line(&user(1));
    let torn = &line(&user(2))[..20];
    fs::write(&users_path, format!("{good}{torn}")).unwrap();
    fs::write(tmp.path().join(ROOMS_FILE), line(&room(0)) + "{\"name\"").unwrap();

    let (dir, replayed) = DataDir::open(tmp.path()).unwrap();
    assert_eq!(replayed.users, vec![user(0), user(1)]);
    assert_eq!(replayed.rooms, vec![room(0)]);
    assert_eq!(fs::read_to_string(&users_path).unwrap(), good);
    assert_eq!(
        fs::read_to_string(tmp.path().join(ROOMS_FILE)).unwrap(),
        line(&room(0))
    );

    // Appends after the cut start on a fresh line.
    let (notify, done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    writer.submit(1, vec![Record::User(user(3))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    writer.shutdown();
    drop(dir);
    assert_eq!(reopen(tmp.path()).users, vec![user(0), user(1), user(3)]);
}

#[test]
fn torn_only_line_leaves_an_empty_file() {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    fs::write(&users_path, b"{\"tel\":\"1").unwrap();
    let (_dir, replayed) = DataDir::open(tmp.path()).unwrap();
    assert!(replayed.users.is_empty());
    assert_eq!(fs::metadata(&users_path).unwrap().len(), 0);
}

/// Writes `users`/`rooms` contents, expects `open` to fail as Malformed, and
/// checks neither file was touched.
fn expect_malformed(users: &[u8], rooms: &[u8]) -> (PathBuf, usize, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    let rooms_path = tmp.path().join(ROOMS_FILE);
    fs::write(&users_path, users).unwrap();
    fs::write(&rooms_path, rooms).unwrap();
    let err = DataDir::open(tmp.path()).unwrap_err();
    let shown = err.to_string();
    let (file, line, reason) = malformed(err);
    assert_eq!(
        fs::read(&users_path).unwrap(),
        users,
        "users.jsonl modified"
    );
    assert_eq!(
        fs::read(&rooms_path).unwrap(),
        rooms,
        "rooms.jsonl modified"
    );
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    (PathBuf::from(name), line, reason, shown)
}

#[test]
fn malformed_middle_line_is_named_and_file_left_alone() {
    let users = format!(
        "{}{{\"tel\": oops}}\n{}{}",
        line(&user(0)),
        line(&user(1)),
        &line(&user(2))[..7] // a torn tail must not be cut either
    );
    let (file, line_no, reason, shown) = expect_malformed(users.as_bytes(), b"");
    assert_eq!((file.to_str().unwrap(), line_no), (USERS_FILE, 2));
    assert!(reason.starts_with("malformed record:"), "{reason}");
    assert!(
        shown.contains("users.jsonl line 2: malformed record: "),
        "{shown}"
    );
}

#[test]
fn bad_rooms_file_stops_start_before_users_tail_is_cut() {
    let users = line(&user(0)) + "{\"te";
    let rooms = line(&room(0)) + &line(&room(1)) + "[1,2]\n";
    let (file, line_no, reason, _) = expect_malformed(users.as_bytes(), rooms.as_bytes());
    assert_eq!((file.to_str().unwrap(), line_no), (ROOMS_FILE, 3));
    assert!(reason.contains("JSON object"), "{reason}");
}

#[test]
fn empty_line_is_refused() {
    let users = line(&user(0)) + "\n" + &line(&user(1));
    let (_, line_no, reason, _) = expect_malformed(users.as_bytes(), b"");
    assert_eq!((line_no, reason.as_str()), (2, "empty line"));

    let (_, line_no, reason, _) = expect_malformed(b"  \n", b"");
    assert_eq!((line_no, reason.as_str()), (1, "empty line"));
}

#[test]
fn invalid_utf8_is_refused() {
    let mut users = line(&user(0)).into_bytes();
    users.extend_from_slice(b"{\"tel\":\"\xff\"}\n");
    let (_, line_no, reason, _) = expect_malformed(&users, b"");
    assert_eq!(line_no, 2);
    assert!(reason.contains("UTF-8"), "{reason}");
}

#[test]
fn wrong_fields_are_refused() {
    // Missing field.
    let (_, line_no, reason, _) = expect_malformed(b"", b"{\"name\":\"r\",\"created_ms\":1}\n");
    assert_eq!(line_no, 1);
    assert!(reason.contains("capacity"), "{reason}");

    // Unknown field: it would be lost, so it is refused.
    let mut extra = serde_json::to_value(room(0)).unwrap();
    extra["topic"] = "x".into();
    let (_, line_no, reason, _) = expect_malformed(b"", format!("{extra}\n").as_bytes());
    assert_eq!(line_no, 1);
    assert!(reason.contains("topic"), "{reason}");

    // Wrong type.
    let (_, _, reason, _) =
        expect_malformed(b"", b"{\"name\":\"r\",\"capacity\":-1,\"created_ms\":1}\n");
    assert!(reason.starts_with("malformed record"), "{reason}");
}

#[test]
fn last_complete_line_that_is_bad_is_not_treated_as_torn() {
    let users = line(&user(0)) + "{\"tel\":\"1\"\n";
    let (_, line_no, _, _) = expect_malformed(users.as_bytes(), b"");
    assert_eq!(line_no, 2);
}

#[test]
fn duplicate_users_and_rooms_are_refused() {
    let mut same_tel = user(5);
    same_tel.name = "someone else".into();
    let users = line(&user(4)) + &line(&user(0)) + &line(&user(5)) + &line(&same_tel);
    let (_, line_no, reason, shown) = expect_malformed(users.as_bytes(), b"");
    assert_eq!(line_no, 4);
    assert!(
        reason.contains("duplicate user") && reason.contains("line 3"),
        "{reason}"
    );
    assert!(
        shown.contains("users.jsonl line 4: duplicate user"),
        "{shown}"
    );

    let mut same_name = user(9);
    same_name.name = user(4).name;
    let users = line(&user(4)) + &line(&same_name);
    let (_, line_no, reason, _) = expect_malformed(users.as_bytes(), b"");
    assert_eq!(line_no, 2);
    assert!(
        reason.contains("name") && reason.contains("line 1"),
        "{reason}"
    );

    let mut same_room = room(1);
    same_room.capacity = 99;
    let rooms = line(&room(1)) + &line(&room(2)) + &line(&same_room);
    let (_, line_no, reason, _) = expect_malformed(b"", rooms.as_bytes());
    assert_eq!(line_no, 3);
    assert!(reason.contains("duplicate room"), "{reason}");
}

#[test]
fn replay_over_bytes_classifies_clean_torn_and_malformed() {
    let good = line(&user(0)) + &line(&user(1));

    let clean = replay_users(good.as_bytes()).unwrap();
    assert_eq!(clean.records, vec![user(0), user(1)]);
    assert_eq!(
        clean.tail,
        Tail {
            good_len: good.len() as u64,
            torn: 0
        }
    );

    let torn = format!("{good}{{\"tel\":");
    let scanned = replay_users(torn.as_bytes()).unwrap();
    assert_eq!(scanned.records, vec![user(0), user(1)]);
    assert_eq!(
        scanned.tail,
        Tail {
            good_len: good.len() as u64,
            torn: 7
        }
    );

    let bad = format!("{good}not json\n{}", line(&user(2)));
    let error = replay_users(bad.as_bytes()).unwrap_err();
    assert_eq!(error.line, 3);
    assert!(error.reason.contains("JSON object"), "{}", error.reason);

    assert_eq!(
        replay_rooms(b"").unwrap(),
        Scanned {
            records: Vec::new(),
            tail: Tail {
                good_len: 0,
                torn: 0
            }
        }
    );
}

#[test]
fn replays_a_large_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = io::BufWriter::new(File::create(tmp.path().join(USERS_FILE)).unwrap());
    let n = 100_000;
    for i in 0..n {
        f.write_all(line(&user(i)).as_bytes()).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let replayed = reopen(tmp.path());
    assert_eq!(replayed.users.len(), n);
    assert_eq!(replayed.users[n - 1], user(n - 1));
}

#[test]
fn second_open_is_locked_until_the_first_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let err = DataDir::open(tmp.path()).unwrap_err();
    assert!(matches!(&err, StoreError::Locked { dir } if dir == tmp.path()));
    let shown = err.to_string();
    assert!(shown.contains("another chatroom server"), "{shown}");
    assert!(
        shown.contains(&format!("pid {}", std::process::id())),
        "{shown}"
    );
    // The refused open must not have wiped the holder's pid.
    let pid = fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());

    drop(dir);
    DataDir::open(tmp.path()).unwrap();
}

#[test]
fn a_running_writer_keeps_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, _done) = collector();
    let writer = Writer::spawn(&dir, notify).unwrap();
    drop(dir);
    assert!(matches!(
        DataDir::open(tmp.path()),
        Err(StoreError::Locked { .. })
    ));
    writer.shutdown();
    DataDir::open(tmp.path()).unwrap();
}

#[test]
fn error_texts_name_the_path() {
    let e = StoreError::Malformed {
        file: PathBuf::from("data/users.jsonl"),
        line: 7,
        reason: "malformed record: expected value".into(),
    };
    assert_eq!(
        e.to_string(),
        "data/users.jsonl line 7: malformed record: expected value"
    );
    let e = StoreError::Io {
        path: PathBuf::from("data/rooms.jsonl"),
        source: io::Error::from(io::ErrorKind::PermissionDenied),
    };
    assert!(e.to_string().starts_with("data/rooms.jsonl: "), "{e}");
    let e = StoreError::Locked {
        dir: PathBuf::from("/nonexistent/chatroom-data"),
    };
    assert!(e.to_string().contains("another chatroom server"), "{e}");
}

// ---- Fault injection -------------------------------------------------------

#[derive(Default)]
struct Faults {
    /// The next this many appends fail after writing `partial` bytes.
    fail_appends: u32,
    partial: usize,
    /// The next this many syncs fail.
    fail_syncs: u32,
    /// The next this many cuts fail without touching the file.
    fail_cuts: u32,
    appends: u32,
    syncs: u32,
}

struct Faulty {
    file: File,
    faults: Arc<Mutex<Faults>>,
}

fn injected() -> io::Error {
    io::Error::other("injected: no space left on device")
}

impl JournalFile for Faulty {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        f.appends += 1;
        if f.fail_appends > 0 {
            f.fail_appends -= 1;
            let n = f.partial.min(bytes.len());
            self.file.write_all(&bytes[..n])?;
            return Err(injected());
        }
        self.file.append(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        f.syncs += 1;
        if f.fail_syncs > 0 {
            f.fail_syncs -= 1;
            return Err(injected());
        }
        self.file.sync()
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        if f.fail_cuts > 0 {
            f.fail_cuts -= 1;
            return Err(injected());
        }
        self.file.cut(len)
    }
}

struct Rig {
    writer: Writer,
    users: Arc<Mutex<Faults>>,
    rooms: Arc<Mutex<Faults>>,
}

fn faulty_writer(dir: &DataDir, notify: Box<dyn Fn(Completion) + Send>) -> Rig {
    let users = Arc::new(Mutex::new(Faults::default()));
    let rooms = Arc::new(Mutex::new(Faults::default()));
    let journal = |name: &str, len: u64, faults: &Arc<Mutex<Faults>>| {
        let path = dir.path().join(name);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let faulty = Faulty {
            file,
            faults: Arc::clone(faults),
        };
        Journal::new(faulty, path.display().to_string(), len)
    };
    let journals = [
        journal(USERS_FILE, dir.users_len, &users),
        journal(ROOMS_FILE, dir.rooms_len, &rooms),
    ];
    let writer = Writer::start(journals, None, notify).unwrap();
    Rig {
        writer,
        users,
        rooms,
    }
}

fn len_of(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[test]
fn group_commit_shares_one_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (done_tx, done) = mpsc::channel();
    let (gate_tx, gate) = mpsc::channel::<()>();
    // Holding the writer inside batch 0's callback lets the test queue the
    // rest deterministically before the writer looks at the queue again.
    let notify = Box::new(move |c: Completion| {
        let first = c.batch == 0;
        done_tx.send(c).unwrap();
        if first {
            gate.recv().unwrap();
        }
    });
    let rig = faulty_writer(&dir, notify);
    rig.writer.submit(0, vec![Record::User(user(0))]);
    assert_eq!(done.recv().unwrap().batch, 0);
    for i in 1..=40 {
        rig.writer.submit(i as u64, vec![Record::User(user(i))]);
    }
    gate_tx.send(()).unwrap();
    let rest: Vec<Completion> = (1..=40).map(|_| done.recv().unwrap()).collect();
    assert_eq!(
        rest.iter().map(|c| c.batch).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<u64>>()
    );
    assert!(rest.iter().all(|c| c.result.is_ok()));
    assert!(rest.iter().all(|c| c.sync_micros == rest[0].sync_micros));
    assert!(
        rest[0].first_in_group,
        "the group's first batch carries its latency"
    );
    assert!(rest[1..].iter().all(|c| !c.first_in_group));
    {
        let u = rig.users.lock().unwrap();
        assert_eq!(
            (u.appends, u.syncs),
            (2, 2),
            "one write and one fsync per group"
        );
        let r = rig.rooms.lock().unwrap();
        assert_eq!((r.appends, r.syncs), (0, 0), "untouched file is not synced");
    }
    rig.writer.shutdown();
    assert!(done.try_recv().is_err(), "no batch reported twice");
    drop(dir);
    assert_eq!(
        reopen(tmp.path()).users,
        (0..=40).map(user).collect::<Vec<_>>()
    );
}

#[test]
fn failed_write_is_cut_back_and_writer_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let rig = faulty_writer(&dir, notify);

    rig.writer.submit(1, vec![Record::User(user(1))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    let good = len_of(&users_path);

    {
        let mut u = rig.users.lock().unwrap();
        u.fail_appends = 1;
        u.partial = 15;
    }
    rig.writer.submit(2, vec![Record::User(user(2))]);
    let c = done.recv().unwrap();
    assert_eq!(c.batch, 2);
    let msg = c.result.unwrap_err();
    assert!(
        msg.contains("users.jsonl") && msg.contains("injected"),
        "{msg}"
    );
    assert_eq!(len_of(&users_path), good, "partial line cut back");

    rig.writer.submit(3, vec![Record::User(user(3))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    rig.writer.shutdown();
    drop(dir);
    assert_eq!(reopen(tmp.path()).users, vec![user(1), user(3)]);
}

#[test]
fn failed_fsync_fails_the_whole_group_and_cuts_every_touched_file() {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    let rooms_path = tmp.path().join(ROOMS_FILE);
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (done_tx, done) = mpsc::channel();
    let (gate_tx, gate) = mpsc::channel::<()>();
    let notify = Box::new(move |c: Completion| {
        let first = c.batch == 0;
        done_tx.send(c).unwrap();
        if first {
            gate.recv().unwrap();
        }
    });
    let rig = faulty_writer(&dir, notify);
    rig.writer
        .submit(0, vec![Record::User(user(0)), Record::Room(room(0))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    let (users_good, rooms_good) = (len_of(&users_path), len_of(&rooms_path));

    // users.jsonl is written and synced fine; rooms.jsonl's fsync fails.
    rig.rooms.lock().unwrap().fail_syncs = 1;
    rig.writer.submit(1, vec![Record::User(user(1))]);
    rig.writer.submit(2, vec![Record::Room(room(2))]);
    gate_tx.send(()).unwrap();
    for expected in [1, 2] {
        let c = done.recv().unwrap();
        assert_eq!(c.batch, expected);
        let msg = c.result.unwrap_err();
        assert!(
            msg.contains("rooms.jsonl") && msg.contains("fsync"),
            "{msg}"
        );
    }
    assert_eq!(len_of(&users_path), users_good);
    assert_eq!(len_of(&rooms_path), rooms_good);

    rig.writer
        .submit(3, vec![Record::Room(room(3)), Record::User(user(3))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    rig.writer.shutdown();
    drop(dir);
    let replayed = reopen(tmp.path());
    assert_eq!(replayed.users, vec![user(0), user(3)]);
    assert_eq!(replayed.rooms, vec![room(0), room(3)]);
}

#[test]
fn failed_cut_is_retried_before_the_next_write() {
    let tmp = tempfile::tempdir().unwrap();
    let users_path = tmp.path().join(USERS_FILE);
    let (dir, _) = DataDir::open(tmp.path()).unwrap();
    let (notify, done) = collector();
    let rig = faulty_writer(&dir, notify);

    rig.writer.submit(1, vec![Record::User(user(1))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    let good = len_of(&users_path);

    {
        let mut u = rig.users.lock().unwrap();
        u.fail_appends = 1;
        u.partial = 10;
        u.fail_cuts = 2; // the cut after the failure, and the first retry
    }
    rig.writer.submit(2, vec![Record::User(user(2))]);
    assert!(done.recv().unwrap().result.is_err());
    assert_eq!(
        len_of(&users_path),
        good + 10,
        "debris left by the failed cut"
    );

    // While the repair fails nothing is appended behind the debris.
    let appends_before = rig.users.lock().unwrap().appends;
    rig.writer.submit(3, vec![Record::User(user(3))]);
    let msg = done.recv().unwrap().result.unwrap_err();
    assert!(msg.contains("cut back"), "{msg}");
    assert_eq!(rig.users.lock().unwrap().appends, appends_before);
    assert_eq!(len_of(&users_path), good + 10);

    // Repair works now: debris is cut, the new record follows the good ones.
    rig.writer.submit(4, vec![Record::User(user(4))]);
    assert_eq!(done.recv().unwrap().result, Ok(()));
    rig.writer.shutdown();
    drop(dir);
    assert_eq!(reopen(tmp.path()).users, vec![user(1), user(4)]);
}

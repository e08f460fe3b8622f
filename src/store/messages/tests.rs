use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::appender::SegmentFile;
use super::*;
use crate::store::{BadLine, StoreError, Tail};

/// Only a guard against a hung test: every wait asserts that an event
/// arrives, never how fast.
const HANG: Duration = Duration::from_secs(60);

fn msg(room: &str, seq: u64) -> MessageRecord {
    MessageRecord {
        room: room.to_owned(),
        seq,
        ts: 1_733_390_000_000 + seq,
        user_name: format!("user{}", seq % 7),
        user_avatar: if seq.is_multiple_of(2) {
            String::new()
        } else {
            format!("https://example.com/a/{seq}.png")
        },
        msg: format!(
            "message {seq} in {room}: \"quoted\" ✓ {}",
            "x".repeat((seq % 13) as usize)
        ),
    }
}

fn line_of(record: &MessageRecord) -> Vec<u8> {
    LogLine::Message(record.clone()).to_line()
}

fn marker(room: &str, seq: u64) -> Vec<u8> {
    LogLine::LastSeq {
        room: room.to_owned(),
        seq,
    }
    .to_line()
}

fn config(history_size: usize, segment_bytes: u64, sync_interval: Duration) -> LogConfig {
    LogConfig {
        history_size,
        segment_bytes,
        sync_interval,
    }
}

fn collector() -> (NotifyFn, Receiver<LogEvent>) {
    let (tx, rx) = mpsc::channel();
    let notify = Box::new(move |e: LogEvent| {
        // The test may have stopped listening; that is its business.
        let _ = tx.send(e);
    });
    (notify, rx)
}

/// Receives events until one matches, returning those before it too.
fn wait_for(rx: &Receiver<LogEvent>, mut want: impl FnMut(&LogEvent) -> bool) -> Vec<LogEvent> {
    let mut seen = Vec::new();
    loop {
        let event = rx.recv_timeout(HANG).expect("an event arrives");
        let found = want(&event);
        seen.push(event);
        if found {
            return seen;
        }
    }
}

fn written(id: AppendId) -> impl FnMut(&LogEvent) -> bool {
    move |e| *e == LogEvent::Written { id }
}

fn messages_dir(data: &Path) -> PathBuf {
    data.join(MESSAGES_DIR)
}

fn segment_names(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(messages_dir(data))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn disk_total(data: &Path) -> u64 {
    fs::read_dir(messages_dir(data))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn reopen(data: &Path, config: LogConfig) -> HashMap<String, RoomLog> {
    let (_log, history) = MessageLog::open(data, config).unwrap();
    history
}

/// What replay must return for `records` (each room's in seq order).
fn model(records: &[MessageRecord], history_size: usize) -> HashMap<String, RoomLog> {
    let mut rooms: HashMap<String, RoomLog> = HashMap::new();
    for r in records {
        let room = rooms.entry(r.room.clone()).or_default();
        room.last_seq = room.last_seq.max(r.seq);
        room.messages.push(r.clone());
    }
    for room in rooms.values_mut() {
        room.messages.sort_by_key(|m| m.seq);
        room.messages.dedup_by_key(|m| m.seq);
        let keep = room.messages.len().min(history_size);
        room.messages.drain(..room.messages.len() - keep);
    }
    rooms
}

/// A deterministic sequence of messages over `rooms` rooms, seqs per room
/// from 1, chosen by a small xorshift so rooms interleave unevenly.
fn traffic(rooms: usize, count: usize) -> Vec<MessageRecord> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_seq = vec![0u64; rooms];
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Room 0 is busy, the others share the rest unevenly.
            let room = if state.is_multiple_of(3) {
                0
            } else {
                (state >> 8) as usize % rooms
            };
            next_seq[room] += 1;
            msg(&format!("room {room}"), next_seq[room])
        })
        .collect()
}

fn malformed(err: StoreError) -> (PathBuf, usize, String) {
    match err {
        StoreError::Malformed { file, line, reason } => (file, line, reason),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

// ---- The pure parts --------------------------------------------------------

#[test]
fn line_format_is_the_documented_one() {
    let record = MessageRecord {
        room: "lobby".into(),
        seq: 17,
        ts: 1_733_390_000_000,
        user_name: "ann".into(),
        user_avatar: "https://a.example/ann.png".into(),
        msg: "hi".into(),
    };
    assert_eq!(
        String::from_utf8(line_of(&record)).unwrap(),
        "{\"room\":\"lobby\",\"seq\":17,\"ts\":1733390000000,\"user\":\"ann\",\
         \"avatar\":\"https://a.example/ann.png\",\"msg\":\"hi\"}\n"
    );
    assert_eq!(marker("lobby", 17), b"{\"room\":\"lobby\",\"seq\":17}\n");
}

#[test]
fn segment_replay_classifies_clean_torn_and_malformed() {
    let mut good = line_of(&msg("a", 1));
    good.extend(marker("b", 9));
    good.extend(line_of(&msg("a", 2)));

    let clean = replay_message_segment(&good).unwrap();
    assert_eq!(
        clean.records,
        vec![
            LogLine::Message(msg("a", 1)),
            LogLine::LastSeq {
                room: "b".into(),
                seq: 9
            },
            LogLine::Message(msg("a", 2)),
        ]
    );
    assert_eq!(
        clean.tail,
        Tail {
            good_len: good.len() as u64,
            torn: 0
        }
    );

    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"room\":\"a\",\"se");
    let scanned = replay_message_segment(&torn).unwrap();
    assert_eq!(scanned.records.len(), 3);
    assert_eq!(
        scanned.tail,
        Tail {
            good_len: good.len() as u64,
            torn: 15
        }
    );

    let mut bad = good.clone();
    bad.extend_from_slice(b"not json\n");
    bad.extend(line_of(&msg("a", 3)));
    let error = replay_message_segment(&bad).unwrap_err();
    assert_eq!(error.line, 4);
    assert!(error.reason.contains("JSON object"), "{}", error.reason);

    assert_eq!(replay_message_segment(b"").unwrap().records, vec![]);
}

#[test]
fn segment_replay_refuses_what_the_log_never_writes() {
    let refused = |line: &str| -> BadLine {
        let mut bytes = line_of(&msg("a", 1));
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        replay_message_segment(&bytes).unwrap_err()
    };
    let e = refused(
        "{\"room\":\"a\",\"seq\":2,\"ts\":1,\"user\":\"u\",\"avatar\":\"\",\"msg\":\"m\",\"x\":1}",
    );
    assert_eq!(e.line, 2);
    assert!(e.reason.contains("unknown field"), "{}", e.reason);

    let e = refused("{\"room\":\"a\",\"seq\":2,\"ts\":1,\"user\":\"u\",\"msg\":\"m\"}");
    assert!(e.reason.contains("a message needs"), "{}", e.reason);

    let e = refused("{\"room\":\"a\",\"seq\":0}");
    assert!(e.reason.contains("seq 0"), "{}", e.reason);

    let e = refused("{\"room\":\"a\",\"seq\":-1}");
    assert!(e.reason.starts_with("malformed record"), "{}", e.reason);

    let e = refused("");
    assert_eq!(e.reason, "empty line");

    let e = refused("[\"a\",1]");
    assert!(e.reason.contains("JSON object"), "{}", e.reason);

    let long = format!(
        "{{\"room\":\"a\",\"seq\":2,\"ts\":1,\"user\":\"u\",\"avatar\":\"\",\"msg\":\"{}\"}}",
        "x".repeat(MAX_LINE_BYTES)
    );
    let e = refused(&long);
    assert!(e.reason.contains("longer than"), "{}", e.reason);
}

#[test]
fn history_keeps_the_newest_per_room_sorted_and_deduplicated() {
    let mut lines: Vec<LogLine> = Vec::new();
    for seq in (1..=20).rev() {
        lines.push(LogLine::Message(msg("b", seq)));
    }
    for seq in 1..=10 {
        lines.push(LogLine::Message(msg("a", seq)));
        // Every message twice, as an interrupted compaction can leave them.
        lines.push(LogLine::Message(msg("a", seq)));
    }
    lines.push(LogLine::LastSeq {
        room: "a".into(),
        seq: 10,
    });
    let mut builder = HistoryBuilder::new(4);
    for line in lines {
        builder.add(line);
    }
    let rooms = builder.finish();
    assert_eq!(
        rooms["a"],
        RoomLog {
            last_seq: 10,
            messages: (7..=10).map(|s| msg("a", s)).collect()
        }
    );
    assert_eq!(
        rooms["b"],
        RoomLog {
            last_seq: 20,
            messages: (17..=20).map(|s| msg("b", s)).collect()
        }
    );
}

#[test]
fn history_size_zero_keeps_only_the_last_seq() {
    let mut builder = HistoryBuilder::new(0);
    for seq in 1..=5 {
        builder.add(LogLine::Message(msg("a", seq)));
    }
    builder.add(LogLine::LastSeq {
        room: "m".into(),
        seq: 41,
    });
    let rooms = builder.finish();
    assert_eq!(
        rooms["a"],
        RoomLog {
            last_seq: 5,
            messages: vec![]
        }
    );
    assert_eq!(rooms["m"].last_seq, 41);
}

#[test]
fn history_window_is_by_seq_like_compaction() {
    // A room whose older messages are gone (say history was 0 for a while)
    // keeps only what lies within history_size of its last seq.
    let mut builder = HistoryBuilder::new(3);
    for seq in [1, 2, 3, 10] {
        builder.add(LogLine::Message(msg("a", seq)));
    }
    assert_eq!(builder.finish()["a"].messages, vec![msg("a", 10)]);
}

#[test]
fn segment_names_and_the_replay_plan() {
    assert_eq!(SegmentRange::single(7).file_name(), "00000007.jsonl");
    let range = SegmentRange { first: 3, last: 12 };
    assert_eq!(range.file_name(), "00000003-00000012.jsonl");
    assert_eq!(SegmentRange::parse("00000003-00000012.jsonl"), Some(range));
    assert_eq!(
        SegmentRange::parse("123456789.jsonl"),
        Some(SegmentRange::single(123_456_789))
    );
    for not_ours in [
        "7.json",
        "x.jsonl",
        "-1.jsonl",
        "5-5.jsonl",
        "6-5.jsonl",
        "1-2-3.jsonl",
        ".jsonl",
        "00000001.jsonl.tmp",
        "+1.jsonl",
    ] {
        assert_eq!(SegmentRange::parse(not_ours), None, "{not_ours}");
    }

    let r = |first, last| SegmentRange { first, last };
    let (live, covered) = plan_replay(vec![r(9, 9), r(2, 2), r(1, 4), r(3, 3), r(5, 8), r(6, 6)]);
    assert_eq!(live, vec![r(1, 4), r(5, 8), r(9, 9)]);
    assert_eq!(covered, vec![r(2, 2), r(3, 3), r(6, 6)]);
    // A compaction of a range that held an earlier compaction's output.
    let (live, covered) = plan_replay(vec![r(1, 4), r(1, 9), r(5, 5), r(10, 10)]);
    assert_eq!(live, vec![r(1, 9), r(10, 10)]);
    assert_eq!(covered, vec![r(1, 4), r(5, 5)]);
}

// ---- Open, write, restart --------------------------------------------------

#[test]
fn open_creates_the_directory_and_a_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    let (log, history) = MessageLog::open(&data, LogConfig::default()).unwrap();
    assert!(history.is_empty());
    assert_eq!(log.dir(), messages_dir(&data));
    assert_eq!(segment_names(&data), vec!["00000001.jsonl"]);
}

#[test]
fn a_write_is_in_the_file_when_written_is_reported_before_any_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    // No fsync round can come due during the test: only shutdown makes one.
    let cfg = config(1000, 8 << 20, Duration::from_secs(3600));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    writer.append(1, vec![msg("lobby", 1), msg("lobby", 2)]);
    let seen = wait_for(&events, written(1));
    assert_eq!(
        seen,
        vec![LogEvent::Written { id: 1 }],
        "no fsync before it"
    );

    let mut expected = line_of(&msg("lobby", 1));
    expected.extend(line_of(&msg("lobby", 2)));
    let head = messages_dir(tmp.path()).join("00000001.jsonl");
    assert_eq!(fs::read(&head).unwrap(), expected);
    assert!(events.try_recv().is_err(), "still no fsync");
    assert_eq!(writer.disk_bytes(), expected.len() as u64);

    // Shutdown fsyncs what is written.
    writer.shutdown();
    assert!(matches!(events.try_recv(), Ok(LogEvent::Synced { .. })));
    let history = reopen(tmp.path(), cfg);
    assert_eq!(
        history["lobby"].messages,
        vec![msg("lobby", 1), msg("lobby", 2)]
    );
}

#[test]
fn an_fsync_follows_the_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1000, 8 << 20, Duration::from_millis(20));
    let (log, _) = MessageLog::open(tmp.path(), cfg).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    writer.append(1, vec![msg("a", 1)]);
    wait_for(&events, written(1));
    wait_for(&events, |e| matches!(e, LogEvent::Synced { .. }));
    // And again for a later write: the syncer keeps going.
    writer.append(2, vec![msg("a", 2)]);
    let seen = wait_for(&events, |e| matches!(e, LogEvent::Synced { .. }));
    assert!(seen.contains(&LogEvent::Written { id: 2 }), "{seen:?}");
    writer.shutdown();
}

#[test]
fn what_an_earlier_process_wrote_is_fsynced_after_a_restart() {
    // Killed before its syncer came round: the writes are only in the
    // kernel's cache. The first round covers them without a new write.
    let tmp = tempfile::tempdir().unwrap();
    lay_out(
        &messages_dir(tmp.path()),
        &[line_of(&msg("a", 1)), line_of(&msg("a", 2))],
        1,
    );
    let cfg = config(1000, 8 << 20, Duration::from_millis(20));
    let (log, _) = MessageLog::open(tmp.path(), cfg).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    let seen = wait_for(&events, |e| matches!(e, LogEvent::Synced { .. }));
    assert_eq!(seen.len(), 1, "{seen:?}");
    writer.shutdown();
}

#[test]
fn appends_replay_per_room_in_order_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1000, 8 << 20, Duration::from_millis(50));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    let records = traffic(5, 300);
    for (i, chunk) in records.chunks(7).enumerate() {
        writer.append(100 + i as u64, chunk.to_vec());
    }
    writer.shutdown();
    let ids: Vec<u64> = events
        .try_iter()
        .filter_map(|e| match e {
            LogEvent::Written { id } => Some(id),
            _ => None,
        })
        .collect();
    let appends = records.len().div_ceil(7) as u64;
    assert_eq!(ids, (100..100 + appends).collect::<Vec<_>>());

    assert_eq!(reopen(tmp.path(), cfg.clone()), model(&records, 1000));
    // A second restart (now appending after the replayed head) agrees too.
    let (log, history) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    assert_eq!(history, model(&records, 1000));
    let next = history["room 1"].last_seq + 1;
    let writer = log.spawn(collector().0).unwrap();
    writer.append(1, vec![msg("room 1", next)]);
    writer.shutdown();
    let mut all = records.clone();
    all.push(msg("room 1", next));
    assert_eq!(reopen(tmp.path(), cfg), model(&all, 1000));
}

#[test]
fn segments_roll_at_the_size_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let segment_bytes = 1024;
    let cfg = config(1_000_000, segment_bytes, Duration::from_millis(50));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let writer = log.spawn(collector().0).unwrap();
    let records = traffic(3, 200);
    for (i, chunk) in records.chunks(5).enumerate() {
        writer.append(i as u64, chunk.to_vec());
    }
    writer.shutdown();
    let names = segment_names(tmp.path());
    assert!(names.len() > 10, "{names:?}");
    for name in &names {
        let len = fs::metadata(messages_dir(tmp.path()).join(name))
            .unwrap()
            .len();
        assert!(len <= segment_bytes, "{name}: {len} bytes");
    }
    assert_eq!(reopen(tmp.path(), cfg), model(&records, 1_000_000));
}

#[test]
fn a_line_longer_than_a_segment_gets_one_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(10, 256, Duration::from_millis(50));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let writer = log.spawn(collector().0).unwrap();
    let mut big = msg("a", 2);
    big.msg = "y".repeat(1000);
    let records = vec![msg("a", 1), big, msg("a", 3)];
    writer.append(1, records.clone());
    writer.shutdown();
    assert_eq!(
        segment_names(tmp.path()),
        vec!["00000001.jsonl", "00000002.jsonl", "00000003.jsonl"]
    );
    assert_eq!(reopen(tmp.path(), cfg), model(&records, 10));
}

#[test]
fn a_record_over_the_line_limit_keeps_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(10, 8 << 20, Duration::from_millis(50));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    let mut huge = msg("a", 2);
    huge.msg = "z".repeat(MAX_LINE_BYTES);
    writer.append(1, vec![msg("a", 1), huge]);
    wait_for(&events, written(1));
    writer.append(2, vec![msg("a", 3)]);
    wait_for(&events, written(2));
    writer.shutdown();
    let history = reopen(tmp.path(), cfg);
    assert_eq!(history["a"].last_seq, 3);
    assert_eq!(history["a"].messages, vec![msg("a", 1), msg("a", 3)]);
}

#[test]
fn torn_tail_of_the_head_is_cut_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    let mut older = line_of(&msg("a", 1));
    older.extend(line_of(&msg("a", 2)));
    fs::write(dir.join("00000001.jsonl"), &older).unwrap();
    let good = line_of(&msg("a", 3));
    let mut head = good.clone();
    head.extend_from_slice(&line_of(&msg("a", 4))[..30]);
    fs::write(dir.join("00000002.jsonl"), &head).unwrap();

    let cfg = config(1000, 8 << 20, Duration::from_millis(50));
    let (log, history) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    assert_eq!(history["a"].last_seq, 3);
    assert_eq!(fs::read(dir.join("00000002.jsonl")).unwrap(), good);

    let writer = log.spawn(collector().0).unwrap();
    writer.append(1, vec![msg("a", 4)]);
    writer.shutdown();
    let history = reopen(tmp.path(), cfg);
    assert_eq!(
        history["a"].messages,
        (1..=4).map(|s| msg("a", s)).collect::<Vec<_>>()
    );
}

/// Lays out segments, expects `open` to fail as Malformed, and checks no
/// file was touched.
fn expect_malformed(files: &[(&str, Vec<u8>)]) -> (String, usize, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
    let err = MessageLog::open(tmp.path(), LogConfig::default()).unwrap_err();
    let shown = err.to_string();
    let (file, line, reason) = malformed(err);
    for (name, bytes) in files {
        assert_eq!(&fs::read(dir.join(name)).unwrap(), bytes, "{name} modified");
    }
    let mut names = segment_names(tmp.path());
    names.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "files added or removed");
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    (name, line, reason, shown)
}

#[test]
fn a_malformed_line_stops_start_up_naming_file_and_line() {
    let mut first = line_of(&msg("a", 1));
    first.extend_from_slice(b"{\"room\":\"a\",\"seq\":oops}\n");
    first.extend(line_of(&msg("a", 3)));
    let mut head = line_of(&msg("a", 4));
    head.extend_from_slice(b"{\"room\""); // a torn tail is not cut either
    let (file, line, reason, shown) =
        expect_malformed(&[("00000001.jsonl", first), ("00000002.jsonl", head)]);
    assert_eq!((file.as_str(), line), ("00000001.jsonl", 2));
    assert!(reason.starts_with("malformed record"), "{reason}");
    assert!(
        shown.contains("messages/00000001.jsonl line 2: malformed record"),
        "{shown}"
    );
}

#[test]
fn a_torn_line_in_an_older_segment_is_malformed() {
    let mut first = line_of(&msg("a", 1));
    first.extend_from_slice(&line_of(&msg("a", 2))[..20]);
    let (file, line, reason, _) = expect_malformed(&[
        ("00000001.jsonl", first),
        ("00000002.jsonl", line_of(&msg("a", 3))),
    ]);
    assert_eq!((file.as_str(), line), ("00000001.jsonl", 2));
    assert!(reason.contains("not the newest"), "{reason}");
}

#[test]
fn a_malformed_head_is_refused_too() {
    let mut head = line_of(&msg("a", 1));
    head.extend_from_slice(b"\n");
    let (file, line, reason, _) = expect_malformed(&[("00000003.jsonl", head)]);
    assert_eq!(
        (file.as_str(), line, reason.as_str()),
        ("00000003.jsonl", 2, "empty line")
    );
}

#[test]
fn a_segment_larger_than_the_read_limit_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    let cfg = LogConfig::default();
    // Sparse: nothing is written, and nothing may be read.
    let f = File::create(dir.join("00000001.jsonl")).unwrap();
    f.set_len(cfg.read_limit() + 1).unwrap();
    let err = MessageLog::open(tmp.path(), cfg).unwrap_err();
    match err {
        StoreError::Io { path, source } => {
            assert!(path.ends_with("00000001.jsonl"), "{path:?}");
            assert_eq!(source.kind(), io::ErrorKind::InvalidData);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn foreign_files_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("README"), "notes").unwrap();
    fs::write(dir.join("00000001.jsonl"), line_of(&msg("a", 1))).unwrap();
    let history = reopen(tmp.path(), LogConfig::default());
    assert_eq!(history["a"].last_seq, 1);
    assert_eq!(fs::read_to_string(dir.join("README")).unwrap(), "notes");
}

#[test]
fn a_newest_compacted_segment_gets_a_fresh_head_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("00000001-00000004.jsonl"), line_of(&msg("a", 1))).unwrap();
    let cfg = LogConfig::default();
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    assert_eq!(
        segment_names(tmp.path()),
        vec!["00000001-00000004.jsonl", "00000005.jsonl"]
    );
    let writer = log.spawn(collector().0).unwrap();
    writer.append(1, vec![msg("a", 2)]);
    writer.shutdown();
    assert_eq!(
        reopen(tmp.path(), cfg)["a"].messages,
        vec![msg("a", 1), msg("a", 2)]
    );
}

// ---- Compaction ------------------------------------------------------------

/// Bytes retention keeps of `records`: the lines of each room's newest
/// `history_size` messages, or a marker per room when that is 0.
fn retained_bytes(records: &[MessageRecord], history_size: usize) -> u64 {
    model(records, history_size)
        .iter()
        .map(|(room, log)| {
            if log.messages.is_empty() {
                marker(room, log.last_seq).len() as u64
            } else {
                log.messages.iter().map(|m| line_of(m).len() as u64).sum()
            }
        })
        .sum()
}

/// Appends `records` a few at a time, then waits until the log's own count
/// of its size is within `bound` (compaction runs behind the appends), and
/// shuts down.
fn append_and_settle(data: &Path, cfg: &LogConfig, records: &[MessageRecord], bound: u64) {
    let (log, _) = MessageLog::open(data, cfg.clone()).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    let mut last_id = 0;
    for (i, chunk) in records.chunks(3).enumerate() {
        last_id = i as u64;
        writer.append(last_id, chunk.to_vec());
    }
    let seen = wait_for(&events, written(last_id));
    let mut compactions = seen
        .iter()
        .filter(|e| matches!(e, LogEvent::Compacted { .. }))
        .count();
    while writer.disk_bytes() > bound {
        wait_for(&events, |e| matches!(e, LogEvent::Compacted { .. }));
        compactions += 1;
    }
    assert!(compactions > 0, "no compaction ran");
    let counted = writer.disk_bytes();
    writer.shutdown();
    assert_eq!(
        disk_total(data),
        counted,
        "the size count matches the files"
    );
}

#[test]
fn compaction_keeps_disk_proportional_to_what_is_retained() {
    let tmp = tempfile::tempdir().unwrap();
    let segment_bytes = 4096;
    let history_size = 5;
    let cfg = config(history_size, segment_bytes, Duration::from_millis(20));
    let records = traffic(20, 6000);
    let written: u64 = records.iter().map(|r| line_of(r).len() as u64).sum();
    let retained = retained_bytes(&records, history_size);
    // What the compactor promises: twice what is retained, plus the head
    // and half a segment of slack for the closed ones, plus one line.
    let bound = 2 * retained + 2 * segment_bytes;
    assert!(
        written > 20 * bound,
        "the test must write far more than it keeps"
    );

    append_and_settle(tmp.path(), &cfg, &records, bound);
    let on_disk = disk_total(tmp.path());
    assert!(on_disk <= bound, "{on_disk} bytes on disk, bound {bound}");
    // Segment count stays proportional too.
    let files = segment_names(tmp.path()).len() as u64;
    assert!(files <= 2 * bound / segment_bytes + 2, "{files} files");

    assert_eq!(
        reopen(tmp.path(), cfg.clone()),
        model(&records, history_size)
    );
    // Start-up reads only the segments: what it read is what is on disk.
    eprintln!("written {written}, retained {retained}, on disk {on_disk}, files {files}");
}

#[test]
fn compaction_with_history_off_keeps_every_rooms_last_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let segment_bytes = 2048;
    let cfg = config(0, segment_bytes, Duration::from_millis(20));
    let records = traffic(30, 3000);
    let retained = retained_bytes(&records, 0);
    let bound = 2 * retained + 2 * segment_bytes;
    append_and_settle(tmp.path(), &cfg, &records, bound);
    let history = reopen(tmp.path(), cfg.clone());
    assert_eq!(history, model(&records, 0));
    assert!(history
        .values()
        .all(|r| r.messages.is_empty() && r.last_seq > 0));

    // And with history turned back on, the seqs continue from there.
    let cfg = config(10, segment_bytes, Duration::from_millis(20));
    let (log, history) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let next = history["room 3"].last_seq + 1;
    let writer = log.spawn(collector().0).unwrap();
    writer.append(1, vec![msg("room 3", next)]);
    writer.shutdown();
    let history = reopen(tmp.path(), cfg);
    let room = &history["room 3"];
    assert_eq!(room.last_seq, next);
    // Messages of the uncompacted head from before may come back; whatever
    // does is a true, contiguous tail of the room.
    let first = room.messages[0].seq;
    assert_eq!(
        room.messages,
        (first..=next).map(|s| msg("room 3", s)).collect::<Vec<_>>()
    );
}

/// Writes `lines` as hand-made segments of about `per_segment` lines each,
/// numbered from 1; returns their names and bytes.
fn lay_out(dir: &Path, lines: &[Vec<u8>], per_segment: usize) -> Vec<(String, Vec<u8>)> {
    fs::create_dir_all(dir).unwrap();
    lines
        .chunks(per_segment)
        .enumerate()
        .map(|(i, chunk)| {
            let name = SegmentRange::single(i as u64 + 1).file_name();
            let bytes = chunk.concat();
            fs::write(dir.join(&name), &bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_crash_in_the_middle_of_compaction_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let dir = messages_dir(data);
    let history_size = 3;
    // Small enough that the closed segments' garbage triggers compaction.
    let segment_bytes = 8192;
    let cfg = config(history_size, segment_bytes, Duration::from_millis(20));
    let records = traffic(4, 400);
    let lines: Vec<Vec<u8>> = records.iter().map(line_of).collect();
    let inputs = lay_out(&dir, &lines, 100);
    let expected = model(&records, history_size);

    // The real compactor runs at start (the closed segments are nearly all
    // garbage) and leaves its output, named after the range it covers.
    let (log, history) = MessageLog::open(data, cfg.clone()).unwrap();
    assert_eq!(history, expected);
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    wait_for(&events, |e| matches!(e, LogEvent::Compacted { .. }));
    writer.shutdown();
    // The head (00000004.jsonl, the newest) is never compacted.
    assert_eq!(
        segment_names(data),
        vec!["00000001-00000003.jsonl", "00000004.jsonl"]
    );
    let output = fs::read(dir.join("00000001-00000003.jsonl")).unwrap();
    assert!(output.len() < inputs[0].1.len(), "compacted");
    assert_eq!(reopen(data, cfg.clone()), expected);

    // Crash points, as each would leave the directory:
    // 1. during the temporary file: a `.tmp` beside the untouched inputs;
    // 2. after the rename, before any input was deleted;
    // 3. after deleting some inputs.
    // The inputs still there are not even read: one is damaged to prove it.
    for kept_inputs in [vec![0, 1, 2], vec![1, 2], vec![2]] {
        for i in &kept_inputs {
            let (name, bytes) = &inputs[*i];
            let mut bytes = bytes.clone();
            if *i == 1 {
                bytes.extend_from_slice(b"damage that would stop start-up\n");
            }
            fs::write(dir.join(name), bytes).unwrap();
        }
        fs::write(
            dir.join("00000001.compacting.tmp"),
            &output[..output.len() / 2],
        )
        .unwrap();
        let history = reopen(data, cfg.clone());
        assert_eq!(history, expected, "inputs {kept_inputs:?}");
        assert_eq!(
            segment_names(data),
            vec!["00000001-00000003.jsonl", "00000004.jsonl"],
            "leftovers removed"
        );
    }

    // 4. before the rename: only the temporary file and all inputs.
    fs::remove_file(dir.join("00000001-00000003.jsonl")).unwrap();
    for (name, bytes) in &inputs[..3] {
        fs::write(dir.join(name), bytes).unwrap();
    }
    fs::write(dir.join("00000001.compacting.tmp"), &output).unwrap();
    assert_eq!(reopen(data, cfg.clone()), expected);
    assert_eq!(
        segment_names(data),
        vec![
            "00000001.jsonl",
            "00000002.jsonl",
            "00000003.jsonl",
            "00000004.jsonl"
        ]
    );
}

#[test]
fn duplicate_lines_across_segments_replay_once() {
    // Whatever the cause, a seq seen twice counts once.
    let tmp = tempfile::tempdir().unwrap();
    let records = traffic(3, 60);
    let mut lines: Vec<Vec<u8>> = records.iter().map(line_of).collect();
    let again = lines[10..40].to_vec();
    lines.extend(again);
    lay_out(&messages_dir(tmp.path()), &lines, 25);
    assert_eq!(
        reopen(tmp.path(), config(1000, 8 << 20, Duration::from_secs(1))),
        model(&records, 1000)
    );
}

#[test]
fn a_compaction_that_keeps_nothing_deletes_its_inputs() {
    // History off and every room's last seq in a later segment: the older
    // segments hold nothing retained and simply go.
    let tmp = tempfile::tempdir().unwrap();
    let dir = messages_dir(tmp.path());
    let old: Vec<Vec<u8>> = (1..=60).map(|s| line_of(&msg("a", s))).collect();
    lay_out(&dir, &old, 20);
    fs::write(dir.join("00000004.jsonl"), line_of(&msg("a", 61))).unwrap();
    fs::write(dir.join("00000005.jsonl"), line_of(&msg("b", 1))).unwrap();
    let cfg = config(0, 4096, Duration::from_millis(20));
    let (log, _) = MessageLog::open(tmp.path(), cfg.clone()).unwrap();
    let (notify, events) = collector();
    let writer = log.spawn(notify).unwrap();
    let seen = wait_for(&events, |e| matches!(e, LogEvent::Compacted { .. }));
    writer.shutdown();
    let after = match seen.last() {
        Some(LogEvent::Compacted { bytes_after, .. }) => *bytes_after,
        other => panic!("{other:?}"),
    };
    // Segment 4 holds a's last seq: a marker is all that is left of it.
    assert_eq!(after, marker("a", 61).len() as u64);
    assert_eq!(
        segment_names(tmp.path()),
        vec!["00000001-00000004.jsonl", "00000005.jsonl"]
    );
    let history = reopen(tmp.path(), cfg);
    assert_eq!(
        history["a"],
        RoomLog {
            last_seq: 61,
            messages: vec![]
        }
    );
    assert_eq!(history["b"].last_seq, 1);
}

// ---- Fault injection -------------------------------------------------------

#[derive(Default)]
struct Faults {
    /// The next this many appends fail after writing `partial` bytes.
    fail_appends: u32,
    partial: usize,
    /// The next this many cuts fail without touching the file.
    fail_cuts: u32,
    /// The next this many segment creations fail.
    fail_creates: u32,
    appends: u32,
}

struct Faulty {
    file: File,
    faults: Arc<Mutex<Faults>>,
}

fn injected() -> io::Error {
    io::Error::other("injected: no space left on device")
}

impl SegmentFile for Faulty {
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

    fn cut(&mut self, len: u64) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        if f.fail_cuts > 0 {
            f.fail_cuts -= 1;
            return Err(injected());
        }
        self.file.cut(len)
    }
}

fn faulty_log(data: &Path, cfg: LogConfig) -> (LogWriter, Arc<Mutex<Faults>>, Receiver<LogEvent>) {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (log, _) = MessageLog::open(data, cfg).unwrap();
    let head = Faulty {
        file: log.head.try_clone().unwrap(),
        faults: Arc::clone(&faults),
    };
    let for_create = Arc::clone(&faults);
    let create = Box::new(move |path: &Path| {
        {
            let mut f = for_create.lock().unwrap();
            if f.fail_creates > 0 {
                f.fail_creates -= 1;
                return Err(injected());
            }
        }
        Ok(Faulty {
            file: create_segment(path)?,
            faults: Arc::clone(&for_create),
        })
    });
    let (notify, events) = collector();
    let writer = log.start(head, create, notify).unwrap();
    (writer, faults, events)
}

#[test]
fn a_failing_write_is_cut_back_reported_once_and_retried_until_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(100, 8 << 20, Duration::from_millis(20));
    let (writer, faults, events) = faulty_log(tmp.path(), cfg.clone());
    writer.append(1, vec![msg("a", 1)]);
    wait_for(&events, written(1));

    {
        let mut f = faults.lock().unwrap();
        f.fail_appends = 3;
        f.partial = 15;
    }
    writer.append(2, vec![msg("a", 2), msg("a", 3)]);
    let seen = wait_for(&events, written(2));
    let failing: Vec<&LogEvent> = seen
        .iter()
        .filter(|e| matches!(e, LogEvent::WriteFailing { .. }))
        .collect();
    assert_eq!(failing.len(), 1, "once per episode: {seen:?}");
    match failing[0] {
        LogEvent::WriteFailing { id, error } => {
            assert_eq!(*id, 2);
            assert!(
                error.contains("00000001.jsonl") && error.contains("injected"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        faults.lock().unwrap().appends,
        5,
        "three failures, then success"
    );

    // The debris of each failed attempt was cut: the file is exactly the
    // three lines.
    let expected: Vec<u8> = (1..=3).flat_map(|s| line_of(&msg("a", s))).collect();
    let head = messages_dir(tmp.path()).join("00000001.jsonl");
    assert_eq!(fs::read(&head).unwrap(), expected);

    // A new episode is reported again.
    faults.lock().unwrap().fail_appends = 1;
    writer.append(3, vec![msg("a", 4)]);
    let seen = wait_for(&events, written(3));
    assert!(
        seen.iter()
            .any(|e| matches!(e, LogEvent::WriteFailing { id: 3, .. })),
        "{seen:?}"
    );
    writer.shutdown();
    assert_eq!(
        reopen(tmp.path(), cfg)["a"].messages,
        (1..=4).map(|s| msg("a", s)).collect::<Vec<_>>()
    );
}

#[test]
fn a_failed_cut_is_retried_before_anything_is_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(100, 8 << 20, Duration::from_millis(20));
    let (writer, faults, events) = faulty_log(tmp.path(), cfg.clone());
    {
        let mut f = faults.lock().unwrap();
        f.fail_appends = 1;
        f.partial = 10;
        f.fail_cuts = 2; // the cut after the failure, and the first retry
    }
    writer.append(1, vec![msg("a", 1)]);
    wait_for(&events, written(1));
    assert_eq!(
        faults.lock().unwrap().appends,
        2,
        "no append behind the debris"
    );
    writer.shutdown();
    let head = messages_dir(tmp.path()).join("00000001.jsonl");
    assert_eq!(fs::read(&head).unwrap(), line_of(&msg("a", 1)));
}

#[test]
fn a_failing_segment_creation_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(100, 300, Duration::from_millis(20));
    let (writer, faults, events) = faulty_log(tmp.path(), cfg.clone());
    faults.lock().unwrap().fail_creates = 2;
    let records: Vec<MessageRecord> = (1..=6).map(|s| msg("a", s)).collect();
    writer.append(1, records.clone());
    let seen = wait_for(&events, written(1));
    assert!(
        seen.iter().any(|e| matches!(e, LogEvent::WriteFailing { id: 1, error } if error.contains("next segment"))),
        "{seen:?}"
    );
    writer.shutdown();
    assert!(segment_names(tmp.path()).len() > 1);
    assert_eq!(reopen(tmp.path(), cfg)["a"].messages, records);
}

#[test]
fn shutdown_gives_up_on_a_disk_that_keeps_failing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(100, 8 << 20, Duration::from_millis(20));
    let (writer, faults, events) = faulty_log(tmp.path(), cfg.clone());
    faults.lock().unwrap().fail_appends = u32::MAX;
    writer.append(1, vec![msg("a", 1)]);
    wait_for(&events, |e| {
        matches!(e, LogEvent::WriteFailing { id: 1, .. })
    });
    // Returns (after the grace period) instead of retrying forever.
    writer.shutdown();
    assert!(
        !events
            .try_iter()
            .any(|e| matches!(e, LogEvent::Written { .. })),
        "never reported written"
    );
    assert_eq!(
        fs::metadata(messages_dir(tmp.path()).join("00000001.jsonl"))
            .unwrap()
            .len(),
        0
    );
}

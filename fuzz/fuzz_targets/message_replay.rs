//! Message log replay over arbitrary bytes (sans-IO: the pure functions
//! start-up calls). For one segment, every outcome is one of three:
//! - clean: every line complete and loaded;
//! - torn tail: everything up to the last newline loaded, the rest (no
//!   newline in it) reported for cutting at exactly that offset;
//! - malformed line: an error naming the first bad complete line, every
//!   line before it valid.
//!
//! Never a panic, never a silent drop: each complete line before the end or
//! the error is exactly one record, and re-serialising the records replays
//! to the same records. Across segments, the history built from them is
//! checked against a model: each room's last seq is the highest seen, its
//! messages are the first copy of each seq within `history_size` of it,
//! sorted, whatever the order and duplication of the lines.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use arbitrary::{Arbitrary, Unstructured};
use chatroom::store::{
    replay_message_segment, BadLine, HistoryBuilder, LogLine, MessageRecord, RoomLog, Scanned,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Corruption {
    None,
    /// The last line loses its newline and everything after `keep` bytes.
    Torn { keep: u16 },
    /// A line of garbage before line `at`.
    Garbage { at: u8, line: Vec<u8> },
}

/// A line as the fuzzer picks it: a room out of a few, so rooms repeat.
#[derive(Arbitrary, Debug)]
struct Pick {
    room: u8,
    seq: u64,
    marker: bool,
    ts: u64,
    user: String,
    avatar: String,
    msg: String,
}

impl Pick {
    fn line(&self, seq_mod: u64) -> LogLine {
        let room = format!("room {}", self.room % 4);
        // Seqs start at 1; a small range makes duplicates and reordering
        // common in the history mode.
        let seq = self.seq % seq_mod + 1;
        if self.marker {
            LogLine::LastSeq { room, seq }
        } else {
            LogLine::Message(MessageRecord {
                room,
                seq,
                ts: self.ts,
                user_name: self.user.clone(),
                user_avatar: self.avatar.clone(),
                msg: self.msg.clone(),
            })
        }
    }
}

/// The invariants every outcome keeps, on any bytes.
fn check(bytes: &[u8]) -> Result<Scanned<LogLine>, BadLine> {
    let outcome = replay_message_segment(bytes);
    let complete_lines = bytes.iter().filter(|&&b| b == b'\n').count();
    match &outcome {
        Ok(scanned) => {
            let good = usize::try_from(scanned.tail.good_len).expect("fits");
            let torn = usize::try_from(scanned.tail.torn).expect("fits");
            assert_eq!(good + torn, bytes.len(), "every byte is kept or cut");
            assert!(good == 0 || bytes[good - 1] == b'\n', "cut inside a line");
            assert!(!bytes[good..].contains(&b'\n'), "a complete line was cut");
            assert_eq!(
                scanned.records.len(),
                complete_lines,
                "a complete line was not loaded"
            );
            for line in &scanned.records {
                assert!(line.seq() >= 1, "seq 0 loaded");
            }
            // What was loaded, written again, loads the same.
            let rewritten: Vec<u8> = scanned.records.iter().flat_map(LogLine::to_line).collect();
            let again = replay_message_segment(&rewritten).expect("re-serialised lines replay");
            assert_eq!(again.records, scanned.records);
            assert_eq!(again.tail.torn, 0);
            assert_eq!(again.tail.good_len, rewritten.len() as u64);
        }
        Err(bad) => {
            assert!(!bad.reason.is_empty());
            assert!(
                (1..=complete_lines).contains(&bad.line),
                "line {} of {complete_lines} complete lines",
                bad.line
            );
            // Every line before the bad one is fine: replaying just them is
            // clean, and the bad one alone after them is refused again.
            let end_of = |n: usize| -> usize {
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .nth(n - 1)
                    .map_or(0, |(at, _)| at + 1)
            };
            let before = if bad.line == 1 {
                0
            } else {
                end_of(bad.line - 1)
            };
            let prefix =
                replay_message_segment(&bytes[..before]).expect("the lines before the bad one load");
            assert_eq!(prefix.records.len(), bad.line - 1);
            assert_eq!(prefix.tail.torn, 0);
            let with_bad = replay_message_segment(&bytes[..end_of(bad.line)]).expect_err("the bad line");
            assert_eq!(with_bad, *bad);
        }
    }
    outcome
}

/// Lays out `lines` with the corruption; returns the bytes and what replay
/// must say: `Ok(lines loaded, torn bytes)` or `Err(bad line number)`.
fn corrupt(lines: &[Vec<u8>], corruption: &Corruption) -> (Vec<u8>, Result<(usize, u64), usize>) {
    let mut bytes: Vec<u8> = lines.concat();
    match corruption {
        Corruption::None => (bytes, Ok((lines.len(), 0))),
        Corruption::Torn { keep } => match lines.last() {
            Some(last) => {
                let keep = usize::from(*keep) % last.len();
                bytes.truncate(bytes.len() - last.len() + keep);
                (bytes, Ok((lines.len() - 1, keep as u64)))
            }
            None => (bytes, Ok((0, 0))),
        },
        Corruption::Garbage { at, line } => {
            let at = usize::from(*at) % (lines.len() + 1);
            let mut garbage: Vec<u8> = line.iter().copied().filter(|&b| b != b'\n').collect();
            // Not a JSON object, whatever the fuzzer wrote.
            garbage.insert(0, b'#');
            garbage.push(b'\n');
            let mut bytes = lines[..at].concat();
            bytes.extend_from_slice(&garbage);
            bytes.extend_from_slice(&lines[at..].concat());
            (bytes, Err(at + 1))
        }
    }
}

/// The history `segments` must replay to, computed the plain way.
fn model(segments: &[Vec<LogLine>], history_size: usize) -> HashMap<String, RoomLog> {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut first_copy: HashMap<String, BTreeMap<u64, MessageRecord>> = HashMap::new();
    for line in segments.iter().flatten() {
        let seen = last.entry(line.room().to_owned()).or_default();
        *seen = (*seen).max(line.seq());
        if let LogLine::Message(m) = line {
            first_copy
                .entry(m.room.clone())
                .or_default()
                .entry(m.seq)
                .or_insert_with(|| m.clone());
        }
    }
    last.into_iter()
        .map(|(room, last_seq)| {
            let oldest_kept = last_seq.saturating_sub(history_size as u64);
            let messages = first_copy
                .remove(&room)
                .unwrap_or_default()
                .into_values()
                .filter(|m| m.seq > oldest_kept)
                .collect();
            (room, RoomLog { last_seq, messages })
        })
        .collect()
}

// Layout: a mode byte (mod 3). 0: the rest is one segment's contents (a
// hand-written seed is `\0` and the file). 1: lines and a corruption, read
// with `arbitrary`. 2: segments of lines and a history size, read with
// `arbitrary`, replayed through the history builder.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = check(rest);
        }
        1 => {
            let Ok((picks, corruption)) =
                <(Vec<Pick>, Corruption)>::arbitrary_take_rest(Unstructured::new(rest))
            else {
                return;
            };
            let records: Vec<LogLine> = picks.iter().map(|p| p.line(u64::MAX - 1)).collect();
            let lines: Vec<Vec<u8>> = records.iter().map(LogLine::to_line).collect();
            let (bytes, expected) = corrupt(&lines, &corruption);
            match (check(&bytes), expected) {
                (Ok(scanned), Ok((count, torn))) => {
                    assert_eq!(scanned.records, records[..count], "records lost or changed");
                    assert_eq!(scanned.tail.torn, torn, "torn tail of the wrong length");
                }
                (Err(bad), Err(line)) => assert_eq!(bad.line, line, "the wrong line named"),
                (outcome, expected) => panic!("got {outcome:?}, expected {expected:?}"),
            }
        }
        _ => {
            let Ok((history_size, segments)) =
                <(u8, Vec<Vec<Pick>>)>::arbitrary_take_rest(Unstructured::new(rest))
            else {
                return;
            };
            let history_size = usize::from(history_size % 8);
            let segments: Vec<Vec<LogLine>> = segments
                .iter()
                .map(|picks| picks.iter().map(|p| p.line(12)).collect())
                .collect();
            let mut builder = HistoryBuilder::new(history_size);
            for segment in &segments {
                // Through the bytes, as start-up reads them.
                let bytes: Vec<u8> = segment.iter().flat_map(LogLine::to_line).collect();
                let scanned = replay_message_segment(&bytes).expect("written lines replay");
                assert_eq!(&scanned.records, segment);
                for line in scanned.records {
                    builder.add(line);
                }
            }
            let built = builder.finish();
            for log in built.values() {
                assert!(log.messages.len() <= history_size);
                assert!(log.messages.windows(2).all(|w| w[0].seq < w[1].seq));
            }
            assert_eq!(built, model(&segments, history_size));
        }
    }
});

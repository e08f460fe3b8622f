//! Journal replay over arbitrary file contents (sans-IO: the pure function
//! start-up calls on each file's bytes). Every outcome is one of three:
//! - clean: every line complete and loaded;
//! - torn tail: everything up to the last newline loaded, the rest (no
//!   newline in it) reported for cutting at exactly that offset;
//! - malformed line: an error naming the first bad complete line, every
//!   line before it valid.
//!
//! Never a panic, never a silent drop: each complete line before the end or
//! the error is exactly one record, and re-serialising the records replays
//! to the same records.
#![no_main]

use std::collections::HashSet;
use std::fmt::Debug;

use arbitrary::{Arbitrary, Unstructured};
use chatroom::store::{replay_rooms, replay_users, BadLine, RoomRecord, Scanned, UserRecord};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

#[derive(Arbitrary, Debug)]
enum Corruption {
    None,
    /// The last line loses its newline and everything after `keep` bytes.
    Torn {
        keep: u16,
    },
    /// A line of garbage before record `at`.
    Garbage {
        at: u8,
        line: Vec<u8>,
    },
    /// Record `of` written a second time, at the end.
    Duplicate {
        of: u8,
    },
}

fn line<T: Serialize>(record: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).expect("records serialise");
    line.push(b'\n');
    line
}

/// The invariants every outcome keeps, on any bytes.
fn check<T: Serialize + PartialEq + Debug>(
    bytes: &[u8],
    replay: fn(&[u8]) -> Result<Scanned<T>, BadLine>,
) -> Result<Scanned<T>, BadLine> {
    let outcome = replay(bytes);
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
            // What was loaded, written again, loads the same.
            let rewritten: Vec<u8> = scanned.records.iter().flat_map(line).collect();
            let again = replay(&rewritten).expect("re-serialised records replay");
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
            let prefix = replay(&bytes[..before]).expect("the lines before the bad one load");
            assert_eq!(prefix.records.len(), bad.line - 1);
            assert_eq!(prefix.tail.torn, 0);
            let with_bad = replay(&bytes[..end_of(bad.line)]).expect_err("the bad line");
            assert_eq!(with_bad, *bad);
        }
    }
    outcome
}

/// Lays out `lines` with the corruption; returns the bytes and what replay
/// must say: `Ok(records loaded, torn bytes)` or `Err(bad line number)`.
fn corrupt(lines: &[Vec<u8>], corruption: &Corruption) -> (Vec<u8>, Result<(usize, u64), usize>) {
    let mut bytes: Vec<u8> = lines.concat();
    match corruption {
        Corruption::None => (bytes, Ok((lines.len(), 0))),
        Corruption::Torn { keep } => match lines.last() {
            Some(last) => {
                // Keep some of the last line, never its newline.
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
        Corruption::Duplicate { of } => match lines.get(usize::from(*of) % lines.len().max(1)) {
            Some(again) => {
                bytes.extend_from_slice(again);
                (bytes, Err(lines.len() + 1))
            }
            None => (bytes, Ok((0, 0))),
        },
    }
}

fn expect<T: Serialize + PartialEq + Debug>(
    bytes: &[u8],
    records: &[T],
    expected: Result<(usize, u64), usize>,
    replay: fn(&[u8]) -> Result<Scanned<T>, BadLine>,
) {
    match (check(bytes, replay), expected) {
        (Ok(scanned), Ok((count, torn))) => {
            assert_eq!(scanned.records, records[..count], "records lost or changed");
            assert_eq!(scanned.tail.torn, torn, "torn tail of the wrong length");
        }
        (Err(bad), Err(line)) => assert_eq!(bad.line, line, "the wrong line named"),
        (outcome, expected) => panic!("got {outcome:?}, expected {expected:?}"),
    }
}

enum Input {
    Users(Vec<u8>),
    Rooms(Vec<u8>),
    UserRecords {
        records: Vec<(String, String, String, String, u64)>,
        corruption: Corruption,
    },
    RoomRecords {
        records: Vec<(String, u32, u64)>,
        corruption: Corruption,
    },
}

// Layout: a mode byte (mod 4). 0 and 1: the rest is the contents of
// `users.jsonl` or `rooms.jsonl` (a hand-written seed is `\0` or `\1` and
// the file). 2 and 3: user or room records, and a corruption, read with
// `arbitrary`.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let input = match mode % 4 {
        0 => Input::Users(rest.to_vec()),
        1 => Input::Rooms(rest.to_vec()),
        2 => match Arbitrary::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok((records, corruption)) => Input::UserRecords {
                records,
                corruption,
            },
            Err(_) => return,
        },
        _ => match Arbitrary::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok((records, corruption)) => Input::RoomRecords {
                records,
                corruption,
            },
            Err(_) => return,
        },
    };
    match input {
        Input::Users(bytes) => {
            let _ = check(&bytes, replay_users);
        }
        Input::Rooms(bytes) => {
            let _ = check(&bytes, replay_rooms);
        }
        Input::UserRecords {
            records,
            corruption,
        } => {
            // A phone number or name seen before is a duplicate: replay must
            // stop there, so the records end before it.
            let mut tels = HashSet::new();
            let mut names = HashSet::new();
            let records: Vec<UserRecord> = records
                .into_iter()
                .map(
                    |(tel, name, password_hash, avatar_url, created_ms)| UserRecord {
                        tel,
                        name,
                        password_hash,
                        avatar_url,
                        created_ms,
                    },
                )
                .take_while(|r| tels.insert(r.tel.clone()) && names.insert(r.name.clone()))
                .collect();
            let lines: Vec<Vec<u8>> = records.iter().map(line).collect();
            let (bytes, expected) = corrupt(&lines, &corruption);
            expect(&bytes, &records, expected, replay_users);
        }
        Input::RoomRecords {
            records,
            corruption,
        } => {
            let mut names = HashSet::new();
            let records: Vec<RoomRecord> = records
                .into_iter()
                .map(|(name, capacity, created_ms)| RoomRecord {
                    name,
                    capacity,
                    created_ms,
                })
                .take_while(|r| names.insert(r.name.clone()))
                .collect();
            let lines: Vec<Vec<u8>> = records.iter().map(line).collect();
            let (bytes, expected) = corrupt(&lines, &corruption);
            expect(&bytes, &records, expected, replay_rooms);
        }
    }
});

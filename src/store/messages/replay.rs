//! The pure half of the message log: what a segment's bytes mean, what a
//! segment's file name means, and which records a room keeps.
//!
//! Nothing here touches a file, so the fuzz target and the unit tests drive
//! exactly the code that start-up and compaction run.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{MessageRecord, RoomLog};
use crate::store::replay::{decode, scan};
use crate::store::{BadLine, Scanned};

/// The longest line (without its newline) a segment may hold. Far above any
/// record the server makes (a 2000-character message escapes to at most
/// 12 KB), and it bounds what one malformed line can make replay hold.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One line of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// An accepted chat message.
    Message(MessageRecord),
    /// Only the room's last assigned seq: compaction writes it in place of a
    /// last message that retention drops, so the seq is never reused.
    LastSeq { room: String, seq: u64 },
}

impl LogLine {
    pub fn room(&self) -> &str {
        match self {
            LogLine::Message(m) => &m.room,
            LogLine::LastSeq { room, .. } => room,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            LogLine::Message(m) => m.seq,
            LogLine::LastSeq { seq, .. } => *seq,
        }
    }

    /// The line exactly as the log writes it, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding plain strings and integers into a Vec cannot fail.
        let _ = match self {
            LogLine::Message(m) => push_message(&mut buf, m),
            LogLine::LastSeq { room, seq } => push_last_seq(&mut buf, room, *seq),
        };
        buf
    }
}

// Field order and names of the file format; borrowed so that encoding a
// record copies nothing but bytes.
#[derive(Serialize)]
struct MessageOut<'a> {
    room: &'a str,
    seq: u64,
    ts: u64,
    user: &'a str,
    avatar: &'a str,
    msg: &'a str,
}

#[derive(Serialize)]
struct LastSeqOut<'a> {
    room: &'a str,
    seq: u64,
}

/// Appends `record`'s line (with its newline) to `buf`.
pub(super) fn push_message(buf: &mut Vec<u8>, record: &MessageRecord) -> serde_json::Result<()> {
    serde_json::to_writer(
        &mut *buf,
        &MessageOut {
            room: &record.room,
            seq: record.seq,
            ts: record.ts,
            user: &record.user_name,
            avatar: &record.user_avatar,
            msg: &record.msg,
        },
    )?;
    buf.push(b'\n');
    Ok(())
}

/// Appends a last-seq marker line (with its newline) to `buf`.
pub(super) fn push_last_seq(buf: &mut Vec<u8>, room: &str, seq: u64) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *buf, &LastSeqOut { room, seq })?;
    buf.push(b'\n');
    Ok(())
}

// Unknown fields are refused for the same reason as in users.jsonl: a field
// we do not know is data we would drop. The four message fields are all
// present (a message) or all absent (a marker); anything between is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLine {
    room: String,
    seq: u64,
    ts: Option<u64>,
    user: Option<String>,
    avatar: Option<String>,
    msg: Option<String>,
}

fn parse_line(bytes: &[u8]) -> Result<LogLine, String> {
    if bytes.len() > MAX_LINE_BYTES {
        return Err(format!(
            "line of {} bytes is longer than the {MAX_LINE_BYTES} a record may take",
            bytes.len()
        ));
    }
    let s: StoredLine = decode(bytes)?;
    if s.seq == 0 {
        return Err("seq 0 is never assigned (seqs start at 1)".to_owned());
    }
    match (s.ts, s.user, s.avatar, s.msg) {
        (Some(ts), Some(user_name), Some(user_avatar), Some(msg)) => {
            Ok(LogLine::Message(MessageRecord {
                room: s.room,
                seq: s.seq,
                ts,
                user_name,
                user_avatar,
                msg,
            }))
        }
        (None, None, None, None) => Ok(LogLine::LastSeq {
            room: s.room,
            seq: s.seq,
        }),
        _ => Err(
            "malformed record: a message needs ts, user, avatar and msg, a last-seq marker none"
                .to_owned(),
        ),
    }
}

/// Replays the bytes of one segment: every complete line must be a message
/// or a last-seq marker. A last line without its newline is reported in
/// `tail` (only the newest segment may have one: start-up decides).
pub fn replay_message_segment(bytes: &[u8]) -> Result<Scanned<LogLine>, BadLine> {
    scan(bytes, |line, _| parse_line(line))
}

/// [`replay_message_segment`] that also hands each parsed line and its bytes
/// (without the newline) to `each`, for the compactor and the size
/// accounting.
pub(super) fn scan_segment(
    bytes: &[u8],
    mut each: impl FnMut(&LogLine, &[u8]),
) -> Result<Scanned<LogLine>, BadLine> {
    scan(bytes, |line, _| {
        let parsed = parse_line(line)?;
        each(&parsed, line);
        Ok(parsed)
    })
}

/// Which segment numbers a file covers: `00000007.jsonl` is `7..=7`, the
/// output of compacting 3 to 7 is `00000003-00000007.jsonl`, `3..=7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentRange {
    pub first: u64,
    pub last: u64,
}

impl SegmentRange {
    pub fn single(n: u64) -> Self {
        SegmentRange { first: n, last: n }
    }

    pub fn file_name(&self) -> String {
        if self.first == self.last {
            format!("{:08}.jsonl", self.first)
        } else {
            format!("{:08}-{:08}.jsonl", self.first, self.last)
        }
    }

    /// Reads a name written by [`SegmentRange::file_name`]; `None` for any
    /// other name.
    pub fn parse(name: &str) -> Option<SegmentRange> {
        let stem = name.strip_suffix(".jsonl")?;
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match stem.split_once('-') {
            None => number(stem).map(SegmentRange::single),
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                (first < last).then_some(SegmentRange { first, last })
            }
        }
    }

    fn contains(&self, other: &SegmentRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

/// Splits the segments found in the directory into those to replay (in
/// order) and those a compaction's output already covers: the inputs it had
/// not yet deleted when the process stopped. Their retained records are all
/// in the covering file, which was durable before any input was deleted.
pub fn plan_replay(mut found: Vec<SegmentRange>) -> (Vec<SegmentRange>, Vec<SegmentRange>) {
    // Widest first among equal starts, so a covering file precedes what it
    // covers.
    found.sort_by(|a, b| a.first.cmp(&b.first).then(b.last.cmp(&a.last)));
    found.dedup();
    let mut live: Vec<SegmentRange> = Vec::with_capacity(found.len());
    let mut covered = Vec::new();
    for range in found {
        // Ranges are nested or disjoint, and sorted by start: only the last
        // kept range can contain this one.
        match live.last() {
            Some(outer) if outer.contains(&range) => covered.push(range),
            _ => live.push(range),
        }
    }
    (live, covered)
}

/// Builds each room's [`RoomLog`] from log lines given in any order, holding
/// at most `history_size` messages per room at any time.
///
/// A room keeps the messages with `seq > last_seq - history_size`: the same
/// window the compactor keeps, so a restart before or after a compaction
/// returns the same history. A seq seen twice (the inputs of an interrupted
/// compaction beside its output) counts once; the first message wins.
#[derive(Debug)]
pub struct HistoryBuilder {
    history_size: usize,
    rooms: HashMap<String, Building>,
}

#[derive(Debug, Default)]
struct Building {
    last_seq: u64,
    /// Sorted by seq, no two alike, at most `history_size` long.
    newest: VecDeque<MessageRecord>,
}

impl HistoryBuilder {
    pub fn new(history_size: usize) -> Self {
        HistoryBuilder {
            history_size,
            rooms: HashMap::new(),
        }
    }

    pub fn add(&mut self, line: LogLine) {
        let building = match self.rooms.get_mut(line.room()) {
            Some(b) => b,
            None => self.rooms.entry(line.room().to_owned()).or_default(),
        };
        building.last_seq = building.last_seq.max(line.seq());
        let LogLine::Message(record) = line else {
            return;
        };
        if self.history_size == 0 {
            return;
        }
        let newest = &mut building.newest;
        match newest.back() {
            // The usual case: segments are read in order.
            Some(back) if back.seq < record.seq => newest.push_back(record),
            None => newest.push_back(record),
            Some(_) => match newest.binary_search_by_key(&record.seq, |m| m.seq) {
                Ok(_) => return,
                Err(at) => newest.insert(at, record),
            },
        }
        if newest.len() > self.history_size {
            newest.pop_front();
        }
    }

    pub fn finish(self) -> HashMap<String, RoomLog> {
        let history_size = u64::try_from(self.history_size).unwrap_or(u64::MAX);
        self.rooms
            .into_iter()
            .map(|(name, b)| {
                let oldest_kept = b.last_seq.saturating_sub(history_size);
                let messages = b.newest.into_iter().filter(|m| m.seq > oldest_kept);
                let log = RoomLog {
                    last_seq: b.last_seq,
                    messages: messages.collect(),
                };
                (name, log)
            })
            .collect()
    }
}

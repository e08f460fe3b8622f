//! Start-up replay of the journal files: a linear scan, one line at a time.
//!
//! The parsing is a pure function over the file's bytes ([`replay_users`],
//! [`replay_rooms`]), so the fuzz target drives exactly the code start-up
//! runs; [`read_journal`] and [`cut_torn_tail`] are the only parts that touch
//! the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{RoomRecord, StoreError, UserRecord};

/// Where the intact part of a file ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Offset just past the last complete line.
    pub good_len: u64,
    /// Bytes after `good_len` with no closing newline.
    pub torn: u64,
}

/// The records of every complete line, in file order, and where they end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned<T> {
    pub records: Vec<T>,
    pub tail: Tail,
}

/// A complete line that does not hold an acceptable record: start-up stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

impl BadLine {
    fn in_file(self, path: &Path) -> StoreError {
        StoreError::Malformed {
            file: path.to_path_buf(),
            line: self.line,
            reason: self.reason,
        }
    }
}

// Mirrors of the public records that refuse unknown fields: a field we do
// not know is data we would drop on the floor, so it stops start-up instead.
// Converting with a full struct literal makes a field added to the public
// record fail to compile here until the mirror follows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredUser {
    tel: String,
    name: String,
    password_hash: String,
    avatar_url: String,
    created_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRoom {
    name: String,
    capacity: u32,
    created_ms: u64,
}

/// Replays the contents of `users.jsonl`: every complete line must be a user
/// record whose phone number and name are not taken by an earlier line.
pub fn replay_users(bytes: &[u8]) -> Result<Scanned<UserRecord>, BadLine> {
    let mut tels: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    scan(bytes, |bytes, line| {
        let s: StoredUser = decode(bytes)?;
        if let Some(first) = tels.get(&s.tel) {
            return Err(format!(
                "duplicate user: tel {:?} is already registered on line {first}",
                s.tel
            ));
        }
        if let Some(first) = names.get(&s.name) {
            return Err(format!(
                "duplicate user: name {:?} is already taken on line {first}",
                s.name
            ));
        }
        tels.insert(s.tel.clone(), line);
        names.insert(s.name.clone(), line);
        Ok(UserRecord {
            tel: s.tel,
            name: s.name,
            password_hash: s.password_hash,
            avatar_url: s.avatar_url,
            created_ms: s.created_ms,
        })
    })
}

/// Replays the contents of `rooms.jsonl`: every complete line must be a room
/// record whose name is not taken by an earlier line.
pub fn replay_rooms(bytes: &[u8]) -> Result<Scanned<RoomRecord>, BadLine> {
    let mut names: HashMap<String, usize> = HashMap::new();
    scan(bytes, |bytes, line| {
        let s: StoredRoom = decode(bytes)?;
        if let Some(first) = names.get(&s.name) {
            return Err(format!(
                "duplicate room: name {:?} already exists on line {first}",
                s.name
            ));
        }
        names.insert(s.name.clone(), line);
        Ok(RoomRecord {
            name: s.name,
            capacity: s.capacity,
            created_ms: s.created_ms,
        })
    })
}

/// Hands each complete line of `bytes` (without its newline) and its 1-based
/// number to `parse`, stopping at the first line `parse` refuses. The message
/// log's segments share it, so both journals cut torn tails by one rule.
pub(super) fn scan<T>(
    bytes: &[u8],
    mut parse: impl FnMut(&[u8], usize) -> Result<T, String>,
) -> Result<Scanned<T>, BadLine> {
    let mut records = Vec::new();
    let mut rest = bytes;
    let mut good_len: u64 = 0;
    let mut line: usize = 0;
    while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
        let (content, after) = rest.split_at(newline);
        line += 1;
        let record = parse(content, line).map_err(|reason| BadLine { line, reason })?;
        records.push(record);
        good_len += newline as u64 + 1;
        rest = after.get(1..).unwrap_or_default();
    }
    // What is left has no newline: a last line whose newline never made it
    // to disk. The writer appends line and newline in one write and
    // acknowledges only after fsync, so such a line was never acknowledged
    // and may be cut.
    Ok(Scanned {
        records,
        tail: Tail {
            good_len,
            torn: rest.len() as u64,
        },
    })
}

/// Reads a whole journal file into memory for replay. (The records it holds
/// are kept in memory anyway; the bytes go once replay is done.)
pub(super) fn read_journal(mut file: &File, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// [`replay_users`] over the file at `path`.
pub(super) fn scan_users(file: &File, path: &Path) -> Result<Scanned<UserRecord>, StoreError> {
    replay_users(&read_journal(file, path)?).map_err(|bad| bad.in_file(path))
}

/// [`replay_rooms`] over the file at `path`.
pub(super) fn scan_rooms(file: &File, path: &Path) -> Result<Scanned<RoomRecord>, StoreError> {
    replay_rooms(&read_journal(file, path)?).map_err(|bad| bad.in_file(path))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty line".to_owned());
    }
    // serde's derived structs also accept a JSON array of the field values;
    // we never write that form, so it is as foreign as any other garbage.
    if !trimmed.starts_with('{') {
        return Err("malformed record: expected a JSON object".to_owned());
    }
    serde_json::from_str(trimmed).map_err(|e| format!("malformed record: {e}"))
}

/// Cuts a torn last line found by the scan, durably, with a warning.
pub(super) fn cut_torn_tail(file: &File, path: &Path, tail: &Tail) -> Result<(), StoreError> {
    if tail.torn == 0 {
        return Ok(());
    }
    file.set_len(tail.good_len)
        .and_then(|()| file.sync_all())
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    log::warn!(
        "{}: cut a torn last line ({} bytes without a closing newline) at offset {}",
        path.display(),
        tail.torn,
        tail.good_len
    );
    Ok(())
}

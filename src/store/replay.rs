//! Start-up replay of the journal files: a linear scan, one line at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{RoomRecord, StoreError, UserRecord};

/// Where the intact part of a file ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tail {
    /// Offset just past the last complete line.
    pub good_len: u64,
    /// Bytes after `good_len` with no closing newline.
    pub torn: u64,
}

pub(super) struct Scanned<T> {
    pub records: Vec<T>,
    pub tail: Tail,
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

pub(super) fn scan_users(file: &File, path: &Path) -> Result<Scanned<UserRecord>, StoreError> {
    let mut tels: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    scan(file, path, |bytes, line| {
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

pub(super) fn scan_rooms(file: &File, path: &Path) -> Result<Scanned<RoomRecord>, StoreError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    scan(file, path, |bytes, line| {
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

/// Reads `file` from the start, handing each complete line (without its
/// newline) and its 1-based number to `parse`. Stops at the first line
/// `parse` refuses. Does not modify the file.
fn scan<T>(
    file: &File,
    path: &Path,
    mut parse: impl FnMut(&[u8], usize) -> Result<T, String>,
) -> Result<Scanned<T>, StoreError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    let mut records = Vec::new();
    let mut good_len: u64 = 0;
    let mut line: usize = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let Some(content) = buf.strip_suffix(b"\n") else {
            // EOF, possibly after a last line whose newline never made it to
            // disk. The writer appends line and newline in one write and
            // acknowledges only after fsync, so such a line was never
            // acknowledged and may be cut.
            return Ok(Scanned {
                records,
                tail: Tail {
                    good_len,
                    torn: n as u64,
                },
            });
        };
        line += 1;
        let record = parse(content, line).map_err(|reason| StoreError::Malformed {
            file: path.to_path_buf(),
            line,
            reason,
        })?;
        records.push(record);
        good_len += n as u64;
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
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

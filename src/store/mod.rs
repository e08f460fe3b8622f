//! Durable flat-file store (SPEC §6): `users.jsonl` and `rooms.jsonl`,
//! append-only JSON lines, replayed at start-up, written by one thread with
//! group commit.
//!
//! INTERFACE SKELETON — the implementation replaces the bodies.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One registered user, as stored in `users.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub tel: String,
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Empty when none was given.
    pub avatar_url: String,
    /// Unix milliseconds.
    pub created_ms: u64,
}

/// One room, as stored in `rooms.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub name: String,
    pub capacity: u32,
    /// Unix milliseconds.
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    User(UserRecord),
    Room(RoomRecord),
}

/// Everything replayed from the data directory, in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub users: Vec<UserRecord>,
    pub rooms: Vec<RoomRecord>,
}

/// Why the store could not be opened.
#[derive(Debug)]
pub enum StoreError {
    /// Another process holds the lock on this directory.
    Locked { dir: PathBuf },
    /// An I/O error on `path`.
    Io { path: PathBuf, source: std::io::Error },
    /// A line other than a torn last line does not parse.
    Malformed { file: PathBuf, line: usize, reason: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        unimplemented!()
    }
}

impl std::error::Error for StoreError {}

/// An opened, locked data directory. The lock is held until it is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates the directory if missing, takes the lock (refusing a second
    /// server), replays both files, cuts a torn last line with a warning.
    pub fn open(_path: &Path) -> Result<(DataDir, Replayed), StoreError> {
        unimplemented!()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Caller-chosen id of a batch of records submitted together.
pub type BatchId = u64;

/// The outcome of one submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub batch: BatchId,
    /// `Err` carries a description of the write or fsync failure; the batch's
    /// records are then not on disk (the file was cut back to its last good
    /// length).
    pub result: Result<(), String>,
    /// How long the write + fsync of the group this batch was in took.
    pub sync_micros: u64,
}

/// The writer thread: appends records, fsyncs, reports completions.
pub struct Writer {}

impl Writer {
    /// Starts the writer thread for `dir`. `notify` is called on the writer
    /// thread once per completed batch (the reactor sends it to itself and
    /// wakes its poller).
    pub fn spawn(
        _dir: &DataDir,
        _notify: Box<dyn Fn(Completion) + Send>,
    ) -> std::io::Result<Writer> {
        unimplemented!()
    }

    /// Queues a batch; never blocks on disk.
    pub fn submit(&self, _batch: BatchId, _records: Vec<Record>) {
        unimplemented!()
    }

    /// Finishes every queued batch (reporting each), then stops the thread.
    pub fn shutdown(self) {
        unimplemented!()
    }
}

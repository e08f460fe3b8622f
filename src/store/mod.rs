//! Durable flat-file store (SPEC §6): `users.jsonl` and `rooms.jsonl`,
//! append-only JSON lines, replayed at start-up, written by one thread with
//! group commit.
//!
//! Durability rule: a batch is reported `Ok` only after its bytes are written
//! and `sync_data` returned; a failed group is cut back off the files so that
//! nothing the caller was told failed can reappear at the next start.

mod messages;
mod replay;
mod writer;

pub use messages::{
    plan_replay, replay_message_segment, AppendId, HistoryBuilder, LogConfig, LogEvent, LogLine,
    LogWriter, MessageLog, MessageRecord, RoomLog, SegmentRange, MAX_LINE_BYTES, MESSAGES_DIR,
};
pub use replay::{replay_rooms, replay_users, BadLine, Scanned, Tail};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

/// File names inside the data directory.
pub const USERS_FILE: &str = "users.jsonl";
pub const ROOMS_FILE: &str = "rooms.jsonl";
pub const LOCK_FILE: &str = "LOCK";

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
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line other than a torn last line does not parse.
    Malformed {
        file: PathBuf,
        line: usize,
        reason: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked { dir } => {
                write!(
                    f,
                    "data directory {} is in use by another chatroom server",
                    dir.display()
                )?;
                // The variant has no room for the pid, so it is read when the
                // message is shown; the holder wrote it right after locking.
                match read_lock_holder(dir) {
                    Some(pid) => write!(f, " (pid {pid})")?,
                    None => write!(f, " (its pid is not recorded)")?,
                }
                write!(
                    f,
                    "; stop that server or choose another --data-dir (lock file {})",
                    dir.join(LOCK_FILE).display()
                )
            }
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Malformed { file, line, reason } => {
                write!(f, "{} line {line}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Best effort: the pid the current lock holder wrote into `LOCK`.
fn read_lock_holder(dir: &Path) -> Option<u32> {
    let file = File::open(dir.join(LOCK_FILE)).ok()?;
    let mut text = String::new();
    // A pid is short; anything longer is not ours and is not worth reading.
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// An opened, locked data directory. The lock is held until it is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the exclusive lock for as long as it is open. A running `Writer`
    /// keeps a duplicate of this handle, which keeps the lock alive until the
    /// writer thread has finished even if the `DataDir` is dropped first.
    lock: File,
    /// Lengths left after replay (and after cutting a torn tail): the writer
    /// starts its known-good lengths from these.
    users_len: u64,
    rooms_len: u64,
    /// Two writers appending to the same files would interleave lines and
    /// break each other's known-good lengths.
    writer_spawned: AtomicBool,
}

impl DataDir {
    /// Creates the directory if missing, takes the lock (refusing a second
    /// server), replays both files, cuts a torn last line with a warning.
    pub fn open(path: &Path) -> Result<(DataDir, Replayed), StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };

        let existed = path.is_dir();
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        if !existed {
            // The new directory's own entry must be durable too, or a crash
            // could lose the whole directory with acknowledged records in it.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(io_err(parent))?;
            }
        }

        let lock = lock_dir(path)?;

        let users_path = path.join(USERS_FILE);
        let rooms_path = path.join(ROOMS_FILE);
        let users_file = open_rw(&users_path).map_err(io_err(&users_path))?;
        let rooms_file = open_rw(&rooms_path).map_err(io_err(&rooms_path))?;
        // Newly created files are only reachable after a crash once the
        // directory itself has been synced.
        sync_dir(path).map_err(io_err(path))?;

        // Both files are checked before either is modified, so a refusal to
        // start leaves the directory exactly as it was found.
        let users = replay::scan_users(&users_file, &users_path)?;
        let rooms = replay::scan_rooms(&rooms_file, &rooms_path)?;
        replay::cut_torn_tail(&users_file, &users_path, &users.tail)?;
        replay::cut_torn_tail(&rooms_file, &rooms_path, &rooms.tail)?;

        let dir = DataDir {
            path: path.to_path_buf(),
            lock,
            users_len: users.tail.good_len,
            rooms_len: rooms.tail.good_len,
            writer_spawned: AtomicBool::new(false),
        };
        let replayed = Replayed {
            users: users.records,
            rooms: rooms.records,
        };
        Ok((dir, replayed))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let io_err = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    // Not truncated on open: until we hold the lock, its contents (the
    // holder's pid) belong to whoever does.
    let mut file = open_rw(&path).map_err(io_err)?;
    // Cargo.toml still says rust-version 1.80, but File::try_lock needs 1.89;
    // the brief fixes the toolchain at 1.95, so the MSRV field is what is stale.
    #[allow(clippy::incompatible_msrv)]
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    // The pid only improves the error another server prints; failing to
    // record it must not stop this one.
    let recorded = file
        .set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
    if let Err(e) = recorded {
        log::warn!("{}: cannot record our pid: {e}", path.display());
    }
    Ok(file)
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
    /// This batch opened its group: count the group's latency once, here.
    pub first_in_group: bool,
}

/// The writer thread: appends records, fsyncs, reports completions.
///
/// Dropping it without `shutdown` does the same as `shutdown`: every batch
/// already submitted is still written and reported.
pub struct Writer {
    /// `None` once shutdown has begun; dropping it is what tells the thread
    /// to finish the queue and exit.
    tx: Option<Sender<(BatchId, Vec<Record>)>>,
    thread: Option<JoinHandle<()>>,
}

#[cfg(test)]
mod tests;

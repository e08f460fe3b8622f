//! The on-disk message log behind per-room chat history (SPEC §8).
//!
//! Layout: `<data dir>/messages/` holds numbered segments of JSON lines,
//! `00000001.jsonl`, `00000002.jsonl`, …; one line per accepted message
//! (`{"room","seq","ts","user","avatar","msg"}`) or per last-seq marker
//! (`{"room","seq"}`). The newest segment is the head; the appender writes
//! only there and starts a new one past [`LogConfig::segment_bytes`].
//! Compaction rewrites a run of older segments into one file named after the
//! range it covers (`00000003-00000007.jsonl`), so a crash between writing
//! that file and deleting its inputs leaves nothing to guess: at the next
//! start the inputs are recognised by name as covered and deleted unread.
//!
//! Durability classes differ from `users.jsonl`: a message is reported
//! [`LogEvent::Written`] as soon as `write(2)` returned (so a `kill -9` loses
//! nothing anyone received) and fsynced by a second thread within
//! [`LogConfig::sync_interval`], so a write never waits behind an fsync.
//! A third thread compacts; nothing here runs on the reactor.
//!
//! Three threads, no shared lock on the write path:
//! - the appender owns the head file and reports `Written`/`WriteFailing`;
//! - the syncer fsyncs the head, the segments sealed since its last round and
//!   the directory, at most half an interval after the first unsynced write;
//! - the compactor owns the index of sealed segments and rewrites them.
//!
//! Bounded memory: replay and compaction hold one segment's bytes at a time,
//! and refuse a file larger than any this log writes
//! ([`LogConfig::read_limit`]); a line is at most [`MAX_LINE_BYTES`].
//!
//! The directory lock is `DataDir`'s: shut the [`LogWriter`] down before
//! dropping the `DataDir`, as the server does with the store writer.

mod appender;
mod compactor;
mod replay;
mod syncer;

pub use replay::{
    plan_replay, replay_message_segment, HistoryBuilder, LogLine, SegmentRange, MAX_LINE_BYTES,
};

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::replay::cut_torn_tail;
use super::{sync_dir, StoreError};
use appender::{Appender, CreateSegment, SegmentFile};
use compactor::{Compactor, SegmentMeta};
use syncer::{SyncShared, Syncer};

/// The directory inside the data directory.
pub const MESSAGES_DIR: &str = "messages";

/// Files of an interrupted compaction end in this; they are deleted at open.
const TEMP_SUFFIX: &str = ".tmp";

/// Whatever `segment_bytes` says, segments this large are read at open, so
/// lowering the setting between runs does not lock out existing data.
const MIN_READ_LIMIT: u64 = 64 << 20;

/// One accepted chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub room: String,
    /// Per room: 1, 2, 3, … assigned by the core.
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: u64,
    pub user_name: String,
    pub user_avatar: String,
    pub msg: String,
}

/// What replay found for one room: its last seq ever assigned and the
/// retained messages, oldest first (`len <= history_size`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomLog {
    pub last_seq: u64,
    pub messages: Vec<MessageRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Messages kept per room; 0 keeps none but still each room's last seq.
    pub history_size: usize,
    /// The head segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The longest a written message waits for its fsync (give or take the
    /// fsync's own duration, which is given half of it).
    pub sync_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            history_size: 1000,
            segment_bytes: 8 << 20,
            sync_interval: Duration::from_secs(1),
        }
    }
}

impl LogConfig {
    /// The largest segment file replay and compaction read. This log writes
    /// none larger than `segment_bytes` plus one line.
    pub fn read_limit(&self) -> u64 {
        self.segment_bytes.max(MIN_READ_LIMIT) + MAX_LINE_BYTES as u64 + 1
    }

    fn segment_bytes(&self) -> u64 {
        self.segment_bytes.max(1)
    }
}

/// Caller-chosen id of one `append`.
pub type AppendId = u64;

/// What the log's threads report, through the `notify` given to
/// [`MessageLog::spawn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// The records of append `id` are written to the OS (`write(2)`
    /// returned): they survive a crash of the process. Ids come in
    /// submission order.
    Written { id: AppendId },
    /// A write failed; the appender cut the file back and keeps retrying
    /// (with backoff up to 1 s); `Written` follows when it succeeds. Reported
    /// once per failure episode, with the first append not yet written.
    WriteFailing { id: AppendId, error: String },
    /// An fsync round finished: everything written before it began is
    /// durable.
    Synced { micros: u64 },
    /// A compaction finished: the segments it read and what replaced them.
    Compacted { bytes_before: u64, bytes_after: u64 },
}

/// The callback the caller gives [`MessageLog::spawn`].
pub type NotifyFn = Box<dyn Fn(LogEvent) + Send>;

/// Calls the caller's `notify` from any of the log's threads, one at a time.
#[derive(Clone)]
pub(super) struct Notify(Arc<Mutex<NotifyFn>>);

impl Notify {
    fn new(f: NotifyFn) -> Self {
        Notify(Arc::new(Mutex::new(f)))
    }

    pub(super) fn send(&self, event: LogEvent) {
        let f = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(event);
    }
}

/// An opened message log, replayed, not yet running.
#[derive(Debug)]
pub struct MessageLog {
    dir: PathBuf,
    config: LogConfig,
    head: File,
    head_meta: SegmentMeta,
    /// Every segment but the head, oldest first.
    sealed: Vec<SegmentMeta>,
}

impl MessageLog {
    /// Opens (creating if missing) `<data_dir>/messages/`, replays every
    /// segment, cuts a torn tail of the head segment, returns the retained
    /// history per room name.
    ///
    /// Every segment is checked before anything is changed, so a refusal to
    /// start leaves the directory as it was found (apart from the temporary
    /// file of an interrupted compaction, which nothing ever reads).
    pub fn open(
        data_dir: &Path,
        config: LogConfig,
    ) -> Result<(MessageLog, HashMap<String, RoomLog>), StoreError> {
        let dir = data_dir.join(MESSAGES_DIR);
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let existed = dir.is_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if !existed {
            sync_dir(data_dir).map_err(io_err(data_dir))?;
        }

        let mut found = Vec::new();
        let mut temps = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let parsed = name.to_str().map(|n| (n, SegmentRange::parse(n)));
            match parsed {
                Some((_, Some(range))) => found.push(range),
                Some((n, None)) if n.ends_with(TEMP_SUFFIX) => temps.push(entry.path()),
                _ => log::warn!(
                    "{}: not a segment of the message log; left alone",
                    entry.path().display()
                ),
            }
        }
        let next_number = found.iter().map(|r| r.last).max().unwrap_or(0) + 1;
        let (live, covered) = plan_replay(found);

        let mut history = HistoryBuilder::new(config.history_size);
        let mut metas = Vec::with_capacity(live.len());
        let mut head_tail = None;
        for (i, range) in live.iter().enumerate() {
            let path = dir.join(range.file_name());
            let bytes = read_segment(&path, config.read_limit()).map_err(io_err(&path))?;
            let mut meta = SegmentMeta::new(*range);
            let scanned =
                replay::scan_segment(&bytes, |line, raw| meta.note(line, raw)).map_err(|bad| {
                    StoreError::Malformed {
                        file: path.clone(),
                        line: bad.line,
                        reason: bad.reason,
                    }
                })?;
            let newest = i + 1 == live.len();
            if scanned.tail.torn > 0 && !newest {
                // Only the head is ever written without an fsync before a
                // later file exists; a torn line elsewhere is damage.
                return Err(StoreError::Malformed {
                    file: path,
                    line: scanned.records.len() + 1,
                    reason: "last line has no newline, and this is not the newest segment"
                        .to_owned(),
                });
            }
            meta.bytes = scanned.tail.good_len;
            for line in scanned.records {
                history.add(line);
            }
            if newest {
                head_tail = Some(scanned.tail);
            }
            metas.push(meta);
        }

        // Everything checked; now the changes.
        let mut dir_changed = false;
        for temp in &temps {
            fs::remove_file(temp).map_err(io_err(temp))?;
            log::warn!(
                "{}: removed the unfinished file of an interrupted compaction",
                temp.display()
            );
            dir_changed = true;
        }
        for range in &covered {
            let path = dir.join(range.file_name());
            fs::remove_file(&path).map_err(io_err(&path))?;
            log::warn!(
                "{}: removed; an interrupted compaction had already copied what it retains",
                path.display()
            );
            dir_changed = true;
        }

        let plain_head = metas.last().filter(|m| m.range.first == m.range.last);
        let head = match (plain_head, &head_tail) {
            (Some(meta), Some(tail)) => {
                let path = dir.join(meta.range.file_name());
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                cut_torn_tail(&file, &path, tail)?;
                file
            }
            // No segment yet, or the newest is a compaction's output: the
            // head is a fresh file after everything.
            _ => {
                let range = SegmentRange::single(next_number);
                let path = dir.join(range.file_name());
                let file = create_segment(&path).map_err(io_err(&path))?;
                metas.push(SegmentMeta::new(range));
                dir_changed = true;
                file
            }
        };
        if dir_changed {
            sync_dir(&dir).map_err(io_err(&dir))?;
        }
        let Some(head_meta) = metas.pop() else {
            // Both arms above leave the head's meta last.
            return Err(StoreError::Io {
                path: dir,
                source: io::Error::other("message log: no head segment"),
            });
        };
        let log = MessageLog {
            dir,
            config,
            head,
            head_meta,
            sealed: metas,
        };
        Ok((log, history.finish()))
    }

    /// The directory the segments are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the threads. `notify` is called on a background thread for
    /// every event; the reactor forwards it to itself and wakes.
    pub fn spawn(self, notify: Box<dyn Fn(LogEvent) + Send>) -> io::Result<LogWriter> {
        let head = self.head.try_clone()?;
        self.start(head, Box::new(|path: &Path| create_segment(path)), notify)
    }

    /// Starts the threads over a head file and a way to create segments that
    /// tests may replace to inject failures.
    pub(super) fn start<F: SegmentFile>(
        self,
        head: F,
        create: CreateSegment<F>,
        notify: Box<dyn Fn(LogEvent) + Send>,
    ) -> io::Result<LogWriter> {
        let notify = Notify::new(notify);
        let stopping = Arc::new(AtomicBool::new(false));
        let disk_bytes: u64 =
            self.sealed.iter().map(|m| m.bytes).sum::<u64>() + self.head_meta.bytes;
        let disk_bytes = Arc::new(AtomicU64::new(disk_bytes));
        // Compacted segments were fsynced when they were made.
        let plain = self
            .sealed
            .iter()
            .map(|m| m.range)
            .filter(|r| r.first == r.last);
        let sync = Arc::new(SyncShared::new(
            self.head_meta.range.first,
            plain.map(|r| r.first).collect(),
        ));
        let (sealed_tx, sealed_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();

        let compactor = Compactor::new(
            self.dir.clone(),
            &self.config,
            self.sealed,
            Arc::clone(&stopping),
            Arc::clone(&disk_bytes),
            notify.clone(),
        );
        let syncer = Syncer::new(
            self.dir.clone(),
            self.config.sync_interval,
            Arc::clone(&sync),
            notify.clone(),
        );
        let appender = Appender::new(
            self.dir,
            &self.config,
            head,
            self.head_meta,
            create,
            Arc::clone(&sync),
            sealed_tx,
            Arc::clone(&stopping),
            Arc::clone(&disk_bytes),
            notify,
        );

        let mut writer = LogWriter {
            tx: Some(tx),
            appender: None,
            syncer: None,
            compactor: None,
            sync,
            stopping,
            disk_bytes,
        };
        // Started in this order so that an error part-way leaves only threads
        // that the writer's Drop knows how to stop.
        writer.compactor = Some(
            std::thread::Builder::new()
                .name("chatroom-compact".to_owned())
                .spawn(move || compactor.run(sealed_rx))?,
        );
        writer.syncer = Some(
            std::thread::Builder::new()
                .name("chatroom-fsync".to_owned())
                .spawn(move || syncer.run())?,
        );
        writer.appender = Some(
            std::thread::Builder::new()
                .name("chatroom-msglog".to_owned())
                .spawn(move || appender.run(rx))?,
        );
        Ok(writer)
    }
}

/// The running log. Dropping it does the same as [`LogWriter::shutdown`].
pub struct LogWriter {
    /// `None` once shutdown has begun; dropping it tells the appender to
    /// finish the queue and exit.
    tx: Option<Sender<(AppendId, Vec<MessageRecord>)>>,
    appender: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
    sync: Arc<SyncShared>,
    /// Tells the compactor to abandon its work and the appender to stop
    /// retrying a failing disk after a while.
    stopping: Arc<AtomicBool>,
    disk_bytes: Arc<AtomicU64>,
}

impl LogWriter {
    /// Queues the records of one append, in seq order per room. Never blocks
    /// on disk.
    pub fn append(&self, id: AppendId, records: Vec<MessageRecord>) {
        let sent = match &self.tx {
            Some(tx) => tx.send((id, records)).is_ok(),
            None => false,
        };
        if !sent {
            // Only reachable if the appender died, i.e. `notify` panicked.
            log::error!("message log appender is gone; append {id} will never be written");
        }
    }

    /// Bytes the segments take on disk now (for the history bytes metric).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// Writes everything queued, fsyncs, stops the threads.
    pub fn shutdown(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        drop(self.tx.take());
        join(self.appender.take(), "message log appender");
        // Only now: the appender's last writes must be in the final fsync.
        self.sync.stop();
        join(self.syncer.take(), "message log syncer");
        join(self.compactor.take(), "message log compactor");
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn join(thread: Option<JoinHandle<()>>, what: &str) {
    if let Some(thread) = thread {
        if thread.join().is_err() {
            log::error!("{what} thread panicked");
        }
    }
}

/// A new, empty segment. `create_new`: a file already there is one this log
/// did not expect, and appending after its contents would hide that.
fn create_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create_new(true).open(path)
}

/// Reads a whole segment, refusing one larger than `limit` before reading
/// it (and reading at most `limit` bytes should it grow meanwhile).
pub(super) fn read_segment(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "segment of {len} bytes is larger than any this server writes ({limit}); \
                 move it out of the directory to start"
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;

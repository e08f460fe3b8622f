//! The appender thread: writes each group of appends to the head segment,
//! reports `Written` as soon as `write(2)` returned, and starts a new
//! segment past the size limit. It never fsyncs a successful write: that is
//! the syncer's job, on its own handle.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compactor::SegmentMeta;
use super::replay::{push_last_seq, push_message, MAX_LINE_BYTES};
use super::syncer::SyncShared;
use super::{AppendId, LogConfig, LogEvent, MessageRecord, Notify, SegmentRange};

/// The two operations the appender needs from the head segment. `File` is
/// the only production implementation; tests wrap it to inject failures.
pub(in crate::store) trait SegmentFile: Send + 'static {
    /// Appends all of `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Durably shortens the file to `len` (after a failed append).
    fn cut(&mut self, len: u64) -> io::Result<()>;
}

impl SegmentFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        // Only on the failure path: the fsync keeps debris of a failed write
        // from coming back after a crash, where it would sit mid-file.
        self.set_len(len)?;
        self.sync_all()
    }
}

/// How the appender makes the next segment (tests inject failures here).
pub(in crate::store) type CreateSegment<F> = Box<dyn FnMut(&Path) -> io::Result<F> + Send>;

/// First and longest pause between retries of a failing write.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a failing write is still retried once shutdown has begun (the
/// server must exit within 5 s); what is left then was never reported
/// `Written`, so nobody received it.
const GIVE_UP_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// Shutdown came while the disk was failing; the rest is abandoned.
struct GaveUp;

pub(super) struct Appender<F> {
    dir: PathBuf,
    segment_bytes: u64,
    head: F,
    /// The head's records so far; handed to the compactor when it closes.
    head_meta: SegmentMeta,
    /// Length of the head up to its last successful write. The file's own
    /// end is not trusted for this: after a failed write it may lie past
    /// partial data.
    head_len: u64,
    /// A failed write could not be cut back yet; nothing may be appended
    /// until it is, or the new lines would land after the debris.
    needs_cut: bool,
    create: CreateSegment<F>,
    sync: Arc<SyncShared>,
    sealed: Sender<SegmentMeta>,
    stopping: Arc<AtomicBool>,
    disk_bytes: Arc<AtomicU64>,
    notify: Notify,
    /// In a failure episode: `WriteFailing` was reported.
    failing: bool,
}

impl<F: SegmentFile> Appender<F> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dir: PathBuf,
        config: &LogConfig,
        head: F,
        head_meta: SegmentMeta,
        create: CreateSegment<F>,
        sync: Arc<SyncShared>,
        sealed: Sender<SegmentMeta>,
        stopping: Arc<AtomicBool>,
        disk_bytes: Arc<AtomicU64>,
        notify: Notify,
    ) -> Self {
        Appender {
            dir,
            segment_bytes: config.segment_bytes(),
            head,
            head_len: head_meta.bytes,
            head_meta,
            needs_cut: false,
            create,
            sync,
            sealed,
            stopping,
            disk_bytes,
            notify,
            failing: false,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<(AppendId, Vec<MessageRecord>)>) {
        // `recv` keeps returning what is queued after the sender is dropped,
        // so shutdown needs no extra signal to drain the queue.
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            let first_id = group[0].0;
            let records = group.iter().flat_map(|(_, records)| records);
            if self.write_group(first_id, records).is_err() {
                let lost: usize = group.iter().map(|(_, r)| r.len()).sum::<usize>()
                    + rx.try_iter().map(|(_, r)| r.len()).sum::<usize>();
                log::error!(
                    "{}: shutting down with the disk failing: {lost} messages not written \
                     (none of them was delivered)",
                    self.dir.display()
                );
                return;
            }
            for (id, _) in group {
                self.notify.send(LogEvent::Written { id });
            }
        }
    }

    /// Writes the records, starting new segments as they fill; returns once
    /// all are written (retrying failures), or gives up at shutdown.
    fn write_group<'a>(
        &mut self,
        first_id: AppendId,
        records: impl Iterator<Item = &'a MessageRecord>,
    ) -> Result<(), GaveUp> {
        let mut buf = Vec::new();
        for record in records {
            let start = buf.len();
            let encoded = push_message(&mut buf, record);
            if encoded.is_err() || buf.len() - start > MAX_LINE_BYTES + 1 {
                // Replay would refuse the line and stop start-up; keeping
                // the seq is what matters for the room, so a marker takes
                // its place. The core's limits keep this from happening.
                log::error!(
                    "room {:?} message {}: a {}-byte line is over the log's limit of \
                     {MAX_LINE_BYTES}; only its seq is stored",
                    record.room,
                    record.seq,
                    buf.len() - start
                );
                buf.truncate(start);
                let _ = push_last_seq(&mut buf, &record.room, record.seq);
            }
            let line_len = (buf.len() - start) as u64;
            let before = self.head_len + start as u64;
            if before > 0 && before + line_len > self.segment_bytes {
                // The line would overflow the head: what precedes it goes
                // there, the line starts the next segment.
                let line = buf.split_off(start);
                self.write_retrying(first_id, &buf)?;
                self.roll_retrying(first_id)?;
                buf = line;
            }
            // A marker stands for the same room and seq, one line either way.
            self.head_meta.note_raw(&record.room, record.seq, line_len);
        }
        self.write_retrying(first_id, &buf)
    }

    fn write_retrying(&mut self, id: AppendId, bytes: &[u8]) -> Result<(), GaveUp> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.retrying(id, |me| me.try_write(bytes))
    }

    fn roll_retrying(&mut self, id: AppendId) -> Result<(), GaveUp> {
        self.retrying(id, Self::try_roll)
    }

    /// Runs `attempt` until it succeeds, reporting the first failure and
    /// backing off, up to [`GIVE_UP_AT_SHUTDOWN`] after shutdown began.
    fn retrying(
        &mut self,
        id: AppendId,
        mut attempt: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), GaveUp> {
        let mut backoff = FIRST_BACKOFF;
        let mut stop_seen: Option<Instant> = None;
        loop {
            match attempt(self) {
                Ok(()) => {
                    if self.failing {
                        log::info!("{}: writing works again", self.dir.display());
                        self.failing = false;
                    }
                    return Ok(());
                }
                Err(error) => {
                    if !self.failing {
                        log::error!("{error}; retrying");
                        self.failing = true;
                        self.notify.send(LogEvent::WriteFailing { id, error });
                    }
                    if self.stopping.load(Ordering::SeqCst) {
                        let since = *stop_seen.get_or_insert_with(Instant::now);
                        if since.elapsed() >= GIVE_UP_AT_SHUTDOWN {
                            return Err(GaveUp);
                        }
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn label(&self) -> String {
        self.dir
            .join(self.head_meta.range.file_name())
            .display()
            .to_string()
    }

    fn try_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.needs_cut {
            self.head.cut(self.head_len).map_err(|e| {
                format!(
                    "{}: cannot cut back an earlier failed write, so nothing can be written: {e}",
                    self.label()
                )
            })?;
            self.needs_cut = false;
        }
        if let Err(e) = self.head.append(bytes) {
            let msg = format!("{}: write failed: {e}", self.label());
            if let Err(cut) = self.head.cut(self.head_len) {
                log::error!(
                    "{}: cannot cut back to {} bytes after a failed write: {cut}; \
                     retrying before the next write",
                    self.label(),
                    self.head_len
                );
                self.needs_cut = true;
            }
            return Err(msg);
        }
        self.head_len += bytes.len() as u64;
        self.head_meta.bytes = self.head_len;
        self.disk_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.sync.written();
        Ok(())
    }

    /// Closes the head and starts the next segment.
    fn try_roll(&mut self) -> Result<(), String> {
        // Debris after the good length would be sealed into the old segment.
        if self.needs_cut {
            self.head.cut(self.head_len).map_err(|e| {
                format!(
                    "{}: cannot cut back an earlier failed write: {e}",
                    self.label()
                )
            })?;
            self.needs_cut = false;
        }
        let old = self.head_meta.range.first;
        let range = SegmentRange::single(old + 1);
        let path = self.dir.join(range.file_name());
        let file = (self.create)(&path)
            .map_err(|e| format!("{}: cannot create the next segment: {e}", path.display()))?;
        self.head = file;
        self.head_len = 0;
        let sealed = std::mem::replace(&mut self.head_meta, SegmentMeta::new(range));
        self.sync.rolled(old, range.first);
        // The compactor may have stopped at shutdown; the segment stays and
        // is picked up at the next start.
        let _ = self.sealed.send(sealed);
        Ok(())
    }
}

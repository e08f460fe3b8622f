//! The writer thread: group commit, fsync, and cutting back failed groups.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

use serde::Serialize;

use super::{BatchId, Completion, DataDir, Record, Writer, ROOMS_FILE, USERS_FILE};

type Batch = (BatchId, Vec<Record>);

/// The three operations the writer needs from a journal file. `File` is the
/// only production implementation; tests wrap it to inject disk failures.
pub(super) trait JournalFile: Send + 'static {
    /// Appends all of `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Durably shortens the file to `len`.
    fn cut(&mut self, len: u64) -> io::Result<()>;
}

impl JournalFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_all()
    }
}

/// One journal file as the writer sees it.
pub(super) struct Journal<F> {
    file: F,
    /// For error messages.
    label: String,
    /// Length covered by successful fsyncs. The append position is not
    /// trusted for this: after a failed write it may lie past partial data.
    good_len: u64,
    /// A failed group could not be cut back yet; nothing may be appended
    /// until it is, or the new lines would land after the debris.
    needs_cut: bool,
}

impl<F: JournalFile> Journal<F> {
    pub(super) fn new(file: F, label: String, good_len: u64) -> Self {
        Journal {
            file,
            label,
            good_len,
            needs_cut: false,
        }
    }

    fn cut_back(&mut self) -> io::Result<()> {
        match self.file.cut(self.good_len) {
            Ok(()) => {
                self.needs_cut = false;
                Ok(())
            }
            Err(e) => {
                self.needs_cut = true;
                Err(e)
            }
        }
    }
}

const USERS: usize = 0;
const ROOMS: usize = 1;

/// State owned by the writer thread.
struct Committer<F> {
    journals: [Journal<F>; 2],
    /// A duplicate of the directory lock: keeps another server out until the
    /// last byte is written, even if the `DataDir` is dropped first.
    _lock: Option<File>,
}

impl<F: JournalFile> Committer<F> {
    /// Writes and fsyncs every record of `group`: all of them or none.
    fn commit(&mut self, group: &[Batch]) -> Result<(), String> {
        let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        for record in group.iter().flat_map(|(_, records)| records) {
            match record {
                Record::User(u) => push_line(&mut bufs[USERS], u)?,
                Record::Room(r) => push_line(&mut bufs[ROOMS], r)?,
            }
        }
        if bufs.iter().all(Vec::is_empty) {
            return Ok(());
        }

        for journal in self.journals.iter_mut().filter(|j| j.needs_cut) {
            journal.cut_back().map_err(|e| {
                let msg = format!(
                    "{}: cannot cut back an earlier failed write, so nothing can be written: {e}",
                    journal.label
                );
                log::error!("{msg}");
                msg
            })?;
            log::info!(
                "{}: cut back to {} bytes after an earlier failure",
                journal.label,
                journal.good_len
            );
        }

        let touched = [!bufs[USERS].is_empty(), !bufs[ROOMS].is_empty()];
        let outcome = self.write_and_sync(&bufs, touched);
        match outcome {
            Ok(()) => {
                for (journal, buf) in self.journals.iter_mut().zip(&bufs) {
                    journal.good_len += buf.len() as u64;
                }
                Ok(())
            }
            Err(msg) => {
                log::error!("{msg}");
                // Every touched file goes back, including one whose own write
                // and fsync succeeded: its records belong to batches that are
                // now reported as failed and must not turn up at the next
                // start.
                for (journal, _) in self.journals.iter_mut().zip(touched).filter(|(_, t)| *t) {
                    if let Err(e) = journal.cut_back() {
                        log::error!(
                            "{}: cannot cut back to {} bytes after a failed write: {e}; \
                             retrying before the next write",
                            journal.label,
                            journal.good_len
                        );
                    }
                }
                Err(msg)
            }
        }
    }

    fn write_and_sync(&mut self, bufs: &[Vec<u8>; 2], touched: [bool; 2]) -> Result<(), String> {
        for ((journal, buf), _) in self
            .journals
            .iter_mut()
            .zip(bufs)
            .zip(touched)
            .filter(|(_, t)| *t)
        {
            journal
                .file
                .append(buf)
                .map_err(|e| format!("{}: write failed: {e}", journal.label))?;
        }
        for (journal, _) in self.journals.iter_mut().zip(touched).filter(|(_, t)| *t) {
            journal
                .file
                .sync()
                .map_err(|e| format!("{}: fsync failed: {e}", journal.label))?;
        }
        Ok(())
    }
}

fn push_line<T: Serialize>(buf: &mut Vec<u8>, record: &T) -> Result<(), String> {
    serde_json::to_writer(&mut *buf, record).map_err(|e| format!("cannot encode record: {e}"))?;
    buf.push(b'\n');
    Ok(())
}

fn run<F: JournalFile>(
    mut committer: Committer<F>,
    rx: Receiver<Batch>,
    notify: Box<dyn Fn(Completion) + Send>,
) {
    // `recv` keeps returning what is queued after the sender is dropped, so
    // shutdown needs no extra signal to drain the queue.
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());

        let started = Instant::now();
        let result = committer.commit(&group);
        let sync_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);

        for (index, (batch, _)) in group.into_iter().enumerate() {
            notify(Completion {
                batch,
                result: result.clone(),
                sync_micros,
                first_in_group: index == 0,
            });
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // No `create`: `DataDir::open` made and replayed the file; if it has gone
    // since, appending to a fresh empty one would hide that.
    OpenOptions::new().append(true).open(path)
}

impl Writer {
    /// Starts the writer thread for `dir`. `notify` is called on the writer
    /// thread once per completed batch (the reactor sends it to itself and
    /// wakes its poller).
    pub fn spawn(dir: &DataDir, notify: Box<dyn Fn(Completion) + Send>) -> io::Result<Writer> {
        if dir.writer_spawned.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: a store writer is already running", dir.path.display()),
            ));
        }
        let result = Self::spawn_files(dir, notify);
        if result.is_err() {
            dir.writer_spawned.store(false, Ordering::SeqCst);
        }
        result
    }

    fn spawn_files(dir: &DataDir, notify: Box<dyn Fn(Completion) + Send>) -> io::Result<Writer> {
        let mut journals = Vec::with_capacity(2);
        for (name, replayed_len) in [(USERS_FILE, dir.users_len), (ROOMS_FILE, dir.rooms_len)] {
            let path = dir.path.join(name);
            let label = path.display().to_string();
            let file = open_append(&path).map_err(|e| annotate(&label, e))?;
            let len = file.metadata().map_err(|e| annotate(&label, e))?.len();
            if len != replayed_len {
                // The lock should make this impossible; if it happens anyway
                // our idea of the last good length is wrong, and cutting back
                // to it could destroy records.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{label}: changed since it was replayed ({replayed_len} -> {len} bytes)"
                    ),
                ));
            }
            journals.push(Journal::new(file, label, len));
        }
        let [users, rooms]: [Journal<File>; 2] = journals
            .try_into()
            .map_err(|_| io::Error::other("store writer: expected two journals"))?;
        let lock = dir.lock.try_clone()?;
        Self::start([users, rooms], Some(lock), notify)
    }

    /// Starts the thread over already opened journals.
    pub(super) fn start<F: JournalFile>(
        journals: [Journal<F>; 2],
        lock: Option<File>,
        notify: Box<dyn Fn(Completion) + Send>,
    ) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            journals,
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("chatroom-store".to_owned())
            .spawn(move || run(committer, rx, notify))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a batch; never blocks on disk.
    pub fn submit(&self, batch: BatchId, records: Vec<Record>) {
        let sent = match &self.tx {
            Some(tx) => tx.send((batch, records)).is_ok(),
            None => false,
        };
        if !sent {
            // Only reachable if the thread died, i.e. `notify` panicked.
            log::error!("store writer thread is gone; batch {batch} will never complete");
        }
    }

    /// Finishes every queued batch (reporting each), then stops the thread.
    pub fn shutdown(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("store writer thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn annotate(label: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{label}: {e}"))
}

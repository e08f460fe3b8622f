//! The fsync thread: makes what the appender wrote durable within the sync
//! interval, on its own file handles, so the appender never waits for it.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{LogEvent, Notify, SegmentRange};

/// What the appender tells the syncer. The lock is only ever held to read or
/// update these few fields, never across a write or an fsync.
pub(super) struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
}

struct SyncState {
    /// When the oldest write not yet covered by an fsync round happened.
    dirty_since: Option<Instant>,
    /// Number of the head segment.
    head: u64,
    /// Segments closed since the last round; their last writes may not be
    /// durable yet.
    sealed: Vec<u64>,
    /// A segment was created since the last round.
    dir_dirty: bool,
    stopping: bool,
}

impl SyncShared {
    /// The first round covers what a previous process wrote: one killed
    /// before its own syncer came round left it to the kernel's writeback.
    pub(super) fn new(head: u64, older: Vec<u64>) -> Self {
        SyncShared {
            state: Mutex::new(SyncState {
                dirty_since: Some(Instant::now()),
                head,
                sealed: older,
                dir_dirty: true,
                stopping: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a write to the head.
    pub(super) fn written(&self) {
        let mut state = self.lock();
        if state.dirty_since.is_none() {
            state.dirty_since = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// After the appender closed segment `old` and created `new`.
    pub(super) fn rolled(&self, old: u64, new: u64) {
        let mut state = self.lock();
        state.sealed.push(old);
        state.head = new;
        state.dir_dirty = true;
        if state.dirty_since.is_none() {
            state.dirty_since = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// The appender has finished: one last round for whatever is dirty.
    pub(super) fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_one();
    }
}

/// What one fsync round covers.
struct Round {
    head: u64,
    sealed: Vec<u64>,
    dir: bool,
}

pub(super) struct Syncer {
    dir: PathBuf,
    /// A round starts this long after the first write it covers: half the
    /// interval, leaving the other half for the fsync itself.
    delay: Duration,
    shared: Arc<SyncShared>,
    notify: Notify,
    /// The head's handle, kept across rounds.
    head: Option<(u64, File)>,
    /// In a failure episode: logged once, not per round.
    failing: bool,
}

impl Syncer {
    pub(super) fn new(
        dir: PathBuf,
        interval: Duration,
        shared: Arc<SyncShared>,
        notify: Notify,
    ) -> Self {
        Syncer {
            dir,
            delay: interval / 2,
            shared,
            notify,
            head: None,
            failing: false,
        }
    }

    pub(super) fn run(mut self) {
        while let Some(round) = self.next_round() {
            let started = Instant::now();
            match self.sync(&round) {
                Ok(()) => {
                    if self.failing {
                        log::info!("{}: fsync works again", self.dir.display());
                        self.failing = false;
                    }
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.notify.send(LogEvent::Synced { micros });
                }
                Err(e) => {
                    if !self.failing {
                        log::error!("{e}; retrying");
                        self.failing = true;
                    }
                    let mut state = self.shared.lock();
                    if state.stopping {
                        log::error!(
                            "{e}; giving up at shutdown: the last writes may not be durable"
                        );
                        return;
                    }
                    state.sealed.extend(round.sealed);
                    state.dir_dirty |= round.dir;
                    state.dirty_since.get_or_insert_with(Instant::now);
                }
            }
        }
    }

    /// Waits until a round is due; `None` once stopped with nothing dirty.
    fn next_round(&self) -> Option<Round> {
        let mut state = self.shared.lock();
        loop {
            match state.dirty_since {
                Some(since) => {
                    let due = since + self.delay;
                    let now = Instant::now();
                    if state.stopping || now >= due {
                        state.dirty_since = None;
                        return Some(Round {
                            head: state.head,
                            sealed: std::mem::take(&mut state.sealed),
                            dir: std::mem::take(&mut state.dir_dirty),
                        });
                    }
                    state = self
                        .shared
                        .wake
                        .wait_timeout(state, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None if state.stopping => return None,
                None => {
                    state = self
                        .shared
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
    }

    fn sync(&mut self, round: &Round) -> Result<(), String> {
        for &n in &round.sealed {
            let path = self.dir.join(SegmentRange::single(n).file_name());
            let result = match &self.head {
                // The head just closed: its handle is still the one kept.
                Some((kept, file)) if *kept == n => file.sync_data(),
                _ => match File::open(&path) {
                    Ok(file) => file.sync_data(),
                    // Compacted away already; the compactor synced what
                    // replaced it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                },
            };
            result.map_err(|e| format!("{}: fsync failed: {e}", path.display()))?;
        }

        let path = self.dir.join(SegmentRange::single(round.head).file_name());
        if self
            .head
            .as_ref()
            .is_none_or(|(kept, _)| *kept != round.head)
        {
            let file = File::open(&path)
                .map_err(|e| format!("{}: cannot open for fsync: {e}", path.display()))?;
            self.head = Some((round.head, file));
        }
        if let Some((_, file)) = &self.head {
            file.sync_data()
                .map_err(|e| format!("{}: fsync failed: {e}", path.display()))?;
        }

        if round.dir {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    format!("{}: fsync of the directory failed: {e}", self.dir.display())
                })?;
        }
        Ok(())
    }
}

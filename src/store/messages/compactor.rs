//! The compaction thread: keeps the segments' size proportional to what
//! retention keeps, by rewriting runs of closed segments with only their
//! retained lines.
//!
//! Crash safety: a run's output is written to a temporary file, fsynced,
//! renamed to the name of the range it covers, and the directory fsynced,
//! before any input is deleted. A crash before the rename leaves a `.tmp`
//! file (deleted at open); a crash after it leaves inputs whose range the
//! output's name covers (deleted at open without being read).
//!
//! Durability of what is dropped: a line is dropped only because a newer
//! seq of its room exists in a closed segment, and every closed segment is
//! fsynced before a pass drops anything. So a power loss can cost at most
//! the unsynced writes, never a room's last seq that was already durable.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::replay::{push_last_seq, scan_segment};
use super::{
    read_segment, sync_dir, LogConfig, LogEvent, LogLine, Notify, SegmentRange, TEMP_SUFFIX,
};

/// What one segment holds of one room: enough to estimate how much of it
/// retention keeps without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: u64,
    last: u64,
    bytes: u64,
}

/// A segment as the compactor sees it.
#[derive(Debug)]
pub(in crate::store) struct SegmentMeta {
    pub(super) range: SegmentRange,
    /// Length of its complete lines.
    pub(super) bytes: u64,
    spans: HashMap<String, Span>,
}

impl SegmentMeta {
    pub(super) fn new(range: SegmentRange) -> Self {
        SegmentMeta {
            range,
            bytes: 0,
            spans: HashMap::new(),
        }
    }

    /// Counts one line (`raw` without its newline).
    pub(super) fn note(&mut self, line: &LogLine, raw: &[u8]) {
        self.note_raw(line.room(), line.seq(), raw.len() as u64 + 1);
    }

    pub(super) fn note_raw(&mut self, room: &str, seq: u64, len: u64) {
        match self.spans.get_mut(room) {
            Some(span) => {
                span.first = span.first.min(seq);
                span.last = span.last.max(seq);
                span.bytes += len;
            }
            None => {
                let span = Span {
                    first: seq,
                    last: seq,
                    bytes: len,
                };
                self.spans.insert(room.to_owned(), span);
            }
        }
    }
}

struct Sealed {
    meta: SegmentMeta,
    /// Known to be durable (fsynced by this thread, or its own output).
    synced: bool,
}

enum Stop {
    /// Shutdown began; the pass was abandoned cleanly.
    Stopping,
    Failed(String),
}

impl From<String> for Stop {
    fn from(msg: String) -> Self {
        Stop::Failed(msg)
    }
}

pub(super) struct Compactor {
    dir: PathBuf,
    history_size: u64,
    segment_bytes: u64,
    read_limit: u64,
    /// Every closed segment, by its first number.
    segments: BTreeMap<u64, Sealed>,
    /// Each room's highest seq in a closed segment. The head may hold newer
    /// ones; not knowing them only makes compaction keep a little more.
    last_seq: HashMap<String, u64>,
    /// Inputs of a finished compaction whose deletion failed: harmless (the
    /// output's name covers them) but still taking space.
    leftovers: Vec<PathBuf>,
    stopping: Arc<AtomicBool>,
    disk_bytes: Arc<AtomicU64>,
    notify: Notify,
}

/// One output being written.
struct Output {
    range: SegmentRange,
    inputs: Vec<SegmentRange>,
    input_bytes: u64,
    /// Created on the first retained line: a run that keeps nothing writes
    /// no file.
    file: Option<(PathBuf, BufWriter<File>)>,
    meta: SegmentMeta,
}

impl Output {
    fn new(range: SegmentRange) -> Self {
        Output {
            range,
            inputs: Vec::new(),
            input_bytes: 0,
            file: None,
            meta: SegmentMeta::new(range),
        }
    }
}

impl Compactor {
    pub(super) fn new(
        dir: PathBuf,
        config: &LogConfig,
        sealed: Vec<SegmentMeta>,
        stopping: Arc<AtomicBool>,
        disk_bytes: Arc<AtomicU64>,
        notify: Notify,
    ) -> Self {
        let mut compactor = Compactor {
            dir,
            history_size: u64::try_from(config.history_size).unwrap_or(u64::MAX),
            segment_bytes: config.segment_bytes(),
            read_limit: config.read_limit(),
            segments: BTreeMap::new(),
            last_seq: HashMap::new(),
            leftovers: Vec::new(),
            stopping,
            disk_bytes,
            notify,
        };
        for meta in sealed {
            // From an earlier run: durable only once this thread syncs them.
            compactor.add(meta, false);
        }
        compactor
    }

    pub(super) fn run(mut self, sealed: Receiver<SegmentMeta>) {
        self.maybe_compact();
        while let Ok(meta) = sealed.recv() {
            self.add(meta, false);
            for meta in sealed.try_iter() {
                self.add(meta, false);
            }
            self.maybe_compact();
        }
    }

    fn add(&mut self, meta: SegmentMeta, synced: bool) {
        for (room, span) in &meta.spans {
            match self.last_seq.get_mut(room) {
                Some(last) => *last = (*last).max(span.last),
                None => {
                    self.last_seq.insert(room.clone(), span.last);
                }
            }
        }
        self.segments
            .insert(meta.range.first, Sealed { meta, synced });
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The first seq of `room` that retention keeps, and its last seq.
    fn window(&self, room: &str, seen: u64) -> (u64, u64) {
        let last = self.last_seq.get(room).copied().unwrap_or(seen).max(seen);
        (last.saturating_sub(self.history_size) + 1, last)
    }

    /// Estimated bytes of `meta` that retention keeps: the kept part of
    /// each room's seq span, in proportion, or a marker where only the last
    /// seq stays.
    fn live_bytes(&self, meta: &SegmentMeta) -> u64 {
        meta.spans
            .iter()
            .map(|(room, span)| {
                let (keep_from, last) = self.window(room, span.last);
                if span.last >= keep_from {
                    let kept = span.last - span.first.max(keep_from) + 1;
                    let all = span.last - span.first + 1;
                    let share = u128::from(span.bytes) * u128::from(kept) / u128::from(all);
                    u64::try_from(share).unwrap_or(span.bytes)
                } else if span.last == last {
                    // `{"room":…,"seq":…}` and a newline.
                    (room.len() as u64 + 32).min(span.bytes)
                } else {
                    0
                }
            })
            .sum()
    }

    /// Compacts when the closed segments take more than twice what they
    /// retain (plus half a segment, so that a nearly empty log does not
    /// churn). With the head at most one segment, the whole log stays within
    /// about twice the retained bytes plus two segments.
    fn maybe_compact(&mut self) {
        if self.stopping() {
            return;
        }
        self.retry_leftovers();
        let bytes: u64 = self.segments.values().map(|s| s.meta.bytes).sum();
        let live: u64 = self
            .segments
            .values()
            .map(|s| self.live_bytes(&s.meta))
            .sum();
        if bytes
            <= live
                .saturating_mul(2)
                .saturating_add(self.segment_bytes / 2)
        {
            return;
        }
        let runs = self.plan_runs();
        if runs.is_empty() {
            return;
        }
        if let Err(e) = self.sync_sealed() {
            log::error!("{e}; compaction postponed");
            return;
        }
        let (mut before, mut after) = (0, 0);
        for run in runs {
            match self.compact_run(&run) {
                Ok((b, a)) => {
                    before += b;
                    after += a;
                }
                Err(Stop::Stopping) => break,
                Err(Stop::Failed(e)) => {
                    log::error!("{e}; compaction postponed to the next segment");
                    break;
                }
            }
        }
        if before > 0 {
            log::info!(
                "{}: compacted {before} bytes of messages into {after}",
                self.dir.display()
            );
            self.notify.send(LogEvent::Compacted {
                bytes_before: before,
                bytes_after: after,
            });
        }
    }

    /// Runs of consecutive segments worth rewriting: those of which a third
    /// or more is garbage, and small ones (merged with their neighbours so
    /// the file count stays proportional too). A small, dense segment alone
    /// would be rewritten for nothing.
    fn plan_runs(&self) -> Vec<Vec<u64>> {
        // Each run with whether its only member is dense.
        let mut runs: Vec<(Vec<u64>, bool)> = Vec::new();
        let mut in_run = false;
        for (&first, sealed) in &self.segments {
            let bytes = sealed.meta.bytes;
            let live = self.live_bytes(&sealed.meta);
            let dense = live.saturating_mul(3) >= bytes.saturating_mul(2);
            let small = bytes < self.segment_bytes / 2;
            if dense && !small {
                in_run = false;
                continue;
            }
            match runs.last_mut() {
                Some((run, lone_dense)) if in_run => {
                    run.push(first);
                    *lone_dense = false;
                }
                _ => runs.push((vec![first], dense)),
            }
            in_run = true;
        }
        runs.into_iter()
            .filter(|(run, lone_dense)| !(run.len() == 1 && *lone_dense))
            .map(|(run, _)| run)
            .collect()
    }

    /// Makes every closed segment durable: what a pass drops is justified
    /// by newer seqs in them.
    fn sync_sealed(&mut self) -> Result<(), String> {
        let mut any = false;
        for sealed in self.segments.values_mut().filter(|s| !s.synced) {
            let path = self.dir.join(sealed.meta.range.file_name());
            File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| format!("{}: fsync failed: {e}", path.display()))?;
            sealed.synced = true;
            any = true;
        }
        if any {
            sync_dir(&self.dir)
                .map_err(|e| format!("{}: fsync failed: {e}", self.dir.display()))?;
        }
        Ok(())
    }

    fn retry_leftovers(&mut self) {
        self.leftovers.retain(|path| match fs::remove_file(path) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(_) => true,
        });
    }

    /// Rewrites the segments of `run` (first numbers, in order) into as few
    /// outputs of at most `segment_bytes` as their retained lines allow.
    fn compact_run(&mut self, run: &[u64]) -> Result<(u64, u64), Stop> {
        let (mut before, mut after) = (0, 0);
        let mut out: Option<Output> = None;
        for first in run {
            if self.stopping() {
                if let Some(out) = out {
                    self.abandon(out);
                }
                return Err(Stop::Stopping);
            }
            let Some(sealed) = self.segments.get(first) else {
                continue;
            };
            let (range, input_bytes) = (sealed.meta.range, sealed.meta.bytes);
            let mut kept_meta = SegmentMeta::new(range);
            let kept = match self.retained(range, &mut kept_meta) {
                Ok(kept) => kept,
                Err(e) => {
                    if let Some(out) = out {
                        self.abandon(out);
                    }
                    return Err(Stop::Failed(e));
                }
            };
            if let Some(full) = out.take_if(|o| {
                o.meta.bytes > 0 && o.meta.bytes + kept.len() as u64 > self.segment_bytes
            }) {
                let (b, a) = self.finish(full)?;
                before += b;
                after += a;
            }
            let o = out.get_or_insert_with(|| Output::new(range));
            o.range.last = range.last;
            o.inputs.push(range);
            o.input_bytes += input_bytes;
            if let Err(e) = self.write_out(o, &kept, kept_meta) {
                if let Some(out) = out {
                    self.abandon(out);
                }
                return Err(Stop::Failed(e));
            }
        }
        if let Some(out) = out {
            let (b, a) = self.finish(out)?;
            before += b;
            after += a;
        }
        Ok((before, after))
    }

    /// The lines of segment `range` that retention keeps, with a marker in
    /// place of a room's last message when retention drops it.
    fn retained(&self, range: SegmentRange, meta: &mut SegmentMeta) -> Result<Vec<u8>, String> {
        let path = self.dir.join(range.file_name());
        let bytes = read_segment(&path, self.read_limit)
            .map_err(|e| format!("{}: cannot read for compaction: {e}", path.display()))?;
        let mut kept = Vec::new();
        let scanned = scan_segment(&bytes, |line, raw| {
            let (keep_from, last) = self.window(line.room(), line.seq());
            let keep = match line {
                LogLine::Message(m) => m.seq >= keep_from,
                LogLine::LastSeq { seq, .. } => *seq == last,
            };
            if keep {
                kept.extend_from_slice(raw);
                kept.push(b'\n');
                meta.note(line, raw);
            } else if line.seq() == last {
                let start = kept.len();
                // Encoding a string and an integer into a Vec cannot fail.
                let _ = push_last_seq(&mut kept, line.room(), last);
                meta.note_raw(line.room(), last, (kept.len() - start) as u64);
            }
        })
        .map_err(|bad| {
            format!(
                "{} line {}: {}; not compacted",
                path.display(),
                bad.line,
                bad.reason
            )
        })?;
        if scanned.tail.torn > 0 {
            // A closed segment ends on a newline; if not, whatever follows
            // the last one is not ours to drop.
            return Err(format!(
                "{}: ends without a newline; not compacted",
                path.display()
            ));
        }
        Ok(kept)
    }

    fn temp_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:08}.compacting{TEMP_SUFFIX}"))
    }

    fn write_out(
        &self,
        out: &mut Output,
        kept: &[u8],
        kept_meta: SegmentMeta,
    ) -> Result<(), String> {
        if kept.is_empty() {
            return Ok(());
        }
        if out.file.is_none() {
            let path = self.temp_path(out.range.first);
            let file = File::create(&path)
                .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
            out.file = Some((path, BufWriter::new(file)));
        }
        if let Some((path, file)) = &mut out.file {
            file.write_all(kept)
                .map_err(|e| format!("{}: write failed: {e}", path.display()))?;
        }
        out.meta.bytes += kept.len() as u64;
        for (room, span) in kept_meta.spans {
            match out.meta.spans.get_mut(&room) {
                Some(s) => {
                    s.first = s.first.min(span.first);
                    s.last = s.last.max(span.last);
                    s.bytes += span.bytes;
                }
                None => {
                    out.meta.spans.insert(room, span);
                }
            }
        }
        Ok(())
    }

    fn abandon(&self, out: Output) {
        if let Some((path, file)) = out.file {
            drop(file);
            if let Err(e) = fs::remove_file(&path) {
                // Removed at the next open in any case.
                log::warn!("{}: cannot remove: {e}", path.display());
            }
        }
    }

    /// Makes `out` durable under its final name, then deletes its inputs.
    fn finish(&mut self, mut out: Output) -> Result<(u64, u64), Stop> {
        let name = out.range.file_name();
        let final_path = self.dir.join(&name);
        let written = out.meta.bytes;
        if let Some((temp, file)) = out.file.take() {
            if out.inputs == [out.range] && written == out.input_bytes {
                // Everything in it is retained: nothing to gain.
                self.abandon(Output {
                    file: Some((temp, file)),
                    ..out
                });
                return Ok((0, 0));
            }
            let durable = file
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .and_then(|()| fs::rename(&temp, &final_path))
                .and_then(|()| sync_dir(&self.dir));
            if let Err(e) = durable {
                // Until the rename is durable the inputs are all there is.
                // A renamed file is left for the next open to sort out.
                if let Err(e) = fs::remove_file(&temp) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::warn!("{}: cannot remove: {e}", temp.display());
                    }
                }
                return Err(Stop::Failed(format!(
                    "{}: cannot write compacted segment: {e}",
                    final_path.display()
                )));
            }
        }

        let mut removed = false;
        for input in &out.inputs {
            self.segments.remove(&input.first);
            if written > 0 && *input == out.range {
                // Replaced by the rename.
                continue;
            }
            let path = self.dir.join(input.file_name());
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    log::error!("{}: cannot delete after compaction: {e}", path.display());
                    self.leftovers.push(path);
                }
            }
        }
        if removed {
            if let Err(e) = sync_dir(&self.dir) {
                // The deletions may come back after a power loss; the
                // output's name covers them, so the next open deletes them.
                log::warn!("{}: fsync failed: {e}", self.dir.display());
            }
        }
        if written > 0 {
            out.meta.range = out.range;
            self.add(out.meta, true);
        }
        self.disk_bytes
            .fetch_sub(out.input_bytes.saturating_sub(written), Ordering::Relaxed);
        Ok((out.input_bytes, written))
    }
}

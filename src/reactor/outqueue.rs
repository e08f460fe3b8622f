//! A connection's unsent output: owned chunks (responses) and shared ones
//! (a broadcast frame queued by every recipient), flushed with vectored
//! writes.
//!
//! A drained queue holds no memory: its ring goes back to a pool the
//! reactor shares between connections, and the next queue to receive output
//! takes it from there. Idle connections then cost nothing here, and a
//! broadcast to a thousand recipients reuses the thousand rings of the last
//! one instead of allocating per recipient, however large the room.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Slices handed to one `write_vectored` call; more gains little, as the
/// kernel caps iovecs per call anyway (IOV_MAX is 1024 on Linux).
const MAX_SLICES_PER_WRITE: usize = 64;

/// A ring that grew past this many slots (a backlog) is freed, not pooled.
const MAX_POOLED_SLOTS: usize = MAX_SLICES_PER_WRITE;

/// How often rings nobody needed are freed.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Empty rings from drained queues, for the next queue that needs one.
///
/// The pool never holds more rings than were in use at once (each came from
/// a queue), and rings that sat unused through a whole trim interval are
/// freed, so after a burst it shrinks back to what the traffic needs.
#[derive(Debug, Default)]
pub struct SpareRings {
    rings: Vec<VecDeque<Chunk>>,
    /// The fewest rings the pool held since the last trim: that many were
    /// not needed.
    fewest_since_trim: usize,
    last_trim: Option<Instant>,
}

impl SpareRings {
    fn take(&mut self) -> VecDeque<Chunk> {
        let ring = self.rings.pop().unwrap_or_default();
        self.fewest_since_trim = self.fewest_since_trim.min(self.rings.len());
        ring
    }

    fn give_back(&mut self, ring: VecDeque<Chunk>) {
        debug_assert!(ring.is_empty());
        if ring.capacity() > 0 && ring.capacity() <= MAX_POOLED_SLOTS {
            self.rings.push(ring);
        }
    }

    /// Frees the rings that went unused since the last trim, at most once
    /// per interval.
    pub fn trim(&mut self, now: Instant) {
        let last = *self.last_trim.get_or_insert(now);
        if now.duration_since(last) < TRIM_INTERVAL {
            return;
        }
        self.last_trim = Some(now);
        let keep = self.rings.len() - self.fewest_since_trim.min(self.rings.len());
        self.rings.truncate(keep);
        if self.rings.capacity() > 2 * keep.max(16) {
            self.rings.shrink_to_fit();
        }
        self.fewest_since_trim = self.rings.len();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rings.len()
    }
}

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) => bytes,
            Chunk::Shared(bytes) => bytes,
        }
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    pending: usize,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket would block with bytes still queued.
    Blocked,
}

impl OutQueue {
    pub fn push(&mut self, bytes: Vec<u8>, spares: &mut SpareRings) {
        if !bytes.is_empty() {
            self.push_chunk(Chunk::Owned(bytes), spares);
        }
    }

    pub fn push_shared(&mut self, bytes: Rc<[u8]>, spares: &mut SpareRings) {
        if !bytes.is_empty() {
            self.push_chunk(Chunk::Shared(bytes), spares);
        }
    }

    fn push_chunk(&mut self, chunk: Chunk, spares: &mut SpareRings) {
        if self.chunks.capacity() == 0 {
            self.chunks = spares.take();
        }
        self.pending += chunk.bytes().len();
        self.chunks.push_back(chunk);
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Drops everything not yet started. A chunk already partly written is
    /// kept whole, so the stream stays a sequence of complete frames.
    /// Returns how many chunks were dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_written > 0);
        let dropped = self.chunks.len().saturating_sub(keep);
        self.chunks.truncate(keep);
        self.pending = self
            .chunks
            .front()
            .map_or(0, |front| front.bytes().len() - self.front_written);
        dropped
    }

    /// Writes until the queue is empty or `out` would block. Returns the
    /// number of bytes written alongside how it ended.
    pub fn flush_to(
        &mut self,
        out: &mut impl Write,
        spares: &mut SpareRings,
    ) -> io::Result<(usize, Flushed)> {
        let mut written_total = 0;
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES_PER_WRITE];
            let mut count = 0;
            for (index, chunk) in self.chunks.iter().take(MAX_SLICES_PER_WRITE).enumerate() {
                let bytes = chunk.bytes();
                let start = if index == 0 { self.front_written } else { 0 };
                slices[count] = IoSlice::new(bytes.get(start..).unwrap_or_default());
                count += 1;
            }
            // A single slice goes out with send(2): writev(2) passes through the
            // VFS layer (iovec import, file position lock) that send skips,
            // and one slice is the common case (one broadcast per turn).
            let result = if count == 1 {
                out.write(&slices[0])
            } else {
                out.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    written_total += written;
                    let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
                    self.advance(written, spares);
                    // TCP writes short only when the send buffer is full, and
                    // then a writable edge follows once it drains: no need to
                    // hear EAGAIN from another syscall.
                    if written < offered {
                        return Ok((written_total, Flushed::Blocked));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((written_total, Flushed::Blocked))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((written_total, Flushed::All))
    }

    fn advance(&mut self, mut written: usize, spares: &mut SpareRings) {
        self.pending = self.pending.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let remaining = front.bytes().len() - self.front_written;
            if written >= remaining {
                written -= remaining;
                self.chunks.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += written;
                written = 0;
            }
        }
        if self.chunks.is_empty() {
            spares.give_back(std::mem::take(&mut self.chunks));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `budget` bytes per call and then blocks
    /// once every `block_every` calls.
    struct Trickle {
        written: Vec<u8>,
        budget: usize,
        calls: usize,
        block_every: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(self.block_every) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(self.block_every) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.budget;
            let mut total = 0;
            for buf in bufs {
                let n = buf.len().min(left);
                self.written.extend_from_slice(&buf[..n]);
                left -= n;
                total += n;
                if left == 0 {
                    break;
                }
            }
            Ok(total)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_reports_blocked_without_asking_again() {
        let mut spares = SpareRings::default();
        let mut queue = OutQueue::default();
        queue.push(b"0123456789".to_vec(), &mut spares);
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 4,
            calls: 0,
            block_every: usize::MAX,
        };
        let (written, how) = queue.flush_to(&mut sink, &mut spares).unwrap();
        assert_eq!((written, how), (4, Flushed::Blocked));
        assert_eq!(sink.calls, 1, "a short write means the buffer is full");
        assert_eq!(queue.pending_bytes(), 6);
    }

    #[test]
    fn partial_writes_keep_order_across_owned_and_shared_chunks() {
        let mut spares = SpareRings::default();
        let mut queue = OutQueue::default();
        let shared: Rc<[u8]> = Rc::from(&b"-shared-"[..]);
        queue.push(b"first".to_vec(), &mut spares);
        queue.push_shared(Rc::clone(&shared), &mut spares);
        queue.push(Vec::new(), &mut spares);
        queue.push(b"last".to_vec(), &mut spares);
        queue.push_shared(shared, &mut spares);
        assert_eq!(queue.pending_bytes(), 25);
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 3,
            calls: 0,
            block_every: 4,
        };
        let mut rounds = 0;
        loop {
            let (_, how) = queue.flush_to(&mut sink, &mut spares).unwrap();
            rounds += 1;
            if how == Flushed::All {
                break;
            }
        }
        assert!(rounds > 1, "the writer blocked along the way");
        assert_eq!(sink.written, b"first-shared-last-shared-");
        assert!(queue.is_empty());
        assert_eq!(queue.pending_bytes(), 0);
    }

    #[test]
    fn discarding_keeps_a_partly_written_chunk_whole() {
        let mut spares = SpareRings::default();
        let mut queue = OutQueue::default();
        queue.push(b"abcdef".to_vec(), &mut spares);
        queue.push(b"ghi".to_vec(), &mut spares);
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 2,
            calls: 0,
            block_every: 2,
        };
        assert_eq!(
            queue.flush_to(&mut sink, &mut spares).unwrap(),
            (2, Flushed::Blocked)
        );
        queue.discard_unsent();
        assert_eq!(queue.pending_bytes(), 4);
        queue.push(b"!".to_vec(), &mut spares);
        while queue.flush_to(&mut sink, &mut spares).unwrap().1 == Flushed::Blocked {}
        assert_eq!(sink.written, b"abcdef!");

        let mut untouched = OutQueue::default();
        untouched.push(b"abc".to_vec(), &mut spares);
        untouched.discard_unsent();
        assert!(untouched.is_empty());
    }

    #[test]
    fn a_write_of_zero_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut spares = SpareRings::default();
        let mut queue = OutQueue::default();
        queue.push(b"x".to_vec(), &mut spares);
        assert!(queue.flush_to(&mut Closed, &mut spares).is_err());
    }

    #[test]
    fn a_drained_queue_hands_its_ring_to_the_next_queue() {
        let mut spares = SpareRings::default();
        let mut first = OutQueue::default();
        let frame: Rc<[u8]> = Rc::from(&b"frame"[..]);
        for _ in 0..4 {
            first.push_shared(Rc::clone(&frame), &mut spares);
        }
        let mut sink = Trickle {
            written: Vec::new(),
            budget: usize::MAX,
            calls: 0,
            block_every: usize::MAX,
        };
        assert_eq!(
            first.flush_to(&mut sink, &mut spares).unwrap().1,
            Flushed::All
        );
        assert_eq!(first.chunks.capacity(), 0, "an idle queue holds no ring");
        assert_eq!(spares.len(), 1);

        let mut second = OutQueue::default();
        second.push_shared(frame, &mut spares);
        assert_eq!(spares.len(), 0, "the pooled ring was reused");
        assert!(second.chunks.capacity() >= 4);
    }

    #[test]
    fn a_backlog_ring_is_freed_not_pooled() {
        let mut spares = SpareRings::default();
        let mut queue = OutQueue::default();
        for _ in 0..=MAX_POOLED_SLOTS {
            queue.push(b"x".to_vec(), &mut spares);
        }
        let mut sink = Trickle {
            written: Vec::new(),
            budget: usize::MAX,
            calls: 0,
            block_every: usize::MAX,
        };
        while queue.flush_to(&mut sink, &mut spares).unwrap().1 == Flushed::Blocked {}
        assert!(queue.is_empty());
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn rings_unused_for_a_whole_interval_are_freed() {
        let start = Instant::now();
        let mut spares = SpareRings::default();
        let mut queues: Vec<OutQueue> = (0..3000).map(|_| OutQueue::default()).collect();
        let frame: Rc<[u8]> = Rc::from(&b"frame"[..]);
        let mut sink = Trickle {
            written: Vec::new(),
            budget: usize::MAX,
            calls: 0,
            block_every: usize::MAX,
        };
        let mut broadcast = |queues: &mut [OutQueue], spares: &mut SpareRings| {
            for queue in queues.iter_mut() {
                queue.push_shared(Rc::clone(&frame), spares);
            }
            for queue in queues.iter_mut() {
                queue.flush_to(&mut sink, spares).unwrap();
            }
        };
        broadcast(&mut queues, &mut spares);
        assert_eq!(
            spares.len(),
            3000,
            "every recipient's ring is kept, past any fixed count"
        );
        spares.trim(start);
        // Only a tenth of the rings are needed from now on.
        for second in 1..=2 {
            broadcast(&mut queues[..300], &mut spares);
            spares.trim(start + TRIM_INTERVAL * second);
        }
        assert_eq!(spares.len(), 300);
        broadcast(&mut queues[..300], &mut spares);
        assert_eq!(spares.len(), 300, "the rings still in use were kept");
    }
}

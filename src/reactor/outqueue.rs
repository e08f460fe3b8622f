//! A connection's unsent output: owned chunks (responses) and shared ones
//! (a broadcast frame queued by every recipient), flushed with vectored
//! writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Slices handed to one `write_vectored` call; more gains little, as the
/// kernel caps iovecs per call anyway (IOV_MAX is 1024 on Linux).
const MAX_SLICES_PER_WRITE: usize = 64;

/// Ring slots a drained queue may keep.
const KEEP_CHUNK_SLOTS: usize = 8;

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
    pub fn push(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.pending += bytes.len();
            self.chunks.push_back(Chunk::Owned(bytes));
        }
    }

    pub fn push_shared(&mut self, bytes: Rc<[u8]>) {
        if !bytes.is_empty() {
            self.pending += bytes.len();
            self.chunks.push_back(Chunk::Shared(bytes));
        }
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
    pub fn flush_to(&mut self, out: &mut impl Write) -> io::Result<(usize, Flushed)> {
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
            match out.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    written_total += written;
                    let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
                    self.advance(written);
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

    fn advance(&mut self, mut written: usize) {
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
        if self.chunks.is_empty() && self.chunks.capacity() > KEEP_CHUNK_SLOTS {
            // An idle connection should not keep a grown ring buffer; a small
            // one is kept so a steady stream of broadcasts does not allocate.
            self.chunks = VecDeque::new();
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
        let mut queue = OutQueue::default();
        queue.push(b"0123456789".to_vec());
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 4,
            calls: 0,
            block_every: usize::MAX,
        };
        let (written, how) = queue.flush_to(&mut sink).unwrap();
        assert_eq!((written, how), (4, Flushed::Blocked));
        assert_eq!(sink.calls, 1, "a short write means the buffer is full");
        assert_eq!(queue.pending_bytes(), 6);
    }

    #[test]
    fn partial_writes_keep_order_across_owned_and_shared_chunks() {
        let mut queue = OutQueue::default();
        let shared: Rc<[u8]> = Rc::from(&b"-shared-"[..]);
        queue.push(b"first".to_vec());
        queue.push_shared(Rc::clone(&shared));
        queue.push(Vec::new());
        queue.push(b"last".to_vec());
        queue.push_shared(shared);
        assert_eq!(queue.pending_bytes(), 25);
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 3,
            calls: 0,
            block_every: 4,
        };
        let mut rounds = 0;
        loop {
            let (_, how) = queue.flush_to(&mut sink).unwrap();
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
        let mut queue = OutQueue::default();
        queue.push(b"abcdef".to_vec());
        queue.push(b"ghi".to_vec());
        let mut sink = Trickle {
            written: Vec::new(),
            budget: 2,
            calls: 0,
            block_every: 2,
        };
        assert_eq!(queue.flush_to(&mut sink).unwrap(), (2, Flushed::Blocked));
        queue.discard_unsent();
        assert_eq!(queue.pending_bytes(), 4);
        queue.push(b"!".to_vec());
        while queue.flush_to(&mut sink).unwrap().1 == Flushed::Blocked {}
        assert_eq!(sink.written, b"abcdef!");

        let mut untouched = OutQueue::default();
        untouched.push(b"abc".to_vec());
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
        let mut queue = OutQueue::default();
        queue.push(b"x".to_vec());
        assert!(queue.flush_to(&mut Closed).is_err());
    }
}

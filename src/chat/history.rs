//! One room's message history (SPEC §8): the seq counter and a window of
//! the newest retained messages, each kept as the very frame its live
//! recipients were sent. Pure: the store replays into it and the API
//! queries it; nothing here touches a disk or a socket.
//!
//! The retained seqs are contiguous (messages enter at the back in seq
//! order and leave at the front), so a seq finds its message by
//! subtraction.

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

/// Most messages one `since` recovery sends (SPEC §8).
pub const MAX_RECOVERY: usize = 300;

#[derive(Debug, Default, Clone)]
pub struct RoomHistory {
    /// The newest seq ever assigned in the room (0: none yet).
    last_seq: u64,
    /// The newest seq whose record the operating system has: what HTTP
    /// readers may see. WebSocket frames need no such filter, because they
    /// are held back until the write (see `Api::emit`).
    written_seq: u64,
    /// Newest retained messages, oldest first, seqs contiguous, ending at
    /// `last_seq` whenever it is not empty.
    retained: VecDeque<Rc<[u8]>>,
}

/// What a `join` with `since` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The seqs to send, as a range over the room's seqs.
    pub seqs: Range<u64>,
    /// Set when `seqs` does not hold everything after `since`: missed
    /// messages are no longer retained, or more than `MAX_RECOVERY` were
    /// missed.
    pub incomplete: bool,
}

/// Where an HTTP page of history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Newest,
    Before(u64),
    After(u64),
}

/// One page of HTTP history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub seqs: Range<u64>,
    /// More messages exist beyond the page in the direction it was read.
    pub has_more: bool,
}

impl RoomHistory {
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }

    /// Seq of the oldest retained message; `last_seq + 1` when none is.
    pub fn first_retained_seq(&self) -> u64 {
        self.last_seq + 1 - self.retained.len() as u64
    }

    /// The seq the next accepted message gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Records the room's next message (seq `next_seq()`), keeping at most
    /// `capacity` messages; `capacity` 0 keeps none but still counts.
    pub fn push(&mut self, frame: Rc<[u8]>, capacity: usize) -> u64 {
        self.last_seq += 1;
        self.keep(frame, capacity);
        self.last_seq
    }

    /// Appends the frame of `last_seq`, dropping the oldest past `capacity`.
    fn keep(&mut self, frame: Rc<[u8]>, capacity: usize) {
        if capacity == 0 {
            self.retained.clear();
            return;
        }
        while self.retained.len() >= capacity {
            self.retained.pop_front();
        }
        self.retained.push_back(frame);
    }

    /// A message replayed from disk at start-up, with its stored seq.
    /// Seqs must arrive in increasing order (others are ignored); a gap
    /// (messages compacted away) restarts the window at `seq`.
    pub fn restore(&mut self, seq: u64, frame: Rc<[u8]>, capacity: usize) {
        if seq <= self.last_seq {
            return;
        }
        if seq != self.last_seq + 1 {
            self.retained.clear();
        }
        self.last_seq = seq;
        self.written_seq = seq;
        self.keep(frame, capacity);
    }

    /// Ends a replay: the room's last seq as the log recorded it, which is
    /// past the retained messages when none of them survived.
    pub fn finish_restore(&mut self, last_seq: u64) {
        if last_seq > self.last_seq {
            self.retained.clear();
            self.last_seq = last_seq;
        }
        self.written_seq = self.last_seq;
    }

    /// The operating system has every record up to `seq`.
    pub fn mark_written(&mut self, seq: u64) {
        self.written_seq = self.written_seq.max(seq.min(self.last_seq));
    }

    /// The retained frame of `seq`, if it is retained.
    pub fn frame(&self, seq: u64) -> Option<&Rc<[u8]>> {
        let index = seq.checked_sub(self.first_retained_seq())?;
        self.retained.get(usize::try_from(index).ok()?)
    }

    /// The newest `n` retained messages.
    pub fn newest(&self, n: usize) -> Range<u64> {
        let first = self.first_retained_seq();
        let from = (self.last_seq + 1).saturating_sub(n as u64).max(first);
        from..self.last_seq + 1
    }

    /// What a joiner that has seen everything up to `since` is owed.
    pub fn recover(&self, since: u64) -> Recovery {
        if since >= self.last_seq {
            return Recovery {
                seqs: self.last_seq + 1..self.last_seq + 1,
                incomplete: false,
            };
        }
        let end = self.last_seq + 1;
        let wanted_from = since + 1;
        let from = wanted_from
            .max(self.first_retained_seq())
            .max(end.saturating_sub(MAX_RECOVERY as u64));
        Recovery {
            seqs: from..end,
            incomplete: from != wanted_from,
        }
    }

    /// A page of at most `limit` messages that HTTP readers may see:
    /// retained and written.
    pub fn page(&self, anchor: Anchor, limit: usize) -> Page {
        page_of(
            self.first_retained_seq(),
            self.written_seq + 1,
            anchor,
            limit,
        )
    }
}

/// A page of at most `limit` of the seqs `first..end`.
pub fn page_of(first: u64, end: u64, anchor: Anchor, limit: usize) -> Page {
    let limit = limit as u64;
    if first >= end {
        return Page {
            seqs: end..end,
            has_more: false,
        };
    }
    match anchor {
        Anchor::Newest => {
            let from = end.saturating_sub(limit).max(first);
            Page {
                seqs: from..end,
                has_more: from > first,
            }
        }
        Anchor::Before(before) => {
            let to = before.min(end).max(first);
            let from = to.saturating_sub(limit).max(first);
            Page {
                seqs: from..to,
                has_more: from > first,
            }
        }
        Anchor::After(after) => {
            let from = after.saturating_add(1).max(first).min(end);
            let to = from.saturating_add(limit).min(end);
            Page {
                seqs: from..to,
                has_more: to < end,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Rc<[u8]> {
        Rc::from(format!("m{seq}").as_bytes())
    }

    fn room_with(messages: u64, capacity: usize) -> RoomHistory {
        let mut room = RoomHistory::default();
        for seq in 1..=messages {
            assert_eq!(room.next_seq(), seq);
            assert_eq!(room.push(frame(seq), capacity), seq);
        }
        room.mark_written(messages);
        room
    }

    #[test]
    fn seqs_count_from_one_and_the_window_keeps_the_newest() {
        let room = room_with(12, 5);
        assert_eq!(room.last_seq(), 12);
        assert_eq!(room.retained_len(), 5);
        assert_eq!(room.first_retained_seq(), 8);
        assert_eq!(room.frame(7), None);
        assert_eq!(room.frame(8).map(|f| &f[..]), Some(&b"m8"[..]));
        assert_eq!(room.frame(12).map(|f| &f[..]), Some(&b"m12"[..]));
        assert_eq!(room.frame(13), None);
        assert_eq!(room.newest(3), 10..13);
        assert_eq!(room.newest(50), 8..13);
        assert_eq!(room.newest(0), 13..13);
    }

    #[test]
    fn history_off_still_counts() {
        let room = room_with(4, 0);
        assert_eq!(room.last_seq(), 4);
        assert_eq!(room.retained_len(), 0);
        assert_eq!(room.first_retained_seq(), 5);
        assert_eq!(room.newest(50), 5..5);
        assert_eq!(
            room.recover(1),
            Recovery {
                seqs: 5..5,
                incomplete: true
            }
        );
    }

    #[test]
    fn recovery_is_exact_or_says_it_is_not() {
        let room = room_with(20, 10);
        let complete = |seqs| Recovery {
            seqs,
            incomplete: false,
        };
        assert_eq!(room.recover(20), complete(21..21), "up to date");
        assert_eq!(room.recover(99), complete(21..21), "from the future");
        assert_eq!(room.recover(15), complete(16..21));
        assert_eq!(room.recover(10), complete(11..21), "exactly retained");
        assert_eq!(
            room.recover(9),
            Recovery {
                seqs: 11..21,
                incomplete: true
            },
            "seq 10 is gone"
        );
        assert_eq!(
            room.recover(0),
            Recovery {
                seqs: 11..21,
                incomplete: true
            }
        );
    }

    #[test]
    fn recovery_sends_at_most_300() {
        let room = room_with(1000, 1000);
        assert_eq!(
            room.recover(700),
            Recovery {
                seqs: 701..1001,
                incomplete: false
            }
        );
        assert_eq!(
            room.recover(699),
            Recovery {
                seqs: 701..1001,
                incomplete: true
            }
        );
        let empty = RoomHistory::default();
        assert_eq!(
            empty.recover(0),
            Recovery {
                seqs: 1..1,
                incomplete: false
            }
        );
    }

    #[test]
    fn pages_walk_both_ways_with_has_more() {
        let room = room_with(30, 25); // retained 6..=30
        let page = |seqs, has_more| Page { seqs, has_more };
        assert_eq!(room.page(Anchor::Newest, 10), page(21..31, true));
        assert_eq!(room.page(Anchor::Newest, 100), page(6..31, false));
        assert_eq!(room.page(Anchor::Before(21), 10), page(11..21, true));
        assert_eq!(room.page(Anchor::Before(11), 10), page(6..11, false));
        assert_eq!(room.page(Anchor::Before(16), 10), page(6..16, false));
        assert_eq!(room.page(Anchor::Before(6), 10), page(6..6, false));
        assert_eq!(room.page(Anchor::Before(1), 10), page(6..6, false));
        assert_eq!(room.page(Anchor::Before(1000), 5), page(26..31, true));
        assert_eq!(room.page(Anchor::After(0), 10), page(6..16, true));
        assert_eq!(room.page(Anchor::After(20), 10), page(21..31, false));
        assert_eq!(room.page(Anchor::After(19), 10), page(20..30, true));
        assert_eq!(room.page(Anchor::After(30), 10), page(31..31, false));
        assert_eq!(room.page(Anchor::After(u64::MAX), 10), page(31..31, false));
        let empty = RoomHistory::default();
        assert_eq!(empty.page(Anchor::Newest, 10), page(1..1, false));
        assert_eq!(empty.page(Anchor::After(0), 10), page(1..1, false));
    }

    #[test]
    fn http_pages_show_only_written_messages() {
        let mut room = room_with(5, 10);
        room.push(frame(6), 10);
        room.push(frame(7), 10);
        assert_eq!(room.written_seq(), 5);
        assert_eq!(
            room.page(Anchor::Newest, 10),
            Page {
                seqs: 1..6,
                has_more: false
            }
        );
        room.mark_written(7);
        assert_eq!(room.page(Anchor::After(5), 10).seqs, 6..8);
    }

    #[test]
    fn restore_rebuilds_the_window_across_compacted_gaps() {
        let mut room = RoomHistory::default();
        for seq in [3, 4, 4, 2, 5, 9, 10] {
            room.restore(seq, frame(seq), 10);
        }
        room.finish_restore(10);
        assert_eq!(room.last_seq(), 10);
        assert_eq!(room.first_retained_seq(), 9, "seqs 6..8 are gone");
        assert_eq!(room.written_seq(), 10);
        assert_eq!(room.frame(9).map(|f| &f[..]), Some(&b"m9"[..]));
        // A room whose log kept only its last seq.
        let mut room = RoomHistory::default();
        room.finish_restore(41);
        assert_eq!(room.next_seq(), 42);
        assert_eq!(room.newest(10), 42..42);
        assert_eq!(room.page(Anchor::Newest, 10).seqs, 42..42);
        // Retention smaller than what the log held: the newest are kept.
        let mut room = RoomHistory::default();
        for seq in 1..=8 {
            room.restore(seq, frame(seq), 3);
        }
        room.finish_restore(8);
        assert_eq!(room.newest(10), 6..9);
    }
}

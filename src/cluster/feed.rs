//! One room's messages on their way from pub/sub to this node's members, in
//! seq order (docs/cluster.md, "The order argument"): a pure state machine.
//!
//! Messages come from the room's channel, usually in order. A seq below the
//! next one expected is a duplicate (a refill overlapped the channel) and
//! is dropped; one above it means something was missed, and it is held
//! while the gap is read back from the room's stream. After (re)subscribing
//! the feed reads everything after what it delivered, since anything
//! published before the subscription took effect never came on the channel.

use std::collections::BTreeMap;

/// Messages held while a refill runs; past it they are dropped and read
/// back from the stream instead.
pub const MAX_HELD: usize = 10_000;

/// A read of the room's stream to issue (seqs, inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// A gap: `from..=to`.
    Gap { from: u64, to: u64 },
    /// Everything from `from` on.
    After { from: u64 },
}

#[derive(Debug)]
pub struct Feed<F> {
    /// The next seq to deliver; `None` until the first join says where
    /// the room is.
    next: Option<u64>,
    held: BTreeMap<u64, F>,
    refilling: bool,
    catch_up: bool,
    duplicates: u64,
}

impl<F> Default for Feed<F> {
    fn default() -> Self {
        Feed {
            next: None,
            held: BTreeMap::new(),
            refilling: false,
            catch_up: false,
            duplicates: 0,
        }
    }
}

impl<F> Feed<F> {
    /// The first join's reply: delivery starts after the room's last seq
    /// then. Later joins do not move it.
    pub fn start_after(&mut self, last: u64) {
        if self.next.is_none() {
            self.next = Some(last + 1);
        }
    }

    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }

    /// Messages dropped as already delivered, so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn on_message(&mut self, seq: u64, frame: F) {
        if self.next.is_some_and(|next| seq < next) {
            self.duplicates += 1;
            return;
        }
        if self.held.len() >= MAX_HELD {
            self.held.clear();
            self.catch_up = true;
        }
        self.held.insert(seq, frame);
    }

    /// The channel was (re)subscribed, or the feed cannot tell what it
    /// missed: read everything after what was delivered.
    pub fn catch_up(&mut self) {
        self.catch_up = true;
    }

    /// A refill got no answer; it is asked again at the next `poll`.
    pub fn refill_failed(&mut self) {
        self.refilling = false;
        self.catch_up = true;
    }

    /// Delivers what is next in order into `out`, and says which refill to
    /// issue (then one is in flight) when `can_refill`.
    pub fn poll(&mut self, can_refill: bool, out: &mut Vec<(u64, F)>) -> Option<Refill> {
        let mut next = self.next?;
        if self.refilling {
            return None;
        }
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq < next {
                entry.remove();
                self.duplicates += 1;
            } else if seq == next {
                out.push((seq, entry.remove()));
                next += 1;
            } else {
                break;
            }
        }
        self.next = Some(next);
        let refill = if self.catch_up {
            Refill::After { from: next }
        } else {
            let gap_end = self.held.first_key_value().map(|(seq, _)| *seq - 1)?;
            Refill::Gap {
                from: next,
                to: gap_end,
            }
        };
        if !can_refill {
            self.catch_up = true;
            return None;
        }
        self.catch_up = false;
        self.refilling = true;
        Some(refill)
    }

    /// The stream's answer to `refill`: `entries` in seq order, and whether
    /// the read was cut short by its batch size (more may follow).
    pub fn on_refill(
        &mut self,
        refill: Refill,
        entries: Vec<(u64, F)>,
        cut_short: bool,
        out: &mut Vec<(u64, F)>,
    ) {
        self.refilling = false;
        let mut next = self.next.unwrap_or(1);
        for (seq, frame) in entries {
            if seq < next {
                self.duplicates += 1;
                continue;
            }
            out.push((seq, frame));
            next = seq + 1;
        }
        match refill {
            _ if cut_short => {
                self.catch_up = self.catch_up || matches!(refill, Refill::After { .. })
            }
            // What the stream no longer holds is gone for everyone.
            Refill::Gap { to, .. } => next = next.max(to + 1),
            Refill::After { .. } => {}
        }
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator, so a failing case replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Serves a refill from a stream that keeps seqs `first..=last`, at
    /// most `batch` entries.
    fn serve(refill: Refill, first: u64, last: u64, batch: usize) -> (Vec<(u64, u64)>, bool) {
        let (from, to) = match refill {
            Refill::Gap { from, to } => (from, to),
            Refill::After { from } => (from, last),
        };
        let entries: Vec<(u64, u64)> = (from.max(first)..=to.min(last))
            .take(batch)
            .map(|seq| (seq, seq * 10))
            .collect();
        let cut_short = entries.len() == batch;
        (entries, cut_short)
    }

    /// Publishes `total` messages; the channel loses some and the
    /// subscription drops now and then; refills answer late. Returns what
    /// was delivered.
    fn run(seed: u64, total: u64, retained: u64, batch: usize) -> Vec<u64> {
        let mut rng = Rng(seed | 1);
        let mut feed: Feed<u64> = Feed::default();
        let mut delivered = Vec::new();
        let mut out = Vec::new();
        let mut pending: Option<(Refill, u64)> = None;
        let start = rng.below(5);
        feed.start_after(start);
        feed.catch_up();
        let mut published = start;
        let mut settle = |feed: &mut Feed<u64>,
                          pending: &mut Option<(Refill, u64)>,
                          published: u64,
                          force: bool,
                          rng: &mut Rng| {
            if let Some((refill, _)) = *pending {
                if force || rng.below(3) == 0 {
                    let first = published.saturating_sub(retained) + 1;
                    let (entries, cut) = serve(refill, first, published, batch);
                    feed.on_refill(refill, entries, cut, &mut out);
                    *pending = None;
                }
            }
            if pending.is_none() {
                if let Some(refill) = feed.poll(true, &mut out) {
                    *pending = Some((refill, published));
                }
            }
            for (seq, frame) in out.drain(..) {
                assert_eq!(frame, seq * 10, "seed {seed}: the frame of {seq}");
                delivered.push(seq);
            }
        };
        while published < total {
            published += 1;
            match rng.below(10) {
                0 => {}               // lost on the channel
                1 => feed.catch_up(), // resubscribed
                _ => feed.on_message(published, published * 10),
            }
            if rng.below(4) == 0 {
                // Redelivered by an overlap.
                let old = published.saturating_sub(rng.below(4)).max(1);
                feed.on_message(old, old * 10);
            }
            settle(&mut feed, &mut pending, published, false, &mut rng);
        }
        // The channel quiets down; a last catch-up finds the tail.
        feed.catch_up();
        for _ in 0..(total as usize / batch.max(1) + 10) {
            settle(&mut feed, &mut pending, published, true, &mut rng);
        }
        delivered
    }

    #[test]
    fn everything_is_delivered_once_in_order_when_the_stream_keeps_it() {
        for seed in 1..300 {
            let delivered = run(seed, 400, u64::MAX / 2, 1000);
            let start = *delivered.first().unwrap_or(&1);
            assert!(start <= 5, "seed {seed}");
            let expected: Vec<u64> = (start..=400).collect();
            assert_eq!(delivered, expected, "seed {seed}");
        }
    }

    #[test]
    fn small_refill_batches_still_deliver_everything() {
        for seed in 1..100 {
            let delivered = run(seed, 300, u64::MAX / 2, 7);
            let start = *delivered.first().unwrap_or(&1);
            let expected: Vec<u64> = (start..=300).collect();
            assert_eq!(delivered, expected, "seed {seed}");
        }
    }

    #[test]
    fn with_short_retention_delivery_skips_only_what_is_gone_and_never_reorders() {
        for seed in 1..300 {
            let delivered = run(seed, 400, 3, 1000);
            assert!(
                delivered.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: {delivered:?}"
            );
            assert_eq!(delivered.last(), Some(&400), "seed {seed}");
        }
    }

    #[test]
    fn nothing_is_delivered_before_the_start_is_known() {
        let mut feed: Feed<u64> = Feed::default();
        let mut out = Vec::new();
        feed.on_message(7, 70);
        feed.catch_up();
        assert_eq!(feed.poll(true, &mut out), None);
        assert!(out.is_empty());
        feed.start_after(6);
        assert_eq!(feed.poll(true, &mut out), Some(Refill::After { from: 8 }));
        assert_eq!(out, vec![(7, 70)]);
    }

    #[test]
    fn without_redis_the_feed_waits_and_catches_up_later() {
        let mut feed: Feed<u64> = Feed::default();
        let mut out = Vec::new();
        feed.start_after(0);
        feed.on_message(2, 20);
        assert_eq!(feed.poll(false, &mut out), None);
        assert_eq!(feed.poll(true, &mut out), Some(Refill::After { from: 1 }));
        feed.on_refill(
            Refill::After { from: 1 },
            vec![(1, 10), (2, 20)],
            false,
            &mut out,
        );
        assert_eq!(feed.poll(true, &mut out), None);
        assert_eq!(out, vec![(1, 10), (2, 20)]);
        assert_eq!(feed.duplicates(), 1);
    }
}

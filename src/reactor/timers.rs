//! Connection deadlines in one ordered set keyed by time: exactly one entry
//! per connection that has a deadline, so the set never outgrows the
//! connection table however often deadlines move.

use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeSet<(Instant, usize, u32)>,
}

impl Timers {
    /// Moves a connection's deadline from `old` to `new` (either may be none).
    pub fn reschedule(
        &mut self,
        key: usize,
        generation: u32,
        old: Option<Instant>,
        new: Option<Instant>,
    ) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.due.remove(&(at, key, generation));
        }
        if let Some(at) = new {
            self.due.insert((at, key, generation));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.due.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns the next connection whose deadline is at or
    /// before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u32)> {
        match self.due.first() {
            Some(&(at, key, generation)) if at <= now => {
                self.due.pop_first();
                Some((key, generation))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.due.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_come_due_in_time_order_and_move_without_piling_up() {
        let start = Instant::now();
        let at = |secs| Some(start + Duration::from_secs(secs));
        let mut timers = Timers::default();
        timers.reschedule(1, 7, None, at(3));
        timers.reschedule(2, 7, None, at(1));
        timers.reschedule(3, 8, None, at(5));
        for later in 6..100 {
            timers.reschedule(3, 8, at(later - 1), at(later));
        }
        timers.reschedule(3, 8, at(99), at(2));
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.next(), at(1));
        assert_eq!(timers.pop_due(start), None);
        let due: Vec<_> =
            std::iter::from_fn(|| timers.pop_due(start + Duration::from_secs(2))).collect();
        assert_eq!(due, vec![(2, 7), (3, 8)]);
        timers.reschedule(1, 7, at(3), None);
        assert!(timers.is_empty());
    }
}

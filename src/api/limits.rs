//! Failed-login limits (SPEC §2.3): a sliding window of recent failures per
//! key, holding at most `limit` timestamps per key and at most `max_keys`
//! keys, so the memory an attacker can make us spend is bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureWindow<K> {
    by_key: HashMap<K, VecDeque<Instant>>,
    limit: usize,
    window: Duration,
    max_keys: usize,
    /// When a full table was last swept: a sweep scans every key, so it
    /// runs at most once a second, not once per failure.
    last_sweep_when_full: Option<Instant>,
}

impl<K: Hash + Eq + Clone> FailureWindow<K> {
    pub fn new(limit: usize, window: Duration, max_keys: usize) -> Self {
        FailureWindow {
            by_key: HashMap::new(),
            limit: limit.max(1),
            window,
            max_keys,
            last_sweep_when_full: None,
        }
    }

    /// Whether `key` has used up its failures within the window.
    pub fn is_blocked(&self, key: &K, now: Instant) -> bool {
        self.by_key.get(key).is_some_and(|times| {
            times
                .iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count()
                >= self.limit
        })
    }

    /// Counts one failure.
    pub fn record(&mut self, key: &K, now: Instant) {
        if !self.by_key.contains_key(key) && self.by_key.len() >= self.max_keys {
            let sweep_due = self
                .last_sweep_when_full
                .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
            if sweep_due {
                self.last_sweep_when_full = Some(now);
                self.prune(now);
            }
            if self.by_key.len() >= self.max_keys {
                // Full of live entries: a flood from more keys than we keep.
                // The per-user limit still protects every account.
                return;
            }
        }
        let times = self.by_key.entry(key.clone()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.limit {
            times.pop_front();
        }
        times.push_back(now);
    }

    /// Takes back one failure (an attempt counted in advance succeeded).
    pub fn forgive_one(&mut self, key: &K) {
        if let Some(times) = self.by_key.get_mut(key) {
            times.pop_back();
            if times.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub fn clear(&mut self, key: &K) {
        self.by_key.remove(key);
    }

    /// Forgets keys whose failures have all left the window.
    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.by_key.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The part of a client address that identifies one client: the whole IPv4
/// address, or the /64 network of an IPv6 address (one host can use all of
/// it).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_within_the_window_and_recovers() {
        let start = Instant::now();
        let mut failures = FailureWindow::new(3, Duration::from_secs(60), 10);
        for second in 0..3 {
            assert!(!failures.is_blocked(&"a", start));
            failures.record(&"a", start + Duration::from_secs(second));
        }
        assert!(failures.is_blocked(&"a", start + Duration::from_secs(10)));
        assert!(!failures.is_blocked(&"b", start + Duration::from_secs(10)));
        assert!(
            !failures.is_blocked(&"a", start + Duration::from_secs(60)),
            "the first failure left the window"
        );
        failures.forgive_one(&"a");
        assert!(!failures.is_blocked(&"a", start + Duration::from_secs(10)));
        failures.clear(&"a");
        assert!(failures.is_empty());
    }

    #[test]
    fn memory_is_bounded_per_key_and_in_keys() {
        let start = Instant::now();
        let mut failures = FailureWindow::new(5, Duration::from_secs(60), 100);
        for _ in 0..1000 {
            failures.record(&0u32, start);
        }
        assert_eq!(failures.by_key[&0].len(), 5);
        for key in 1..1000u32 {
            failures.record(&key, start);
        }
        assert_eq!(failures.len(), 100);
        failures.record(&5000, start + Duration::from_secs(61));
        assert_eq!(failures.len(), 1, "expired keys were pruned to make room");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}

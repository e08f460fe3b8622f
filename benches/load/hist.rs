//! A log-linear latency histogram: exact below 128 ns, then 64 buckets per
//! power of two (under 1.6 % error), so recording is an index computation and
//! an increment — cheap enough for every one of millions of deliveries.

const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;
const BUCKETS: usize = 128 + 57 * 64;

pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }

    fn index(value: u64) -> usize {
        if value < LINEAR {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros();
        let shift = exponent - SUB_BITS;
        let mantissa = (value >> shift) - (1 << SUB_BITS);
        128 + (exponent as usize - 7) * 64 + mantissa as usize
    }

    /// The highest value that lands in bucket `index`, so percentiles never
    /// flatter the server.
    fn upper(index: usize) -> u64 {
        if index < LINEAR as usize {
            return index as u64;
        }
        let k = index - 128;
        let exponent = (k / 64) as u32 + 7;
        let mantissa = (k % 64) as u64 + (1 << SUB_BITS);
        let shift = exponent - SUB_BITS;
        ((mantissa + 1) << shift) - 1
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.count += 1;
        if value > self.max {
            self.max = value;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(index).min(self.max);
            }
        }
        self.max
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.count = 0;
        self.max = 0;
    }
}

/// Latency summary in microseconds.
#[derive(Clone, Copy, Default, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Latency {
        Latency {
            p50: h.quantile(0.50) as f64 / 1e3,
            p99: h.quantile(0.99) as f64 / 1e3,
            p999: h.quantile(0.999) as f64 / 1e3,
            max: h.max() as f64 / 1e3,
            count: h.count(),
        }
    }
}

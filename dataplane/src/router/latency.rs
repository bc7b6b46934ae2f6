//! Request latency as a histogram with fixed buckets: what a worker records per request
//! (a bucket search and two additions, under the lock its counters already take) and what the
//! admin endpoint sums over workers into a Prometheus histogram.

/// Upper bounds of the buckets, in microseconds: 100 us to 10 s, about 2.5x apart.
pub const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencyHistogram {
    /// Requests per bucket (not cumulative); the last one is past every bound.
    pub counts: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        let bucket = BUCKETS_US.partition_point(|bound| *bound < us);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (upper bound in seconds, requests in that bucket), ending with +Inf: what
    /// `prometheus-client` encodes as a histogram (it accumulates them itself).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        BUCKETS_US
            .iter()
            .map(|bound| *bound as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_at_or_under_their_bound_and_buckets_accumulate() {
        let mut h = LatencyHistogram::default();
        for us in [1, 100, 101, 1_000, 20_000_000] {
            h.record(us);
        }
        assert_eq!(h.counts[0], 2, "1 and 100 us are <= 0.0001 s");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[3], 1);
        assert_eq!(h.counts[BUCKETS_US.len()], 1, "past 10 s");
        let buckets = h.buckets_seconds();
        assert_eq!(buckets.len(), BUCKETS_US.len() + 1);
        assert_eq!(buckets[0], (0.0001, 2));
        assert_eq!(buckets[3], (0.001, 1));
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 1));
        let mut sum = h.clone();
        sum.merge(&h);
        assert_eq!(sum.count(), 10);
        assert_eq!(sum.sum_us, 2 * h.sum_us);
    }
}

//! A fixed-bucket histogram of atomics, cheap enough for hot paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket bounds in microseconds: 50 µs to 10 s (exported in seconds).
pub const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Size bucket bounds in bytes: 256 B to 16 MiB, powers of four.
pub const BYTES_BOUNDS: &[u64] = &[256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// Count bucket bounds (requests or messages per Raft entry): 1 to 4096, powers of two.
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Counts of observations per bucket, their sum and their number. Values are integers in the unit of the
/// bounds (microseconds, bytes, items); `scale` converts to the exported unit (seconds: 1e-6).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    /// One count per bound, plus the `+Inf` bucket; not cumulative (the export accumulates).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for Histogram {
    /// A latency histogram ([`Histogram::latency`]).
    fn default() -> Self {
        Histogram::latency()
    }
}

impl Histogram {
    /// A histogram over `bounds` (ascending), exported multiplied by `scale`.
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must ascend");
        Histogram { bounds, scale, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    /// Latencies over [`LATENCY_BOUNDS_US`], exported in seconds.
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_US, 1e-6)
    }

    /// Records `v` (in the unit of the bounds).
    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (in microseconds, for a latency histogram).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations, scaled to the exported unit.
    pub fn sum(&self) -> f64 {
        self.sum.load(Ordering::Relaxed) as f64 * self.scale
    }

    /// The buckets `(upper bound, observations in this bucket)` in the exported unit, not cumulative (the
    /// text encoder accumulates), the last one `(f64::MAX, _)` for `+Inf`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .map(|b| *b as f64 * self.scale)
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter())
            .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(&[10, 100], 1.0);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        assert_eq!(h.buckets(), vec![(10.0, 2), (100.0, 2), (f64::MAX, 2)]);
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), 5222.0);
    }

    #[test]
    fn latencies_are_exported_in_seconds() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_millis(3));
        let b = h.buckets();
        assert_eq!(b.iter().find(|(le, _)| (*le - 0.0025).abs() < 1e-12).map(|x| x.1), Some(0));
        assert_eq!(b.iter().find(|(le, _)| (*le - 0.005).abs() < 1e-12).map(|x| x.1), Some(1));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 1);
        assert!((h.sum() - 0.003).abs() < 1e-12);
    }
}

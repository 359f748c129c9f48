//! Clock faults through libfaketime: each broker runs with `LD_PRELOAD=libfaketime` reading its offset from a
//! file (`FAKETIME_NO_CACHE=1`, so a write takes effect at once), and `FAKETIME_DONT_FAKE_MONOTONIC=1`, so
//! only the wall clock moves — Raft timers run on the monotonic clock, as on a real host whose NTP steps.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;
use serde::Serialize;

use crate::cluster::faketime_file;

/// Where Debian's `faketime` package puts the library, for this machine's multiarch triple.
pub fn find_libfaketime() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Sets node `id`'s wall clock offset.
pub fn set_offset(id: u8, offset_ms: i64) -> Result<()> {
    let text = format!("{}{}.{:03}s\n", if offset_ms < 0 { "-" } else { "+" }, offset_ms.abs() / 1000, offset_ms.abs() % 1000);
    std::fs::write(faketime_file(id), text).with_context(|| format!("faketime file of node {id}"))
}

/// The largest wall-clock offset the clock nemesis can inject, either way: a bump is clamped to 300 s
/// ([`bump_ms`]), a strobe's delta is below 2^18 ms ≈ 262 s ([`strobe_params`]). The scheduled-message
/// checks fall back on it when a run's history does not say which offsets were applied.
pub const MAX_SKEW_MS: u64 = 300_000;

/// Jepsen's bump: ±1.5^(6+U[0,25)) ms, clamped to [`MAX_SKEW_MS`].
pub fn bump_ms(rng: &mut impl Rng) -> i64 {
    let magnitude = 1.5f64.powf(6.0 + rng.gen_range(0.0..25.0)).min(MAX_SKEW_MS as f64) as i64;
    if rng.gen_bool(0.5) {
        magnitude
    } else {
        -magnitude
    }
}

/// Jepsen's strobe parameters: delta 2^(2+U[0,16)) ms, period 2^U[0,10) ms, duration U[0,32) s (capped by
/// the caller's hold time).
pub fn strobe_params(rng: &mut impl Rng) -> (i64, Duration) {
    let delta = 2f64.powf(2.0 + rng.gen_range(0.0..16.0)) as i64;
    let period = Duration::from_micros((2f64.powf(rng.gen_range(0.0..10.0)) * 1000.0) as u64).max(Duration::from_millis(1));
    (delta, period)
}

/// The wall-clock offsets a run's clock nemesis injected: how far any node's clock was set ahead of real
/// time and how far behind. A leader's clock ahead by `ahead_ms` can deliver a scheduled message up to that
/// much early (its store clock runs ahead); one behind by `behind_ms` can stamp a due time that much too
/// early, and holds deliveries back by as much (docs/architecture.md, "Time").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SkewBounds {
    /// The largest positive offset applied (ms).
    pub ahead_ms: u64,
    /// The largest negative offset applied, as a magnitude (ms).
    pub behind_ms: u64,
    /// Some clock fault may have applied offsets that were not recorded (a failed start): use
    /// [`MAX_SKEW_MS`] both ways.
    pub unknown: bool,
}

impl SkewBounds {
    /// Notes one offset applied to some node.
    pub fn note(&mut self, offset_ms: i64) {
        if offset_ms >= 0 {
            self.ahead_ms = self.ahead_ms.max(offset_ms as u64);
        } else {
            self.behind_ms = self.behind_ms.max(offset_ms.unsigned_abs());
        }
    }

    /// The bound on clocks ahead of real time (ms), [`MAX_SKEW_MS`] when unknown.
    pub fn ahead(&self) -> u64 {
        if self.unknown {
            MAX_SKEW_MS
        } else {
            self.ahead_ms
        }
    }

    /// The bound on clocks behind real time (ms), [`MAX_SKEW_MS`] when unknown.
    pub fn behind(&self) -> u64 {
        if self.unknown {
            MAX_SKEW_MS
        } else {
            self.behind_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn injected_offsets_never_exceed_max_skew() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..100_000 {
            assert!(bump_ms(&mut rng).unsigned_abs() <= MAX_SKEW_MS);
            let (delta, _) = strobe_params(&mut rng);
            assert!((0..=MAX_SKEW_MS as i64).contains(&delta));
        }
    }

    #[test]
    fn skew_bounds() {
        let mut s = SkewBounds::default();
        s.note(1500);
        s.note(-20);
        s.note(700);
        s.note(-9000);
        assert_eq!((s.ahead(), s.behind()), (1500, 9000));
        s.unknown = true;
        assert_eq!((s.ahead(), s.behind()), (MAX_SKEW_MS, MAX_SKEW_MS));
    }
}

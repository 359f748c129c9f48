//! Clock faults through libfaketime: each broker runs with `LD_PRELOAD=libfaketime` reading its offset from a
//! file (`FAKETIME_NO_CACHE=1`, so a write takes effect at once), and `FAKETIME_DONT_FAKE_MONOTONIC=1`, so
//! only the wall clock moves — Raft timers run on the monotonic clock, as on a real host whose NTP steps.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;

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

/// Jepsen's bump: ±1.5^(6+U[0,25)) ms, clamped to 300 s.
pub fn bump_ms(rng: &mut impl Rng) -> i64 {
    let magnitude = 1.5f64.powf(6.0 + rng.gen_range(0.0..25.0)).min(300_000.0) as i64;
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

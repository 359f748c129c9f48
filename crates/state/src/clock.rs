//! Time as the replicated state knows it: the newest time stamped into a produce entry by the leader's
//! store clock. `apply` never reads a clock; everything "due" is decided against this value, so every
//! replica decides alike.
//!
//! The leader stamps `max(its wall clock, the newest committed stamp)`, so the value never goes back, also
//! across leaders. A leader whose clock runs ahead by `s` moves time forward by `s` (scheduled messages
//! are then delivered up to `s` early by real time); one whose clock is behind stamps the old value until
//! its clock catches up (deliveries are late by that much). The broker warns when a new leader's first
//! stamp jumps far past the last one.

use serde::{Deserialize, Serialize};

/// The replicated clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Newest stamped time, ms since the epoch; 0 before the first stamped entry.
    pub now_ms: i64,
}

impl Clock {
    /// Takes an entry's stamp; a stamp below the current time (not made by this version's leaders) does not
    /// move time back.
    pub(crate) fn advance(&mut self, stamp_ms: i64) {
        self.now_ms = self.now_ms.max(stamp_ms);
    }
}

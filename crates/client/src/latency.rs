//! RocketMQ's latency fault tolerance (`MQFaultStrategy`, opt-in): a broker group whose last send was slow or
//! failed is avoided for a while, the longer the slower. Thresholds are RocketMQ's defaults.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Send latencies (ms) at or above which a broker is set aside for the matching duration.
const LATENCY_MAX_MS: [u64; 7] = [50, 100, 550, 1000, 2000, 3000, 15000];
/// How long (ms) a broker is set aside for each latency step.
const NOT_AVAILABLE_MS: [u64; 7] = [0, 0, 30000, 60000, 120000, 180000, 600000];
/// The latency charged to a failed send ("isolation"), as RocketMQ does.
const FAILED_SEND_LATENCY_MS: u64 = 30000;

#[derive(Debug, Clone, Copy)]
struct FaultItem {
    latency_ms: u64,
    available_at: Instant,
}

/// Per broker group: when it may be used again.
#[derive(Debug, Default)]
pub struct LatencyFaultTolerance {
    items: Mutex<HashMap<String, FaultItem>>,
}

impl LatencyFaultTolerance {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a send to `broker` that took `latency`; a failed send counts as 30 s.
    pub fn record(&self, broker: &str, latency: Duration, failed: bool) {
        let latency_ms = if failed { FAILED_SEND_LATENCY_MS } else { latency.as_millis() as u64 };
        let pause = not_available_for(latency_ms);
        let item = FaultItem { latency_ms, available_at: Instant::now() + pause };
        self.items.lock().unwrap_or_else(|e| e.into_inner()).insert(broker.to_string(), item);
    }

    /// True when `broker` is not set aside.
    pub fn is_available(&self, broker: &str) -> bool {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).get(broker).is_none_or(|i| Instant::now() >= i.available_at)
    }

    /// Among `candidates` that are all set aside, the one that is the least bad: soonest available, then
    /// lowest latency (RocketMQ's `pickOneAtLeast`).
    pub fn least_bad<'a>(&self, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        candidates.into_iter().min_by_key(|b| items.get(*b).map(|i| (i.available_at, i.latency_ms)).unwrap_or((Instant::now(), 0)))
    }
}

fn not_available_for(latency_ms: u64) -> Duration {
    LATENCY_MAX_MS
        .iter()
        .zip(NOT_AVAILABLE_MS)
        .rev()
        .find(|(max, _)| latency_ms >= **max)
        .map(|(_, pause)| Duration::from_millis(pause))
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_grows_with_latency_as_in_rocketmq() {
        assert_eq!(not_available_for(10), Duration::ZERO);
        assert_eq!(not_available_for(100), Duration::ZERO);
        assert_eq!(not_available_for(549), Duration::ZERO);
        assert_eq!(not_available_for(550), Duration::from_secs(30));
        assert_eq!(not_available_for(2500), Duration::from_secs(120));
        assert_eq!(not_available_for(30000), Duration::from_secs(600));
    }

    #[test]
    fn a_failed_broker_is_set_aside_and_a_fast_one_is_not() {
        let t = LatencyFaultTolerance::new();
        t.record("a", Duration::from_millis(3), false);
        t.record("b", Duration::from_millis(3), true);
        assert!(t.is_available("a"));
        assert!(!t.is_available("b"));
        assert!(t.is_available("never-seen"));
        t.record("c", Duration::from_millis(700), false);
        assert_eq!(t.least_bad(["b", "c"]), Some("c"), "c comes back sooner than b");
    }
}

//! Natural batching of concurrent sends (the producer's `auto_batch`, after RocketMQ 5's `autoBatch` and
//! Kafka's record accumulator, but without a linger delay).
//!
//! Sends are grouped into *lanes*: one per topic for sends to any queue, one per explicit queue. A lane lets
//! up to `in_flight_max` requests be outstanding. A send that finds a free slot goes out at once, alone, so
//! a lightly loaded producer sees no added latency. A send that finds every slot busy waits in the lane;
//! when a request completes, everything that waited (up to a byte and count bound) leaves as one batch
//! request, which the broker stores all or nothing. Under load this turns N small requests into one, and
//! the broker's per-request cost is paid once per batch.
//!
//! This module only keeps the books (who sends now, what goes in the next batch); the producer sends.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Which lane a send belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LaneKey {
    pub topic: String,
    /// `None` for sends to any queue of the topic; `Some((broker, queue id))` for an explicit queue.
    pub queue: Option<(String, i32)>,
}

/// Bounds of a lane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneLimits {
    /// Requests outstanding per lane.
    pub in_flight_max: usize,
    /// Most encoded bytes one batch carries (a single larger send still goes, alone).
    pub batch_bytes_max: usize,
    /// Most messages one batch carries.
    pub batch_count_max: usize,
}

struct Lane<T> {
    in_flight: usize,
    waiting: VecDeque<(T, usize)>,
}

/// The lanes of one producer.
pub(crate) struct Lanes<T> {
    limits: LaneLimits,
    lanes: Mutex<HashMap<LaneKey, Lane<T>>>,
}

impl<T> Lanes<T> {
    pub fn new(limits: LaneLimits) -> Self {
        debug_assert!(limits.in_flight_max >= 1 && limits.batch_count_max >= 1);
        Lanes { limits, lanes: Mutex::default() }
    }

    /// Admits a send of `bytes` encoded bytes. `Err(item)`: a slot was free and is now the caller's; send
    /// `item` now and call [`Lanes::finish`] when the request completes. `Ok(())`: the item waits and will
    /// come back from a later `finish` as part of a batch.
    pub fn admit(&self, key: &LaneKey, item: T, bytes: usize) -> Result<(), T> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = match lanes.get_mut(key) {
            Some(l) => l,
            None => lanes.entry(key.clone()).or_insert_with(|| Lane { in_flight: 0, waiting: VecDeque::new() }),
        };
        // Waiting items always have every slot busy: a freed slot takes them at once.
        debug_assert!(lane.waiting.is_empty() || lane.in_flight == self.limits.in_flight_max);
        if lane.in_flight < self.limits.in_flight_max {
            lane.in_flight += 1;
            return Err(item);
        }
        lane.waiting.push_back((item, bytes));
        Ok(())
    }

    /// A request of `key`'s lane completed. Returns the next batch to send on the same slot, or `None` when
    /// nothing waits (the slot is released).
    pub fn finish(&self, key: &LaneKey) -> Option<Vec<T>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes.get_mut(key)?;
        debug_assert!(lane.in_flight > 0);
        if lane.waiting.is_empty() {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 {
                lanes.remove(key);
            }
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some((_, n)) = lane.waiting.front() {
            let fits = batch.is_empty() || (bytes + n <= self.limits.batch_bytes_max && batch.len() < self.limits.batch_count_max);
            if !fits {
                break;
            }
            bytes += n;
            if let Some((item, _)) = lane.waiting.pop_front() {
                batch.push(item);
            }
        }
        Some(batch)
    }

    /// Removes and returns everything waiting in every lane (used when no runtime is left to send it).
    pub fn drain_all(&self) -> Vec<T> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.values_mut().flat_map(|l| l.waiting.drain(..).map(|(t, _)| t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(t: &str) -> LaneKey {
        LaneKey { topic: t.into(), queue: None }
    }

    fn lanes(in_flight_max: usize, batch_bytes_max: usize, batch_count_max: usize) -> Lanes<u32> {
        Lanes::new(LaneLimits { in_flight_max, batch_bytes_max, batch_count_max })
    }

    #[test]
    fn free_slots_send_at_once_and_later_sends_wait_for_a_completion() {
        let l = lanes(2, 1000, 100);
        assert_eq!(l.admit(&key("t"), 1, 10), Err(1));
        assert_eq!(l.admit(&key("t"), 2, 10), Err(2));
        assert_eq!(l.admit(&key("t"), 3, 10), Ok(()));
        assert_eq!(l.admit(&key("t"), 4, 10), Ok(()));
        // Another topic has its own slots.
        assert_eq!(l.admit(&key("u"), 9, 10), Err(9));
        assert_eq!(l.finish(&key("t")), Some(vec![3, 4]), "everything waiting leaves as one batch on the freed slot");
        assert_eq!(l.finish(&key("t")), None);
        assert_eq!(l.finish(&key("t")), None);
        // Both slots are free again.
        assert_eq!(l.admit(&key("t"), 5, 10), Err(5));
        assert_eq!(l.admit(&key("t"), 6, 10), Err(6));
    }

    #[test]
    fn batches_respect_byte_and_count_bounds_but_an_oversized_send_still_goes_alone() {
        let l = lanes(1, 100, 3);
        assert_eq!(l.admit(&key("t"), 0, 1), Err(0));
        for (i, bytes) in [(1, 40), (2, 40), (3, 40), (4, 500), (5, 1), (6, 1), (7, 1), (8, 1)] {
            assert_eq!(l.admit(&key("t"), i, bytes), Ok(()));
        }
        assert_eq!(l.finish(&key("t")), Some(vec![1, 2]), "a third 40-byte send would pass 100 bytes");
        assert_eq!(l.finish(&key("t")), Some(vec![3]));
        assert_eq!(l.finish(&key("t")), Some(vec![4]), "larger than the bound: alone");
        assert_eq!(l.finish(&key("t")), Some(vec![5, 6, 7]), "at most 3 per batch");
        assert_eq!(l.finish(&key("t")), Some(vec![8]));
        assert_eq!(l.finish(&key("t")), None);
    }

    proptest! {
        /// Whatever the interleaving of admissions and completions, every admitted send is sent exactly once,
        /// in admission order within its lane, and never more than `in_flight_max` requests are outstanding.
        #[test]
        fn every_send_goes_exactly_once_in_order(ops in proptest::collection::vec((any::<bool>(), 0usize..3, 1usize..60), 1..300),
                                                 in_flight_max in 1usize..4) {
            let l = lanes(in_flight_max, 100, 4);
            let keys = [key("a"), key("b"), LaneKey { topic: "a".into(), queue: Some(("b".into(), 1)) }];
            let mut next = 0u32;
            let mut sent: Vec<Vec<u32>> = vec![Vec::new(); 3];
            let mut outstanding = [0usize; 3];
            let mut admitted = [0u32; 3];
            for (admit, lane, bytes) in ops {
                if admit || outstanding[lane] == 0 {
                    let id = next;
                    next += 1;
                    admitted[lane] += 1;
                    if let Err(id) = l.admit(&keys[lane], id, bytes) {
                        sent[lane].push(id);
                        outstanding[lane] += 1;
                    }
                } else if let Some(batch) = l.finish(&keys[lane]) {
                    prop_assert!(!batch.is_empty() && batch.len() <= 4);
                    sent[lane].extend(batch);
                } else {
                    outstanding[lane] -= 1;
                }
                prop_assert!(outstanding[lane] <= in_flight_max);
            }
            // Complete everything.
            for lane in 0..3 {
                while outstanding[lane] > 0 {
                    match l.finish(&keys[lane]) {
                        Some(batch) => sent[lane].extend(batch),
                        None => outstanding[lane] -= 1,
                    }
                }
                prop_assert_eq!(sent[lane].len() as u32, admitted[lane]);
                prop_assert!(sent[lane].windows(2).all(|w| w[0] < w[1]), "lane {} out of order: {:?}", lane, sent[lane]);
            }
            prop_assert!(l.drain_all().is_empty());
        }
    }
}

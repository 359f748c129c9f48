//! Consumer-group queue allocation: how a clustering consumer group splits a topic's message queues among its members.
//!
//! During a rebalance every consumer of a group independently fetches the same sorted queue list and the same sorted
//! consumer-id list, then runs an [`AllocateStrategy`] to pick its own share. Nobody coordinates, so the strategies must
//! be deterministic functions of their inputs, and — so that Java and Rust consumers can share one group — they must
//! produce exactly the mapping of the Apache RocketMQ 4.9 Java classes in
//! `org.apache.rocketmq.client.consumer.rebalance`:
//!
//! | Rust                 | Java                                       | [`AllocateStrategy::name`] |
//! |----------------------|--------------------------------------------|----------------------------|
//! | [`Averagely`]        | `AllocateMessageQueueAveragely` (default)  | `AVG`                      |
//! | [`AveragelyByCircle`]| `AllocateMessageQueueAveragelyByCircle`    | `AVG_BY_CIRCLE`            |
//! | [`ConsistentHash`]   | `AllocateMessageQueueConsistentHash`       | `CONSISTENT_HASH`          |
//! | [`ByConfig`]         | `AllocateMessageQueueByConfig`             | `CONFIG`                   |
//! | [`ByMachineRoom`]    | `AllocateMessageQueueByMachineRoom`        | `MACHINE_ROOM`             |
//!
//! Where Java throws (empty current id, empty queue or consumer list) or logs a "[BUG]" because the current consumer is
//! not in the list, these implementations return an empty allocation instead; none of them panics on any input.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use raftmq_remoting::body::MessageQueue;

/// A rule that decides which of a topic's queues one member of a consumer group consumes.
pub trait AllocateStrategy: Send + Sync + std::fmt::Debug {
    /// Strategy name as RocketMQ calls it (e.g. "AVG", "AVG_BY_CIRCLE", "CONSISTENT_HASH", "CONFIG", "MACHINE_ROOM").
    fn name(&self) -> &str;

    /// The queues `current` should consume. `queues` and `consumers` are sorted and deduplicated by the caller
    /// (every consumer of the group computes the same input).
    fn allocate(&self, group: &str, current: &str, queues: &[MessageQueue], consumers: &[String]) -> Vec<MessageQueue>;
}

/// Position of `current` in `consumers`, or `None` whenever Java's `AbstractAllocateMessageQueueStrategy.check` would
/// throw or return false. Callers then allocate nothing.
fn consumer_index(current: &str, queues: &[MessageQueue], consumers: &[String]) -> Option<usize> {
    if current.is_empty() || queues.is_empty() || consumers.is_empty() {
        return None;
    }
    // `List.indexOf`: the first occurrence, should the caller ever pass duplicates.
    consumers.iter().position(|consumer| consumer == current)
}

/// Contiguous, near-equal blocks in consumer order (`AllocateMessageQueueAveragely`, RocketMQ's default).
///
/// With `q` queues and `c` consumers, the first `q % c` consumers take `q / c + 1` queues and the rest take `q / c`;
/// consumer `i` takes the `i`-th block. 8 queues over 3 consumers gives `[0,1,2] [3,4,5] [6,7]`. When there are more
/// consumers than queues, each of the first `q` consumers takes one queue and the others take none.
#[derive(Debug, Clone, Default)]
pub struct Averagely;

impl AllocateStrategy for Averagely {
    fn name(&self) -> &str {
        "AVG"
    }

    fn allocate(&self, _group: &str, current: &str, queues: &[MessageQueue], consumers: &[String]) -> Vec<MessageQueue> {
        let Some(index) = consumer_index(current, queues, consumers) else {
            return Vec::new();
        };
        let (queue_count, consumer_count) = (queues.len(), consumers.len());
        let remainder = queue_count % consumer_count;
        let takes_extra = index < remainder;
        let block_size = if queue_count <= consumer_count {
            1
        } else if takes_extra {
            queue_count / consumer_count + 1
        } else {
            queue_count / consumer_count
        };
        // The blocks before `index` include one extra queue for each of the first `remainder` consumers.
        let start = if takes_extra { index * block_size } else { index * block_size + remainder };
        // `start` lies past the end for surplus consumers; they get nothing rather than an out-of-range slice.
        let len = block_size.min(queue_count.saturating_sub(start));
        queues.get(start..start + len).map(<[MessageQueue]>::to_vec).unwrap_or_default()
    }
}

/// Round-robin dealing (`AllocateMessageQueueAveragelyByCircle`): consumer `i` takes queues `i`, `i + c`, `i + 2c`, …
///
/// 8 queues over 3 consumers gives `[0,3,6] [1,4,7] [2,5]`.
#[derive(Debug, Clone, Default)]
pub struct AveragelyByCircle;

impl AllocateStrategy for AveragelyByCircle {
    fn name(&self) -> &str {
        "AVG_BY_CIRCLE"
    }

    fn allocate(&self, _group: &str, current: &str, queues: &[MessageQueue], consumers: &[String]) -> Vec<MessageQueue> {
        let Some(index) = consumer_index(current, queues, consumers) else {
            return Vec::new();
        };
        queues.iter().skip(index).step_by(consumers.len()).cloned().collect()
    }
}

/// Consistent hashing (`AllocateMessageQueueConsistentHash` over `ConsistentHashRouter`): adding or removing a consumer
/// only moves the queues that consumer gains or loses.
///
/// Each consumer id is placed on a ring of 32-bit positions `virtual_nodes` times, under the keys `"{id}-0"`,
/// `"{id}-1"`, …; each queue hashes its Java `MessageQueue.toString()` (`MessageQueue [topic=T, brokerName=B,
/// queueId=N]`) and belongs to the first ring entry at or after that position, wrapping around. A key's position is
/// the first four bytes of the MD5 digest of its UTF-8 bytes, read big-endian. When two virtual nodes collide, the one
/// inserted later (later consumer, then higher replica index) wins, as with Java's `TreeMap.put`.
///
/// Building the ring costs `consumers × virtual_nodes` MD5 digests. With `virtual_nodes == 0` the ring is empty and
/// every consumer gets nothing, as in Java.
#[derive(Debug, Clone)]
pub struct ConsistentHash {
    /// Ring entries per consumer; RocketMQ's default is 10.
    pub virtual_nodes: usize,
}

impl ConsistentHash {
    /// A consistent-hash strategy placing each consumer `virtual_nodes` times on the ring.
    pub fn new(virtual_nodes: usize) -> Self {
        Self { virtual_nodes }
    }

    /// The hash ring: position → consumer id.
    fn ring<'a>(&self, consumers: &'a [String]) -> BTreeMap<u32, &'a str> {
        let mut ring: BTreeMap<u32, &'a str> = BTreeMap::new();
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        for consumer in consumers {
            // Java numbers a re-added node's replicas after the ring entries it already owns; this only matters if a
            // caller passes a duplicate id, but keeps the ring identical even then.
            let existing = if placed.insert(consumer.as_str()) { 0 } else { ring.values().filter(|owner| **owner == consumer).count() };
            for replica in existing..existing + self.virtual_nodes {
                ring.insert(ring_position(&format!("{consumer}-{replica}")), consumer.as_str());
            }
        }
        ring
    }
}

impl Default for ConsistentHash {
    /// Ten virtual nodes per consumer, as RocketMQ's no-argument constructor.
    fn default() -> Self {
        Self::new(10)
    }
}

impl AllocateStrategy for ConsistentHash {
    fn name(&self) -> &str {
        "CONSISTENT_HASH"
    }

    fn allocate(&self, _group: &str, current: &str, queues: &[MessageQueue], consumers: &[String]) -> Vec<MessageQueue> {
        if consumer_index(current, queues, consumers).is_none() {
            return Vec::new();
        }
        let ring = self.ring(consumers);
        queues
            .iter()
            .filter(|queue| {
                let position = ring_position(&java_queue_string(queue));
                let owner = ring.range(position..).next().or_else(|| ring.iter().next()).map(|(_, owner)| *owner);
                owner == Some(current)
            })
            .cloned()
            .collect()
    }
}

/// Ring position of a key, as `ConsistentHashRouter.MD5Hash.hash`: the first four digest bytes, big-endian, unsigned.
/// Java returns it as a non-negative `long` below 2^32, so `u32` orders identically.
fn ring_position(key: &str) -> u32 {
    let digest = Md5::digest(key.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Java's `MessageQueue.toString()`, the key queues are hashed under.
fn java_queue_string(queue: &MessageQueue) -> String {
    format!("MessageQueue [topic={}, brokerName={}, queueId={}]", queue.topic, queue.broker_name, queue.queue_id)
}

/// A fixed, per-consumer queue list (`AllocateMessageQueueByConfig`).
///
/// Like the Java class, [`allocate`](AllocateStrategy::allocate) returns the configured list as is, ignoring its
/// arguments entirely: queues no longer in the route are still returned, and so is the list when `current` is not in
/// `consumers`. Each consumer is configured separately, so nothing needs to agree across the group.
#[derive(Debug, Clone)]
pub struct ByConfig {
    /// The queues this consumer always consumes.
    pub queues: Vec<MessageQueue>,
}

impl ByConfig {
    /// A strategy that always allocates `queues`.
    pub fn new(queues: Vec<MessageQueue>) -> Self {
        Self { queues }
    }
}

impl AllocateStrategy for ByConfig {
    fn name(&self) -> &str {
        "CONFIG"
    }

    fn allocate(&self, _group: &str, _current: &str, _queues: &[MessageQueue], _consumers: &[String]) -> Vec<MessageQueue> {
        self.queues.clone()
    }
}

/// Machine-room filtering (`AllocateMessageQueueByMachineRoom`): only queues on brokers named `"{room}@{broker}"` with
/// `room` in [`consume_rooms`](Self::consume_rooms) are shared out, in equal blocks plus one leftover each.
///
/// With `q` eligible queues and `c` consumers, consumer `i` takes the block `[i * (q / c), (i + 1) * (q / c))` and, if
/// `i < q % c`, also the leftover queue `i + (q / c) * c`. Broker names are split on `'@'` as Java's
/// `String.split("@")` does (trailing empty pieces dropped), and must yield exactly two pieces: `"room1@broker-a"` and
/// `"room1@broker-a@"` qualify for room `room1`, while `"broker-a"`, `"room1@"` and `"room1@a@b"` never do.
#[derive(Debug, Clone)]
pub struct ByMachineRoom {
    /// Machine rooms (the part of the broker name before `'@'`) this group consumes from.
    pub consume_rooms: BTreeSet<String>,
}

impl ByMachineRoom {
    /// A strategy consuming only from brokers in `consume_rooms`.
    pub fn new(consume_rooms: BTreeSet<String>) -> Self {
        Self { consume_rooms }
    }

    /// Whether `broker_name` is `"{room}@{broker}"` with `room` one of ours.
    fn is_consumed(&self, broker_name: &str) -> bool {
        let mut pieces: Vec<&str> = broker_name.split('@').collect();
        // Java's split drops trailing empty pieces, so "room@broker@" still counts as two. (It keeps a lone empty
        // piece for an empty input, where we drop it; either way that is not two pieces.)
        while pieces.last() == Some(&"") {
            pieces.pop();
        }
        pieces.len() == 2 && self.consume_rooms.contains(pieces[0])
    }
}

impl AllocateStrategy for ByMachineRoom {
    fn name(&self) -> &str {
        "MACHINE_ROOM"
    }

    fn allocate(&self, _group: &str, current: &str, queues: &[MessageQueue], consumers: &[String]) -> Vec<MessageQueue> {
        let Some(index) = consumer_index(current, queues, consumers) else {
            return Vec::new();
        };
        let eligible: Vec<&MessageQueue> = queues.iter().filter(|queue| self.is_consumed(&queue.broker_name)).collect();
        let consumer_count = consumers.len();
        let block_size = eligible.len() / consumer_count;
        let leftovers = eligible.len() % consumer_count;
        let start = index * block_size;
        let mut allocated: Vec<MessageQueue> = eligible.get(start..start + block_size).unwrap_or_default().iter().map(|q| (*q).clone()).collect();
        // The leftovers sit after all the full blocks; the first `leftovers` consumers take one each.
        if index < leftovers {
            allocated.extend(eligible.get(index + block_size * consumer_count).map(|q| (*q).clone()));
        }
        allocated
    }
}

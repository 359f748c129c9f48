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
//! Where Java throws (empty current id, empty queue or consumer list) or logs a `[BUG]` line because the current consumer is
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
        let mut allocated: Vec<MessageQueue> =
            eligible.get(start..start + block_size).unwrap_or_default().iter().map(|q| (*q).clone()).collect();
        // The leftovers sit after all the full blocks; the first `leftovers` consumers take one each.
        if index < leftovers {
            allocated.extend(eligible.get(index + block_size * consumer_count).map(|q| (*q).clone()));
        }
        allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn queue(topic: &str, broker: &str, id: i32) -> MessageQueue {
        MessageQueue { topic: topic.to_string(), broker_name: broker.to_string(), queue_id: id }
    }

    /// `count` sorted queues of one topic spread over brokers of 8 queues each (`broker-0` 0..8, `broker-1` 0..8, …).
    fn spread_queues(count: usize) -> Vec<MessageQueue> {
        (0..count).map(|i| queue("TopicTest", &format!("broker-{}", i / 8), (i % 8) as i32)).collect()
    }

    fn consumer_ids(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("cid-{i:02}")).collect()
    }

    /// Every consumer's allocation, in consumer order.
    fn allocations(strategy: &dyn AllocateStrategy, queues: &[MessageQueue], consumers: &[String]) -> Vec<Vec<MessageQueue>> {
        consumers.iter().map(|consumer| strategy.allocate("group", consumer, queues, consumers)).collect()
    }

    fn ids(queues: &[MessageQueue]) -> Vec<i32> {
        queues.iter().map(|q| q.queue_id).collect()
    }

    /// Allocations rendered like the Java reference printout: `[0, 1, 2] [3, 4]`.
    fn render(allocations: &[Vec<MessageQueue>]) -> String {
        allocations.iter().map(|a| format!("{:?}", ids(a))).collect::<Vec<_>>().join(" ")
    }

    /// Queues labelled by the broker's last character and the queue id (`a3` = broker-a queue 3).
    fn labels(queues: &[MessageQueue]) -> String {
        queues.iter().map(|q| format!("{}{}", q.broker_name.chars().last().unwrap_or('?'), q.queue_id)).collect::<Vec<_>>().join(" ")
    }

    /// Union equals `expected` and no queue is allocated twice: the sorted concatenation is exactly `expected`.
    fn check_partition(allocations: &[Vec<MessageQueue>], expected: &[MessageQueue]) -> Result<(), TestCaseError> {
        let mut all: Vec<MessageQueue> = allocations.iter().flatten().cloned().collect();
        all.sort();
        let mut expected = expected.to_vec();
        expected.sort();
        prop_assert_eq!(all, expected);
        Ok(())
    }

    fn check_balanced(allocations: &[Vec<MessageQueue>]) -> Result<(), TestCaseError> {
        let sizes: Vec<usize> = allocations.iter().map(Vec::len).collect();
        let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        prop_assert!(max - min <= 1, "unbalanced sizes {:?}", sizes);
        Ok(())
    }

    // Reference outputs printed by the Apache RocketMQ 4.9.8 Java classes for the same inputs
    // (queues `0..n` on one broker, consumers `cid-0..cid-c`).
    const AVERAGELY_JAVA: &[(usize, usize, &str)] = &[
        (1, 1, "[0]"),
        (1, 3, "[0] [] []"),
        (3, 3, "[0] [1] [2]"),
        (5, 2, "[0, 1, 2] [3, 4]"),
        (7, 3, "[0, 1, 2] [3, 4] [5, 6]"),
        (8, 3, "[0, 1, 2] [3, 4, 5] [6, 7]"),
        (10, 4, "[0, 1, 2] [3, 4, 5] [6, 7] [8, 9]"),
        (11, 5, "[0, 1, 2] [3, 4] [5, 6] [7, 8] [9, 10]"),
        (4, 6, "[0] [1] [2] [3] [] []"),
        (17, 5, "[0, 1, 2, 3] [4, 5, 6, 7] [8, 9, 10] [11, 12, 13] [14, 15, 16]"),
    ];
    const BY_CIRCLE_JAVA: &[(usize, usize, &str)] = &[
        (1, 1, "[0]"),
        (1, 3, "[0] [] []"),
        (3, 3, "[0] [1] [2]"),
        (5, 2, "[0, 2, 4] [1, 3]"),
        (7, 3, "[0, 3, 6] [1, 4] [2, 5]"),
        (8, 3, "[0, 3, 6] [1, 4, 7] [2, 5]"),
        (10, 4, "[0, 4, 8] [1, 5, 9] [2, 6] [3, 7]"),
        (11, 5, "[0, 5, 10] [1, 6] [2, 7] [3, 8] [4, 9]"),
        (4, 6, "[0] [1] [2] [3] [] []"),
        (17, 5, "[0, 5, 10, 15] [1, 6, 11, 16] [2, 7, 12] [3, 8, 13] [4, 9, 14]"),
    ];

    fn single_broker_queues(count: usize) -> Vec<MessageQueue> {
        (0..count).map(|i| queue("TopicTest", "b", i as i32)).collect()
    }

    fn java_consumers(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("cid-{i}")).collect()
    }

    #[test]
    fn averagely_matches_java_reference() {
        for &(queue_count, consumer_count, expected) in AVERAGELY_JAVA {
            let got = allocations(&Averagely, &single_broker_queues(queue_count), &java_consumers(consumer_count));
            assert_eq!(render(&got), expected, "{queue_count} queues / {consumer_count} consumers");
        }
    }

    #[test]
    fn averagely_by_circle_matches_java_reference() {
        for &(queue_count, consumer_count, expected) in BY_CIRCLE_JAVA {
            let got = allocations(&AveragelyByCircle, &single_broker_queues(queue_count), &java_consumers(consumer_count));
            assert_eq!(render(&got), expected, "{queue_count} queues / {consumer_count} consumers");
        }
    }

    #[test]
    fn more_consumers_than_queues_leaves_the_last_consumers_idle() {
        let queues = single_broker_queues(2);
        let consumers = consumer_ids(5);
        for strategy in [&Averagely as &dyn AllocateStrategy, &AveragelyByCircle] {
            let got = allocations(strategy, &queues, &consumers);
            assert_eq!(render(&got), "[0] [1] [] [] []", "{}", strategy.name());
        }
    }

    #[test]
    fn ring_position_is_big_endian_first_four_md5_bytes() {
        // Values printed by Java's ConsistentHashRouter.MD5Hash.hash (MD5("") = d41d8cd9…, MD5("abc") = 90015098…).
        assert_eq!(ring_position(""), 0xd41d_8cd9);
        assert_eq!(ring_position("abc"), 0x9001_5098);
        assert_eq!(ring_position("192.168.0.1@1234-0"), 80_461_471);
        assert_eq!(ring_position("MessageQueue [topic=TopicTest, brokerName=broker-a, queueId=0]"), 1_987_926_524);
    }

    #[test]
    fn queue_hash_key_is_java_to_string() {
        assert_eq!(
            java_queue_string(&queue("TopicTest", "broker-a", -1)),
            "MessageQueue [topic=TopicTest, brokerName=broker-a, queueId=-1]"
        );
    }

    fn two_broker_queues(per_broker: i32) -> Vec<MessageQueue> {
        let mut queues: Vec<MessageQueue> =
            ["broker-a", "broker-b"].iter().flat_map(|b| (0..per_broker).map(move |i| queue("TopicTest", b, i))).collect();
        queues.sort();
        queues
    }

    fn three_clients() -> Vec<String> {
        vec!["192.168.0.1@1234".to_string(), "192.168.0.2@5678".to_string(), "192.168.0.3@9012".to_string()]
    }

    fn render_labels(allocations: &[Vec<MessageQueue>]) -> Vec<String> {
        allocations.iter().map(|a| labels(a)).collect()
    }

    #[test]
    fn consistent_hash_matches_java_reference() {
        // Reference outputs of AllocateMessageQueueConsistentHash (RocketMQ 4.9.8) for the same inputs.
        let clients = three_clients();
        let got = allocations(&ConsistentHash::default(), &two_broker_queues(4), &clients);
        assert_eq!(render_labels(&got), ["a1 a3 b2 b3", "a0 b0 b1", "a2"]);

        let got = allocations(&ConsistentHash::default(), &two_broker_queues(8), &clients);
        assert_eq!(render_labels(&got), ["a1 a3 a7 b2 b3 b4 b6", "a0 a4 b0 b1 b7", "a2 a5 a6 b5"]);

        let got = allocations(&ConsistentHash::new(3), &two_broker_queues(8), &clients);
        assert_eq!(render_labels(&got), ["a1 a6 a7 b3 b4 b6", "a0 a3 a4 a5 b0 b2", "a2 b1 b5 b7"]);

        let got = allocations(&ConsistentHash::new(1), &two_broker_queues(8), &clients);
        assert_eq!(render_labels(&got), ["a1 a3 a4 a7 b2 b3", "a0 a5 a6 b0 b4 b5 b6", "a2 b1 b7"]);
    }

    #[test]
    fn consistent_hash_removing_a_consumer_moves_only_its_queues() {
        let queues = two_broker_queues(8);
        let mut clients = three_clients();
        clients.remove(1);
        let got = allocations(&ConsistentHash::default(), &queues, &clients);
        // Java reference; the survivors keep what they had above and split the departed client's a0 a4 b0 b1 b7.
        assert_eq!(render_labels(&got), ["a0 a1 a3 a7 b0 b2 b3 b4 b6", "a2 a4 a5 a6 b1 b5 b7"]);
    }

    #[test]
    fn consistent_hash_collision_goes_to_the_later_consumer() {
        // "client-90836-0" and "client-9639-0" share ring position 0xfe55c55a. With one virtual node each the ring has a
        // single entry, which Java's TreeMap.put gives to the consumer inserted last.
        assert_eq!(ring_position("client-90836-0"), ring_position("client-9639-0"));
        let consumers = vec!["client-90836".to_string(), "client-9639".to_string()];
        let got = allocations(&ConsistentHash::new(1), &single_broker_queues(4), &consumers);
        assert_eq!(render(&got), "[] [0, 1, 2, 3]");
    }

    #[test]
    fn consistent_hash_defaults_to_ten_virtual_nodes_and_zero_allocates_nothing() {
        assert_eq!(ConsistentHash::default().virtual_nodes, 10);
        let clients = three_clients();
        let got = allocations(&ConsistentHash::new(0), &two_broker_queues(4), &clients);
        assert!(got.iter().all(Vec::is_empty), "{got:?}");
    }

    #[test]
    fn by_machine_room_matches_java_reference() {
        // RocketMQ's own unit test: 5 queues in room1, 5 in room2, consuming room1 with two consumers.
        let queues: Vec<MessageQueue> =
            (0..10).map(|i| queue("topic", if i < 5 { "room1@broker-a" } else { "room2@broker-b" }, i)).collect();
        let strategy = ByMachineRoom::new(BTreeSet::from(["room1".to_string()]));
        let got = allocations(&strategy, &queues, &java_consumers(2));
        assert_eq!(render(&got), "[0, 1, 4] [2, 3]");
    }

    #[test]
    fn by_machine_room_filters_broker_names_like_java_split() {
        let brokers = ["broker-x", "room1@", "room1@a", "room1@a@", "room1@a@b", "room2@b", "room3@c", "@", ""];
        let mut queues: Vec<MessageQueue> =
            brokers.iter().enumerate().flat_map(|(n, b)| (0..2).map(move |i| queue("T", b, (n * 2) as i32 + i))).collect();
        queues.sort();
        let strategy = ByMachineRoom::new(BTreeSet::from(["room1".to_string(), "room2".to_string()]));
        let got = allocations(&strategy, &queues, &java_consumers(3));
        // Java: only room1@a, room1@a@ (trailing empty piece dropped) and room2@b qualify; room3 is not consumed.
        assert_eq!(render(&got), "[4, 5] [6, 7] [10, 11]");

        let no_rooms = ByMachineRoom::new(BTreeSet::new());
        assert!(allocations(&no_rooms, &queues, &java_consumers(3)).iter().all(Vec::is_empty));
    }

    #[test]
    fn missing_or_empty_current_consumer_gets_nothing() {
        let queues = two_broker_queues(4);
        let consumers = three_clients();
        let room_queues = vec![queue("T", "room1@a", 0), queue("T", "room1@a", 1)];
        let rooms = ByMachineRoom::new(BTreeSet::from(["room1".to_string()]));
        let strategies: Vec<(Box<dyn AllocateStrategy>, &[MessageQueue])> = vec![
            (Box::new(Averagely), &queues),
            (Box::new(AveragelyByCircle), &queues),
            (Box::new(ConsistentHash::default()), &queues),
            (Box::new(rooms), &room_queues),
        ];
        for (strategy, queues) in &strategies {
            let name = strategy.name();
            // Sanity: the first consumer does get something from this input.
            assert!(!strategy.allocate("g", &consumers[0], queues, &consumers).is_empty(), "{name}");
            assert!(strategy.allocate("g", "10.0.0.9@1", queues, &consumers).is_empty(), "{name}: absent consumer");
            assert!(strategy.allocate("g", "", queues, &consumers).is_empty(), "{name}: empty id");
            assert!(strategy.allocate("g", &consumers[0], &[], &consumers).is_empty(), "{name}: no queues");
            assert!(strategy.allocate("g", &consumers[0], queues, &[]).is_empty(), "{name}: no consumers");
        }
    }

    #[test]
    fn by_config_returns_its_list_as_is() {
        let configured = vec![queue("T", "broker-a", 3), queue("T", "gone", 0)];
        let strategy = ByConfig::new(configured.clone());
        let queues = two_broker_queues(4);
        let consumers = three_clients();
        assert_eq!(strategy.allocate("g", &consumers[1], &queues, &consumers), configured);
        assert_eq!(strategy.allocate("g", "absent", &[], &[]), configured);
    }

    #[test]
    fn names_match_rocketmq() {
        let by_config = ByConfig::new(Vec::new());
        let by_room = ByMachineRoom::new(BTreeSet::new());
        let strategies: [&dyn AllocateStrategy; 5] = [&Averagely, &AveragelyByCircle, &ConsistentHash::default(), &by_config, &by_room];
        let names: Vec<&str> = strategies.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["AVG", "AVG_BY_CIRCLE", "CONSISTENT_HASH", "CONFIG", "MACHINE_ROOM"]);
    }

    fn arb_consumers() -> impl Strategy<Value = Vec<String>> {
        // Sorted and deduplicated, as the rebalance code passes them.
        prop::collection::btree_set("[0-9a-z.@-]{1,16}", 1..16).prop_map(|set| set.into_iter().collect())
    }

    proptest! {
        #[test]
        fn averagely_partitions_in_contiguous_balanced_blocks(queue_count in 0usize..64, consumer_count in 1usize..16) {
            let queues = spread_queues(queue_count);
            let got = allocations(&Averagely, &queues, &consumer_ids(consumer_count));
            check_partition(&got, &queues)?;
            check_balanced(&got)?;
            // Blocks follow consumer order, larger blocks first.
            prop_assert_eq!(got.concat(), queues);
            prop_assert!(got.windows(2).all(|w| w[0].len() >= w[1].len()));
        }

        #[test]
        fn averagely_by_circle_partitions_round_robin(queue_count in 0usize..64, consumer_count in 1usize..16) {
            let queues = spread_queues(queue_count);
            let got = allocations(&AveragelyByCircle, &queues, &consumer_ids(consumer_count));
            check_partition(&got, &queues)?;
            check_balanced(&got)?;
            for (index, allocated) in got.iter().enumerate() {
                for (round, q) in allocated.iter().enumerate() {
                    prop_assert_eq!(q, &queues[index + round * consumer_count]);
                }
            }
        }

        #[test]
        fn consistent_hash_partitions(queue_count in 0usize..64, consumers in arb_consumers(), virtual_nodes in 1usize..20) {
            let queues = spread_queues(queue_count);
            let got = allocations(&ConsistentHash::new(virtual_nodes), &queues, &consumers);
            check_partition(&got, &queues)?;
        }

        #[test]
        fn consistent_hash_removal_moves_only_the_removed_consumers_queues(
            queue_count in 0usize..64,
            consumers in prop::collection::btree_set("[0-9a-z.@-]{1,16}", 2..16),
            removed_seed in any::<prop::sample::Index>(),
            virtual_nodes in 1usize..20,
        ) {
            let strategy = ConsistentHash::new(virtual_nodes);
            let queues = spread_queues(queue_count);
            let consumers: Vec<String> = consumers.into_iter().collect();
            let removed = consumers[removed_seed.index(consumers.len())].clone();
            let remaining: Vec<String> = consumers.iter().filter(|c| **c != removed).cloned().collect();
            let owners = |consumers: &[String]| -> BTreeMap<MessageQueue, String> {
                consumers
                    .iter()
                    .flat_map(|c| strategy.allocate("g", c, &queues, consumers).into_iter().map(move |q| (q, c.clone())))
                    .collect()
            };
            let (before, after) = (owners(&consumers), owners(&remaining));
            prop_assert_eq!(after.len(), queues.len());
            for (q, owner) in &before {
                if *owner != removed {
                    prop_assert_eq!(after.get(q), Some(owner), "queue {:?} moved although its owner stayed", q);
                }
            }
        }

        #[test]
        fn by_machine_room_partitions_only_consumed_rooms(
            picks in prop::collection::btree_set((0usize..6, 0i32..8), 0..48),
            consumed in prop::collection::btree_set(prop::sample::select(vec!["room1", "room2", "room3"]), 0..4),
            consumer_count in 1usize..16,
        ) {
            // (broker name, room it counts for): names without exactly one '@' separator never count.
            const BROKERS: [(&str, Option<&str>); 6] = [
                ("room1@broker-a", Some("room1")),
                ("room2@broker-b", Some("room2")),
                ("room3@broker-c", Some("room3")),
                ("broker-d", None),
                ("room1@", None),
                ("room2@x@y", None),
            ];
            let mut queues: Vec<MessageQueue> = picks.iter().map(|&(b, id)| queue("TopicTest", BROKERS[b].0, id)).collect();
            queues.sort();
            let is_consumed = |q: &MessageQueue| {
                BROKERS.iter().any(|(name, room)| *name == q.broker_name && room.is_some_and(|r| consumed.contains(r)))
            };
            let expected: Vec<MessageQueue> = queues.iter().filter(|q| is_consumed(q)).cloned().collect();
            let strategy = ByMachineRoom::new(consumed.iter().map(|r| r.to_string()).collect());
            let got = allocations(&strategy, &queues, &consumer_ids(consumer_count));
            check_partition(&got, &expected)?;
            check_balanced(&got)?;
        }
    }
}

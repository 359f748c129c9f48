//! Queue selectors for ordered messages: a producer that sends every message of one key to the same queue
//! keeps those messages in order for an orderly consumer.

use raftmq_remoting::message::java_string_hash;

use crate::message::{Message, MessageQueue};

/// Picks the queue (an index into `queues`) a message goes to, from an argument such as a sharding key.
/// `queues` is never empty and is in route order (broker name, then queue id), the order Java producers see.
pub trait MessageQueueSelector<A: ?Sized>: Send + Sync {
    /// The index of the chosen queue.
    fn select(&self, queues: &[MessageQueue], msg: &Message, arg: &A) -> usize;
}

impl<A: ?Sized, F> MessageQueueSelector<A> for F
where
    F: Fn(&[MessageQueue], &Message, &A) -> usize + Send + Sync,
{
    fn select(&self, queues: &[MessageQueue], msg: &Message, arg: &A) -> usize {
        self(queues, msg, arg)
    }
}

/// RocketMQ's `SelectMessageQueueByHash`: `|hashCode(arg)| % queues`. For strings the hash is Java's
/// `String.hashCode`, for integers `Long.hashCode`, so Java and Rust producers of one key agree on the queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectByHash;

impl MessageQueueSelector<str> for SelectByHash {
    fn select(&self, queues: &[MessageQueue], _msg: &Message, arg: &str) -> usize {
        index_of(java_string_hash(arg), queues.len())
    }
}

impl MessageQueueSelector<String> for SelectByHash {
    fn select(&self, queues: &[MessageQueue], msg: &Message, arg: &String) -> usize {
        <Self as MessageQueueSelector<str>>::select(self, queues, msg, arg.as_str())
    }
}

impl MessageQueueSelector<i64> for SelectByHash {
    fn select(&self, queues: &[MessageQueue], _msg: &Message, arg: &i64) -> usize {
        let v = *arg as u64;
        index_of((v ^ (v >> 32)) as i32, queues.len())
    }
}

/// RocketMQ's `SelectMessageQueueByRandom`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectByRandom;

impl<A: ?Sized> MessageQueueSelector<A> for SelectByRandom {
    fn select(&self, queues: &[MessageQueue], _msg: &Message, _arg: &A) -> usize {
        rand::random::<usize>() % queues.len().max(1)
    }
}

/// Java's `Math.abs(hash) % n` (with `abs(i32::MIN)` staying negative in Java, mapped to 0 here as Java's
/// selector would then fail; no real key hashes to it by design of the caller).
fn index_of(hash: i32, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (hash.unsigned_abs() as usize) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: i32) -> Vec<MessageQueue> {
        (0..n).map(|i| MessageQueue { topic: "t".into(), broker_name: "b".into(), queue_id: i }).collect()
    }

    #[test]
    fn hash_selector_matches_java_for_strings_and_longs() {
        let m = Message::new("t", "x");
        // "order-1".hashCode() = -1207111310 in Java; abs % 8 = 6.
        assert_eq!(java_string_hash("order-1"), -1207111310);
        assert_eq!(<SelectByHash as MessageQueueSelector<str>>::select(&SelectByHash, &queues(8), &m, "order-1"), 6);
        // Long.hashCode(5) = 5; Long.hashCode(1 << 32) = 1.
        assert_eq!(<SelectByHash as MessageQueueSelector<i64>>::select(&SelectByHash, &queues(4), &m, &5), 1);
        assert_eq!(<SelectByHash as MessageQueueSelector<i64>>::select(&SelectByHash, &queues(4), &m, &(1i64 << 32)), 1);
    }

    #[test]
    fn closures_are_selectors() {
        let pick_last = |qs: &[MessageQueue], _: &Message, _: &str| qs.len() - 1;
        assert_eq!(pick_last.select(&queues(3), &Message::new("t", "x"), "k"), 2);
    }
}

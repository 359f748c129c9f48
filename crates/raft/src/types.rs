//! The Raft group's type configuration and its log payload: what one commitlog entry carries.
//!
//! Entries travel between nodes with serde (bincode) and are stored in the commitlog with a hand-written,
//! deterministic body codec ([`Command::encode`]) so that each message's physical offset inside the log can
//! be computed from the record position alone, identically on every replica.
//!
//! ```text
//! body := tag u8 | rest
//! tag 1 Produce:        nqueues u32 | { topic_len u16 | topic | queue_id u32 | nmsgs u32 | { tags_code i64 | len u32 | bytes } }
//! tag 2 CommitOffsets:  bincode(Vec<OffsetCommit>)
//! tag 3 UpsertTopic:    bincode(TopicConfig)
//! ```
//! New record kinds (delayed, transactional, retry) get new tags; old tags never change meaning.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::error::PayloadError;

openraft::declare_raft_types!(
    /// openraft type configuration of a raftmq broker group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// Node id of a group member. Never reused for a wiped node.
pub type NodeId = u64;
/// The running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader node, index).
pub type LogId = openraft::LogId<NodeId>;
/// Address book entry of a member (its Raft TCP address).
pub type Node = openraft::BasicNode;

/// One message of a produce batch: the RocketMQ-encoded message bytes, kept verbatim, plus the tag hash the
/// consume queue stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Hash of the message tag (RocketMQ's `tagsCode`), stored in the consume-queue unit.
    pub tags_code: i64,
    /// The message in RocketMQ's stored-message encoding.
    pub data: Bytes,
    /// Absolute commitlog offset of `data`; set when the entry is read back from the log, `None` on the
    /// proposing path and on the wire.
    #[serde(skip)]
    pub phys_offset: Option<u64>,
}

/// Messages for one topic-queue inside a produce batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAppend {
    /// Topic name.
    pub topic: String,
    /// Queue id within the topic.
    pub queue_id: u32,
    /// The messages, in order.
    pub messages: Vec<Message>,
}

/// A consumer group's committed offset for one topic-queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Next offset the group will consume.
    pub offset: u64,
}

/// Replicated topic configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Readable queues.
    pub read_queues: u32,
    /// Writable queues.
    pub write_queues: u32,
    /// RocketMQ permission bits (2 write, 4 read, 6 read-write).
    pub perm: u32,
}

/// The application payload of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Messages for one or more topic-queues: written once, indexed by the consume queues.
    Produce(Vec<QueueAppend>),
    /// Consumer-group offset commits.
    CommitOffsets(Vec<OffsetCommit>),
    /// Create or update a topic.
    UpsertTopic(TopicConfig),
}

/// Where one produced message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosition {
    /// Offset in its consume queue.
    pub queue_offset: u64,
    /// Absolute commitlog offset of the message bytes.
    pub phys_offset: u64,
}

/// Outcome of one [`QueueAppend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueAppendResult {
    /// Stored; one position per message, in order.
    Stored(Vec<MessagePosition>),
    /// Not indexed (e.g. the topic or queue does not exist); the reason.
    Rejected(String),
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResponse {
    /// Blank, membership and metadata entries.
    #[default]
    Done,
    /// Per queue of a produce batch, in order.
    Produced(Vec<QueueAppendResult>),
}

const TAG_PRODUCE: u8 = 1;
const TAG_COMMIT_OFFSETS: u8 = 2;
const TAG_UPSERT_TOPIC: u8 = 3;

/// Encoded bytes of a produce entry besides its queues: the tag and the queue count.
pub const PRODUCE_HEADER_BYTES: usize = 5;

/// Longest topic name the codec accepts (RocketMQ's limit is 127 bytes; the codec allows u16).
pub const TOPIC_BYTES_MAX: usize = u16::MAX as usize;

impl QueueAppend {
    /// Bytes this queue's part takes in a produce entry's log body: topic length, topic, queue id, message
    /// count, then per message its tag hash, length and bytes.
    pub fn encoded_len(&self) -> usize {
        produce_queue_len(self.topic.len(), self.messages.iter().map(|m| m.data.len()))
    }
}

/// Bytes a queue part with a topic of `topic_len` bytes and messages of `message_lens` bytes takes in a
/// produce entry ([`QueueAppend::encoded_len`] without building one).
pub fn produce_queue_len(topic_len: usize, message_lens: impl IntoIterator<Item = usize>) -> usize {
    10 + topic_len + message_lens.into_iter().map(|len| 12 + len).sum::<usize>()
}

impl Command {
    /// Encoded body size: exact for produce entries (the entry limit and byte-bounded batching use it), within
    /// a few bytes for the others.
    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Produce(qs) => PRODUCE_HEADER_BYTES + qs.iter().map(QueueAppend::encoded_len).sum::<usize>(),
            Command::CommitOffsets(v) => 1 + v.iter().map(|c| 32 + c.group.len() + c.topic.len()).sum::<usize>(),
            Command::UpsertTopic(t) => 1 + 24 + t.name.len(),
        }
    }

    /// Appends the deterministic log-body encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        match self {
            Command::Produce(queues) => {
                out.put_u8(TAG_PRODUCE);
                out.put_u32_le(len_u32(queues.len())?);
                for q in queues {
                    if q.topic.len() > TOPIC_BYTES_MAX {
                        return Err(PayloadError::TooLong("topic"));
                    }
                    out.put_u16_le(q.topic.len() as u16);
                    out.put_slice(q.topic.as_bytes());
                    out.put_u32_le(q.queue_id);
                    out.put_u32_le(len_u32(q.messages.len())?);
                    for m in &q.messages {
                        out.put_i64_le(m.tags_code);
                        out.put_u32_le(len_u32(m.data.len())?);
                        out.put_slice(&m.data);
                    }
                }
            }
            Command::CommitOffsets(v) => {
                out.put_u8(TAG_COMMIT_OFFSETS);
                bincode::serialize_into(&mut *out, v).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::UpsertTopic(t) => {
                out.put_u8(TAG_UPSERT_TOPIC);
                bincode::serialize_into(&mut *out, t).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Decodes a log body. Message bytes are zero-copy slices of `body`; when `body_pos` (the absolute log
    /// position of `body[0]`) is given, each message's `phys_offset` is filled in.
    pub fn decode(body: &Bytes, body_pos: Option<u64>) -> Result<Command, PayloadError> {
        let mut b = &body[..];
        let need = |b: &&[u8], n: usize| if b.remaining() < n { Err(PayloadError::Truncated) } else { Ok(()) };
        need(&b, 1)?;
        match b.get_u8() {
            TAG_PRODUCE => {
                need(&b, 4)?;
                let nq = b.get_u32_le() as usize;
                // Each queue needs at least 10 bytes: bound the allocation by what the body can hold.
                let mut queues = Vec::with_capacity(nq.min(b.remaining() / 10));
                for _ in 0..nq {
                    need(&b, 2)?;
                    let tl = b.get_u16_le() as usize;
                    need(&b, tl + 8)?;
                    let topic = std::str::from_utf8(&b[..tl]).map_err(|_| PayloadError::BadTopic)?.to_string();
                    b.advance(tl);
                    let queue_id = b.get_u32_le();
                    let nm = b.get_u32_le() as usize;
                    let mut messages = Vec::with_capacity(nm.min(b.remaining() / 12));
                    for _ in 0..nm {
                        need(&b, 12)?;
                        let tags_code = b.get_i64_le();
                        let len = b.get_u32_le() as usize;
                        need(&b, len)?;
                        let at = body.len() - b.remaining();
                        messages.push(Message { tags_code, data: body.slice(at..at + len), phys_offset: body_pos.map(|p| p + at as u64) });
                        b.advance(len);
                    }
                    queues.push(QueueAppend { topic, queue_id, messages });
                }
                if b.has_remaining() {
                    return Err(PayloadError::Trailing(b.remaining()));
                }
                Ok(Command::Produce(queues))
            }
            TAG_COMMIT_OFFSETS => Ok(Command::CommitOffsets(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_UPSERT_TOPIC => Ok(Command::UpsertTopic(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            other => Err(PayloadError::UnknownTag(other)),
        }
    }
}

fn len_u32(n: usize) -> Result<u32, PayloadError> {
    u32::try_from(n).map_err(|_| PayloadError::TooLong("count or length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn produce(bodies: &[&[u8]]) -> Command {
        Command::Produce(vec![QueueAppend {
            topic: "T".into(),
            queue_id: 3,
            messages: bodies.iter().map(|b| Message { tags_code: 7, data: Bytes::copy_from_slice(b), phys_offset: None }).collect(),
        }])
    }

    #[test]
    fn produce_round_trips_with_physical_offsets() {
        let cmd = produce(&[b"aaaa", b"bb"]);
        let mut out = vec![0xEE; 5]; // pretend the body starts 5 bytes into a buffer
        cmd.encode(&mut out).unwrap();
        let body = Bytes::from(out).slice(5..);
        let Command::Produce(qs) = Command::decode(&body, Some(1000)).unwrap() else { panic!() };
        let m = &qs[0].messages;
        assert_eq!(&m[0].data[..], b"aaaa");
        assert_eq!(&m[1].data[..], b"bb");
        // tag 1 + nq 4 + tlen 2 + "T" 1 + qid 4 + nm 4 + tags 8 + len 4 = 28
        assert_eq!(m[0].phys_offset, Some(1028));
        assert_eq!(m[1].phys_offset, Some(1028 + 4 + 12));
        assert_eq!(&body[(m[1].phys_offset.unwrap() - 1000) as usize..][..2], b"bb");
    }

    #[test]
    fn metadata_commands_round_trip() {
        for cmd in [
            Command::UpsertTopic(TopicConfig { name: "x".into(), read_queues: 4, write_queues: 4, perm: 6 }),
            Command::CommitOffsets(vec![OffsetCommit { group: "g".into(), topic: "t".into(), queue_id: 1, offset: 9 }]),
        ] {
            let mut out = Vec::new();
            cmd.encode(&mut out).unwrap();
            assert!(out.len() <= cmd.encoded_len() + 16);
            assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), cmd);
        }
    }

    /// Bytes of `cmd` inside an entry on the Raft wire (bincode), which the transport frames.
    fn wire_len(cmd: &Command) -> usize {
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX),
            payload: openraft::EntryPayload::Normal(cmd.clone()),
        };
        bincode::serialized_size(&entry).unwrap() as usize
    }

    #[test]
    fn an_entry_takes_at_most_twice_its_log_size_on_the_wire() {
        // The shapes that expand most: empty messages, one-message queues with one-byte topics, empty queues.
        let msg = |len: usize| Message { tags_code: -1, data: Bytes::from(vec![1u8; len]), phys_offset: None };
        let shapes = [
            Command::Produce(vec![QueueAppend { topic: "t".into(), queue_id: 1, messages: (0..1000).map(|_| msg(0)).collect() }]),
            Command::Produce((0..1000).map(|_| QueueAppend { topic: "t".into(), queue_id: 1, messages: vec![msg(0)] }).collect()),
            Command::Produce((0..1000).map(|_| QueueAppend { topic: String::new(), queue_id: 1, messages: vec![] }).collect()),
            Command::Produce(vec![]),
            Command::Produce(vec![QueueAppend { topic: "T".repeat(127), queue_id: 1, messages: vec![msg(1 << 20)] }]),
        ];
        for cmd in &shapes {
            let (log, wire) = (cmd.encoded_len(), wire_len(cmd));
            assert!(wire <= 2 * log + 64, "{log} log bytes take {wire} on the wire");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Command::decode(&Bytes::from(bytes), Some(0));
        }

        #[test]
        fn produce_round_trips(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10)) {
            let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
            let cmd = produce(&refs);
            let mut out = Vec::new();
            cmd.encode(&mut out).unwrap();
            prop_assert_eq!(out.len(), cmd.encoded_len());
            prop_assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), cmd);
        }
    }
}

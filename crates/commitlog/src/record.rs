//! On-disk record and padding layout of commitlog segments, and the CRC that protects each record.
//!
//! Pure encoding: no IO. The layout is deterministic, so the same sequence of entries produces the same
//! bytes at the same offsets on every replica.
//!
//! ```text
//! record  := magic u32 | len u32 | crc u32 | index u64 | term u64 | node u64 | kind u8 | 0u8 x3 | body
//! padding := PAD_MAGIC u32 | len u32 (the rest of the segment)
//! ```
//! All integers are little-endian. `len` counts the whole record, header included; `crc` is CRC-32 (IEEE,
//! crc32fast) over every byte after the crc field (index .. end of body).

/// Marks the start of a record ("RMQL").
pub const RECORD_MAGIC: u32 = 0x4C51_4D52;
/// Marks padding that fills the end of a segment when the next record does not fit ("PAD!").
pub const PAD_MAGIC: u32 = 0x2144_4150;
/// Bytes of the record header.
pub const HEADER_LEN: usize = 40;
/// Bytes of a padding header; a segment tail shorter than this is left zeroed.
pub const PAD_HEADER_LEN: usize = 8;

const CRC_START: usize = 12;

/// What a record carries; the commitlog does not interpret bodies, the kind tells the Raft layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A Raft blank (no-op) entry; empty body.
    Blank = 0,
    /// A Raft normal entry (application payload).
    Normal = 1,
    /// A Raft membership entry.
    Membership = 2,
}

impl RecordKind {
    /// Decodes a kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(RecordKind::Blank),
            1 => Some(RecordKind::Normal),
            2 => Some(RecordKind::Membership),
            _ => None,
        }
    }
}

/// The identity of a record: Raft index, term and leader node id (openraft's `LogId`), plus its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordMeta {
    /// Raft log index.
    pub index: u64,
    /// Raft term of the leader that created the entry.
    pub term: u64,
    /// Node id of that leader.
    pub node: u64,
    /// What the body holds.
    pub kind: RecordKind,
}

/// A Raft log position without the kind: what `purge` and the vote-independent log state talk about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LogPoint {
    /// Raft log index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// Leader node id.
    pub node: u64,
}

impl RecordMeta {
    /// The record's position as a [`LogPoint`].
    pub fn point(&self) -> LogPoint {
        LogPoint { index: self.index, term: self.term, node: self.node }
    }
}

/// Appends one encoded record (header + body) to `out`.
pub fn encode_record(meta: &RecordMeta, body: &[u8], out: &mut Vec<u8>) {
    let start = begin_record(meta, out);
    out.extend_from_slice(body);
    finish_record(out, start);
}

/// Writes a record header with placeholder length and crc; append the body, then call [`finish_record`].
/// Returns the record's start inside `out`. Lets callers encode bodies in place without a second buffer.
pub fn begin_record(meta: &RecordMeta, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&meta.node.to_le_bytes());
    out.push(meta.kind as u8);
    out.extend_from_slice(&[0u8; 3]);
    start
}

/// Fills in length and crc of the record that starts at `start` and runs to the end of `out`.
/// Returns the record's length.
pub fn finish_record(out: &mut [u8], start: usize) -> usize {
    let len = out.len() - start;
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[start + CRC_START..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A verified record.
    Record {
        /// Its identity.
        meta: RecordMeta,
        /// Its length, header included.
        len: usize,
    },
    /// Segment padding.
    Pad {
        /// Bytes to the segment end.
        len: usize,
    },
    /// All-zero header: nothing was written here.
    Empty,
    /// Anything else, with the reason.
    Invalid(String),
}

/// Little-endian u32 at `at` (the caller checked the bounds). Shared by every on-disk layout of the crate.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Little-endian u64 at `at` (the caller checked the bounds).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and verifies whatever starts at `buf[0]`; `buf` runs to the end of the segment.
pub fn decode_at(buf: &[u8]) -> Decoded {
    if buf.len() < PAD_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            Decoded::Empty
        } else {
            Decoded::Invalid("garbage in a tail too short for a header".into())
        };
    }
    let magic = u32_at(buf, 0);
    let len = u32_at(buf, 4) as usize;
    match magic {
        PAD_MAGIC => {
            if len == buf.len() {
                Decoded::Pad { len }
            } else {
                Decoded::Invalid(format!("padding length {len} does not reach the segment end ({} bytes left)", buf.len()))
            }
        }
        RECORD_MAGIC => {
            if len < HEADER_LEN || len > buf.len() {
                return Decoded::Invalid(format!("record length {len} outside {HEADER_LEN}..={}", buf.len()));
            }
            let stored = u32_at(buf, 8);
            let actual = crc32fast::hash(&buf[CRC_START..len]);
            if stored != actual {
                return Decoded::Invalid(format!("crc mismatch: stored {stored:#010x}, computed {actual:#010x}"));
            }
            let Some(kind) = RecordKind::from_u8(buf[36]) else {
                return Decoded::Invalid(format!("unknown record kind {}", buf[36]));
            };
            let meta = RecordMeta { index: u64_at(buf, 12), term: u64_at(buf, 20), node: u64_at(buf, 28), kind };
            Decoded::Record { meta, len }
        }
        0 if buf[..HEADER_LEN.min(buf.len())].iter().all(|&b| b == 0) => Decoded::Empty,
        other => Decoded::Invalid(format!("bad magic {other:#010x}")),
    }
}

/// Encodes the padding header for a tail of `len` bytes (`len >= PAD_HEADER_LEN`).
pub fn encode_pad(len: usize) -> [u8; PAD_HEADER_LEN] {
    debug_assert!(len >= PAD_HEADER_LEN);
    let mut b = [0u8; PAD_HEADER_LEN];
    b[..4].copy_from_slice(&PAD_MAGIC.to_le_bytes());
    b[4..].copy_from_slice(&(len as u32).to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(index: u64) -> RecordMeta {
        RecordMeta { index, term: 3, node: 2, kind: RecordKind::Normal }
    }

    #[test]
    fn record_round_trips() {
        let mut out = Vec::new();
        encode_record(&meta(7), b"hello", &mut out);
        assert_eq!(out.len(), HEADER_LEN + 5);
        assert_eq!(decode_at(&out), Decoded::Record { meta: meta(7), len: HEADER_LEN + 5 });
    }

    #[test]
    fn zeros_are_empty_and_pad_must_reach_end() {
        assert_eq!(decode_at(&[0u8; 100]), Decoded::Empty);
        assert_eq!(decode_at(&[0u8; 3]), Decoded::Empty);
        let mut seg = vec![0u8; 64];
        seg[..8].copy_from_slice(&encode_pad(64));
        assert_eq!(decode_at(&seg), Decoded::Pad { len: 64 });
        assert!(matches!(decode_at(&seg[..32]), Decoded::Invalid(_)));
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_is_detected(body in proptest::collection::vec(any::<u8>(), 0..200), at in 0usize..240, bit in 0u8..8) {
            let mut out = Vec::new();
            encode_record(&meta(1), &body, &mut out);
            let at = at % out.len();
            out[at] ^= 1 << bit;
            // Padding the buffer keeps the length field's range check meaningful.
            out.resize(out.len() + 64, 0);
            let undetected = matches!(decode_at(&out), Decoded::Record { meta: m, .. } if m == meta(1));
            prop_assert!(!undetected, "flipped bit {} of byte {} decoded as the original record", bit, at);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_at(&bytes);
        }
    }
}

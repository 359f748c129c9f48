//! The recovery checkpoint (the role of RocketMQ's `StoreCheckpoint`): a small durable record naming the
//! last record up to which the log is known to be on disk, with its index slots, so that recovery verifies
//! only what was written after it instead of every retained record.
//!
//! File `checkpoint` in the commitlog directory: 8 KiB, two slots 4 KiB apart. A write goes to the slot
//! that does *not* hold the newest valid checkpoint, with a sequence number above both, followed by one
//! fdatasync. A crash can tear only the slot being written; the other still holds the previous checkpoint,
//! and the CRC tells them apart. Chosen over temp file + fsync + rename + directory fsync because it costs one
//! fdatasync of one page of a preallocated file (no inode or directory update after the file was created,
//! so no extra journal commit). Slots are 4 KiB apart so no device sector or page holds both.
//!
//! Record at the start of each slot (little-endian, [`RECORD_LEN`] bytes):
//!
//! ```text
//! 0  magic u32 ("RMQC")   4  version u16   6  flags u16 (bit 0: names a record)   8  seq u64
//! 16 segment_bytes u64    24 index_slots_per_file u64
//! 32 verified_pos u64     40 last_pos u64  48 last_len u32  52 last_kind u8  53 reserved 0u8 x3
//! 56 last_index u64       64 last_term u64 72 last_node u64
//! 80 crc u32              CRC-32 (IEEE) of bytes 0..80
//! ```
//!
//! A record without flag bit 0 is an *invalidation*: it names nothing, and recovery scans everything. Before
//! a truncate, purge or rebase would leave a checkpoint naming bytes that are no longer the log, the store
//! rewrites both slots: to name the last kept record, or with invalidations.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{CommitLogError, Result};
use crate::fsutil;
use crate::record::{u32_at, u64_at, RecordKind, RecordMeta};

/// File name of the checkpoint inside the commitlog directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Distance between the two slots.
pub const SLOT_BYTES: u64 = 4096;
/// Size of the checkpoint file.
pub const FILE_BYTES: u64 = 2 * SLOT_BYTES;
/// Bytes of one encoded checkpoint.
pub const RECORD_LEN: usize = 84;

const MAGIC: u32 = 0x4351_4D52; // "RMQC" as bytes, like the record magic "RMQL"
const VERSION: u16 = 1;
const FLAG_NAMES_RECORD: u16 = 1;
const CRC_AT: usize = 80;

/// The part of the log a checkpoint vouches for: every byte before `verified_pos` is durable, was written
/// by the store as whole CRC-checked records, and has durable index slots. `last` is the record that ends
/// exactly at `verified_pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPrefix {
    /// End of the last record: recovery scans from here.
    pub verified_pos: u64,
    /// Absolute position of the last record's header.
    pub last_pos: u64,
    /// Length of the last record, header included.
    pub last_len: u32,
    /// Identity of the last record.
    pub last: RecordMeta,
}

/// One decoded checkpoint slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Orders the two slots: the valid one with the higher number is current.
    pub seq: u64,
    /// Segment size of the log that wrote it; recovery ignores a checkpoint of another geometry.
    pub segment_bytes: u64,
    /// Index slots per file of that log.
    pub index_slots_per_file: u64,
    /// What it vouches for; `None` for an invalidation.
    pub prefix: Option<VerifiedPrefix>,
}

impl Checkpoint {
    /// Encodes the checkpoint as one slot record.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.prefix.is_some() { FLAG_NAMES_RECORD } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_slots_per_file.to_le_bytes());
        if let Some(p) = &self.prefix {
            b[32..40].copy_from_slice(&p.verified_pos.to_le_bytes());
            b[40..48].copy_from_slice(&p.last_pos.to_le_bytes());
            b[48..52].copy_from_slice(&p.last_len.to_le_bytes());
            b[52] = p.last.kind as u8;
            b[56..64].copy_from_slice(&p.last.index.to_le_bytes());
            b[64..72].copy_from_slice(&p.last.term.to_le_bytes());
            b[72..80].copy_from_slice(&p.last.node.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies one slot record (`b` may be longer); the error says what check failed.
    pub fn decode(b: &[u8]) -> std::result::Result<Checkpoint, String> {
        if b.len() < RECORD_LEN {
            return Err(format!("slot holds {} bytes, a checkpoint needs {RECORD_LEN}", b.len()));
        }
        let b = &b[..RECORD_LEN];
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x}"));
        }
        let (stored, actual) = (u32_at(b, CRC_AT), crc32fast::hash(&b[..CRC_AT]));
        if stored != actual {
            return Err(format!("crc mismatch: stored {stored:#010x}, computed {actual:#010x}"));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        let prefix = if flags & FLAG_NAMES_RECORD != 0 {
            let kind = RecordKind::from_u8(b[52]).ok_or_else(|| format!("unknown record kind {}", b[52]))?;
            Some(VerifiedPrefix {
                verified_pos: u64_at(b, 32),
                last_pos: u64_at(b, 40),
                last_len: u32_at(b, 48),
                last: RecordMeta { index: u64_at(b, 56), term: u64_at(b, 64), node: u64_at(b, 72), kind },
            })
        } else {
            None
        };
        Ok(Checkpoint { seq: u64_at(b, 8), segment_bytes: u64_at(b, 16), index_slots_per_file: u64_at(b, 24), prefix })
    }
}

/// What one slot of a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Zeros (never written) or beyond the end of a short file.
    Empty,
    /// A checkpoint that passed its checks.
    Valid(Checkpoint),
    /// Anything else, with what check failed: a torn write or damage.
    Damaged(String),
}

/// What the two slots of a checkpoint file hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// Slot 0 and slot 1.
    pub slots: [SlotState; 2],
}

impl Slots {
    /// Decodes the slots of a checkpoint file's bytes; a short file has empty slots where it ends.
    pub fn decode(file: &[u8]) -> Slots {
        let slot = |i: usize| {
            let start = i * SLOT_BYTES as usize;
            let b = file.get(start..(start + RECORD_LEN).min(file.len())).unwrap_or(&[]);
            if b.iter().all(|&x| x == 0) {
                return SlotState::Empty;
            }
            match Checkpoint::decode(b) {
                Ok(c) => SlotState::Valid(c),
                Err(reason) => SlotState::Damaged(reason),
            }
        };
        Slots { slots: [slot(0), slot(1)] }
    }

    /// The slot holding the current checkpoint: the valid one with the higher sequence number.
    pub fn newest(&self) -> Option<(usize, Checkpoint)> {
        self.valid().max_by_key(|(_, c)| c.seq)
    }

    fn valid(&self) -> impl Iterator<Item = (usize, Checkpoint)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            SlotState::Valid(c) => Some((i, *c)),
            _ => None,
        })
    }

    fn max_seq(&self) -> u64 {
        self.valid().map(|(_, c)| c.seq).max().unwrap_or(0)
    }
}

/// The open checkpoint file, owned by the store (IO thread).
pub(crate) struct CheckpointFile {
    path: PathBuf,
    file: File,
    segment_bytes: u64,
    index_slots_per_file: u64,
    /// The checkpoint recovery would read now, and its slot.
    current: Option<(usize, Checkpoint)>,
    /// Highest sequence number in either slot.
    seq: u64,
}

impl CheckpointFile {
    /// Opens the checkpoint file in `dir`, creating (or re-sizing) it as needed, and reads both slots.
    pub fn open(dir: &Path, segment_bytes: u64, index_slots_per_file: u64) -> Result<(CheckpointFile, Slots)> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CommitLogError::io("open", &path, e))?;
        let len = file.metadata().map_err(|e| CommitLogError::io("stat", &path, e))?.len();
        let mut bytes = vec![0u8; len.min(FILE_BYTES) as usize];
        file.read_exact_at(&mut bytes, 0).map_err(|e| CommitLogError::io("read", &path, e))?;
        let slots = Slots::decode(&bytes);
        if len != FILE_BYTES {
            // New, or cut short by a crash while it was created: give it its size, with blocks allocated.
            // Whatever valid slot a short file held is kept. Neither this nor the creation is fsynced: the
            // first slot write's fdatasync makes the size durable, and a file lost with its directory entry
            // only costs a full scan.
            fsutil::preallocate(&file, &path, FILE_BYTES)?;
            if len > FILE_BYTES {
                file.set_len(FILE_BYTES).map_err(|e| CommitLogError::io("set_len", &path, e))?;
            }
        }
        let current = slots.newest();
        let seq = slots.max_seq();
        Ok((CheckpointFile { path, file, segment_bytes, index_slots_per_file, current, seq }, slots))
    }

    /// What the current checkpoint vouches for, if anything.
    pub fn prefix(&self) -> Option<&VerifiedPrefix> {
        self.current.as_ref().and_then(|(_, c)| c.prefix.as_ref())
    }

    /// Durably replaces the current checkpoint with one for `prefix`, in the other slot.
    pub fn write(&mut self, prefix: Option<VerifiedPrefix>) -> Result<()> {
        let slot = match self.current {
            Some((i, _)) => 1 - i,
            None => 0,
        };
        let c =
            Checkpoint { seq: self.seq + 1, segment_bytes: self.segment_bytes, index_slots_per_file: self.index_slots_per_file, prefix };
        self.file.write_all_at(&c.encode(), slot as u64 * SLOT_BYTES).map_err(|e| CommitLogError::io("write", &self.path, e))?;
        self.file.sync_data().map_err(|e| CommitLogError::io("fdatasync", &self.path, e))?;
        self.seq = c.seq;
        self.current = Some((slot, c));
        Ok(())
    }

    /// Writes `prefix` into both slots, one after the other, so that no older checkpoint survives to be
    /// read after a later slot is damaged. Used when an older checkpoint would name bytes that are about to
    /// stop being the log.
    pub fn write_both(&mut self, prefix: Option<VerifiedPrefix>) -> Result<()> {
        self.write(prefix)?;
        self.write(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            segment_bytes: 1 << 30,
            index_slots_per_file: 1 << 20,
            prefix: Some(VerifiedPrefix {
                verified_pos: 5000,
                last_pos: 4000,
                last_len: 1000,
                last: RecordMeta { index: 42, term: 7, node: 3, kind: RecordKind::Membership },
            }),
        }
    }

    #[test]
    fn round_trips_with_and_without_a_prefix() {
        let c = sample(9);
        assert_eq!(Checkpoint::decode(&c.encode()), Ok(c));
        let inv = Checkpoint { prefix: None, ..c };
        assert_eq!(Checkpoint::decode(&inv.encode()), Ok(inv));
        assert!(Checkpoint::decode(&[0u8; RECORD_LEN]).is_err());
        assert_eq!(Slots::decode(&[0u8; 10]).slots, [SlotState::Empty, SlotState::Empty]);
        assert!(Checkpoint::decode(&c.encode()[..RECORD_LEN - 1]).is_err());
    }

    #[test]
    fn newest_valid_slot_wins_and_a_torn_newer_slot_is_skipped() {
        let mut file = vec![0u8; FILE_BYTES as usize];
        assert_eq!(Slots::decode(&file).newest(), None);
        file[..RECORD_LEN].copy_from_slice(&sample(5).encode());
        file[SLOT_BYTES as usize..SLOT_BYTES as usize + RECORD_LEN].copy_from_slice(&sample(6).encode());
        assert_eq!(Slots::decode(&file).newest().map(|(i, c)| (i, c.seq)), Some((1, 6)));
        file[SLOT_BYTES as usize + 20] ^= 1;
        assert_eq!(Slots::decode(&file).newest().map(|(i, c)| (i, c.seq)), Some((0, 5)));
        // A file cut short keeps what it still holds.
        assert_eq!(Slots::decode(&file[..100]).newest().map(|(i, c)| (i, c.seq)), Some((0, 5)));
        assert_eq!(Slots::decode(&file[..50]).newest(), None);
    }

    #[test]
    fn writes_alternate_slots_and_never_overwrite_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, slots) = CheckpointFile::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(slots.newest(), None);
        assert_eq!(std::fs::metadata(dir.path().join(CHECKPOINT_FILE)).unwrap().len(), FILE_BYTES);
        let p = sample(0).prefix;
        f.write(p).unwrap();
        f.write(None).unwrap();
        let on_disk = Slots::decode(&std::fs::read(dir.path().join(CHECKPOINT_FILE)).unwrap());
        assert_eq!(on_disk.newest().map(|(i, c)| (i, c.seq, c.prefix)), Some((1, 2, None)));
        // Damage the newest slot: the next write must go to it, not over the surviving older one.
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut b = std::fs::read(&path).unwrap();
        b[SLOT_BYTES as usize + 9] ^= 0xFF;
        std::fs::write(&path, &b).unwrap();
        let (mut f, slots) = CheckpointFile::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(slots.newest().map(|(i, c)| (i, c.seq)), Some((0, 1)));
        f.write(p).unwrap();
        let on_disk = Slots::decode(&std::fs::read(&path).unwrap());
        assert!(matches!(on_disk.slots[0], SlotState::Valid(Checkpoint { seq: 1, .. })), "{on_disk:?}");
        assert!(matches!(on_disk.slots[1], SlotState::Valid(Checkpoint { seq: 2, .. })), "{on_disk:?}");
        f.write_both(None).unwrap();
        let on_disk = Slots::decode(&std::fs::read(&path).unwrap());
        assert!(on_disk.slots.iter().all(|s| matches!(s, SlotState::Valid(Checkpoint { prefix: None, .. }))), "{on_disk:?}");
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(at in 0usize..RECORD_LEN, bit in 0u8..8) {
            let mut b = sample(3).encode();
            b[at] ^= 1 << bit;
            prop_assert_ne!(Checkpoint::decode(&b), Ok(sample(3)));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Checkpoint::decode(&bytes);
            let _ = Slots::decode(&bytes).newest();
        }
    }
}

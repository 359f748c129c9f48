//! The consume-queue unit: RocketMQ's 20-byte index record (commitlog physical offset i64, message size
//! i32, tag hash i64; big-endian as in RocketMQ). Pure codec; the files live in `raftmq-raft`.

/// Bytes of one consume-queue unit (RocketMQ's `CQ_STORE_UNIT_SIZE`).
pub const CQ_UNIT_LEN: usize = 20;

/// One consume-queue unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqUnit {
    /// Absolute commitlog offset of the message bytes.
    pub phys_offset: u64,
    /// Message size in bytes.
    pub size: u32,
    /// Tag hash; for a message staged in a schedule queue, its due time in ms.
    pub tags_code: i64,
}

impl CqUnit {
    /// The unit's 20 bytes.
    pub fn encode(&self) -> [u8; CQ_UNIT_LEN] {
        let mut b = [0u8; CQ_UNIT_LEN];
        b[..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    /// The unit in `b`.
    pub fn decode(b: &[u8; CQ_UNIT_LEN]) -> CqUnit {
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[..8]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[8..12]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[12..20]);
        CqUnit { phys_offset: u64::from_be_bytes(p), size: u32::from_be_bytes(s), tags_code: i64::from_be_bytes(t) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_big_endian() {
        let u = CqUnit { phys_offset: 0x0102_0304_0506_0708, size: 0x0A0B_0C0D, tags_code: -2 };
        let b = u.encode();
        assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(CqUnit::decode(&b), u);
    }
}

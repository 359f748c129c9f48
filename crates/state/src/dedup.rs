//! The de-duplication window: client message ids (`UNIQ_KEY`) of recent sends, so that a send retried
//! after a time-out or a failover is answered with the original's position instead of being stored twice.
//!
//! The leader digests (topic, message id) into a 128-bit key and puts it in the produce entry
//! ([`crate::command::Op::Dedup`]); `apply` indexes the message only when the key is not in the window and
//! otherwise reports the original position. The window is replicated state, identical on every replica,
//! and its settings come through the log ([`crate::Command::SetDedupWindow`]).
//!
//! Layout: keys live in time buckets of `window_ms / 16` (or `keys_max / 16` keys, whichever fills
//! first), newest last. A key is remembered for at least `window_ms` and at most one bucket span longer,
//! unless `keys_max` forces the oldest bucket out first. Buckets are shared (`Arc`): a checkpoint's copy of
//! the state costs one bucket's copy at most, not the whole window.
//!
//! Memory: only the newest bucket is a hash map (inserts). A sealed bucket is stored as a sorted slice of
//! exactly its keys (40 bytes each, found by binary search after its filter), not as a map whose table is
//! up to twice as large. A checkpoint's copy calls [`DedupWindow::compact_newest`], which stores *its*
//! newest bucket the same way, so the live window's map is no longer shared and its next insert does not
//! copy the map. The representation never changes an answer, an equality or the serialized form (a map).
//!
//! Most lookups are misses (a new message). A sealed bucket (every one but the newest) never changes and
//! carries a Bloom filter of its keys — one 64-byte block per key probe, about 1 byte per key, so all the
//! filters of a 1 M-key window stay in cache — and only a filter hit looks into the bucket's map. Filters are
//! derived (rebuilt after a restore, never serialized, ignored by equality) and never change an answer.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{DedupSettings, MessagePosition};

/// Buckets a full window spans.
pub const DEDUP_BUCKETS: u64 = 16;
/// Longest window accepted (`dedupWindowMs`): one day.
pub const DEDUP_WINDOW_MS_MAX: i64 = 24 * 3600 * 1000;
/// Most keys a window may hold (`dedupKeysMax`).
pub const DEDUP_KEYS_MAX: u64 = 20_000_000;

/// Where the first send of a message id landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Its queue.
    pub queue_id: u32,
    /// Its queue offset.
    pub queue_offset: u64,
    /// Its commitlog offset.
    pub phys_offset: u64,
}

impl Seen {
    /// The position a duplicate reports.
    pub fn position(&self) -> MessagePosition {
        MessagePosition { queue_id: self.queue_id, queue_offset: self.queue_offset, phys_offset: self.phys_offset, duplicate: true }
    }
}

/// Keys are XXH3 digests, already uniformly spread: their low 64 bits are the hash. Fixed (no random
/// state), so a bucket's layout — and its serialized order — depends only on what was inserted.
#[derive(Debug, Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used by `u128: Hash`; fold anything else in case std changes that.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type KeyMap = HashMap<u128, Seen, BuildHasherDefault<DigestHasher>>;

/// A bucket's keys: a map while it takes inserts, a sorted slice once sealed (or in a checkpoint's copy).
#[derive(Debug, Clone)]
enum Keys {
    Map(Arc<KeyMap>),
    Sorted(Arc<[(u128, Seen)]>),
}

impl Default for Keys {
    fn default() -> Self {
        Keys::Map(Arc::default())
    }
}

impl Keys {
    fn len(&self) -> usize {
        match self {
            Keys::Map(m) => m.len(),
            Keys::Sorted(s) => s.len(),
        }
    }

    fn get(&self, key: u128) -> Option<Seen> {
        match self {
            Keys::Map(m) => m.get(&key).copied(),
            Keys::Sorted(s) => s.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| s[i].1),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (u128, Seen)> + '_> {
        match self {
            Keys::Map(m) => Box::new(m.iter().map(|(k, v)| (*k, *v))),
            Keys::Sorted(s) => Box::new(s.iter().copied()),
        }
    }

    /// The keys as a sorted slice of exactly their size.
    fn sorted(&self) -> Keys {
        match self {
            Keys::Map(m) => {
                let mut v: Vec<(u128, Seen)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                v.sort_unstable_by_key(|(k, _)| *k);
                Keys::Sorted(v.into())
            }
            Keys::Sorted(s) => Keys::Sorted(Arc::clone(s)),
        }
    }

    /// Inserts `key`; true when it was new. A sorted bucket becomes a map again first (only a copy's newest
    /// ever is).
    fn insert(&mut self, key: u128, seen: Seen) -> bool {
        match self {
            Keys::Map(m) => Arc::make_mut(m).insert(key, seen).is_none(),
            Keys::Sorted(s) => {
                let mut m = KeyMap::with_capacity_and_hasher(s.len() + 1, BuildHasherDefault::default());
                m.extend(s.iter().copied());
                let new = m.insert(key, seen).is_none();
                *self = Keys::Map(Arc::new(m));
                new
            }
        }
    }

    #[cfg(test)]
    fn same_allocation(&self, other: &Keys) -> bool {
        match (self, other) {
            (Keys::Map(a), Keys::Map(b)) => Arc::ptr_eq(a, b),
            (Keys::Sorted(a), Keys::Sorted(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Keys::Map(a), Keys::Map(b)) => a == b,
            (Keys::Sorted(a), Keys::Sorted(b)) => a == b,
            _ => self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v)),
        }
    }
}

impl Eq for Keys {}

/// Always serialized as a map (the form of every earlier version), whatever the representation.
impl Serialize for Keys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeyMap::deserialize(d).map(|m| Keys::Map(Arc::new(m)))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bucket {
    /// Stamp of its first key.
    start_ms: i64,
    keys: Keys,
    /// Bloom filter of `keys` once the bucket is sealed.
    #[serde(skip)]
    filter: Option<Arc<Filter>>,
}

impl PartialEq for Bucket {
    fn eq(&self, other: &Self) -> bool {
        self.start_ms == other.start_ms && self.keys == other.keys
    }
}

impl Eq for Bucket {}

impl Bucket {
    fn get(&self, key: u128) -> Option<Seen> {
        if self.filter.as_ref().is_some_and(|f| !f.may_contain(key)) {
            return None;
        }
        self.keys.get(key)
    }
}

/// A split-block Bloom filter: 512-bit blocks, 8 bits set per key, one in each 64-bit word of the block
/// the key's low bits choose; ~16 bits per key (about 0.1 % false positives at that load).
#[derive(Debug)]
struct Filter {
    blocks: Vec<[u64; 8]>,
}

impl Filter {
    fn of(keys: &Keys) -> Filter {
        let n = (keys.len() * 16).div_ceil(512).max(1).next_power_of_two();
        let mut f = Filter { blocks: vec![[0; 8]; n] };
        for (k, _) in keys.iter() {
            let (b, bits) = f.locate(k);
            for (w, bit) in f.blocks[b].iter_mut().zip(bits) {
                *w |= bit;
            }
        }
        f
    }

    /// The block of `key` and the bit to set in each of its words (from the digest's high bits).
    fn locate(&self, key: u128) -> (usize, [u64; 8]) {
        let block = (key as u64 as usize) & (self.blocks.len() - 1);
        let hi = (key >> 64) as u64;
        let mut bits = [0u64; 8];
        for (i, b) in bits.iter_mut().enumerate() {
            *b = 1u64 << ((hi >> (i * 6)) & 63);
        }
        (block, bits)
    }

    fn may_contain(&self, key: u128) -> bool {
        let (b, bits) = self.locate(key);
        self.blocks[b].iter().zip(bits).all(|(w, bit)| w & bit != 0)
    }
}

/// The replicated window of recent message ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupWindow {
    settings: DedupSettings,
    /// Oldest first.
    buckets: VecDeque<Bucket>,
    len: u64,
}

impl DedupWindow {
    /// The settings in force (window 0: off).
    pub fn settings(&self) -> DedupSettings {
        self.settings
    }

    /// Replaces the settings; a smaller window or key bound applies from the next entry on (keys over the
    /// new bound are forgotten at once). `window_ms` 0 turns de-duplication off and forgets every key.
    ///
    /// # Errors
    /// The reason, for settings out of bounds (nothing changes then).
    pub fn set(&mut self, s: DedupSettings) -> Result<(), String> {
        if !(0..=DEDUP_WINDOW_MS_MAX).contains(&s.window_ms) {
            return Err(format!("dedup window {} ms is outside 0..={DEDUP_WINDOW_MS_MAX} ms", s.window_ms));
        }
        if s.window_ms > 0 && !(1..=DEDUP_KEYS_MAX).contains(&s.keys_max) {
            return Err(format!("dedup keys_max {} is outside 1..={DEDUP_KEYS_MAX}", s.keys_max));
        }
        self.settings = s;
        if s.window_ms == 0 {
            self.buckets.clear();
            self.len = 0;
        }
        self.trim();
        Ok(())
    }

    /// Keys remembered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the first send with digest `key` landed, if it is still remembered.
    pub fn get(&self, key: u128) -> Option<Seen> {
        self.buckets.iter().rev().find_map(|b| b.get(key))
    }

    fn span_ms(&self) -> i64 {
        (self.settings.window_ms / DEDUP_BUCKETS as i64).max(1)
    }

    fn bucket_keys_max(&self) -> u64 {
        (self.settings.keys_max / DEDUP_BUCKETS).max(1)
    }

    /// Forgets the buckets that ended more than `window_ms` before `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        let (window, span) = (self.settings.window_ms, self.span_ms());
        while let Some(b) = self.buckets.front() {
            // A bucket holds keys stamped in [start, start + span) (or fewer, when it filled by count).
            if b.start_ms.saturating_add(span).saturating_add(window) > now_ms {
                break;
            }
            self.len -= b.keys.len() as u64;
            self.buckets.pop_front();
        }
    }

    /// Remembers `key` as first sent at `now_ms` to `seen` (nothing while the window is off).
    pub(crate) fn insert(&mut self, now_ms: i64, key: u128, seen: Seen) {
        if self.settings.window_ms == 0 {
            return;
        }
        let (span, cap) = (self.span_ms(), self.bucket_keys_max());
        let roll = self.buckets.back().is_none_or(|b| now_ms >= b.start_ms.saturating_add(span) || b.keys.len() as u64 >= cap);
        if roll {
            // The newest bucket is sealed (filter, and its keys as an exact-size sorted slice); a restored
            // window seals its old ones here too.
            for b in self.buckets.iter_mut().rev().take_while(|b| b.filter.is_none()) {
                b.filter = Some(Arc::new(Filter::of(&b.keys)));
                b.keys = b.keys.sorted();
            }
            self.buckets.push_back(Bucket { start_ms: now_ms, keys: Keys::default(), filter: None });
        }
        if let Some(b) = self.buckets.back_mut() {
            if b.keys.insert(key, seen) {
                self.len += 1;
            }
        }
        self.trim();
    }

    /// For a copy that is only read or serialized (a checkpoint): stores its newest bucket as a sorted
    /// slice too, so that it no longer shares the live window's map — whose next insert would otherwise
    /// copy the whole map, once per checkpoint. Answers, equality and encoding are unchanged.
    pub fn compact_newest(&mut self) {
        if let Some(b) = self.buckets.back_mut() {
            if matches!(b.keys, Keys::Map(_)) {
                b.keys = b.keys.sorted();
            }
        }
    }

    /// Drops the oldest buckets while more than `keys_max` keys are held.
    fn trim(&mut self) {
        while self.len > self.settings.keys_max && self.buckets.len() > 1 {
            if let Some(b) = self.buckets.pop_front() {
                self.len -= b.keys.len() as u64;
            }
        }
    }

    /// Structural checks (debug builds, after every apply).
    ///
    /// # Panics
    /// When the key count disagrees with the buckets, or the bound is exceeded by more than one bucket.
    pub fn check_invariants(&self) {
        let n: u64 = self.buckets.iter().map(|b| b.keys.len() as u64).sum();
        assert_eq!(n, self.len, "dedup window: count {} but buckets hold {n}", self.len);
        if self.settings.window_ms > 0 {
            assert!(self.len <= self.settings.keys_max.max(self.bucket_keys_max()), "dedup window over its bound: {}", self.len);
        }
        assert!(self.buckets.iter().zip(self.buckets.iter().skip(1)).all(|(a, b)| a.start_ms <= b.start_ms), "buckets out of order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(q: u64) -> Seen {
        Seen { queue_id: 1, queue_offset: q, phys_offset: q * 100 }
    }

    fn window(window_ms: i64, keys_max: u64) -> DedupWindow {
        let mut w = DedupWindow::default();
        w.set(DedupSettings { window_ms, keys_max }).unwrap();
        w
    }

    #[test]
    fn a_key_is_remembered_for_the_window_and_forgotten_after_it() {
        let mut w = window(16_000, 1000);
        w.insert(0, 7, seen(3));
        w.expire(15_999);
        assert_eq!(w.get(7), Some(seen(3)));
        // The bucket [0, 1000) ends at 1000; its keys go once 1000 + 16 000 has passed.
        w.expire(16_999);
        assert_eq!(w.get(7), Some(seen(3)), "kept up to one bucket span longer than the window");
        w.expire(17_000);
        assert_eq!(w.get(7), None);
        assert!(w.is_empty());
        w.check_invariants();
    }

    #[test]
    fn keys_max_is_a_hard_bound_and_the_oldest_go_first() {
        let mut w = window(60_000, 32); // 2 keys per bucket
        for k in 0..100u128 {
            w.insert(k as i64, k, seen(k as u64));
            w.check_invariants();
            assert!(w.len() <= 32, "{} keys after {k}", w.len());
        }
        assert_eq!(w.get(99), Some(seen(99)));
        assert_eq!(w.get(0), None, "the oldest were forgotten");
        assert_eq!(w.len(), 32);
    }

    #[test]
    fn off_remembers_nothing_and_turning_off_forgets_everything() {
        let mut w = DedupWindow::default();
        w.insert(0, 1, seen(1));
        assert!(w.is_empty());
        let mut w = window(1000, 10);
        w.insert(0, 1, seen(1));
        w.set(DedupSettings { window_ms: 0, keys_max: 0 }).unwrap();
        assert_eq!(w.get(1), None);
        assert!(w.set(DedupSettings { window_ms: -1, keys_max: 1 }).is_err());
        assert!(w.set(DedupSettings { window_ms: 1000, keys_max: 0 }).is_err());
        assert!(w.set(DedupSettings { window_ms: DEDUP_WINDOW_MS_MAX + 1, keys_max: 1 }).is_err());
    }

    #[test]
    fn sealed_buckets_answer_through_their_filters_exactly_as_without() {
        let mut w = window(16_000, 1_000_000);
        let key = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        for i in 0..20_000u128 {
            w.insert((i / 2) as i64, key(i), seen(i as u64));
        }
        assert!(w.buckets.iter().filter(|b| b.filter.is_some()).count() >= 2, "buckets were sealed");
        for i in 0..20_000u128 {
            assert_eq!(w.get(key(i)), Some(seen(i as u64)), "a remembered key was missed (a filter false negative)");
        }
        let mut false_positives = 0;
        for i in 20_000..120_000u128 {
            assert_eq!(w.get(key(i)), None);
            false_positives += w.buckets.iter().filter(|b| b.filter.as_ref().is_some_and(|f| f.may_contain(key(i)))).count();
        }
        let sealed = w.buckets.iter().filter(|b| b.filter.is_some()).count();
        // ~0.1 % per filter probe at 16 bits per key; fail well above that.
        assert!(false_positives * 200 < 100_000 * sealed, "{false_positives} false positives in {sealed} filters × 100 000 absent keys");
        // A restored window (no filters) answers the same, and seals its buckets on the next roll.
        let mut restored: DedupWindow = bincode::deserialize(&bincode::serialize(&w).unwrap()).unwrap();
        assert_eq!(restored, w);
        assert!(restored.buckets.iter().all(|b| b.filter.is_none()));
        assert_eq!(restored.get(key(5)), Some(seen(5)));
        restored.insert(10_000, key(999_999), seen(1));
        assert!(restored.buckets.iter().rev().skip(1).all(|b| b.filter.is_some()));
    }

    #[test]
    fn sealed_and_compacted_buckets_answer_compare_and_encode_as_maps() {
        let key = |i: u128| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let mut w = window(16_000, 1_000_000);
        for i in 0..5_000u128 {
            w.insert((i * 10) as i64, key(i), seen(i as u64));
        }
        let sealed = w.buckets.iter().filter(|b| matches!(b.keys, Keys::Sorted(_))).count();
        assert!(sealed >= 2 && matches!(w.buckets.back().map(|b| &b.keys), Some(Keys::Map(_))), "sealed buckets are sorted slices");
        // The same keys held only in maps (a restored window) compare equal and encode to the same bytes.
        let restored: DedupWindow = bincode::deserialize(&bincode::serialize(&w).unwrap()).unwrap();
        assert!(restored.buckets.iter().all(|b| matches!(b.keys, Keys::Map(_))));
        assert_eq!(restored, w);
        assert_eq!(bincode::serialized_size(&restored).unwrap(), bincode::serialized_size(&w).unwrap());
        // A compacted copy answers the same, stops sharing the live map, and takes inserts again if it must.
        let mut copy = w.clone();
        copy.compact_newest();
        assert_eq!(copy, w);
        assert!(!copy.buckets.back().unwrap().keys.same_allocation(&w.buckets.back().unwrap().keys));
        for i in (0..5_000u128).step_by(7) {
            assert_eq!(copy.get(key(i)), Some(seen(i as u64)));
        }
        assert_eq!(copy.get(key(10_000)), None);
        copy.insert(49_990, key(10_000), seen(1));
        assert_eq!(copy.get(key(10_000)), Some(seen(1)));
        copy.check_invariants();
        // Unequal content is unequal across representations too.
        let mut other = restored.clone();
        other.insert(49_990, key(10_001), seen(2));
        assert_ne!(other, copy);
    }

    #[test]
    fn a_compacted_checkpoint_copy_leaves_the_live_map_unshared() {
        let mut w = window(16_000, 1_000_000);
        w.insert(0, 1, seen(1));
        let live = match &w.buckets.back().unwrap().keys {
            Keys::Map(m) => Arc::as_ptr(m),
            Keys::Sorted(_) => unreachable!(),
        };
        let mut copy = w.clone();
        copy.compact_newest();
        w.insert(1, 2, seen(2));
        match &w.buckets.back().unwrap().keys {
            Keys::Map(m) => assert_eq!(Arc::as_ptr(m), live, "the insert after a compacted copy did not copy the map"),
            Keys::Sorted(_) => unreachable!(),
        }
        assert_eq!((copy.get(1), copy.get(2)), (Some(seen(1)), None));
    }

    #[test]
    fn a_copy_shares_all_buckets_but_the_one_written_next() {
        let mut w = window(16_000, 1_000_000);
        for k in 0..1000u128 {
            w.insert((k * 100) as i64, k, seen(k as u64));
        }
        let copy = w.clone();
        w.insert(100_000, 5000, seen(5000));
        // Every bucket but the newest is still the same allocation.
        let shared = w.buckets.iter().zip(copy.buckets.iter()).filter(|(a, b)| a.keys.same_allocation(&b.keys)).count();
        assert!(shared + 1 >= copy.buckets.len(), "{shared} of {} shared", copy.buckets.len());
        assert_eq!(copy.get(5000), None);
        assert_eq!(w.get(5000), Some(seen(5000)));
    }
}

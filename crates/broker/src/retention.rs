//! Retention and disk protection on a broker node.
//!
//! - [`disk_loop`] (every node, every [`DISK_CHECK_INTERVAL`]): measures the store's filesystem and keeps
//!   [`DiskGuard`]: above `diskMaxUsedSpaceRatio` the leader refuses client sends with 14
//!   SERVICE_NOT_AVAILABLE "disk full" and the figures (RocketMQ's answer, which its producers retry on
//!   another group); the flag clears [`DISK_FULL_HYSTERESIS`] below the ratio. Reads, offset commits,
//!   transaction ends, scheduled deliveries and retention keep working.
//! - [`retention_loop`] (every `cleanResourceInterval`): the ready leader asks the raft layer for the
//!   next purge point (`raftmq_raft::retention`: whole expired segments during `deleteWhen` hours or above
//!   the full ratio; any age above `retentionBytesMax` or `diskSpaceCleanForciblyRatio`) and proposes it
//!   (`Command::Retain`), so every replica drops the same prefix; then every node compacts its own files
//!   up to the replicated floor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Timelike;
use raftmq_commitlog::DiskUsage;
use raftmq_raft::retention::{RetentionPolicy, REASON_AGE, REASON_DISK, REASON_SIZE};
use raftmq_raft::types::{retain_queue_bytes, Retain, RetainPoint};
use raftmq_raft::types::{Command, CommandResponse};
use tracing::{info, warn};

use crate::broker::BrokerInner;
use crate::config::{parse_delete_when, ratio};

/// How often every node measures its store's filesystem.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The disk-full flag clears this far below `diskMaxUsedSpaceRatio` (RocketMQ: set above 0.90, cleared
/// below 0.85).
pub const DISK_FULL_HYSTERESIS: f64 = 0.05;
/// How long one local compaction may take before it is retried at the next pass.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of one retention entry's queue list (also at most half of `entryBytesMax`); a longer list is
/// split over several entries for the same point, the floor moving with the last.
pub const RETAIN_ENTRY_BYTES_MAX: usize = 1 << 20;

/// The entries that carry `point` and its queue list, each at most `bytes_max` bytes of queues (at least one
/// queue per entry), the last marked `last`.
pub fn retain_entries(point: RetainPoint, queues: Vec<(String, u32, u64)>, bytes_max: usize) -> Vec<Retain> {
    let mut out: Vec<Retain> = Vec::new();
    let mut cur = Retain { point, queues: Vec::new(), last: false };
    let mut bytes = 0;
    for q in queues {
        let b = retain_queue_bytes(&q.0);
        if !cur.queues.is_empty() && bytes + b > bytes_max {
            out.push(std::mem::replace(&mut cur, Retain { point, queues: Vec::new(), last: false }));
            bytes = 0;
        }
        bytes += b;
        cur.queues.push(q);
    }
    cur.last = true;
    out.push(cur);
    out
}

/// The latest measurement of the store's filesystem and whether sends are refused.
#[derive(Debug, Default)]
pub struct DiskGuard {
    full: AtomicBool,
    total: AtomicU64,
    free: AtomicU64,
    available: AtomicU64,
    /// Why the last retention decision stopped where it did (for `raftmq admin status`).
    pub(crate) held_by: std::sync::Mutex<String>,
}

impl DiskGuard {
    /// Records a measurement; returns the new full flag when it changed.
    pub fn observe(&self, u: DiskUsage, full_ratio: f64) -> Option<bool> {
        self.total.store(u.total, Ordering::Relaxed);
        self.free.store(u.free, Ordering::Relaxed);
        self.available.store(u.available, Ordering::Relaxed);
        let used = u.used_ratio();
        let was = self.full.load(Ordering::Relaxed);
        let now = if was { used >= full_ratio - DISK_FULL_HYSTERESIS } else { used > full_ratio };
        self.full.store(now, Ordering::Relaxed);
        (now != was).then_some(now)
    }

    /// The last measurement.
    pub fn usage(&self) -> DiskUsage {
        DiskUsage {
            total: self.total.load(Ordering::Relaxed),
            free: self.free.load(Ordering::Relaxed),
            available: self.available.load(Ordering::Relaxed),
        }
    }

    /// Whether sends are refused.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The remark a refused send gets, when the disk is full.
    pub fn refusal(&self, full_ratio: f64) -> Option<String> {
        if !self.is_full() {
            return None;
        }
        let u = self.usage();
        Some(format!(
            "service not available now: the broker's disk is full [CL: {:5.2} CQ: {:5.2} INDEX: {:5.2}]: {} bytes used, {} available, above diskMaxUsedSpaceRatio {:.2}; sends resume below {:.2} (retention frees space; reads and offset commits still work)",
            u.used_ratio(),
            u.used_ratio(),
            u.used_ratio(),
            u.used(),
            u.available,
            full_ratio,
            full_ratio - DISK_FULL_HYSTERESIS
        ))
    }
}

/// How often a node waiting for disk space at start-up says so.
const SPACE_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// At start-up, before the Raft member opens its store: waits while the store's filesystem has less room
/// than one commitlog segment. A node that exited on `ENOSPC` (status 74) and is restarted by its
/// supervisor before space is freed would otherwise fail again while re-applying its log; waiting instead,
/// it rejoins the group as soon as space returns. Logs at warn every [`SPACE_WAIT_LOG_EVERY`].
pub(crate) async fn wait_for_disk_space(store: &std::path::Path, segment_bytes: u64) {
    // The nearest existing directory (a first start has no store directory yet).
    let probe = store.ancestors().find(|p| p.exists()).map(std::path::Path::to_path_buf).unwrap_or_else(|| store.to_path_buf());
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let p = probe.clone();
        let Ok(Ok(u)) = tokio::task::spawn_blocking(move || raftmq_commitlog::disk_usage(&p)).await else { return };
        if u.available >= segment_bytes {
            if last_log.is_some() {
                info!(available = u.available, "disk space is back; starting");
            }
            return;
        }
        if last_log.is_none_or(|t| t.elapsed() >= SPACE_WAIT_LOG_EVERY) {
            warn!(
                path = %store.display(),
                available = u.available,
                needed = segment_bytes,
                "waiting for disk space before joining the group: the store's filesystem has less room than one commitlog segment"
            );
            last_log = Some(std::time::Instant::now());
        }
        tokio::time::sleep(DISK_CHECK_INTERVAL).await;
    }
}

/// Measures the store's filesystem every [`DISK_CHECK_INTERVAL`].
pub(crate) async fn disk_loop(inner: Arc<BrokerInner>) {
    let full_ratio = ratio(inner.cfg.disk_max_used_space_ratio);
    let dir = inner.cfg.store_path_root_dir.clone();
    loop {
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || raftmq_commitlog::disk_usage(&d)).await {
            Ok(Ok(u)) => match inner.disk.observe(u, full_ratio) {
                Some(true) => warn!(
                    used = u.used(),
                    available = u.available,
                    ratio = u.used_ratio(),
                    full_ratio,
                    "disk full: refusing sends until usage drops below {:.2}",
                    full_ratio - DISK_FULL_HYSTERESIS
                ),
                Some(false) => info!(ratio = u.used_ratio(), "disk no longer full: accepting sends"),
                None => {}
            },
            Ok(Err(e)) => warn!(error = %e, path = %dir.display(), "cannot measure the store's filesystem"),
            Err(_) => return,
        }
        tokio::time::sleep(DISK_CHECK_INTERVAL).await;
    }
}

/// The leader's retention decisions and every node's local compaction.
pub(crate) async fn retention_loop(inner: Arc<BrokerInner>) {
    let interval = Duration::from_millis(inner.cfg.clean_resource_interval);
    let hours = parse_delete_when(&inner.cfg.delete_when).unwrap_or(None);
    let reserved_ms = inner.cfg.file_reserved_time_ms.unwrap_or(inner.cfg.file_reserved_time.saturating_mul(3_600_000));
    let reserved_ms = i64::try_from(reserved_ms).unwrap_or(i64::MAX);
    let (full_ratio, force_ratio) = (ratio(inner.cfg.disk_max_used_space_ratio), ratio(inner.cfg.disk_space_clean_forcibly_ratio));
    loop {
        tokio::time::sleep(interval).await;
        let role = inner.node.role().borrow().clone();
        if role.role == raftmq_raft::node::Role::Shutdown {
            return;
        }
        if role.role == raftmq_raft::node::Role::Leader && role.ready {
            let used = inner.disk.usage().used_ratio();
            let in_hours = hours.as_ref().is_none_or(|h| h.contains(&chrono::Local::now().hour())) || used > full_ratio;
            let policy = RetentionPolicy {
                now_ms: crate::store::wall_ms().max(inner.store.replicated_now_ms()),
                reserved_ms: in_hours.then_some(reserved_ms),
                bytes_max: (inner.cfg.retention_bytes_max > 0).then_some(inner.cfg.retention_bytes_max),
                force: used > force_ratio,
                segments_per_pass_max: inner.cfg.delete_file_batch_max,
            };
            match inner.node.plan_retention(policy).await {
                Ok(plan) => {
                    *inner.disk.held_by.lock().unwrap_or_else(|p| p.into_inner()) = plan.held_by.clone();
                    if let Some(point) = plan.point {
                        let reason = match point.reason {
                            REASON_AGE => "age",
                            REASON_SIZE => "size cap",
                            REASON_DISK => "disk above the forced-clean ratio",
                            _ => "unknown",
                        };
                        let entries = retain_entries(point, plan.queues, RETAIN_ENTRY_BYTES_MAX.min(inner.cfg.entry_bytes_max / 2));
                        let n = entries.len();
                        for (i, r) in entries.into_iter().enumerate() {
                            match inner.node.write(Command::Retain(r)).await {
                                Ok(CommandResponse::Done) if i + 1 == n => {
                                    info!(
                                        index = point.index,
                                        pos = point.pos,
                                        reason,
                                        entries = n,
                                        "retention: log below this point deleted"
                                    )
                                }
                                Ok(CommandResponse::Done) => {}
                                Ok(other) => {
                                    warn!(?other, "retention point refused");
                                    break;
                                }
                                Err(e) => {
                                    warn!(error = %e, "retention point not replicated; retrying next pass");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => warn!(error = %e, "retention planning failed; retrying next pass"),
            }
        }
        let floor = inner.node.state().retention_floor();
        if floor.index > 0 {
            if let Err(e) = inner.node.compact(floor.index - 1, COMPACT_TIMEOUT).await {
                warn!(error = %e, floor = floor.index, "compaction to the retention floor failed; retrying next pass");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used_pct: u64) -> DiskUsage {
        DiskUsage { total: 1100, free: 1000 - used_pct * 10 + 100, available: 1000 - used_pct * 10 }
    }

    #[test]
    fn a_long_queue_list_is_split_and_only_the_last_entry_moves_the_floor() {
        let point = RetainPoint { index: 9, pos: 1 << 20, decided_ms: 1, reason: 0 };
        let queues: Vec<(String, u32, u64)> = (0..100).map(|i| (format!("T{i:02}"), 0, i)).collect();
        // 17 bytes per queue: 3 fit in 51 bytes.
        let e = retain_entries(point, queues.clone(), 51);
        assert_eq!(e.len(), 34);
        assert!(e[..33].iter().all(|r| !r.last && r.queues.len() == 3));
        assert!(e[33].last && e[33].queues.len() == 1);
        assert_eq!(e.iter().flat_map(|r| r.queues.clone()).collect::<Vec<_>>(), queues, "every queue once, in order");
        // A queue longer than the budget still goes, alone; an empty list is one last entry.
        assert_eq!(retain_entries(point, queues[..2].to_vec(), 1).len(), 2);
        let one = retain_entries(point, Vec::new(), 51);
        assert!(one.len() == 1 && one[0].last && one[0].queues.is_empty());
    }

    #[test]
    fn the_full_flag_sets_above_the_ratio_and_clears_below_the_hysteresis() {
        let g = DiskGuard::default();
        assert_eq!(g.observe(usage(75), 0.75), None, "at the ratio is not above it");
        assert_eq!(g.observe(usage(76), 0.75), Some(true));
        let remark = g.refusal(0.75).expect("full");
        assert!(remark.contains("disk is full") && remark.contains("760 bytes used, 240 available"), "{remark}");
        assert_eq!(g.observe(usage(71), 0.75), None, "still within the hysteresis");
        assert!(g.is_full());
        assert_eq!(g.observe(usage(69), 0.75), Some(false));
        assert!(g.refusal(0.75).is_none());
    }
}

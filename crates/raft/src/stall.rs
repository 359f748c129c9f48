//! Detects a leader that cannot replicate — entries wait in its log while the index a quorum has matched
//! does not move — and picks the follower it hands leadership to. Pure decisions on figures from openraft's
//! metrics, so they are tested without a cluster; `RaftNode`'s stall monitor feeds them and performs the
//! hand-off (see `RaftNode::start`, docs/operations.md "Stalled leader hand-off").
//!
//! A gray failure (a throttled egress, a link that passes heartbeats but not entries) leaves the leader in
//! place: its followers keep hearing from it, so none of them campaigns, and every write waits. Raft's own
//! election only replaces a leader that falls silent; this replaces one that talks but cannot replicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// What the monitor sees at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// This node leads, and no membership change is in progress.
    pub leading: bool,
    /// The leader's last log index.
    pub last_log: u64,
    /// The highest index a quorum of voters has matched (the leader counting its own log).
    pub quorum_matched: u64,
}

/// Says when the quorum's match index has stood still for `threshold` while entries waited above it.
#[derive(Debug)]
pub(crate) struct StallDetector {
    threshold: Duration,
    /// The quorum match index entries were waiting above, and since when it has not moved.
    since: Option<(u64, Instant)>,
}

impl StallDetector {
    /// A detector that fires after `threshold` without progress.
    pub fn new(threshold: Duration) -> Self {
        StallDetector { threshold, since: None }
    }

    /// Takes one observation at `now`; true when the leader has been stalled for the threshold or longer.
    /// Anything but a stall (not leading, nothing waiting, the quorum index moving) starts the clock afresh.
    pub fn observe(&mut self, now: Instant, p: Progress) -> bool {
        if !p.leading || p.last_log <= p.quorum_matched {
            self.since = None;
            return false;
        }
        match self.since {
            Some((matched, t)) if matched == p.quorum_matched => now.saturating_duration_since(t) >= self.threshold,
            _ => {
                self.since = Some((p.quorum_matched, now));
                false
            }
        }
    }

    /// Forgets the current stall (after a hand-off attempt, whatever its outcome): the next one is timed
    /// from scratch.
    pub fn reset(&mut self) {
        self.since = None;
    }
}

/// The quorum's match index: the highest index a majority of `voters` has, `matched` giving each voter's
/// (the leader's own entry being its last log index). `None` without voters.
pub(crate) fn quorum_matched(voters: &[NodeId], matched: &BTreeMap<NodeId, u64>) -> Option<u64> {
    let mut v: Vec<u64> = voters.iter().map(|id| matched.get(id).copied().unwrap_or(0)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    // Ascending: a majority has at least the value at index (n - 1) / 2.
    v.get((v.len() - 1) / 2).copied()
}

/// The follower to hand leadership to: the voter other than `me` that has matched the most of the log (ties
/// to the lower id), since only a member at least as up to date as a majority can win the election. `None`
/// when there is no other voter.
pub(crate) fn handoff_target(me: NodeId, voters: &[NodeId], matched: &BTreeMap<NodeId, u64>) -> Option<NodeId> {
    voters.iter().copied().filter(|v| *v != me).max_by(|a, b| {
        let (ma, mb) = (matched.get(a).copied().unwrap_or(0), matched.get(b).copied().unwrap_or(0));
        ma.cmp(&mb).then(b.cmp(a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(3000);

    fn p(last_log: u64, quorum_matched: u64) -> Progress {
        Progress { leading: true, last_log, quorum_matched }
    }

    #[test]
    fn fires_once_the_quorum_index_stood_still_for_the_threshold_while_entries_waited() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(T);
        assert!(!d.observe(t0, p(10, 8)));
        assert!(!d.observe(t0 + Duration::from_millis(2999), p(12, 8)), "just below the threshold");
        assert!(d.observe(t0 + T, p(12, 8)), "at the threshold");
        assert!(d.observe(t0 + 2 * T, p(40, 8)), "and after it, while nothing moves");
    }

    #[test]
    fn progress_idleness_or_losing_leadership_restart_the_clock() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = StallDetector::new(T);
        assert!(!d.observe(at(0), p(10, 8)));
        // The quorum index moves (slowly): a new wait starts, not a stall.
        assert!(!d.observe(at(2500), p(12, 9)));
        assert!(!d.observe(at(5000), p(14, 9)));
        assert!(d.observe(at(5500), p(14, 9)));
        // Everything committed: no entries wait, whatever the time.
        assert!(!d.observe(at(9000), p(14, 14)));
        assert!(!d.observe(at(9001), p(15, 14)));
        assert!(!d.observe(at(11000), p(15, 14)));
        // Not leading (a follower's figures say nothing about replication).
        assert!(!d.observe(at(20000), Progress { leading: false, last_log: 15, quorum_matched: 14 }));
        assert!(!d.observe(at(20001), p(15, 14)), "the clock restarted");
        d.reset();
        assert!(!d.observe(at(30000), p(15, 14)), "reset forgets the stall");
        assert!(d.observe(at(33000), p(15, 14)));
    }

    #[test]
    fn the_quorum_index_is_the_majoritys() {
        let m = |pairs: &[(NodeId, u64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(quorum_matched(&[1, 2, 3], &m(&[(1, 50), (2, 10), (3, 40)])), Some(40));
        assert_eq!(quorum_matched(&[1, 2, 3], &m(&[(1, 50)])), Some(0), "no follower has anything");
        assert_eq!(quorum_matched(&[1, 2, 3, 4], &m(&[(1, 50), (2, 45), (3, 40), (4, 5)])), Some(40), "3 of 4");
        assert_eq!(quorum_matched(&[1], &m(&[(1, 7)])), Some(7));
        assert_eq!(quorum_matched(&[], &m(&[])), None);
    }

    #[test]
    fn the_target_is_the_most_caught_up_follower() {
        let m = |pairs: &[(NodeId, u64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(handoff_target(1, &[1, 2, 3], &m(&[(1, 99), (2, 10), (3, 40)])), Some(3));
        assert_eq!(handoff_target(1, &[1, 2, 3], &m(&[(1, 99), (2, 40), (3, 40)])), Some(2), "ties: the lower id");
        assert_eq!(handoff_target(3, &[1, 2, 3], &m(&[])), Some(1), "nothing known: the lowest id");
        assert_eq!(handoff_target(1, &[1], &m(&[(1, 9)])), None, "a lone voter has nobody to hand off to");
    }
}

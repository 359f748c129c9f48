//! raftmq patch: unit tests of the leader-flush overlap: `PendingFlushes` (which flush notices may raise the
//! leader's own matching index) and the notifying `LogFlushed` callback (what reaches RaftCore's notify
//! channel on success, failure, and a callback the storage drops).

use std::io;

use tokio::sync::mpsc;

use crate::core::notify::Notify;
use crate::core::PendingFlush;
use crate::core::PendingFlushes;
use crate::engine::testing::UTConfig;
use crate::raft_state::LogIOId;
use crate::storage::LogFlushed;
use crate::type_config::TypeConfigExt;
use crate::CommittedLeaderId;
use crate::LogId;
use crate::Vote;

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn pending(vote: Vote<u64>, index: u64) -> PendingFlush<UTConfig> {
    let (_tx, rx) = UTConfig::oneshot();
    PendingFlush {
        vote,
        log_id: log_id(vote.leader_id.term, vote.leader_id.node_id, index),
        rx,
        flushed: false,
    }
}

#[test]
fn flushes_count_in_submission_order_only() {
    let v = Vote::new_committed(2, 1);
    let mut q = PendingFlushes::<UTConfig>::default();
    for i in [3, 5, 7] {
        q.queue.push_back(pending(v, i));
    }
    // The newest append flushed first: the earlier ones are still running, nothing may be counted.
    assert_eq!(q.flushed(&v, &Some(log_id(2, 1, 7)), Some(&v)), None);
    assert_eq!(q.queue.len(), 3);
    // The oldest flushed: only it counts.
    assert_eq!(q.flushed(&v, &Some(log_id(2, 1, 3)), Some(&v)), Some(log_id(2, 1, 3)));
    // The middle one: it and the already-flushed newest count together.
    assert_eq!(q.flushed(&v, &Some(log_id(2, 1, 5)), Some(&v)), Some(log_id(2, 1, 7)));
    assert!(q.queue.is_empty());
}

#[test]
fn a_flush_from_another_leadership_never_counts() {
    let old = Vote::new_committed(2, 1);
    let new = Vote::new_committed(3, 1);
    let mut q = PendingFlushes::<UTConfig>::default();
    q.queue.push_back(pending(old, 4));
    q.queue.push_back(pending(new, 6));
    // Leading under `new`: the notice of the append made under `old` is consumed but not counted.
    assert_eq!(q.flushed(&old, &Some(log_id(2, 1, 4)), Some(&new)), None);
    assert_eq!(q.queue.len(), 1);
    // Not leading at all: a notice under `new` does not count either.
    assert_eq!(q.flushed(&new, &Some(log_id(3, 1, 6)), None), None);
    assert!(q.queue.is_empty());

    // The same term and node, but an uncommitted vote, is another vote.
    let mut q = PendingFlushes::<UTConfig>::default();
    q.queue.push_back(pending(new, 8));
    let uncommitted = Vote::new(3, 1);
    assert_eq!(q.flushed(&new, &Some(log_id(3, 1, 8)), Some(&uncommitted)), None);
}

#[test]
fn a_notice_for_no_pending_append_counts_nothing() {
    let v = Vote::new_committed(2, 1);
    let mut q = PendingFlushes::<UTConfig>::default();
    q.queue.push_back(pending(v, 3));
    assert_eq!(q.flushed(&v, &Some(log_id(2, 1, 9)), Some(&v)), None);
    assert_eq!(q.flushed(&v, &None, Some(&v)), None);
    assert_eq!(q.queue.len(), 1);
}

#[allow(clippy::type_complexity)]
fn notifying() -> (
    LogFlushed<UTConfig>,
    tokio::sync::oneshot::Receiver<Result<LogIOId<u64>, io::Error>>,
    mpsc::UnboundedReceiver<Notify<UTConfig>>,
    LogIOId<u64>,
) {
    let v = Vote::new_committed(2, 1);
    let id = LogIOId::new(v, Some(log_id(2, 1, 5)));
    let (tx, rx) = UTConfig::oneshot();
    let (tx_notify, rx_notify) = mpsc::unbounded_channel();
    (LogFlushed::new_notifying(id, tx, tx_notify, v), rx, rx_notify, id)
}

#[tokio::test]
async fn a_notifying_callback_reports_success_to_both_channels() {
    let (cb, rx, mut rx_notify, id) = notifying();
    cb.log_io_completed(Ok(()));
    assert_eq!(rx.await.unwrap().unwrap(), id);
    match rx_notify.try_recv() {
        Ok(Notify::LocalLogFlushed { vote, log_io_id, result }) => {
            assert_eq!(vote, Vote::new_committed(2, 1));
            assert_eq!(log_io_id, id);
            assert!(result.is_ok());
        }
        _ => panic!("expected LocalLogFlushed"),
    }
    // Exactly one notice: the consumed callback's drop reports nothing more.
    assert!(rx_notify.try_recv().is_err());
}

#[tokio::test]
async fn a_notifying_callback_reports_a_flush_error() {
    let (cb, rx, mut rx_notify, id) = notifying();
    cb.log_io_completed(Err(io::Error::new(io::ErrorKind::StorageFull, "disk full")));
    assert_eq!(rx.await.unwrap().unwrap_err().kind(), io::ErrorKind::StorageFull);
    match rx_notify.try_recv() {
        Ok(Notify::LocalLogFlushed { log_io_id, result, .. }) => {
            assert_eq!(log_io_id, id);
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::StorageFull);
        }
        _ => panic!("expected LocalLogFlushed"),
    }
    assert!(rx_notify.try_recv().is_err());
}

#[tokio::test]
async fn a_dropped_notifying_callback_is_reported_as_an_error() {
    let (cb, rx, mut rx_notify, _id) = notifying();
    drop(cb);
    assert!(rx.await.unwrap().is_err());
    match rx_notify.try_recv() {
        Ok(Notify::LocalLogFlushed { result, .. }) => assert!(result.is_err()),
        _ => panic!("expected LocalLogFlushed"),
    }
}

// RaftCore drops a leader append's receiver as soon as it has handled the notice, so the waiter must already
// be answered when the notice can be seen (else the answer fails and a spurious error is logged). The callback
// runs on another thread, as the log's IO thread does; each round checks the waiter the moment the notice
// arrives (with the order reversed this fails within a few hundred rounds).
#[test]
fn the_waiter_is_answered_before_the_notice_is_sent() {
    for round in 0..2000 {
        let (cb, mut rx, mut rx_notify, _id) = notifying();
        let t = std::thread::spawn(move || cb.log_io_completed(Ok(())));
        match rx_notify.blocking_recv() {
            Some(Notify::LocalLogFlushed { result, .. }) => assert!(result.is_ok()),
            _ => panic!("expected LocalLogFlushed"),
        }
        assert!(rx.try_recv().is_ok(), "round {round}: the notice arrived before the waiter's answer");
        t.join().unwrap();
    }
}

#[tokio::test]
async fn a_notifying_callback_whose_waiter_is_gone_still_reports_the_flush() {
    let (cb, rx, mut rx_notify, id) = notifying();
    // RaftCore stopped waiting (its leadership ended, or it handled an earlier notice for this append).
    drop(rx);
    cb.log_io_completed(Ok(()));
    match rx_notify.try_recv() {
        Ok(Notify::LocalLogFlushed { log_io_id, result, .. }) => {
            assert_eq!(log_io_id, id);
            assert!(result.is_ok());
        }
        _ => panic!("expected LocalLogFlushed"),
    }
}

#[tokio::test]
async fn a_plain_callback_keeps_upstream_behaviour() {
    let id = LogIOId::new(Vote::new_committed(2, 1), Some(log_id(2, 1, 5)));
    let (tx, rx) = UTConfig::oneshot();
    let cb = LogFlushed::<UTConfig>::new(id, tx);
    drop(cb);
    // Upstream: the sender is dropped and the awaiting receiver fails.
    assert!(rx.await.is_err());
}

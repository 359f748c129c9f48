//! Callbacks used by Storage API

use std::io;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::core::notify::Notify;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;
use crate::Vote;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    // raftmq patch: `Option`s so that `Drop` can tell a callback that was never called (see `Drop` below).
    tx: Option<OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>>,
    // raftmq patch: a leader's append also reports its flush to RaftCore's notify channel (with the vote it
    // was made under), because RaftCore no longer waits for it; see `Notify::LocalLogFlushed`.
    notify: Option<(mpsc::UnboundedSender<Notify<C>>, Vote<C::NodeId>)>,
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            tx: Some(tx),
            notify: None,
        }
    }

    // raftmq patch: the callback of a leader's append, which RaftCore does not wait for: the completion is
    // also sent as `Notify::LocalLogFlushed { vote, .. }` through `tx_notify`.
    pub(crate) fn new_notifying(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
        tx_notify: mpsc::UnboundedSender<Notify<C>>,
        vote: Vote<C::NodeId>,
    ) -> Self {
        Self {
            log_io_id,
            tx: Some(tx),
            notify: Some((tx_notify, vote)),
        }
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(mut self, result: Result<(), io::Error>) {
        self.complete(result);
    }

    // raftmq patch: the body of `log_io_completed`, shared with `Drop`; also sends the notify message.
    //
    // The waiter (`tx`) is answered before the notice is sent: RaftCore drops a leader append's receiver once
    // it has handled the notice (`PendingFlushes::flushed`), so answering it after the notice failed whenever
    // RaftCore was quicker, and logged a spurious error for a flush that succeeded (thousands a minute on a
    // loaded leader). A notifying callback's receiver is also dropped when leadership ends; a failed send is
    // expected there and not an error.
    fn complete(&mut self, result: Result<(), io::Error>) {
        let Some(tx) = self.tx.take() else { return };
        let notify = self.notify.take();
        let notice = match (&notify, &result) {
            (None, _) => None,
            (Some(_), Ok(())) => Some(Ok(())),
            (Some(_), Err(e)) => Some(Err(io::Error::new(e.kind(), e.to_string()))),
        };

        let res = if let Err(e) = result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
            tx.send(Err(e))
        } else {
            tx.send(Ok(self.log_io_id.clone()))
        };

        match (notify, notice) {
            (Some((tx_notify, vote)), Some(result)) => {
                if res.is_err() {
                    tracing::debug!("leader log flush upto {} completed after RaftCore stopped waiting for it", self.log_io_id);
                }
                let _ = tx_notify.send(Notify::LocalLogFlushed {
                    vote,
                    log_io_id: self.log_io_id.clone(),
                    result,
                });
            }
            _ => {
                if let Err(e) = res {
                    tracing::error!("failed to send log io completion event: {:?}", e);
                }
            }
        }
    }
}

// raftmq patch: a leader's append is not awaited by RaftCore, so a callback the storage drops without calling
// it must still be reported, as an error (upstream, the awaiting `rx` fails the same way). Only the
// notifying callbacks do this; the others keep upstream's behaviour (the dropped sender fails `rx`).
impl<C> Drop for LogFlushed<C>
where C: RaftTypeConfig
{
    fn drop(&mut self) {
        if self.notify.is_some() {
            self.complete(Err(io::Error::other(format!(
                "LogFlushed callback dropped without being called, flushing upto {}",
                self.log_io_id
            ))));
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}

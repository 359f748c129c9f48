//! DELETE_TOPIC_IN_BROKER (215, `mqadmin deleteTopic`, `raftmq admin topic delete`): a replicated write the
//! leader proposes as one `DeleteTopic` entry (followers forward it). Applying it removes the topic's
//! config, queue states, every group's offsets and reset markers on it, its retention floors and queue
//! leases, and each replica deletes the topic's consume-queue files (see `raftmq-state`'s `groups` module
//! and the state machine's `drop_topic_queues`). The message bytes stay in the commitlog until retention
//! deletes their segments. The broker then registers at once, without the topic: the nameservers drop a
//! topic the leader no longer lists (DELETE_TOPIC_IN_NAMESRV, 216, does it at once). A send to the topic
//! afterwards is treated as a send to a topic never created (the auto-create rules apply); a topic created
//! again starts at offset 0, with fresh queue files, as in RocketMQ.
//!
//! RocketMQ's system topics (`TopicValidator.isSystemTopic`) are refused with SYSTEM_ERROR and RocketMQ's
//! remark, "The topic[T] is conflict with system topic."; retry and dead-letter topics may be deleted.

use raftmq_raft::types::{is_undeletable_topic, Command, CommandResponse};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::DeleteTopicRequestHeader;
use raftmq_remoting::ResponseCode;

use crate::broker::BrokerInner;
use crate::processor::{header, ok, reply, Reply};
use crate::topics::validate_topic;

impl BrokerInner {
    /// DELETE_TOPIC_IN_BROKER: deletes the topic through the log. A topic that does not exist is deleted
    /// already: SUCCESS (tools send 215 to every broker group).
    pub(crate) async fn delete_topic(&self, req: &RemotingCommand) -> Reply {
        let h: DeleteTopicRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_topic(&h.topic) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if is_undeletable_topic(&h.topic) {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("The topic[{}] is conflict with system topic.", h.topic));
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        match self.node.write(Command::DeleteTopic(h.topic.clone())).await {
            Ok(CommandResponse::Refused(why)) => reply(req, ResponseCode::SYSTEM_ERROR, why),
            Ok(_) => {
                tracing::info!(topic = %h.topic, "topic deleted");
                self.registration_now();
                Some(ok(req).into())
            }
            Err(e) => reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("topic deletion not replicated: {e}")),
        }
    }
}

//! Subscription-group admin requests (`mqadmin updateSubGroup`, `deleteSubGroup`, the Dashboard's consumer
//! view): UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200) and DELETE_SUBSCRIPTIONGROUP (207) are replicated writes
//! the leader proposes (followers forward them, see `forward.rs`); GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201)
//! answers from this member's applied state.
//!
//! RocketMQ auto-creates a group's config on its first heartbeat or pull (`autoCreateSubscriptionGroup`).
//! raftmq does not propose an entry for that (one per new group, from any member's heartbeat): 201 lists the
//! groups created with 200 and, read-only, every other group this member knows from committed offsets or
//! registered consumers, with RocketMQ's default config and `"raftmqImplicit":true` (at most
//! [`IMPLICIT_GROUPS_LISTED_MAX`] of them). A consumer of a group that has no config may consume; one whose
//! config says `consumeEnable = false` is refused its pulls with NO_PERMISSION, as RocketMQ does.

use raftmq_raft::types::{Command, CommandResponse, DeleteGroup, SUBSCRIPTION_GROUPS_MAX};
use raftmq_remoting::body::{encode_json_body, DataVersion, SubscriptionGroupConfig as WireGroup, SubscriptionGroupWrapper};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::DeleteSubscriptionGroupRequestHeader;
use raftmq_remoting::ResponseCode;

use crate::broker::BrokerInner;
use crate::processor::{header, ok, reply, Reply};
use crate::topics::validate_group;

/// Most groups a 201 answer lists besides the configured ones (groups known only from offsets or
/// heartbeats), so that the answer fits a frame: [`SUBSCRIPTION_GROUPS_MAX`] configured groups plus these,
/// each at most ~560 bytes with a 120-byte name, stay below 12 MiB. The remark says when some were left out.
pub const IMPLICIT_GROUPS_LISTED_MAX: usize = 4096;

/// The replicated config of a wire config (the raftmq-only mark is not stored).
pub(crate) fn to_state(w: &WireGroup) -> raftmq_raft::types::SubscriptionGroupConfig {
    raftmq_raft::types::SubscriptionGroupConfig {
        group_name: w.group_name.clone(),
        consume_enable: w.consume_enable,
        consume_from_min_enable: w.consume_from_min_enable,
        consume_broadcast_enable: w.consume_broadcast_enable,
        retry_queue_nums: w.retry_queue_nums,
        retry_max_times: w.retry_max_times,
        broker_id: w.broker_id,
        which_broker_when_consume_slowly: w.which_broker_when_consume_slowly,
        notify_consumer_ids_changed_enable: w.notify_consumer_ids_changed_enable,
        group_sys_flag: w.group_sys_flag,
        consume_timeout_minute: w.consume_timeout_minute,
    }
}

/// The wire form of a replicated config.
pub(crate) fn to_wire(s: &raftmq_raft::types::SubscriptionGroupConfig) -> WireGroup {
    WireGroup {
        broker_id: s.broker_id,
        consume_broadcast_enable: s.consume_broadcast_enable,
        consume_enable: s.consume_enable,
        consume_from_min_enable: s.consume_from_min_enable,
        consume_timeout_minute: s.consume_timeout_minute,
        group_name: s.group_name.clone(),
        group_sys_flag: s.group_sys_flag,
        notify_consumer_ids_changed_enable: s.notify_consumer_ids_changed_enable,
        raftmq_implicit: false,
        retry_max_times: s.retry_max_times,
        retry_queue_nums: s.retry_queue_nums,
        which_broker_when_consume_slowly: s.which_broker_when_consume_slowly,
    }
}

/// Builds the 201 body: the configured groups, then implicit ones (named in `implicit`, sorted, duplicates
/// and configured ones skipped) up to [`IMPLICIT_GROUPS_LISTED_MAX`]; true when implicit groups were cut.
pub(crate) fn wrapper(
    configured: impl Iterator<Item = WireGroup>,
    implicit: impl Iterator<Item = String>,
    data_version: DataVersion,
) -> (SubscriptionGroupWrapper, bool) {
    let mut w = SubscriptionGroupWrapper { data_version, ..Default::default() };
    for g in configured {
        w.subscription_group_table.insert(g.group_name.clone(), g);
    }
    let mut extra: Vec<String> = implicit.filter(|g| !w.subscription_group_table.contains_key(g)).collect();
    extra.sort();
    extra.dedup();
    let cut = extra.len() > IMPLICIT_GROUPS_LISTED_MAX;
    for g in extra.into_iter().take(IMPLICIT_GROUPS_LISTED_MAX) {
        let mut c = WireGroup::new(g.clone());
        c.raftmq_implicit = true;
        w.subscription_group_table.insert(g, c);
    }
    (w, cut)
}

impl BrokerInner {
    /// UPDATE_AND_CREATE_SUBSCRIPTIONGROUP: creates or replaces a group's config through the log.
    pub(crate) async fn update_subscription_group(&self, req: &RemotingCommand) -> Reply {
        let g: WireGroup = match raftmq_remoting::body::decode_json_body("subscription group", &req.body) {
            Ok(g) => g,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad subscription group body: {e}")),
        };
        if let Err(why) = validate_group(&g.group_name) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        let (count, known) = self.store.subscription_group_room(&g.group_name);
        if !known && count >= SUBSCRIPTION_GROUPS_MAX {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "cannot create subscription group {}: the broker holds {count} groups (SUBSCRIPTION_GROUPS_MAX {SUBSCRIPTION_GROUPS_MAX})",
                    g.group_name
                ),
            );
        }
        match self.node.write(Command::UpsertSubscriptionGroup(to_state(&g))).await {
            Ok(CommandResponse::Refused(why)) => reply(req, ResponseCode::SYSTEM_ERROR, why),
            Ok(_) => Some(ok(req).into()),
            Err(e) => reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("subscription group change not replicated: {e}")),
        }
    }

    /// DELETE_SUBSCRIPTIONGROUP: deletes a group's config (and with `cleanOffset` its committed offsets)
    /// through the log. Deleting a group that has no config succeeds (RocketMQ does the same).
    pub(crate) async fn delete_subscription_group(&self, req: &RemotingCommand) -> Reply {
        let h: DeleteSubscriptionGroupRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_group(&h.group_name) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        match self.node.write(Command::DeleteSubscriptionGroup(DeleteGroup { group: h.group_name, clean_offset: h.clean_offset })).await {
            Ok(CommandResponse::Refused(why)) => reply(req, ResponseCode::SYSTEM_ERROR, why),
            Ok(_) => Some(ok(req).into()),
            Err(e) => reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("subscription group deletion not replicated: {e}")),
        }
    }

    /// GET_ALL_SUBSCRIPTIONGROUP_CONFIG: the configured groups and, marked, the implicit ones (module docs).
    /// `dataVersion` is this member's applied log index and replicated clock: equal on members that applied
    /// the same entries.
    pub(crate) fn all_subscription_groups(&self, req: &RemotingCommand) -> Reply {
        let (configured, mut implicit, version) = self.node.state().with_metadata(|m| {
            let configured: Vec<WireGroup> = m.state.subscription_groups.values().map(to_wire).collect();
            let implicit: Vec<String> = m.state.consumer_offsets.keys().cloned().collect();
            let version = DataVersion { counter: m.last_applied.map_or(0, |l| l.index) as i64, timestamp: m.state.clock.now_ms };
            (configured, implicit, version)
        });
        implicit.extend(self.clients.groups().into_iter().map(|(g, _, _)| g));
        let (w, cut) = wrapper(configured.into_iter(), implicit.into_iter(), version);
        match encode_json_body(&w) {
            Ok(body) => {
                let mut r = ok(req).with_body(body);
                if cut {
                    r.remark = Some(format!(
                        "more than {IMPLICIT_GROUPS_LISTED_MAX} groups without a config are known; the first {IMPLICIT_GROUPS_LISTED_MAX} by name are listed"
                    ));
                }
                Some(r.into())
            }
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, format!("could not encode the answer: {e}")),
        }
    }

    /// The NO_PERMISSION answer to a pull of a group whose config disables consuming, if it does.
    pub(crate) fn consume_disabled(&self, req: &RemotingCommand, group: &str) -> Option<Reply> {
        let disabled = self.node.state().with_metadata(|m| m.state.subscription_groups.get(group).is_some_and(|g| !g.consume_enable));
        disabled.then(|| reply(req, ResponseCode::NO_PERMISSION, format!("subscription group no permission, {group}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::GROUP_BYTES_MAX;
    use raftmq_remoting::frame::FRAME_BYTES_MAX_DEFAULT;

    #[test]
    fn configured_groups_come_first_and_implicit_ones_are_marked_and_bounded() {
        let mut disabled = WireGroup::new("g");
        disabled.consume_enable = false;
        let implicit = ["x", "g", "a", "x"].into_iter().map(String::from);
        let (w, cut) = wrapper([disabled.clone()].into_iter(), implicit, DataVersion::default());
        assert!(!cut);
        assert_eq!(w.subscription_group_table.keys().collect::<Vec<_>>(), ["a", "g", "x"]);
        assert_eq!(w.subscription_group_table["g"], disabled, "a configured group is not replaced by an implicit one");
        assert!(w.subscription_group_table["a"].raftmq_implicit && w.subscription_group_table["a"].consume_enable);
        let many = (0..=IMPLICIT_GROUPS_LISTED_MAX).map(|i| format!("i{i:05}"));
        let (w, cut) = wrapper(std::iter::empty(), many, DataVersion::default());
        assert!(cut);
        assert_eq!(w.subscription_group_table.len(), IMPLICIT_GROUPS_LISTED_MAX);
    }

    /// The largest answer the limits allow — every configured and listed implicit group with the longest
    /// name and the widest numbers — fits the default frame.
    #[test]
    fn the_largest_group_listing_fits_one_frame() {
        let name = |i: usize| format!("{i:06}{}", "g".repeat(GROUP_BYTES_MAX - 6));
        let wide = |i: usize| WireGroup {
            broker_id: i64::MIN,
            which_broker_when_consume_slowly: i64::MIN,
            retry_max_times: i32::MIN,
            retry_queue_nums: i32::MIN,
            group_sys_flag: i32::MIN,
            consume_timeout_minute: i32::MIN,
            consume_broadcast_enable: false,
            consume_enable: false,
            consume_from_min_enable: false,
            notify_consumer_ids_changed_enable: false,
            ..WireGroup::new(name(i))
        };
        let configured = (0..SUBSCRIPTION_GROUPS_MAX).map(wide);
        let implicit = (SUBSCRIPTION_GROUPS_MAX..SUBSCRIPTION_GROUPS_MAX + IMPLICIT_GROUPS_LISTED_MAX).map(name);
        let (w, _) = wrapper(configured, implicit, DataVersion { counter: i64::MIN, timestamp: i64::MIN });
        let body = encode_json_body(&w).unwrap();
        assert!(body.len() < 12 << 20 && body.len() < FRAME_BYTES_MAX_DEFAULT, "{} bytes", body.len());
    }
}

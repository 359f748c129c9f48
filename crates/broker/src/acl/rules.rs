//! What each request code the broker serves needs under ACL: the one table the dispatch consults first
//! (a code without a rule is answered REQUEST_CODE_NOT_SUPPORTED whether ACL is on or not, so a new
//! processor cannot be reached without a permission rule), following RocketMQ's `PlainAccessValidator`
//! where it maps a code and raftmq's stricter choice where it does not (documented in docs/security.md).
//!
//! Groups are resources named by their retry topic (`%RETRY%group`), as in RocketMQ.

use raftmq_remoting::body::{decode_json_body, HeartbeatData, LockBatchRequestBody};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::RequestCode;

use super::Perm;
use crate::processor::{
    RAFTMQ_ADD_NODE, RAFTMQ_MEMBERS, RAFTMQ_NODE_STATUS, RAFTMQ_PROMOTE_NODE, RAFTMQ_REMOVE_NODE, RAFTMQ_SET_DELAY_LEVELS,
    RAFTMQ_TRANSFER_LEADER,
};
use crate::topics::{retry_topic, RETRY_PREFIX};

/// How a request code is authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A valid signature of any account suffices (RocketMQ maps no resource for the code).
    Signed,
    /// A valid signature and the permissions [`Rule::resources`] derives from the request.
    Resources,
    /// A valid signature of an `admin` account.
    Admin,
}

/// The rule for `code`, or `None` when the broker does not serve it.
pub fn rule(code: RequestCode) -> Option<Rule> {
    use Rule::*;
    Some(match code {
        RequestCode::SEND_MESSAGE | RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE => Resources,
        RequestCode::CONSUMER_SEND_MSG_BACK => Resources,
        // The topic is in the half message the producer sent under PUB; RocketMQ maps no resource.
        RequestCode::END_TRANSACTION => Signed,
        RequestCode::PULL_MESSAGE | RequestCode::QUERY_CONSUMER_OFFSET | RequestCode::UPDATE_CONSUMER_OFFSET => Resources,
        // RocketMQ maps no resource for these; raftmq asks for SUB on the topic.
        RequestCode::GET_MAX_OFFSET
        | RequestCode::GET_MIN_OFFSET
        | RequestCode::SEARCH_OFFSET_BY_TIMESTAMP
        | RequestCode::GET_EARLIEST_MSG_STORETIME => Resources,
        RequestCode::HEART_BEAT | RequestCode::UNREGISTER_CLIENT | RequestCode::GET_CONSUMER_LIST_BY_GROUP => Resources,
        // Only compiles the subscription it carries; nothing is read or recorded. RocketMQ maps no resource.
        RequestCode::CHECK_CLIENT_CONFIG => Signed,
        // RocketMQ maps no resource; raftmq asks for SUB on the group.
        RequestCode::LOCK_BATCH_MQ | RequestCode::UNLOCK_BATCH_MQ => Resources,
        RequestCode::QUERY_MESSAGE => Resources,
        // Only an offset travels; the topic is known after the read. RocketMQ maps no resource either.
        RequestCode::VIEW_MESSAGE_BY_ID => Signed,
        RequestCode::UPDATE_AND_CREATE_TOPIC | RequestCode::INVOKE_BROKER_TO_RESET_OFFSET => Admin,
        // RocketMQ's `Permission.ADMIN_CODE` holds these three (and 17): admin accounts only.
        RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP | RequestCode::DELETE_SUBSCRIPTIONGROUP | RequestCode::DELETE_TOPIC_IN_BROKER => {
            Admin
        }
        // Read-only statistics for mqadmin and the Dashboard (admin.rs); RocketMQ maps no resource for them.
        RequestCode::GET_TOPIC_STATS_INFO
        | RequestCode::GET_CONSUME_STATS
        | RequestCode::GET_BROKER_RUNTIME_INFO
        | RequestCode::GET_ALL_TOPIC_CONFIG
        | RequestCode::GET_CONSUMER_CONNECTION_LIST
        | RequestCode::GET_PRODUCER_CONNECTION_LIST
        | RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG => Signed,
        RequestCode(
            RAFTMQ_NODE_STATUS
            | RAFTMQ_SET_DELAY_LEVELS
            | RAFTMQ_TRANSFER_LEADER
            | RAFTMQ_MEMBERS
            | RAFTMQ_ADD_NODE
            | RAFTMQ_PROMOTE_NODE
            | RAFTMQ_REMOVE_NODE,
        ) => Admin,
        _ => return None,
    })
}

fn field<'a>(req: &'a RemotingCommand, key: &str) -> Result<&'a str, String> {
    req.ext_fields.get(key).map(String::as_str).ok_or_else(|| format!("the request has no `{key}` header field"))
}

/// A topic sent to: its retry topic needs SUB on the group (consumers re-send there), others PUB.
fn sent_topic(out: &mut Vec<(String, Perm)>, topic: &str) {
    let perm = if topic.starts_with(RETRY_PREFIX) { Perm::SUB } else { Perm::PUB };
    out.push((topic.to_string(), perm));
}

/// The (resource, permission) pairs a [`Rule::Resources`] request needs; groups as `%RETRY%group`. An
/// error says why the request's resources cannot be told (a missing field, a body that does not parse).
pub fn resources(req: &RemotingCommand) -> Result<Vec<(String, Perm)>, String> {
    let mut out = Vec::new();
    let sub_group = |out: &mut Vec<(String, Perm)>, g: &str| out.push((retry_topic(g), Perm::SUB));
    match req.request_code() {
        RequestCode::SEND_MESSAGE => sent_topic(&mut out, field(req, "topic")?),
        RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE => sent_topic(&mut out, field(req, "b")?),
        RequestCode::CONSUMER_SEND_MSG_BACK => sub_group(&mut out, field(req, "group")?),
        RequestCode::PULL_MESSAGE | RequestCode::QUERY_CONSUMER_OFFSET | RequestCode::UPDATE_CONSUMER_OFFSET => {
            out.push((field(req, "topic")?.to_string(), Perm::SUB));
            sub_group(&mut out, field(req, "consumerGroup")?);
        }
        RequestCode::GET_MAX_OFFSET
        | RequestCode::GET_MIN_OFFSET
        | RequestCode::SEARCH_OFFSET_BY_TIMESTAMP
        | RequestCode::GET_EARLIEST_MSG_STORETIME
        | RequestCode::QUERY_MESSAGE => out.push((field(req, "topic")?.to_string(), Perm::SUB)),
        RequestCode::HEART_BEAT => {
            let hb: HeartbeatData =
                decode_json_body("heartbeat", &req.body).map_err(|e| format!("the heartbeat body does not parse: {e}"))?;
            for c in &hb.consumer_data_set {
                sub_group(&mut out, &c.group_name);
                for s in &c.subscription_data_set {
                    out.push((s.topic.clone(), Perm::SUB));
                }
            }
        }
        RequestCode::UNREGISTER_CLIENT => {
            if let Some(g) = req.ext_fields.get("consumerGroup").filter(|g| !g.is_empty()) {
                sub_group(&mut out, g);
            }
        }
        RequestCode::GET_CONSUMER_LIST_BY_GROUP => sub_group(&mut out, field(req, "consumerGroup")?),
        RequestCode::LOCK_BATCH_MQ | RequestCode::UNLOCK_BATCH_MQ => {
            let body: LockBatchRequestBody =
                decode_json_body("lock batch", &req.body).map_err(|e| format!("the lock request body does not parse: {e}"))?;
            sub_group(&mut out, &body.consumer_group);
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_remoting::body::{encode_json_body, ConsumerData, SubscriptionData};

    fn req(code: RequestCode, fields: &[(&str, &str)]) -> RemotingCommand {
        fields.iter().fold(RemotingCommand::request(code, 1), |c, (k, v)| c.with_ext(*k, *v))
    }

    /// The codes the broker's request dispatch names, read from its source: the test fails when a code is
    /// dispatched without a rule here (and the dispatch refuses codes without a rule at run time).
    fn dispatched_codes() -> Vec<RequestCode> {
        let src = include_str!("../broker.rs");
        let start = src.find("async fn dispatch(").expect("dispatch");
        let body = &src[start..start + src[start..].find("\n}\n").expect("end of impl")];
        let mut codes = Vec::new();
        for (i, _) in body.match_indices("RequestCode::") {
            let name: String = body[i + 13..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            if let Some(c) = RequestCode::KNOWN.iter().find(|c| c.name() == Some(name.as_str())) {
                codes.push(*c);
            }
        }
        let raftmq = [
            ("RAFTMQ_NODE_STATUS", RAFTMQ_NODE_STATUS),
            ("RAFTMQ_SET_DELAY_LEVELS", RAFTMQ_SET_DELAY_LEVELS),
            ("RAFTMQ_TRANSFER_LEADER", RAFTMQ_TRANSFER_LEADER),
            ("RAFTMQ_MEMBERS", RAFTMQ_MEMBERS),
            ("RAFTMQ_ADD_NODE", RAFTMQ_ADD_NODE),
            ("RAFTMQ_PROMOTE_NODE", RAFTMQ_PROMOTE_NODE),
            ("RAFTMQ_REMOVE_NODE", RAFTMQ_REMOVE_NODE),
        ];
        for (i, _) in body.match_indices("code.0 == ") {
            let name: String = body[i + 10..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
            let code = raftmq.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("dispatch names unknown raftmq code {name}"));
            codes.push(RequestCode(code.1));
        }
        codes
    }

    #[test]
    fn every_dispatched_code_has_a_rule_and_every_rule_is_dispatched() {
        let dispatched = dispatched_codes();
        assert!(dispatched.len() >= 28, "found only {} codes in the dispatch: {dispatched:?}", dispatched.len());
        for c in &dispatched {
            assert!(rule(*c).is_some(), "{c} is dispatched but has no ACL rule in acl/rules.rs");
        }
        // And no rule for a code nobody serves (a stale rule would hide a missing processor).
        let mut all: Vec<RequestCode> = RequestCode::KNOWN.to_vec();
        all.extend((10_900..10_920).map(RequestCode));
        for c in all {
            if rule(c).is_some() {
                assert!(dispatched.contains(&c), "{c} has an ACL rule but the broker does not dispatch it");
            }
        }
        assert_eq!(rule(RequestCode(99_999)), None);
    }

    #[test]
    fn each_code_maps_to_its_resources_and_permissions() {
        use Perm as P;
        let s = |v: &[(&str, Perm)]| v.iter().map(|(r, p)| (r.to_string(), *p)).collect::<Vec<_>>();
        type Case = (RemotingCommand, Rule, Vec<(String, Perm)>);
        let cases: Vec<Case> = vec![
            (req(RequestCode::SEND_MESSAGE, &[("topic", "T")]), Rule::Resources, s(&[("T", P::PUB)])),
            (req(RequestCode::SEND_MESSAGE_V2, &[("b", "T"), ("a", "pg")]), Rule::Resources, s(&[("T", P::PUB)])),
            (req(RequestCode::SEND_BATCH_MESSAGE, &[("b", "T")]), Rule::Resources, s(&[("T", P::PUB)])),
            (req(RequestCode::SEND_MESSAGE_V2, &[("b", "%RETRY%G")]), Rule::Resources, s(&[("%RETRY%G", P::SUB)])),
            (
                req(RequestCode::CONSUMER_SEND_MSG_BACK, &[("group", "G"), ("originTopic", "T")]),
                Rule::Resources,
                s(&[("%RETRY%G", P::SUB)]),
            ),
            (req(RequestCode::END_TRANSACTION, &[("producerGroup", "pg")]), Rule::Signed, vec![]),
            (
                req(RequestCode::PULL_MESSAGE, &[("topic", "T"), ("consumerGroup", "G")]),
                Rule::Resources,
                s(&[("T", P::SUB), ("%RETRY%G", P::SUB)]),
            ),
            (
                req(RequestCode::QUERY_CONSUMER_OFFSET, &[("topic", "T"), ("consumerGroup", "G")]),
                Rule::Resources,
                s(&[("T", P::SUB), ("%RETRY%G", P::SUB)]),
            ),
            (
                req(RequestCode::UPDATE_CONSUMER_OFFSET, &[("topic", "T"), ("consumerGroup", "G")]),
                Rule::Resources,
                s(&[("T", P::SUB), ("%RETRY%G", P::SUB)]),
            ),
            (req(RequestCode::GET_MAX_OFFSET, &[("topic", "T")]), Rule::Resources, s(&[("T", P::SUB)])),
            (req(RequestCode::GET_MIN_OFFSET, &[("topic", "T")]), Rule::Resources, s(&[("T", P::SUB)])),
            (req(RequestCode::SEARCH_OFFSET_BY_TIMESTAMP, &[("topic", "T")]), Rule::Resources, s(&[("T", P::SUB)])),
            (req(RequestCode::GET_EARLIEST_MSG_STORETIME, &[("topic", "T")]), Rule::Resources, s(&[("T", P::SUB)])),
            (req(RequestCode::UNREGISTER_CLIENT, &[("consumerGroup", "G")]), Rule::Resources, s(&[("%RETRY%G", P::SUB)])),
            (req(RequestCode::UNREGISTER_CLIENT, &[("producerGroup", "pg")]), Rule::Resources, vec![]),
            (req(RequestCode::GET_CONSUMER_LIST_BY_GROUP, &[("consumerGroup", "G")]), Rule::Resources, s(&[("%RETRY%G", P::SUB)])),
            (req(RequestCode::QUERY_MESSAGE, &[("topic", "T"), ("key", "k")]), Rule::Resources, s(&[("T", P::SUB)])),
            (req(RequestCode::VIEW_MESSAGE_BY_ID, &[("offset", "0")]), Rule::Signed, vec![]),
            (req(RequestCode::UPDATE_AND_CREATE_TOPIC, &[("topic", "T")]), Rule::Admin, vec![]),
            (req(RequestCode::INVOKE_BROKER_TO_RESET_OFFSET, &[("topic", "T"), ("group", "G")]), Rule::Admin, vec![]),
            (req(RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, &[]), Rule::Admin, vec![]),
            (req(RequestCode::DELETE_SUBSCRIPTIONGROUP, &[("groupName", "G")]), Rule::Admin, vec![]),
            (req(RequestCode::DELETE_TOPIC_IN_BROKER, &[("topic", "T")]), Rule::Admin, vec![]),
            (req(RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, &[]), Rule::Signed, vec![]),
        ];
        for (r, want_rule, want) in cases {
            assert_eq!(rule(r.request_code()), Some(want_rule), "{}", r.request_code());
            assert_eq!(resources(&r).unwrap(), want, "{}", r.request_code());
        }
        for code in [
            RAFTMQ_NODE_STATUS,
            RAFTMQ_SET_DELAY_LEVELS,
            RAFTMQ_TRANSFER_LEADER,
            RAFTMQ_MEMBERS,
            RAFTMQ_ADD_NODE,
            RAFTMQ_PROMOTE_NODE,
            RAFTMQ_REMOVE_NODE,
        ] {
            assert_eq!(rule(RequestCode(code)), Some(Rule::Admin), "{code}");
        }
        // Codes the broker does not serve have no rule (and are refused as unsupported).
        for c in [RequestCode::UPDATE_BROKER_CONFIG, RequestCode::GET_ROUTEINFO_BY_TOPIC] {
            assert_eq!(rule(c), None, "{c}");
        }
    }

    #[test]
    fn heartbeat_and_lock_bodies_name_groups_and_subscribed_topics() {
        let hb = HeartbeatData {
            client_id: "c".into(),
            consumer_data_set: vec![ConsumerData {
                group_name: "G".into(),
                subscription_data_set: vec![
                    SubscriptionData { topic: "T".into(), ..Default::default() },
                    SubscriptionData { topic: "%RETRY%G".into(), ..Default::default() },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = RemotingCommand::request(RequestCode::HEART_BEAT, 1).with_body(encode_json_body(&hb).unwrap());
        let got = resources(&r).unwrap();
        assert_eq!(got, vec![("%RETRY%G".into(), Perm::SUB), ("T".into(), Perm::SUB), ("%RETRY%G".into(), Perm::SUB)]);
        let bad = RemotingCommand::request(RequestCode::HEART_BEAT, 1).with_body(&b"{not json"[..]);
        assert!(resources(&bad).unwrap_err().contains("heartbeat body does not parse"));
        let lock = RemotingCommand::request(RequestCode::LOCK_BATCH_MQ, 1)
            .with_body(encode_json_body(&LockBatchRequestBody { consumer_group: "G".into(), ..Default::default() }).unwrap());
        assert_eq!(resources(&lock).unwrap(), vec![("%RETRY%G".into(), Perm::SUB)]);
        let missing = req(RequestCode::PULL_MESSAGE, &[("topic", "T")]);
        assert!(resources(&missing).unwrap_err().contains("`consumerGroup`"));
    }
}

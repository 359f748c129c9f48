//! SQL92 property filters on the broker (`MessageSelector.bySql`): which answer a SQL92 subscription gets
//! before any message is read (RocketMQ's PullMessageProcessor and ClientManageProcessor rules), the
//! per-message test the pull applies to the stored properties, and CHECK_CLIENT_CONFIG (46), which
//! consumers send before starting with a non-TAG subscription.
//!
//! Unmatched messages never leave the broker: the pull reads each candidate's property block from the
//! commitlog, evaluates the compiled selector (`raftmq_filter`), and returns only the matches, examining
//! at most `pullFilterScanMax` messages per pull.

use std::collections::HashMap;
use std::sync::Arc;

use raftmq_filter::Selector;
use raftmq_remoting::body::{is_tag_type, CheckClientRequestBody};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::message::{decode_stored_message, iter_properties};
use raftmq_remoting::ResponseCode;

use crate::broker::BrokerInner;
use crate::consumers::Subscription;
use crate::processor::{ok, reply, Reply};

/// RocketMQ's remark when `enablePropertyFilter` is off.
pub(crate) fn not_supported(expression_type: &str) -> String {
    format!("The broker does not support consumer to filter message by {expression_type}")
}

/// What a pull with subscription `sub` may use: `Ok(None)` for TAG subscriptions and SQL92 ones that
/// select everything, `Ok(Some(selector))` to test each message, or the refusal (SUBSCRIPTION_PARSE_FAILED
/// for an expression that does not compile, checked first as RocketMQ does; SYSTEM_ERROR when
/// `enablePropertyFilter` is off).
pub(crate) fn pull_selector(sub: &Subscription, enabled: bool) -> Result<Option<Arc<Selector>>, (ResponseCode, String)> {
    let Some(sql) = &sub.sql else { return Ok(None) };
    match sql {
        Err(why) => Err((ResponseCode::SUBSCRIPTION_PARSE_FAILED, format!("parse the consumer's subscription failed: {}", why.0))),
        Ok(_) if !enabled => Err((ResponseCode::SYSTEM_ERROR, not_supported(raftmq_filter::EXPRESSION_TYPE_SQL92))),
        Ok(s) => Ok(s.clone()),
    }
}

/// True when the stored message `data` matches `selector` (its properties, TAGS included, as RocketMQ's
/// `MessageEvaluationContext`). A message whose properties cannot be read does not match.
pub(crate) fn message_matches(selector: &Selector, data: &[u8]) -> bool {
    let Ok(m) = decode_stored_message(data) else { return false };
    // One pass over the block; a repeated name keeps its last value, as Java's map does.
    let props: HashMap<&str, &str> = iter_properties(m.properties).collect();
    let get = |name: &str| props.get(name).copied();
    selector.matches(&get)
}

impl BrokerInner {
    /// CHECK_CLIENT_CONFIG (46): SUCCESS for TAG subscriptions and selectors that compile; SYSTEM_ERROR
    /// with RocketMQ's remark when `enablePropertyFilter` is off; SUBSCRIPTION_PARSE_FAILED (23) with the
    /// error's byte position otherwise. Nothing is recorded.
    pub(crate) fn check_client_config(&self, req: &RemotingCommand) -> Reply {
        let body: CheckClientRequestBody = match raftmq_remoting::body::decode_json_body("CheckClientRequestBody", &req.body) {
            Ok(b) => b,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad CheckClientRequestBody body: {e}")),
        };
        let Some(s) = body.subscription_data else { return Some(ok(req).into()) };
        let expression_type = Some(s.expression_type.as_str());
        if is_tag_type(expression_type) {
            return Some(ok(req).into());
        }
        if !self.cfg.enable_property_filter {
            return reply(req, ResponseCode::SYSTEM_ERROR, not_supported(&s.expression_type));
        }
        match &Subscription::parse_typed(&s.sub_string, expression_type, s.sub_version).sql {
            Some(Err(why)) => reply(req, ResponseCode::SUBSCRIPTION_PARSE_FAILED, why.0.clone()),
            _ => Some(ok(req).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_remoting::message::{encode_stored_message, MessageToStore};

    fn stored(props: &str) -> Vec<u8> {
        let msg = MessageToStore {
            topic: "T",
            queue_id: 0,
            flag: 0,
            queue_offset: 0,
            physical_offset: 0,
            body: b"body",
            properties: props,
            born_timestamp: 1,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_timestamp: 2,
            store_host: "127.0.0.1:2".parse().unwrap(),
            sys_flag: 0,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        };
        let mut out = Vec::new();
        encode_stored_message(&msg, &mut out).unwrap();
        out
    }

    #[test]
    fn stored_messages_are_matched_on_their_properties_and_tags() {
        let sel = Selector::parse("a > 5 AND TAGS IN ('x')").unwrap();
        assert!(message_matches(&sel, &stored("a\u{1}7\u{2}TAGS\u{1}x\u{2}")));
        assert!(!message_matches(&sel, &stored("a\u{1}7\u{2}TAGS\u{1}y\u{2}")));
        assert!(!message_matches(&sel, &stored("TAGS\u{1}x\u{2}")), "a missing property is NULL");
        assert!(message_matches(&sel, &stored("a\u{1}1\u{2}a\u{1}9\u{2}TAGS\u{1}x\u{2}")), "the last value of a repeated name");
        assert!(!message_matches(&sel, b"not a message"));
    }

    #[test]
    fn pulls_are_refused_for_bad_expressions_first_then_when_disabled() {
        let bad = Subscription::parse_typed("a >", Some("SQL92"), 1);
        let (code, remark) = pull_selector(&bad, true).unwrap_err();
        assert_eq!(code, ResponseCode::SUBSCRIPTION_PARSE_FAILED);
        assert!(remark.contains("at byte 3"), "{remark}");
        assert_eq!(pull_selector(&bad, false).unwrap_err().0, ResponseCode::SUBSCRIPTION_PARSE_FAILED);
        let good = Subscription::parse_typed("a > 1", Some("SQL92"), 1);
        let (code, remark) = pull_selector(&good, false).unwrap_err();
        assert_eq!(
            (code, remark.as_str()),
            (ResponseCode::SYSTEM_ERROR, "The broker does not support consumer to filter message by SQL92")
        );
        assert!(pull_selector(&good, true).unwrap().is_some());
        assert!(pull_selector(&Subscription::parse_typed("*", Some("SQL92"), 1), true).unwrap().is_none());
        assert!(pull_selector(&Subscription::parse_typed("a || b", Some("TAG"), 1), false).unwrap().is_none(), "tags need no switch");
        let other = Subscription::parse_typed("x", Some("BLOOM"), 1);
        assert!(pull_selector(&other, true).unwrap_err().1.contains("unknown expression type"));
    }
}

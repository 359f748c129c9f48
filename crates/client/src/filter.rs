//! Tag subscriptions: `*` or `TagA || TagB`. Brokers filter by tag hash code; the client filters again by
//! the tag string, as RocketMQ clients do, because different tags can share a hash code.

use raftmq_remoting::body::{SubscriptionData, EXPRESSION_TYPE_TAG};
use raftmq_remoting::message::java_string_hash;

use crate::error::{ClientError, Result};

/// The expression that matches every message.
pub const SUBSCRIBE_ALL: &str = "*";

/// A topic subscription with a tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic.
    pub topic: String,
    /// The expression as given (`*` when everything).
    pub expression: String,
    /// The tags; empty means every message.
    pub tags: Vec<String>,
    /// When the subscription was made (ms); brokers compare versions of a group's subscriptions.
    pub version: i64,
}

impl Subscription {
    /// Parses `expression`: empty or `*` subscribes to everything, otherwise tags separated by `||`.
    pub fn parse(topic: &str, expression: &str) -> Result<Subscription> {
        let expr = expression.trim();
        let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        if expr.is_empty() || expr == SUBSCRIBE_ALL {
            return Ok(Subscription { topic: topic.into(), expression: SUBSCRIBE_ALL.into(), tags: Vec::new(), version });
        }
        let mut tags: Vec<String> = Vec::new();
        for t in expr.split("||").map(str::trim) {
            if t.is_empty() {
                return Err(ClientError::InvalidMessage(format!("tag expression {expression:?} has an empty tag")));
            }
            if t == SUBSCRIBE_ALL {
                return Err(ClientError::InvalidMessage(format!("tag expression {expression:?} mixes * with tags")));
            }
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }
        Ok(Subscription { topic: topic.into(), expression: expr.into(), tags, version })
    }

    /// True when a message with `tags` passes.
    pub fn matches(&self, tags: Option<&str>) -> bool {
        self.tags.is_empty() || tags.is_some_and(|t| self.tags.iter().any(|x| x == t))
    }

    /// The subscription as heartbeats carry it.
    pub fn to_data(&self) -> SubscriptionData {
        SubscriptionData {
            class_filter_mode: false,
            topic: self.topic.clone(),
            sub_string: self.expression.clone(),
            tags_set: self.tags.clone(),
            code_set: self.tags.iter().map(|t| java_string_hash(t)).collect(),
            sub_version: self.version,
            expression_type: EXPRESSION_TYPE_TAG.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_empty_match_everything() {
        for e in ["*", "", "  * "] {
            let s = Subscription::parse("t", e).unwrap();
            assert!(s.matches(None) && s.matches(Some("x")), "{e:?}");
        }
    }

    #[test]
    fn tag_lists_match_only_their_tags() {
        let s = Subscription::parse("t", "TagA || TagB||TagA").unwrap();
        assert_eq!(s.tags, vec!["TagA", "TagB"]);
        assert!(s.matches(Some("TagA")) && s.matches(Some("TagB")));
        assert!(!s.matches(Some("TagC")) && !s.matches(None) && !s.matches(Some("taga")));
        assert_eq!(s.to_data().code_set, vec![java_string_hash("TagA"), java_string_hash("TagB")]);
    }

    #[test]
    fn malformed_expressions_are_refused() {
        assert!(Subscription::parse("t", "A ||").is_err());
        assert!(Subscription::parse("t", "A || *").is_err());
    }
}

//! Subscriptions: tag expressions (`*` or `TagA || TagB`) and SQL92 property selectors
//! ([`MessageSelector::sql`], RocketMQ's `MessageSelector.bySql`). Brokers filter tags by hash code and the
//! client filters again by the tag string, as RocketMQ clients do, because different tags can share a hash
//! code; SQL92 selectors are evaluated by the broker only (unmatched messages never reach the client), and
//! are checked here before they are sent, so a bad expression fails at subscribe time with its position.

use raftmq_remoting::body::{SubscriptionData, EXPRESSION_TYPE_SQL92, EXPRESSION_TYPE_TAG};
use raftmq_remoting::message::java_string_hash;

use crate::error::{ClientError, Result};

/// The expression that matches every message.
pub const SUBSCRIBE_ALL: &str = "*";

/// How a consumer selects messages: a tag expression or a SQL92 selector over message properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageSelector {
    /// `*` or `TagA || TagB` (RocketMQ `MessageSelector.byTag`).
    Tag(String),
    /// A SQL92 expression over user properties and `TAGS`, e.g. `a > 5 AND TAGS IN ('x')` (RocketMQ
    /// `MessageSelector.bySql`). The broker must allow it (`enablePropertyFilter`).
    Sql(String),
}

impl MessageSelector {
    /// A tag selector.
    pub fn tag(expression: impl Into<String>) -> MessageSelector {
        MessageSelector::Tag(expression.into())
    }

    /// A SQL92 selector.
    pub fn sql(expression: impl Into<String>) -> MessageSelector {
        MessageSelector::Sql(expression.into())
    }
}

impl From<&str> for MessageSelector {
    fn from(expression: &str) -> Self {
        MessageSelector::Tag(expression.into())
    }
}

impl From<String> for MessageSelector {
    fn from(expression: String) -> Self {
        MessageSelector::Tag(expression)
    }
}

impl From<&String> for MessageSelector {
    fn from(expression: &String) -> Self {
        MessageSelector::Tag(expression.clone())
    }
}

/// A topic subscription.
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
    /// True for a SQL92 selector (`expression` is the SQL text; `tags` is empty).
    pub sql: bool,
}

impl Subscription {
    /// Parses `expression`: empty or `*` subscribes to everything, otherwise tags separated by `||`.
    pub fn parse(topic: &str, expression: &str) -> Result<Subscription> {
        let expr = expression.trim();
        let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        if expr.is_empty() || expr == SUBSCRIBE_ALL {
            return Ok(Subscription { topic: topic.into(), expression: SUBSCRIBE_ALL.into(), tags: Vec::new(), version, sql: false });
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
        Ok(Subscription { topic: topic.into(), expression: expr.into(), tags, version, sql: false })
    }

    /// A subscription of `topic` with `selector`; a SQL92 expression is checked with the broker's parser.
    ///
    /// # Errors
    /// [`ClientError::InvalidMessage`] for a malformed tag expression, or a SQL92 expression that does not
    /// parse (the message gives the byte position).
    pub fn with_selector(topic: &str, selector: &MessageSelector) -> Result<Subscription> {
        match selector {
            MessageSelector::Tag(e) => Subscription::parse(topic, e),
            MessageSelector::Sql(e) => {
                raftmq_filter::Selector::parse(e)
                    .map_err(|err| ClientError::InvalidMessage(format!("SQL92 selector {e:?} is invalid {err}")))?;
                let mut s = Subscription::parse(topic, SUBSCRIBE_ALL)?;
                s.expression = e.clone();
                s.sql = true;
                Ok(s)
            }
        }
    }

    /// The expression type pulls and heartbeats carry: `TAG` or `SQL92`.
    pub fn expression_type(&self) -> &'static str {
        if self.sql {
            EXPRESSION_TYPE_SQL92
        } else {
            EXPRESSION_TYPE_TAG
        }
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
            expression_type: self.expression_type().into(),
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
    fn sql_selectors_are_checked_and_sent_as_sql92() {
        let s = Subscription::with_selector("t", &MessageSelector::sql("a > 5 AND TAGS IN ('x')")).unwrap();
        assert!(s.matches(None) && s.matches(Some("y")), "the broker filters; the client keeps what it gets");
        let d = s.to_data();
        assert_eq!((d.expression_type.as_str(), d.sub_string.as_str()), ("SQL92", "a > 5 AND TAGS IN ('x')"));
        assert!(d.tags_set.is_empty() && d.code_set.is_empty());
        let e = Subscription::with_selector("t", &MessageSelector::sql("a >")).unwrap_err().to_string();
        assert!(e.contains("at byte 3"), "{e}");
        let t = Subscription::with_selector("t", &"A || B".into()).unwrap();
        assert_eq!((t.to_data().expression_type.as_str(), t.tags.len()), ("TAG", 2));
    }

    #[test]
    fn malformed_expressions_are_refused() {
        assert!(Subscription::parse("t", "A ||").is_err());
        assert!(Subscription::parse("t", "A || *").is_err());
    }
}

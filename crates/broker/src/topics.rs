//! Topic and group rules: name validation (RocketMQ's `TopicValidator` and `Validators.checkGroup`),
//! topics clients may not send to, the `TBW102` auto-create template, and per-group retry/dead-letter
//! topic names. Every place a topic or a group can be born (send, auto-create, UPDATE_AND_CREATE_TOPIC,
//! HEART_BEAT, CONSUMER_SEND_MSG_BACK, offset commits, locks) checks names here first.

/// Longest topic name (RocketMQ `TOPIC_MAX_LENGTH`; V1 stored messages have a 1-byte topic length).
pub const TOPIC_BYTES_MAX: usize = 127;
/// Longest consumer or producer group name. RocketMQ allows 255, but a group's retry topic
/// (`%RETRY%` + group) must fit [`TOPIC_BYTES_MAX`] because stored messages carry a 1-byte topic length.
pub const GROUP_BYTES_MAX: usize = TOPIC_BYTES_MAX - RETRY_PREFIX.len();
/// Template topic whose route producers fall back to for unknown topics.
pub const AUTO_CREATE_TOPIC: &str = "TBW102";
/// Prefix of per-group retry topics.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of per-group dead-letter topics.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Read + write permission.
pub const PERM_READ_WRITE: u32 = 6;
/// Write permission bit.
pub const PERM_WRITE: u32 = 2;
/// Read permission bit.
pub const PERM_READ: u32 = 4;

/// System topics that producers must not write to directly (RocketMQ `NOT_ALLOWED_SEND_TOPIC_SET`).
pub const NOT_ALLOWED_SEND: &[&str] = &[
    "SCHEDULE_TOPIC_XXXX",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
    "rmq_sys_wheel_timer",
];

fn validate_name(what: &str, name: &str, bytes_max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if name.len() > bytes_max {
        // The name itself may be huge: the remark quotes only its length.
        return Err(format!("the {what} name is longer than {bytes_max} bytes ({} bytes)", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-'))) {
        return Err(format!("the {what} name {name:?} contains the illegal character {c:?}; allowed: [%|a-zA-Z0-9_-]"));
    }
    Ok(())
}

/// Checks a topic name; the error is the remark clients see.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    validate_name("topic", topic, TOPIC_BYTES_MAX)
}

/// Checks a consumer or producer group name (same characters as topics, at most [`GROUP_BYTES_MAX`]
/// bytes so that its retry and dead-letter topics are valid topics); the error is the remark clients see.
pub fn validate_group(group: &str) -> Result<(), String> {
    validate_name("group", group, GROUP_BYTES_MAX)
}

/// The group a `%RETRY%<group>` or `%DLQ%<group>` topic belongs to.
pub fn group_of_retry_or_dlq(topic: &str) -> Option<&str> {
    topic.strip_prefix(RETRY_PREFIX).or_else(|| topic.strip_prefix(DLQ_PREFIX))
}

/// Checks that clients may send to `topic`.
pub fn validate_send_topic(topic: &str) -> Result<(), String> {
    validate_topic(topic)?;
    if NOT_ALLOWED_SEND.contains(&topic) || topic == AUTO_CREATE_TOPIC {
        return Err(format!("sending to the system topic {topic} is not allowed"));
    }
    Ok(())
}

/// The retry topic of a consumer group.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// The dead-letter topic of a consumer group.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rocketmq_rules() {
        assert!(validate_topic("TopicTest_1-a").is_ok());
        assert!(validate_topic("%RETRY%group|x").is_ok());
        assert!(validate_topic("").unwrap_err().contains("empty"));
        assert!(validate_topic("a b").unwrap_err().contains("illegal character ' '"));
        assert!(validate_topic("a/b").is_err());
        assert!(validate_topic(&"x".repeat(128)).unwrap_err().contains("127"));
        assert!(validate_topic(&"x".repeat(127)).is_ok());
        assert!(validate_send_topic("SCHEDULE_TOPIC_XXXX").unwrap_err().contains("not allowed"));
        assert!(validate_send_topic("TBW102").is_err());
        assert_eq!(retry_topic("g"), "%RETRY%g");
    }

    #[test]
    fn group_names_leave_room_for_their_retry_topic() {
        assert_eq!(GROUP_BYTES_MAX, 120);
        let longest = "g".repeat(GROUP_BYTES_MAX);
        assert!(validate_group(&longest).is_ok());
        assert!(validate_topic(&retry_topic(&longest)).is_ok(), "the retry topic of the longest group is valid");
        assert!(validate_topic(&dlq_topic(&longest)).is_ok());
        assert!(validate_group(&"g".repeat(GROUP_BYTES_MAX + 1)).unwrap_err().contains("longer than 120 bytes (121 bytes)"));
        assert!(validate_group("").unwrap_err().contains("group name is empty"));
        assert!(validate_group("a\nb").unwrap_err().contains("illegal character"));
        assert_eq!(group_of_retry_or_dlq("%RETRY%g1"), Some("g1"));
        assert_eq!(group_of_retry_or_dlq("%DLQ%g2"), Some("g2"));
        assert_eq!(group_of_retry_or_dlq("T"), None);
    }
}

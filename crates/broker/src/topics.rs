//! Topic rules: name validation (RocketMQ's `TopicValidator`), topics clients may not send to, the
//! `TBW102` auto-create template, and per-group retry/dead-letter topic names.

/// Longest topic name (RocketMQ `TOPIC_MAX_LENGTH`; V1 stored messages have a 1-byte topic length).
pub const TOPIC_BYTES_MAX: usize = 127;
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

/// Checks a topic name; the error is the remark clients see.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic name is empty".into());
    }
    if topic.len() > TOPIC_BYTES_MAX {
        return Err(format!("the topic name is longer than {TOPIC_BYTES_MAX} bytes ({} bytes)", topic.len()));
    }
    if let Some(c) = topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-'))) {
        return Err(format!("the topic name {topic:?} contains the illegal character {c:?}; allowed: [%|a-zA-Z0-9_-]"));
    }
    Ok(())
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
}

//! Request and response codes of the remoting protocol (reference §2, §3), the flag bits of §1.3, the client
//! language codes and the `MQVersion` ordinals that travel in `version`.
//!
//! Codes are newtypes over `i32` with associated constants rather than closed enums: an unknown request code
//! must stay representable so the broker can answer [`ResponseCode::REQUEST_CODE_NOT_SUPPORTED`] for it, and
//! an unknown response code from a peer is still a valid response.

use std::fmt;

macro_rules! code_table {
    ($(#[$meta:meta])* $ty:ident { $($(#[$cmeta:meta])* $name:ident = $value:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(pub i32);

        impl $ty {
            $( $(#[$cmeta])* pub const $name: Self = Self($value); )*

            /// Every code this crate names, in declaration order.
            pub const KNOWN: &'static [Self] = &[$(Self::$name),*];

            /// Wraps a raw code; unknown values are kept as they are.
            pub const fn from_i32(code: i32) -> Self {
                Self(code)
            }

            /// The raw code.
            pub const fn as_i32(self) -> i32 {
                self.0
            }

            /// The Java constant name, or `None` for a code this crate does not name.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// True when this crate names the code.
            pub fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl From<i32> for $ty {
            fn from(code: i32) -> Self {
                Self(code)
            }
        }

        impl From<$ty> for i32 {
            fn from(code: $ty) -> i32 {
                code.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{}({})", name, self.0),
                    None => write!(f, "UNKNOWN({})", self.0),
                }
            }
        }
    };
}

code_table! {
    /// A request code (`RequestCode.java`). Requests go client → server, and for the codes in reference §1.5
    /// also broker → client.
    RequestCode {
        /// Send one message, long header names.
        SEND_MESSAGE = 10,
        /// Long-polling pull.
        PULL_MESSAGE = 11,
        /// Query messages by key.
        QUERY_MESSAGE = 12,
        /// Query broker-side offsets.
        QUERY_BROKER_OFFSET = 13,
        /// Read a consumer group's committed offset.
        QUERY_CONSUMER_OFFSET = 14,
        /// Commit a consumer group's offset (oneway from Java).
        UPDATE_CONSUMER_OFFSET = 15,
        /// Create or update a topic (admin).
        UPDATE_AND_CREATE_TOPIC = 17,
        /// Create or update several topics (admin).
        UPDATE_AND_CREATE_TOPIC_LIST = 18,
        /// All topic configs of a broker.
        GET_ALL_TOPIC_CONFIG = 21,
        /// Update broker config.
        UPDATE_BROKER_CONFIG = 25,
        /// Read broker config.
        GET_BROKER_CONFIG = 26,
        /// Broker runtime statistics.
        GET_BROKER_RUNTIME_INFO = 28,
        /// Queue offset by store timestamp.
        SEARCH_OFFSET_BY_TIMESTAMP = 29,
        /// Queue max offset.
        GET_MAX_OFFSET = 30,
        /// Queue min offset.
        GET_MIN_OFFSET = 31,
        /// Store time of a queue's earliest message.
        GET_EARLIEST_MSG_STORETIME = 32,
        /// Look a message up by offsetMsgId.
        VIEW_MESSAGE_BY_ID = 33,
        /// Client heartbeat with producer/consumer data.
        HEART_BEAT = 34,
        /// Client shutdown.
        UNREGISTER_CLIENT = 35,
        /// Consumer hands a failed message back for retry.
        CONSUMER_SEND_MSG_BACK = 36,
        /// Commit or roll back a transaction half message.
        END_TRANSACTION = 37,
        /// Client ids of a consumer group.
        GET_CONSUMER_LIST_BY_GROUP = 38,
        /// Broker → client: ask the producer for a transaction's state.
        CHECK_TRANSACTION_STATE = 39,
        /// Broker → client: the group's membership changed.
        NOTIFY_CONSUMER_IDS_CHANGED = 40,
        /// Lock queues for orderly consumption.
        LOCK_BATCH_MQ = 41,
        /// Unlock queues.
        UNLOCK_BATCH_MQ = 42,
        /// All consumer offsets.
        GET_ALL_CONSUMER_OFFSET = 43,
        /// All delay-queue offsets.
        GET_ALL_DELAY_OFFSET = 45,
        /// Check client config.
        CHECK_CLIENT_CONFIG = 46,
        /// Read client config.
        GET_CLIENT_CONFIG = 47,
        /// Nameserver: put a KV config.
        PUT_KV_CONFIG = 100,
        /// Nameserver: get a KV config.
        GET_KV_CONFIG = 101,
        /// Nameserver: delete a KV config.
        DELETE_KV_CONFIG = 102,
        /// Broker → nameserver registration.
        REGISTER_BROKER = 103,
        /// Broker → nameserver deregistration.
        UNREGISTER_BROKER = 104,
        /// Topic route lookup.
        GET_ROUTEINFO_BY_TOPIC = 105,
        /// Cluster membership for admin tools.
        GET_BROKER_CLUSTER_INFO = 106,
        /// Create or update a subscription group.
        UPDATE_AND_CREATE_SUBSCRIPTIONGROUP = 200,
        /// All subscription group configs.
        GET_ALL_SUBSCRIPTIONGROUP_CONFIG = 201,
        /// Topic statistics.
        GET_TOPIC_STATS_INFO = 202,
        /// Connections of a consumer group.
        GET_CONSUMER_CONNECTION_LIST = 203,
        /// Connections of a producer group.
        GET_PRODUCER_CONNECTION_LIST = 204,
        /// Remove write permission of a broker.
        WIPE_WRITE_PERM_OF_BROKER = 205,
        /// All topics known to the nameserver.
        GET_ALL_TOPIC_LIST_FROM_NAMESERVER = 206,
        /// Delete a subscription group.
        DELETE_SUBSCRIPTIONGROUP = 207,
        /// Consume statistics.
        GET_CONSUME_STATS = 208,
        /// Delete a topic on a broker.
        DELETE_TOPIC_IN_BROKER = 215,
        /// Delete a topic on the nameserver.
        DELETE_TOPIC_IN_NAMESRV = 216,
        /// Register a topic on the nameserver.
        REGISTER_TOPIC_IN_NAMESRV = 217,
        /// KV list of a namespace.
        GET_KVLIST_BY_NAMESPACE = 219,
        /// Broker → client: reset the consumer offset.
        RESET_CONSUMER_CLIENT_OFFSET = 220,
        /// Broker → client: consumer status.
        GET_CONSUMER_STATUS_FROM_CLIENT = 221,
        /// Admin: ask the broker to reset offsets.
        INVOKE_BROKER_TO_RESET_OFFSET = 222,
        /// Admin: ask the broker for consumer status.
        INVOKE_BROKER_TO_GET_CONSUMER_STATUS = 223,
        /// Topics of a cluster.
        GET_TOPICS_BY_CLUSTER = 224,
        /// Which groups consume a topic.
        QUERY_TOPIC_CONSUME_BY_WHO = 300,
        /// System topics from the nameserver.
        GET_SYSTEM_TOPIC_LIST_FROM_NS = 304,
        /// Broker → client: consumer running info.
        GET_CONSUMER_RUNNING_INFO = 307,
        /// Broker → client: consume one message directly.
        CONSUME_MESSAGE_DIRECTLY = 309,
        /// Send one message, one-letter header names.
        SEND_MESSAGE_V2 = 310,
        /// Broker consume statistics.
        GET_BROKER_CONSUME_STATS = 317,
        /// Update nameserver config.
        UPDATE_NAMESRV_CONFIG = 318,
        /// Read nameserver config.
        GET_NAMESRV_CONFIG = 319,
        /// Send a batch of messages (V2 header, batch body).
        SEND_BATCH_MESSAGE = 320,
        /// Inspect a consume queue.
        QUERY_CONSUME_QUEUE = 321,
        /// Send a reply message (request/reply).
        SEND_REPLY_MESSAGE = 324,
        /// Send a reply message, V2 header.
        SEND_REPLY_MESSAGE_V2 = 325,
        /// Restore write permission of a broker.
        ADD_WRITE_PERM_OF_BROKER = 327,
        /// One topic config.
        GET_TOPIC_CONFIG = 351,
        /// One subscription group config.
        GET_SUBSCRIPTIONGROUP_CONFIG = 352,
        /// Lite pull.
        LITE_PULL_MESSAGE = 361,
        /// Recall a message (5.x).
        RECALL_MESSAGE = 370,
        /// Query queue assignment (5.x).
        QUERY_ASSIGNMENT = 400,
        /// Set message request mode (5.x).
        SET_MESSAGE_REQUEST_MODE = 401,
        /// Create a static topic.
        UPDATE_AND_CREATE_STATIC_TOPIC = 513,
        /// Broker heartbeat to the nameserver (5.x).
        BROKER_HEARTBEAT = 904,
        /// POP consumption (5.x).
        POP_MESSAGE = 200050,
        /// POP ack (5.x).
        ACK_MESSAGE = 200051,
        /// POP peek (5.x).
        PEEK_MESSAGE = 200052,
        /// POP change invisible time (5.x).
        CHANGE_MESSAGE_INVISIBLETIME = 200053,
        /// POP notification (5.x).
        NOTIFICATION = 200054,
        /// POP polling info (5.x).
        POLLING_INFO = 200055,
        /// POP rollback (5.x).
        POP_ROLLBACK = 200056,
        /// POP batch ack (5.x).
        BATCH_ACK_MESSAGE = 200151,
    }
}

code_table! {
    /// A response code (`ResponseCode.java`, `RemotingSysResponseCode.java`).
    ResponseCode {
        /// Success.
        SUCCESS = 0,
        /// Generic server failure.
        SYSTEM_ERROR = 1,
        /// Server overloaded; also what a non-leader answers to writes (the Java producer retries elsewhere).
        SYSTEM_BUSY = 2,
        /// The request code is unknown to the server.
        REQUEST_CODE_NOT_SUPPORTED = 3,
        /// Transaction failed.
        TRANSACTION_FAILED = 4,
        /// Stored, but the flush timed out (still counts as sent).
        FLUSH_DISK_TIMEOUT = 10,
        /// Stored, but no slave is available (still counts as sent).
        SLAVE_NOT_AVAILABLE = 11,
        /// Stored, but slave replication timed out (still counts as sent).
        FLUSH_SLAVE_TIMEOUT = 12,
        /// The message is invalid.
        MESSAGE_ILLEGAL = 13,
        /// Service not available (retried by the Java producer).
        SERVICE_NOT_AVAILABLE = 14,
        /// Version not supported.
        VERSION_NOT_SUPPORTED = 15,
        /// No permission.
        NO_PERMISSION = 16,
        /// Unknown topic.
        TOPIC_NOT_EXIST = 17,
        /// Topic already exists.
        TOPIC_EXIST_ALREADY = 18,
        /// Pull: no new message.
        PULL_NOT_FOUND = 19,
        /// Pull: nothing matched; retry at once.
        PULL_RETRY_IMMEDIATELY = 20,
        /// Pull: the offset is out of range; jump to `nextBeginOffset`.
        PULL_OFFSET_MOVED = 21,
        /// Query found nothing (for example no committed offset).
        QUERY_NOT_FOUND = 22,
        /// Subscription expression did not parse.
        SUBSCRIPTION_PARSE_FAILED = 23,
        /// No subscription known.
        SUBSCRIPTION_NOT_EXIST = 24,
        /// Subscription is outdated.
        SUBSCRIPTION_NOT_LATEST = 25,
        /// Unknown subscription group.
        SUBSCRIPTION_GROUP_NOT_EXIST = 26,
        /// Filter data missing.
        FILTER_DATA_NOT_EXIST = 27,
        /// Filter data outdated.
        FILTER_DATA_NOT_LATEST = 28,
        /// Invalid parameter.
        INVALID_PARAMETER = 29,
        /// Transaction check: commit.
        TRANSACTION_SHOULD_COMMIT = 200,
        /// Transaction check: roll back.
        TRANSACTION_SHOULD_ROLLBACK = 201,
        /// Transaction check: unknown (sic).
        TRANSACTION_STATE_UNKNOW = 202,
        /// Transaction check: wrong group.
        TRANSACTION_STATE_GROUP_WRONG = 203,
        /// No buyer id (retried by the Java producer).
        NO_BUYER_ID = 204,
        /// Not in current unit (retried by the Java producer).
        NOT_IN_CURRENT_UNIT = 205,
        /// Consumer not online.
        CONSUMER_NOT_ONLINE = 206,
        /// Consume timed out.
        CONSUME_MSG_TIMEOUT = 207,
        /// No message.
        NO_MESSAGE = 208,
        /// POP polling full.
        POLLING_FULL = 209,
        /// POP polling timed out.
        POLLING_TIMEOUT = 210,
        /// Broker does not exist.
        BROKER_NOT_EXIST = 211,
        /// Broker dispatch not complete.
        BROKER_DISPATCH_NOT_COMPLETE = 212,
        /// Broadcast consumption.
        BROADCAST_CONSUMPTION = 213,
        /// Flow control.
        FLOW_CONTROL = 215,
        /// Not the leader for the queue.
        NOT_LEADER_FOR_QUEUE = 501,
        /// Illegal operation.
        ILLEGAL_OPERATION = 604,
        /// The server is going away (retried by the Java producer).
        GO_AWAY = 1500,
        /// Auth: user does not exist.
        USER_NOT_EXIST = 3001,
        /// Auth: policy does not exist.
        POLICY_NOT_EXIST = 3002,
    }
}

impl ResponseCode {
    /// Codes on which the Java producer retries a send on another broker group (reference §3): the set a
    /// non-leader replica must answer writes with.
    pub const PRODUCER_RETRY: &'static [ResponseCode] = &[
        Self::TOPIC_NOT_EXIST,
        Self::SERVICE_NOT_AVAILABLE,
        Self::SYSTEM_ERROR,
        Self::SYSTEM_BUSY,
        Self::NO_PERMISSION,
        Self::NO_BUYER_ID,
        Self::NOT_IN_CURRENT_UNIT,
        Self::GO_AWAY,
    ];

    /// True for the codes that a send treats as "stored" (SEND_OK and the three flush/slave warnings).
    pub fn is_send_ok(self) -> bool {
        matches!(self, Self::SUCCESS | Self::FLUSH_DISK_TIMEOUT | Self::SLAVE_NOT_AVAILABLE | Self::FLUSH_SLAVE_TIMEOUT)
    }
}

/// Bit positions of the `flag` header field (reference §1.3).
pub mod flag {
    /// Set on responses.
    pub const RESPONSE: i32 = 1 << 0;
    /// Set on oneway requests: the receiver must not answer.
    pub const ONEWAY: i32 = 1 << 1;
}

/// `MQVersion` ordinals that matter to the protocol (reference §1.4).
pub mod version {
    /// V4_0_0.
    pub const V4_0_0: i32 = 213;
    /// V4_6_0, sent by the C++ client 2.x/3.x releases.
    pub const V4_6_0: i32 = 333;
    /// V4_9_4: from this version the Java nameserver emits standard JSON route keys.
    pub const V4_9_4: i32 = 401;
    /// V5_0_0.
    pub const V5_0_0: i32 = 413;
    /// V5_3_3 (`MQVersion.CURRENT` of the reference snapshot).
    pub const V5_3_3: i32 = 479;
}

/// The client language of a command (`LanguageCode.java`).
///
/// JSON headers carry the name, binary headers a byte. The name is free text on the wire (interop rule 4):
/// unknown names are kept in [`LanguageCode::Other`] rather than rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LanguageCode {
    /// `JAVA` (0).
    Java,
    /// `CPP` (1).
    Cpp,
    /// `DOTNET` (2).
    Dotnet,
    /// `PYTHON` (3).
    Python,
    /// `DELPHI` (4).
    Delphi,
    /// `ERLANG` (5).
    Erlang,
    /// `RUBY` (6).
    Ruby,
    /// `OTHER` (7).
    OtherLanguage,
    /// `HTTP` (8).
    Http,
    /// `GO` (9).
    Go,
    /// `PHP` (10).
    Php,
    /// `OMS` (11).
    Oms,
    /// `RUST` (12).
    Rust,
    /// A name (JSON) or byte value (binary, as its decimal text) this crate does not know.
    Other(String),
}

const LANGUAGES: &[(LanguageCode, &str, u8)] = &[
    (LanguageCode::Java, "JAVA", 0),
    (LanguageCode::Cpp, "CPP", 1),
    (LanguageCode::Dotnet, "DOTNET", 2),
    (LanguageCode::Python, "PYTHON", 3),
    (LanguageCode::Delphi, "DELPHI", 4),
    (LanguageCode::Erlang, "ERLANG", 5),
    (LanguageCode::Ruby, "RUBY", 6),
    (LanguageCode::OtherLanguage, "OTHER", 7),
    (LanguageCode::Http, "HTTP", 8),
    (LanguageCode::Go, "GO", 9),
    (LanguageCode::Php, "PHP", 10),
    (LanguageCode::Oms, "OMS", 11),
    (LanguageCode::Rust, "RUST", 12),
];

impl LanguageCode {
    /// Parses a JSON header's `language`; never fails.
    pub fn from_name(name: &str) -> Self {
        LANGUAGES.iter().find(|(_, n, _)| *n == name).map(|(l, _, _)| l.clone()).unwrap_or_else(|| LanguageCode::Other(name.to_owned()))
    }

    /// Parses a binary header's language byte; never fails.
    pub fn from_code(code: u8) -> Self {
        LANGUAGES.iter().find(|(_, _, c)| *c == code).map(|(l, _, _)| l.clone()).unwrap_or_else(|| LanguageCode::Other(code.to_string()))
    }

    /// The name written in JSON headers.
    pub fn name(&self) -> &str {
        match self {
            LanguageCode::Other(name) => name,
            known => LANGUAGES.iter().find(|(l, _, _)| l == known).map(|(_, n, _)| *n).unwrap_or("OTHER"),
        }
    }

    /// The byte written in binary headers. An [`LanguageCode::Other`] holding a decimal byte (as produced by
    /// [`LanguageCode::from_code`]) keeps its value; any other unknown language is written as `OTHER` (7).
    pub fn code(&self) -> u8 {
        match self {
            LanguageCode::Other(name) => name.parse::<u8>().unwrap_or(7),
            known => LANGUAGES.iter().find(|(l, _, _)| l == known).map(|(_, _, c)| *c).unwrap_or(7),
        }
    }
}

impl fmt::Display for LanguageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// raftmq's own request code, outside RocketMQ's range: the answering node's Raft status as a JSON body
/// (role, term, leader, log indexes). Used by `raftmq admin status` and the client's `Admin::node_status`.
pub const RAFTMQ_NODE_STATUS: i32 = 10_900;

/// raftmq's own request code: ask the receiving node, which must be its group's leader, to hand leadership
/// to the member whose id is in ext field `target`. Answers SUCCESS once the target leads.
pub const RAFTMQ_TRANSFER_LEADER: i32 = 10_901;
/// raftmq only: replace the group's replicated delay-level table (ext field `levels`, RocketMQ
/// `messageDelayLevel` syntax); leader only.
pub const RAFTMQ_SET_DELAY_LEVELS: i32 = 10_902;

/// raftmq only (membership, `raftmq admin node list`): the group's members as the answering node sees them —
/// id, Raft and client address, voter or learner, and on the leader each one's matched log index — as JSON.
pub const RAFTMQ_MEMBERS: i32 = 10_910;
/// raftmq only (`raftmq admin node add|replace`), leader only: add the node answering at the client address in
/// ext field `addr` as a learner. The leader asks that node for its id and Raft address and refuses one that
/// already holds Raft state or whose id is a member. Answers at once; catch-up shows in [`RAFTMQ_MEMBERS`].
pub const RAFTMQ_ADD_NODE: i32 = 10_911;
/// raftmq only, leader only: make learner `node` a voter once caught up, or with ext field `replaces`, swap it
/// for that voter in one joint change.
pub const RAFTMQ_PROMOTE_NODE: i32 = 10_912;
/// raftmq only, leader only: remove member `node` (ext field `force=true` skips the safe-size and quorum
/// checks). Removing the leader hands leadership to the most caught-up other voter first.
pub const RAFTMQ_REMOVE_NODE: i32 = 10_913;

/// True for raftmq's own control codes (node status, leader transfer, delay levels, membership). With a
/// cluster secret they must be signed with it ([`crate::cluster_auth::sign_request`]) or, with ACL on, come from
/// an admin account.
pub fn is_raftmq_admin(code: i32) -> bool {
    matches!(
        code,
        RAFTMQ_NODE_STATUS
            | RAFTMQ_TRANSFER_LEADER
            | RAFTMQ_SET_DELAY_LEVELS
            | RAFTMQ_MEMBERS
            | RAFTMQ_ADD_NODE
            | RAFTMQ_PROMOTE_NODE
            | RAFTMQ_REMOVE_NODE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_stay_representable() {
        let c = RequestCode::from_i32(123_456);
        assert_eq!(c.as_i32(), 123_456);
        assert!(!c.is_known());
        assert_eq!(c.to_string(), "UNKNOWN(123456)");
        assert_eq!(RequestCode::from_i32(310), RequestCode::SEND_MESSAGE_V2);
        assert_eq!(RequestCode::SEND_MESSAGE_V2.to_string(), "SEND_MESSAGE_V2(310)");
        assert_eq!(ResponseCode::from_i32(22).name(), Some("QUERY_NOT_FOUND"));
    }

    #[test]
    fn code_tables_have_no_duplicates() {
        for table in [RequestCode::KNOWN.iter().map(|c| c.0).collect::<Vec<_>>(), ResponseCode::KNOWN.iter().map(|c| c.0).collect()] {
            let mut sorted = table.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), table.len());
        }
    }

    #[test]
    fn reference_spot_checks() {
        assert_eq!(RequestCode::SEARCH_OFFSET_BY_TIMESTAMP.0, 29);
        assert_eq!(RequestCode::GET_MIN_OFFSET.0, 31);
        assert_eq!(RequestCode::SEND_BATCH_MESSAGE.0, 320);
        assert_eq!(RequestCode::GET_ROUTEINFO_BY_TOPIC.0, 105);
        assert_eq!(ResponseCode::PULL_OFFSET_MOVED.0, 21);
        assert!(ResponseCode::FLUSH_SLAVE_TIMEOUT.is_send_ok());
        assert!(!ResponseCode::SYSTEM_BUSY.is_send_ok());
        assert!(ResponseCode::PRODUCER_RETRY.contains(&ResponseCode::SYSTEM_BUSY));
    }

    #[test]
    fn languages_round_trip() {
        for (l, n, c) in LANGUAGES {
            assert_eq!(&LanguageCode::from_name(n), l);
            assert_eq!(&LanguageCode::from_code(*c), l);
            assert_eq!(l.name(), *n);
            assert_eq!(l.code(), *c);
        }
        assert_eq!(LanguageCode::from_name("NODE"), LanguageCode::Other("NODE".into()));
        assert_eq!(LanguageCode::from_code(99).code(), 99);
        assert_eq!(LanguageCode::Other("NODE".into()).code(), 7);
    }

    #[test]
    fn the_control_codes_are_exactly_raftmqs_own() {
        for c in [
            RAFTMQ_NODE_STATUS,
            RAFTMQ_TRANSFER_LEADER,
            RAFTMQ_SET_DELAY_LEVELS,
            RAFTMQ_MEMBERS,
            RAFTMQ_ADD_NODE,
            RAFTMQ_PROMOTE_NODE,
            RAFTMQ_REMOVE_NODE,
        ] {
            assert!(is_raftmq_admin(c), "{c}");
        }
        // RocketMQ's codes (sends, pulls, registration, topic creation, RocketMQ admin codes) are not.
        for c in [10, 11, 17, 103, 222, 310, 320, 10_903, 10_909, 10_914] {
            assert!(!is_raftmq_admin(c), "{c}");
        }
    }
}

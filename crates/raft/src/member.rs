//! A member's addresses as the Raft membership records them: the Raft address peers dial and, for members
//! added since raftmq carried it, the client (RocketMQ remoting) address brokers forward to and name to
//! clients. Pure: parsing and formatting only; the transport, the node and the broker call it.
//!
//! Both ride in openraft's `BasicNode::addr` string, as `"<raftAddr>"` or `"<raftAddr> client=<clientAddr>"`.
//! That keeps the membership's encoding — in log records, checkpoints, snapshots and on the Raft wire —
//! byte-for-byte what earlier releases wrote and read: data directories of earlier releases hold plain Raft
//! addresses, which parse as members without a client address (the broker then takes it from its static
//! `[[peers]]`). A release before this one cannot dial a member with a client address, so every member is
//! upgraded before a node is added at run time.

use std::fmt;

/// Separates the Raft address from the client address inside `BasicNode::addr`. A `host:port` never holds
/// a space.
const CLIENT_SEP: &str = " client=";

/// Longest address string accepted for either address (`host:port`; DNS names are at most 253 bytes).
pub const MEMBER_ADDR_BYTES_MAX: usize = 261;

/// The addresses of one group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddr {
    /// Address of its Raft transport (`host:port`).
    pub raft: String,
    /// Address of its client port (`host:port`), when the membership records it.
    pub client: Option<String>,
}

impl MemberAddr {
    /// A member with both addresses.
    pub fn new(raft: impl Into<String>, client: impl Into<String>) -> Self {
        MemberAddr { raft: raft.into(), client: Some(client.into()) }
    }

    /// Reads a membership address: `"<raft>"` or `"<raft> client=<client>"`. Anything after the separator
    /// is the client address; an empty one counts as absent.
    pub fn parse(addr: &str) -> Self {
        match addr.split_once(CLIENT_SEP) {
            Some((raft, client)) => {
                let client = client.trim();
                MemberAddr { raft: raft.trim().to_string(), client: (!client.is_empty()).then(|| client.to_string()) }
            }
            None => MemberAddr { raft: addr.trim().to_string(), client: None },
        }
    }

    /// The address to dial for Raft RPCs inside a membership address string.
    pub fn raft_of(addr: &str) -> &str {
        addr.split_once(CLIENT_SEP).map_or(addr, |(raft, _)| raft).trim()
    }

    /// Checks both addresses are `ip:port` or `host:port` of at most [`MEMBER_ADDR_BYTES_MAX`] bytes with no
    /// whitespace.
    ///
    /// # Errors
    /// A sentence naming the address and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        let check = |what: &str, a: &str| -> Result<(), String> {
            if a.is_empty() || a.len() > MEMBER_ADDR_BYTES_MAX {
                return Err(format!("{what} {a:?} must be 1..={MEMBER_ADDR_BYTES_MAX} bytes"));
            }
            if a.chars().any(char::is_whitespace) {
                return Err(format!("{what} {a:?} must not contain whitespace"));
            }
            match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
                _ => Err(format!("{what} {a:?} is not host:port")),
            }
        };
        check("raft address", &self.raft)?;
        if let Some(c) = &self.client {
            check("client address", c)?;
        }
        Ok(())
    }
}

impl fmt::Display for MemberAddr {
    /// The membership form: `"<raft>"` or `"<raft> client=<client>"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client {
            Some(c) => write!(f, "{}{CLIENT_SEP}{c}", self.raft),
            None => f.write_str(&self.raft),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_address_of_an_earlier_release_has_no_client_address() {
        let m = MemberAddr::parse("127.0.0.1:10912");
        assert_eq!(m, MemberAddr { raft: "127.0.0.1:10912".into(), client: None });
        assert_eq!(m.to_string(), "127.0.0.1:10912", "written back unchanged");
        assert_eq!(MemberAddr::raft_of("127.0.0.1:10912"), "127.0.0.1:10912");
    }

    #[test]
    fn both_addresses_round_trip() {
        let m = MemberAddr::new("127.0.0.1:10942", "127.0.0.1:10941");
        let s = m.to_string();
        assert_eq!(s, "127.0.0.1:10942 client=127.0.0.1:10941");
        assert_eq!(MemberAddr::parse(&s), m);
        assert_eq!(MemberAddr::raft_of(&s), "127.0.0.1:10942");
        assert_eq!(MemberAddr::parse("127.0.0.1:1 client=").client, None, "an empty client address is absent");
    }

    #[test]
    fn bad_addresses_are_named() {
        let bad = |raft: &str, client: &str, needle: &str| {
            let e = MemberAddr::new(raft, client).validate().expect_err("accepted");
            assert!(e.contains(needle), "{e:?} does not mention {needle:?}");
        };
        bad("127.0.0.1", "127.0.0.1:1", "raft address");
        bad("127.0.0.1:1", "127.0.0.1:0", "client address");
        bad("127.0.0.1:1", "a b:1", "whitespace");
        bad(&format!("{}:1", "h".repeat(MEMBER_ADDR_BYTES_MAX)), "127.0.0.1:1", "bytes");
        // At the limit.
        MemberAddr::new(format!("{}:1", "h".repeat(MEMBER_ADDR_BYTES_MAX - 2)), "localhost:10911").validate().expect("at the limit");
    }
}

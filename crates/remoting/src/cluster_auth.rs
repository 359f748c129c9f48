//! The cluster secret: HMAC-SHA256 keys shared by every broker and nameserver of one raftmq cluster, used to
//! authenticate the Raft port's handshake (raftmq-raft) and broker registrations with the nameserver (this
//! module's [`sign_request`] / [`verify_request`]).
//!
//! Several secrets may be configured at once for rotation: the first one signs, any one verifies
//! ([`ClusterSecrets`]). Secrets never appear in `Debug` output, errors or remarks ([`SecretString`],
//! [`ClusterSecrets`]'s `Debug` prints only how many there are).
//!
//! Pure like the rest of the crate: callers read the secret file and pass the time in.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::frame::ExtFields;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag.
pub const TAG_BYTES: usize = 32;

/// Fewest bytes a secret may have: 16 (128 bits; `head -c 32 /dev/urandom | base64` gives 44).
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// Most bytes a secret may have.
pub const CLUSTER_SECRET_BYTES_MAX: usize = 1024;

/// Most secrets accepted at once (the signing one plus older or newer ones during a rotation).
pub const CLUSTER_SECRETS_MAX: usize = 4;

/// Ext field carrying a registration's HMAC (lower-case hex).
pub const AUTH_FIELD: &str = "raftmqAuth";

/// Ext field carrying the signing time (ms since the Unix epoch); covered by the HMAC.
pub const AUTH_TIME_FIELD: &str = "raftmqAuthTime";

/// Largest difference between a signed request's time and the verifier's clock: ±120 s. Bounds how long a
/// captured registration can be replayed, and is the clock skew tolerated between brokers and nameservers.
pub const REQUEST_CLOCK_SKEW_MS_MAX: u64 = 120_000;

/// Domain separation of registration MACs from the Raft handshake's.
const REQUEST_DOMAIN: &[u8] = b"raftmq-namesrv-v1";

/// A secret string from a configuration file: `Debug` and `Serialize` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    /// The secret itself; only for building [`ClusterSecrets`].
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

/// The cluster's secrets: the first signs, any one verifies. `Debug` prints only the count.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecrets {
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecrets({} redacted)", self.keys.len())
    }
}

impl ClusterSecrets {
    /// Parses secrets separated by line breaks or commas (a secret file: one per line, the signing one
    /// first). Blank lines and lines starting with `#` are skipped; surrounding whitespace is trimmed. The
    /// secret is the text itself (a base64 string is used as written, not decoded).
    ///
    /// # Errors
    /// A sentence naming the rule broken (no secret, too short or long, too many); never the secret.
    pub fn parse(text: &str) -> Result<ClusterSecrets, String> {
        let mut keys = Vec::new();
        for (n, s) in text.split(['\n', ',']).map(str::trim).filter(|s| !s.is_empty() && !s.starts_with('#')).enumerate() {
            if s.len() < CLUSTER_SECRET_BYTES_MIN || s.len() > CLUSTER_SECRET_BYTES_MAX {
                return Err(format!(
                    "cluster secret #{} has {} bytes; it must have {CLUSTER_SECRET_BYTES_MIN}..={CLUSTER_SECRET_BYTES_MAX} \
                     (create one with `head -c 32 /dev/urandom | base64`)",
                    n + 1,
                    s.len()
                ));
            }
            keys.push(s.as_bytes().to_vec());
        }
        if keys.is_empty() {
            return Err("no cluster secret given (the file or value is empty)".into());
        }
        if keys.len() > CLUSTER_SECRETS_MAX {
            return Err(format!("{} cluster secrets given; at most {CLUSTER_SECRETS_MAX} are accepted at once", keys.len()));
        }
        Ok(ClusterSecrets { keys })
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false (parsing refuses an empty list); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn keyed(key: &[u8], domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        for p in std::iter::once(&domain).chain(parts.iter()) {
            // Length-prefixed, so that no two different part lists give the same input.
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// HMAC-SHA256 with the signing (first) secret over `domain` and `parts`, each length-prefixed.
    pub fn sign(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        self.sign_with(0, domain, parts)
    }

    /// Like [`ClusterSecrets::sign`] with secret number `index` (the first one when out of range): for an
    /// answer under the secret the peer proved itself with ([`ClusterSecrets::verify`]'s result).
    pub fn sign_with(&self, index: usize, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let key = self.keys.get(index).unwrap_or(&self.keys[0]);
        Self::keyed(key, domain, parts).finalize().into_bytes().into()
    }

    /// The index of the secret under which `tag` is the HMAC of `domain` and `parts`, if any. Each
    /// comparison is constant-time.
    pub fn verify(&self, domain: &[u8], parts: &[&[u8]], tag: &[u8]) -> Option<usize> {
        self.keys.iter().position(|k| Self::keyed(k, domain, parts).verify_slice(tag).is_ok())
    }
}

/// Why a signed request was refused. The text is safe for remarks and logs (it never holds a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    /// No [`AUTH_FIELD`] or [`AUTH_TIME_FIELD`].
    #[error("the request is not signed with the cluster secret (ext fields {AUTH_FIELD} and {AUTH_TIME_FIELD} are required)")]
    Missing,
    /// [`AUTH_TIME_FIELD`] or [`AUTH_FIELD`] is not well formed.
    #[error("malformed signature fields: {0}")]
    Malformed(&'static str),
    /// The signing time is too far from this clock.
    #[error("the signature is {skew_ms} ms away from this nameserver's clock (at most {REQUEST_CLOCK_SKEW_MS_MAX} ms): stale, replayed, or clocks out of sync")]
    Stale {
        /// Distance in ms.
        skew_ms: u64,
    },
    /// The HMAC matches none of the configured secrets.
    #[error("the signature does not match the cluster secret (wrong secret, or the request was altered)")]
    Mismatch,
}

fn request_digest(code: i32, ext: &ExtFields, body: &[u8]) -> Vec<u8> {
    // code | (key, value)* sorted by key (a BTreeMap), without the MAC itself | SHA-256 of the body.
    let mut h = Sha256::new();
    h.update(code.to_be_bytes());
    for (k, v) in ext.iter().filter(|(k, _)| k.as_str() != AUTH_FIELD) {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.update(Sha256::digest(body));
    h.finalize().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.is_ascii() {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| if c.len() == 2 { std::str::from_utf8(c).ok().and_then(|x| u8::from_str_radix(x, 16).ok()) } else { None })
        .collect()
}

/// Signs a request: sets [`AUTH_TIME_FIELD`] to `now_ms` and [`AUTH_FIELD`] to the HMAC of the request code,
/// every other ext field (sorted by key) and the SHA-256 of `body`.
pub fn sign_request(secrets: &ClusterSecrets, code: i32, ext: &mut ExtFields, body: &[u8], now_ms: u64) {
    ext.remove(AUTH_FIELD);
    ext.insert(AUTH_TIME_FIELD.to_string(), now_ms.to_string());
    let tag = secrets.sign(REQUEST_DOMAIN, &[&request_digest(code, ext, body)]);
    ext.insert(AUTH_FIELD.to_string(), hex(&tag));
}

/// This machine's clock in ms since the epoch: the time signatures are made at and checked against.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// [`sign_request`] on a whole command, at this machine's time ([`unix_ms`]).
pub fn sign_command(secrets: &ClusterSecrets, cmd: &mut crate::frame::RemotingCommand) {
    sign_request(secrets, cmd.code, &mut cmd.ext_fields, &cmd.body, unix_ms());
}

/// Checks a request signed by [`sign_request`] at a time within [`REQUEST_CLOCK_SKEW_MS_MAX`] of `now_ms`.
/// Returns the index of the secret that matched.
///
/// # Errors
/// [`RequestAuthError`] saying what is wrong.
pub fn verify_request(secrets: &ClusterSecrets, code: i32, ext: &ExtFields, body: &[u8], now_ms: u64) -> Result<usize, RequestAuthError> {
    let (Some(tag), Some(at)) = (ext.get(AUTH_FIELD), ext.get(AUTH_TIME_FIELD)) else { return Err(RequestAuthError::Missing) };
    let at: u64 = at.parse().map_err(|_| RequestAuthError::Malformed("raftmqAuthTime must be ms since the epoch"))?;
    let tag = unhex(tag).filter(|t| t.len() == TAG_BYTES).ok_or(RequestAuthError::Malformed("raftmqAuth must be 64 hex digits"))?;
    let skew_ms = at.abs_diff(now_ms);
    if skew_ms > REQUEST_CLOCK_SKEW_MS_MAX {
        return Err(RequestAuthError::Stale { skew_ms });
    }
    secrets.verify(REQUEST_DOMAIN, &[&request_digest(code, ext, body)], &tag).ok_or(RequestAuthError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "c2VjcmV0LWEtc2VjcmV0LWEtc2VjcmV0LWE=";
    const B: &str = "c2VjcmV0LWItc2VjcmV0LWItc2VjcmV0LWI=";

    fn ext() -> ExtFields {
        let mut e = ExtFields::new();
        e.insert("brokerName".into(), "broker-a".into());
        e.insert("brokerId".into(), "0".into());
        e.insert("brokerAddr".into(), "127.0.0.1:10911".into());
        e
    }

    #[test]
    fn secrets_parse_with_limits_and_never_show_in_debug() {
        let s = ClusterSecrets::parse(&format!("# rotation\n{A}\n\n  {B}  \n")).unwrap();
        assert_eq!(s.len(), 2);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(A) && !dbg.contains("c2Vj") && dbg.contains("2 redacted"), "{dbg}");
        assert_eq!(format!("{:?}", SecretString::new(A)), "<redacted>");
        assert!(ClusterSecrets::parse("").unwrap_err().contains("no cluster secret"));
        assert!(ClusterSecrets::parse("# only a comment\n").is_err());
        // At the limits: 16 and 1024 bytes pass, 15 and 1025 do not; the error names neither secret.
        assert!(ClusterSecrets::parse(&"x".repeat(CLUSTER_SECRET_BYTES_MIN)).is_ok());
        let short = ClusterSecrets::parse(&"y".repeat(CLUSTER_SECRET_BYTES_MIN - 1)).unwrap_err();
        assert!(short.contains("15 bytes") && !short.contains("yyyy"), "{short}");
        assert!(ClusterSecrets::parse(&"x".repeat(CLUSTER_SECRET_BYTES_MAX)).is_ok());
        assert!(ClusterSecrets::parse(&"x".repeat(CLUSTER_SECRET_BYTES_MAX + 1)).is_err());
        let four = [A; CLUSTER_SECRETS_MAX].join("\n");
        assert_eq!(ClusterSecrets::parse(&four).unwrap().len(), CLUSTER_SECRETS_MAX);
        let five = [A; CLUSTER_SECRETS_MAX + 1].join(",");
        assert!(ClusterSecrets::parse(&five).unwrap_err().contains("at most 4"));
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let s = ClusterSecrets::parse(A).unwrap();
        let now = 1_700_000_000_000;
        let mut e = ext();
        sign_request(&s, 103, &mut e, b"body", now);
        assert_eq!(e.get(AUTH_TIME_FIELD).map(String::as_str), Some("1700000000000"));
        assert_eq!(e.get(AUTH_FIELD).map(String::len), Some(64));
        assert_eq!(verify_request(&s, 103, &e, b"body", now + 5), Ok(0));
        // Tampered body, ext field, code, time.
        assert_eq!(verify_request(&s, 103, &e, b"bodY", now), Err(RequestAuthError::Mismatch));
        let mut t = e.clone();
        t.insert("brokerAddr".into(), "10.6.6.6:10911".into());
        assert_eq!(verify_request(&s, 103, &t, b"body", now), Err(RequestAuthError::Mismatch));
        let mut t = e.clone();
        t.insert("extra".into(), "x".into());
        assert_eq!(verify_request(&s, 103, &t, b"body", now), Err(RequestAuthError::Mismatch));
        assert_eq!(verify_request(&s, 104, &e, b"body", now), Err(RequestAuthError::Mismatch));
        let mut t = e.clone();
        t.insert(AUTH_TIME_FIELD.into(), (now + 1).to_string());
        assert_eq!(verify_request(&s, 103, &t, b"body", now), Err(RequestAuthError::Mismatch));
        // Wrong secret.
        let other = ClusterSecrets::parse(B).unwrap();
        assert_eq!(verify_request(&other, 103, &e, b"body", now), Err(RequestAuthError::Mismatch));
        // Unsigned and malformed.
        assert_eq!(verify_request(&s, 103, &ext(), b"body", now), Err(RequestAuthError::Missing));
        let mut t = e.clone();
        t.insert(AUTH_FIELD.into(), "zz".into());
        assert!(matches!(verify_request(&s, 103, &t, b"body", now), Err(RequestAuthError::Malformed(_))));
        let mut t = e.clone();
        t.insert(AUTH_TIME_FIELD.into(), "yesterday".into());
        assert!(matches!(verify_request(&s, 103, &t, b"body", now), Err(RequestAuthError::Malformed(_))));
    }

    #[test]
    fn the_freshness_window_is_inclusive_at_its_limit() {
        let s = ClusterSecrets::parse(A).unwrap();
        let at = 1_700_000_000_000;
        let mut e = ext();
        sign_request(&s, 103, &mut e, b"", at);
        for now in [at - REQUEST_CLOCK_SKEW_MS_MAX, at + REQUEST_CLOCK_SKEW_MS_MAX] {
            assert_eq!(verify_request(&s, 103, &e, b"", now), Ok(0));
        }
        for now in [at - REQUEST_CLOCK_SKEW_MS_MAX - 1, at + REQUEST_CLOCK_SKEW_MS_MAX + 1] {
            assert_eq!(verify_request(&s, 103, &e, b"", now), Err(RequestAuthError::Stale { skew_ms: REQUEST_CLOCK_SKEW_MS_MAX + 1 }));
        }
    }

    #[test]
    fn rotation_signs_with_the_first_secret_and_accepts_any() {
        let old = ClusterSecrets::parse(A).unwrap();
        let rolling = ClusterSecrets::parse(&format!("{B}\n{A}")).unwrap();
        let new = ClusterSecrets::parse(B).unwrap();
        let mut e = ext();
        sign_request(&old, 103, &mut e, b"", 1);
        assert_eq!(verify_request(&rolling, 103, &e, b"", 1), Ok(1));
        assert_eq!(verify_request(&new, 103, &e, b"", 1), Err(RequestAuthError::Mismatch));
        let mut e = ext();
        sign_request(&rolling, 103, &mut e, b"", 1);
        assert_eq!(verify_request(&new, 103, &e, b"", 1), Ok(0));
        assert_eq!(verify_request(&old, 103, &e, b"", 1), Err(RequestAuthError::Mismatch));
    }
}

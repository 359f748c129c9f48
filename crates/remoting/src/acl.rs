//! RocketMQ 4.x plain-ACL request signatures: the ext-field names a signed request carries and the
//! signature itself, shared by the broker (which verifies) and the native client (which signs).
//!
//! The signed content is the values (not the keys) of the request's ext fields, ordered by key as Java's
//! `TreeMap<String, String>` orders them (UTF-16 code units), each as UTF-8, followed by the body bytes;
//! the `Signature` field itself is left out. The signature is `Base64(HmacSHA1(secretKey, content))` —
//! RocketMQ's `AclUtils.combineRequestContent` and `AclUtils.calSignature`. The C++ client (PyPI
//! `rocketmq`) adds an `OnsChannel` field before signing; it is signed like any other field.
//!
//! Pure: no I/O, no clock, never panics on input.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::frame::{ExtFields, RemotingCommand};

/// Ext field carrying the account's access key.
pub const ACCESS_KEY: &str = "AccessKey";
/// Ext field carrying the request signature.
pub const SIGNATURE: &str = "Signature";
/// Ext field carrying an optional security token (signed with the rest; raftmq does not interpret it).
pub const SECURITY_TOKEN: &str = "SecurityToken";
/// Ext field the C++ client adds (`ALIYUN` or `CLOUD`); signed like any other field.
pub const ONS_CHANNEL: &str = "OnsChannel";
/// Ext field RocketMQ's query-by-unique-key adds; brokers up to 4.9.3 left it out of the signed content, so
/// verifiers accept a signature computed either way.
pub const UNIQUE_KEY_QUERY: &str = "_UNIQUE_KEY_QUERY";

/// The content a signature covers: the values of `fields` except [`SIGNATURE`] and the keys in `exclude`,
/// in Java `TreeMap` key order, then `body`.
pub fn signed_content(fields: &ExtFields, body: &[u8], exclude: &[&str]) -> Vec<u8> {
    let mut keys: Vec<&String> = fields.keys().filter(|k| k.as_str() != SIGNATURE && !exclude.contains(&k.as_str())).collect();
    // BTreeMap orders by UTF-8 bytes; Java's String.compareTo by UTF-16 code units. They differ only for
    // keys mixing characters above U+FFFF with U+E000..U+FFFF, but the signature must match Java's bytes.
    keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    let len = keys.iter().map(|k| fields[*k].len()).sum::<usize>() + body.len();
    let mut out = Vec::with_capacity(len);
    for k in keys {
        out.extend_from_slice(fields[k].as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// `Base64(HmacSHA1(secret_key, content))`, RocketMQ's `AclUtils.calSignature`.
pub fn signature(secret_key: &str, content: &[u8]) -> String {
    // HMAC takes keys of any length (long keys are hashed first), so this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret_key.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(content);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An account's credentials as a client holds them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key (account name).
    pub access_key: String,
    /// The secret key; never printed (see the `Debug` impl).
    pub secret_key: String,
    /// Optional security token, sent and signed as [`SECURITY_TOKEN`].
    pub security_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("security_token", &self.security_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials without a security token.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Credentials {
        Credentials { access_key: access_key.into(), secret_key: secret_key.into(), security_token: None }
    }

    /// Signs `cmd` as RocketMQ's `AclClientRPCHook` does: adds [`ACCESS_KEY`] (and [`SECURITY_TOKEN`]),
    /// then [`SIGNATURE`] over every other ext field and the body. Call it last, after every field is set.
    pub fn sign(&self, cmd: &mut RemotingCommand) {
        cmd.ext_fields.insert(ACCESS_KEY.into(), self.access_key.clone());
        if let Some(t) = &self.security_token {
            cmd.ext_fields.insert(SECURITY_TOKEN.into(), t.clone());
        }
        let content = signed_content(&cmd.ext_fields, &cmd.body, &[]);
        cmd.ext_fields.insert(SIGNATURE.into(), signature(&self.secret_key, &content));
    }
}

/// True when `claimed` is the signature of `fields` and `body` under `secret_key`, leaving out the keys in
/// `exclude` (fields added after signing that carry no authority, such as a broker's forwarding mark). A
/// request carrying [`UNIQUE_KEY_QUERY`] is also accepted when signed without it (RocketMQ ≤ 4.9.3).
/// Compares in constant time.
pub fn verify(fields: &ExtFields, body: &[u8], secret_key: &str, claimed: &str, exclude: &[&str]) -> bool {
    let expected = signature(secret_key, &signed_content(fields, body, exclude));
    if constant_time_eq(expected.as_bytes(), claimed.as_bytes()) {
        return true;
    }
    if fields.contains_key(UNIQUE_KEY_QUERY) {
        let mut ex = exclude.to_vec();
        ex.push(UNIQUE_KEY_QUERY);
        let expected = signature(secret_key, &signed_content(fields, body, &ex));
        return constant_time_eq(expected.as_bytes(), claimed.as_bytes());
    }
    false
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestCode;

    fn fields(pairs: &[(&str, &str)]) -> ExtFields {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    // Expected values computed independently with Python's hmac + hashlib.sha1 + base64 over
    // "".join(v for k, v in sorted(fields.items()) if k != "Signature").encode() + body.
    #[test]
    fn signature_matches_rocketmq_definition_for_a_java_send_v2() {
        let f = fields(&[
            ("AccessKey", "RocketMQ"),
            ("a", "groupB"),
            ("b", "topicB"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "0"),
            ("f", "0"),
            ("g", "1700000000000"),
            ("h", "0"),
            ("i", "UNIQ_KEY\u{1}0A000001\u{2}WAIT\u{1}true\u{2}"),
            ("j", "0"),
            ("k", "false"),
            ("m", "false"),
        ]);
        assert_eq!(signature("12345678", &signed_content(&f, b"hello", &[])), "xh3+v9KJkGA8BgUKuigGIYNpJ0w=");
    }

    #[test]
    fn signature_covers_the_cpp_clients_ons_channel() {
        let f = fields(&[
            ("AccessKey", "rocketmq2"),
            ("OnsChannel", "ALIYUN"),
            ("consumerGroup", "groupC"),
            ("topic", "topicC"),
            ("queueId", "3"),
        ]);
        assert_eq!(signature("12345678", &signed_content(&f, b"", &[])), "i2IYOllY0nYqFFaq616CMdcHmn8=");
        // Without OnsChannel the content differs, so the C++ client's signature would not verify.
        let mut g = f.clone();
        g.remove(ONS_CHANNEL);
        assert_ne!(signature("12345678", &signed_content(&g, b"", &[])), "i2IYOllY0nYqFFaq616CMdcHmn8=");
    }

    #[test]
    fn signature_leaves_out_the_signature_field_and_covers_utf8_values_token_and_binary_body() {
        let f = fields(&[("AccessKey", "ak"), ("SecurityToken", "tok"), ("topic", "主题"), ("Signature", "ignored")]);
        assert_eq!(signature("sk-é", &signed_content(&f, &[0, 1, 2, 255], &[])), "1CC8eCqVhCWt/LzQjiTEjVV2K58=");
    }

    #[test]
    fn keys_sort_as_java_strings_uppercase_first() {
        let f = fields(&[("a", "1"), ("B", "2"), ("AccessKey", "3"), ("_UNIQUE_KEY_QUERY", "4")]);
        assert_eq!(signed_content(&f, b"", &[]), b"3241");
        assert_eq!(signed_content(&f, b"x", &["B"]), b"341x");
    }

    #[test]
    fn sign_then_verify_round_trips_and_any_change_fails() {
        let c = Credentials { security_token: Some("t".into()), ..Credentials::new("RocketMQ", "12345678") };
        let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 1).with_ext("b", "topicB").with_body(&b"payload"[..]);
        c.sign(&mut cmd);
        assert_eq!(cmd.ext_fields[ACCESS_KEY], "RocketMQ");
        assert_eq!(cmd.ext_fields[SECURITY_TOKEN], "t");
        let sig = cmd.ext_fields[SIGNATURE].clone();
        assert!(verify(&cmd.ext_fields, &cmd.body, "12345678", &sig, &[]));
        assert!(!verify(&cmd.ext_fields, &cmd.body, "12345679", &sig, &[]), "wrong secret");
        assert!(!verify(&cmd.ext_fields, b"payloaD", "12345678", &sig, &[]), "body changed");
        let mut f = cmd.ext_fields.clone();
        f.insert("b".into(), "topicA".into());
        assert!(!verify(&f, &cmd.body, "12345678", &sig, &[]), "topic changed");
        // A field added after signing breaks the signature unless the verifier leaves it out.
        let mut f = cmd.ext_fields.clone();
        f.insert("raftmqForwardedBy".into(), "2".into());
        assert!(!verify(&f, &cmd.body, "12345678", &sig, &[]));
        assert!(verify(&f, &cmd.body, "12345678", &sig, &["raftmqForwardedBy"]));
    }

    #[test]
    fn unique_key_query_flag_is_accepted_signed_or_not() {
        let c = Credentials::new("ak", "secret1");
        let mut cmd = RemotingCommand::request(RequestCode::QUERY_MESSAGE, 1).with_ext("topic", "t");
        c.sign(&mut cmd);
        let sig = cmd.ext_fields[SIGNATURE].clone();
        // Added after signing (old clients): accepted.
        let mut f = cmd.ext_fields.clone();
        f.insert(UNIQUE_KEY_QUERY.into(), "true".into());
        assert!(verify(&f, b"", "secret1", &sig, &[]));
        // Signed with it (newer clients): accepted too.
        let mut cmd = RemotingCommand::request(RequestCode::QUERY_MESSAGE, 1).with_ext("topic", "t").with_ext(UNIQUE_KEY_QUERY, "true");
        c.sign(&mut cmd);
        assert!(verify(&cmd.ext_fields, b"", "secret1", &cmd.ext_fields[SIGNATURE], &[]));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let c = Credentials { security_token: Some("tok-secret".into()), ..Credentials::new("ak", "s3cr3t-value") };
        let s = format!("{c:?}");
        assert!(s.contains("ak") && !s.contains("s3cr3t-value") && !s.contains("tok-secret"), "{s}");
    }
}

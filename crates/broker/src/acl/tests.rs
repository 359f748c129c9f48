//! Unit tests of the ACL model: RocketMQ's sample accounts, the check order, limits at the limit, errors
//! without secrets, and reloading.

use super::*;
use raftmq_remoting::acl::Credentials;
use raftmq_remoting::RequestCode;

/// RocketMQ's sample `plain_acl.yml` in raftmq's TOML form (as `cluster/local/acl.toml`).
const SAMPLE: &str = r#"
globalWhiteRemoteAddresses = ["10.10.103.*", "192.168.0.*"]

[[accounts]]
accessKey = "RocketMQ"
secretKey = "12345678"
whiteRemoteAddress = ""
admin = false
defaultTopicPerm = "DENY"
defaultGroupPerm = "SUB"
topicPerms = ["topicA=DENY", "topicB=PUB|SUB", "topicC=SUB"]
groupPerms = ["groupA=DENY", "groupB=PUB|SUB", "groupC=SUB"]

[[accounts]]
accessKey = "rocketmq2"
secretKey = "12345678"
whiteRemoteAddress = "192.168.1.*"
admin = true
"#;

fn acl(text: &str) -> Acl {
    Acl::parse(text, Path::new("acl.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn send(topic: &str) -> RemotingCommand {
    RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 1).with_ext("a", "pg").with_ext("b", topic).with_body(&b"body"[..])
}

fn pull(topic: &str, group: &str) -> RemotingCommand {
    RemotingCommand::request(RequestCode::PULL_MESSAGE, 1).with_ext("topic", topic).with_ext("consumerGroup", group)
}

fn signed(mut r: RemotingCommand, ak: &str, sk: &str) -> RemotingCommand {
    Credentials::new(ak, sk).sign(&mut r);
    r
}

#[test]
fn sample_accounts_permit_and_refuse_as_rocketmq() {
    let a = acl(SAMPLE);
    assert_eq!(a.accounts(), 2);
    let ok = |r: RemotingCommand| a.check(&signed(r, "RocketMQ", "12345678"), local());
    assert_eq!(ok(send("topicB")), Ok(()));
    let e = ok(send("topicA")).unwrap_err();
    assert_eq!(e, "accessKey=RocketMQ has no PUB permission on topic:topicA (it holds DENY)");
    let e = ok(send("topicC")).unwrap_err();
    assert!(e.contains("no PUB permission on topic:topicC"), "{e}");
    let e = ok(send("otherTopic")).unwrap_err();
    assert!(e.contains("topic:otherTopic (it holds DENY)"), "default topic perm: {e}");
    assert_eq!(ok(pull("topicC", "groupC")), Ok(()));
    assert_eq!(ok(pull("topicB", "groupB")), Ok(()));
    let e = ok(pull("topicC", "groupA")).unwrap_err();
    assert!(e.contains("no SUB permission on group:groupA"), "{e}");
    assert_eq!(ok(pull("topicC", "anyGroup")), Ok(()), "defaultGroupPerm SUB");
    let e = ok(pull("topicA", "groupB")).unwrap_err();
    assert!(e.contains("no SUB permission on topic:topicA"), "{e}");
    let e = ok(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 1).with_ext("topic", "x")).unwrap_err();
    assert!(e.contains("needs an admin account, but accessKey=RocketMQ is not admin"), "{e}");
    let e = ok(RemotingCommand::request(RequestCode(crate::processor::RAFTMQ_TRANSFER_LEADER), 1)).unwrap_err();
    assert!(e.contains("needs an admin account"), "{e}");
    // The admin account with no permission entries may do anything.
    let admin = |r: RemotingCommand| a.check(&signed(r, "rocketmq2", "12345678"), local());
    assert_eq!(admin(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 1).with_ext("topic", "x")), Ok(()));
    assert_eq!(admin(send("topicA")), Ok(()));
    assert_eq!(admin(pull("t", "g")), Ok(()));
}

#[test]
fn signature_access_key_and_white_lists_are_checked_in_rocketmq_order() {
    let a = acl(SAMPLE);
    let e = a.check(&signed(send("topicB"), "RocketMQ", "87654321"), local()).unwrap_err();
    assert!(e.starts_with("check signature failed for accessKey=RocketMQ"), "{e}");
    assert!(!e.contains("12345678") && !e.contains("87654321"), "no secret in the remark: {e}");
    let e = a.check(&send("topicB"), local()).unwrap_err();
    assert!(e.contains("carries no AccessKey"), "unsigned: {e}");
    let e = a.check(&signed(send("topicB"), "nobody00", "12345678"), local()).unwrap_err();
    assert_eq!(e, "no ACL account for accessKey=nobody00");
    let mut no_sig = signed(send("topicB"), "RocketMQ", "12345678");
    no_sig.ext_fields.remove(SIGNATURE);
    assert!(a.check(&no_sig, local()).unwrap_err().contains("carries no Signature"));
    // A field changed after signing fails.
    let mut changed = signed(send("topicB"), "RocketMQ", "12345678");
    changed.ext_fields.insert("b".into(), "topicA".into());
    assert!(a.check(&changed, local()).unwrap_err().contains("check signature failed"));
    // The forwarding mark a follower adds is not part of the signature.
    let mut fwd = signed(send("topicB"), "RocketMQ", "12345678");
    fwd.ext_fields.insert(FORWARDED_FIELD.into(), "2".into());
    assert_eq!(a.check(&fwd, local()), Ok(()));
    // Global white list: passes unsigned, whatever it asks for.
    let global: IpAddr = "192.168.0.7".parse().unwrap();
    assert_eq!(a.check(&send("topicA"), global), Ok(()));
    assert_eq!(a.check(&RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 1), global), Ok(()));
    // Account white list: passes without a (valid) signature, for that account only.
    let acct: IpAddr = "192.168.1.20".parse().unwrap();
    let unsigned_admin = send("topicA").with_ext(ACCESS_KEY, "rocketmq2");
    assert_eq!(a.check(&unsigned_admin, acct), Ok(()));
    assert!(a.check(&unsigned_admin, local()).unwrap_err().contains("carries no Signature"));
    assert!(a.check(&send("topicA").with_ext(ACCESS_KEY, "RocketMQ"), acct).is_err());
}

#[test]
fn cpp_client_requests_with_ons_channel_verify() {
    let a = acl(SAMPLE);
    // As the C++ client signs: OnsChannel is added and signed with the other fields.
    let mut r = send("topicB").with_ext(raftmq_remoting::acl::ONS_CHANNEL, "ALIYUN");
    Credentials::new("RocketMQ", "12345678").sign(&mut r);
    assert_eq!(a.check(&r, local()), Ok(()));
}

#[test]
fn unserved_codes_and_unparseable_bodies_are_refused() {
    let a = acl(SAMPLE);
    let e = a.check(&signed(RemotingCommand::request(RequestCode::UPDATE_BROKER_CONFIG, 1), "rocketmq2", "12345678"), local());
    assert!(e.unwrap_err().contains("has no ACL rule"));
    // Deleting a topic or a group, or changing a group, is for admin accounts only (RocketMQ's ADMIN_CODE).
    for code in
        [RequestCode::DELETE_TOPIC_IN_BROKER, RequestCode::DELETE_SUBSCRIPTIONGROUP, RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP]
    {
        let r = RemotingCommand::request(code, 1).with_ext("topic", "topicA").with_ext("groupName", "groupA");
        let e = a.check(&signed(r.clone(), "RocketMQ", "12345678"), local()).unwrap_err();
        assert!(e.contains("needs an admin account"), "{code}: {e}");
        assert_eq!(a.check(&signed(r, "rocketmq2", "12345678"), local()), Ok(()), "{code} by the admin account");
    }
    let hb = RemotingCommand::request(RequestCode::HEART_BEAT, 1).with_body(&b"{"[..]);
    let e = a.check(&signed(hb, "RocketMQ", "12345678"), local()).unwrap_err();
    assert!(e.contains("cannot authorise HEART_BEAT(34) for accessKey=RocketMQ: the heartbeat body does not parse"), "{e}");
}

#[test]
fn permission_bits_follow_rocketmq() {
    let pubsub = Perm::parse("PUB|SUB").unwrap();
    assert_eq!(Perm::parse("SUB|PUB").unwrap(), pubsub);
    assert!(pubsub.grants(Perm::PUB) && pubsub.grants(Perm::SUB) && pubsub.grants(Perm::ANY));
    assert!(!Perm::PUB.grants(Perm::SUB) && Perm::SUB.grants(Perm::ANY));
    assert!(!Perm(Perm::DENY.0 | Perm::PUB.0).grants(Perm::PUB), "DENY wins");
    assert!(Perm::parse("READ").unwrap_err().contains("\"READ\""));
}

#[test]
fn bad_files_are_refused_without_showing_secrets() {
    // A value of the wrong type: toml's own message would quote it.
    let text = "[[accounts]]\naccessKey = \"RocketMQ\"\nsecretKey = 123456789\n";
    let e = Acl::parse(text, Path::new("a.toml")).unwrap_err().to_string();
    assert!(e.contains("line 3") && !e.contains("123456789"), "{e}");
    let text = "[[accounts]]\naccessKey = \"RocketMQ\"\nsecretKey = \"topsecret-unterminated\n";
    let e = Acl::parse(text, Path::new("a.toml")).unwrap_err().to_string();
    assert!(!e.contains("topsecret"), "{e}");
    let short = "[[accounts]]\naccessKey = \"RocketMQ\"\nsecretKey = \"123456\"\n";
    let e = Acl::parse(short, Path::new("a.toml")).unwrap_err().to_string();
    assert!(e.contains("account RocketMQ: secretKey must be longer than 6") && !e.contains("123456\""), "{e}");
    let dup = format!("{SAMPLE}\n[[accounts]]\naccessKey = \"RocketMQ\"\nsecretKey = \"abcdefgh\"\n");
    assert!(Acl::parse(&dup, Path::new("a.toml")).unwrap_err().to_string().contains("account RocketMQ is defined twice"));
    let bad_perm = "[[accounts]]\naccessKey = \"RocketMQ\"\nsecretKey = \"12345678\"\ntopicPerms = [\"t=WRITE\"]\n";
    assert!(Acl::parse(bad_perm, Path::new("a.toml")).unwrap_err().to_string().contains("\"t=WRITE\""));
    let unknown = "aclEnable = true\n";
    assert!(Acl::parse(unknown, Path::new("a.toml")).is_err(), "unknown keys are refused");
}

fn account(i: usize, perms: usize) -> String {
    let list: Vec<String> = (0..perms).map(|p| format!("\"t{p}=PUB\"")).collect();
    format!("[[accounts]]\naccessKey = \"account{i:04}\"\nsecretKey = \"secret{i:04}\"\ntopicPerms = [{}]\n", list.join(","))
}

#[test]
fn limits_hold_at_the_limit_and_refuse_beyond() {
    let at: String = (0..ACL_ACCOUNTS_MAX).map(|i| account(i, 0)).collect();
    assert_eq!(acl(&at).accounts(), ACL_ACCOUNTS_MAX);
    let beyond = format!("{at}{}", account(ACL_ACCOUNTS_MAX, 0));
    assert!(Acl::parse(&beyond, Path::new("a")).unwrap_err().to_string().contains("ACL_ACCOUNTS_MAX"));

    let a = acl(&account(0, ACL_PERMS_PER_ACCOUNT_MAX));
    let last = format!("t{}", ACL_PERMS_PER_ACCOUNT_MAX - 1);
    assert_eq!(a.check(&signed(send(&last), "account0000", "secret0000"), local()), Ok(()));
    let e = Acl::parse(&account(0, ACL_PERMS_PER_ACCOUNT_MAX + 1), Path::new("a")).unwrap_err().to_string();
    assert!(e.contains("ACL_PERMS_PER_ACCOUNT_MAX"), "{e}");

    let entries: Vec<String> = (0..ACL_WHITELIST_ENTRIES_MAX).map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256)).collect();
    let at = format!("globalWhiteRemoteAddresses = [{}]\n", entries.join(","));
    let a = acl(&at);
    let last: IpAddr = format!("10.0.{}.{}", (ACL_WHITELIST_ENTRIES_MAX - 1) / 256, (ACL_WHITELIST_ENTRIES_MAX - 1) % 256).parse().unwrap();
    assert_eq!(a.check(&send("t"), last), Ok(()));
    let beyond = format!("globalWhiteRemoteAddresses = [{},\"10.9.9.9\"]\n", entries.join(","));
    assert!(Acl::parse(&beyond, Path::new("a")).unwrap_err().to_string().contains("more than 256 white-list entries"));

    let ak = "k".repeat(ACL_KEY_BYTES_MAX);
    let at = format!("[[accounts]]\naccessKey = \"{ak}\"\nsecretKey = \"12345678\"\ndefaultTopicPerm = \"PUB\"\n");
    assert_eq!(acl(&at).check(&signed(send("t"), &ak, "12345678"), local()), Ok(()));
    let over = at.replace(&ak, &format!("{ak}k"));
    assert!(Acl::parse(&over, Path::new("a")).unwrap_err().to_string().contains("accessKey must be"));
}

#[test]
fn the_file_size_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    let pad = |n: usize| format!("{SAMPLE}{}", "#".repeat(n - SAMPLE.len() - 1) + "\n");
    std::fs::write(&path, pad(ACL_FILE_BYTES_MAX as usize)).unwrap();
    assert_eq!(AclHolder::load(&path).unwrap().acl().accounts(), 2);
    std::fs::write(&path, pad(ACL_FILE_BYTES_MAX as usize + 1)).unwrap();
    assert!(matches!(AclHolder::load(&path), Err(AclError::TooLarge { bytes, .. }) if bytes == ACL_FILE_BYTES_MAX + 1));
}

#[test]
fn reload_swaps_in_a_changed_file_and_keeps_the_old_acl_on_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    std::fs::write(&path, SAMPLE).unwrap();
    let h = AclHolder::load(&path).unwrap();
    let req = || signed(send("topicC"), "RocketMQ", "12345678");
    assert!(h.acl().check(&req(), local()).is_err());
    assert!(!h.reload_if_changed(), "unchanged");
    std::fs::write(&path, SAMPLE.replace("topicC=SUB", "topicC=PUB")).unwrap();
    assert!(h.reload_if_changed());
    assert_eq!(h.acl().check(&req(), local()), Ok(()));
    // A broken version keeps the ACL in force, and is read once.
    std::fs::write(&path, "[[accounts]\nsecretKey = \"x").unwrap();
    assert!(!h.reload_if_changed());
    assert_eq!(h.acl().check(&req(), local()), Ok(()));
    assert_eq!(*h.failed.lock().unwrap(), Some(std::fs::metadata(&path).ok().map(|m| (m.modified().ok(), m.len()))));
    assert!(!h.reload_if_changed());
    // Rewritten with identical content: no swap.
    std::fs::write(&path, SAMPLE.replace("topicC=SUB", "topicC=PUB")).unwrap();
    assert!(!h.reload_if_changed());
    assert_eq!(h.acl().check(&req(), local()), Ok(()));
    // A removed file keeps the ACL too.
    std::fs::remove_file(&path).unwrap();
    assert!(!h.reload_if_changed());
    assert_eq!(h.acl().accounts(), 2);
}

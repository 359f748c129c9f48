//! Multi-process tests of RocketMQ plain ACL on the brokers' client ports: a nameserver and three `raftmq
//! broker` processes started with `aclEnable` and `cluster/local/acl.toml` (RocketMQ's sample accounts, with
//! the secrets replaced by a distinctive one so the logs can be searched for it), raw signed requests and the
//! `raftmq` CLI with `--access-key/--secret-key`.
//!
//! - `acl_permits_refuses_and_reloads`: unsigned, wrong-secret and unpermitted requests are answered
//!   NO_PERMISSION (16) with a remark naming the account, resource and permission, and store nothing;
//!   permitted sends and pulls work; admin-only codes (UPDATE_AND_CREATE_TOPIC, raftmq's node status) are
//!   refused for `RocketMQ` and served for the admin `rocketmq2`; the CLI produces and consumes with the
//!   flags (and the environment variables) and fails with a wrong secret; a changed ACL file takes effect
//!   without a restart and a broken one keeps the previous ACL; refusals are logged and no log holds a
//!   secret; a follower checks a CONSUMER_SEND_MSG_BACK before forwarding it and the leader verifies the
//!   client's signature on the forwarded request.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::acl::Credentials;
use raftmq_remoting::header::{
    ConsumerSendMsgBackRequestHeader, CreateTopicRequestHeader, PullMessageRequestHeader, SendMessageResponseHeader,
};
use raftmq_remoting::{RemotingCommand, RequestCode};

const SECRET: &str = "Sekr1t-acl-test";
const NO_PERMISSION: i32 = 16;

fn acl_text() -> String {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster/local/acl.toml")).expect("acl.toml");
    assert_eq!(shipped.matches("\"12345678\"").count(), 2, "the sample's two secrets");
    shipped.replace("\"12345678\"", &format!("\"{SECRET}\""))
}

fn user() -> Credentials {
    Credentials::new("RocketMQ", SECRET)
}

fn admin() -> Credentials {
    Credentials::new("rocketmq2", SECRET)
}

fn signed(mut r: RemotingCommand, c: &Credentials) -> RemotingCommand {
    c.sign(&mut r);
    r
}

async fn invoke(c: &raftmq_net::RemotingClient, r: RemotingCommand) -> (i32, String) {
    let resp = c.invoke(r, TIMEOUT).await.expect("answer");
    (resp.code, resp.remark.unwrap_or_default())
}

fn create_topic(topic: &str) -> RemotingCommand {
    let h = CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: 1,
        write_queue_nums: 1,
        perm: 6,
        topic_filter_type: "SINGLE_TAG".into(),
        ..Default::default()
    };
    RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h)
}

fn pull_request(topic: &str, group: &str) -> RemotingCommand {
    let h = PullMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        queue_offset: 0,
        max_msg_nums: 32,
        subscription: Some("*".into()),
        ..Default::default()
    };
    RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h)
}

async fn max_offset_as_admin(c: &raftmq_net::RemotingClient, topic: &str) -> i64 {
    let h = raftmq_remoting::header::GetMaxOffsetRequestHeader { topic: topic.into(), queue_id: 0, ..Default::default() };
    let r =
        c.invoke(signed(RemotingCommand::request(RequestCode::GET_MAX_OFFSET, 0).with_header(&h), &admin()), TIMEOUT).await.expect("max");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    r.decode_header::<raftmq_remoting::header::OffsetResponseHeader>().expect("offset").offset
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(args)
        .env_remove("RAFTMQ_ACCESS_KEY")
        .env_remove("RAFTMQ_SECRET_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run raftmq");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_permits_refuses_and_reloads() {
    let acl_dir = tempfile::tempdir().expect("tempdir");
    let acl_path = acl_dir.path().join("acl.toml");
    std::fs::write(&acl_path, acl_text()).expect("write acl");
    let _ = HARNESS_CREDENTIALS.set(admin());
    let extra = format!("aclEnable = true\naclFile = \"{}\"\n", acl_path.display());
    let cluster = Cluster::start_with(3, None, &extra).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let c = client(&addr).await.expect("connect");

    // Admin-only: refused for RocketMQ, served for rocketmq2.
    let (code, remark) = invoke(&c, signed(create_topic("topicB"), &user())).await;
    assert_eq!(code, NO_PERMISSION, "{remark}");
    assert!(remark.contains("needs an admin account, but accessKey=RocketMQ is not admin"), "{remark}");
    assert!(!remark.contains(SECRET));
    for t in ["topicA", "topicB", "topicC"] {
        let (code, remark) = invoke(&c, signed(create_topic(t), &admin())).await;
        assert_eq!(code, 0, "create {t}: {remark}");
    }
    let status = RemotingCommand::request(RequestCode(raftmq_remoting::codes::RAFTMQ_NODE_STATUS), 0);
    assert_eq!(invoke(&c, signed(status.clone(), &user())).await.0, NO_PERMISSION);
    assert_eq!(invoke(&c, signed(status.clone(), &admin())).await.0, 0);
    let (code, remark) = invoke(&c, status).await;
    assert_eq!(code, NO_PERMISSION, "unsigned admin code: {remark}");

    // Unsigned, wrong secret, missing permission: refused, nothing stored.
    let (code, remark) = send_cmd(&c, send_request("topicB", 0, b"unsigned", None)).await.unwrap_err();
    assert_eq!(code, NO_PERMISSION);
    assert!(remark.contains("carries no AccessKey"), "{remark}");
    let wrong = Credentials::new("RocketMQ", "not-the-secret");
    let (code, remark) = send_cmd(&c, signed(send_request("topicB", 0, b"wrong", None), &wrong)).await.unwrap_err();
    assert_eq!(code, NO_PERMISSION);
    assert_eq!(remark, "check signature failed for accessKey=RocketMQ: wrong secret key, or the request was changed after signing");
    let (code, remark) = send_cmd(&c, signed(send_request("topicA", 0, b"denied", None), &user())).await.unwrap_err();
    assert_eq!((code, remark.as_str()), (NO_PERMISSION, "accessKey=RocketMQ has no PUB permission on topic:topicA (it holds DENY)"));
    let (code, remark) = send_cmd(&c, signed(send_request("topicC", 0, b"sub only", None), &user())).await.unwrap_err();
    assert_eq!(code, NO_PERMISSION, "{remark}");
    assert_eq!(max_offset_as_admin(&c, "topicA").await, 0, "nothing stored");
    assert_eq!(max_offset_as_admin(&c, "topicB").await, 0, "nothing stored");
    assert_eq!(max_offset_as_admin(&c, "topicC").await, 0, "nothing stored");

    // Permitted: send and pull.
    let offset = send_cmd(&c, signed(send_request("topicB", 0, b"permitted", None), &user())).await.expect("permitted send");
    assert_eq!(offset, 0);
    let r = c.invoke(signed(pull_request("topicB", "groupB"), &user()), TIMEOUT).await.expect("pull");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    assert!(r.body.windows(9).any(|w| w == b"permitted"));
    let (code, remark) = invoke(&c, signed(pull_request("topicB", "groupA"), &user())).await;
    assert_eq!((code, remark.as_str()), (NO_PERMISSION, "accessKey=RocketMQ has no SUB permission on group:groupA (it holds DENY)"));

    // A follower forwards CONSUMER_SEND_MSG_BACK to the leader after checking it; the leader verifies the
    // client's signature without the follower's forwarding mark. A refused one is not forwarded.
    let r = c.invoke(signed(send_request("topicB", 0, b"back me", None), &user()), TIMEOUT).await.expect("send");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let h: SendMessageResponseHeader = r.decode_header().expect("send header");
    let phys = i64::from_str_radix(&h.msg_id[h.msg_id.len() - 16..], 16).expect("offsetMsgId");
    let follower = cluster.nodes.iter().find(|n| n.id != leader).expect("follower").client_addr.clone();
    let fc = client(&follower).await.expect("connect follower");
    let back = |group: &str| {
        let h = ConsumerSendMsgBackRequestHeader {
            offset: phys,
            group: group.into(),
            delay_level: -1,
            origin_topic: Some("topicB".into()),
            ..Default::default()
        };
        RemotingCommand::request(RequestCode::CONSUMER_SEND_MSG_BACK, 0).with_header(&h)
    };
    let leader_log = || std::fs::read_to_string(cluster.dir.path().join(format!("n{leader}.log"))).expect("log");
    let leader_refusals = leader_log().matches("ACL refused a request").count();
    let (code, remark) = invoke(&fc, signed(back("groupA"), &user())).await;
    assert_eq!((code, remark.as_str()), (NO_PERMISSION, "accessKey=RocketMQ has no SUB permission on group:groupA (it holds DENY)"));
    let (code, remark) = invoke(&fc, signed(back("groupB"), &user())).await;
    assert_eq!(code, 0, "forwarded send-back: {remark}");
    assert_eq!(max_offset_as_admin(&c, "%DLQ%groupB").await, 1, "the forwarded send-back was stored by the leader");
    let follower_id = cluster.nodes.iter().find(|n| n.client_addr == follower).expect("node").id;
    let follower_log = std::fs::read_to_string(cluster.dir.path().join(format!("n{follower_id}.log"))).expect("log");
    assert!(follower_log.contains("group:groupA"), "the follower logged its refusal");
    assert_eq!(leader_log().matches("ACL refused a request").count(), leader_refusals, "logged once, by the node that refused");

    // The CLI signs with --access-key/--secret-key or the environment.
    let ns = cluster.namesrv.clone();
    let (ok, out) =
        cli(&["produce", "--namesrv", &ns, "--topic", "topicB", "--count", "3", "--access-key", "RocketMQ", "--secret-key", SECRET], &[]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("SEND_OK").count(), 3, "{out}");
    let (ok, out) = cli(
        &["consume", "--namesrv", &ns, "--topic", "topicB", "--group", "groupB", "--count", "4", "--timeout-secs", "20"],
        &[("RAFTMQ_ACCESS_KEY", "RocketMQ"), ("RAFTMQ_SECRET_KEY", SECRET)],
    );
    assert!(ok && out.contains("consumed 4 message(s)"), "{out}");
    let (ok, out) =
        cli(&["produce", "--namesrv", &ns, "--topic", "topicB", "--access-key", "RocketMQ", "--secret-key", "wrong-secret"], &[]);
    assert!(!ok && out.contains("check signature failed for accessKey=RocketMQ"), "{out}");
    let (ok, out) = cli(&["produce", "--namesrv", &ns, "--topic", "topicA", "--access-key", "RocketMQ", "--secret-key", SECRET], &[]);
    assert!(!ok && out.contains("no PUB permission on topic:topicA"), "{out}");
    let (ok, out) = cli(&["admin", "--namesrv", &ns, "--access-key", "rocketmq2", "--secret-key", SECRET, "status"], &[]);
    assert!(ok, "{out}");
    assert_eq!(max_offset_as_admin(&c, "topicA").await, 0, "refused CLI sends stored nothing");
    assert_eq!(max_offset_as_admin(&c, "topicB").await, 5);

    // Reload: topicC becomes PUB|SUB without a restart, on every node.
    std::fs::write(&acl_path, acl_text().replace("\"topicC=SUB\"", "\"topicC=PUB|SUB\"")).expect("rewrite acl");
    let started = Instant::now();
    loop {
        match send_cmd(&c, signed(send_request("topicC", 0, b"after reload", None), &user())).await {
            Ok(_) => break,
            Err((code, remark)) => {
                assert_eq!(code, NO_PERMISSION, "{remark}");
                assert!(started.elapsed() < Duration::from_secs(15), "ACL not reloaded after 15 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!("ACL change took effect after {:?}", started.elapsed());
    // A broken file keeps the ACL in force.
    std::fs::write(&acl_path, format!("[[accounts]\nsecretKey = \"{SECRET}")).expect("break acl");
    tokio::time::sleep(Duration::from_secs(5)).await;
    send_cmd(&c, signed(send_request("topicC", 0, b"still allowed", None), &user())).await.expect("previous ACL in force");
    let (code, _) = send_cmd(&c, signed(send_request("topicA", 0, b"still denied", None), &user())).await.unwrap_err();
    assert_eq!(code, NO_PERMISSION);

    // Every node logged its ACL; refusals are logged on the leader; no log holds a secret.
    let leader_log = std::fs::read_to_string(cluster.dir.path().join(format!("n{leader}.log"))).expect("leader log");
    assert!(leader_log.contains("ACL refused a request"), "refusals are logged");
    assert!(leader_log.contains("ACL file changed: new ACL in force"));
    assert!(leader_log.contains("ACL file not reloaded; the previous ACL stays in force"));
    for n in 1..=3 {
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("n{n}.log"))).expect("log");
        assert!(log.contains("ACL loaded"), "n{n}");
        assert!(!log.contains(SECRET) && !log.contains("wrong-secret") && !log.contains("not-the-secret"), "n{n} logs a secret");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(cluster.dir.path().join(format!("n{n}.log"))).unwrap_or_default().contains("ACL file changed") {
            assert!(Instant::now() < deadline, "n{n} did not reload");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

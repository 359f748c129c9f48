//! Multi-process test of the cluster secret (real `raftmq` binaries on loopback): a group and nameserver
//! configured with one secret keep serving sends while hostile connections to a Raft port (garbage, a valid
//! Raft frame without a handshake, a wrong secret, a replayed handshake) are refused and closed; a spoofed
//! REGISTER_BROKER claiming the master's brokerId is answered NO_PERMISSION (16) and the route still names
//! the real leader; and a member configured with a wrong secret cannot join or vote, saying so in its log.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_raft::handshake::{client_handshake, HandshakeError, RaftAuth, HELLO_BYTES, PROOF_BYTES, REPLY_BYTES};
use raftmq_remoting::cluster_auth::ClusterSecrets;
use raftmq_remoting::header::RegisterBrokerRequestHeader;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "AuthTopic";
const SECRET: &str = "multi-process-cluster-secret-0123456789";
const WRONG: &str = "not-the-cluster-secret-at-all-012345678";

fn write_secret(dir: &std::path::Path, name: &str, secret: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Reads until the peer closes `s`; the bytes read before, or `None` if it stayed open for `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Runs a genuine handshake (as node `id`) with the server at `addr` and returns the proof it sent.
async fn record_proof(addr: &str, id: u64) -> Vec<u8> {
    let (mut ours, relay) = tokio::io::duplex(4096);
    let server = TcpStream::connect(addr).await.unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&recorded);
    let relay_task = tokio::spawn(async move {
        let (mut sr, mut sw) = server.into_split();
        let (mut rr, mut rw) = tokio::io::split(relay);
        let down = async {
            let mut hello = [0u8; HELLO_BYTES];
            sr.read_exact(&mut hello).await.unwrap();
            rw.write_all(&hello).await.unwrap();
            let mut reply = [0u8; REPLY_BYTES];
            sr.read_exact(&mut reply).await.unwrap();
            rw.write_all(&reply).await.unwrap();
        };
        let up = async {
            let mut proof = [0u8; PROOF_BYTES];
            rr.read_exact(&mut proof).await.unwrap();
            rec.lock().unwrap().extend_from_slice(&proof);
            sw.write_all(&proof).await.unwrap();
        };
        tokio::join!(down, up);
    });
    client_handshake(&mut ours, &RaftAuth::new(ClusterSecrets::parse(SECRET).unwrap(), id)).await.expect("genuine handshake");
    relay_task.await.unwrap();
    let proof = recorded.lock().unwrap().clone();
    proof
}

async fn send_ok(cluster: &Cluster, leader: u64, i: usize) {
    let c = client(&cluster.node(leader).client_addr).await.expect("leader reachable");
    send(&c, TOPIC, 0, format!("m{i}").as_bytes()).await.unwrap_or_else(|e| panic!("send {i}: {e:?}\n{}", cluster.log_tails(30)));
}

fn log_of(cluster: &Cluster, name: &str) -> String {
    std::fs::read_to_string(cluster.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_secret_keeps_hostile_peers_out_of_raft_and_the_nameserver() {
    let secrets = tempfile::tempdir().unwrap();
    let good = write_secret(secrets.path(), "cluster-secret", SECRET);
    let wrong = write_secret(secrets.path(), "wrong-secret", WRONG);
    let extra = format!("clusterSecretFile = \"{}\"\n", good.display());
    let mut cluster = Cluster::prepare(3, &extra);
    // Node 3 holds another secret: it must not get into the group.
    let n3 = cluster.dir.path().join("n3.toml");
    let text = std::fs::read_to_string(&n3).unwrap().replace(&good.display().to_string(), &wrong.display().to_string());
    std::fs::write(&n3, text).unwrap();
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let leader = cluster.wait_registered_leader(Duration::from_secs(30)).await;
    assert_ne!(leader, 3, "the node with the wrong secret cannot lead");
    for i in 0..5 {
        send_ok(&cluster, leader, i).await;
    }
    let raft_addr = cluster.node(leader).raft_addr.clone();
    let t = Duration::from_secs(8);

    // Garbage: the server's hello, then the close.
    let mut s = TcpStream::connect(&raft_addr).await.unwrap();
    s.write_all(&[0x42; 4096]).await.unwrap();
    let got = read_until_closed(&mut s, t).await.expect("garbage closed");
    assert!(got.len() <= HELLO_BYTES + REPLY_BYTES && got.starts_with(b"RMQR"), "{got:?}");
    // A Raft frame (a vote request shape) without a handshake: closed.
    let mut s = TcpStream::connect(&raft_addr).await.unwrap();
    let mut frame = 20u32.to_le_bytes().to_vec();
    frame.push(2);
    frame.extend_from_slice(&[0; 19]);
    s.write_all(&frame).await.unwrap();
    s.write_all(&[0; 64]).await.unwrap();
    assert!(read_until_closed(&mut s, t).await.is_some(), "a frame without a handshake is closed");
    // A wrong secret: refused (the client learns it) and closed.
    let mut s = TcpStream::connect(&raft_addr).await.unwrap();
    let e = client_handshake(&mut s, &RaftAuth::new(ClusterSecrets::parse(WRONG).unwrap(), 9)).await.unwrap_err();
    assert!(matches!(e, HandshakeError::Refused), "{e:?}");
    assert!(read_until_closed(&mut s, t).await.is_some(), "closed after the refusal");
    // A replayed handshake: a genuine proof recorded on one connection fails on the next.
    let proof = record_proof(&raft_addr, 2).await;
    let mut s = TcpStream::connect(&raft_addr).await.unwrap();
    let mut hello = [0u8; HELLO_BYTES];
    s.read_exact(&mut hello).await.unwrap();
    s.write_all(&proof).await.unwrap();
    let rest = read_until_closed(&mut s, t).await.expect("replay closed");
    assert_eq!(rest, vec![0u8; REPLY_BYTES], "refused, then closed");
    // Silence: closed at the handshake timeout (5 s).
    let mut s = TcpStream::connect(&raft_addr).await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut s, t).await.is_some(), "a silent connection is closed");
    let silent_closed_after = started.elapsed();
    assert!(silent_closed_after >= Duration::from_secs(4), "{silent_closed_after:?}");

    // The group kept serving throughout, with the same leader.
    for i in 5..10 {
        send_ok(&cluster, leader, i).await;
    }
    assert_eq!(cluster.leader(Duration::from_secs(5)).await, leader);

    // A spoofed master registration: unsigned, and signed with the wrong secret.
    let real_master = cluster.node(leader).client_addr.clone();
    let ns = client(&cluster.namesrv).await.expect("nameserver reachable");
    let h = RegisterBrokerRequestHeader {
        broker_name: "broker-a".into(),
        broker_addr: "127.0.0.1:1".into(),
        cluster_name: "DefaultCluster".into(),
        ha_server_addr: "127.0.0.1:2".into(),
        broker_id: 0,
        raft_term: Some(1_000_000),
        ..Default::default()
    };
    let unsigned = RemotingCommand::request(RequestCode::REGISTER_BROKER, 0).with_header(&h);
    let mut wrongly_signed = RemotingCommand::request(RequestCode::REGISTER_BROKER, 0).with_header(&h);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let wrong_secrets = ClusterSecrets::parse(WRONG).unwrap();
    raftmq_remoting::cluster_auth::sign_request(&wrong_secrets, wrongly_signed.code, &mut wrongly_signed.ext_fields, &[], now);
    for cmd in [unsigned, wrongly_signed] {
        let r = ns.invoke(cmd, Duration::from_secs(3)).await.expect("answered");
        assert_eq!(r.code, ResponseCode::NO_PERMISSION.0, "{:?}", r.remark);
        assert!(r.remark.as_deref().unwrap_or("").starts_with("registration refused"), "{:?}", r.remark);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let route = loop {
        if let Ok(Some(r)) = route(&cluster.namesrv, TOPIC).await {
            break r;
        }
        assert!(Instant::now() < deadline, "topic never routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(route.broker_datas[0].master_addr(), Some(real_master.as_str()), "the route still names the real leader");
    assert!(!route.broker_datas[0].broker_addrs.values().any(|a| a == "127.0.0.1:1"));
    assert!(!route.broker_datas[0].broker_addrs.contains_key(&3), "node 3's registrations are refused too");

    // raftmq's control codes need the cluster secret too: unsigned or wrongly signed, node status is refused.
    let leader_client = client(&cluster.node(leader).client_addr).await.expect("leader reachable");
    let status_req = || RemotingCommand::request(RequestCode(raftmq_broker::RAFTMQ_NODE_STATUS), 0);
    let mut wrongly_signed = status_req();
    raftmq_remoting::cluster_auth::sign_request(&wrong_secrets, wrongly_signed.code, &mut wrongly_signed.ext_fields, &[], now);
    for cmd in [status_req(), wrongly_signed] {
        let r = leader_client.invoke(cmd, Duration::from_secs(3)).await.expect("answered");
        assert_eq!(r.code, ResponseCode::NO_PERMISSION.0, "{:?}", r.remark);
        let remark = r.remark.unwrap_or_default();
        assert!(remark.contains("raftmq control request") && remark.contains("RAFTMQ_CLUSTER_SECRET_FILE"), "{remark}");
        assert!(!remark.contains(SECRET) && !remark.contains(WRONG), "{remark}");
    }
    // Signed with the secret (as the harness signs its own status calls): served.
    assert_eq!(node_status(&cluster.node(leader).client_addr).await.expect("signed status")["role"], "Leader");
    // The CLI signs control requests with the file RAFTMQ_CLUSTER_SECRET_FILE names; without it they are refused.
    let cli = |secret: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(bin());
        c.args(["admin", "--namesrv", &cluster.namesrv, "leader"]).env_remove("RAFTMQ_CLUSTER_SECRET_FILE");
        if let Some(f) = secret {
            c.env("RAFTMQ_CLUSTER_SECRET_FILE", f);
        }
        c.output().expect("run raftmq admin leader")
    };
    let signed = cli(Some(&good));
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    assert_eq!(String::from_utf8_lossy(&signed.stdout).trim(), format!("n{leader}"));
    let unsigned = cli(None);
    let err = String::from_utf8_lossy(&unsigned.stderr).to_string();
    assert!(
        !unsigned.status.success() && err.contains("cluster secret"),
        "stdout {} stderr {err}",
        String::from_utf8_lossy(&unsigned.stdout)
    );

    // Node 3: not in the group (it never applies what the others commit) and its log says why. It holds the
    // wrong secret, so its status is asked under that one.
    let c3 = client(&cluster.node(3).client_addr).await.expect("node 3 reachable");
    let mut n3_status = status_req();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    raftmq_remoting::cluster_auth::sign_request(&wrong_secrets, n3_status.code, &mut n3_status.ext_fields, &[], now);
    let r = c3.invoke(n3_status, Duration::from_secs(3)).await.expect("node 3 answers its status");
    let status: serde_json::Value = serde_json::from_slice(&r.body).expect("status body");
    assert_ne!(status["role"], "Leader");
    let n3 = log_of(&cluster, "n3");
    assert!(n3.contains("handshake"), "node 3's log shows the refusal:\n{}", cluster.log_tails(20));
    assert!(n3.contains("registration refused") && n3.contains("code=16"), "{}", cluster.log_tails(20));
    let ns_log = log_of(&cluster, "namesrv");
    assert!(ns_log.contains("broker registration refused"), "{ns_log}");
    let leader_log = log_of(&cluster, &format!("n{leader}"));
    assert!(leader_log.contains("raft connection refused: handshake failed"), "{leader_log}");
    for (name, text) in [("n3", &n3), ("namesrv", &ns_log), ("leader", &leader_log)] {
        assert!(!text.contains(SECRET) && !text.contains(WRONG), "{name}'s log holds a secret");
    }
    assert_eq!(max_offset(&c3, TOPIC, 0).await.max(0), 0, "node 3 holds none of the group's messages");
    println!("silent raft connection closed after {silent_closed_after:?}");
}

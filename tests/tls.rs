//! TLS on the client ports with the real binaries on loopback: a nameserver and a 3-node broker group in
//! `enforcing` mode (the brokers register and probe over TLS) serve `raftmq produce|consume|admin --tls`
//! and close plain clients; a `permissive` nameserver and broker serve plain and TLS clients on the same
//! ports; a nameserver picks up a replaced certificate without a restart; missing or malformed certificate
//! files stop the nameserver and the broker at start with the file named.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use raftmq_net::{ClientTls, ClientTlsOptions, RemotingClient};
use raftmq_remoting::header::{ConsumerSendMsgBackRequestHeader, GetRouteInfoRequestHeader};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const DEADLINE: Duration = Duration::from_secs(60);

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).expect("ca"), key)
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().expect("tempdir") };
        pki.issue("ca.pem", "first CA");
        pki
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
    /// A new CA (written to `ca_file`) and a server certificate it signs (server.pem, server.key; written
    /// key first, each through a rename so a reader never sees half a file).
    fn issue(&self, ca_file: &str, ca_name: &str) {
        let (ca_cert, ca_key) = ca(ca_name);
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("signed");
        for (name, text) in [(ca_file, ca_cert.pem()), ("server.key", key.serialize_pem()), ("server.pem", cert.pem())] {
            std::fs::write(self.path(&format!("{name}.tmp")), text).expect("write");
            std::fs::rename(self.path(&format!("{name}.tmp")), self.path(name)).expect("rename");
        }
    }
    fn namesrv_args(&self, mode: &str) -> Vec<String> {
        [
            "--tls-server-mode",
            mode,
            "--tls-server-cert-path",
            &self.text("server.pem"),
            "--tls-server-key-path",
            &self.text("server.key"),
            "--tls-reload-interval-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
    /// Broker TOML lines: `mode` on the client port; the broker's own connections over TLS if `client`.
    fn broker_keys(&self, mode: &str, client: bool) -> String {
        format!(
            "tlsServerMode = \"{mode}\"\ntlsServerCertPath = \"{}\"\ntlsServerKeyPath = \"{}\"\ntlsClientEnable = {client}\ntlsClientTrustCertPath = \"{}\"\n",
            self.text("server.pem"),
            self.text("server.key"),
            self.text("ca.pem")
        )
    }
    fn client(&self, ca_file: &str) -> ClientTls {
        ClientTls::load(&ClientTlsOptions { trust_cert_path: Some(self.path(ca_file)), ..ClientTlsOptions::default() }).expect("client tls")
    }
}

/// Runs `raftmq args…`; (success, stdout + stderr).
fn raftmq(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq")).args(args).output().expect("run raftmq");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The route of `topic` from the nameserver at `addr` over `tls` (or plain): Ok(code) or the error text.
async fn route_code(addr: &str, tls: Option<&ClientTls>, topic: &str) -> Result<i32, String> {
    let c = RemotingClient::connect_with(addr, TIMEOUT, None, tls).await.map_err(|e| e.to_string())?;
    let h = GetRouteInfoRequestHeader { topic: topic.into(), ..Default::default() };
    let r = c
        .invoke(RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 0).with_header(&h), TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.code)
}

async fn status_tls(addr: &str, tls: &ClientTls) -> Option<serde_json::Value> {
    let c = RemotingClient::connect_with(addr, Duration::from_secs(1), None, Some(tls)).await.ok()?;
    let r = c.invoke(RemotingCommand::request(RequestCode(raftmq_broker::RAFTMQ_NODE_STATUS), 0), Duration::from_secs(1)).await.ok()?;
    serde_json::from_slice(&r.body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforcing_cluster_serves_the_cli_over_tls_and_closes_plain_clients() {
    let pki = Pki::new();
    let mut cluster = Cluster::prepare_with_namesrv_args(3, &pki.broker_keys("enforcing", true), None, &pki.namesrv_args("enforcing"));
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let tls = pki.client("ca.pem");
    let ns = cluster.namesrv.clone();
    // The leader registers with the nameserver over TLS: the default topic's route appears.
    let start = Instant::now();
    while route_code(&ns, Some(&tls), "TBW102").await != Ok(ResponseCode::SUCCESS.0) {
        assert!(start.elapsed() < DEADLINE, "no registration over TLS\n{}", cluster.log_tails(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut followers = Vec::new();
    for n in &cluster.nodes {
        let s = status_tls(&n.client_addr, &tls).await.expect("every node answers over TLS");
        if s["role"] != "Leader" {
            followers.push(n.client_addr.clone());
        }
    }
    assert_eq!(followers.len(), 2);
    // A follower forwards CONSUMER_SEND_MSG_BACK to the leader over TLS: the answer is the leader's (no
    // message at that offset), not the follower's own "not the Raft leader" refusal that a failed forward gives.
    let c = RemotingClient::connect_with(&followers[0], TIMEOUT, None, Some(&tls)).await.expect("follower over TLS");
    let h = ConsumerSendMsgBackRequestHeader { offset: 1 << 40, group: "g".into(), delay_level: 0, ..Default::default() };
    let r = c.invoke(RemotingCommand::request(RequestCode::CONSUMER_SEND_MSG_BACK, 0).with_header(&h), TIMEOUT).await.expect("answer");
    let remark = r.remark.unwrap_or_default();
    assert!(remark.contains("look message by offset failed"), "forwarded to the leader: {remark}");

    let ca = pki.text("ca.pem");
    let tls_args = ["--tls", "--tls-ca-file", ca.as_str()];
    let (ok, out) = raftmq(&[&["admin", "--namesrv", &ns, "topic", "create", "TlsTopic", "--queues", "2"][..], &tls_args].concat());
    assert!(ok && out.contains("created TlsTopic"), "{out}");
    let (ok, out) = raftmq(&[&["produce", "--namesrv", &ns, "--topic", "TlsTopic", "--count", "5"][..], &tls_args].concat());
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("SEND_OK broker-a")).count(), 5, "{out}");
    let (ok, out) =
        raftmq(&[&["consume", "--namesrv", &ns, "--topic", "TlsTopic", "--group", "g", "--count", "5"][..], &tls_args].concat());
    assert!(ok && out.contains("consumed 5 message(s)"), "{out}");
    // The environment variables do the same as the flags.
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["admin", "--namesrv", &ns, "status"])
        .env("RAFTMQ_TLS", "true")
        .env("RAFTMQ_TLS_CA_FILE", &ca)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Plain clients: the CLI fails, and raw remoting connections are closed unanswered.
    let (ok, out) = raftmq(&["produce", "--namesrv", &ns, "--topic", "TlsTopic", "--count", "1"]);
    assert!(!ok, "a plain producer must fail: {out}");
    let err = route_code(&ns, None, "TBW102").await.unwrap_err();
    assert!(err.contains("closed"), "{err}");
    let err = route_code(&cluster.nodes[0].client_addr, None, "TBW102").await.unwrap_err();
    assert!(err.contains("closed"), "{err}");
    // A client trusting another CA is refused too.
    pki.issue("other-ca.pem", "other CA");
    let err = route_code(&ns, Some(&pki.client("other-ca.pem")), "TBW102").await;
    assert!(err.is_err(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_ports_serve_plain_and_tls_clients() {
    let pki = Pki::new();
    // The broker registers in plain text, which the permissive nameserver accepts.
    let mut cluster = Cluster::prepare_with_namesrv_args(1, &pki.broker_keys("permissive", false), None, &pki.namesrv_args("permissive"));
    cluster.start_node(1);
    cluster.wait_registered_leader(DEADLINE).await;
    let (ns, ca) = (cluster.namesrv.clone(), pki.text("ca.pem"));
    let (ok, out) = raftmq(&["produce", "--namesrv", &ns, "--topic", "Both", "--count", "3"]);
    assert!(ok, "plain: {out}");
    let (ok, out) = raftmq(&["produce", "--namesrv", &ns, "--topic", "Both", "--count", "3", "--tls", "--tls-ca-file", &ca]);
    assert!(ok, "tls: {out}");
    let (ok, out) =
        raftmq(&["consume", "--namesrv", &ns, "--topic", "Both", "--group", "g", "--count", "6", "--tls", "--tls-ca-file", &ca]);
    assert!(ok && out.contains("consumed 6 message(s)"), "{out}");
}

/// A nameserver process, killed when dropped.
struct Namesrv {
    addr: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Namesrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn namesrv(dir: &Path, args: &[String]) -> Namesrv {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("namesrv.log");
    let child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["namesrv", "--listen", &addr, "--log-file"])
        .arg(&log)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn namesrv");
    Namesrv { addr, child, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections_without_a_restart() {
    let pki = Pki::new();
    let ns = namesrv(pki.dir.path(), &pki.namesrv_args("enforcing"));
    let first = pki.client("ca.pem");
    let start = Instant::now();
    while route_code(&ns.addr, Some(&first), "T").await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the nameserver does not answer over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = RemotingClient::connect_with(&ns.addr, TIMEOUT, None, Some(&first)).await.expect("connect");
    pki.issue("second-ca.pem", "second CA");
    let second = pki.client("second-ca.pem");
    let start = Instant::now();
    while route_code(&ns.addr, Some(&second), "T").await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(route_code(&ns.addr, Some(&first), "T").await.is_err(), "new connections no longer get the old certificate");
    let h = GetRouteInfoRequestHeader { topic: "T".into(), ..Default::default() };
    open.invoke(RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 0).with_header(&h), TIMEOUT)
        .await
        .expect("an open connection stays");
    let log = std::fs::read_to_string(&ns.log).unwrap_or_default();
    assert!(log.contains("TLS certificate files changed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_certificate_files_stop_the_start_with_the_file_named() {
    let pki = Pki::new();
    let missing = pki.text("missing.pem");
    let (ok, out) = raftmq(&[
        "namesrv",
        "--listen",
        "127.0.0.1:0",
        "--tls-server-mode",
        "enforcing",
        "--tls-server-cert-path",
        &missing,
        "--tls-server-key-path",
        &pki.text("server.key"),
    ]);
    assert!(!ok && out.contains(&missing), "{out}");
    let (ok, out) = raftmq(&["namesrv", "--listen", "127.0.0.1:0", "--tls-server-mode", "enforcing"]);
    assert!(!ok && out.contains("certificate path"), "{out}");

    std::fs::write(pki.path("garbage.pem"), "not a certificate").expect("write");
    let keys = pki.broker_keys("enforcing", false).replace(&pki.text("server.pem"), &pki.text("garbage.pem"));
    let mut cluster = Cluster::prepare_with_namesrv_args(1, &keys, None, &[]);
    cluster.start_node(1);
    let st = cluster.wait_exit(1, DEADLINE).expect("the broker exits");
    assert!(!st.success());
    let stderr = std::fs::read_to_string(cluster.dir.path().join("n1.stderr")).unwrap_or_default();
    assert!(stderr.contains("garbage.pem") && stderr.contains("no PEM certificate"), "{stderr}");
}

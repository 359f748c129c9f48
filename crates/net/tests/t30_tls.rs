//! TLS on the remoting server and client over real TCP on 127.0.0.1, with certificates made by rcgen: each
//! mode serves what it should and closes what it should not (first byte 0x16 = TLS, else a plain frame); the
//! handshake limits (in flight, timeout); certificate files reloaded on change, a bad new set keeping the old
//! one; clear start-up errors for missing, malformed, mismatched and oversized files; mutual TLS; a message
//! larger than a TLS record sent through the vectored write path intact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_net::server::HandlerFuture;
use raftmq_net::{
    ClientTls, ClientTlsOptions, Conn, RemotingClient, RemotingServer, RequestHandler, Response, ServerOptions, ServerTlsOptions, TlsMode,
};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::{RequestCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(20);

/// Echoes the request body back as an extra body part (written from its own buffer when over 4 KiB).
struct Echo;

impl RequestHandler for Echo {
    fn handle(&self, _conn: Conn, req: RemotingCommand) -> HandlerFuture {
        Box::pin(async move {
            let cmd = RemotingCommand::response(ResponseCode::SUCCESS, None);
            Some(Response { cmd, body_parts: vec![req.body.clone()] })
        })
    }
}

/// A CA and the files it signed, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ca { cert: params.self_signed(&key).expect("self-signed"), key }
}

/// A certificate for `sans` signed by `ca`, as (chain PEM, key PEM).
fn leaf(ca: &Ca, sans: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        Pki { dir: tempfile::tempdir().expect("tempdir") }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        // Write then rename, as a certificate manager would: the server never reads half a file.
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.path(name)).expect("rename");
        self.path(name)
    }
    /// Writes `ca.pem` and a server certificate for 127.0.0.1/localhost signed by `ca`.
    fn server_files(&self, ca: &Ca, prefix: &str) {
        let (cert, key) = leaf(ca, &["127.0.0.1", "localhost"]);
        self.write(&format!("{prefix}ca.pem"), &ca.cert.pem());
        self.write("server.pem", &cert);
        self.write("server.key", &key);
    }
    fn server_tls(&self, mode: TlsMode) -> ServerTlsOptions {
        ServerTlsOptions {
            mode,
            cert_path: Some(self.path("server.pem")),
            key_path: Some(self.path("server.key")),
            reload_interval_ms: 100,
            ..ServerTlsOptions::default()
        }
    }
    fn client(&self, ca_file: &str) -> ClientTls {
        ClientTls::load(&ClientTlsOptions { trust_cert_path: Some(self.path(ca_file)), ..ClientTlsOptions::default() }).expect("client tls")
    }
}

async fn serve(tls: ServerTlsOptions) -> RemotingServer {
    RemotingServer::bind("127.0.0.1:0", Arc::new(Echo), ServerOptions { tls, ..ServerOptions::default() }).await.expect("bind")
}

async fn connect(server: &RemotingServer, tls: Option<&ClientTls>) -> Result<RemotingClient, String> {
    RemotingClient::connect_with(&server.local_addr().to_string(), TIMEOUT, None, tls).await.map_err(|e| e.to_string())
}

/// Sends `body` and checks it comes back whole.
async fn echo(c: &RemotingClient, body: Bytes) -> Result<(), String> {
    let r = c
        .invoke(RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.clone()), TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if r.code != ResponseCode::SUCCESS.0 || r.body != body {
        return Err(format!("code {} body {} bytes, want {}", r.code, r.body.len(), body.len()));
    }
    Ok(())
}

async fn works(server: &RemotingServer, tls: Option<&ClientTls>) -> Result<(), String> {
    echo(&connect(server, tls).await?, Bytes::from_static(b"hello")).await
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes `s` (EOF or reset), failing past the deadline.
async fn closed_by_server(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await.expect("server closes the connection") {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn disabled_serves_plain_and_closes_tls() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let server = serve(ServerTlsOptions::default()).await;
    works(&server, None).await.expect("plain works");
    let err = works(&server, Some(&pki.client("ca.pem"))).await.unwrap_err();
    assert!(!err.is_empty());
    wait_until("the TLS connection counted as refused", || server.stats().tls_mode_refused_total() == 1).await;
    assert_eq!(server.stats().tls_handshakes_total(), 0);
}

#[tokio::test]
async fn permissive_serves_tls_and_plain_on_one_port() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let server = serve(pki.server_tls(TlsMode::Permissive)).await;
    let tls = pki.client("ca.pem");
    let (a, b) = (connect(&server, Some(&tls)).await.expect("tls"), connect(&server, None).await.expect("plain"));
    for _ in 0..3 {
        echo(&a, Bytes::from_static(b"over tls")).await.expect("tls works");
        echo(&b, Bytes::from_static(b"plain")).await.expect("plain works");
    }
    assert_eq!((server.stats().tls_handshakes_total(), server.stats().tls_mode_refused_total()), (1, 0));
    assert_eq!(server.stats().connections_open(), 2);
}

#[tokio::test]
async fn enforcing_serves_tls_and_closes_plain() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let server = serve(pki.server_tls(TlsMode::Enforcing)).await;
    works(&server, Some(&pki.client("ca.pem"))).await.expect("tls works");
    let err = works(&server, None).await.unwrap_err();
    assert!(err.contains("closed"), "{err}");
    // A raw RocketMQ frame (first byte 0: its length's high byte) is closed without an answer.
    let mut raw = TcpStream::connect(server.local_addr()).await.expect("tcp");
    raw.write_all(&[0, 0, 0, 8, 0, 0, 0, 4, b'{', b'}', b' ', b' ']).await.expect("write");
    closed_by_server(&mut raw).await;
    assert_eq!(server.stats().tls_mode_refused_total(), 2);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_certificate_is_refused() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    pki.write("other.pem", &ca("other").cert.pem());
    let server = serve(pki.server_tls(TlsMode::Enforcing)).await;
    let err = works(&server, Some(&pki.client("other.pem"))).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // The name checked must be in the certificate: it is issued for 127.0.0.1 and localhost only.
    let wrong = ClientTls::load(&ClientTlsOptions {
        trust_cert_path: Some(pki.path("ca.pem")),
        server_name: Some("broker.example".into()),
        ..ClientTlsOptions::default()
    })
    .expect("client tls");
    let err = works(&server, Some(&wrong)).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    works(&server, Some(&pki.client("ca.pem"))).await.expect("the right CA works");
}

#[tokio::test]
async fn a_message_larger_than_a_tls_record_round_trips_intact() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let server = serve(pki.server_tls(TlsMode::Enforcing)).await;
    let c = connect(&server, Some(&pki.client("ca.pem"))).await.expect("tls");
    let body: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    echo(&c, Bytes::from(body)).await.expect("3 MiB echo over TLS");
    let mut many = tokio::task::JoinSet::new();
    for i in 0..64u8 {
        let c = c.clone();
        many.spawn(async move { echo(&c, Bytes::from(vec![i; 9000])).await });
    }
    while let Some(r) = many.join_next().await {
        r.expect("joined").expect("concurrent echoes over one TLS connection");
    }
}

#[tokio::test]
async fn handshakes_in_flight_are_capped_and_a_stalled_one_times_out() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let opts = ServerTlsOptions { handshakes_inflight_max: 1, handshake_timeout_ms: 1500, ..pki.server_tls(TlsMode::Enforcing) };
    let server = serve(opts).await;
    let tls = pki.client("ca.pem");
    // A peer that sends the first byte of a handshake and nothing more holds the only handshake slot.
    let mut staller = TcpStream::connect(server.local_addr()).await.expect("tcp");
    staller.write_all(&[0x16]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = works(&server, Some(&tls)).await.unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(server.stats().tls_handshakes_refused_total(), 1);
    // The stalled handshake is abandoned after the timeout, which frees the slot.
    closed_by_server(&mut staller).await;
    assert_eq!(server.stats().tls_handshake_failures_total(), 1);
    works(&server, Some(&tls)).await.expect("a handshake fits again");
    assert_eq!(server.stats().tls_handshakes_total(), 1);
}

#[tokio::test]
async fn changed_certificate_files_reach_new_connections_and_a_bad_set_keeps_the_old() {
    let pki = Pki::new();
    pki.server_files(&ca("first"), "first-");
    let server = serve(pki.server_tls(TlsMode::Enforcing)).await;
    let old_conn = connect(&server, Some(&pki.client("first-ca.pem"))).await.expect("first CA");
    pki.server_files(&ca("second"), "second-");
    wait_until("the new certificate loaded", || server.stats().tls_reloads_total() == 1).await;
    works(&server, Some(&pki.client("second-ca.pem"))).await.expect("new connections get the new certificate");
    assert!(works(&server, Some(&pki.client("first-ca.pem"))).await.is_err(), "the old certificate is no longer served");
    echo(&old_conn, Bytes::from_static(b"still here")).await.expect("an open connection keeps its session");
    // A key that does not match the certificate: refused, the second certificate stays.
    let (_, other_key) = leaf(&ca("third"), &["127.0.0.1"]);
    pki.write("server.key", &other_key);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.stats().tls_reloads_total(), 1);
    works(&server, Some(&pki.client("second-ca.pem"))).await.expect("the previous certificate is kept");
    // Unreadable garbage: also kept.
    pki.write("server.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.stats().tls_reloads_total(), 1);
    works(&server, Some(&pki.client("second-ca.pem"))).await.expect("the previous certificate is kept");
}

async fn bind_err(tls: ServerTlsOptions) -> std::io::Error {
    RemotingServer::bind("127.0.0.1:0", Arc::new(Echo), ServerOptions { tls, ..ServerOptions::default() }).await.err().expect("refused")
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn bad_certificate_files_are_refused_at_start_with_the_file_named() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let base = pki.server_tls(TlsMode::Enforcing);

    let e = bind_err(ServerTlsOptions { cert_path: Some(pki.path("missing.pem")), ..base.clone() }).await;
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&text(&pki.path("missing.pem"))), "{e}");

    let garbage = pki.write("garbage.pem", "hello");
    let e = bind_err(ServerTlsOptions { cert_path: Some(garbage.clone()), ..base.clone() }).await;
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("no PEM certificate") && e.to_string().contains(&text(&garbage)), "{e}");

    let e = bind_err(ServerTlsOptions { key_path: Some(garbage.clone()), ..base.clone() }).await;
    assert!(e.to_string().contains("no PEM private key"), "{e}");

    let (_, other_key) = leaf(&ca("other"), &["127.0.0.1"]);
    let other = pki.write("other.key", &other_key);
    let e = bind_err(ServerTlsOptions { key_path: Some(other), ..base.clone() }).await;
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("TLS configuration"), "{e}");

    // At the size cap a file loads; one byte over it does not.
    let size = std::fs::metadata(pki.path("server.pem")).expect("stat").len();
    serve(ServerTlsOptions {
        cert_file_bytes_max: size.max(std::fs::metadata(pki.path("server.key")).expect("stat").len()),
        ..base.clone()
    })
    .await;
    let e = bind_err(ServerTlsOptions { cert_file_bytes_max: size - 1, ..base.clone() }).await;
    assert!(e.to_string().contains(&format!("larger than {} bytes", size - 1)), "{e}");

    let e = bind_err(ServerTlsOptions { cert_path: None, ..base }).await;
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("certificate path"), "{e}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_trust_file() {
    let pki = Pki::new();
    pki.server_files(&ca("ca"), "");
    let clients = ca("clients");
    pki.write("clients-ca.pem", &clients.cert.pem());
    let (cert, key) = leaf(&clients, &["client-1"]);
    pki.write("client.pem", &cert);
    pki.write("client.key", &key);
    let opts = ServerTlsOptions {
        trust_cert_path: Some(pki.path("clients-ca.pem")),
        need_client_auth: true,
        ..pki.server_tls(TlsMode::Enforcing)
    };
    let server = serve(opts).await;
    // TLS 1.3 clients learn of the refusal at their first read, so the request fails rather than the connect.
    assert!(works(&server, Some(&pki.client("ca.pem"))).await.is_err(), "no client certificate");
    let with_cert = ClientTls::load(&ClientTlsOptions {
        trust_cert_path: Some(pki.path("ca.pem")),
        cert_path: Some(pki.path("client.pem")),
        key_path: Some(pki.path("client.key")),
        ..ClientTlsOptions::default()
    })
    .expect("client tls");
    works(&server, Some(&with_cert)).await.expect("a signed client certificate works");
}

//! Mutual authentication of Raft-port connections on the cluster secret, before any RPC is read.
//!
//! ```text
//! server → client  hello := "RMQR" | version u8 (1) | server_nonce [32]                       (37 bytes)
//! client → server  proof := client_nonce [32] | node_id u64 BE | HMAC(k, "client", sn, cn, id) (72 bytes)
//! server → client  reply := status u8 (1 ok, 0 refused) | HMAC(k, "server", sn, cn, id)       (33 bytes)
//! ```
//! Every message has a fixed size and is read with exact-length reads: nothing the peer sends can make the
//! server allocate or decode more. The HMAC is HMAC-SHA256 over the length-prefixed domain `raftmq-raft-v1`
//! and the parts shown ([`ClusterSecrets::sign`]). The server's nonce is fresh for every connection, so a
//! recorded proof does not verify on another connection (replay); the two directions carry different labels,
//! so a proof cannot be reflected back. The client signs with its first secret, the server accepts any of its
//! secrets and answers with the one that matched; the client accepts any of its own (rotation, see
//! docs/security.md).
//! The node id is bound into the MAC and logged; it is not checked against the membership (a node being
//! added is dialled by the leader before it holds the membership that names the leader).
//!
//! A server refuses (closes) a connection whose proof does not verify, that does not complete the handshake
//! within [`HANDSHAKE_TIMEOUT`], or that arrives while [`HANDSHAKES_MAX`] others are mid-handshake. Once
//! authenticated, a connection carries RPCs with no per-RPC cost.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_remoting::cluster_auth::{ClusterSecrets, TAG_BYTES};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::NodeId;

/// Longest a peer may take to complete the handshake on the server side: 5 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections of one Raft port that may be mid-handshake at once; beyond, new connections are closed
/// at once. A group has at most 9 members, each opening a handful of connections.
pub const HANDSHAKES_MAX: usize = 64;

/// Handshake failures are logged at most once per this interval (with the count of those not logged).
pub const AUTH_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 32;

const MAGIC: &[u8; 4] = b"RMQR";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"raftmq-raft-v1";
/// Size of the server's hello.
pub const HELLO_BYTES: usize = MAGIC.len() + 1 + NONCE_BYTES;
/// Size of the client's proof.
pub const PROOF_BYTES: usize = NONCE_BYTES + 8 + TAG_BYTES;
/// Size of the server's reply.
pub const REPLY_BYTES: usize = 1 + TAG_BYTES;

/// What a node proves itself with: the cluster secrets and its node id. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct RaftAuth {
    secrets: Arc<ClusterSecrets>,
    node_id: NodeId,
}

impl RaftAuth {
    /// Node `node_id` of a cluster sharing `secrets`.
    pub fn new(secrets: ClusterSecrets, node_id: NodeId) -> Self {
        RaftAuth { secrets: Arc::new(secrets), node_id }
    }
}

/// Why a handshake failed. Never holds a secret or a MAC.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Socket error or a connection closed mid-handshake (a truncated message).
    #[error("io during the raft handshake: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not complete in time.
    #[error("the raft handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The server's hello is not a raftmq handshake (a server without a cluster secret, or not raftmq).
    #[error("the peer did not open a raftmq handshake (is it configured without a cluster secret, or not a raftmq Raft port?)")]
    BadHello,
    /// The client's proof matches none of this node's secrets.
    #[error("node {node} (as it claims) failed the handshake: its proof does not match the cluster secret")]
    BadProof {
        /// The node id the client claimed.
        node: NodeId,
    },
    /// The server refused this node's proof.
    #[error("the peer refused this node's handshake: the cluster secrets differ")]
    Refused,
    /// The server's answer does not match this node's secrets.
    #[error("the peer's handshake answer does not match the cluster secret: it does not hold the secret")]
    BadServerProof,
    /// [`HANDSHAKES_MAX`] connections are already mid-handshake.
    #[error("{HANDSHAKES_MAX} connections are already mid-handshake (HANDSHAKES_MAX)")]
    TooMany,
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// The client side: reads the hello, proves this node, checks the server's answer.
///
/// # Errors
/// [`HandshakeError`]; the caller drops the connection.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, auth: &RaftAuth) -> Result<(), HandshakeError> {
    let mut hello = [0u8; HELLO_BYTES];
    s.read_exact(&mut hello).await?;
    if &hello[..MAGIC.len()] != MAGIC || hello[MAGIC.len()] != VERSION {
        return Err(HandshakeError::BadHello);
    }
    let server_nonce = &hello[MAGIC.len() + 1..];
    let client_nonce = nonce();
    let id = auth.node_id.to_be_bytes();
    let tag = auth.secrets.sign(DOMAIN, &[b"client", server_nonce, &client_nonce, &id]);
    let mut proof = [0u8; PROOF_BYTES];
    proof[..NONCE_BYTES].copy_from_slice(&client_nonce);
    proof[NONCE_BYTES..NONCE_BYTES + 8].copy_from_slice(&id);
    proof[NONCE_BYTES + 8..].copy_from_slice(&tag);
    s.write_all(&proof).await?;
    let mut reply = [0u8; REPLY_BYTES];
    s.read_exact(&mut reply).await?;
    if reply[0] != 1 {
        return Err(HandshakeError::Refused);
    }
    match auth.secrets.verify(DOMAIN, &[b"server", server_nonce, &client_nonce, &id], &reply[1..]) {
        Some(_) => Ok(()),
        None => Err(HandshakeError::BadServerProof),
    }
}

/// The server side: sends a fresh nonce, checks the client's proof, answers with its own. Returns the
/// client's node id. On a bad proof, answers "refused" before returning the error.
///
/// # Errors
/// [`HandshakeError`]; the caller closes the connection.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, auth: &RaftAuth) -> Result<NodeId, HandshakeError> {
    let server_nonce = nonce();
    let mut hello = [0u8; HELLO_BYTES];
    hello[..MAGIC.len()].copy_from_slice(MAGIC);
    hello[MAGIC.len()] = VERSION;
    hello[MAGIC.len() + 1..].copy_from_slice(&server_nonce);
    s.write_all(&hello).await?;
    let mut proof = [0u8; PROOF_BYTES];
    s.read_exact(&mut proof).await?;
    let client_nonce = &proof[..NONCE_BYTES];
    let id = &proof[NONCE_BYTES..NONCE_BYTES + 8];
    let node = u64::from_be_bytes(id.try_into().unwrap_or([0; 8]));
    let Some(key) = auth.secrets.verify(DOMAIN, &[b"client", &server_nonce, client_nonce, id], &proof[NONCE_BYTES + 8..]) else {
        // Best effort: the client learns it was refused instead of waiting for its timeout.
        let _ = s.write_all(&[0u8; REPLY_BYTES]).await;
        return Err(HandshakeError::BadProof { node });
    };
    // Answer under the secret the client proved itself with: one it holds, whatever the order of the lists.
    let tag = auth.secrets.sign_with(key, DOMAIN, &[b"server", &server_nonce, client_nonce, id]);
    let mut reply = [0u8; REPLY_BYTES];
    reply[0] = 1;
    reply[1..].copy_from_slice(&tag);
    s.write_all(&reply).await?;
    Ok(node)
}

/// Lets one log line through per [`AUTH_FAILURE_LOG_INTERVAL`] and counts the others.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter that lets the first line through.
    pub const fn new() -> Self {
        LogLimiter { last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed since the last one), else `None`.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < AUTH_FAILURE_LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    fn auth(secret: &str, id: NodeId) -> RaftAuth {
        RaftAuth::new(ClusterSecrets::parse(secret).unwrap(), id)
    }

    const S1: &str = "first-cluster-secret-0123456789";
    const S2: &str = "second-cluster-secret-012345678";

    #[tokio::test]
    async fn matching_secrets_authenticate_both_ways() {
        let (mut c, mut s) = duplex(1024);
        let a0 = auth(S1, 2);
        let a1 = auth(S1, 1);
        let (cr, sr) = tokio::join!(client_handshake(&mut c, &a0), server_handshake(&mut s, &a1));
        cr.unwrap();
        assert_eq!(sr.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_rotation_list_accepts_either_secret() {
        let (mut c, mut s) = duplex(1024);
        let rolling = auth(&format!("{S2}\n{S1}"), 1);
        let a0 = auth(S1, 2);
        let (cr, sr) = tokio::join!(client_handshake(&mut c, &a0), server_handshake(&mut s, &rolling));
        cr.unwrap();
        assert_eq!(sr.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (mut c, mut s) = duplex(1024);
        let a0 = auth(S2, 3);
        let a1 = auth(S1, 1);
        let (cr, sr) = tokio::join!(client_handshake(&mut c, &a0), server_handshake(&mut s, &a1));
        assert!(matches!(cr, Err(HandshakeError::Refused)), "{cr:?}");
        assert!(matches!(sr, Err(HandshakeError::BadProof { node: 3 })), "{sr:?}");
        // No error text carries the secret.
        assert!(!format!("{:?} {}", sr, sr.as_ref().unwrap_err()).contains("secret-0123"));
    }

    #[tokio::test]
    async fn a_server_without_the_secret_is_detected_by_the_client() {
        // An impostor server that sends a well-formed hello and a reply with a MAC under another key.
        let (mut c, mut s) = duplex(1024);
        let a0 = auth(S1, 2);
        let (cr, _) = tokio::join!(client_handshake(&mut c, &a0), async {
            let mut hello = [0u8; HELLO_BYTES];
            hello[..4].copy_from_slice(MAGIC);
            hello[4] = VERSION;
            s.write_all(&hello).await.unwrap();
            let mut proof = [0u8; PROOF_BYTES];
            s.read_exact(&mut proof).await.unwrap();
            let mut reply = [7u8; REPLY_BYTES];
            reply[0] = 1;
            s.write_all(&reply).await.unwrap();
        });
        assert!(matches!(cr, Err(HandshakeError::BadServerProof)), "{cr:?}");
        // Garbage instead of a hello.
        let (mut c, mut s) = duplex(1024);
        let a0 = auth(S1, 2);
        let (cr, _) = tokio::join!(client_handshake(&mut c, &a0), s.write_all(&[0xAB; HELLO_BYTES]));
        assert!(matches!(cr, Err(HandshakeError::BadHello)), "{cr:?}");
    }

    #[tokio::test]
    async fn garbage_truncated_and_oversized_proofs_are_refused() {
        let server = auth(S1, 1);
        // Garbage of exactly the proof's size.
        let (mut c, mut s) = duplex(4096);
        let (sr, _) = tokio::join!(server_handshake(&mut s, &server), async {
            let mut hello = [0u8; HELLO_BYTES];
            c.read_exact(&mut hello).await.unwrap();
            c.write_all(&[0x5A; PROOF_BYTES]).await.unwrap();
        });
        assert!(matches!(sr, Err(HandshakeError::BadProof { .. })), "{sr:?}");
        // Truncated: half a proof, then the connection closes.
        let (mut c, mut s) = duplex(4096);
        let (sr, _) = tokio::join!(server_handshake(&mut s, &server), async move {
            let mut hello = [0u8; HELLO_BYTES];
            c.read_exact(&mut hello).await.unwrap();
            c.write_all(&[1; PROOF_BYTES / 2]).await.unwrap();
            drop(c);
        });
        assert!(matches!(sr, Err(HandshakeError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof), "{sr:?}");
        // Oversized: a 1 MiB "frame" is read only up to the proof's fixed size, and refused.
        let (mut c, mut s) = duplex(1 << 20);
        let (sr, _) = tokio::join!(server_handshake(&mut s, &server), async {
            let mut hello = [0u8; HELLO_BYTES];
            c.read_exact(&mut hello).await.unwrap();
            let mut big = vec![0xFF; 1 << 20];
            big[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
            let _ = c.write_all(&big).await;
        });
        assert!(matches!(sr, Err(HandshakeError::BadProof { .. })), "{sr:?}");
    }

    #[tokio::test]
    async fn a_replayed_proof_fails_on_a_new_connection() {
        let server = auth(S1, 1);
        // Record a genuine client's proof on one connection ...
        let (mut c, mut s) = duplex(1024);
        let a0 = auth(S1, 2);
        let (cr, sr) = tokio::join!(client_handshake(&mut c, &a0), server_handshake(&mut s, &server));
        cr.unwrap();
        sr.unwrap();
        let (mut c, mut s) = duplex(1024);
        let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = recorded.clone();
        let (_, sr) = tokio::join!(
            async {
                let mut hello = [0u8; HELLO_BYTES];
                c.read_exact(&mut hello).await.unwrap();
                // (a proof computed for this connection's nonce, captured as an eavesdropper would)
                let tag = auth(S1, 2).secrets.sign(DOMAIN, &[b"client", &hello[5..], &[9; NONCE_BYTES], &2u64.to_be_bytes()]);
                let mut proof = vec![9; NONCE_BYTES];
                proof.extend_from_slice(&2u64.to_be_bytes());
                proof.extend_from_slice(&tag);
                *rec.lock().unwrap() = proof.clone();
                c.write_all(&proof).await.unwrap();
            },
            server_handshake(&mut s, &server)
        );
        assert_eq!(sr.unwrap(), 2);
        // ... and replay it on another: the server's fresh nonce makes it fail.
        let (mut c, mut s) = duplex(1024);
        let proof = recorded.lock().unwrap().clone();
        let (_, sr) = tokio::join!(
            async {
                let mut hello = [0u8; HELLO_BYTES];
                c.read_exact(&mut hello).await.unwrap();
                c.write_all(&proof).await.unwrap();
            },
            server_handshake(&mut s, &server)
        );
        assert!(matches!(sr, Err(HandshakeError::BadProof { node: 2 })), "{sr:?}");
    }

    #[test]
    fn the_failure_log_is_rate_limited() {
        let l = LogLimiter::new();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        *l.last.lock().unwrap() = Some(Instant::now() - AUTH_FAILURE_LOG_INTERVAL);
        assert_eq!(l.allow(), Some(2));
    }
}

//! RocketMQ remoting over TCP: a server that dispatches each request to a handler concurrently (a held
//! long-poll must not block the other requests of its connection), and a client connection that
//! multiplexes requests by `opaque`. Framing is `raftmq-remoting`'s; this crate only moves frames.
//!
//! Responses may carry extra body parts ([`Response::body_parts`]) written after the command's own body
//! with vectored writes, so pulled message bytes go from the commitlog mapping to the socket uncopied (parts
//! up to 4 KiB are copied next to their header instead). Frames queued on a connection leave together in one
//! vectored write.
//!
//! The server bounds what a peer can make it hold: connections, requests and request bytes in flight per
//! connection and in total (reads pause past a cap), idle time; see [`server`] and [`ServerOptions`].
//!
//! Both ends can speak TLS (rustls): the server in RocketMQ's `disabled`, `permissive` or `enforcing` mode
//! with certificates reloaded when their files change, the client with a trust file; see [`tls`].

pub mod client;
pub mod server;
pub mod tls;

use std::io::{self, IoSlice};

use bytes::{BufMut, Bytes, BytesMut};
use raftmq_remoting::frame::RemotingCommand;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use client::RemotingClient;
pub use server::{Conn, OptionsError, RemotingServer, RequestHandler, ServerOptions, ServerStats};
pub use tls::{ClientTls, ClientTlsOptions, ServerTlsOptions, TlsError, TlsMode};

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// A frame could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// No response within the deadline.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// TLS could not be set up (e.g. an address whose host is no valid server name).
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A response (or a server-initiated request) and optional extra body parts.
#[derive(Debug, Clone)]
pub struct Response {
    /// The command; its body goes first.
    pub cmd: RemotingCommand,
    /// More body bytes, written after `cmd.body` in order.
    pub body_parts: Vec<Bytes>,
}

impl From<RemotingCommand> for Response {
    fn from(cmd: RemotingCommand) -> Self {
        Response { cmd, body_parts: Vec::new() }
    }
}

/// Most bytes gathered into one vectored write from frames queued back to back.
const COALESCE_BYTES_MAX: usize = 256 * 1024;
/// Body parts up to this size are copied next to their header; longer ones are written from their own
/// buffers (pulled message bytes straight from the commitlog mapping).
const COPY_PART_BYTES_MAX: usize = 4 * 1024;

impl Response {
    fn body_bytes(&self) -> usize {
        self.cmd.body.len() + self.body_parts.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Appends one frame (length prefix, header, `cmd.body`, `parts`) to `segments`: small pieces are copied
/// into `staging`, large parts are pushed as their own segment.
fn stage_frame(staging: &mut BytesMut, segments: &mut Vec<Bytes>, out: &Response, frame_bytes_max: usize) -> Result<(), NetError> {
    let cmd = &out.cmd;
    let header = cmd.encode_header().map_err(|e| NetError::Codec(e.to_string()))?;
    let total = 4 + header.len() + out.body_bytes();
    if total + 4 > frame_bytes_max {
        return Err(NetError::Codec(format!("frame of {} bytes exceeds {frame_bytes_max}", total + 4)));
    }
    staging.reserve(8 + header.len());
    staging.put_i32(total as i32);
    staging.put_u32(((cmd.encoding().code() as u32) << 24) | header.len() as u32);
    staging.put_slice(&header);
    for part in std::iter::once(&cmd.body).chain(out.body_parts.iter()) {
        if part.len() <= COPY_PART_BYTES_MAX {
            staging.put_slice(part);
        } else {
            if !staging.is_empty() {
                segments.push(staging.split().freeze());
            }
            segments.push(part.clone());
        }
    }
    Ok(())
}

/// Writes frames back to back with as few vectored writes as their sizes allow.
pub async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Response], frame_bytes_max: usize) -> Result<(), NetError> {
    let mut staging = BytesMut::new();
    let mut segments = Vec::new();
    for out in frames {
        stage_frame(&mut staging, &mut segments, out, frame_bytes_max)?;
    }
    if !staging.is_empty() {
        segments.push(staging.freeze());
    }
    let bufs: Vec<&[u8]> = segments.iter().map(|b| &b[..]).collect();
    write_all_vectored(w, &bufs).await?;
    Ok(())
}

/// Writes everything `rx` yields until it closes or a write fails. Frames already queued when a write
/// starts go out with it (up to [`COALESCE_BYTES_MAX`]), so a busy connection pays one syscall for many
/// small responses instead of one each.
pub(crate) async fn write_queued<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut tokio::sync::mpsc::Receiver<Response>,
    frame_bytes_max: usize,
) -> Result<(), NetError> {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.body_bytes();
        batch.push(first);
        while bytes < COALESCE_BYTES_MAX {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.body_bytes() + 64;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        write_frames(w, &batch, frame_bytes_max).await?;
        batch.clear();
    }
    Ok(())
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, bufs: &[&[u8]]) -> io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < bufs.len() {
        let slices: Vec<IoSlice<'_>> =
            std::iter::once(IoSlice::new(&bufs[i][off..])).chain(bufs[i + 1..].iter().take(63).map(|b| IoSlice::new(b))).collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed while writing"));
        }
        while i < bufs.len() && n > 0 {
            let left = bufs[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use raftmq_remoting::frame::RemotingCodec;
    use tokio_util::codec::Decoder;

    use super::*;

    /// A sink that records how many write calls it took.
    #[derive(Default)]
    struct CountingSink {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for CountingSink {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(mut self: Pin<&mut Self>, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn response(opaque: i32, body: &[u8], parts: &[&[u8]]) -> Response {
        let cmd = RemotingCommand::request(raftmq_remoting::RequestCode::PULL_MESSAGE, opaque).with_body(Bytes::copy_from_slice(body));
        Response { cmd, body_parts: parts.iter().map(|p| Bytes::copy_from_slice(p)).collect() }
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<RemotingCommand> {
        let mut codec = RemotingCodec::new();
        let mut out = Vec::new();
        while let Some(cmd) = codec.decode(&mut bytes).expect("decodes") {
            out.push(cmd);
        }
        assert!(bytes.is_empty(), "{} bytes left over", bytes.len());
        out
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_one_write_and_decode_back_in_order() {
        let big = vec![7u8; 3 * COPY_PART_BYTES_MAX];
        let frames = [
            response(1, b"first", &[]),
            response(2, b"head", &[b"tail-1", &big, b"tail-2"]),
            response(3, b"", &[&big]),
            response(4, b"last", &[]),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        for f in frames.iter().cloned() {
            tx.send(f).await.expect("queued");
        }
        drop(tx);
        let mut sink = CountingSink::default();
        write_queued(&mut sink, &mut rx, 16 << 20).await.expect("written");
        assert_eq!(sink.writes, 1, "all four frames in one vectored write");
        let decoded = decode_all(BytesMut::from(&sink.bytes[..]));
        let mut want_body = b"head".to_vec();
        want_body.extend_from_slice(b"tail-1");
        want_body.extend_from_slice(&big);
        want_body.extend_from_slice(b"tail-2");
        let got: Vec<(i32, Vec<u8>)> = decoded.iter().map(|c| (c.opaque, c.body.to_vec())).collect();
        assert_eq!(got, vec![(1, b"first".to_vec()), (2, want_body), (3, big.clone()), (4, b"last".to_vec())]);
    }

    #[tokio::test]
    async fn an_oversize_frame_is_refused_before_anything_is_written() {
        let mut sink = CountingSink::default();
        let err = write_frames(&mut sink, &[response(1, b"ok", &[]), response(2, &[0u8; 2048], &[])], 1024).await.unwrap_err();
        assert!(matches!(err, NetError::Codec(ref why) if why.contains("exceeds 1024")), "{err}");
        assert_eq!(sink.writes, 0);
    }
}

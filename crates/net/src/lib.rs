//! RocketMQ remoting over TCP: a server that dispatches each request to a handler concurrently (a held
//! long-poll must not block the other requests of its connection), and a client connection that
//! multiplexes requests by `opaque`. Framing is `raftmq-remoting`'s; this crate only moves frames.
//!
//! Responses may carry extra body parts ([`Response::body_parts`]) written after the command's own body
//! with vectored writes, so pulled message bytes go from the commitlog mapping to the socket uncopied.

pub mod client;
pub mod server;

use std::io::{self, IoSlice};

use bytes::{BufMut, Bytes, BytesMut};
use raftmq_remoting::frame::RemotingCommand;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use client::RemotingClient;
pub use server::{Conn, RemotingServer, RequestHandler, ServerOptions};

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

/// Writes one frame: length prefix, header, `cmd.body`, then `parts`, with vectored writes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    cmd: &RemotingCommand,
    parts: &[Bytes],
    frame_bytes_max: usize,
) -> Result<(), NetError> {
    let header = cmd.encode_header().map_err(|e| NetError::Codec(e.to_string()))?;
    let body_len = cmd.body.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let total = 4 + header.len() + body_len;
    if total + 4 > frame_bytes_max {
        return Err(NetError::Codec(format!("frame of {} bytes exceeds {frame_bytes_max}", total + 4)));
    }
    let mut head = BytesMut::with_capacity(8 + header.len());
    head.put_i32(total as i32);
    head.put_u32(((cmd.encoding().code() as u32) << 24) | header.len() as u32);
    head.put_slice(&header);
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(2 + parts.len());
    bufs.push(&head);
    if !cmd.body.is_empty() {
        bufs.push(&cmd.body);
    }
    bufs.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| &p[..]));
    write_all_vectored(w, &bufs).await?;
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

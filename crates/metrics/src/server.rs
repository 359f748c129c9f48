//! The HTTP server of a node's metrics port: `GET /metrics` (axum on hyper, HTTP/1).
//!
//! Bounded like every other listener: at most [`METRICS_HTTP_CONNECTIONS_MAX`] connections are served at
//! once (one more is accepted and closed at once), and a connection is closed
//! [`METRICS_HTTP_CONN_LIFETIME`] after it was accepted, whether or not it is idle, so slow or silent
//! clients cannot hold the slots. Scrapers reconnect. The router is public so that other HTTP features of
//! the same port can merge their routes (the nameserver's web console, `raftmq_namesrv::console`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::export::Metrics;

/// Connections the metrics port serves at once.
pub const METRICS_HTTP_CONNECTIONS_MAX: usize = 64;
/// How long a metrics connection may stay open.
pub const METRICS_HTTP_CONN_LIFETIME: Duration = Duration::from_secs(60);

/// The OpenMetrics text content type `prometheus-client` writes.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes of the metrics port: `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                match metrics.encode() {
                    Ok(text) => ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response(),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
                }
            }
        }),
    )
}

/// A running metrics server; stopped by [`MetricsServer::stop`] or when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` (`host:port`) and serves `router` on it.
    pub async fn start(listen: &str, router: Router) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let bounded = Bounded { inner: listener, slots: Arc::new(Semaphore::new(METRICS_HTTP_CONNECTIONS_MAX)) };
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(bounded, router).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "metrics served at http://{addr}/metrics");
        Ok(MetricsServer { addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (the port is closed at once); connections already open end within
    /// [`METRICS_HTTP_CONN_LIFETIME`].
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener that holds a slot per open connection and refuses connections when none is free.
struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Limited, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(permit) => {
                        let deadline = Box::pin(tokio::time::sleep(METRICS_HTTP_CONN_LIFETIME));
                        return (Limited { stream, _permit: permit, deadline }, peer);
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "metrics connection refused: {METRICS_HTTP_CONNECTIONS_MAX} open");
                        drop(stream);
                    }
                },
                // Out of descriptors and the like: pause instead of spinning.
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot, failing its IO once its lifetime is over.
struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Limited {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "metrics connection lifetime over")
}

use std::future::Future;

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A minimal HTTP/1.1 `GET` of `path` from `addr` (the body as text): for tests and tools that scrape a
/// node without an HTTP client crate. Refuses answers larger than `bytes_max`.
pub async fn http_get(addr: &str, path: &str, bytes_max: usize) -> io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut s).take(bytes_max as u64 + 1).read_to_end(&mut raw).await?;
    if raw.len() > bytes_max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("answer larger than {bytes_max} bytes")));
    }
    let text = String::from_utf8(raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let chunked =
        head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(body).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_over_http_and_other_paths_are_not_found() {
        let metrics = Arc::new(Metrics::new([]));
        let server = MetricsServer::start("127.0.0.1:0", router(metrics)).await.unwrap();
        let addr = server.local_addr().to_string();
        let (status, body) = http_get(&addr, "/metrics", 1 << 20).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("raftmq_process_resident_memory_bytes"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(http_get(&addr, "/nope", 1 << 20).await.unwrap().0, 404);
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once() {
        let server = MetricsServer::start("127.0.0.1:0", router(Arc::new(Metrics::new([])))).await.unwrap();
        let addr = server.local_addr().to_string();
        // Hold every slot with idle connections.
        let mut held = Vec::new();
        for _ in 0..METRICS_HTTP_CONNECTIONS_MAX {
            held.push(TcpStream::connect(&addr).await.unwrap());
        }
        // Give the server time to accept them all.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let refused = tokio::time::timeout(Duration::from_secs(5), http_get(&addr, "/metrics", 1 << 20)).await.unwrap();
        assert!(refused.is_err() || refused.as_ref().unwrap().1.is_empty(), "{refused:?}");
        // Freeing one slot lets the next scrape through.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(http_get(&addr, "/metrics", 1 << 20).await.unwrap().0, 200);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(), Some("abcde"));
        assert_eq!(dechunk("5\r\nab"), None);
    }
}

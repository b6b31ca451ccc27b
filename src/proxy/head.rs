//! A total deadline for each HTTP/1 request head on the proxy's client connections.
//!
//! pingora 0.9 bounds each *read* of a request head (60 s, its keep-alive timeout) but not the
//! head as a whole, and has no hook between accepting a connection and parsing the head: a
//! client sending a header line every few seconds holds a connection (and a task) for good.
//! So the proxy's listeners run [`HeadDeadline`], a `ServerApp` that wraps every accepted
//! stream in [`Deadline`] before pingora's HTTP code sees it. The wrapper follows the
//! connection's rhythm from the bytes alone: reading a head (the clock runs from the first
//! read) until the blank line that ends it; then a body, until the answer starts (a `1xx`
//! interim answer does not count); then the next head. A head not complete by the deadline
//! fails the read with `TimedOut`, and pingora closes the connection (quietly if nothing of
//! the head had arrived: an idle keep-alive connection also ends at the deadline).
//!
//! Not covered: HTTP/2 (negotiated by ALPN on the TLS listener; its streams are framed, and
//! h2's own flow control and idle timeout apply) and the TLS handshake itself.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    tls::TlsRef, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs `A` (pingora's HTTP proxy app) on streams wrapped in [`Deadline`].
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    limit: Duration,
}

impl<A> HeadDeadline<A> {
    pub fn new(inner: A, limit: Duration) -> HeadDeadline<A> {
        HeadDeadline {
            inner: Arc::new(inner),
            limit,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let wrapped: Stream = Box::new(Deadline::new(stream, self.limit));
        self.inner.process_new(wrapped, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is in its request/answer rhythm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head; `ends` counts how much of "\r\n\r\n" the last bytes matched.
    Head { ends: u8 },
    /// The head is in: a body may follow, until the answer starts.
    Body,
    /// The answer is being written; the next read starts the next head.
    Answer,
}

/// Advance the head scan over `bytes`: true once the blank line ending the head is seen.
/// `ends` carries a partial match across reads. Bare "\n\n" ends a head for lenient parsers
/// too, so it counts as well.
fn scan_head(ends: &mut u8, bytes: &[u8]) -> bool {
    for &b in bytes {
        // 1: "\r"; 2: a line ended ("\r\n" or a bare "\n"); 3: then "\r"; 4: a blank line.
        *ends = match (*ends, b) {
            (0 | 1, b'\n') => 2,
            (2 | 3, b'\n') => 4,
            (2, b'\r') => 3,
            (_, b'\r') => 1,
            _ => 0,
        };
        if *ends == 4 {
            return true;
        }
    }
    false
}

/// Is a write the start of an interim (1xx) answer, which a body may follow?
fn is_interim(buf: &[u8]) -> bool {
    buf.len() >= 10 && buf.starts_with(b"HTTP/1.") && buf[8] == b' ' && buf[9] == b'1'
}

/// A client stream whose request heads must each arrive within `limit`.
pub struct Deadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    /// Set at the first read of a head.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Deadline {
    pub fn new(inner: Stream, limit: Duration) -> Deadline {
        Deadline {
            inner,
            limit,
            phase: Phase::Head { ends: 0 },
            timer: None,
        }
    }
}

impl AsyncRead for Deadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Answer {
            this.phase = Phase::Head { ends: 0 };
            this.timer = None;
        }
        let Phase::Head { mut ends } = this.phase else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if scan_head(&mut ends, &buf.filled()[before..]) {
                    this.phase = Phase::Body;
                    this.timer = None;
                } else {
                    this.phase = Phase::Head { ends };
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the request head did not arrive within {limit:?} ([proxy] request_head_timeout)"
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Deadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.phase != Phase::Answer && !is_interim(buf) {
            this.phase = Phase::Answer;
            this.timer = None;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.phase != Phase::Answer && !first.is_empty() && !is_interim(first) {
            this.phase = Phase::Answer;
            this.timer = None;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// Everything else is the wrapped stream's.

#[async_trait]
impl Shutdown for Deadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Deadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Deadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Deadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_blank_line_even_split_across_reads() {
        let ends_after = |parts: &[&[u8]]| -> Option<usize> {
            let mut ends = 0;
            parts.iter().position(|p| scan_head(&mut ends, p))
        };
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(
            ends_after(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\nbody"]),
            Some(3)
        );
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        // Header lines one at a time never end it.
        assert_eq!(
            ends_after(&[b"GET / HTTP/1.1\r\n", b"X-a: 1\r\n", b"X-b: 2\r\n"]),
            None
        );
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\r\nX-a: \r\r\n"]), None);
    }

    #[test]
    fn interim_answers_are_told_from_final_ones() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_interim(b"HTTP/1.1 "));
        assert!(!is_interim(b"{\"errors\":[]}"));
    }
}

//! Bytes both ways between two streams: the one copy loop of the product.
//!
//! Both the terminated path (`forward`: client TLS ↔ upstream TCP or TLS) and the link
//! (`link`: QUIC stream ↔ TCP) end here. The copying itself is tokio's
//! [`tokio::io::copy_bidirectional_with_sizes`]: it flushes a writer whenever its reader has
//! nothing ready, so ciphertext that a TLS stream (tokio-rustls buffers it when the socket would
//! block) or any other buffered writer holds is never left inside the node while the other
//! direction idles; and when one direction reads EOF it shuts down the other side's write half
//! (half-close) while the other direction goes on. Around it this module adds what the product
//! needs: byte counters per direction (readable even when the copy fails) and an idle timeout
//! (no byte read either way for `idle_timeout` ends the copy).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copy buffer of each direction, in bytes.
pub const BUF_BYTES: usize = 64 * 1024;

/// How a copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// Both directions read EOF, and each EOF was passed on as a shutdown of the other side.
    Finished,
    /// A read, write, flush or shutdown on either side failed; the other direction was dropped.
    Failed(io::Error),
    /// No byte was read either way for the idle timeout.
    IdleTimeout,
}

/// What a copy moved, and how it ended.
#[derive(Debug)]
pub struct Copied {
    /// Bytes read from `a` (all written to `b` when the copy finished).
    pub a_to_b: u64,
    /// Bytes read from `b` (all written to `a` when the copy finished).
    pub b_to_a: u64,
    /// How it ended.
    pub end: CopyEnd,
}

/// Copies `a` ↔ `b` until both directions end, one side fails, or nothing is read for
/// `idle_timeout`. `on_a_read(n)` / `on_b_read(n)` are called for every read of `n` bytes
/// (live counters: link status, metrics). The streams are borrowed, so the caller can still
/// reset or abort them after a failure.
pub async fn copy_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    idle_timeout: Duration,
    on_a_read: &(dyn Fn(u64) + Sync),
    on_b_read: &(dyn Fn(u64) + Sync),
) -> Copied
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let clock = IdleClock::new();
    let mut a = Counted::new(a, &clock, on_a_read);
    let mut b = Counted::new(b, &clock, on_b_read);
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF_BYTES, BUF_BYTES);
        tokio::pin!(copy);
        let period = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut check = tokio::time::interval(period);
        loop {
            tokio::select! {
                result = &mut copy => break match result {
                    Ok(_) => CopyEnd::Finished,
                    Err(e) => CopyEnd::Failed(e),
                },
                _ = check.tick() => {
                    if clock.idle_for() >= idle_timeout {
                        break CopyEnd::IdleTimeout;
                    }
                }
            }
        }
    };
    Copied {
        a_to_b: a.bytes,
        b_to_a: b.bytes,
        end,
    }
}

/// When a byte last moved, in milliseconds since the clock started; shared by the copy loop and
/// the HTTP stage's idle timeout.
pub(crate) struct IdleClock {
    started: Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    pub(crate) fn new() -> IdleClock {
        IdleClock {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Resolves once nothing moved for `limit`.
    pub(crate) async fn expired(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A stream that counts what is read from it and touches the idle clock; writes pass through.
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    bytes: u64,
    clock: &'a IdleClock,
    on_read: &'a (dyn Fn(u64) + Sync),
}

impl<'a, S: ?Sized> Counted<'a, S> {
    fn new(inner: &'a mut S, clock: &'a IdleClock, on_read: &'a (dyn Fn(u64) + Sync)) -> Self {
        Counted {
            inner,
            bytes: 0,
            clock,
            on_read,
        }
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.bytes += n;
            this.clock.touch();
            (this.on_read)(n);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// A writer that keeps everything it is given until it is flushed, like a TLS stream whose
    /// socket would block: without a flush the far side never sees the bytes.
    struct HoldsUntilFlush {
        held: Vec<u8>,
        far: tokio::io::DuplexStream,
    }

    impl AsyncRead for HoldsUntilFlush {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().far).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HoldsUntilFlush {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            while !this.held.is_empty() {
                match Pin::new(&mut this.far).poll_write(cx, &this.held) {
                    Poll::Ready(Ok(n)) => {
                        this.held.drain(..n);
                    }
                    other => return other.map(|r| r.map(|_| ())),
                }
            }
            Pin::new(&mut this.far).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut self.get_mut().far).poll_shutdown(cx),
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn bytes_held_by_a_buffered_writer_are_flushed_while_the_other_way_idles() {
        let (client, client_far) = duplex(1 << 20);
        let (mut upstream, upstream_far) = duplex(1 << 20);
        let mut client_far = HoldsUntilFlush {
            held: Vec::new(),
            far: client_far,
        };
        let (mut cr, _cw) = tokio::io::split(client);
        let task = tokio::spawn(async move {
            let mut upstream_far = upstream_far;
            copy_both_ways(
                &mut client_far,
                &mut upstream_far,
                Duration::from_secs(60),
                &|_| {},
                &|_| {},
            )
            .await
        });
        // The upstream sends a response and then waits (keep-alive): no EOF either way.
        upstream.write_all(b"response").await.unwrap();
        let mut got = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(5), cr.read_exact(&mut got))
            .await
            .expect("the response stayed inside the copy")
            .unwrap();
        assert_eq!(&got, b"response");
        task.abort();
    }

    #[tokio::test]
    async fn half_close_propagates_and_bytes_are_counted() {
        let (client, mut client_far) = duplex(1024);
        let (upstream, mut upstream_far) = duplex(1024);
        let counted = std::sync::Arc::new(AtomicU64::new(0));
        let seen = counted.clone();
        let task = tokio::spawn(async move {
            let on_b = move |n| {
                seen.fetch_add(n, Ordering::Relaxed);
            };
            copy_both_ways(
                &mut client_far,
                &mut upstream_far,
                Duration::from_secs(5),
                &|_| {},
                &on_b,
            )
            .await
        });
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        cw.write_all(b"request").await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        ur.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            cr.read_to_end(&mut got).await.unwrap();
            got
        });
        let response = vec![7u8; 300_000];
        uw.write_all(&response).await.unwrap();
        uw.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), response);
        let copied = task.await.unwrap();
        assert!(matches!(copied.end, CopyEnd::Finished), "{copied:?}");
        assert_eq!((copied.a_to_b, copied.b_to_a), (7, 300_000));
        assert_eq!(counted.load(Ordering::Relaxed), 300_000);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_read_for_the_idle_timeout_ends_the_copy() {
        let (_client, mut client_far) = duplex(1024);
        let (_upstream, mut upstream_far) = duplex(1024);
        let copied = copy_both_ways(
            &mut client_far,
            &mut upstream_far,
            Duration::from_secs(60),
            &|_| {},
            &|_| {},
        )
        .await;
        assert!(matches!(copied.end, CopyEnd::IdleTimeout), "{copied:?}");
    }
}

//! Bytes both ways between two streams: the one copy loop of the product.
//!
//! Both the terminated path (`forward`: client TLS ↔ upstream TCP or TLS) and the link
//! (`link`: QUIC stream ↔ TCP) end here. Each direction reads into a buffer and writes it out;
//! it flushes its writer whenever its reader has nothing ready, so ciphertext that a TLS stream
//! or any other buffered writer holds is never left inside the node while the other direction
//! idles; and when one direction reads EOF it shuts down the other side's write half
//! (half-close) while the other direction goes on. These are the rules of tokio's
//! `copy_bidirectional`, which this loop replaced for one reason, memory: tokio's copy owns a
//! buffer per direction for the whole life of a connection (2 × 64 KiB here), while most
//! connections of a mesh are idle most of the time. Here a direction borrows a buffer from a
//! per-thread [`pool`] only for a read that returns bytes and gives it back as soon as those
//! bytes are written, so an idle connection holds none (HAProxy allocates its buffers the same
//! way, only while data is in flight). Around it this module adds what the product needs: byte
//! counters per direction (readable even when the copy fails) and an idle timeout (no byte read
//! either way for `idle_timeout` ends the copy).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of a copy buffer, in bytes: what one read may return and one write is given.
pub const BUF_BYTES: usize = 64 * 1024;

/// Free copy buffers kept per runtime thread; beyond it a returned buffer is freed. 32 × 64 KiB
/// = 2 MiB per thread at most, enough for the reads one thread has in flight at a time.
const POOL_BUFFERS: usize = 32;

/// Copy buffers lent to a direction only while it holds bytes that are not yet written.
pub mod pool {
    use std::cell::RefCell;

    use super::{BUF_BYTES, POOL_BUFFERS};

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of [`BUF_BYTES`] from this thread's pool, or a new one.
    pub fn take() -> Box<[u8]> {
        FREE.try_with(|free| free.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; BUF_BYTES].into_boxed_slice())
    }

    /// Returns `buf` to this thread's pool (freed when the pool is full or the thread is
    /// ending).
    pub fn give(buf: Box<[u8]>) {
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < POOL_BUFFERS {
                free.push(buf);
            }
        });
    }

    /// Free buffers in this thread's pool (tests).
    pub fn free_here() -> usize {
        FREE.try_with(|free| free.borrow().len()).unwrap_or(0)
    }
}

/// One direction of a copy: reads from one stream, writes to the other.
#[derive(Default)]
struct Direction {
    /// Holds bytes `pos..cap` not yet written; `None` while there are none.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    /// The reader returned EOF.
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// EOF was passed on as a shutdown of the writer: this direction is over.
    done: bool,
}

impl Direction {
    /// Moves bytes until the reader would block with everything written and flushed
    /// (`Pending`), or until EOF has been passed on (`Ready(Ok)`).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let mut buf = self.buf.take().unwrap_or_else(pool::take);
                let mut read = ReadBuf::new(&mut buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            pool::give(buf);
                        } else {
                            (self.pos, self.cap) = (0, n);
                            self.buf = Some(buf);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        pool::give(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        // Nothing to read: the buffer goes back, and whatever the writer still
                        // holds goes out now, not when the next byte arrives.
                        pool::give(buf);
                        if self.need_flush {
                            std::task::ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                let n =
                    std::task::ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the writer accepted no bytes",
                    )));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if let Some(buf) = self.buf.take() {
                pool::give(buf);
            }
            (self.pos, self.cap) = (0, 0);
            if self.read_done {
                // A shutdown flushes first (tokio's AsyncWrite contract).
                std::task::ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Whether a buffer is held (tests).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have passed on their EOF, or one fails.
async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    std::future::poll_fn(|cx| {
        if !a_to_b.done {
            if let Poll::Ready(Err(e)) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
            {
                return Poll::Ready(Err(e));
            }
        }
        if !b_to_a.done {
            if let Poll::Ready(Err(e)) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
            {
                return Poll::Ready(Err(e));
            }
        }
        if a_to_b.done && b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

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
        let copy = copy_bidirectional(&mut a, &mut b);
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

    /// A direction holds a buffer only while it has bytes its writer has not taken yet.
    #[tokio::test]
    async fn a_direction_holds_a_buffer_only_while_bytes_wait_for_the_writer() {
        let (mut source, mut reader) = duplex(1 << 20);
        let (mut writer, mut sink) = duplex(16); // the writer takes 16 bytes, then blocks
        let mut direction = Direction::default();
        let poll = |d: &mut Direction,
                    r: &mut tokio::io::DuplexStream,
                    w: &mut tokio::io::DuplexStream| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            d.poll_copy(&mut cx, Pin::new(r), Pin::new(w))
        };
        assert!(poll(&mut direction, &mut reader, &mut writer).is_pending());
        assert!(!direction.holds_buffer(), "idle: nothing to hold");
        source.write_all(&[1u8; 100]).await.unwrap();
        assert!(poll(&mut direction, &mut reader, &mut writer).is_pending());
        assert!(direction.holds_buffer(), "84 bytes wait for the writer");
        let mut got = vec![0u8; 100];
        let mut n = 0;
        while n < 100 {
            n += sink.read(&mut got[n..]).await.unwrap();
            assert!(poll(&mut direction, &mut reader, &mut writer).is_pending());
        }
        assert_eq!(got, vec![1u8; 100]);
        assert!(
            !direction.holds_buffer(),
            "everything written: the buffer went back"
        );
        assert!(pool::free_here() >= 1, "returned to this thread's pool");
        drop(source);
        assert!(
            poll(&mut direction, &mut reader, &mut writer).is_ready(),
            "EOF passed on"
        );
        assert_eq!(
            sink.read(&mut got).await.unwrap(),
            0,
            "the writer was shut down"
        );
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

//! Last stage of both ends: bytes both ways between a QUIC stream and a TCP connection.
//!
//! * TCP → QUIC until the TCP side reads EOF, then the QUIC send stream is finished (FIN).
//! * QUIC → TCP until the QUIC stream ends, then the TCP write side is shut down (FIN), so a
//!   client that half-closes still receives the full response.
//! * A failure on one side ends both: a TCP error (reset) resets the QUIC stream and stops
//!   reading it ([`codes::TCP_RESET`]); a QUIC reset, stop or connection loss aborts the TCP
//!   connection ([`TcpSide::abort`], an RST for [`TcpStream`]).
//! * When no byte moves either way for `idle_timeout`, both sides are aborted
//!   ([`codes::IDLE_TIMEOUT`]).
//!
//! The splice never looks at what is already on the streams: a caller may write a buffered
//! prefix (the ClientHello) to the send stream before calling it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::codes;

/// Copy buffer of one direction.
const BUF_BYTES: usize = 64 * 1024;

/// The TCP end of a splice.
pub trait TcpSide: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ends the connection abruptly. The default drops it (a FIN where the transport has no
    /// reset); [`TcpStream`] sends an RST.
    fn abort(self)
    where
        Self: Sized,
    {
    }
}

impl TcpSide for TcpStream {
    fn abort(self) {
        // A zero linger makes the close an RST; it never blocks (unlike a non-zero linger).
        let _ = self.set_zero_linger();
    }
}

impl TcpSide for DuplexStream {}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions ended with a FIN.
    Finished,
    /// The TCP side failed (reset or write error); the QUIC stream was reset.
    TcpReset,
    /// The QUIC peer reset its stream or stopped reading ours, with this code; TCP was aborted.
    QuicReset(u64),
    /// The QUIC connection was lost; TCP was aborted.
    ConnectionLost,
    /// Nothing moved for the idle timeout; both sides were aborted.
    IdleTimeout,
}

/// What a splice moved, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes read from TCP and written to the QUIC stream.
    pub tcp_to_quic: u64,
    /// Bytes read from the QUIC stream and written to TCP.
    pub quic_to_tcp: u64,
    /// How it ended.
    pub end: SpliceEnd,
}

/// Where a splice counts its bytes as they move (link status and metrics).
#[derive(Clone)]
pub(crate) struct Meter {
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) sent_total: metrics::Counter,
    pub(crate) received_total: metrics::Counter,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            sent: Arc::default(),
            received: Arc::default(),
            sent_total: metrics::Counter::noop(),
            received_total: metrics::Counter::noop(),
        }
    }
}

/// Copies both ways until both directions end, one side fails, or nothing moves for
/// `idle_timeout`.
pub async fn splice_quic_tcp<T: TcpSide>(
    send: SendStream,
    recv: RecvStream,
    tcp: T,
    idle_timeout: Duration,
) -> Spliced {
    splice_metered(send, recv, tcp, idle_timeout, &Meter::default()).await
}

/// Why one direction stopped early.
enum Failure {
    Tcp,
    Quic(u64),
    Lost,
    Idle,
}

/// [`splice_quic_tcp`], counting into `meter`.
pub(crate) async fn splice_metered<T: TcpSide>(
    mut send: SendStream,
    mut recv: RecvStream,
    tcp: T,
    idle_timeout: Duration,
    meter: &Meter,
) -> Spliced {
    let started = Instant::now();
    let last_activity_ms = AtomicU64::new(0);
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let (mut tcp_read, mut tcp_write) = tokio::io::split(tcp);
    let failure = {
        let activity = Activity {
            started,
            last_ms: &last_activity_ms,
        };
        let up = tcp_to_quic(&mut tcp_read, &mut send, &up_bytes, meter, &activity);
        let down = quic_to_tcp(&mut recv, &mut tcp_write, &down_bytes, meter, &activity);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let period = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut check = tokio::time::interval(period);
        loop {
            if up_done && down_done {
                break None;
            }
            tokio::select! {
                result = &mut up, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(failure) => break Some(failure),
                },
                result = &mut down, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(failure) => break Some(failure),
                },
                _ = check.tick() => {
                    let last = Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
                    if started.elapsed().saturating_sub(last) >= idle_timeout {
                        break Some(Failure::Idle);
                    }
                }
            }
        }
    };
    let end = match failure {
        None => SpliceEnd::Finished,
        Some(failure) => {
            let (code, end) = match failure {
                Failure::Tcp => (codes::TCP_RESET, SpliceEnd::TcpReset),
                Failure::Quic(code) => (
                    VarInt::from_u64(code).unwrap_or(codes::TCP_RESET),
                    SpliceEnd::QuicReset(code),
                ),
                Failure::Lost => (codes::TCP_RESET, SpliceEnd::ConnectionLost),
                Failure::Idle => (codes::IDLE_TIMEOUT, SpliceEnd::IdleTimeout),
            };
            // Either may already be finished or reset: nothing more to do then.
            let _ = send.reset(code);
            let _ = recv.stop(code);
            if !matches!(end, SpliceEnd::TcpReset) {
                tcp_read.unsplit(tcp_write).abort();
            }
            end
        }
    };
    Spliced {
        tcp_to_quic: up_bytes.load(Ordering::Relaxed),
        quic_to_tcp: down_bytes.load(Ordering::Relaxed),
        end,
    }
}

/// When the last byte moved, in milliseconds since the splice started.
struct Activity<'a> {
    started: Instant,
    last_ms: &'a AtomicU64,
}

impl Activity<'_> {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }
}

async fn tcp_to_quic<R: AsyncRead + Unpin>(
    tcp: &mut R,
    send: &mut SendStream,
    total: &AtomicU64,
    meter: &Meter,
    activity: &Activity<'_>,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return Err(Failure::Tcp),
        };
        send.write_all(&buf[..n]).await.map_err(write_failure)?;
        let n = n as u64;
        total.fetch_add(n, Ordering::Relaxed);
        meter.sent.fetch_add(n, Ordering::Relaxed);
        meter.sent_total.increment(n);
        activity.touch();
    }
    // EOF from TCP: FIN on QUIC. Already closed means the peer stopped it: a failure.
    send.finish().map_err(|_| Failure::Lost)
}

async fn quic_to_tcp<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    tcp: &mut W,
    total: &AtomicU64,
    meter: &Meter,
    activity: &Activity<'_>,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(ReadError::Reset(code)) => return Err(Failure::Quic(code.into_inner())),
            Err(ReadError::ConnectionLost(_)) => return Err(Failure::Lost),
            Err(_) => return Err(Failure::Lost),
        };
        if tcp.write_all(&buf[..n]).await.is_err() {
            return Err(Failure::Tcp);
        }
        let n = n as u64;
        total.fetch_add(n, Ordering::Relaxed);
        meter.received.fetch_add(n, Ordering::Relaxed);
        meter.received_total.increment(n);
        activity.touch();
    }
    // FIN from QUIC: half-close TCP, the other direction goes on.
    let _ = tcp.flush().await;
    tcp.shutdown().await.map_err(|_| Failure::Tcp)
}

fn write_failure(e: WriteError) -> Failure {
    match e {
        WriteError::Stopped(code) => Failure::Quic(code.into_inner()),
        _ => Failure::Lost,
    }
}

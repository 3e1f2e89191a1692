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
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;

use super::codes;
use crate::copy::{CopyEnd, copy_both_ways};

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

/// [`splice_quic_tcp`], counting into `meter`. The copy is [`crate::copy::copy_both_ways`]
/// (flushes whenever a reader has nothing ready, half-close both ways); this function maps how
/// it ended onto the two transports: a QUIC reset or stop code, a lost connection, a TCP error.
pub(crate) async fn splice_metered<T: TcpSide>(
    send: SendStream,
    recv: RecvStream,
    mut tcp: T,
    idle_timeout: Duration,
    meter: &Meter,
) -> Spliced {
    let mut quic = tokio::io::join(recv, send);
    let on_tcp_read = |n: u64| {
        meter.sent.fetch_add(n, Ordering::Relaxed);
        meter.sent_total.increment(n);
    };
    let on_quic_read = |n: u64| {
        meter.received.fetch_add(n, Ordering::Relaxed);
        meter.received_total.increment(n);
    };
    let copied = copy_both_ways(
        &mut tcp,
        &mut quic,
        idle_timeout,
        &on_tcp_read,
        &on_quic_read,
    )
    .await;
    let (mut recv, mut send) = quic.into_inner();
    let failure = match copied.end {
        CopyEnd::Finished => None,
        CopyEnd::IdleTimeout => Some((codes::IDLE_TIMEOUT, SpliceEnd::IdleTimeout)),
        CopyEnd::Failed(e) => Some(classify(&e)),
    };
    let end = match failure {
        None => SpliceEnd::Finished,
        Some((code, end)) => {
            // Either may already be finished or reset: nothing more to do then.
            let _ = send.reset(code);
            let _ = recv.stop(code);
            if !matches!(end, SpliceEnd::TcpReset) {
                tcp.abort();
            }
            end
        }
    };
    Spliced {
        tcp_to_quic: copied.a_to_b,
        quic_to_tcp: copied.b_to_a,
        end,
    }
}

/// Which side an I/O error of the copy came from: quinn's errors carry their [`ReadError`] or
/// [`WriteError`] inside the `io::Error`; anything else is the TCP side's.
fn classify(e: &std::io::Error) -> (VarInt, SpliceEnd) {
    let inner = e.get_ref();
    if let Some(read) = inner.and_then(|i| i.downcast_ref::<ReadError>()) {
        return match read {
            ReadError::Reset(code) => (*code, SpliceEnd::QuicReset(code.into_inner())),
            _ => (codes::TCP_RESET, SpliceEnd::ConnectionLost),
        };
    }
    if let Some(write) = inner.and_then(|i| i.downcast_ref::<WriteError>()) {
        return match write {
            WriteError::Stopped(code) => (*code, SpliceEnd::QuicReset(code.into_inner())),
            _ => (codes::TCP_RESET, SpliceEnd::ConnectionLost),
        };
    }
    (codes::TCP_RESET, SpliceEnd::TcpReset)
}

//! Last stage: copy bytes both ways until both sides are done, keeping half-close.
//!
//! Each direction copies until EOF, then shuts down the write side of the other stream (so a
//! client that half-closes still receives the full response). The connection ends when both
//! directions are done, or when neither direction moved a byte for `idle_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes moved by a splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the upstream.
    pub client_to_upstream: u64,
    /// From the upstream to the client.
    pub upstream_to_client: u64,
    /// Whether the idle timeout ended it.
    pub idle_timeout: bool,
}

const BUF_BYTES: usize = 64 * 1024;

/// Copies both ways until both directions finish or the connection is idle for `idle_timeout`.
pub async fn splice<C, U>(client: C, upstream: U, idle_timeout: Duration) -> Transferred
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    U: AsyncRead + AsyncWrite + Send + Unpin,
{
    let started = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = one_way(
        &mut client_read,
        &mut upstream_write,
        &last_activity,
        started,
    );
    let down = one_way(
        &mut upstream_read,
        &mut client_write,
        &last_activity,
        started,
    );
    let both = async { tokio::join!(up, down) };
    tokio::pin!(both);
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            (up, down) = &mut both => {
                return Transferred { client_to_upstream: up, upstream_to_client: down, idle_timeout: false };
            }
            _ = check.tick() => {
                let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) >= idle_timeout {
                    return Transferred { idle_timeout: true, ..Transferred::default() };
                }
            }
        }
    }
}

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    last_activity: &AtomicU64,
    started: Instant,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_activity.store(now, Ordering::Relaxed);
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    total
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (client, client_far) = duplex(1024);
        let (upstream, upstream_far) = duplex(1024);
        let task = tokio::spawn(splice(client_far, upstream_far, Duration::from_secs(5)));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        cw.write_all(b"request").await.unwrap();
        cw.shutdown().await.unwrap(); // client half-closes
        let mut got = Vec::new();
        ur.read_to_end(&mut got).await.unwrap(); // upstream sees EOF after the request
        assert_eq!(got, b"request");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            cr.read_to_end(&mut got).await.unwrap(); // the client still gets all of it
            got
        });
        let response = vec![7u8; 300_000];
        uw.write_all(&response).await.unwrap();
        uw.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), response);
        let t = task.await.unwrap();
        assert_eq!((t.client_to_upstream, t.upstream_to_client), (7, 300_000));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (_client, client_far) = duplex(1024);
        let (_upstream, upstream_far) = duplex(1024);
        let t = splice(client_far, upstream_far, Duration::from_secs(60)).await;
        assert!(t.idle_timeout);
    }
}

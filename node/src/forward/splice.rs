//! Last stage: copy bytes both ways until both sides are done, keeping half-close.
//!
//! Each direction copies until EOF, then shuts down the write side of the other stream (so a
//! client that half-closes still receives the full response). The connection ends when both
//! directions are done, or when neither direction moved a byte for `idle_timeout`. The copy is
//! [`crate::copy`]'s, shared with the link.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::copy::{CopyEnd, copy_both_ways};

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

/// Copies both ways until both directions finish, one side fails, or the connection is idle for
/// `idle_timeout` ([`crate::copy::copy_both_ways`]: every write is flushed when its reader has
/// nothing ready, so no byte waits inside a TLS stream).
pub async fn splice<C, U>(mut client: C, mut upstream: U, idle_timeout: Duration) -> Transferred
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    U: AsyncRead + AsyncWrite + Send + Unpin,
{
    let copied = copy_both_ways(&mut client, &mut upstream, idle_timeout, &|_| {}, &|_| {}).await;
    Transferred {
        client_to_upstream: copied.a_to_b,
        upstream_to_client: copied.b_to_a,
        idle_timeout: matches!(copied.end, CopyEnd::IdleTimeout),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

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

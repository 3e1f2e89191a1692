//! Second stage: read the client's ClientHello, bounded in time and size.

use std::time::Duration;

use proto::client_hello::{self, ClientHello, HelloError, MAX_HELLO_BYTES};
use proto::rejection::Rejection;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no routable hello was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadHelloError {
    /// The client sent no complete hello within the hello timeout.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed the connection before a complete hello.
    #[error("connection closed before a complete ClientHello")]
    Closed,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not an acceptable ClientHello.
    #[error(transparent)]
    Invalid(HelloError),
}

impl ReadHelloError {
    /// Why the connection is refused.
    pub fn reason(&self) -> Rejection {
        match self {
            ReadHelloError::Timeout(_) => Rejection::HelloTimeout,
            ReadHelloError::Closed => Rejection::Truncated,
            ReadHelloError::Io(_) => Rejection::ReadError,
            ReadHelloError::Invalid(e) => e.reason(),
        }
    }
}

/// Reads until the buffer holds a complete ClientHello; returns the buffered bytes (to replay)
/// and the parsed hello.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Vec<u8>, ClientHello), ReadHelloError> {
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ReadHelloError::Closed);
            }
            // Never hold more than a hello can be, plus one read.
            let room = (MAX_HELLO_BYTES + chunk.len()).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..n.min(room)]);
            match client_hello::parse(&buf) {
                Ok(h) => return Ok((buf, h)),
                Err(e) if e.is_incomplete() && buf.len() <= MAX_HELLO_BYTES => continue,
                Err(e) if e.is_incomplete() => {
                    return Err(ReadHelloError::Invalid(HelloError::TooLarge));
                }
                Err(e) => return Err(ReadHelloError::Invalid(e)),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadHelloError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (_client, mut server) = duplex(64);
        let err = read_client_hello(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Rejection::HelloTimeout);
    }

    #[tokio::test]
    async fn plain_text_and_early_close_are_refused_with_their_reason() {
        let (mut client, mut server) = duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = read_client_hello(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Rejection::NotTls);

        let (mut client, mut server) = duplex(64);
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
            .await
            .unwrap();
        drop(client);
        let err = read_client_hello(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Rejection::Truncated);
    }

    #[tokio::test]
    async fn an_endless_hello_is_cut_at_the_limit() {
        let (mut client, mut server) = duplex(1 << 16);
        // A handshake record announcing a 60 KB ClientHello, then filler.
        let writer = tokio::spawn(async move {
            let mut header = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xea, 0x60];
            header.resize(70_000, 0);
            let _ = client.write_all(&header).await;
        });
        let err = read_client_hello(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Rejection::Oversized);
        writer.abort();
    }
}

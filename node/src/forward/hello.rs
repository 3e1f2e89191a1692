//! Second stage: read the client's ClientHello, bounded in time and size.

use std::time::Duration;

use proto::hello::{self, ClientHello, HelloError, MAX_HELLO_BYTES};
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
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadHelloError::Timeout(_) => "hello_timeout",
            ReadHelloError::Closed => "truncated",
            ReadHelloError::Io(_) => "read_error",
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
            match hello::parse(&buf) {
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

//! Second stage: one [`proto::link`] frame at a time on a QUIC stream.
//!
//! Reading takes the 4-byte prefix, refuses a length above the message type's limit before
//! allocating, then reads exactly the body; the body always has [`FRAME_BODY_TIMEOUT`], the
//! whole frame optionally a deadline of its own. Writing is bounded by [`WRITE_TIMEOUT`] (a peer
//! that stops granting flow-control credit cannot hold a task forever).

use std::time::Duration;

use proto::link::{self, Message, PREFIX_BYTES};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};

use super::{FRAME_BODY_TIMEOUT, LinkError, WRITE_TIMEOUT};

/// Writes one frame.
pub(crate) async fn write_frame<M: Message>(
    send: &mut SendStream,
    message: &M,
) -> Result<(), LinkError> {
    let frame = link::encode(message)?;
    tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&frame))
        .await
        .map_err(|_| LinkError::Timeout("frame write"))?
        .map_err(write_error)
}

/// Writes raw bytes (a connection's first bytes, behind its header) within the frame write
/// timeout.
pub(crate) async fn write_raw(send: &mut SendStream, bytes: &[u8]) -> Result<(), LinkError> {
    tokio::time::timeout(WRITE_TIMEOUT, send.write_all(bytes))
        .await
        .map_err(|_| LinkError::Timeout("write"))?
        .map_err(write_error)
}

/// Reads one frame. With `deadline`, the whole frame must arrive within it; without, the
/// prefix may take as long as the connection lives (the control stream between two pushes:
/// keep-alive and the idle timeout bound it) and the body [`FRAME_BODY_TIMEOUT`].
pub(crate) async fn read_frame<M: Message>(
    recv: &mut RecvStream,
    deadline: Option<Duration>,
) -> Result<M, LinkError> {
    match deadline {
        Some(deadline) => tokio::time::timeout(deadline, read_unbounded(recv))
            .await
            .map_err(|_| LinkError::Timeout("frame read"))?,
        None => read_unbounded(recv).await,
    }
}

async fn read_unbounded<M: Message>(recv: &mut RecvStream) -> Result<M, LinkError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(read_error)?;
    // Checked before the allocation below.
    let len = link::body_len::<M>(prefix)?;
    let mut body = vec![0u8; len];
    tokio::time::timeout(FRAME_BODY_TIMEOUT, recv.read_exact(&mut body))
        .await
        .map_err(|_| LinkError::Timeout("frame body"))?
        .map_err(read_error)?;
    Ok(link::decode_body(&body)?)
}

/// Maps a quinn read error to the link's.
pub(crate) fn read_error(e: ReadExactError) -> LinkError {
    match e {
        ReadExactError::FinishedEarly(_) => LinkError::Finished,
        ReadExactError::ReadError(ReadError::Reset(code)) => LinkError::Reset(code.into_inner()),
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => LinkError::Connection(e),
        ReadExactError::ReadError(e) => LinkError::Stream(e.to_string()),
    }
}

/// Maps a quinn write error to the link's.
pub(crate) fn write_error(e: WriteError) -> LinkError {
    match e {
        WriteError::Stopped(code) => LinkError::Reset(code.into_inner()),
        WriteError::ConnectionLost(e) => LinkError::Connection(e),
        e => LinkError::Stream(e.to_string()),
    }
}

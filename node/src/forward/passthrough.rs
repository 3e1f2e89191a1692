//! The cross-zone stage (DESIGN.md §7): a connection for a service of another zone goes, never
//! decrypted, over one new stream of a QUIC link to an ingress of that zone. The link choice,
//! the hedge and the retries are [`LinkManager::connect`]'s; here: the buffered ClientHello
//! first, then bytes both ways until both sides close.
//!
//! [`LinkManager::connect`]: crate::link::LinkManager::connect

use proto::link::StreamHeader;
use proto::rejection::Rejection;
use tokio::net::TcpStream;

use super::Context;
use super::connection::{Bytes, Connection, Outcome};
use crate::link::OPEN_HEDGE;

/// Passes `stream` (whose first bytes are `buffered`, the ClientHello's records being the first
/// `hello_bytes` of them) to the remote zone named by `header`. Only the ClientHello travels with
/// the stream's header (a hedged or retried open may show it to a destination whose stream is
/// then abandoned); whatever the client sent after it (TLS 1.3 early data) is written once the
/// stream is accepted, so it reaches one destination only.
pub async fn forward(
    conn: &Connection,
    stream: TcpStream,
    buffered: Vec<u8>,
    hello_bytes: usize,
    header: StreamHeader,
    ctx: &Context,
) -> Outcome {
    let Some(links) = &ctx.links else {
        return Outcome::rejected(Rejection::NoLink, "no zone link is configured");
    };
    // Opening is a boxed future of its own (hedged opens, retries): freed before the splice.
    // The ClientHello goes with the stream's header, in the same round trip.
    let (hello, rest) = buffered.split_at(hello_bytes.min(buffered.len()));
    let mut link_stream = match Box::pin(links.connect(&header, hello, OPEN_HEDGE)).await {
        Ok(s) => s,
        Err(e) => {
            metrics::counter!("zone_egress_dial_failures_total", &conn.labels()).increment(1);
            return Outcome::rejected(Rejection::LinkRefused, e);
        }
    };
    if !rest.is_empty()
        && let Err(e) = link_stream.send.write_all(rest).await
    {
        return Outcome::rejected(Rejection::LinkWrite, e);
    }
    let link = link_stream.link().to_string();
    let sent = buffered.len() as u64;
    drop((header, buffered));
    let _active = conn.connected();
    let moved = link_stream.splice(stream, ctx.limits.idle_timeout).await;
    Outcome::Passthrough {
        link,
        bytes: Bytes {
            up: moved.tcp_to_quic + sent,
            down: moved.quic_to_tcp,
        },
    }
}

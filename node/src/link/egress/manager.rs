//! The [`LinkManager`]: the registry's public face (targets, status, the weighted pick,
//! [`LinkManager::connect`] with its hedge), and the [`LinkStream`] of one forwarded connection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::link::{StreamHeader, StreamReply};
use proto::zone::remote::{RemoteServices, total_weight, weighted_pick};
use quinn::{RecvStream, SendStream};
use rand::Rng;
#[cfg(test)]
use rand::{SeedableRng, rngs::StdRng};
use tokio::sync::watch;
use tracing::debug;

use super::discovery::prune;
use super::link::{Inner, Link, lock};
use super::{
    LinkOrigin, LinkStatus, LinkTarget, MAX_LINKS_TRIED, REFUSAL_WARN_EVERY_MS, SHUTDOWN_GRACE,
};
use crate::link::frame::{read_frame, write_frame, write_raw};
use crate::link::splice::{Spliced, TcpSide, splice_metered};
use crate::link::{LinkError, OPEN_TIMEOUT, REPLY_TIMEOUT, codes};

/// The egress's links. Dropping it stops every link; [`LinkManager::shutdown`] also closes the
/// connections cleanly.
pub struct LinkManager {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for LinkManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkManager")
            .field("zone", &self.inner.zone)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl LinkManager {
    /// The local address of the link socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Replaces the static targets: new names are dialed, removed ones closed (unless another
    /// link still advertises them), a name whose address or zone changed is redialed.
    pub fn set_targets(&self, targets: Vec<LinkTarget>) {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let wanted: BTreeMap<String, LinkTarget> = targets
            .into_iter()
            .map(|target| (target.name.clone(), target))
            .collect();
        let mut registry = inner.registry();
        let mut changed = Vec::new();
        for (name, entry) in registry.iter_mut() {
            match wanted.get(name) {
                Some(target) if entry.link.same_target(target) => entry.is_static = true,
                Some(_) => changed.push(name.clone()),
                None => entry.is_static = false,
            }
        }
        for name in changed {
            if let Some(entry) = registry.remove(&name) {
                entry.stop(codes::REMOVED, "target changed");
            }
        }
        for (name, target) in wanted {
            if !registry.contains_key(&name) {
                inner.start_link(&mut registry, target, LinkOrigin::Static, None);
            }
        }
        prune(&mut registry);
        inner.publish(&registry);
    }

    /// Every link, in name order.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.inner
            .registry()
            .values()
            .map(|entry| entry.status())
            .collect()
    }

    /// The merged view of remote services over the links that are up.
    pub fn services(&self) -> watch::Receiver<Arc<RemoteServices>> {
        self.inner.services_tx.subscribe()
    }

    /// A link for `service` of `mesh` with the subset `tags`, chosen at random in proportion to
    /// the instances each up link advertises; `None` when no link that is up offers it.
    pub fn pick(
        &self,
        mesh: &str,
        service: &str,
        tags: &BTreeMap<String, String>,
    ) -> Option<String> {
        self.pick_except(mesh, service, tags, &[])
    }

    /// [`pick`](Self::pick) among the links not named in `tried` (a retry after a link failed
    /// or did not answer in time).
    pub fn pick_except(
        &self,
        mesh: &str,
        service: &str,
        tags: &BTreeMap<String, String>,
        tried: &[String],
    ) -> Option<String> {
        let view = self.inner.services_tx.borrow().clone();
        let mut candidates = view.candidates(mesh, service, tags);
        {
            let registry = self.inner.registry();
            candidates.retain(|(name, _)| {
                !tried.iter().any(|t| t == name)
                    && registry.get(name).is_some_and(|e| e.link.is_up())
            });
        }
        let total = total_weight(&candidates);
        if total == 0 {
            return None;
        }
        let roll = lock(&self.inner.pick_rng).random_range(0..total);
        weighted_pick(&candidates, roll).map(str::to_string)
    }

    /// Opens a stream for one forwarded connection on one of the links that offer `header`'s
    /// (mesh, service, tags): picks at random in proportion to the instances each up link
    /// advertises, and when that link refuses, or does not answer within `hedge` while another
    /// untried link offers the service, tries another (at most [`MAX_LINKS_TRIED`]). `prefix`
    /// (the connection's ClientHello) is written right behind the header, so the ingress passes
    /// it to the destination as soon as its dial succeeds, in the same round trip as the reply:
    /// a new connection pays one link RTT for the whole open instead of two. A refused or
    /// abandoned attempt can have shown the destination a ClientHello and nothing else (an
    /// aborted handshake, no application data), so trying the next link with the same prefix is
    /// safe; a link whose ingress died answers nothing until its idle timeout, which is why
    /// there is a hedge.
    ///
    /// # Errors
    /// [`LinkError::NoneAccepted`] naming the last link's error, or that no link that is up
    /// offers the service.
    pub async fn connect(
        &self,
        header: &StreamHeader,
        prefix: &[u8],
        hedge: Duration,
    ) -> Result<LinkStream, LinkError> {
        let offered = self
            .inner
            .services_tx
            .borrow()
            .candidates(&header.mesh, &header.service, &header.tags)
            .len();
        let mut tried: Vec<String> = Vec::new();
        let mut last = String::from("no link that is up offers the service");
        while tried.len() < MAX_LINKS_TRIED {
            let Some(link) = self.pick_except(&header.mesh, &header.service, &header.tags, &tried)
            else {
                break;
            };
            let attempt = self.open(header, prefix, &link);
            let result = if offered > tried.len() + 1 {
                match tokio::time::timeout(hedge, attempt).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {hedge:?}")),
                }
            } else {
                attempt.await.map_err(|e| e.to_string())
            };
            match result {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last = format!("link {link}: {e}");
                    tried.push(link);
                }
            }
        }
        Err(LinkError::NoneAccepted(last))
    }

    /// Opens a stream for one forwarded connection on the link named `link`: writes `header`
    /// and then `prefix` (the first bytes of the connection, without waiting for the reply),
    /// waits for the ingress's reply (within [`REPLY_TIMEOUT`]) and returns the stream ready for
    /// the rest of the raw bytes, or [`LinkError::Refused`] with the ingress's reason.
    pub async fn open(
        &self,
        header: &StreamHeader,
        prefix: &[u8],
        link: &str,
    ) -> Result<LinkStream, LinkError> {
        let link = self
            .inner
            .registry()
            .get(link)
            .map(|entry| entry.link.clone())
            .ok_or_else(|| LinkError::UnknownLink(link.to_string()))?;
        let result = open_on(&link, header, prefix).await;
        match &result {
            Ok(_) => metrics::counter!(
                "zone_egress_link_streams_total",
                "link" => link.name.clone(),
                "zone" => link.zone.clone()
            )
            .increment(1),
            Err(e) => {
                let refused = link.streams_refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now_ms = crate::unix_ms();
                let last = link.last_refusal_warn_ms.load(Ordering::Relaxed);
                if now_ms.saturating_sub(last) >= REFUSAL_WARN_EVERY_MS
                    && link
                        .last_refusal_warn_ms
                        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        link = %link.name, zone = %link.zone, service = %header.service,
                        error = %e, refused_total = refused,
                        "a link could not open a stream for a connection (logged at most every 10 s per link)"
                    );
                }
                debug!(link = %link.name, service = %header.service, error = %e, "link stream refused");
                metrics::counter!(
                    "zone_egress_link_refused_total",
                    "link" => link.name.clone(),
                    "reason" => e.reason()
                )
                .increment(1);
            }
        }
        result
    }

    /// Closes every link (application close code 0, `draining`) and waits briefly for the
    /// peers to learn it. Later calls to [`LinkManager::set_targets`] do nothing.
    pub async fn shutdown(&self) {
        self.inner.stop_all(b"draining");
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.inner.endpoint.wait_idle()).await;
    }

    /// Seeds the generator behind [`LinkManager::pick`] (tests).
    #[cfg(test)]
    pub(crate) fn seed_picks(&self, seed: u64) {
        *lock(&self.inner.pick_rng) = StdRng::seed_from_u64(seed);
    }
}

impl Drop for LinkManager {
    fn drop(&mut self) {
        self.inner.stop_all(b"draining");
    }
}

/// A forwarded connection's stream, accepted by the ingress, which already has the prefix given
/// to [`LinkManager::open`] (the ClientHello): write whatever else was buffered to
/// [`LinkStream::send`], then [`LinkStream::splice`].
pub struct LinkStream {
    /// Towards the remote endpoint.
    pub send: SendStream,
    /// From the remote endpoint.
    pub recv: RecvStream,
    guard: OpenGuard,
}

impl fmt::Debug for LinkStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkStream")
            .field("link", &self.guard.link.name)
            .field("id", &self.send.id())
            .finish()
    }
}

impl LinkStream {
    /// The link's name.
    pub fn link(&self) -> &str {
        &self.guard.link.name
    }

    /// Splices the stream with `tcp` (see [`crate::link::splice_quic_tcp`]), counting bytes into the
    /// link's status and metrics. The stream counts as open until this returns.
    pub async fn splice<T: TcpSide>(self, tcp: T, idle_timeout: Duration) -> Spliced {
        let LinkStream { send, recv, guard } = self;
        splice_metered(send, recv, tcp, idle_timeout, &guard.link.meter).await
    }
}

/// Counts one open stream on a link while alive.
struct OpenGuard {
    pub(super) link: Arc<Link>,
}

impl OpenGuard {
    fn new(link: Arc<Link>) -> OpenGuard {
        link.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenGuard { link }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.link.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The send side of a stream being opened: reset if the open is abandoned (a hedge gave up on
/// it), so the ingress drops the stream instead of passing the prefix on as a finished
/// connection (quinn finishes a dropped stream cleanly otherwise).
struct ResetOnDrop(Option<SendStream>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(send) = self.0.as_mut() {
            let _ = send.reset(codes::TIMEOUT);
        }
    }
}

/// Opens a stream on `link`, writes the header and `prefix`, and reads the reply.
async fn open_on(
    link: &Arc<Link>,
    header: &StreamHeader,
    prefix: &[u8],
) -> Result<LinkStream, LinkError> {
    let conn = link
        .connection()
        .ok_or_else(|| LinkError::Down(link.name.clone()))?;
    let guard = OpenGuard::new(link.clone());
    let (send, mut recv) = tokio::time::timeout(OPEN_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| LinkError::Timeout("open stream"))??;
    let mut pending = ResetOnDrop(Some(send));
    let reply = async {
        let Some(send) = pending.0.as_mut() else {
            return Err(LinkError::Stream("the stream is gone".into()));
        };
        write_frame(send, header).await?;
        write_raw(send, prefix).await?;
        read_frame::<StreamReply>(&mut recv, Some(REPLY_TIMEOUT)).await
    }
    .await;
    let Some(mut send) = pending.0.take() else {
        return Err(LinkError::Stream("the stream is gone".into()));
    };
    match reply {
        Ok(StreamReply::Accepted) => Ok(LinkStream { send, recv, guard }),
        Ok(StreamReply::Refused { reason }) => {
            let _ = send.reset(codes::REFUSED);
            Err(LinkError::Refused(reason))
        }
        Err(e) => {
            let code = match e {
                LinkError::Timeout(_) => codes::TIMEOUT,
                _ => codes::PROTOCOL_ERROR,
            };
            let _ = send.reset(code);
            let _ = recv.stop(code);
            Err(e)
        }
    }
}

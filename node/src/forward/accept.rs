//! Accept loop: bounded concurrency, in-flight tracking, stop on drain.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::Context;

/// Handle on the forwarding listener.
pub struct Handle {
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// [`super::keep_pools`], stopped with the listener.
    pools: JoinHandle<()>,
    permits: Arc<Semaphore>,
    max_connections: usize,
}

/// Starts accepting on `listener`, and keeping the HTTP pools in line with the zone's
/// resources (`changes`).
pub fn spawn(listener: TcpListener, ctx: Context, changes: crate::store::Changes) -> Handle {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Known series start at 0, so a dashboard shows "none yet" as 0 rather than no data, and a
    // rate over the first refusal is not lost (Prometheus' advice on missing metrics).
    metrics::counter!("zone_egress_connections_total").increment(0);
    for reason in proto::rejection::Rejection::ALL {
        metrics::counter!("zone_egress_connections_rejected_total", "reason" => reason.label())
            .increment(0);
    }
    let max_connections = ctx.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max_connections));
    let ctx = Arc::new(ctx);
    let pools = tokio::spawn(super::keep_pools(changes, ctx.clone()));
    let task = tokio::spawn(accept_loop(listener, permits.clone(), stop_rx, ctx));
    Handle {
        stop_tx,
        task: Some(task),
        pools,
        permits,
        max_connections,
    }
}

impl Handle {
    /// Closes the listener: no new connections, in-flight ones go on.
    pub async fn stop_accepting(&mut self) {
        let _ = self.stop_tx.send(true);
        self.pools.abort();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Connections being served right now.
    pub fn in_flight(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }

    /// Stops accepting and waits up to `grace` for in-flight connections to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop_accepting().await;
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, self.permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.in_flight(),
                "drain grace period over; closing remaining connections"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut stop_rx: watch::Receiver<bool>,
    ctx: Arc<Context>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics::counter!("zone_egress_connections_total").increment(1);
        let Some(ticket) =
            super::budget::Ticket::admit(&ctx.budget, peer.ip(), std::time::Instant::now())
        else {
            let outcome = super::Outcome::rejected(
                super::Rejection::HandshakeBudget,
                "this source failed too many mTLS handshakes lately; closed before any TLS",
            );
            super::Connection::new(peer).finish(&outcome, ctx.access_log, &ctx.logged);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let outcome = super::Outcome::rejected(
                super::Rejection::MaxConnections,
                "connection limit reached; closed",
            );
            super::Connection::new(peer).finish(&outcome, ctx.access_log, &ctx.logged);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            super::serve(stream, peer, ticket, ctx).await;
        });
    }
}

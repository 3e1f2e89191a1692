//! The upstream side of the HTTP stage: one hyper client pool per external service (mesh,
//! `kuma.io/service`), whose connector dials the service's endpoints in round-robin order with
//! `dial.rs` (TLS originated per `networking.tls`, ALPN `http/1.1` or `h2`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use http::Uri;
use http::header::HeaderValue;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proto::resource::{ExternalService, Host, Protocol};

use super::POOL_IDLE_TIMEOUT;
use crate::forward::dial::{self, DialError};

/// The pools of every HTTP external service this node has proxied, keyed by (mesh,
/// `kuma.io/service`). A pool is replaced when the service's endpoints change.
#[derive(Default)]
pub struct Pools {
    pub(super) pools: Mutex<HashMap<(String, String), Arc<Upstream>>>,
}

impl Pools {
    /// The pool for `endpoints` (every ExternalService of one service this zone exits to;
    /// non-empty) reached by the SNI that named `named`.
    pub fn get(
        &self,
        mesh: &str,
        named: &ExternalService,
        endpoints: &[ExternalService],
    ) -> Arc<Upstream> {
        let key = (mesh.to_string(), named.service().to_string());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            if pool.endpoints.as_slice() == endpoints && pool.named == *named {
                return pool.clone();
            }
        }
        let pool = Arc::new(Upstream::new(mesh, named, endpoints));
        pools.insert(key, pool.clone());
        pool
    }

    /// Drops the pools of services the zone no longer has: the mesh is gone, or no
    /// ExternalService of it carries the service (and it has no MeshExternalService, whose
    /// pools are kept while any exists). Connections using a dropped pool keep it until they
    /// end. Returns how many were dropped.
    pub fn retain_existing(&self, resources: &crate::store::Resources) -> usize {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let before = pools.len();
        pools.retain(|(mesh, service), _| {
            resources.mesh(mesh).is_some()
                && (resources
                    .external_services_of(mesh, service)
                    .next()
                    .is_some()
                    || resources.mesh_external_services(mesh).next().is_some())
        });
        before - pools.len()
    }

    /// How many pools are held.
    pub fn len(&self) -> usize {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no pool is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One external service's upstream side: the pooled client and what a request needs.
pub struct Upstream {
    pub(super) client: Client<Connector, Incoming>,
    pub(super) endpoints: Arc<Vec<ExternalService>>,
    pub(super) named: ExternalService,
    /// `Host`/`:authority` for every request (`None`: keep the client's).
    pub(super) host: Option<HeaderValue>,
    /// HTTP/2 towards the upstream.
    pub(super) h2: bool,
    pub(super) labels: [(&'static str, String); 2],
}

impl Upstream {
    pub(super) fn new(
        mesh: &str,
        named: &ExternalService,
        endpoints: &[ExternalService],
    ) -> Upstream {
        let protocol = named.protocol();
        let h2 = protocol.upstream_h2();
        let endpoints = Arc::new(endpoints.to_vec());
        let connector = Connector {
            endpoints: endpoints.clone(),
            next: Arc::new(AtomicUsize::new(0)),
            alpn: if h2 { &[b"h2"] } else { &[b"http/1.1"] },
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2);
        // The named endpoint's DNS host, else the first DNS host among the endpoints (one
        // `Host` for the pool: a MeshExternalService may mix IPs and names).
        let host = std::iter::once(named)
            .chain(endpoints.iter())
            .find_map(|e| match &e.networking.address.host {
                Host::Dns(name) => HeaderValue::from_str(name).ok(),
                Host::Ip(_) => None,
            });
        Upstream {
            client: builder.build(connector),
            endpoints,
            named: named.clone(),
            host,
            h2,
            labels: [
                ("mesh", mesh.to_string()),
                ("service", named.service().to_string()),
            ],
        }
    }

    /// The protocol of the service.
    pub fn protocol(&self) -> Protocol {
        self.named.protocol()
    }
}

/// Dials the endpoints of a service for the pool: round-robin start, the next endpoint when one
/// cannot be reached (nothing was sent yet).
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) endpoints: Arc<Vec<ExternalService>>,
    pub(super) next: Arc<AtomicUsize>,
    pub(super) alpn: &'static [&'static [u8]],
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let endpoints = self.endpoints.clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let alpn = self.alpn;
        Box::pin(async move {
            let mut failure = None;
            for i in 0..endpoints.len() {
                let endpoint = &endpoints[(start + i) % endpoints.len()];
                match dial::dial(endpoint, alpn).await {
                    Ok(io) => return Ok(Conn(TokioIo::new(io))),
                    Err(e) => {
                        tracing::debug!(endpoint = %endpoint.name, error = %e, "dial failed");
                        failure = Some(e);
                    }
                }
            }
            Err(failure.unwrap_or_else(|| DialError::Connect {
                target: String::new(),
                message: "no endpoint".into(),
            }))
        })
    }
}

/// A pooled upstream connection.
pub(super) struct Conn(TokioIo<Box<dyn dial::Upstream>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

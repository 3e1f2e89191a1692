//! HTTP stage (external services tagged `kuma.io/protocol: http`, `http2` or `grpc`): after the
//! client's mTLS is terminated, the egress speaks HTTP on both sides, as Kuma's egress does (an
//! HTTP connection manager whose route has `autoHostRewrite: true` and `timeout: 0s`; Kuma v2.14
//! `pkg/xds/generator/egress/testdata/01.externalservice-only.golden.yaml`).
//!
//! * Downstream: HTTP/1.1 or HTTP/2 (ALPN when the client offers it, else the HTTP/2 preface
//!   decides, like Envoy's `codec_type: AUTO`), served by hyper. Header block ≤
//!   [`MAX_HEADER_BYTES`] (HTTP/1.1: `431`, hyper's answer for an oversized head), the head of a
//!   request within `limits.hello_timeout`, a malformed request line or conflicting
//!   `Content-Length` values refused with `400`. A request with both `Content-Length` and
//!   `Transfer-Encoding` is read as chunked, forwarded without `Content-Length`, and the
//!   connection is closed after the answer (hyper's handling, RFC 9112 §6.3 item 3), so a
//!   request smuggled behind it is never read as a request.
//! * Upstream: one pool of connections per external service (all its endpoints; a connection
//!   goes to the endpoints in round-robin order, the next one when one cannot be reached),
//!   HTTP/1.1 for `http`, HTTP/2 for `http2` and `grpc`, TLS originated per `networking.tls`
//!   with ALPN `http/1.1` or `h2`. Many client connections share the pooled connections.
//! * `Host` (HTTP/1.1) or `:authority` (HTTP/2) becomes the external service's host when it is
//!   a DNS name (Envoy's `autoHostRewrite` on Kuma's `STRICT_DNS` cluster: the name, no port);
//!   an IP-address service keeps what the client sent. No `x-forwarded-*` header is added.
//! * Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and what it names, `Proxy-Connection`,
//!   `Keep-Alive`, `TE` except `trailers`, `Transfer-Encoding`, `Upgrade`) are not forwarded,
//!   except `Upgrade`/`Connection: upgrade` of an upgrade request (e.g. WebSocket), whose `101`
//!   turns both connections into a byte splice.
//! * Bodies stream both ways without buffering; there is no request timeout (Kuma: `timeout:
//!   0s`). A connection silent both ways for `limits.idle_timeout` is closed.
//! * When the upstream cannot be used the client gets a short `text/plain` answer naming the
//!   egress and the reason: `503` (the endpoints refused or did not resolve, or TLS towards them
//!   failed), `504` (connecting timed out), `502` (the upstream reset or answered something
//!   that is not HTTP).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::dial::DialError;
use crate::config::Limits;

mod upstream;

pub use upstream::{Pools, Upstream};

/// Largest request head (request line and headers) a client may send, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in an HTTP/1.1 request (Envoy's default `max_headers_count`).
pub const MAX_HEADERS: usize = 100;
/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A body either way: the other side's streamed body, or a short answer of the egress.
type Body = BoxBody<Bytes, hyper::Error>;

/// What one client connection did, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    /// Requests answered (by the upstream or by the egress).
    pub requests: u64,
    /// Answers the egress made itself because the upstream failed (502/503/504).
    pub upstream_failures: u64,
    /// Whether the idle timeout ended the connection.
    pub idle_timeout: bool,
    /// TLS payload bytes read from the client (requests, including heads).
    pub bytes_up: u64,
    /// TLS payload bytes written to the client (answers, including heads).
    pub bytes_down: u64,
}

/// The HTTP version the client side speaks, from the ALPN protocol the handshake negotiated
/// (RFC 7301: `h2` or `http/1.1` binds the connection to it); without ALPN the first bytes decide
/// (the HTTP/2 preface or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    /// ALPN `http/1.1`.
    Http1,
    /// ALPN `h2`.
    Http2,
    /// No ALPN (a Kuma sidecar offers only `kuma`): auto-detected.
    Auto,
}

impl ClientProtocol {
    /// From the negotiated ALPN protocol name.
    pub fn from_alpn(alpn: Option<&[u8]>) -> ClientProtocol {
        match alpn {
            Some(b"h2") => ClientProtocol::Http2,
            Some(b"http/1.1") => ClientProtocol::Http1,
            _ => ClientProtocol::Auto,
        }
    }
}

/// Serves HTTP on a terminated client connection until the client closes it, it errs, or it is
/// silent both ways for `limits.idle_timeout` (also while waiting for the next request of a
/// keep-alive connection, and for a request head that trickles in).
///
/// With `denied` (the mesh's traffic permissions refuse this client), every request is answered
/// `403` with reason `permission` and that detail, and nothing goes upstream.
pub async fn serve<S>(
    stream: S,
    protocol: ClientProtocol,
    upstream: Arc<Upstream>,
    denied: Option<String>,
    limits: &Limits,
) -> Served
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Arc::new(Activity {
        clock: crate::copy::IdleClock::new(),
        read: AtomicU64::new(0),
        written: AtomicU64::new(0),
    });
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let counts = Arc::new(Counts::default());
    let idle_timeout = limits.idle_timeout;
    let labels = upstream.labels.clone();
    let denied: Option<Arc<str>> = denied.map(Arc::from);
    let service = {
        let counts = counts.clone();
        hyper::service::service_fn(move |req| {
            let upstream = upstream.clone();
            let counts = counts.clone();
            let denied = denied.clone();
            async move {
                if let Some(detail) = denied {
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok::<_, Infallible>(answer(
                        &upstream,
                        StatusCode::FORBIDDEN,
                        "permission",
                        &detail,
                    ));
                }
                Ok::<_, Infallible>(handle(req, &upstream, &counts, idle_timeout).await)
            }
        })
    };
    // The same settings on hyper's per-version builders and on hyper-util's `auto` ones (their
    // methods share names, not a type). hyper's head timer also runs between the requests of a
    // keep-alive connection: it is the idle timeout, not the ClientHello's.
    macro_rules! http1_limits {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .max_headers(MAX_HEADERS)
                .max_buf_size(MAX_HEADER_BYTES)
        };
    }
    macro_rules! http2_limits {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BYTES as u32)
        };
    }
    type Error = Box<dyn std::error::Error + Send + Sync>;
    let connection: Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> = match protocol {
        // hyper-util's `auto` ignores `http1_only`/`http2_only` when it serves upgrades: a
        // connection bound by ALPN gets that version's own connection.
        ClientProtocol::Http1 => {
            let mut h1 = hyper::server::conn::http1::Builder::new();
            http1_limits!(h1);
            let conn = h1.serve_connection(io, service).with_upgrades();
            Box::pin(async move { conn.await.map_err(Error::from) })
        }
        ClientProtocol::Http2 => {
            let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2_limits!(h2);
            let conn = h2.serve_connection(io, service);
            Box::pin(async move { conn.await.map_err(Error::from) })
        }
        ClientProtocol::Auto => {
            let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            http1_limits!(auto.http1());
            http2_limits!(auto.http2());
            Box::pin(async move { auto.serve_connection_with_upgrades(io, service).await })
        }
    };
    let idle = activity.clock.expired(limits.idle_timeout);
    let timed_out = tokio::select! {
        result = connection => {
            if let Err(error) = result {
                // hyper answered 400/431 itself (a malformed or oversized head), or the
                // connection broke.
                metrics::counter!("zone_egress_http_connection_errors_total", &labels).increment(1);
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            false
        }
        () = idle => true,
    };
    Served {
        requests: counts.requests.load(Ordering::Relaxed),
        upstream_failures: counts.failures.load(Ordering::Relaxed),
        idle_timeout: timed_out,
        bytes_up: activity.read.load(Ordering::Relaxed),
        bytes_down: activity.written.load(Ordering::Relaxed),
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failures: AtomicU64,
}

/// Forwards one request and returns the answer; an upgraded connection is spliced until it is
/// silent both ways for `idle_timeout`.
async fn handle(
    mut req: Request<Incoming>,
    upstream: &Upstream,
    counts: &Counts,
    idle_timeout: Duration,
) -> Response<Body> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if req.method() == http::Method::CONNECT {
        return answer(
            upstream,
            StatusCode::FORBIDDEN,
            "connect_method",
            "the egress does not tunnel CONNECT to an external service",
        );
    }
    // hyper reads `chunked`; any other transfer coding would reach the upstream undone.
    let other_coding = tokens(req.headers(), &header::TRANSFER_ENCODING)
        .any(|c| !c.eq_ignore_ascii_case("chunked"));
    if other_coding {
        return answer(
            upstream,
            StatusCode::NOT_IMPLEMENTED,
            "transfer_coding",
            "only the chunked transfer coding is accepted (RFC 9112 §6.1)",
        );
    }
    let upgrade = upgrade_of(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let client_host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    remove_hop_by_hop(&mut parts.headers);
    let host = match (&upstream.host, client_host) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => match HeaderValue::from_str(&h) {
            Ok(v) => v,
            Err(_) => {
                return answer(
                    upstream,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid Host",
                );
            }
        },
        (None, None) => {
            return answer(upstream, StatusCode::BAD_REQUEST, "bad_request", "no Host");
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authority = if upstream.h2 {
        host.to_str().unwrap_or("upstream").to_string()
    } else {
        // The pool key only: HTTP/1.1 sends the origin form and the `Host` header.
        "upstream".to_string()
    };
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return answer(
                upstream,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid request target",
            );
        }
    };
    if upstream.h2 {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
    } else {
        parts.version = Version::HTTP_11;
        parts.headers.insert(header::HOST, host);
    }
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    let started = Instant::now();
    let result = upstream
        .client
        .request(Request::from_parts(parts, body))
        .await;
    metrics::histogram!("zone_egress_http_upstream_seconds", &upstream.labels)
        .record(started.elapsed().as_secs_f64());
    let mut response = match result {
        Ok(r) => r,
        Err(error) => {
            let (answer, upstream_at_fault) = upstream_failure(upstream, &error);
            if upstream_at_fault {
                counts.failures.fetch_add(1, Ordering::Relaxed);
            }
            return answer;
        }
    };
    count(upstream, response.status());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(client), Ok(upstream)) => {
                        let (mut client, mut upstream) =
                            (TokioIo::new(client), TokioIo::new(upstream));
                        crate::copy::copy_both_ways(
                            &mut client,
                            &mut upstream,
                            idle_timeout,
                            &|_| {},
                            &|_| {},
                        )
                        .await;
                    }
                    (c, u) => tracing::debug!(
                        client = ?c.err(), upstream = ?u.err(), "upgrade did not complete"
                    ),
                }
            });
            return response.map(|b| b.boxed());
        }
    }
    remove_hop_by_hop(response.headers_mut());
    response.map(|b| b.boxed())
}

fn count(upstream: &Upstream, status: StatusCode) {
    let [(m, mesh), (s, service)] = &upstream.labels;
    metrics::counter!(
        "zone_egress_http_requests_total",
        &[
            (*m, mesh.clone()),
            (*s, service.clone()),
            ("code", status.as_str().to_string())
        ]
    )
    .increment(1);
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` and `Upgrade`).
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants =
        tokens(req.headers(), &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The comma-separated elements of every `name` field (RFC 9110 §5.6.1), trimmed; a value that
/// is not visible ASCII counts as one element `?` (so it never matches a known token).
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 (and `Proxy-Connection`, `Keep-Alive`):
/// `Connection` and every header it names, `TE` unless it is `trailers` (gRPC needs it),
/// `Transfer-Encoding`, `Upgrade`, `Trailer` is kept (it describes the body's trailers, which
/// are forwarded).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if name != header::TE {
            headers.remove(&name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(&name);
    }
    let te_trailers = tokens(headers, &header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The answer when the request could not be forwarded, and whether the upstream is at fault:
/// the client's body failed (`400`, not the upstream's fault), or the upstream could not be used.
fn upstream_failure(
    upstream: &Upstream,
    error: &hyper_util::client::legacy::Error,
) -> (Response<Body>, bool) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                let cause = std::error::Error::source(h)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| h.to_string());
                let detail = format!("the request body could not be read: {cause}");
                let response = answer(upstream, StatusCode::BAD_REQUEST, "request_body", &detail);
                return (response, false);
            }
        }
        if let Some(dial) = e.downcast_ref::<DialError>() {
            metrics::counter!("zone_egress_dial_failures_total", &upstream.labels).increment(1);
            let status = if dial.timed_out() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return (
                answer(upstream, status, dial.reason().label(), &dial.to_string()),
                true,
            );
        }
        source = e.source();
    }
    let detail = match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    };
    (
        answer(upstream, StatusCode::BAD_GATEWAY, "upstream_http", &detail),
        true,
    )
}

/// A short answer of the egress itself: `zone-egress: <reason>: <detail>`, with the reason also
/// in `x-zone-egress-reason`.
fn answer(
    upstream: &Upstream,
    status: StatusCode,
    reason: &'static str,
    detail: &str,
) -> Response<Body> {
    count(upstream, status);
    let body = format!("zone-egress: {reason}: {detail}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-zone-egress-reason", HeaderValue::from_static(reason));
    response
}

/// What moved on a client connection, and when last.
struct Activity {
    clock: crate::copy::IdleClock,
    /// Bytes read from the client.
    read: AtomicU64,
    /// Bytes written to the client.
    written: AtomicU64,
}

/// A stream that records activity on every read and write that moved bytes.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.read.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.clock.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.activity.written.fetch_add(n as u64, Ordering::Relaxed);
                self.activity.clock.touch();
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

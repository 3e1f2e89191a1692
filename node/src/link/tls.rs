//! First stage of a link: the mTLS and QUIC transport configurations of both ends.
//!
//! * TLS 1.3 only (QUIC requires it), the ring provider chosen explicitly, ALPN `ze-link/1`
//!   required on both sides.
//! * Server (ingress): presents `cert_pem`, requires a client certificate chaining to the link CA
//!   (`ca_pem`); anything else fails the handshake.
//! * Client (egress): presents `cert_pem`, verifies the ingress's chain to the link CA and the
//!   DNS name [`LINK_SERVER_NAME`] (see the module documentation of [`crate::link`]).
//! * Transport: keep-alive every [`KEEP_ALIVE`] below the [`MAX_IDLE`] timeout, receive windows
//!   raised for bulk transfer, [`MAX_STREAMS`] concurrent bidirectional streams accepted by the
//!   ingress; the egress accepts no stream from the ingress.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, version};

use super::{ALPN, LinkError};
use crate::pki::{parse_certificates, parse_private_key};

/// The server name the egress verifies in every ingress certificate (a DNS SAN).
pub const LINK_SERVER_NAME: &str = "ze-link";

/// Interval of QUIC keep-alive packets (below [`MAX_IDLE`]).
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A link without any packet for this long is closed.
pub const MAX_IDLE: Duration = Duration::from_secs(3);
/// Receive window of one stream: 4 MiB (200 MB/s per stream at 20 ms RTT, 100 MB/s at 40 ms).
///
/// It was 1 MiB, which capped one connection over a link at 50 MB/s at 20 ms RTT: measured 31-35
/// MB/s for one flow through the delay line, against 57-64 MB/s with 4 MiB (BENCHMARKS.md, "Link
/// settings"). 4 MiB is below what Linux lets one TCP socket's receive buffer grow to by
/// default (`tcp_rmem` 6 MiB), so a stream is allowed what the TCP+TLS chain it replaces is.
///
/// QUIC flow control has two levels, and the connection-level credit comes back only as the
/// application reads a stream. A stream whose TCP side stops reading (a client that stalls, a
/// destination that stops reading) stops being read, so it holds up to one stream window of
/// connection credit. If `MAX_STREAMS` such streams could exhaust the connection window, a few
/// stalled clients would starve every other stream of the link (seen: 4 × 8 MiB = 32 MiB). So
/// the connection windows are sized to `MAX_STREAMS × STREAM_WINDOW_BYTES`
/// ([`CONNECTION_WINDOW_BYTES`]): stalled streams can never exhaust them, each stream only ever
/// blocks itself. This is HTTP/2 proxies' rule too (Envoy returns connection-level window as
/// soon as data leaves the codec into per-stream buffers, and bounds each stream's buffer).
///
/// Memory: nothing is reserved; a stalled stream holds at most one stream window in the
/// receiving end's buffer (4 MiB, plus one 64 KiB copy buffer of its splice while bytes wait),
/// the same order as the kernel socket buffers a TCP proxy holds for a stalled connection.
/// Worst case per link: every one of the `MAX_STREAMS` streams stalled with a full window,
/// 16 GiB, which needs 4096 stalled clients each sending 4 MiB that the other side never
/// reads; `limits.idle_timeout` ends stalls that never resume.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Bidirectional streams an ingress accepts concurrently on one link.
pub const MAX_STREAMS: u32 = 4096;
/// Receive (and send) window of a connection: every stream's window at once, so stalled streams
/// never block the others (see [`STREAM_WINDOW_BYTES`]).
pub const CONNECTION_WINDOW_BYTES: u64 = STREAM_WINDOW_BYTES as u64 * MAX_STREAMS as u64;

/// The link's certificate material: the link CA, this node's certificate chain and its key, all
/// PEM. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct LinkTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl LinkTls {
    /// Material from PEM bytes (`link.ca`, `link.cert`, `link.key`); checked when a
    /// configuration is built.
    pub fn new(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> LinkTls {
        LinkTls {
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<LinkTls, LinkError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| LinkError::Config(format!("cannot read {}: {e}", path.display())))
        };
        Ok(LinkTls::new(read(ca)?, read(cert)?, read(key)?))
    }

    /// The ingress side: requires a client certificate chaining to the link CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, LinkError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(config_error)?;
        let (chain, key) = self.identity()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(config_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(config_error)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(transport(MAX_STREAMS)));
        Ok(config)
    }

    /// The egress side: verifies the ingress's chain to the link CA and [`LINK_SERVER_NAME`].
    pub fn client_config(&self) -> Result<quinn::ClientConfig, LinkError> {
        let provider = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(config_error)?;
        let (chain, key) = self.identity()?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13])
            .map_err(config_error)?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(config_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        // The ingress never opens streams towards the egress.
        config.transport_config(Arc::new(transport(0)));
        Ok(config)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, LinkError> {
        let mut roots = RootCertStore::empty();
        for cert in
            parse_certificates(&self.ca_pem).map_err(|e| config_error(format!("ca: {e}")))?
        {
            roots.add(cert).map_err(config_error)?;
        }
        Ok(Arc::new(roots))
    }

    fn identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LinkError> {
        let chain =
            parse_certificates(&self.cert_pem).map_err(|e| config_error(format!("cert: {e}")))?;
        let key =
            parse_private_key(&self.key_pem).map_err(|e| config_error(format!("key: {e}")))?;
        Ok((chain, key))
    }
}

use crate::pki::provider;

fn config_error(e: impl fmt::Display) -> LinkError {
    LinkError::Config(e.to_string())
}

/// Transport settings of both ends; `peer_streams` is how many bidirectional streams the peer
/// may open concurrently.
fn transport(peer_streams: u32) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            u32::try_from(MAX_IDLE.as_millis()).unwrap_or(u32::MAX),
        ))))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
        // invariant: 4 GiB is far below VarInt's 2^62 limit.
        .receive_window(VarInt::from_u64(CONNECTION_WINDOW_BYTES).unwrap_or(VarInt::MAX))
        .send_window(CONNECTION_WINDOW_BYTES)
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Streams are sent in the order they were written, not round-robin per packet: a bulk
        // stream fills whole datagrams (quinn: less fragmentation and protocol overhead).
        .send_fairness(false)
        // The acknowledgement-frequency extension (draft-ietf-quic-ack-frequency-04): the
        // receiver acknowledges less often, so fewer datagrams are built, sent and processed.
        // Both measured in one run through the delay line at 20 ms RTT, 16 flows: CPU per GB
        // 9.0 → 7.2 s (BENCHMARKS.md, "Link settings"). A peer without it ignores it.
        .ack_frequency_config(Some(quinn::AckFrequencyConfig::default()));
    transport
}

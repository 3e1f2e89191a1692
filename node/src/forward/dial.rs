//! Dial stage (external services): connect to `networking.address`, originate TLS if asked.

use std::net::SocketAddr;
use std::time::Duration;

use proto::rejection::Rejection;
use proto::resource::{ExternalService, Host};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::pki;

/// Time allowed for the TCP connect (and the TLS handshake when originating).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The DNS name did not resolve (in time).
    #[error("cannot resolve {host}: {message}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        message: String,
    },
    /// No address accepted the connection.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// `host:port`.
        target: String,
        /// Why.
        message: String,
    },
    /// TLS origination material is unusable.
    #[error("TLS origination settings: {0}")]
    Settings(#[from] pki::PkiError),
    /// The upstream's TLS handshake failed.
    #[error("TLS handshake with {target} failed: {message}")]
    Tls {
        /// `host:port`.
        target: String,
        /// Why.
        message: String,
    },
}

impl DialError {
    /// Whether a time limit ended the attempt (resolve, connect or TLS handshake).
    pub fn timed_out(&self) -> bool {
        match self {
            DialError::Resolve { message, .. }
            | DialError::Connect { message, .. }
            | DialError::Tls { message, .. } => message.contains("timed out after"),
            DialError::Settings(_) => false,
        }
    }

    /// Why the connection is refused.
    pub fn reason(&self) -> Rejection {
        match self {
            DialError::Resolve { .. } => Rejection::Resolve,
            DialError::Connect { .. } => Rejection::Connect,
            DialError::Settings(_) => Rejection::TlsSettings,
            DialError::Tls { .. } => Rejection::UpstreamTls,
        }
    }
}

/// A connected upstream.
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Upstream for T {}

/// Checks that the TLS origination settings of `service` can be used (`caCert`, `clientCert`,
/// `clientKey` readable and parseable, the key matching the certificate); `Ok` when it does not
/// originate TLS. The same reading `dial` does, without connecting: what `inspect route` asks.
pub fn check_settings(service: &ExternalService) -> Result<(), DialError> {
    origination_config(service, &[]).map(|_| ())
}

/// The client configuration of `service`'s TLS origination, offering `alpn`; `None` when
/// `networking.tls` is not enabled.
fn origination_config(
    service: &ExternalService,
    alpn: &[&[u8]],
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, DialError> {
    let Some(tls) = service.networking.tls.as_ref().filter(|t| t.enabled) else {
        return Ok(None);
    };
    let ca = tls
        .ca_cert
        .as_ref()
        .map(pki::read_data_source)
        .transpose()?;
    let identity = tls
        .client
        .as_ref()
        .map(pki::load_client_identity)
        .transpose()?;
    let names = if tls.skip_hostname_verification {
        pki::NameCheck::Skip
    } else if !tls.subject_alt_names.is_empty() {
        pki::NameCheck::SubjectAltNames(tls.subject_alt_names.clone())
    } else {
        pki::NameCheck::ServerName
    };
    let checks = pki::Checks {
        ca: !tls.skip_ca_verification,
        names,
        versions: tls.versions,
    };
    let config = pki::origination_config(ca.as_deref(), identity, &checks)?;
    if alpn.is_empty() {
        return Ok(Some(config));
    }
    let mut config = std::sync::Arc::unwrap_or_clone(config);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(std::sync::Arc::new(config)))
}

/// Connects to the external service, with TLS when `networking.tls.enabled`, offering `alpn`
/// (protocol names, RFC 7301; empty: no ALPN) in the TLS handshake.
pub async fn dial(
    service: &ExternalService,
    alpn: &[&[u8]],
) -> Result<Box<dyn Upstream>, DialError> {
    let address = &service.networking.address;
    let target = address.to_string();
    let port = address.port.get();
    let addrs: Vec<SocketAddr> = match &address.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Dns(name) => {
            crate::dns::resolve(name, port)
                .await
                .map_err(|e| DialError::Resolve {
                    host: e.host,
                    message: e.message,
                })?
        }
    };
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out after {CONNECT_TIMEOUT:?}"),
        }
    }
    let Some(stream) = stream else {
        return Err(DialError::Connect {
            target,
            message: last,
        });
    };
    let _ = stream.set_nodelay(true);
    let Some(config) = origination_config(service, alpn)? else {
        return Ok(Box::new(stream));
    };
    let host = (service.networking.tls.as_ref())
        .and_then(|t| t.server_name.as_ref())
        .unwrap_or(&address.host);
    let server_name = match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Dns(name) => ServerName::try_from(name.clone()).map_err(|e| DialError::Tls {
            target: target.clone(),
            message: format!("invalid server name {name:?}: {e}"),
        })?,
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, stream)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(DialError::Tls {
            target,
            message: e.to_string(),
        }),
        Err(_) => Err(DialError::Tls {
            target,
            message: format!("timed out after {CONNECT_TIMEOUT:?}"),
        }),
    }
}

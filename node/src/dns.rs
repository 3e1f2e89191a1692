//! Name resolution, the same everywhere: the system resolver (`getaddrinfo` on a blocking
//! thread, as `tokio::net::lookup_host`) within [`RESOLVE_TIMEOUT`]. Used for external
//! services' hosts (every dial), `ZoneIngress` advertised addresses and the ingresses a linked
//! zone advertises.

use std::net::SocketAddr;
use std::time::Duration;

/// How long one lookup may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} did not resolve: {message}")]
pub struct ResolveError {
    /// The name asked for.
    pub host: String,
    /// The resolver's error, or that it timed out.
    pub message: String,
}

/// The addresses of `host:port`; an IP literal is returned as is, without a lookup.
///
/// # Errors
/// The resolver failed, found nothing, or did not answer within [`RESOLVE_TIMEOUT`].
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let error = |message: String| ResolveError {
        host: host.to_string(),
        message,
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(error("no address".to_string()))
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(error(e.to_string())),
        Err(_) => Err(error(format!("timed out after {RESOLVE_TIMEOUT:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_need_no_lookup_and_unknown_names_say_so() {
        let addrs = resolve("127.0.0.1", 80).await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
        assert_eq!(resolve("::1", 80).await.unwrap().len(), 1);
        let e = resolve("no-such-host.invalid", 80).await.unwrap_err();
        assert_eq!(e.host, "no-such-host.invalid");
        assert!(
            e.to_string()
                .starts_with("no-such-host.invalid did not resolve"),
            "{e}"
        );
    }
}

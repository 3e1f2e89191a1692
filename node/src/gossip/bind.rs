//! Binding the gossip plane's sockets: UDP for chitchat (plain or sealed) and, on the same port
//! number, TCP for store sync.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use tokio::sync::watch;

use super::sealed;

/// The gossip socket, its keyring, and the store sync listener on the same port number.
pub struct Sockets {
    /// Chitchat's transport (UDP).
    pub transport: Box<dyn chitchat::transport::Transport>,
    /// The bound UDP (and TCP) address.
    pub addr: SocketAddr,
    /// Problems of the sealed transport (undecryptable datagrams), for readiness warnings.
    pub problems: Option<watch::Receiver<Vec<String>>>,
    /// The keyring sealing gossip and store sync (none: plain).
    pub keyring: Option<sealed::Keyring>,
    /// Store sync's listener (TCP).
    pub sync: tokio::net::TcpListener,
}

/// Binds gossip (UDP, sealed with the keys of `key_file` when given) and store sync on TCP at
/// the same port number (as Serf's push-pull does), so a peer's gossip address is also where
/// its records are. With port 0 the kernel picks a UDP port whose TCP twin may be taken: pick
/// again (a few times) until both are free. Without a key it warns loudly, once, with the bound
/// address: plain gossip and sync can be read and forged by anyone who reaches the port.
pub async fn bind(listen: SocketAddr, key_file: Option<&Path>) -> anyhow::Result<Sockets> {
    let mut attempt = 0;
    loop {
        let (transport, addr, problems, keyring) = transport(listen, key_file).await?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(sync) => {
                // Said once, with the address finally bound.
                match &keyring {
                    Some(k) => tracing::info!(
                        keys = k.key_count(),
                        "gossip and store sync are authenticated and encrypted \
                         (XChaCha20-Poly1305)"
                    ),
                    None => tracing::warn!(
                        gossip = %addr,
                        "NO GOSSIP KEY: gossip.key_file is not set, so gossip travels in plain \
                         UDP and store sync in plain TCP that anyone reaching {addr} can read \
                         and forge (resources may carry secrets); create one with \
                         `zone-egress keygen > gossip.key` and set gossip.key_file"
                    ),
                }
                return Ok(Sockets {
                    transport,
                    addr,
                    problems,
                    keyring,
                    sync,
                });
            }
            Err(e) if listen.port() == 0 && attempt < 16 => {
                attempt += 1;
                tracing::debug!(%addr, error = %e, "TCP twin of the gossip port taken; picking another");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot listen on {addr} (TCP) for store sync (the gossip port's number)"
                )));
            }
        }
    }
}

/// Binds the gossip socket: sealed with the cluster keys of `key_file`, else plain.
async fn transport(
    addr: SocketAddr,
    key_file: Option<&Path>,
) -> anyhow::Result<(
    Box<dyn chitchat::transport::Transport>,
    SocketAddr,
    Option<watch::Receiver<Vec<String>>>,
    Option<sealed::Keyring>,
)> {
    let context = || format!("cannot listen on {addr} (UDP) for gossip (gossip.listen / --gossip)");
    match key_file {
        Some(path) => {
            let keyring = sealed::Keyring::load(path)
                .with_context(|| format!("gossip.key_file {}", path.display()))?;
            let keys = keyring.key_count();
            let transport = sealed::bind(addr, keyring.clone())
                .await
                .with_context(context)?;
            let local = transport.local_addr();
            let problems = transport.problems();
            tracing::debug!(keys, "gossip keyring loaded");
            Ok((Box::new(transport), local, Some(problems), Some(keyring)))
        }
        None => {
            let transport = super::transport::bind(addr).await.with_context(context)?;
            let local = transport.local_addr();
            Ok((Box::new(transport), local, None, None))
        }
    }
}

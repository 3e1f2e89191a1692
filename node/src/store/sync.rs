//! Store sync: anti-entropy between two nodes over TCP, on the gossip port's number.
//!
//! Gossip carries each node's digest root (chitchat key `store`); the records move here, so
//! the gossip state is a few keys per node whatever the zone holds (issue 14). The session
//! protocol and its framing are [`proto::sync`]; this module runs them:
//!
//! * [`spawn`] starts the *acceptor* (sessions served, at most [`MAX_SERVED`] at once) and the
//!   *round* task: after a local write (coalesced for [`MIN_GAP`]) a push of the written
//!   records to every live peer, so a write reaches the zone in one round trip; otherwise,
//!   every [`ROUND`], an anti-entropy exchange with one live peer whose gossiped root differs
//!   from ours (random), which heals what a missed push, a partition or a restart left behind.
//! * A session (TCP connection and hellos) carries any number of exchanges: the round task
//!   keeps one open per peer ([`POOLED_IDLE`]), the server closes one idle for
//!   [`SERVED_IDLE`]. A failed exchange drops its session; the next round opens a new one.
//! * With a gossip key every frame after the hellos is sealed (XChaCha20-Poly1305, the gossip
//!   keyring) with associated data naming the session's two nonces and the direction, and
//!   carries a sequence number: nothing can be read, injected, replayed from another session
//!   or reordered. Without a key, sync is plain TCP, as gossip is plain UDP (the node warns).
//! * Every read has a deadline ([`FRAME_TIMEOUT`]) and every exchange one ([`SESSION_TIMEOUT`]);
//!   a frame's length is checked before it is read; a session carries at most
//!   [`proto::sync::MAX_SESSION_ENTRIES`] entries.
//!
//! Metrics: `zone_egress_store_sync_sessions_total{role,outcome}`,
//! `zone_egress_store_sync_records_total{direction}`,
//! `zone_egress_store_sync_bytes_total{direction}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::hlc::Timestamp;
use proto::sync::{self as wire, Message, NONCE_BYTES};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::Handle;
use super::digest::BUCKETS;
use crate::gossip::ZoneSnapshot;
use crate::gossip::sealed::Keyring;

/// Largest frame before the hellos are done (a hello is ~100 bytes sealed): a stranger cannot
/// make the node hold more than this per connection.
pub const HELLO_MAX_BYTES: usize = 4 * 1024;
/// Bytes of frames being received at once, over all sessions (each frame is at most
/// [`wire::MAX_FRAME_BYTES`]): 256 sessions cannot claim a GiB.
pub const FRAME_BYTES_BUDGET: usize = 64 * 1024 * 1024;
/// Deadline of a TCP connect to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one frame read or write.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one exchange (a join of 10,000 resources takes about a second).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Sessions served at once (each peer keeps one open to push on); more are refused.
pub const MAX_SERVED: usize = 256;
/// Interval of the healing round (one session with a peer whose root differs).
pub const ROUND: Duration = Duration::from_millis(100);
/// Local writes within this gap share one push to every peer.
pub const MIN_GAP: Duration = Duration::from_millis(20);

const AAD: &[u8] = b"zone-egress store sync v1";

/// What store sync needs to start.
pub struct Settings {
    /// This node's zone (a peer of another zone is refused).
    pub zone: String,
    /// This node's name.
    pub node: String,
    /// Bound to the gossip address (TCP, same port number as gossip's UDP).
    pub listener: TcpListener,
    /// The gossip keyring; `None` for plain gossip.
    pub keyring: Option<Keyring>,
    /// The zone's members (peers' addresses and digest roots).
    pub view: watch::Receiver<Arc<ZoneSnapshot>>,
    /// Source address of outgoing sessions: the gossip address's IP when it is a specific
    /// one, so sync leaves from where gossip does (firewalls, partitions); `None` lets the
    /// kernel choose.
    pub source_ip: Option<std::net::IpAddr>,
}

/// Why a session failed (logged at debug, counted by `outcome`).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Frame(#[from] wire::FrameError),
    #[error("not authentic: {0}")]
    Auth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
}

impl SyncError {
    fn outcome(&self) -> &'static str {
        match self {
            SyncError::Io(_) => "io",
            SyncError::Timeout => "timeout",
            SyncError::Frame(wire::FrameError::TooLarge { .. }) => "too_large",
            SyncError::Frame(_) => "malformed",
            SyncError::Auth(_) => "auth_failed",
            SyncError::Protocol(_) => "protocol",
            SyncError::Refused(_) => "refused",
        }
    }
}

/// Starts the acceptor and the round task; [`Handle::shutdown`] stops them. Returns the
/// warnings for `/ready`: one sentence per live peer that sync keeps failing with (three
/// exchanges in a row), e.g. because a firewall lets gossip's UDP through but not TCP.
pub fn spawn(store: &Handle, settings: Settings) -> watch::Receiver<Vec<String>> {
    let keyring = settings.keyring.map(Arc::new);
    let local = Arc::new(Local {
        zone: settings.zone,
        node: settings.node,
        keyring,
        source_ip: settings.source_ip,
        frame_bytes: Arc::new(Semaphore::new(FRAME_BYTES_BUDGET)),
    });
    let (warnings_tx, warnings_rx) = watch::channel(Vec::new());
    store.adopt(tokio::spawn(accept_loop(
        store.clone(),
        local.clone(),
        settings.listener,
    )));
    store.adopt(tokio::spawn(round_loop(
        store.clone(),
        local,
        settings.view,
        warnings_tx,
    )));
    warnings_rx
}

struct Local {
    zone: String,
    node: String,
    keyring: Option<Arc<Keyring>>,
    source_ip: Option<std::net::IpAddr>,
    /// [`FRAME_BYTES_BUDGET`] as permits.
    frame_bytes: Arc<Semaphore>,
}

/// Connects to `peer`, from `source_ip` when given (falling back to any source if that
/// address cannot be bound).
async fn connect(
    peer: SocketAddr,
    source_ip: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    if let Some(ip) = source_ip.filter(|ip| ip.is_ipv4() == peer.is_ipv4()) {
        let socket = if peer.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if socket.bind(SocketAddr::new(ip, 0)).is_ok() {
            return socket.connect(peer).await;
        }
    }
    TcpStream::connect(peer).await
}

/// One framed, possibly sealed, TCP session.
struct Channel {
    stream: TcpStream,
    keyring: Option<Arc<Keyring>>,
    /// The node's budget of frame bytes being received, shared by all its channels.
    frame_bytes: Arc<Semaphore>,
    /// Largest frame accepted now: [`HELLO_MAX_BYTES`] until the hellos are done.
    max_frame: usize,
    send_aad: Vec<u8>,
    recv_aad: Vec<u8>,
    send_seq: u64,
    recv_seq: u64,
}

fn aad(direction: u8, client: &[u8; NONCE_BYTES], server: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut a = AAD.to_vec();
    a.push(direction);
    a.extend_from_slice(client);
    a.extend_from_slice(server);
    a
}

impl Channel {
    fn new(stream: TcpStream, local: &Local) -> Channel {
        let zero = [0u8; NONCE_BYTES];
        Channel {
            stream,
            keyring: local.keyring.clone(),
            frame_bytes: local.frame_bytes.clone(),
            max_frame: HELLO_MAX_BYTES,
            send_aad: aad(b'h', &zero, &zero),
            recv_aad: aad(b'h', &zero, &zero),
            send_seq: 0,
            recv_seq: 0,
        }
    }

    async fn send(&mut self, message: &Message) -> Result<(), SyncError> {
        let body = wire::encode_body(self.send_seq, message)?;
        self.send_seq += 1;
        let body = match &self.keyring {
            Some(k) => k
                .seal_with(&self.send_aad, &body, crate::unix_ms())
                .map_err(|e| SyncError::Auth(e.to_string()))?,
            None => body,
        };
        let len = u32::try_from(body.len()).map_err(|_| {
            SyncError::Frame(wire::FrameError::TooLarge {
                len: body.len(),
                max: wire::MAX_FRAME_BYTES,
            })
        })?;
        let write = async {
            self.stream.write_all(&len.to_be_bytes()).await?;
            self.stream.write_all(&body).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(FRAME_TIMEOUT, write)
            .await
            .map_err(|_| SyncError::Timeout)??;
        metrics::counter!("zone_egress_store_sync_bytes_total", "direction" => "sent")
            .increment((wire::PREFIX_BYTES + body.len()) as u64);
        Ok(())
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        self.recv_within(FRAME_TIMEOUT).await
    }

    /// [`Channel::recv`] with another deadline (a served session idle between exchanges).
    async fn recv_within(&mut self, deadline: Duration) -> Result<Message, SyncError> {
        let max_frame = self.max_frame;
        let frame_bytes = self.frame_bytes.clone();
        let stream = &mut self.stream;
        let read = async {
            let mut prefix = [0u8; wire::PREFIX_BYTES];
            stream.read_exact(&mut prefix).await?;
            let len = wire::frame_len(prefix)?;
            if len > max_frame {
                return Err(SyncError::Frame(wire::FrameError::TooLarge {
                    len,
                    max: max_frame,
                }));
            }
            // Memory follows what arrives, not what a prefix claims, and the node's frames in
            // flight stay within FRAME_BYTES_BUDGET.
            let permits = u32::try_from(len).unwrap_or(u32::MAX);
            let permit = frame_bytes
                .acquire_many_owned(permits)
                .await
                .map_err(|_| SyncError::Protocol("shutting down".into()))?;
            let mut body = Vec::with_capacity(len.min(64 * 1024));
            (&mut *stream)
                .take(len as u64)
                .read_to_end(&mut body)
                .await?;
            if body.len() != len {
                return Err(SyncError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok::<_, SyncError>((body, permit))
        };
        let (body, _permit) = tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| SyncError::Timeout)??;
        metrics::counter!("zone_egress_store_sync_bytes_total", "direction" => "received")
            .increment((wire::PREFIX_BYTES + body.len()) as u64);
        let body = match &self.keyring {
            Some(k) => {
                k.open_with(&self.recv_aad, &body, crate::unix_ms())
                    .map_err(|e| SyncError::Auth(e.to_string()))?
                    .datagram
            }
            None => body,
        };
        let (seq, message) = wire::decode_body(&body)?;
        if seq != self.recv_seq {
            return Err(SyncError::Auth(format!(
                "frame {seq} where {} was due",
                self.recv_seq
            )));
        }
        self.recv_seq += 1;
        if let Message::Refused(why) = message {
            return Err(SyncError::Refused(why));
        }
        Ok(message)
    }

    /// After the hellos: frames are bound to both nonces and their direction.
    fn bind(&mut self, client: &[u8; NONCE_BYTES], server: &[u8; NONCE_BYTES], is_client: bool) {
        let (mine, theirs) = if is_client {
            (b'c', b's')
        } else {
            (b's', b'c')
        };
        self.send_aad = aad(mine, client, server);
        self.recv_aad = aad(theirs, client, server);
        self.max_frame = wire::MAX_FRAME_BYTES;
    }
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    rand::rng().fill(&mut n);
    n
}

/// Counts entries against the session's bound.
struct Budget(usize);

impl Budget {
    fn take(&mut self, n: usize) -> Result<(), SyncError> {
        self.0 += n;
        if self.0 > wire::MAX_SESSION_ENTRIES {
            return Err(SyncError::Protocol(format!(
                "more than {} entries in one session",
                wire::MAX_SESSION_ENTRIES
            )));
        }
        Ok(())
    }
}

/// A chunked message's items and whether another chunk follows; `Err` gives back another
/// message.
type Chunk<T> = Result<(Vec<T>, bool), Message>;

/// Receives chunks (the first one given, or read) until the last one; every item counts
/// against the session's budget.
async fn recv_chunks<T>(
    channel: &mut Channel,
    budget: &mut Budget,
    mut first: Option<Message>,
    take: impl Fn(Message) -> Chunk<T>,
) -> Result<Vec<T>, SyncError> {
    let mut out = Vec::new();
    loop {
        let message = match first.take() {
            Some(m) => m,
            None => channel.recv().await?,
        };
        let (items, more) = take(message).map_err(|other| unexpected(&other))?;
        budget.take(items.len())?;
        out.extend(items);
        if !more {
            return Ok(out);
        }
    }
}

/// Sends `items` in chunks of about [`wire::CHUNK_BYTES`] by `size`, the last one marked.
async fn send_chunks<T>(
    channel: &mut Channel,
    items: Vec<T>,
    size: impl Fn(&T) -> usize,
    wrap: impl Fn(Vec<T>, bool) -> Message,
) -> Result<(), SyncError> {
    let chunks = wire::chunks(items, size);
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        channel.send(&wrap(chunk, i < last)).await?;
    }
    Ok(())
}

fn pushes(m: Message) -> Chunk<wire::Record> {
    match m {
        Message::Push { records, more } => Ok((records, more)),
        other => Err(other),
    }
}

fn bodies(m: Message) -> Chunk<wire::Record> {
    match m {
        Message::Bodies { records, more } => Ok((records, more)),
        other => Err(other),
    }
}

fn listings(m: Message) -> Chunk<(String, Timestamp)> {
    match m {
        Message::Listing { entries, more } => Ok((entries, more)),
        other => Err(other),
    }
}

fn wants(m: Message) -> Chunk<String> {
    match m {
        Message::Want { keys, more } => Ok((keys, more)),
        other => Err(other),
    }
}

fn record_size(r: &wire::Record) -> usize {
    r.key.len() + r.body.len() + r.ts.node.len()
}

fn unexpected(m: &Message) -> SyncError {
    let name = match m {
        Message::Hello { .. } => "Hello",
        Message::HelloAck { .. } => "HelloAck",
        Message::Refused(_) => "Refused",
        Message::Root(_) => "Root",
        Message::Buckets(_) => "Buckets",
        Message::Listing { .. } => "Listing",
        Message::Push { .. } => "Push",
        Message::Want { .. } => "Want",
        Message::Bodies { .. } => "Bodies",
    };
    SyncError::Protocol(format!("unexpected {name}"))
}

async fn send_records(
    channel: &mut Channel,
    records: Vec<wire::Record>,
    push: bool,
) -> Result<(), SyncError> {
    metrics::counter!("zone_egress_store_sync_records_total", "direction" => "sent")
        .increment(records.len() as u64);
    send_chunks(channel, records, record_size, |records, more| {
        if push {
            Message::Push { records, more }
        } else {
            Message::Bodies { records, more }
        }
    })
    .await
}

/// Merges what `peer` sent (nothing to do for nothing); how many records changed here.
async fn merge_received(store: &Handle, peer: &str, records: Vec<wire::Record>) -> usize {
    metrics::counter!("zone_egress_store_sync_records_total", "direction" => "received")
        .increment(records.len() as u64);
    if records.is_empty() {
        0
    } else {
        store.merge(peer, records).await
    }
}

fn differing(mine: &[u64], theirs: &[u64]) -> Result<Vec<usize>, SyncError> {
    super::digest::differing(mine, theirs).ok_or_else(|| {
        SyncError::Protocol(format!(
            "{} bucket digests, expected {BUCKETS}",
            theirs.len()
        ))
    })
}

/// A session's client side after its hellos: the channel and the peer's node name. Kept
/// open by the peer's [`worker`] between exchanges, so a push costs one round trip, not a TCP
/// handshake and two hellos.
struct Session {
    channel: Channel,
    peer: String,
    last_used: Instant,
}

/// Opens a session with `peer`: TCP, then the hellos.
async fn open_session(local: &Local, peer: SocketAddr) -> Result<Session, SyncError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect(peer, local.source_ip))
        .await
        .map_err(|_| SyncError::Timeout)??;
    stream.set_nodelay(true)?;
    let mut ch = Channel::new(stream, local);
    let client_nonce = nonce();
    ch.send(&Message::Hello {
        zone: local.zone.clone(),
        node: local.node.clone(),
        nonce: client_nonce,
    })
    .await?;
    let zero = [0u8; NONCE_BYTES];
    ch.recv_aad = aad(b'a', &client_nonce, &zero);
    let (peer_name, server_nonce) = match ch.recv().await? {
        Message::HelloAck { node, nonce } => (node, nonce),
        other => return Err(unexpected(&other)),
    };
    ch.bind(&client_nonce, &server_nonce, true);
    Ok(Session {
        channel: ch,
        peer: peer_name,
        last_used: Instant::now(),
    })
}

/// One exchange on an open session: how many records changed here. With `push`, it offers
/// those records (written here just now) and takes back the peer's newer copies of them;
/// without, it compares digests and reconciles every bucket that differs.
async fn exchange(
    store: &Handle,
    session: &mut Session,
    push: Option<Arc<Vec<wire::Record>>>,
) -> Result<usize, SyncError> {
    session.last_used = Instant::now();
    let ch = &mut session.channel;
    let peer_name = session.peer.clone();
    let mut budget = Budget(0);
    if let Some(records) = push {
        send_records(ch, records.to_vec(), true).await?;
        let answer = recv_chunks(ch, &mut budget, None, bodies).await?;
        return Ok(merge_received(store, &peer_name, answer).await);
    }
    let root = *store.root().borrow();
    ch.send(&Message::Root(root)).await?;
    match ch.recv().await? {
        Message::Root(theirs) if theirs == root => return Ok(0),
        Message::Root(_) => {}
        other => return Err(unexpected(&other)),
    }
    let mine = store.buckets().await;
    ch.send(&Message::Buckets(mine.clone())).await?;
    let theirs = match ch.recv().await? {
        Message::Buckets(b) => b,
        other => return Err(unexpected(&other)),
    };
    let buckets = differing(&mine, &theirs)?;
    let listing = recv_chunks(ch, &mut budget, None, listings).await?;
    let (push, want) = store.compare(&buckets, &listing).await;
    send_records(ch, push, true).await?;
    send_chunks(ch, want, String::len, |keys, more| Message::Want {
        keys,
        more,
    })
    .await?;
    let answer = recv_chunks(ch, &mut budget, None, bodies).await?;
    Ok(merge_received(store, &peer_name, answer).await)
}

/// A whole session with `peer` (open, one exchange, close): how many records changed here.
#[cfg(test)]
async fn client_session(
    store: &Handle,
    local: &Local,
    peer: SocketAddr,
    push: Option<Arc<Vec<wire::Record>>>,
) -> Result<(String, usize), SyncError> {
    let mut session = open_session(local, peer).await?;
    let changed = exchange(store, &mut session, push).await?;
    Ok((session.peer, changed))
}

/// How long a served session waits for its next exchange before it is closed.
pub const SERVED_IDLE: Duration = Duration::from_secs(60);
/// A pooled session unused for this long is closed by its client.
pub const POOLED_IDLE: Duration = Duration::from_secs(30);

/// The server's side of a session: the hellos, then exchanges until the client closes it or
/// is idle for [`SERVED_IDLE`].
async fn serve_session(store: &Handle, local: &Local, ch: &mut Channel) -> Result<(), SyncError> {
    let (peer, client_nonce) = match ch.recv().await? {
        Message::Hello { zone, node, nonce } => {
            if zone != local.zone {
                let why = format!(
                    "this node is in zone {:?}, the peer in zone {zone:?}",
                    local.zone
                );
                let _ = ch.send(&Message::Refused(why.clone())).await;
                return Err(SyncError::Refused(why));
            }
            (node, nonce)
        }
        other => return Err(unexpected(&other)),
    };
    let server_nonce = nonce();
    let zero = [0u8; NONCE_BYTES];
    ch.send_aad = aad(b'a', &client_nonce, &zero);
    ch.send(&Message::HelloAck {
        node: local.node.clone(),
        nonce: server_nonce,
    })
    .await?;
    ch.bind(&client_nonce, &server_nonce, false);
    loop {
        let first = match ch.recv_within(SERVED_IDLE).await {
            Ok(m) => m,
            // The client closed a session between exchanges: done.
            Err(SyncError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        tokio::time::timeout(SESSION_TIMEOUT, serve_exchange(store, &peer, ch, first))
            .await
            .map_err(|_| SyncError::Timeout)??;
    }
}

/// The server's side of one exchange that began with `first`.
async fn serve_exchange(
    store: &Handle,
    peer: &str,
    ch: &mut Channel,
    first: Message,
) -> Result<(), SyncError> {
    let mut budget = Budget(0);
    match first {
        // A push: merge, answer with this node's newer copies of the pushed keys.
        Message::Push { .. } => {
            let pushed = recv_chunks(ch, &mut budget, Some(first), pushes).await?;
            return merge_and_answer(store, peer, ch, pushed, Vec::new()).await;
        }
        Message::Root(theirs) => {
            let root = *store.root().borrow();
            ch.send(&Message::Root(root)).await?;
            if theirs == root {
                return Ok(());
            }
        }
        other => return Err(unexpected(&other)),
    }
    let theirs = match ch.recv().await? {
        Message::Buckets(b) => b,
        other => return Err(unexpected(&other)),
    };
    let mine = store.buckets().await;
    let buckets = differing(&mine, &theirs)?;
    ch.send(&Message::Buckets(mine)).await?;
    let listing = store.listing(&buckets).await;
    send_chunks(
        ch,
        listing,
        |(k, ts)| k.len() + ts.node.len() + 16,
        |entries, more| Message::Listing { entries, more },
    )
    .await?;
    let pushed = recv_chunks(ch, &mut budget, None, pushes).await?;
    let want = recv_chunks(ch, &mut budget, None, wants).await?;
    merge_and_answer(store, peer, ch, pushed, want).await
}

/// Merges `pushed` and answers with the records of `want` and this node's copies that beat
/// pushed ones.
async fn merge_and_answer(
    store: &Handle,
    peer: &str,
    ch: &mut Channel,
    pushed: Vec<wire::Record>,
    want: Vec<String>,
) -> Result<(), SyncError> {
    let pushed_ts: Vec<(String, Timestamp)> = pushed
        .iter()
        .map(|r| (r.key.clone(), r.ts.clone()))
        .collect();
    merge_received(store, peer, pushed).await;
    let answer = store.answer(&want, &pushed_ts).await;
    send_records(ch, answer, false).await
}

/// When a refusal was last logged, per source IP and cause.
type Warned =
    Arc<std::sync::Mutex<std::collections::HashMap<(std::net::IpAddr, &'static str), Instant>>>;

/// Logs a refused session as a WARN, at most once a minute per source IP and cause (and for
/// at most 1,024 of them at once), so an operator sees a wrong key, another zone or a flood
/// in the log without the log flooding.
fn warn_refused(
    warned: &Warned,
    ip: std::net::IpAddr,
    cause: &'static str,
    error: &dyn std::fmt::Display,
) {
    let mut warned = warned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    warned.retain(|_, at| at.elapsed() < Duration::from_secs(60));
    if warned.contains_key(&(ip, cause)) || warned.len() >= 1024 {
        return;
    }
    warned.insert((ip, cause), Instant::now());
    tracing::warn!(
        peer = %ip,
        cause,
        error = %error,
        "store sync refused a session (logged once a minute per peer and cause)"
    );
}

async fn accept_loop(store: Handle, local: Arc<Local>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_SERVED));
    let warned: Warned = Default::default();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "store sync accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("zone_egress_store_sync_sessions_total", "role" => "server", "outcome" => "busy")
                .increment(1);
            warn_refused(
                &warned,
                from.ip(),
                "busy",
                &format!("{MAX_SERVED} sessions are served already"),
            );
            continue;
        };
        let (store, local, warned) = (store.clone(), local.clone(), warned.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut ch = Channel::new(stream, &local);
            // Each exchange has its own deadline (SESSION_TIMEOUT), the pause between two
            // SERVED_IDLE: a session lives as long as its client uses it.
            let result = serve_session(&store, &local, &mut ch).await;
            let outcome = match &result {
                Ok(()) => "ok",
                Err(e) => e.outcome(),
            };
            metrics::counter!("zone_egress_store_sync_sessions_total", "role" => "server", "outcome" => outcome)
                .increment(1);
            if let Err(e) = result {
                tracing::debug!(peer = %from, error = %e, "store sync session (served) failed");
                if matches!(
                    outcome,
                    "auth_failed" | "refused" | "too_large" | "malformed"
                ) {
                    warn_refused(&warned, from.ip(), outcome, &e);
                }
            }
        });
    }
}

/// Live peers: `(name, address, digest root)`.
fn peers(view: &ZoneSnapshot, me: &str) -> Vec<(String, SocketAddr, Option<String>)> {
    view.view
        .members
        .iter()
        .filter(|m| m.state.is_present() && m.name != me && !m.name_conflict)
        .filter_map(|m| {
            let addr = m.gossip_address.parse().ok()?;
            Some((m.name.clone(), addr, m.store_digest.clone()))
        })
        .collect()
}

/// Work for a peer's worker.
enum Job {
    /// Records written here, to push.
    Push(Arc<Vec<wire::Record>>),
    /// An anti-entropy exchange.
    Reconcile,
}

/// Pushes queued for one peer at most; beyond, a push is dropped (the peer is slow or
/// unreachable) and anti-entropy carries it later.
const QUEUED_JOBS: usize = 64;

/// Exchanges in a row that failed before a peer is reported in `/ready`.
const FAILURES_REPORTED: u32 = 3;

/// What the workers saw of each peer: consecutive failures and the last error.
type Failures = Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, (u32, String)>>>;

/// One peer's worker: owns the session with it, runs its jobs in order, so a slow or
/// unreachable peer delays no other.
struct Worker {
    jobs: tokio::sync::mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<()>,
    pending: Arc<Pending>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pushes handed to one worker and not finished yet; `idle` is woken whenever a worker
/// finishes its pushes.
struct Pending {
    pushes: std::sync::atomic::AtomicUsize,
    idle: Arc<tokio::sync::Notify>,
}

impl Pending {
    fn finished(&self, n: usize) {
        self.pushes
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        self.idle.notify_waiters();
    }
}

/// Waits until no live peer's worker has a push in flight, or `at_most`.
async fn wait_idle(
    workers: &std::collections::HashMap<SocketAddr, Worker>,
    idle: &tokio::sync::Notify,
    at_most: Duration,
) {
    let deadline = tokio::time::Instant::now() + at_most;
    loop {
        let woken = idle.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let busy = workers
            .values()
            .any(|w| w.pending.pushes.load(std::sync::atomic::Ordering::SeqCst) > 0);
        if !busy || tokio::time::timeout_at(deadline, woken).await.is_err() {
            return;
        }
    }
}

/// How long a push waits for the previous one to reach every peer: writes meanwhile join
/// the next push (fewer, larger pushes under load), and a slow peer holds the others back at
/// most this long.
const PUSH_WAIT: Duration = Duration::from_millis(100);

async fn worker(
    store: Handle,
    local: Arc<Local>,
    addr: SocketAddr,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    failures: Failures,
    pending: Arc<Pending>,
) {
    let mut session: Option<Session> = None;
    while let Some(job) = jobs.recv().await {
        // Pushes waiting behind this one go with it.
        let mut pushes = 0;
        let push = match job {
            Job::Reconcile => None,
            Job::Push(first) => {
                pushes = 1;
                let mut records: Vec<wire::Record> = first.to_vec();
                while let Ok(Job::Push(more)) = jobs.try_recv() {
                    pushes += 1;
                    records.extend(more.iter().cloned());
                }
                Some(Arc::new(records))
            }
        };
        if session
            .as_ref()
            .is_some_and(|s| s.last_used.elapsed() >= POOLED_IDLE)
        {
            session = None;
        }
        let run = async {
            let mut s = match session.take() {
                Some(s) => s,
                None => open_session(&local, addr).await?,
            };
            let changed = exchange(&store, &mut s, push).await?;
            Ok::<_, SyncError>((s, changed))
        };
        let result = tokio::time::timeout(SESSION_TIMEOUT, run)
            .await
            .unwrap_or(Err(SyncError::Timeout));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        metrics::counter!("zone_egress_store_sync_sessions_total", "role" => "client", "outcome" => outcome)
            .increment(1);
        let mut failures = failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok((s, changed)) => {
                if changed > 0 {
                    tracing::debug!(peer = %s.peer, changed, "store sync merged records");
                }
                session = Some(s);
                failures.remove(&addr);
            }
            Err(e) => {
                // The session is dropped (closed); the next job opens a new one.
                tracing::debug!(peer = %addr, error = %e, "store sync exchange failed");
                let entry = failures.entry(addr).or_insert((0, String::new()));
                entry.0 += 1;
                entry.1 = e.to_string();
            }
        }
        drop(failures);
        if pushes > 0 {
            pending.finished(pushes);
        }
    }
}

async fn round_loop(
    store: Handle,
    local: Arc<Local>,
    view: watch::Receiver<Arc<ZoneSnapshot>>,
    warnings_tx: watch::Sender<Vec<String>>,
) {
    let mut last_round = Instant::now();
    let mut workers: std::collections::HashMap<SocketAddr, Worker> = Default::default();
    let failures: Failures = Default::default();
    let idle = Arc::new(tokio::sync::Notify::new());
    loop {
        let pushed = tokio::select! {
            _ = store.local_write() => true,
            _ = tokio::time::sleep(ROUND) => false,
        };
        if pushed {
            // Writes that arrive within MIN_GAP of the last round go in the next one.
            let since = last_round.elapsed();
            if since < MIN_GAP {
                tokio::time::sleep(MIN_GAP - since).await;
            }
        }
        last_round = Instant::now();
        let snapshot = view.borrow().clone();
        let root = super::root_value(*store.root().borrow());
        let all = peers(&snapshot, &local.node);
        // A worker per live peer; a peer that is gone takes its worker (and session) along.
        workers.retain(|addr, _| all.iter().any(|(_, a, _)| a == addr));
        for (_, addr, _) in &all {
            workers.entry(*addr).or_insert_with(|| {
                let (jobs, rx) = tokio::sync::mpsc::channel(QUEUED_JOBS);
                let pending = Arc::new(Pending {
                    pushes: Default::default(),
                    idle: idle.clone(),
                });
                let task = tokio::spawn(worker(
                    store.clone(),
                    local.clone(),
                    *addr,
                    rx,
                    failures.clone(),
                    pending.clone(),
                ));
                Worker {
                    jobs,
                    task,
                    pending,
                }
            });
        }
        let written = if pushed {
            wait_idle(&workers, &idle, PUSH_WAIT).await;
            store.take_written().await
        } else {
            Vec::new()
        };
        if !written.is_empty() {
            let written = Arc::new(written);
            for worker in workers.values() {
                // Counted before it is sent, so the worker never finishes it first.
                worker
                    .pending
                    .pushes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if worker.jobs.try_send(Job::Push(written.clone())).is_err() {
                    worker.pending.finished(1);
                    metrics::counter!("zone_egress_store_sync_sessions_total", "role" => "client", "outcome" => "queue_full")
                        .increment(1);
                }
            }
        } else {
            let differ: Vec<SocketAddr> = all
                .iter()
                .filter(|(_, _, r)| r.as_deref() != Some(root.as_str()))
                .map(|(_, a, _)| *a)
                .collect();
            if !differ.is_empty() {
                let addr = differ[rand::rng().random_range(0..differ.len())];
                if let Some(worker) = workers.get(&addr) {
                    // Busy with a job already: this round's reconcile is not needed.
                    let _ = worker.jobs.try_send(Job::Reconcile);
                }
            }
        }
        let warnings = {
            let mut failures = failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            failures.retain(|addr, _| workers.contains_key(addr));
            let mut w: Vec<String> = all
                .iter()
                .filter_map(|(name, addr, _)| {
                    let (n, error) = failures.get(addr)?;
                    (*n >= FAILURES_REPORTED).then(|| {
                        format!(
                            "store sync with peer {name:?} at {addr} (TCP) fails ({n} times in a \
                             row, last: {error}): resources written on either side do not reach \
                             the other; TCP must be open on the gossip port's number"
                        )
                    })
                })
                .collect();
            w.sort();
            w
        };
        warnings_tx.send_if_modified(|current| {
            if *current == warnings {
                false
            } else {
                *current = warnings;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use proto::resource::{Kind, parse_documents};

    use super::*;
    use crate::gossip::Publisher;
    use crate::store::{Change, Settings as StoreSettings, spawn as open_store};

    async fn store(ttl: Duration) -> (Handle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let handle = open_store(StoreSettings {
            data_dir: dir.path().to_path_buf(),
            node: format!("n{}", rand::rng().random_range(0..1_000_000)),
            tombstone_ttl: ttl,
            publisher: Publisher::detached(),
            max_clock_offset: Duration::from_secs(5),
        })
        .await
        .unwrap();
        (handle, dir)
    }

    fn local(zone: &str, keyring: Option<&str>) -> Arc<Local> {
        Arc::new(Local {
            zone: zone.into(),
            node: "test".into(),
            keyring: keyring.map(|k| Arc::new(Keyring::parse(k).unwrap())),
            source_ip: None,
            frame_bytes: Arc::new(Semaphore::new(FRAME_BYTES_BUDGET)),
        })
    }

    async fn serve(store: &Handle, local: Arc<Local>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        store.adopt(tokio::spawn(accept_loop(store.clone(), local, listener)));
        addr
    }

    fn docs(yaml: &str) -> Vec<Change> {
        parse_documents(yaml)
            .unwrap()
            .into_iter()
            .map(Change::Put)
            .collect()
    }

    fn services(from: usize, to: usize) -> String {
        let mut y = String::new();
        for i in from..to {
            y.push_str(&format!(
                "---\ntype: ExternalService\nmesh: default\nname: es-{i}\ntags: {{ kuma.io/service: es-{i} }}\nnetworking: {{ address: 'es-{i}.example.org:443' }}\n"
            ));
        }
        y
    }

    async fn root(store: &Handle) -> u64 {
        *store.root().borrow()
    }

    #[tokio::test]
    async fn one_session_leaves_both_nodes_with_the_union() {
        let key = crate::gossip::sealed::generate_key();
        let (a, _da) = store(Duration::from_secs(3600)).await;
        let (b, _db) = store(Duration::from_secs(3600)).await;
        a.apply(docs(&format!(
            "type: Mesh\nname: default\n{}",
            services(0, 300)
        )))
        .await
        .unwrap();
        b.apply(docs(&format!(
            "type: Mesh\nname: default\n{}",
            services(290, 310)
        )))
        .await
        .unwrap();
        assert_ne!(root(&a).await, root(&b).await);
        let addr = serve(&a, local("z", Some(&key))).await;
        let (_, changed) = client_session(&b, &local("z", Some(&key)), addr, None)
            .await
            .unwrap();
        // b took a's 290 services it lacked and whichever copy of the 10 shared ones and the
        // Mesh is newer; a took b's 10 services it lacked.
        assert!(changed >= 290, "{changed}");
        assert_eq!(root(&a).await, root(&b).await);
        for s in [&a, &b] {
            assert_eq!(s.snapshot().borrow().count(Kind::ExternalService), 310);
        }
        // In sync: a second session moves nothing.
        let (_, changed) = client_session(&b, &local("z", Some(&key)), addr, None)
            .await
            .unwrap();
        assert_eq!(changed, 0);
    }

    #[tokio::test]
    async fn a_push_lands_and_an_older_push_gets_the_newer_copy_back() {
        let (a, _da) = store(Duration::from_secs(3600)).await;
        let (b, _db) = store(Duration::from_secs(3600)).await;
        let addr = serve(&a, local("z", None)).await;
        b.apply(docs(&format!(
            "type: Mesh\nname: default\n{}",
            services(0, 3)
        )))
        .await
        .unwrap();
        let written = Arc::new(b.take_written().await);
        assert_eq!(written.len(), 4);
        assert!(b.take_written().await.is_empty(), "taken once");
        // One session, kept open across exchanges (as the round loop's pool does).
        let mut session = open_session(&local("z", None), addr).await.unwrap();
        exchange(&b, &mut session, Some(written.clone()))
            .await
            .unwrap();
        assert_eq!(root(&a).await, root(&b).await);
        // a writes es-0 anew; b pushes its older es-0 again and takes a's back.
        a.apply(docs(&services(0, 1).replace("443", "8443")))
            .await
            .unwrap();
        let changed = exchange(&b, &mut session, Some(written)).await.unwrap();
        assert_eq!(changed, 1);
        assert_eq!(root(&a).await, root(&b).await);
        // An anti-entropy exchange on the same session finds nothing to move.
        assert_eq!(exchange(&b, &mut session, None).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_wrong_key_or_another_zone_moves_nothing() {
        let (a, _da) = store(Duration::from_secs(3600)).await;
        let (b, _db) = store(Duration::from_secs(3600)).await;
        a.apply(docs("type: Mesh\nname: default\n")).await.unwrap();
        let key = crate::gossip::sealed::generate_key();
        let other = crate::gossip::sealed::generate_key();
        let addr = serve(&a, local("z", Some(&key))).await;
        let err = client_session(&b, &local("z", Some(&other)), addr, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SyncError::Io(_) | SyncError::Timeout),
            "{err}"
        );
        let err = client_session(&b, &local("z", None), addr, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SyncError::Io(_) | SyncError::Timeout),
            "{err}"
        );
        let plain = serve(&a, local("z", None)).await;
        let err = client_session(&b, &local("other-zone", None), plain, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SyncError::Refused(why) if why.contains("other-zone")),
            "{err}"
        );
        assert!(b.snapshot().borrow().is_empty());
    }

    #[tokio::test]
    async fn a_tombstone_past_its_ttl_still_beats_an_old_copy_coming_back() {
        let ttl = Duration::from_millis(100);
        let (a, _da) = store(ttl).await;
        let (b, _db) = store(ttl).await;
        a.apply(docs(&format!(
            "type: Mesh\nname: default\n{}",
            services(0, 2)
        )))
        .await
        .unwrap();
        let addr = serve(&a, local("z", None)).await;
        client_session(&b, &local("z", None), addr, None)
            .await
            .unwrap();
        assert_eq!(b.snapshot().borrow().count(Kind::ExternalService), 2);
        // a deletes es-0 while b is away, and the tombstone leaves a's digest.
        let key = parse_documents(&services(0, 1)).unwrap()[0].resource_key();
        a.apply(vec![Change::Delete(key.clone())]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.shared.state.lock().await.digest_tombstones.len() == 1 {
            assert!(
                Instant::now() < deadline,
                "the tombstone never left the digest"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // b comes back with its old copy: the session ends with es-0 deleted on both.
        client_session(&b, &local("z", None), addr, None)
            .await
            .unwrap();
        assert!(b.snapshot().borrow().get(&key).is_none());
        assert!(a.snapshot().borrow().get(&key).is_none());
        assert_eq!(b.snapshot().borrow().count(Kind::ExternalService), 1);
    }

    #[tokio::test]
    async fn garbage_on_the_sync_port_changes_nothing_and_the_port_keeps_serving() {
        let (a, _da) = store(Duration::from_secs(3600)).await;
        a.apply(docs("type: Mesh\nname: default\n")).await.unwrap();
        let before = root(&a).await;
        let addr = serve(&a, local("z", None)).await;
        for junk in [
            vec![0xff, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            // A well-formed frame out of order: Buckets before Hello.
            {
                let body = wire::encode_body(0, &Message::Buckets(vec![0; BUCKETS])).unwrap();
                let mut f = (body.len() as u32).to_be_bytes().to_vec();
                f.extend(body);
                f
            },
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&junk).await.unwrap();
            let mut buf = Vec::new();
            // The server closes the connection (an error or EOF), never hangs past a frame
            // timeout.
            let _ = tokio::time::timeout(FRAME_TIMEOUT * 2, s.read_to_end(&mut buf))
                .await
                .expect("the server closes a connection that sends garbage");
        }
        // A stranger's first frame may not claim more than a hello needs: refused at once,
        // nothing allocated for it (a node once held 4 MiB per such connection).
        for claimed in [
            HELLO_MAX_BYTES as u32 + 1,
            1 << 20,
            wire::MAX_FRAME_BYTES as u32,
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&claimed.to_be_bytes()).await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
                .await
                .expect("an oversized first frame is refused at once")
                .ok();
        }
        assert_eq!(root(&a).await, before);
        let (b, _db) = store(Duration::from_secs(3600)).await;
        client_session(&b, &local("z", None), addr, None)
            .await
            .unwrap();
        assert_eq!(root(&b).await, before);
    }
}

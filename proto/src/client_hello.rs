//! TLS ClientHello reader: the first stage after `accept` on the egress (DESIGN.md §6, step 1).
//!
//! The egress must learn the SNI before it knows whether to pass the connection through to a
//! remote ingress (replaying the exact bytes it buffered) or to terminate TLS itself. rustls
//! refuses the Kuma tag form (`backend{mesh=default}` is not a DNS name), so the hello is read
//! here, without rustls, and only parsed: nothing is consumed, nothing is answered.
//!
//! [`parse`] is called on everything buffered so far. It returns
//! * `Ok(`[`ClientHello`]`)` once the whole handshake message is there; [`ClientHello::consumed`]
//!   says how many bytes (whole records) it took, so the caller replays exactly those;
//! * [`HelloError::Incomplete`] while more bytes can still make a valid hello, with a lower bound
//!   on the total buffer length needed. A hello may be split across reads and across several
//!   handshake records; any prefix of a valid hello gives `Incomplete`, never another error;
//! * a typed rejection otherwise; [`HelloError::reason`] is the connection's [`Rejection`].
//!
//! Limits: the handshake body is at most [`MAX_HANDSHAKE_BODY`] bytes and the hello's records at
//! most [`MAX_HELLO_BYTES`] in all; a buffer of `MAX_HELLO_BYTES` or more never gives `Incomplete`,
//! so a caller that caps its buffer there always gets a verdict. Nothing here panics on any input
//! and nothing is allocated beyond the bytes actually present.

use crate::rejection::Rejection;

/// Content type of a TLS handshake record.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Length of a TLS record header: type, version, length.
const RECORD_HEADER_LEN: usize = 5;
/// Length of a handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest record payload allowed by RFC 8446 §5.1 (2^14).
const MAX_RECORD_LEN: usize = 16 * 1024;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// `NameType` of a DNS host name in the server_name extension (RFC 6066 §3).
const NAME_TYPE_HOST_NAME: u8 = 0;

/// Largest ClientHello body accepted, after the 4-byte handshake header.
pub const MAX_HANDSHAKE_BODY: usize = 16 * 1024;

/// Most records a ClientHello may span within [`MAX_HELLO_BYTES`]: a `MAX_HANDSHAKE_BODY` hello
/// cut into 512-byte fragments (the smallest `max_fragment_length` of RFC 6066) needs 33.
pub const MAX_HELLO_RECORDS: usize = 33;

/// Most bytes buffered for one ClientHello: the handshake body and header plus the headers of
/// [`MAX_HELLO_RECORDS`] records. A hello that needs more is [`HelloError::TooLarge`].
pub const MAX_HELLO_BYTES: usize =
    MAX_HANDSHAKE_BODY + HANDSHAKE_HEADER_LEN + MAX_HELLO_RECORDS * RECORD_HEADER_LEN;

/// What the egress needs from a ClientHello to route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, byte for byte (printable ASCII, not
    /// validated as a DNS name: the Kuma tag form comes through intact); `None` without SNI.
    pub server_name: Option<String>,
    /// Protocols offered in the ALPN extension, in the client's order; empty without ALPN.
    pub alpn: Vec<String>,
    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The supported_versions extension, in the client's order (GREASE values included), if
    /// present.
    pub supported_versions: Option<Vec<u16>>,
    /// Number of bytes at the start of the buffer holding the whole records of the hello: replay
    /// exactly `&buf[..consumed]` to the destination. Bytes after it were not looked at.
    pub consumed: usize,
}

/// Why a buffer is not (yet) a ClientHello the egress can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Everything so far is consistent with a ClientHello, but it is not complete: read more.
    #[error("incomplete ClientHello (need at least {needed:?} bytes)")]
    Incomplete {
        /// Lower bound on the total buffer length at which parsing can progress; always `Some`
        /// today, `None` would mean "unknown, read anything".
        needed: Option<usize>,
    },
    /// The first byte is not a TLS handshake record (plain text such as `GET / HTTP/1.1`, or
    /// garbage).
    #[error("not TLS: the first record is not a handshake record")]
    NotTls,
    /// An SSLv2-compatible ClientHello (2-byte record header with the high bit set).
    #[error("SSLv2-compatible ClientHello")]
    Sslv2,
    /// A record or hello version the egress does not accept (SSL 3.0 hello, unknown 3.x record).
    #[error("unsupported TLS version {version:#06x}")]
    UnsupportedVersion {
        /// The version as sent.
        version: u16,
    },
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message has type {msg_type}, not ClientHello (1)")]
    NotClientHello {
        /// The handshake type as sent.
        msg_type: u8,
    },
    /// The hello is larger than [`MAX_HANDSHAKE_BODY`], or its records need more than
    /// [`MAX_HELLO_BYTES`].
    #[error("ClientHello larger than {MAX_HELLO_BYTES} bytes of records")]
    TooLarge,
    /// Inconsistent lengths or framing; the text says which.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl HelloError {
    /// Why the connection is refused (labels `not_tls`, `sslv2`, `truncated`, `oversized`, ...).
    pub fn reason(&self) -> Rejection {
        match self {
            HelloError::Incomplete { .. } => Rejection::Truncated,
            HelloError::NotTls => Rejection::NotTls,
            HelloError::Sslv2 => Rejection::Sslv2,
            HelloError::UnsupportedVersion { .. } => Rejection::UnsupportedVersion,
            HelloError::NotClientHello { .. } => Rejection::NotClientHello,
            HelloError::TooLarge => Rejection::Oversized,
            HelloError::Malformed(_) => Rejection::Malformed,
        }
    }

    /// Whether more bytes may still make a hello (the caller keeps reading).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, HelloError::Incomplete { .. })
    }
}

/// Reads the ClientHello at the start of `buf` (everything buffered from the client so far).
///
/// Bytes after the hello's last record are ignored. Call again with a longer buffer after
/// [`HelloError::Incomplete`]; every other error is final for the connection.
pub fn parse(buf: &[u8]) -> Result<ClientHello, HelloError> {
    match buf.first() {
        None => return incomplete(RECORD_HEADER_LEN),
        Some(&CONTENT_HANDSHAKE) => {}
        Some(&first) if first & 0x80 != 0 => {
            // SSLv2 record: 2-byte length with the high bit set, then msg_type 1 (CLIENT-HELLO).
            return match buf.get(2) {
                None => incomplete(3),
                Some(&1) => Err(HelloError::Sslv2),
                Some(_) => Err(HelloError::NotTls),
            };
        }
        Some(_) => return Err(HelloError::NotTls),
    }

    // Handshake-message bytes present so far, across records. Only bytes present in `buf` are
    // copied, and the record walk stops at MAX_HELLO_BYTES, so this stays bounded.
    let mut msg: Vec<u8> = Vec::new();
    // Message bytes declared by the records walked so far (complete or not).
    let mut declared = 0usize;
    let mut pos = 0usize;
    loop {
        let record_len = record_header(buf, pos, msg_remaining(&msg, declared))?;
        if record_len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if record_len > MAX_RECORD_LEN {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        let start = pos + RECORD_HEADER_LEN;
        let end = start + record_len;
        if end > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let present = buf.get(start..end.min(buf.len())).unwrap_or_default();
        msg.extend_from_slice(present);
        declared += record_len;

        if let Some(&msg_type) = msg.first() {
            if msg_type != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloError::NotClientHello { msg_type });
            }
        }
        let total = handshake_len(&msg);
        if total.is_some_and(|t| t > HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_BODY) {
            return Err(HelloError::TooLarge);
        }
        if let Some(total) = total {
            if declared > total {
                return Err(HelloError::Malformed(
                    "handshake record carries bytes after the ClientHello",
                ));
            }
        }
        if buf.len() < end {
            // The rest of this record, and if the message goes on, another record header and
            // the rest of the message.
            let more = total.map_or(0, |t| match t - declared {
                0 => 0,
                rest => RECORD_HEADER_LEN + rest,
            });
            return incomplete(end + more);
        }
        pos = end;
        if total == Some(declared) {
            let body = msg.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
            return parse_body(body, pos);
        }
    }
}

/// `Incomplete` with a lower bound on the buffer length, or `TooLarge` if that bound is already
/// beyond [`MAX_HELLO_BYTES`] (so a full buffer never asks for more).
fn incomplete<T>(needed: usize) -> Result<T, HelloError> {
    if needed > MAX_HELLO_BYTES {
        Err(HelloError::TooLarge)
    } else {
        Err(HelloError::Incomplete {
            needed: Some(needed),
        })
    }
}

/// Length of the handshake message, its 4-byte header included, once that header is present.
fn handshake_len(msg: &[u8]) -> Option<usize> {
    match msg.get(..HANDSHAKE_HEADER_LEN) {
        Some(&[_, a, b, c]) => {
            let body_len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
            Some(HANDSHAKE_HEADER_LEN + body_len)
        }
        _ => None,
    }
}

/// Message bytes still to come after the records walked so far, once the handshake header is
/// known (0 before).
fn msg_remaining(msg: &[u8], declared: usize) -> usize {
    handshake_len(msg).map_or(0, |total| total.saturating_sub(declared))
}

/// Checks the record header at `pos` as far as it is present; returns the record length.
/// `rest_of_msg` is how much of the message must still follow the header (for the lower bound).
fn record_header(buf: &[u8], pos: usize, rest_of_msg: usize) -> Result<usize, HelloError> {
    let first = pos == 0;
    let header = buf.get(pos..).unwrap_or_default();
    if let Some(&content_type) = header.first() {
        if content_type != CONTENT_HANDSHAKE {
            return Err(if first {
                HelloError::NotTls
            } else {
                HelloError::Malformed("record of another type inside the ClientHello")
            });
        }
    }
    if let Some(&major) = header.get(1) {
        if major != 3 {
            return Err(if first {
                HelloError::NotTls
            } else {
                HelloError::Malformed("record version is not 3.x")
            });
        }
    }
    if let Some(&minor) = header.get(2) {
        if minor > 4 {
            return Err(HelloError::UnsupportedVersion {
                version: 0x0300 | u16::from(minor),
            });
        }
    }
    match header {
        &[_, _, _, hi, lo, ..] => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
        _ => incomplete(pos + RECORD_HEADER_LEN + rest_of_msg),
    }
}

/// Parses a complete ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
fn parse_body(body: &[u8], consumed: usize) -> Result<ClientHello, HelloError> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16("ClientHello ends inside its version")?;
    if legacy_version >> 8 != 3 || legacy_version < 0x0301 {
        return Err(HelloError::UnsupportedVersion {
            version: legacy_version,
        });
    }
    r.take(32, "ClientHello ends inside its random")?;
    let session_id = r.vec8("session id runs past the ClientHello")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher suites run past the ClientHello")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "cipher suite list is empty or of odd length",
        ));
    }
    let compression = r.vec8("compression methods run past the ClientHello")?;
    if compression.is_empty() {
        return Err(HelloError::Malformed("no compression method"));
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        legacy_version,
        supported_versions: None,
        consumed,
    };
    if r.is_empty() {
        // No extension block at all (allowed before TLS 1.3).
        return Ok(hello);
    }
    let extensions = r.vec16("extension block runs past the ClientHello")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extension block"));
    }

    let mut seen: Vec<u16> = Vec::new();
    let mut exts = Reader::new(extensions);
    while !exts.is_empty() {
        let ext_type = exts.u16("extension block ends inside an extension header")?;
        let data = exts.vec16("extension runs past the extension block")?;
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => {
                hello.supported_versions = Some(parse_supported_versions(data)?)
            }
            _ => {}
        }
    }
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(HelloError::Malformed("duplicate extension"));
    }
    Ok(hello)
}

/// server_name extension (RFC 6066 §3): the `host_name` entry, if any.
/// Whether `b` may appear in a server name this parser accepts: printable ASCII only (no space,
/// no control, no 8-bit), since the SNI ends up in logs and metric labels. Not a DNS check: `{`,
/// `}`, `=` and `,` of the tag form pass. A name with any other byte is `Malformed`.
pub fn is_host_name_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader::new(data);
    let list = r.vec16("server name list runs past its extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server name list"));
    }
    let mut names = Reader::new(list);
    let mut host_name = None;
    while !names.is_empty() {
        let name_type = names.u8("server name runs past its list")?;
        let name = names.vec16("server name runs past its list")?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host_name.is_some() {
            return Err(HelloError::Malformed("more than one host_name"));
        }
        if name.is_empty() {
            return Err(HelloError::Malformed("empty host_name"));
        }
        if !name.iter().all(|&b| is_host_name_byte(b)) {
            return Err(HelloError::Malformed(
                "host_name has a byte outside printable ASCII",
            ));
        }
        host_name = Some(name.iter().map(|&b| char::from(b)).collect());
    }
    Ok(host_name)
}

/// ALPN extension (RFC 7301 §3.1): the protocol names.
fn parse_alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let mut r = Reader::new(data);
    let list = r.vec16("ALPN list runs past its extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("empty ALPN list"));
    }
    let mut protocols = Vec::new();
    let mut names = Reader::new(list);
    while !names.is_empty() {
        let name = names.vec8("ALPN protocol runs past its list")?;
        if name.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| HelloError::Malformed("ALPN protocol name is not UTF-8"))?;
        protocols.push(name.to_owned());
    }
    Ok(protocols)
}

/// supported_versions extension, client form (RFC 8446 §4.2.1).
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, HelloError> {
    let mut r = Reader::new(data);
    let list = r.vec8("supported versions run past their extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the supported versions"));
    }
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "supported versions list is empty or of odd length",
        ));
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

/// Cursor over a byte slice; every read is bounds-checked and fails with the given text.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.rest.len() {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        match self.take(1, what)? {
            &[b] => Ok(b),
            _ => Err(HelloError::Malformed(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        match self.take(2, what)? {
            &[a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(HelloError::Malformed(what)),
        }
    }

    /// A vector with a 1-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// A vector with a 2-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // ---- test-only encoder -------------------------------------------------------------------

    /// What the test encoder puts in a ClientHello.
    #[derive(Debug, Clone)]
    struct Spec {
        legacy_version: u16,
        session_id: Vec<u8>,
        sni: Option<String>,
        alpn: Vec<String>,
        supported_versions: Option<Vec<u16>>,
        /// Other extensions, types distinct and not 0, 16 or 43.
        extra: Vec<(u16, Vec<u8>)>,
    }

    impl Spec {
        fn new(sni: &str) -> Spec {
            Spec {
                legacy_version: 0x0303,
                session_id: vec![7; 32],
                sni: Some(sni.to_owned()),
                alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
                supported_versions: Some(vec![0x0304, 0x0303]),
                extra: vec![(10, vec![0, 2, 0, 0x1d])],
            }
        }

        fn extensions(&self) -> Vec<u8> {
            let mut out = Vec::new();
            if let Some(sni) = &self.sni {
                out.extend(ext(EXT_SERVER_NAME, &sni_data(sni.as_bytes())));
            }
            if !self.alpn.is_empty() {
                out.extend(ext(EXT_ALPN, &alpn_data(&self.alpn)));
            }
            if let Some(versions) = &self.supported_versions {
                out.extend(ext(EXT_SUPPORTED_VERSIONS, &versions_data(versions)));
            }
            for (t, data) in &self.extra {
                out.extend(ext(*t, data));
            }
            out
        }

        /// The handshake message, header included.
        fn message(&self) -> Vec<u8> {
            handshake(&body(
                self.legacy_version,
                &self.session_id,
                &[0x13, 0x01, 0x13, 0x02],
                &[0],
                Some(&self.extensions()),
            ))
        }

        /// What `parse` should return for it, given `consumed`.
        fn expected(&self, consumed: usize) -> ClientHello {
            ClientHello {
                server_name: self.sni.clone(),
                alpn: self.alpn.clone(),
                legacy_version: self.legacy_version,
                supported_versions: self.supported_versions.clone(),
                consumed,
            }
        }
    }

    fn u16b(v: usize) -> [u8; 2] {
        u16::try_from(v).unwrap().to_be_bytes()
    }

    fn ext(t: u16, data: &[u8]) -> Vec<u8> {
        let mut out = t.to_be_bytes().to_vec();
        out.extend(u16b(data.len()));
        out.extend(data);
        out
    }

    fn sni_data(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend(u16b(name.len()));
        entry.extend(name);
        list16(&entry)
    }

    fn list16(items: &[u8]) -> Vec<u8> {
        let mut out = u16b(items.len()).to_vec();
        out.extend(items);
        out
    }

    fn alpn_data(protocols: &[String]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protocols {
            list.push(u8::try_from(p.len()).unwrap());
            list.extend(p.as_bytes());
        }
        list16(&list)
    }

    fn versions_data(versions: &[u16]) -> Vec<u8> {
        let mut out = vec![u8::try_from(versions.len() * 2).unwrap()];
        for v in versions {
            out.extend(v.to_be_bytes());
        }
        out
    }

    /// A ClientHello body from its parts; `extensions` is the content of the extension block.
    fn body(
        version: u16,
        session_id: &[u8],
        suites: &[u8],
        compression: &[u8],
        extensions: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = version.to_be_bytes().to_vec();
        out.extend([0x42; 32]);
        out.push(u8::try_from(session_id.len()).unwrap());
        out.extend(session_id);
        out.extend(u16b(suites.len()));
        out.extend(suites);
        out.push(u8::try_from(compression.len()).unwrap());
        out.extend(compression);
        if let Some(exts) = extensions {
            out.extend(u16b(exts.len()));
            out.extend(exts);
        }
        out
    }

    /// A handshake message of type ClientHello around `body`.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut out = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
        out.extend(body);
        out
    }

    fn record(content_type: u8, version: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![content_type];
        out.extend(version.to_be_bytes());
        out.extend(u16b(payload.len()));
        out.extend(payload);
        out
    }

    /// `msg` in handshake records cut at `cuts` (positions inside `msg`).
    fn records(msg: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < msg.len())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain(std::iter::once(msg.len())) {
            out.extend(record(CONTENT_HANDSHAKE, 0x0301, &msg[start..end]));
            start = end;
        }
        out
    }

    fn one_record(msg: &[u8]) -> Vec<u8> {
        records(msg, &[])
    }

    /// A hello whose body is `body`, in one record.
    fn hello_with_body(body: &[u8]) -> Vec<u8> {
        one_record(&handshake(body))
    }

    /// A hello whose extension block is `exts`, in one record.
    fn hello_with_exts(exts: &[u8]) -> Vec<u8> {
        hello_with_body(&body(0x0303, &[], &[0x13, 0x01], &[0], Some(exts)))
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(HelloError::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// Every strict prefix is `Incomplete` with a `needed` in (prefix length, full length].
    fn assert_prefixes_incomplete(full: &[u8]) {
        for len in 0..full.len() {
            match parse(&full[..len]) {
                Err(HelloError::Incomplete { needed: Some(n) }) => {
                    assert!(n > len && n <= full.len(), "prefix {len}: needed {n}")
                }
                other => panic!("prefix {len} of {}: {other:?}", full.len()),
            }
        }
    }

    // ---- real captures -----------------------------------------------------------------------

    // `openssl s_client -servername 'backend{mesh=default}' -alpn h2,http/1.1` (OpenSSL 3.0.22)
    // against a loopback listener that dumped what it received.
    const OPENSSL_TAG_SNI: &str = concat!(
        "1603010154010001500303ddbd13ee2dc4ddbd6199a87a88f67a056e87d6135b3bca2c89311f893f",
        "7e564e205e40d29c530d34b783074ce0b83cfb0074e9378e1ccfb3df5ce05c1dfb7e1515003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010000c90000001a00180000156261636b656e64",
        "7b6d6573683d64656661756c747d000b000403000102000a00160014001d0017001e001900180100",
        "0101010201030104002300000010000e000c02683208687474702f312e310016000000170000000d",
        "002a0028040305030603080708080809080a080b0804080508060401050106010303030103020402",
        "05020602002b0009080304030303020301002d00020101003300260024001d0020ba983136a77ae8",
        "260303714df7571aeaabd9ff9f1e1d335a1ad7f40307866f20",
    );

    // The same kind of capture with `-servername 'backend{mesh=default,version=v1}'`,
    // `-max_send_frag 512` and a long ALPN list: one ClientHello in two handshake records
    // (512 + 139 bytes).
    const OPENSSL_TWO_RECORDS: &str = concat!(
        "16030102000100028703039b9678c6ed9285b623c1be844bdafc0cb2d308592127f8c1f8cc824a0f",
        "fb81cf20cd9df0a3fb0f0740dfddd02c9e1d343cead0a76801473da54af8827b4c62288a003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010002000000002500230000206261636b656e64",
        "7b6d6573683d64656661756c742c76657273696f6e3d76317d000b000403000102000a0016001400",
        "1d0017001e0019001801000101010201030104002300000010013a013802683208687474702f312e",
        "311d70726f746f2d30302d78787878787878787878787878787878787878781d70726f746f2d3031",
        "2d78787878787878787878787878787878787878781d70726f746f2d30322d787878787878787878",
        "78787878787878787878781d70726f746f2d30332d78787878787878787878787878787878787878",
        "781d70726f746f2d30342d78787878787878787878787878787878787878781d70726f746f2d3035",
        "2d78787878787878787878787878787878787878781d70726f746f2d30362d787878787878787878",
        "78787878787878787878781d70726f746f2d30372d78787878787878787878787878787878787878",
        "781d70726f746f2d30382d78787878787878787878787878787878787878781d70726f746f160301",
        "008b2d30392d78787878787878787878787878787878787878780016000000170000000d002a0028",
        "040305030603080708080809080a080b080408050806040105010601030303010302040205020602",
        "002b0009080304030303020301002d00020101003300260024001d0020314e754cb29b6104abc462",
        "1ebe00bbc2b94ad59c9a48d696a0d661c2e87d786c",
    );

    // `curl -k --resolve ae10a8071b8a8eeb8.backend.8080.demo.ms:PORT:127.0.0.1 https://...`
    // (curl 7.88.1, OpenSSL 3.0.22): the hashed SNI form, padded to 512 bytes.
    const CURL_HASHED_SNI: &str = concat!(
        "1603010200010001fc0303ac55783dc8d9dc6cf062d34c2c853487450fabf786263dd023bc323312",
        "27e95f209a677738f6906fe31ed6dc629127b4eb16e2c6b10c4c9ff63f4486e749163c90003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010001750000002b002900002661653130613830",
        "373162386138656562382e6261636b656e642e383038302e64656d6f2e6d73000b00040300010200",
        "0a00160014001d0017001e00190018010001010102010301040010000e000c02683208687474702f",
        "312e31001600000017000000310000000d002a0028040305030603080708080809080a080b080408",
        "050806040105010601030303010302040205020602002b0009080304030303020301002d00020101",
        "003300260024001d00207ae2a165357aa3c1478727a3271257831569dc862f7dc7e55e1c85deed05",
        "c7340015009700000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000",
    );

    #[test]
    fn openssl_capture_with_tag_sni() {
        let buf = hex(OPENSSL_TAG_SNI);
        let hello = parse(&buf).unwrap();
        assert_eq!(
            hello,
            ClientHello {
                server_name: Some("backend{mesh=default}".to_owned()),
                alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
                legacy_version: 0x0303,
                supported_versions: Some(vec![0x0304, 0x0303, 0x0302, 0x0301]),
                consumed: 345,
            }
        );
        assert_eq!(buf.len(), 345);
        assert_prefixes_incomplete(&buf);
        let sni = crate::sni::Sni::parse(hello.server_name.as_deref().unwrap()).unwrap();
        assert_eq!(sni.to_string(), "backend{mesh=default}");
    }

    #[test]
    fn curl_capture_with_hashed_sni() {
        let buf = hex(CURL_HASHED_SNI);
        let hello = parse(&buf).unwrap();
        assert_eq!(hello.consumed, 517);
        assert_eq!(buf.len(), 517);
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        let sni = hello.server_name.unwrap();
        assert_eq!(sni, "ae10a8071b8a8eeb8.backend.8080.demo.ms");
        assert!(crate::sni::verify_hashed(
            &sni,
            "backend",
            "demo",
            &Default::default(),
            8080,
            crate::sni::HashedKind::Ms
        ));
        assert_prefixes_incomplete(&buf);
    }

    #[test]
    fn openssl_capture_in_two_records() {
        let buf = hex(OPENSSL_TWO_RECORDS);
        assert_eq!(buf.len(), 661);
        assert_eq!(&buf[..5], &[0x16, 0x03, 0x01, 0x02, 0x00]);
        let hello = parse(&buf).unwrap();
        assert_eq!(hello.consumed, 661);
        assert_eq!(
            hello.server_name.as_deref(),
            Some("backend{mesh=default,version=v1}")
        );
        assert_eq!(hello.alpn.len(), 12);
        assert_eq!(hello.alpn[2], "proto-00-xxxxxxxxxxxxxxxxxxxx");
        assert_prefixes_incomplete(&buf);
        // The first record alone asks for the second record's header and the rest.
        assert_eq!(
            parse(&buf[..517]),
            Err(HelloError::Incomplete {
                needed: Some(517 + 5 + 139)
            })
        );
    }

    #[test]
    fn bytes_after_the_hello_are_not_consumed() {
        for fixture in [OPENSSL_TAG_SNI, CURL_HASHED_SNI, OPENSSL_TWO_RECORDS] {
            let mut buf = hex(fixture);
            let len = buf.len();
            // A ChangeCipherSpec and early data behind the hello.
            buf.extend(record(20, 0x0303, &[1]));
            buf.extend(record(23, 0x0303, b"early"));
            let hello = parse(&buf).unwrap();
            assert_eq!(hello.consumed, len);
            assert_eq!(parse(&buf[..len]).unwrap(), hello);
        }
    }

    /// A ClientHello with a post-quantum key share (X25519MLKEM768, 1216 bytes, as aws-lc-based
    /// clients and recent browsers send), synthesized: the local OpenSSL 3.0 cannot offer it.
    fn post_quantum_spec() -> Spec {
        let mut shares = Vec::new();
        shares.extend(0x11ecu16.to_be_bytes());
        shares.extend(u16b(1216));
        shares.extend((0..1216).map(|i| (i * 7 % 251) as u8));
        shares.extend(0x001du16.to_be_bytes());
        shares.extend(u16b(32));
        shares.extend([9; 32]);
        let mut spec = Spec::new("a601e0c00295a9fbe.backend.8080.default.ms");
        spec.extra = vec![
            (10, vec![0, 6, 0x11, 0xec, 0, 0x1d, 0, 0x17]),
            (13, vec![0, 4, 4, 3, 8, 4]),
            (45, vec![1, 1]),
            (51, list16(&shares)),
            (21, vec![0; 200]),
        ];
        spec
    }

    #[test]
    fn post_quantum_hello_of_1_5_kib_in_one_or_four_records() {
        let spec = post_quantum_spec();
        let msg = spec.message();
        assert!(msg.len() > 1500, "{}", msg.len());
        let single = one_record(&msg);
        assert_eq!(parse(&single).unwrap(), spec.expected(single.len()));
        let split = records(&msg, &[3, 700, 1400]);
        assert_eq!(split.len(), single.len() + 15);
        assert_eq!(parse(&split).unwrap(), spec.expected(split.len()));
        assert_prefixes_incomplete(&split);
    }

    // ---- every outcome -----------------------------------------------------------------------

    #[test]
    fn empty_buffer_needs_a_record_header() {
        assert_eq!(parse(&[]), Err(HelloError::Incomplete { needed: Some(5) }));
    }

    #[test]
    fn handshake_header_split_across_one_byte_records() {
        let spec = Spec::new("backend{mesh=default}");
        let msg = spec.message();
        let buf = records(&msg, &[1, 2, 3, 4, 5]);
        assert_eq!(parse(&buf).unwrap(), spec.expected(buf.len()));
        assert_prefixes_incomplete(&buf);
    }

    #[test]
    fn hello_without_extensions_has_no_sni() {
        let buf = hello_with_body(&body(0x0303, &[], &[0x00, 0x2f], &[0], None));
        assert_eq!(
            parse(&buf).unwrap(),
            ClientHello {
                server_name: None,
                alpn: vec![],
                legacy_version: 0x0303,
                supported_versions: None,
                consumed: buf.len(),
            }
        );
        let buf = hello_with_exts(&[]);
        assert_eq!(parse(&buf).unwrap().server_name, None);
    }

    #[test]
    fn unknown_server_name_types_are_skipped() {
        let mut list = vec![1, 0, 2, b'x', b'y'];
        list.extend([0, 0, 3]);
        list.extend(b"foo");
        let buf = hello_with_exts(&ext(0, &list16(&list)));
        assert_eq!(parse(&buf).unwrap().server_name.as_deref(), Some("foo"));
    }

    #[test]
    fn plain_text_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"G"), Err(HelloError::NotTls));
        assert_eq!(parse(b"PRI * HTTP/2.0"), Err(HelloError::NotTls));
        // Handshake content type but not a 3.x record.
        assert_eq!(parse(&[0x16, 0x41]), Err(HelloError::NotTls));
        // SSLv2-looking length, but not CLIENT-HELLO.
        assert_eq!(parse(&[0x80, 0x2e, 0x04]), Err(HelloError::NotTls));
    }

    #[test]
    fn sslv2_hello_is_rejected() {
        // SSLv2-compatible CLIENT-HELLO offering TLS 1.0.
        let buf = [
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        assert_eq!(parse(&buf), Err(HelloError::Sslv2));
        assert_eq!(
            parse(&buf[..2]),
            Err(HelloError::Incomplete { needed: Some(3) })
        );
        assert_eq!(HelloError::Sslv2.reason().label(), "sslv2");
    }

    #[test]
    fn unsupported_versions_are_rejected() {
        assert_eq!(
            parse(&[0x16, 0x03, 0x05]),
            Err(HelloError::UnsupportedVersion { version: 0x0305 })
        );
        let mut spec = Spec::new("backend{mesh=default}");
        for version in [0x0300, 0x0200, 0x0400, 0x0000] {
            spec.legacy_version = version;
            assert_eq!(
                parse(&one_record(&spec.message())),
                Err(HelloError::UnsupportedVersion { version })
            );
        }
        // A 3.0 record carrying a TLS 1.2 hello is fine (RFC 5246 Appendix E.1).
        spec.legacy_version = 0x0303;
        let msg = spec.message();
        let buf = record(CONTENT_HANDSHAKE, 0x0300, &msg);
        assert_eq!(parse(&buf).unwrap(), spec.expected(buf.len()));
    }

    #[test]
    fn other_handshake_messages_are_not_client_hello() {
        // ServerHello (2) is known from the sixth byte on.
        let buf = record(CONTENT_HANDSHAKE, 0x0303, &[2, 0, 0, 4, 3, 3, 0, 0]);
        assert_eq!(
            parse(&buf[..6]),
            Err(HelloError::NotClientHello { msg_type: 2 })
        );
        assert_eq!(parse(&buf), Err(HelloError::NotClientHello { msg_type: 2 }));
    }

    #[test]
    fn oversized_hellos_are_rejected_early() {
        // Handshake body of 16 KiB + 1: known from the header alone.
        let buf = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x40, 0x01];
        assert_eq!(parse(&buf), Err(HelloError::TooLarge));
        // The largest body is fine as far as it goes.
        let buf = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x40, 0x00];
        assert!(parse(&buf).unwrap_err().is_incomplete());
        // The largest body in 300-byte records: 55 record headers are over the budget.
        let msg = handshake(&[3; MAX_HANDSHAKE_BODY]);
        let cuts: Vec<usize> = (1..55).map(|i| i * 300).collect();
        let buf = records(&msg, &cuts);
        assert!(buf.len() > MAX_HELLO_BYTES);
        assert_eq!(parse(&buf), Err(HelloError::TooLarge));
        // The largest valid hello, padded to a 16 KiB body, fits in 1000-byte records.
        let mut spec = Spec::new("backend{mesh=default}");
        spec.extra = vec![(21, vec![])];
        let short = spec.message().len();
        spec.extra = vec![(
            21,
            vec![0; HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_BODY - short],
        )];
        let msg = spec.message();
        assert_eq!(msg.len(), HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_BODY);
        let cuts: Vec<usize> = (1..17).map(|i| i * 1000).collect();
        let buf = records(&msg, &cuts);
        assert!(buf.len() < MAX_HELLO_BYTES);
        assert_eq!(parse(&buf), Ok(spec.expected(buf.len())));
        // One byte more is too large.
        spec.extra = vec![(
            21,
            vec![0; HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_BODY + 1 - short],
        )];
        let buf = records(&spec.message(), &cuts);
        assert_eq!(parse(&buf), Err(HelloError::TooLarge));
        assert_eq!(HelloError::TooLarge.reason().label(), "oversized");
    }

    #[test]
    fn tiny_records_run_out_of_budget() {
        // A 9 KB body in one-byte records needs far more than MAX_HELLO_BYTES.
        let mut msg = vec![1, 0, 0x23, 0x28];
        msg.extend([0; 9000]);
        let cuts: Vec<usize> = (1..msg.len()).collect();
        let buf = records(&msg, &cuts);
        assert_eq!(parse(&buf), Err(HelloError::TooLarge));
        assert_eq!(parse(&buf[..MAX_HELLO_BYTES]), Err(HelloError::TooLarge));
        // It is already known to be too large after a few records.
        assert_eq!(parse(&buf[..6 * 1600]), Err(HelloError::TooLarge));
    }

    #[test]
    fn record_framing_errors_are_malformed() {
        let msg = Spec::new("backend{mesh=default}").message();
        // Zero-length record.
        let mut buf = record(CONTENT_HANDSHAKE, 0x0301, &[]);
        buf.extend(one_record(&msg));
        assert_eq!(malformed(&buf), "empty handshake record");
        // Record over 2^14.
        assert_eq!(
            malformed(&[0x16, 0x03, 0x01, 0x40, 0x01]),
            "record longer than 2^14 bytes"
        );
        // An alert between two fragments of the hello.
        let mut buf = record(CONTENT_HANDSHAKE, 0x0301, &msg[..10]);
        buf.extend(record(21, 0x0301, &[2, 40]));
        assert_eq!(
            malformed(&buf[..16]),
            "record of another type inside the ClientHello"
        );
        // A second record with a non-3.x version.
        let mut buf = record(CONTENT_HANDSHAKE, 0x0301, &msg[..10]);
        buf.extend(record(CONTENT_HANDSHAKE, 0x0201, &msg[10..]));
        assert_eq!(malformed(&buf), "record version is not 3.x");
        // Bytes after the hello inside its (last) record, known from the headers alone.
        let mut padded = msg.clone();
        padded.extend([0; 3]);
        let buf = one_record(&padded);
        assert_eq!(
            malformed(&buf[..9]),
            "handshake record carries bytes after the ClientHello"
        );
    }

    #[test]
    fn body_framing_errors_are_malformed() {
        let exts = Spec::new("backend{mesh=default}").extensions();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![3], "ClientHello ends inside its version"),
            (vec![3, 3, 1, 2], "ClientHello ends inside its random"),
            (
                body(0x0303, &[0; 33], &[0, 0x2f], &[0], None),
                "session id longer than 32 bytes",
            ),
            (
                body(0x0303, &[], &[0, 0x2f, 0], &[0], None),
                "cipher suite list is empty or of odd length",
            ),
            (
                body(0x0303, &[], &[], &[0], None),
                "cipher suite list is empty or of odd length",
            ),
            (
                body(0x0303, &[], &[0, 0x2f], &[], None),
                "no compression method",
            ),
            (
                {
                    let mut b = body(0x0303, &[], &[0, 0x2f], &[0], None);
                    b.extend([0, 10, 0, 0]);
                    b
                },
                "extension block runs past the ClientHello",
            ),
            (
                {
                    let mut b = body(0x0303, &[], &[0, 0x2f], &[0], Some(&exts));
                    b.push(0);
                    b
                },
                "bytes after the extension block",
            ),
            (
                body(0x0303, &[], &[0, 0x2f], &[0], Some(&[0])),
                "extension block ends inside an extension header",
            ),
            (
                body(0x0303, &[], &[0, 0x2f], &[0], Some(&[0, 5, 0, 9, 1])),
                "extension runs past the extension block",
            ),
            (
                body(
                    0x0303,
                    &[],
                    &[0, 0x2f],
                    &[0],
                    Some(&{
                        let mut e = ext(45, &[1, 1]);
                        e.extend(ext(45, &[1, 1]));
                        e
                    }),
                ),
                "duplicate extension",
            ),
            (
                body(
                    0x0303,
                    &[],
                    &[0, 0x2f],
                    &[0],
                    Some(&{
                        let mut e = exts.clone();
                        e.extend(ext(0, &sni_data(b"other")));
                        e
                    }),
                ),
                "duplicate extension",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(malformed(&hello_with_body(&body)), want, "{body:?}");
        }
    }

    #[test]
    fn server_name_errors_are_malformed() {
        let two = {
            let mut l = vec![0, 0, 1, b'a', 0, 0, 1, b'b'];
            l = list16(&l);
            l
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0], "server name list runs past its extension"),
            (
                vec![0, 5, 0, 0, 1, b'a'],
                "server name list runs past its extension",
            ),
            (
                {
                    let mut d = sni_data(b"a");
                    d.push(0);
                    d
                },
                "bytes after the server name list",
            ),
            (vec![0, 0], "empty server name list"),
            (list16(&[0, 0]), "server name runs past its list"),
            (list16(&[0, 0, 9, b'a']), "server name runs past its list"),
            (two, "more than one host_name"),
            (sni_data(b""), "empty host_name"),
            (
                sni_data("bäckend".as_bytes()),
                "host_name has a byte outside printable ASCII",
            ),
            (
                sni_data(b"back\x00end"),
                "host_name has a byte outside printable ASCII",
            ),
            (
                sni_data(b"back end"),
                "host_name has a byte outside printable ASCII",
            ),
            (
                sni_data(b"backend\x7f"),
                "host_name has a byte outside printable ASCII",
            ),
        ];
        for (data, want) in cases {
            assert_eq!(
                malformed(&hello_with_exts(&ext(0, &data))),
                want,
                "{data:?}"
            );
        }
    }

    #[test]
    fn alpn_and_version_errors_are_malformed() {
        let cases: Vec<(u16, Vec<u8>, &str)> = vec![
            (16, vec![0, 3, 2, b'h'], "ALPN list runs past its extension"),
            (
                16,
                vec![0, 3, 2, b'h', b'2', 0],
                "bytes after the ALPN list",
            ),
            (16, vec![0, 0], "empty ALPN list"),
            (16, vec![0, 1, 0], "empty ALPN protocol name"),
            (16, vec![0, 2, 1, 0xff], "ALPN protocol name is not UTF-8"),
            (16, vec![0, 2, 5, b'h'], "ALPN protocol runs past its list"),
            (
                43,
                vec![3, 3, 4],
                "supported versions run past their extension",
            ),
            (43, vec![2, 3, 4, 0], "bytes after the supported versions"),
            (
                43,
                vec![0],
                "supported versions list is empty or of odd length",
            ),
            (
                43,
                vec![3, 3, 4, 3],
                "supported versions list is empty or of odd length",
            ),
        ];
        for (t, data, want) in cases {
            assert_eq!(
                malformed(&hello_with_exts(&ext(t, &data))),
                want,
                "{data:?}"
            );
        }
    }

    #[test]
    fn reasons_are_metric_labels() {
        let all = [
            (HelloError::Incomplete { needed: None }, "truncated"),
            (HelloError::NotTls, "not_tls"),
            (HelloError::Sslv2, "sslv2"),
            (
                HelloError::UnsupportedVersion { version: 0x0300 },
                "unsupported_version",
            ),
            (
                HelloError::NotClientHello { msg_type: 2 },
                "not_client_hello",
            ),
            (HelloError::TooLarge, "oversized"),
            (HelloError::Malformed("x"), "malformed"),
        ];
        for (error, reason) in all {
            assert_eq!(error.reason().label(), reason);
            assert!(!error.to_string().is_empty());
        }
    }

    // ---- properties --------------------------------------------------------------------------

    fn arb_spec() -> impl Strategy<Value = Spec> {
        (
            prop::option::of("[a-z0-9.{}=,_-]{1,80}"),
            prop::collection::vec("[a-z0-9/._-]{1,30}", 0..5),
            prop::option::of(prop::collection::vec(any::<u16>(), 1..8)),
            prop::collection::vec(any::<u8>(), 0..=32),
            prop::collection::btree_map(
                any::<u16>().prop_filter("parsed extension", |t| ![0, 16, 43].contains(t)),
                prop::collection::vec(any::<u8>(), 0..120),
                0..6,
            ),
            prop::sample::select(vec![0x0301u16, 0x0302, 0x0303, 0x0304, 0x03ff]),
        )
            .prop_map(
                |(sni, alpn, supported_versions, session_id, extra, legacy_version)| Spec {
                    legacy_version,
                    session_id,
                    sni,
                    alpn,
                    supported_versions,
                    extra: extra.into_iter().collect(),
                },
            )
    }

    fn arb_cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
        prop::collection::vec(any::<prop::sample::Index>(), 0..5)
    }

    fn cut_positions(msg: &[u8], cuts: &[prop::sample::Index]) -> Vec<usize> {
        cuts.iter().map(|i| i.index(msg.len())).collect()
    }

    /// The invariants that hold for any input.
    fn check_invariants(buf: &[u8]) {
        match parse(buf) {
            Ok(hello) => {
                assert!(hello.consumed <= buf.len());
                assert_eq!(parse(&buf[..hello.consumed]), Ok(hello));
            }
            Err(HelloError::Incomplete { needed: Some(n) }) => {
                assert!(n > buf.len() && n <= MAX_HELLO_BYTES);
                assert!(buf.len() < MAX_HELLO_BYTES);
            }
            Err(HelloError::Incomplete { needed: None }) => panic!("needed is always known"),
            Err(_) => {}
        }
    }

    proptest! {
        #[test]
        fn generated_hellos_round_trip(spec in arb_spec()) {
            let buf = one_record(&spec.message());
            prop_assert_eq!(parse(&buf), Ok(spec.expected(buf.len())));
        }

        #[test]
        fn record_splits_do_not_change_the_result(spec in arb_spec(), cuts in arb_cuts()) {
            let msg = spec.message();
            let buf = records(&msg, &cut_positions(&msg, &cuts));
            prop_assert_eq!(parse(&buf), Ok(spec.expected(buf.len())));
        }

        #[test]
        fn every_prefix_is_incomplete(spec in arb_spec(), cuts in arb_cuts()) {
            let msg = spec.message();
            let buf = records(&msg, &cut_positions(&msg, &cuts));
            for len in 0..buf.len() {
                match parse(&buf[..len]) {
                    Err(HelloError::Incomplete { needed: Some(n) }) => {
                        prop_assert!(n > len && n <= buf.len(), "prefix {}: needed {}", len, n);
                    }
                    other => prop_assert!(false, "prefix {} of {}: {:?}", len, buf.len(), other),
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
            check_invariants(&buf);
        }

        #[test]
        fn random_records_never_panic(
            version in any::<u16>(),
            payload in prop::collection::vec(any::<u8>(), 0..600),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = record(CONTENT_HANDSHAKE, version, &payload);
            buf.extend(tail);
            check_invariants(&buf);
            // And with a plausible handshake header in front of the random body.
            let mut buf = one_record(&handshake(&payload));
            buf.extend(payload.iter().take(7));
            check_invariants(&buf);
        }

        #[test]
        fn mutated_hellos_never_panic(
            spec in arb_spec(),
            cuts in arb_cuts(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            keep in any::<prop::sample::Index>(),
        ) {
            let msg = spec.message();
            let mut buf = records(&msg, &cut_positions(&msg, &cuts));
            for (at, byte) in flips {
                let i = at.index(buf.len());
                buf[i] = byte;
            }
            buf.truncate(keep.index(buf.len() + 1));
            check_invariants(&buf);
        }

        #[test]
        fn a_full_buffer_always_gets_a_verdict(
            body_len in 0..=MAX_HANDSHAKE_BODY,
            sizes in prop::collection::vec(1..=MAX_RECORD_LEN, 1..40),
        ) {
            let mut msg = handshake(&vec![3; body_len]);
            msg.extend([0; 64]);
            let mut buf = Vec::new();
            let mut start = 0;
            for size in sizes.iter().cycle() {
                if start >= msg.len() || buf.len() >= MAX_HELLO_BYTES + 64 {
                    break;
                }
                let end = (start + size).min(msg.len());
                buf.extend(record(CONTENT_HANDSHAKE, 0x0301, &msg[start..end]));
                start = end;
            }
            if buf.len() >= MAX_HELLO_BYTES {
                prop_assert!(!parse(&buf[..MAX_HELLO_BYTES]).unwrap_err().is_incomplete());
            }
            check_invariants(&buf);
        }
    }
}

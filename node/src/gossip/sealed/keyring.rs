//! The gossip keyring: keys from `gossip.key_file`, sealing and opening one message
//! (XChaCha20-Poly1305, the timestamp inside the authenticated plaintext). Pure: the caller
//! gives the time.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{CONTEXT, DropReason, KEY_BYTES, MAX_SKEW_MS, NONCE_BYTES, TAG_BYTES, TIMESTAMP_BYTES};

/// Generates a new gossip key: base64 (standard) of 32 random bytes, one line of a key file.
///
/// Panics if the operating system's random source fails.
pub fn generate_key() -> String {
    STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

/// One gossip key; its `Debug` prints `<redacted>`.
#[derive(Clone)]
pub(super) struct SecretKey([u8; KEY_BYTES]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretKey {
    pub(super) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// The cluster keys: the first seals outgoing messages, every key opens incoming ones.
#[derive(Clone, Debug)]
pub struct Keyring {
    pub(super) sealing: SecretKey,
    pub(super) others: Vec<SecretKey>,
}

/// Why a key file was refused. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The key file could not be read.
    #[error("cannot read gossip key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file was read but its content is refused.
    #[error("gossip key file {}: {error}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        error: Box<KeyringError>,
    },
    /// A line is not standard base64.
    #[error("line {line}: not a base64 key")]
    NotBase64 {
        /// 1-based line number.
        line: usize,
    },
    /// A line decodes to something other than 32 bytes.
    #[error("line {line}: the key is {len} bytes, expected {KEY_BYTES}")]
    WrongLength {
        /// 1-based line number.
        line: usize,
        /// Decoded length.
        len: usize,
    },
    /// No key at all.
    #[error(
        "no gossip key (expected one base64 32-byte key per line; `zone-egress keygen` prints one)"
    )]
    NoKey,
}

impl Keyring {
    /// Parses a key file: base64 32-byte keys one per line, blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let bytes = STANDARD
                .decode(line)
                .map_err(|_| KeyringError::NotBase64 { line: number })?;
            let key: [u8; KEY_BYTES] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyringError::WrongLength {
                        line: number,
                        len: bytes.len(),
                    })?;
            keys.push(SecretKey(key));
        }
        let mut keys = keys.into_iter();
        let sealing = keys.next().ok_or(KeyringError::NoKey)?;
        Ok(Keyring {
            sealing,
            others: keys.collect(),
        })
    }

    /// Reads and parses a key file; warns when it is readable by group or others.
    pub fn load(path: impl AsRef<Path>) -> Result<Keyring, KeyringError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the gossip key file is readable by group or others; chmod 600 it");
                }
            }
        }
        Keyring::parse(&text).map_err(|error| KeyringError::Invalid {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }

    /// Number of keys in the ring.
    pub fn key_count(&self) -> usize {
        1 + self.others.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &SecretKey> {
        std::iter::once(&self.sealing).chain(&self.others)
    }

    /// Seals one chitchat datagram with the first key, stamped with `now_ms`.
    pub(super) fn seal(&self, datagram: &[u8], now_ms: u64) -> Result<Vec<u8>, SealError> {
        self.seal_with(CONTEXT, datagram, now_ms)
    }

    /// Opens a sealed chitchat datagram with any key and checks its timestamp against `now_ms`.
    pub(super) fn open(&self, sealed: &[u8], now_ms: u64) -> Result<Opened, OpenError> {
        self.open_with(CONTEXT, sealed, now_ms)
    }

    /// Seals `data` as [`Keyring::seal`] does, with associated data `aad` in place of the
    /// gossip context: another protocol (store sync) binds its frames to itself and to one
    /// session with it. Errors: the random source failed, or `data` is too long for the AEAD.
    pub(crate) fn seal_with(
        &self,
        aad: &[u8],
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut plaintext = Vec::with_capacity(TIMESTAMP_BYTES + datagram.len());
        plaintext.extend_from_slice(&now_ms.to_be_bytes());
        plaintext.extend_from_slice(datagram);
        let ciphertext = self
            .sealing
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::TooLong)?;
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens what [`Keyring::seal_with`] sealed with the same `aad`, with any key, and checks
    /// its timestamp against `now_ms` (60 s either way).
    pub(crate) fn open_with(
        &self,
        aad: &[u8],
        sealed: &[u8],
        now_ms: u64,
    ) -> Result<Opened, OpenError> {
        if sealed.len() < NONCE_BYTES + TIMESTAMP_BYTES + TAG_BYTES {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_BYTES>()
            .ok_or(OpenError::Truncated)?;
        let mut plaintext = self
            .keys()
            .find_map(|key| {
                key.cipher()
                    .decrypt(
                        &XNonce::from(*nonce),
                        Payload {
                            msg: ciphertext,
                            aad,
                        },
                    )
                    .ok()
            })
            .ok_or(OpenError::AuthFailed)?;
        let (timestamp, _) = plaintext
            .split_first_chunk::<TIMESTAMP_BYTES>()
            .ok_or(OpenError::Truncated)?;
        let timestamp_ms = u64::from_be_bytes(*timestamp);
        let skew_ms = timestamp_ms.abs_diff(now_ms);
        if skew_ms > MAX_SKEW_MS {
            return Err(OpenError::Stale { skew_ms });
        }
        plaintext.drain(..TIMESTAMP_BYTES);
        Ok(Opened {
            nonce: *nonce,
            timestamp_ms,
            datagram: plaintext,
        })
    }
}

/// An authentic, fresh message.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(super) nonce: [u8; NONCE_BYTES],
    pub(super) timestamp_ms: u64,
    /// The plaintext.
    pub(crate) datagram: Vec<u8>,
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The operating system's random source failed.
    #[error("the OS random source failed")]
    Random,
    /// The cipher refused the message length.
    #[error("the message is too long to seal")]
    TooLong,
}

/// Why a sealed message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// Shorter than nonce, timestamp and tag.
    #[error("sealed message too short")]
    Truncated,
    /// No key of the ring authenticates it: wrong key, altered or forged.
    #[error("no key of the keyring authenticates the message")]
    AuthFailed,
    /// Authentic, but stamped too far from our clock.
    #[error("timestamp {skew_ms} ms away from our clock")]
    Stale {
        /// Distance between the message's timestamp and our clock.
        skew_ms: u64,
    },
}

impl OpenError {
    pub(super) fn reason(&self) -> DropReason {
        match self {
            OpenError::Truncated => DropReason::Malformed,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::Stale { .. } => DropReason::Stale,
        }
    }
}

//! Why the egress closed a connection before it reached its destination: the `reason` label of
//! `zone_egress_connections_rejected_total`, the access log's `reason` and `GET
//! /v1/inspect/route`'s answer. Labels are stable (dashboards and alerts key on them); the
//! README's reason table is tested against [`Rejection::ALL`].

use std::fmt;

/// One reason a connection was refused. Its [`label`](Rejection::label) is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// `max_connections`: limits.max_connections connections are open.
    MaxConnections,
    /// `hello_timeout`: no complete ClientHello within limits.hello_timeout.
    HelloTimeout,
    /// `truncated`: the connection closed before the ClientHello was complete.
    Truncated,
    /// `read_error`: reading the ClientHello failed.
    ReadError,
    /// `not_tls`: the first bytes are not a TLS record.
    NotTls,
    /// `sslv2`: an SSLv2 ClientHello.
    Sslv2,
    /// `unsupported_version`: a TLS record version the egress does not read.
    UnsupportedVersion,
    /// `not_client_hello`: the first handshake message is not a ClientHello.
    NotClientHello,
    /// `oversized`: the ClientHello is larger than 16 KiB.
    Oversized,
    /// `malformed`: the ClientHello does not parse.
    Malformed,
    /// `no_sni`: the ClientHello carries no server name.
    NoSni,
    /// `bad_sni`: the server name is neither SNI form.
    BadSni,
    /// `unknown_mesh`: the SNI names a mesh this zone does not have.
    UnknownMesh,
    /// `mesh_without_mtls`: the mesh has no enabled mTLS backend.
    MeshWithoutMtls,
    /// `hash_mismatch`: a hashed SNI whose hash does not match the resource it names.
    HashMismatch,
    /// `unknown_service`: no external service and no link that is up offers the service.
    UnknownService,
    /// `link_down`: the service was offered through a link that is down now.
    LinkDown,
    /// `zone_unreachable`: an external service pinned to another zone, and no link reaches it.
    ZoneUnreachable,
    /// `no_link`: passthrough needed, but this node has no link configuration.
    NoLink,
    /// `link_refused`: every link that offers the service refused or did not answer the stream.
    LinkRefused,
    /// `link_write`: writing the ClientHello into the link stream failed.
    LinkWrite,
    /// `identity`: this egress cannot issue its identity for the mesh (CA unreadable, key not matching).
    Identity,
    /// `handshake`: the client's mTLS handshake failed (no, foreign, expired or wrong-mesh certificate).
    Handshake,
    /// `permission`: the mesh's traffic permissions refuse the client (TCP: closed after the handshake; HTTP: 403).
    Permission,
    /// `resolve`: the external service's host name did not resolve.
    Resolve,
    /// `connect`: no address of the external service accepted the connection.
    Connect,
    /// `tls_settings`: the TLS origination settings are unusable (caCert, clientCert, clientKey).
    TlsSettings,
    /// `upstream_tls`: the TLS handshake with the external service failed.
    UpstreamTls,
}

impl Rejection {
    /// Every reason, in the order of the README's table.
    pub const ALL: [Rejection; 28] = [
        Rejection::MaxConnections,
        Rejection::HelloTimeout,
        Rejection::Truncated,
        Rejection::ReadError,
        Rejection::NotTls,
        Rejection::Sslv2,
        Rejection::UnsupportedVersion,
        Rejection::NotClientHello,
        Rejection::Oversized,
        Rejection::Malformed,
        Rejection::NoSni,
        Rejection::BadSni,
        Rejection::UnknownMesh,
        Rejection::MeshWithoutMtls,
        Rejection::HashMismatch,
        Rejection::UnknownService,
        Rejection::LinkDown,
        Rejection::ZoneUnreachable,
        Rejection::NoLink,
        Rejection::LinkRefused,
        Rejection::LinkWrite,
        Rejection::Identity,
        Rejection::Handshake,
        Rejection::Permission,
        Rejection::Resolve,
        Rejection::Connect,
        Rejection::TlsSettings,
        Rejection::UpstreamTls,
    ];

    /// The stable label (`snake_case`).
    pub const fn label(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::HelloTimeout => "hello_timeout",
            Rejection::Truncated => "truncated",
            Rejection::ReadError => "read_error",
            Rejection::NotTls => "not_tls",
            Rejection::Sslv2 => "sslv2",
            Rejection::UnsupportedVersion => "unsupported_version",
            Rejection::NotClientHello => "not_client_hello",
            Rejection::Oversized => "oversized",
            Rejection::Malformed => "malformed",
            Rejection::NoSni => "no_sni",
            Rejection::BadSni => "bad_sni",
            Rejection::UnknownMesh => "unknown_mesh",
            Rejection::MeshWithoutMtls => "mesh_without_mtls",
            Rejection::HashMismatch => "hash_mismatch",
            Rejection::UnknownService => "unknown_service",
            Rejection::LinkDown => "link_down",
            Rejection::ZoneUnreachable => "zone_unreachable",
            Rejection::NoLink => "no_link",
            Rejection::LinkRefused => "link_refused",
            Rejection::LinkWrite => "link_write",
            Rejection::Identity => "identity",
            Rejection::Handshake => "handshake",
            Rejection::Permission => "permission",
            Rejection::Resolve => "resolve",
            Rejection::Connect => "connect",
            Rejection::TlsSettings => "tls_settings",
            Rejection::UpstreamTls => "upstream_tls",
        }
    }

    /// What the reason means, for operators (the README's table).
    pub const fn meaning(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "limits.max_connections connections are open",
            Rejection::HelloTimeout => "no complete ClientHello within limits.hello_timeout",
            Rejection::Truncated => "the connection closed before the ClientHello was complete",
            Rejection::ReadError => "reading the ClientHello failed",
            Rejection::NotTls => "the first bytes are not a TLS record",
            Rejection::Sslv2 => "an SSLv2 ClientHello",
            Rejection::UnsupportedVersion => "a TLS record version the egress does not read",
            Rejection::NotClientHello => "the first handshake message is not a ClientHello",
            Rejection::Oversized => "the ClientHello is larger than 16 KiB",
            Rejection::Malformed => "the ClientHello does not parse",
            Rejection::NoSni => "the ClientHello carries no server name",
            Rejection::BadSni => "the server name is neither SNI form",
            Rejection::UnknownMesh => "the SNI names a mesh this zone does not have",
            Rejection::MeshWithoutMtls => "the mesh has no enabled mTLS backend",
            Rejection::HashMismatch => {
                "a hashed SNI whose hash does not match the resource it names"
            }
            Rejection::UnknownService => {
                "no external service and no link that is up offers the service"
            }
            Rejection::LinkDown => "the service was offered through a link that is down now",
            Rejection::ZoneUnreachable => {
                "an external service pinned to another zone, and no link reaches it"
            }
            Rejection::NoLink => "passthrough needed, but this node has no link configuration",
            Rejection::LinkRefused => {
                "every link that offers the service refused or did not answer the stream"
            }
            Rejection::LinkWrite => "writing the ClientHello into the link stream failed",
            Rejection::Identity => {
                "this egress cannot issue its identity for the mesh (CA unreadable, key not matching)"
            }
            Rejection::Handshake => {
                "the client's mTLS handshake failed (no, foreign, expired or wrong-mesh certificate)"
            }
            Rejection::Permission => {
                "the mesh's traffic permissions refuse the client (TCP: closed after the handshake; HTTP: 403)"
            }
            Rejection::Resolve => "the external service's host name did not resolve",
            Rejection::Connect => "no address of the external service accepted the connection",
            Rejection::TlsSettings => {
                "the TLS origination settings are unusable (caCert, clientCert, clientKey)"
            }
            Rejection::UpstreamTls => "the TLS handshake with the external service failed",
        }
    }
}

/// Where the cause of a rejection lies: the access log's `error_side`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: what it sent or asked for (no such mesh or service, no certificate).
    Client,
    /// This node: its limits or its configuration (identity, TLS origination settings).
    Node,
    /// The external service: name resolution, connection, TLS.
    Upstream,
    /// The zone link or the remote zone.
    Link,
}

impl Side {
    /// The label (`client`, `node`, `upstream`, `link`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Node => "node",
            Side::Upstream => "upstream",
            Side::Link => "link",
        }
    }
}

impl Rejection {
    /// Where the cause lies.
    pub const fn side(self) -> Side {
        use Rejection::*;
        match self {
            MaxConnections | NoLink | Identity | TlsSettings => Side::Node,
            Resolve | Connect | UpstreamTls => Side::Upstream,
            LinkDown | ZoneUnreachable | LinkRefused | LinkWrite => Side::Link,
            HelloTimeout | Truncated | ReadError | NotTls | Sslv2 | UnsupportedVersion
            | NotClientHello | Oversized | Malformed | NoSni | BadSni | UnknownMesh
            | MeshWithoutMtls | HashMismatch | UnknownService | Handshake | Permission => {
                Side::Client
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for Rejection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::Rejection;

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Rejection::ALL {
            assert!(seen.insert(r.label()), "{r:?}");
            assert!(
                r.label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{r:?}"
            );
            assert!(!r.meaning().is_empty());
            assert_eq!(r.to_string(), r.label());
        }
    }
}

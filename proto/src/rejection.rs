//! Why the egress closed a connection before it reached its destination: the `reason` label of
//! `zone_egress_connections_rejected_total`, the access log's `reason` and `GET
//! /v1/inspect/route`'s answer. Labels are stable (dashboards and alerts key on them); the
//! README's reason table is tested against [`Rejection::ALL`].

use std::fmt;

/// Defines [`Rejection`] and everything derived from its one table: each row is
/// `Variant => ("label", side, "meaning")`, so a reason cannot be left out of [`Rejection::ALL`]
/// or miss a label, a side or a meaning.
macro_rules! rejections {
    ($($variant:ident => ($label:literal, $side:ident, $meaning:literal),)+) => {
        /// One reason a connection was refused. Its [`label`](Rejection::label) is the metric
        /// label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rejection {
            $(
                #[doc = concat!("`", $label, "`: ", $meaning, ".")]
                $variant,
            )+
        }

        impl Rejection {
            /// Every reason, in the order of the README's table.
            pub const ALL: &'static [Rejection] = &[$(Rejection::$variant,)+];

            /// The stable label (`snake_case`).
            pub const fn label(self) -> &'static str {
                match self {
                    $(Rejection::$variant => $label,)+
                }
            }

            /// What the reason means, for operators (the README's table).
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Rejection::$variant => $meaning,)+
                }
            }

            /// Where the cause lies.
            pub const fn side(self) -> Side {
                match self {
                    $(Rejection::$variant => Side::$side,)+
                }
            }
        }
    };
}

rejections! {
    MaxConnections => ("max_connections", Node, "limits.max_connections connections are open"),
    HelloTimeout => ("hello_timeout", Client, "no complete ClientHello within limits.hello_timeout"),
    Truncated => ("truncated", Client, "the connection closed before the ClientHello was complete"),
    ReadError => ("read_error", Client, "reading the ClientHello failed"),
    NotTls => ("not_tls", Client, "the first bytes are not a TLS record"),
    Sslv2 => ("sslv2", Client, "an SSLv2 ClientHello"),
    UnsupportedVersion => ("unsupported_version", Client, "a TLS record version the egress does not read"),
    NotClientHello => ("not_client_hello", Client, "the first handshake message is not a ClientHello"),
    Oversized => ("oversized", Client, "the ClientHello is larger than 16 KiB"),
    Malformed => ("malformed", Client, "the ClientHello does not parse"),
    NoSni => ("no_sni", Client, "the ClientHello carries no server name"),
    BadSni => ("bad_sni", Client, "the server name is neither SNI form"),
    UnknownMesh => ("unknown_mesh", Client, "the SNI names a mesh this zone does not have"),
    MeshWithoutMtls => ("mesh_without_mtls", Client, "the mesh has no enabled mTLS backend"),
    HashMismatch => ("hash_mismatch", Client, "a hashed SNI whose hash does not match the resource it names"),
    UnknownService => ("unknown_service", Client, "no external service and no link that is up offers the service"),
    LinkDown => ("link_down", Link, "the service was offered through a link that is down now"),
    ZoneUnreachable => ("zone_unreachable", Link, "an external service pinned to another zone, and no link reaches it"),
    NoLink => ("no_link", Node, "passthrough needed, but this node has no link configuration"),
    LinkRefused => ("link_refused", Link, "every link that offers the service refused or did not answer the stream"),
    LinkWrite => ("link_write", Link, "writing the bytes a client sent after its ClientHello (TLS 1.3 early data) into the accepted link stream failed (the ClientHello itself goes with the stream header: a failure there is link_refused)"),
    Identity => ("identity", Node, "this egress cannot issue its identity for the mesh (CA unreadable, key not matching)"),
    Handshake => ("handshake", Client, "the client's mTLS handshake failed (no, foreign, expired or wrong-mesh certificate)"),
    HandshakeBudget => ("handshake_budget", Client, "the source address failed more mTLS handshakes than its budget (200 at once, 50/s after); refused at accept, before any TLS"),
    Permission => ("permission", Client, "the mesh's traffic permissions refuse the client (TCP: closed after the handshake; HTTP: 403)"),
    Resolve => ("resolve", Upstream, "the external service's host name did not resolve"),
    Connect => ("connect", Upstream, "no address of the external service accepted the connection"),
    TlsSettings => ("tls_settings", Node, "the TLS origination settings are unusable (caCert, clientCert, clientKey)"),
    UpstreamTls => ("upstream_tls", Upstream, "the TLS handshake with the external service failed"),
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

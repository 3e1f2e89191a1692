//! `ZoneIngress` applied by hand: a remote zone's ingress, for zones reached without discovery.
//!
//! ```yaml
//! type: ZoneIngress
//! name: zone-b-ingress
//! zone: zone-b
//! networking: { advertisedAddress: 192.0.2.10, advertisedPort: 10001 }
//! ```
//!
//! (Ingress nodes register themselves in their own zone's gossip; that dynamic shape lives in
//! [`crate::registration`].)

use serde::{Deserialize, Serialize};

use super::Meta;
use super::error::Checker;
use super::fields::{Host, Labels, Name, Port};

/// A validated static remote `ZoneIngress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "ZoneIngress")]
pub struct ZoneIngress {
    /// Resource name.
    pub name: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The remote zone this ingress serves.
    pub zone: Name,
    /// How to reach it.
    pub networking: ZoneIngressNetworking,
}

/// `networking` of a static remote ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneIngressNetworking {
    /// Address inside its own zone (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Host>,
    /// Port inside its own zone (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Address egresses dial.
    pub advertised_address: Host,
    /// QUIC port egresses dial.
    pub advertised_port: Port,
}

/// The fields of a `ZoneIngress` document besides `type` and `name`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawZoneIngress {
    zone: String,
    networking: RawNetworking,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNetworking {
    address: Option<String>,
    port: Option<i64>,
    advertised_address: String,
    advertised_port: i64,
}

/// Validates a `ZoneIngress`; every problem is recorded in `checker`.
pub(crate) fn validate(
    meta: &Meta,
    raw: RawZoneIngress,
    checker: &mut Checker,
) -> Option<ZoneIngress> {
    let zone = checker.check("zone", Name::parse(&raw.zone));
    let n = raw.networking;
    let address = match n.address {
        None => Some(None),
        Some(a) => checker
            .check("networking.address", Host::parse(&a))
            .map(Some),
    };
    let port = match n.port {
        None => Some(None),
        Some(p) => checker
            .check("networking.port", Port::from_int(p))
            .map(Some),
    };
    let advertised_address = checker.check(
        "networking.advertisedAddress",
        Host::parse(&n.advertised_address),
    );
    let advertised_port = checker.check(
        "networking.advertisedPort",
        Port::from_int(n.advertised_port),
    );
    Some(ZoneIngress {
        name: meta.name.clone()?,
        labels: meta.labels.clone(),
        zone: zone?,
        networking: ZoneIngressNetworking {
            address: address?,
            port: port?,
            advertised_address: advertised_address?,
            advertised_port: advertised_port?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_error;

    fn zi(networking: &str) -> String {
        format!("type: ZoneIngress\nname: zi\nzone: zone-b\nnetworking: {networking}\n")
    }

    #[test]
    fn zone_ingress_problems() {
        assert_error(
            &zi("{ advertisedAddress: 192.0.2.10, advertisedPort: 0 }"),
            &["document 1 (ZoneIngress zi): networking.advertisedPort: invalid port `0`"],
        );
        assert_error(
            &zi("{ advertisedPort: 10001 }"),
            &["networking.advertisedAddress: missing field `advertisedAddress`"],
        );
        assert_error(
            &zi("{ advertisedAddress: 192.0.2.10, advertisedPort: 1, port: 99999 }"),
            &["networking.port: invalid port `99999`"],
        );
        assert_error(
            &zi("{ advertisedAddress: 192.0.2.10, advertisedPort: 1, admin: { port: 9901 } }"),
            &["networking.admin: unknown field `admin`"],
        );
        assert_error(
            "type: ZoneIngress\nname: zi\nzone: Zone_B\nnetworking: { advertisedAddress: 192.0.2.10, advertisedPort: 1 }\n",
            &["zone: invalid name `Zone_B`"],
        );
        assert_error(
            "type: ZoneIngress\nname: zi\nnetworking: { advertisedAddress: 192.0.2.10, advertisedPort: 1 }\n",
            &["zone: missing field `zone`"],
        );
    }
}

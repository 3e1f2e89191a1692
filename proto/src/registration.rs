//! The registration every node publishes about itself in its zone's gossip.
//!
//! An egress node publishes a `ZoneEgress` and an ingress node a `ZoneIngress`, in exactly the
//! JSON shape of Kuma's resources, so `GET /v1/zone-egresses` can hand them out unchanged:
//!
//! ```json
//! {"type":"ZoneEgress","name":"egress-1","zone":"zone-a",
//!  "networking":{"address":"10.0.0.5","port":10002,"admin":{"port":9901}}}
//! ```

use serde::{Deserialize, Serialize};

/// Port of the admin API, nested as `networking.admin.port` in Kuma's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminPort {
    /// TCP port the node's admin API listens on.
    pub port: u16,
}

/// `networking` of a `ZoneEgress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressNetworking {
    /// Address sidecars of the zone use to reach this egress.
    pub address: String,
    /// TCP port of the egress listener.
    pub port: u16,
    /// Where the admin API answers.
    pub admin: AdminPort,
}

/// A `ZoneEgress` registration (Kuma's resource shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneEgress {
    /// Node name, unique in the zone.
    pub name: String,
    /// Zone the node belongs to.
    pub zone: String,
    /// How to reach the node.
    pub networking: EgressNetworking,
}

/// `networking` of a `ZoneIngress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressNetworking {
    /// Address the node listens on inside its zone.
    pub address: String,
    /// QUIC link port inside the zone.
    pub port: u16,
    /// Address other zones use to reach this ingress.
    pub advertised_address: String,
    /// Port other zones use to reach this ingress.
    pub advertised_port: u16,
    /// Where the admin API answers.
    pub admin: AdminPort,
}

/// A `ZoneIngress` registration (Kuma's resource shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneIngress {
    /// Node name, unique in the zone.
    pub name: String,
    /// Zone the node belongs to.
    pub zone: String,
    /// How to reach the node.
    pub networking: IngressNetworking,
}

/// What a node registers about itself, tagged by Kuma's `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Registration {
    /// An egress node.
    ZoneEgress(ZoneEgress),
    /// An ingress node.
    ZoneIngress(ZoneIngress),
}

impl Registration {
    /// Node name of the registration.
    pub fn name(&self) -> &str {
        match self {
            Registration::ZoneEgress(r) => &r.name,
            Registration::ZoneIngress(r) => &r.name,
        }
    }

    /// Zone of the registration.
    pub fn zone(&self) -> &str {
        match self {
            Registration::ZoneEgress(r) => &r.zone,
            Registration::ZoneIngress(r) => &r.zone,
        }
    }

    /// Encodes the registration as the JSON published in gossip.
    pub fn to_json(&self) -> String {
        // invariant: these types only hold strings and integers, which always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a registration read from gossip; `None` when it is not one of ours.
    pub fn from_json(raw: &str) -> Option<Registration> {
        serde_json::from_str(raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_egress_has_the_seed_shape() {
        let reg = Registration::ZoneEgress(ZoneEgress {
            name: "egress-1".into(),
            zone: "zone-a".into(),
            networking: EgressNetworking {
                address: "10.0.0.5".into(),
                port: 10002,
                admin: AdminPort { port: 9901 },
            },
        });
        let expected = serde_json::json!({"type":"ZoneEgress","name":"egress-1","zone":"zone-a",
            "networking":{"address":"10.0.0.5","port":10002,"admin":{"port":9901}}});
        assert_eq!(serde_json::to_value(&reg).unwrap(), expected);
        assert_eq!(Registration::from_json(&reg.to_json()), Some(reg));
    }

    #[test]
    fn zone_ingress_uses_kuma_field_names() {
        let reg = Registration::ZoneIngress(ZoneIngress {
            name: "ingress-1".into(),
            zone: "zone-b".into(),
            networking: IngressNetworking {
                address: "10.0.1.5".into(),
                port: 10001,
                advertised_address: "192.0.2.10".into(),
                advertised_port: 10001,
                admin: AdminPort { port: 9901 },
            },
        });
        let value = serde_json::to_value(&reg).unwrap();
        assert_eq!(value["type"], "ZoneIngress");
        assert_eq!(value["networking"]["advertisedAddress"], "192.0.2.10");
        assert_eq!(value["networking"]["advertisedPort"], 10001);
    }

    #[test]
    fn garbage_is_not_a_registration() {
        assert_eq!(Registration::from_json("{\"type\":\"Mesh\"}"), None);
        assert_eq!(Registration::from_json("not json"), None);
    }
}

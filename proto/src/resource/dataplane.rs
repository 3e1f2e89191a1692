//! `Dataplane`: a local endpoint of the zone, which ingress nodes forward streams to.
//!
//! ```yaml
//! type: Dataplane
//! mesh: default
//! name: backend-1
//! networking:
//!   address: 10.0.0.12
//!   inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v1 } } ]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Meta;
use super::error::{Checker, Problem};
use super::fields::{Host, Labels, Name, Port, ServiceTags};

/// A validated `Dataplane`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "Dataplane")]
pub struct Dataplane {
    /// Mesh the endpoint belongs to.
    pub mesh: Name,
    /// Resource name.
    pub name: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Where the endpoint is and what it serves.
    pub networking: DataplaneNetworking,
}

/// `networking` of a dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneNetworking {
    /// Address of the endpoint inside the zone.
    pub address: Host,
    /// Address to use instead of `address` from elsewhere, e.g. behind NAT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<Host>,
    /// The services it serves; at least one.
    pub inbound: Vec<Inbound>,
}

/// One inbound of a dataplane: a port serving one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Port the sidecar listens on (where streams are sent).
    pub port: Port,
    /// Port of the application behind the sidecar, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_port: Option<Port>,
    /// Address of this inbound, when it differs from `networking.address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Host>,
    /// Tags, with `kuma.io/service`.
    pub tags: ServiceTags,
}

impl Dataplane {
    /// Address and port where streams for `inbound` are sent.
    pub fn endpoint<'a>(&'a self, inbound: &'a Inbound) -> (&'a Host, Port) {
        (
            inbound.address.as_ref().unwrap_or(&self.networking.address),
            inbound.port,
        )
    }
}

/// The fields of a `Dataplane` document besides `type`, `mesh` and `name`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataplane {
    networking: RawNetworking,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNetworking {
    address: String,
    advertised_address: Option<String>,
    inbound: Vec<RawInbound>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInbound {
    port: i64,
    service_port: Option<i64>,
    address: Option<String>,
    tags: BTreeMap<String, String>,
}

/// Validates a `Dataplane`; every problem is recorded in `checker`.
pub(crate) fn validate(meta: &Meta, raw: RawDataplane, checker: &mut Checker) -> Option<Dataplane> {
    let networking = raw.networking;
    let address = checker.check("networking.address", Host::parse(&networking.address));
    let advertised_address = match networking.advertised_address {
        None => Some(None),
        Some(a) => checker
            .check("networking.advertisedAddress", Host::parse(&a))
            .map(Some),
    };
    if networking.inbound.is_empty() {
        checker.problem("networking.inbound", Problem::NoInbound);
    }
    let mut inbound = Vec::new();
    for (i, raw) in networking.inbound.into_iter().enumerate() {
        let path = format!("networking.inbound[{i}]");
        let port = checker.check(format!("{path}.port"), Port::from_int(raw.port));
        let service_port = match raw.service_port {
            None => Some(None),
            Some(p) => checker
                .check(format!("{path}.servicePort"), Port::from_int(p))
                .map(Some),
        };
        let address = match raw.address {
            None => Some(None),
            Some(a) => checker
                .check(format!("{path}.address"), Host::parse(&a))
                .map(Some),
        };
        let tags = checker.check(format!("{path}.tags"), ServiceTags::parse(raw.tags));
        if let (Some(port), Some(service_port), Some(address), Some(tags)) =
            (port, service_port, address, tags)
        {
            inbound.push(Inbound {
                port,
                service_port,
                address,
                tags,
            });
        }
    }
    if !checker.is_clean() {
        return None;
    }
    Some(Dataplane {
        mesh: meta.mesh.clone()?,
        name: meta.name.clone()?,
        labels: meta.labels.clone(),
        networking: DataplaneNetworking {
            address: address?,
            advertised_address: advertised_address?,
            inbound,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_error;
    use super::super::{Resource, parse_documents};

    fn dp(networking: &str) -> String {
        format!("type: Dataplane\nmesh: m\nname: d\nnetworking: {networking}\n")
    }

    #[test]
    fn inbound_address_overrides_the_dataplane_address() {
        let text = dp(
            "{ address: d.internal, inbound: [ { port: 1, address: 10.0.0.9, tags: { kuma.io/service: s } }, \
                       { port: 2, tags: { kuma.io/service: t } } ] }",
        );
        let resources = parse_documents(&text).unwrap();
        let Resource::Dataplane(dp) = &resources[0] else {
            panic!("not a dataplane")
        };
        let endpoints: Vec<String> = dp
            .networking
            .inbound
            .iter()
            .map(|i| {
                let (host, port) = dp.endpoint(i);
                format!("{host}:{port}")
            })
            .collect();
        assert_eq!(endpoints, ["10.0.0.9:1", "d.internal:2"]);
    }

    #[test]
    fn dataplane_problems() {
        assert_error(
            &dp("{ address: 10.0.0.1, inbound: [] }"),
            &["networking.inbound: at least one inbound is required"],
        );
        assert_error(
            &dp("{ address: 10.0.0.1 }"),
            &["networking.inbound: missing field `inbound`"],
        );
        assert_error(
            &dp(
                "{ address: '10.0.0.1:80', inbound: [ { port: 1, tags: { kuma.io/service: s } } ] }",
            ),
            &["networking.address: `10.0.0.1:80` is neither an IP address nor a DNS name"],
        );
        assert_error(
            &dp(
                "{ address: 10.0.0.1, advertisedAddress: 'a b', inbound: [ { port: 1, tags: { kuma.io/service: s } } ] }",
            ),
            &["networking.advertisedAddress: `a b` is neither"],
        );
        assert_error(
            &dp(
                "{ address: 10.0.0.1, inbound: [ { port: 1, servicePort: 0, tags: { kuma.io/service: s } } ] }",
            ),
            &["networking.inbound[0].servicePort: invalid port `0`"],
        );
        assert_error(
            &dp(
                "{ address: 10.0.0.1, inbound: [ { port: 1, tags: { kuma.io/service: s } }, { port: 2, tags: {} } ] }",
            ),
            &["networking.inbound[1].tags: tag `kuma.io/service` is required"],
        );
        assert_error(
            &dp("{ address: 10.0.0.1, inbound: [ { port: 1 } ] }"),
            &["networking.inbound[0].tags: missing field `tags`"],
        );
    }
}

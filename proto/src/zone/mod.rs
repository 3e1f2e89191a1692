//! The zone model: the zone's resources with typed indexes, and the pure rules over them
//! (routing decision, remote services, endpoint choice, subset matching). No I/O; the node's
//! planes feed it snapshots and act on its answers, and the admin API explains with the same
//! functions, so what an operator inspects is what a connection gets.
//!
//! * [`Resources`]: the live resources of a zone, indexed by kind, mesh and `kuma.io/service`;
//! * [`Zone`]: a zone's name with its resources, what [`route::decide`] reads;
//! * [`offer`]: what this zone offers other zones, and the endpoints of a forwarded stream;
//! * [`remote`]: what other zones offer over the links that are up;
//! * [`route`]: from an SNI (and the client's identity) to a [`route::Decision`].

pub mod offer;
pub mod remote;
pub mod route;

use std::collections::BTreeMap;

use crate::resource::{ExternalService, Kind, Mesh, Resource, ResourceKey};

pub use remote::RemoteServices;
pub use route::{ClientIdentity, Decision, decide};

/// `kuma.io/service`.
pub use crate::link::SERVICE_TAG;

/// Kuma's tag that pins a service to a zone.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// Whether `tags` carry every tag of `subset` with the same value; `kuma.io/service` in the
/// subset is ignored (callers match the service first). Kuma's tag selectors without `*`: every
/// listed tag must be present with that value.
pub fn matches_subset<'s, 't>(
    subset: impl IntoIterator<Item = (&'s String, &'s String)>,
    tag: impl Fn(&str) -> Option<&'t str>,
) -> bool {
    subset
        .into_iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
        .all(|(k, v)| tag(k) == Some(v.as_str()))
}

/// The live resources of a zone, with indexes: meshes by name, external services by mesh and
/// `kuma.io/service`. Built once per store change ([`FromIterator`]); read per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    by_key: BTreeMap<String, Resource>,
    /// (mesh, `kuma.io/service`) → keys of its ExternalServices, in name order.
    external_by_service: BTreeMap<(String, String), Vec<String>>,
}

impl Resources {
    /// One resource by key.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.by_key.get(&key.to_string())
    }

    /// Resources of a kind (and mesh, for mesh-scoped kinds), in key order.
    pub fn list(&self, kind: Kind, mesh: Option<&str>) -> Vec<&Resource> {
        let prefix = match mesh {
            Some(mesh) if kind.is_mesh_scoped() => format!("{}/{mesh}/", kind.singular()),
            _ => format!("{}/", kind.singular()),
        };
        self.by_key
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r)
            .filter(|r| r.kind() == kind)
            .collect()
    }

    /// Number of resources of a kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.list(kind, None).len()
    }

    /// Every resource, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.by_key.values()
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The Mesh named `name`.
    pub fn mesh(&self, name: &str) -> Option<&Mesh> {
        match self
            .by_key
            .get(&format!("{}/{name}", Kind::Mesh.singular()))
        {
            Some(Resource::Mesh(mesh)) => Some(mesh),
            _ => None,
        }
    }

    /// Every Mesh, in name order.
    pub fn meshes(&self) -> impl Iterator<Item = &Mesh> {
        self.list(Kind::Mesh, None)
            .into_iter()
            .filter_map(|r| match r {
                Resource::Mesh(m) => Some(m),
                _ => None,
            })
    }

    /// The ExternalServices of `mesh`, in name order.
    pub fn external_services<'a>(
        &'a self,
        mesh: &str,
    ) -> impl Iterator<Item = &'a ExternalService> + 'a {
        self.list(Kind::ExternalService, Some(mesh))
            .into_iter()
            .filter_map(|r| match r {
                Resource::ExternalService(es) => Some(es),
                _ => None,
            })
    }

    /// The ExternalServices of `mesh` whose `kuma.io/service` is `service`, in name order.
    pub fn external_services_of<'a>(
        &'a self,
        mesh: &str,
        service: &str,
    ) -> impl Iterator<Item = &'a ExternalService> + 'a {
        self.external_by_service
            .get(&(mesh.to_string(), service.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|key| match self.by_key.get(key) {
                Some(Resource::ExternalService(es)) => Some(es),
                _ => None,
            })
    }
}

impl FromIterator<Resource> for Resources {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Resources {
        let by_key: BTreeMap<String, Resource> = iter.into_iter().map(|r| (r.key(), r)).collect();
        let mut external_by_service: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (key, resource) in &by_key {
            if let Resource::ExternalService(es) = resource {
                external_by_service
                    .entry((es.mesh.as_str().to_string(), es.service().to_string()))
                    .or_default()
                    .push(key.clone());
            }
        }
        Resources {
            by_key,
            external_by_service,
        }
    }
}

/// A zone as an egress or ingress node sees it: its name and its resources.
#[derive(Debug, Clone, Copy)]
pub struct Zone<'a> {
    /// The zone's name (the node's `zone`).
    pub name: &'a str,
    /// The zone's resources.
    pub resources: &'a Resources,
}

impl<'a> Zone<'a> {
    /// A view of `resources` from zone `name`.
    pub fn new(name: &'a str, resources: &'a Resources) -> Zone<'a> {
        Zone { name, resources }
    }

    /// Whether this zone may dial `es` itself: it is not pinned to another zone by
    /// `kuma.io/zone`. An ExternalService pinned to a zone is reached only through that zone
    /// (Kuma: "zone-specific external services" go through the zone's ingress and egress).
    pub fn exits_here(&self, es: &ExternalService) -> bool {
        es.tags
            .get(ZONE_TAG)
            .is_none_or(|pinned| pinned == self.name)
    }

    /// The ExternalServices of `service` in `mesh`, split into those this zone exits to and the
    /// zones the others are pinned to (sorted, unique).
    pub fn external_endpoints(
        &self,
        mesh: &str,
        service: &str,
    ) -> (Vec<&'a ExternalService>, Vec<String>) {
        let mut local = Vec::new();
        let mut elsewhere = Vec::new();
        for es in self.resources.external_services_of(mesh, service) {
            if self.exits_here(es) {
                local.push(es);
            } else if let Some(pinned) = es.tags.get(ZONE_TAG) {
                elsewhere.push(pinned.to_string());
            }
        }
        elsewhere.sort();
        elsewhere.dedup();
        (local, elsewhere)
    }
}

//! The zone model: the zone's resources with typed indexes, and the pure rules over them
//! (routing decision, remote services, endpoint choice, subset matching). No I/O; the node's
//! planes feed it snapshots and act on its answers, and the admin API explains with the same
//! functions, so what an operator inspects is what a connection gets.
//!
//! * [`Resources`]: the live resources of a zone, indexed by kind, mesh and `kuma.io/service`;
//! * [`Zone`]: a zone's name with its resources, what [`route::decide`] reads;
//! * [`offer`]: what this zone offers other zones, and the endpoints of a forwarded stream;
//! * [`outbound`]: the answer to a sidecar asking where a service is;
//! * [`permission`]: the traffic permissions the egress applies;
//! * [`remote`]: what other zones offer over the links that are up;
//! * [`route`]: from an SNI (and the client's identity) to a [`route::Decision`].

pub mod offer;
pub mod outbound;
pub mod permission;
pub mod remote;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
pub use remote::RemoteServices;
pub use route::{ClientIdentity, Decision, decide};

/// `kuma.io/service`.
pub use crate::link::SERVICE_TAG;
use crate::resource::{
    CaKind, ClientCertificate, DataSource, ExternalNetworking, ExternalService, ExternalTls,
    HostPort, Kind, Mesh, MeshExternalService, MeshTrafficPermission, PROTOCOL_TAG, Resource,
    ResourceKey, SecretResource, ServiceTags, TrafficPermission,
};

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
/// `kuma.io/service`. Read per connection.
///
/// Persistent maps (`imbl`, a B-tree with structural sharing): a clone is O(1) and shares
/// everything, [`Resources::insert`] and [`Resources::remove`] copy only the path to the
/// changed entry, O(log n). The store keeps one value, changes it in place per write and
/// publishes clones, so a write costs the same with 10 resources or 10,000 (issue 14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    by_key: OrdMap<String, Arc<Resource>>,
    /// (mesh, `kuma.io/service`, resource key) of every ExternalService: a range of it is the
    /// ExternalServices of one service, in name order.
    external_by_service: OrdSet<(String, String, String)>,
    /// Resources per kind ([`Kind::as_str`]), so a count is O(1).
    counts: BTreeMap<&'static str, usize>,
}

impl Resources {
    /// One resource by key.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.by_key.get(&key.to_string()).map(|r| &**r)
    }

    /// Adds or replaces `resource` (under [`Resource::key`]); O(log n).
    pub fn insert(&mut self, resource: Resource) {
        let key = resource.key();
        self.remove(&key);
        if let Resource::ExternalService(es) = &resource {
            self.external_by_service.insert((
                es.mesh.as_str().to_string(),
                es.service().to_string(),
                key.clone(),
            ));
        }
        *self.counts.entry(resource.kind().as_str()).or_default() += 1;
        self.by_key.insert(key, Arc::new(resource));
    }

    /// Removes the resource under `key` (as [`Resource::key`] writes it), if any; O(log n).
    pub fn remove(&mut self, key: &str) -> Option<Arc<Resource>> {
        let old = self.by_key.remove(key)?;
        let kind = old.kind().as_str();
        if let Some(n) = self.counts.get_mut(kind) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(kind);
            }
        }
        if let Resource::ExternalService(es) = &*old {
            self.external_by_service.remove(&(
                es.mesh.as_str().to_string(),
                es.service().to_string(),
                key.to_string(),
            ));
        }
        Some(old)
    }

    /// Resources of a kind (and mesh, for mesh-scoped kinds), in key order.
    pub fn list(&self, kind: Kind, mesh: Option<&str>) -> Vec<&Resource> {
        self.of_kind(kind, mesh).collect()
    }

    /// [`Resources::list`] without collecting: a range of the key space.
    fn of_kind<'a>(
        &'a self,
        kind: Kind,
        mesh: Option<&str>,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        let prefix = match mesh {
            Some(mesh) if kind.is_mesh_scoped() => format!("{}/{mesh}/", kind.singular()),
            _ => format!("{}/", kind.singular()),
        };
        self.by_key
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| &**r)
            .filter(move |r| r.kind() == kind)
    }

    /// Number of resources of a kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// Every resource, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.by_key.values().map(|r| &**r)
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
            .map(|r| &**r)
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
        let (mesh, service) = (mesh.to_string(), service.to_string());
        self.external_by_service
            .range((mesh.clone(), service.clone(), String::new())..)
            .take_while(move |(m, s, _)| *m == mesh && *s == service)
            .filter_map(|(_, _, key)| match self.by_key.get(key).map(|r| &**r) {
                Some(Resource::ExternalService(es)) => Some(es),
                _ => None,
            })
    }
}

/// Kuma's names of the Secrets that hold a builtin CA: `<mesh>.ca-builtin-cert-<backend>` and
/// `<mesh>.ca-builtin-key-<backend>` (`pkg/plugins/ca/builtin/manager.go`).
pub fn builtin_ca_secret_names(mesh: &str, backend: &str) -> (String, String) {
    (
        format!("{mesh}.ca-builtin-cert-{backend}"),
        format!("{mesh}.ca-builtin-key-{backend}"),
    )
}

macro_rules! typed {
    ($self:ident, $kind:expr, $mesh:expr, $variant:ident) => {
        $self
            .list($kind, $mesh)
            .into_iter()
            .filter_map(|r| match r {
                Resource::$variant(x) => Some(x),
                _ => None,
            })
    };
}

impl Resources {
    /// The `Secret` `name` of `mesh`.
    pub fn secret(&self, mesh: &str, name: &str) -> Option<&SecretResource> {
        let key = format!("{}/{mesh}/{name}", Kind::Secret.singular());
        match self.by_key.get(&key).map(|r| &**r) {
            Some(Resource::Secret(s)) => Some(s),
            _ => None,
        }
    }

    /// The MeshExternalServices of `mesh`, in name order.
    pub fn mesh_external_services<'a>(
        &'a self,
        mesh: &str,
    ) -> impl Iterator<Item = &'a MeshExternalService> + 'a {
        typed!(
            self,
            Kind::MeshExternalService,
            Some(mesh),
            MeshExternalService
        )
    }

    /// The TrafficPermissions of `mesh`, in name order.
    pub fn traffic_permissions<'a>(
        &'a self,
        mesh: &str,
    ) -> impl Iterator<Item = &'a TrafficPermission> + 'a {
        typed!(self, Kind::TrafficPermission, Some(mesh), TrafficPermission)
    }

    /// The MeshTrafficPermissions of `mesh`, in name order.
    pub fn mesh_traffic_permissions<'a>(
        &'a self,
        mesh: &str,
    ) -> impl Iterator<Item = &'a MeshTrafficPermission> + 'a {
        typed!(
            self,
            Kind::MeshTrafficPermission,
            Some(mesh),
            MeshTrafficPermission
        )
    }

    /// A data source with a `secret:` reference replaced by the Secret's bytes (inline); any
    /// other source as it is. A reference to a Secret that does not exist stays a reference,
    /// which the reader refuses naming it.
    pub fn resolve_source(&self, mesh: &str, source: &DataSource) -> DataSource {
        match source {
            DataSource::Secret(name) => match self
                .secret(mesh, name.as_str())
                .and_then(|s| s.data.clone())
            {
                Some(data) => DataSource::Inline(data),
                None => source.clone(),
            },
            other => other.clone(),
        }
    }

    /// The Mesh as the egress uses it: `secret:` references resolved, and a builtin backend
    /// whose CA has been minted turned into the provided CA it is (its two Secrets). A builtin
    /// backend not minted yet stays builtin, which the CA reader refuses.
    pub fn resolved_mesh(&self, mesh: &Mesh) -> Mesh {
        let mut resolved = mesh.clone();
        let name = mesh.name.as_str();
        if let Some(mtls) = resolved.mtls.as_mut() {
            for backend in mtls.backends_mut() {
                match &mut backend.kind {
                    CaKind::Provided { cert, key } => {
                        *cert = self.resolve_source(name, cert);
                        *key = self.resolve_source(name, key);
                    }
                    CaKind::Builtin { .. } => {
                        let (cert, key) = builtin_ca_secret_names(name, backend.name.as_str());
                        let cert = self.secret(name, &cert).and_then(|s| s.data.clone());
                        let key = self.secret(name, &key).and_then(|s| s.data.clone());
                        if let (Some(cert), Some(key)) = (cert, key) {
                            backend.kind = CaKind::Provided {
                                cert: DataSource::Inline(cert),
                                key: DataSource::Inline(key),
                            };
                        }
                    }
                }
            }
        }
        resolved
    }

    /// The ExternalService as the egress uses it: `secret:` references resolved.
    pub fn resolved_external_service(&self, es: &ExternalService) -> ExternalService {
        let mut resolved = es.clone();
        let mesh = es.mesh.as_str();
        if let Some(tls) = resolved.networking.tls.as_mut() {
            if let Some(ca) = tls.ca_cert.as_mut() {
                *ca = self.resolve_source(mesh, ca);
            }
            if let Some(client) = tls.client.as_mut() {
                client.client_cert = self.resolve_source(mesh, &client.client_cert);
                client.client_key = self.resolve_source(mesh, &client.client_key);
            }
        }
        resolved
    }

    /// The endpoints of a MeshExternalService in the form the dial stage takes (one
    /// ExternalService per `spec.endpoints` entry, named after the MeshExternalService, with
    /// `kuma.io/service` its name and `kuma.io/protocol` its `match.protocol`; TLS per
    /// `spec.tls`, `secret:` references resolved), in order.
    pub fn mesh_external_endpoints(&self, mes: &MeshExternalService) -> Vec<ExternalService> {
        let mesh = mes.mesh.as_str();
        let mut tags = BTreeMap::new();
        tags.insert(SERVICE_TAG.to_string(), mes.name.as_str().to_string());
        tags.insert(
            PROTOCOL_TAG.to_string(),
            mes.spec.matcher.protocol.as_str().to_string(),
        );
        // invariant: a resource name is a valid tag value.
        let Ok(tags) = ServiceTags::parse(tags) else {
            return Vec::new();
        };
        let tls = mes.spec.tls.as_ref().filter(|t| t.enabled).map(|t| {
            let v = t.verification.as_ref();
            let mode = v.map(|v| v.mode).unwrap_or_default();
            let resolve = |s: Option<&DataSource>| s.map(|s| self.resolve_source(mesh, s));
            let client = match (
                resolve(v.and_then(|v| v.client_cert.as_ref())),
                resolve(v.and_then(|v| v.client_key.as_ref())),
            ) {
                (Some(client_cert), Some(client_key)) => Some(ClientCertificate {
                    client_cert,
                    client_key,
                }),
                _ => None,
            };
            ExternalTls {
                enabled: true,
                server_name: v.and_then(|v| v.server_name.clone()),
                ca_cert: resolve(v.and_then(|v| v.ca_cert.as_ref())),
                client,
                allow_renegotiation: t.allow_renegotiation,
                skip_hostname_verification: !mode.checks_names(),
                skip_ca_verification: !mode.checks_ca(),
                versions: t.version,
                subject_alt_names: v.map(|v| v.subject_alt_names.clone()).unwrap_or_default(),
            }
        });
        mes.spec
            .endpoints
            .iter()
            .map(|e| ExternalService {
                mesh: mes.mesh.clone(),
                name: mes.name.clone(),
                labels: mes.labels.clone(),
                tags: tags.clone(),
                networking: ExternalNetworking {
                    address: HostPort {
                        host: e.address.clone(),
                        port: e.port,
                    },
                    tls: tls.clone(),
                },
            })
            .collect()
    }
}

impl FromIterator<Resource> for Resources {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Resources {
        let mut resources = Resources::default();
        for resource in iter {
            resources.insert(resource);
        }
        resources
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

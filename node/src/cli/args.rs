//! Command line of the `zone-egress` binary (DESIGN.md §3).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// zone-egress: egress fleet for multi-zone service meshes, no separate control plane.
#[derive(Debug, Parser)]
#[command(name = "zone-egress", version, about, long_about = None)]
pub struct Cli {
    /// What to do; with none, `run` with the embedded default config.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (egress or ingress).
    Run(Box<Overrides>),
    /// List zone state and resources from any node's admin API.
    Get(GetArgs),
    /// Create or replace resources from YAML documents (kumactl style), all or nothing.
    Apply(ApplyArgs),
    /// Delete one resource.
    Delete(DeleteArgs),
    /// Exit 0 when a node is ready (or live, with --live): for health checks without curl.
    Health(HealthArgs),
    /// Drain a node (`POST /v1/drain`); with --wait, until it has drained: for preStop hooks.
    ///
    /// The node drops readiness and announces `draining` in gossip at once, keeps accepting for
    /// `drain.announce_delay` (skipped when it is alone in the zone) while peers learn it, then
    /// stops accepting and waits up to `drain.grace` for in-flight connections. With --wait this
    /// command polls `/ready` every 200 ms until it says `"drained": true` (exit 0) or --timeout
    /// runs out (exit 1).
    ///
    /// The node does not exit after a drain: it stays up, not ready, until it gets SIGTERM (or
    /// SIGINT), then announces `left` in gossip, gives gossip three rounds to carry it (none
    /// when it is alone) and exits 0, without draining again. That is the Kubernetes `preStop`
    /// sequence: `zone-egress drain --wait` in the hook, then the kubelet's SIGTERM.
    ///
    /// --admin names the node that drains (its own admin API, not any node of the zone). The
    /// drain is a write: it needs the admin token when the node has one (--token, --token-file,
    /// or ZONE_EGRESS_TOKEN / ZONE_EGRESS_TOKEN_FILE).
    Drain(DrainArgs),
    /// Undo a drain asked for with `drain` (maintenance over): the node binds its listener
    /// again, announces `serving` and becomes ready. Only once it has drained; refused for a
    /// node that is shutting down (SIGTERM: it leaves). With --wait, until `/ready` says ready
    /// (within --timeout, default 10s). A write: needs the admin token.
    Undrain(DrainArgs),
    /// Remove a dead member by hand (Consul's force-leave): every node lists it as `left` and
    /// drops it after `gossip.left_grace`, instead of `dead` for `gossip.dead_node_grace`.
    /// Refused for a member that is alive or draining. A write: needs the admin token.
    ForceLeave(ForceLeaveArgs),
    /// Print a new base64 32-byte gossip key (one line of `gossip.key_file`).
    Keygen,
    /// Certificates for operators and tests.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Print Kuma's hashed SNI for a service (what a sidecar sends to the egress).
    Sni(SniArgs),
    /// Explain what a node would do.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Every resource of the zone as YAML documents, in an order `apply -f` takes back (meshes
    /// and secrets first): a backup, or a copy to another zone.
    Export(ExportArgs),
}

/// `zone-egress inspect ...`
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// The routing decision for an SNI, with its reasons.
    Route {
        /// The SNI a client would send.
        #[arg(long)]
        sni: String,
        /// The client's SPIFFE id (`spiffe://<mesh>/<service>`): the mesh's traffic permissions
        /// are applied as to a connection with that certificate.
        #[arg(long, value_name = "URI")]
        client: Option<String>,
        /// Admin API and token.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Where a sidecar of this zone sends traffic for a service (the embedded control plane's
    /// answer: the egress nodes, the SNI, passthrough or terminated).
    Outbounds {
        /// Mesh.
        #[arg(long, default_value = "default")]
        mesh: String,
        /// The service (`kuma.io/service`).
        #[arg(long)]
        service: String,
        /// The service's port, for Kuma's hashed SNI of another zone's service.
        #[arg(long)]
        port: Option<u16>,
        /// Admin API and token.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Arguments of `zone-egress sni`.
#[derive(Debug, clap::Args)]
pub struct SniArgs {
    /// Mesh.
    #[arg(long)]
    pub mesh: String,
    /// Service (for `mes`: the ExternalService resource name).
    #[arg(long)]
    pub service: String,
    /// Port (for `mes`: the port of the external address).
    #[arg(long, default_value_t = 443)]
    pub port: u16,
    /// Tag `key=value` (repeat for several).
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// ms (service of another zone), mes (external service), mzms (multi-zone service).
    #[arg(long, default_value = "ms")]
    pub kind: String,
}

/// `zone-egress pki ...`
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum PkiCommand {
    /// Create a CA: writes DIR/ca.pem and DIR/ca.key (never overwrites).
    InitCa {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// CA common name.
        #[arg(long)]
        name: String,
    },
    /// Issue a leaf certificate: signed by the CA in `--ca DIR`, or by a mesh's CA through the
    /// admin API of the fleet (`--mesh M --admin URL`, needs the admin token); writes
    /// DIR/cert.pem and DIR/key.pem (and DIR/ca.pem from the fleet).
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "mesh",
            conflicts_with = "mesh"
        )]
        ca: Option<PathBuf>,
        /// Mesh whose CA signs (through the admin API of `--admin`).
        #[arg(long, value_name = "MESH")]
        mesh: Option<String>,
        /// Admin API and token, with `--mesh`.
        #[command(flatten)]
        admin: AdminArgs,
        /// SPIFFE id (URI SAN), e.g. spiffe://default/backend.
        #[arg(long, value_name = "URI")]
        spiffe: String,
        /// DNS SAN (repeat for several).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// IP SAN (repeat for several).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity, e.g. 24h, 30d. Default: 24h with `--ca`; with `--mesh`, the mesh's
        /// `dpCert.rotation.expiration` (else the node's `pki.identity_validity`).
        #[arg(long, value_parser = humantime::parse_duration)]
        validity: Option<std::time::Duration>,
        /// Start the validity this long ago (e.g. `--validity 1h --backdate 2h` gives an
        /// expired certificate, for tests).
        #[arg(long, default_value = "0s", conflicts_with = "mesh", value_parser = humantime::parse_duration)]
        backdate: std::time::Duration,
    },
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin API of any node of the zone: `http://host:port` or `host:port`.
    #[arg(
        long,
        env = "ZONE_EGRESS_ADMIN",
        default_value = "http://127.0.0.1:9901",
        value_parser = super::admin_client::parse_admin
    )]
    pub admin: String,
    /// How long the command may take in all, e.g. 5s (default 10s; `drain`: 60s). A node that
    /// accepts but does not answer fails the command then, with exit 1.
    #[arg(long, value_parser = super::admin_client::parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    /// Bearer token, sent with every request but `/live`, `/ready` and `/metrics`: the admin
    /// token for writes (and `--show-secrets`), the admin or read token for reads.
    #[arg(long, env = "ZONE_EGRESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (e.g. a mounted Kubernetes Secret); read when a request
    /// needs it. --token / ZONE_EGRESS_TOKEN wins when both are set.
    #[arg(long, env = "ZONE_EGRESS_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Arguments of `zone-egress drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Wait until the node has drained (`/ready` says `"drained": true`), within `--timeout`
    /// (default 60s here).
    #[arg(long)]
    pub wait: bool,
}

/// Arguments of `zone-egress force-leave`.
#[derive(Debug, clap::Args)]
pub struct ForceLeaveArgs {
    /// Name of the dead member.
    pub name: String,
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `zone-egress health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Check liveness (`/live`) instead of readiness (`/ready`).
    #[arg(long)]
    pub live: bool,
}

/// What `get` lists. Each takes kumactl's spelling and the singular as aliases
/// (`zoneegresses`, `externalservices`, `external-service`, ...); a typo gets clap's "a similar
/// value exists" tip and exit code 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Gossip members of the zone.
    #[value(alias = "member")]
    Members,
    /// Egress registrations of the zone.
    #[value(alias = "zoneegresses", alias = "zone-egress", alias = "zoneegress")]
    ZoneEgresses,
    /// Ingress nodes of the zone and static remote ingresses.
    #[value(alias = "zoneingresses", alias = "zone-ingress", alias = "zoneingress")]
    ZoneIngresses,
    /// Meshes.
    #[value(alias = "mesh")]
    Meshes,
    /// External services of a mesh.
    #[value(
        alias = "externalservices",
        alias = "external-service",
        alias = "externalservice"
    )]
    ExternalServices,
    /// Dataplanes of a mesh.
    #[value(alias = "dataplane")]
    Dataplanes,
    /// Secrets of a mesh (data shown only with --show-secrets and the admin token).
    #[value(alias = "secret")]
    Secrets,
    /// Secrets of the zone.
    #[value(
        alias = "globalsecrets",
        alias = "global-secret",
        alias = "globalsecret"
    )]
    GlobalSecrets,
    /// MeshExternalServices of a mesh.
    #[value(alias = "meshexternalservice", alias = "mesh-external-services")]
    Meshexternalservices,
    /// TrafficPermissions of a mesh.
    #[value(
        alias = "trafficpermissions",
        alias = "traffic-permission",
        alias = "trafficpermission"
    )]
    TrafficPermissions,
    /// MeshTrafficPermissions of a mesh.
    #[value(alias = "meshtrafficpermission", alias = "mesh-traffic-permissions")]
    Meshtrafficpermissions,
    /// QUIC links to other zones' ingresses.
    #[value(alias = "link")]
    Links,
}

impl Resource {
    /// The resource kind behind a resource type (`None` for members, registrations and links).
    pub fn kind(self) -> Option<proto::resource::Kind> {
        use proto::resource::Kind;
        Some(match self {
            Resource::Meshes => Kind::Mesh,
            Resource::ExternalServices => Kind::ExternalService,
            Resource::Dataplanes => Kind::Dataplane,
            Resource::Secrets => Kind::Secret,
            Resource::GlobalSecrets => Kind::GlobalSecret,
            Resource::Meshexternalservices => Kind::MeshExternalService,
            Resource::TrafficPermissions => Kind::TrafficPermission,
            Resource::Meshtrafficpermissions => Kind::MeshTrafficPermission,
            Resource::ZoneIngresses => Kind::ZoneIngress,
            Resource::Members | Resource::ZoneEgresses | Resource::Links => return None,
        })
    }

    /// How an empty list is named: `external services`.
    pub fn words(self) -> &'static str {
        match self {
            Resource::Members => "members",
            Resource::ZoneEgresses => "egress nodes",
            Resource::ZoneIngresses => "ingress nodes or static ZoneIngresses",
            Resource::Meshes => "meshes",
            Resource::ExternalServices => "ExternalServices",
            Resource::Dataplanes => "Dataplanes",
            Resource::Secrets => "Secrets",
            Resource::GlobalSecrets => "GlobalSecrets",
            Resource::Meshexternalservices => "MeshExternalServices",
            Resource::TrafficPermissions => "TrafficPermissions",
            Resource::Meshtrafficpermissions => "MeshTrafficPermissions",
            Resource::Links => "links to other zones",
        }
    }
}

/// A resource type on the command line (`delete`): each takes its plural, kumactl's spelling
/// and Kuma's type name as aliases, so `delete externalservices web` works and a typo gets
/// clap's suggestion (exit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResourceKind {
    /// Mesh.
    #[value(alias = "meshes")]
    Mesh,
    /// ExternalService.
    #[value(
        alias = "external-services",
        alias = "externalservice",
        alias = "externalservices"
    )]
    ExternalService,
    /// Dataplane.
    #[value(alias = "dataplanes")]
    Dataplane,
    /// ZoneIngress (a static remote ingress).
    #[value(
        alias = "zone-ingresses",
        alias = "zoneingress",
        alias = "zoneingresses"
    )]
    ZoneIngress,
    /// Secret.
    #[value(alias = "secrets")]
    Secret,
    /// GlobalSecret.
    #[value(
        alias = "global-secrets",
        alias = "globalsecret",
        alias = "globalsecrets"
    )]
    GlobalSecret,
    /// MeshExternalService.
    #[value(name = "meshexternalservice", alias = "meshexternalservices")]
    MeshExternalService,
    /// TrafficPermission.
    #[value(
        alias = "traffic-permissions",
        alias = "trafficpermission",
        alias = "trafficpermissions"
    )]
    TrafficPermission,
    /// MeshTrafficPermission.
    #[value(name = "meshtrafficpermission", alias = "meshtrafficpermissions")]
    MeshTrafficPermission,
}

impl ResourceKind {
    /// The resource kind.
    pub fn kind(self) -> proto::resource::Kind {
        use proto::resource::Kind;
        match self {
            ResourceKind::Mesh => Kind::Mesh,
            ResourceKind::ExternalService => Kind::ExternalService,
            ResourceKind::Dataplane => Kind::Dataplane,
            ResourceKind::ZoneIngress => Kind::ZoneIngress,
            ResourceKind::Secret => Kind::Secret,
            ResourceKind::GlobalSecret => Kind::GlobalSecret,
            ResourceKind::MeshExternalService => Kind::MeshExternalService,
            ResourceKind::TrafficPermission => Kind::TrafficPermission,
            ResourceKind::MeshTrafficPermission => Kind::MeshTrafficPermission,
        }
    }
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON as the API answers it.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Arguments of `zone-egress get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to list.
    pub resource: Resource,
    /// One of them by name (a member, link or registration by its node name); with `-o yaml`
    /// the document `apply -f` takes back.
    pub name: Option<String>,
    /// Mesh of mesh-scoped resources.
    #[arg(long, default_value = "default")]
    pub mesh: String,
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Show inline private keys instead of `<redacted>` (asks `?secrets=true`; needs the admin
    /// token when the node has one).
    #[arg(long)]
    pub show_secrets: bool,
}

/// Arguments of `zone-egress apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// YAML (or JSON) file of one or many documents (or a list, as `get -o yaml` and `export`
    /// print); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE|-")]
    pub file: PathBuf,
    /// Parse and check everything as an apply would (the node's checks, the same errors and
    /// outcomes), change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `zone-egress export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Include inline private keys and Secret data instead of `<redacted>` (needs the admin
    /// token when the node has one); without it the export cannot be applied back where it
    /// carries secrets.
    #[arg(long)]
    pub show_secrets: bool,
}

/// Arguments of `zone-egress delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The resource type: the singular, the plural, kumactl's spelling or Kuma's type name
    /// (`external-service`, `external-services`, `externalservice`, `ExternalService`).
    #[arg(value_name = "TYPE", value_enum, ignore_case = true)]
    pub kind: ResourceKind,
    /// Resource name.
    pub name: String,
    /// Mesh of mesh-scoped resources.
    #[arg(long, default_value = "default")]
    pub mesh: String,
    /// Admin API and token.
    #[command(flatten)]
    pub admin: AdminArgs,
}

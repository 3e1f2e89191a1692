//! [`EgressIdentities`]: the egress's `spiffe://<mesh>/zone-egress` identities, one per (mesh,
//! set of DNS names), each with its ready-made BoringSSL server context ([`super::acceptor`]).
//!
//! An identity is issued on first use and re-issued once its renewal time (two thirds of its
//! lifetime) has passed or when the mesh's CA changed. Connections hold the `Arc<SslContext>`
//! they started with, so a renewal never drops one.
//!
//! The mesh CA is loaded once per backend definition; when it comes from files, the files are
//! read again at most every [`EgressIdentities::CA_REFRESH`], so a CA rotated on disk is picked
//! up. A re-read that fails keeps the CA loaded before (and logs a warning); a changed backend
//! that fails to load is an error.
//!
//! Clients are verified against the CA certificates of **every** backend the mesh lists, not
//! only the enabled one (Kuma's zero-downtime CA rotation: add the new backend, switch
//! `enabledBackend`, remove the old one; a backend is trusted while it is listed). Only the
//! certificate of a non-enabled backend is read; one that cannot be read is logged and left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use boring::ssl::SslContext;
use proto::resource::{CaBackend, CaKind, Mesh};
use rustls::pki_types::CertificateDer;

use super::PkiError;
use super::acceptor::acceptor_for_mesh;
use super::material::{parse_certificates, read_data_source};
use super::mesh_ca::MeshCa;

/// The egress identities of every mesh, issued on demand.
///
/// Calls may block for a moment (reading CA files, generating one ECDSA key and signature on
/// issue), well under a millisecond once cached.
#[derive(Debug)]
pub struct EgressIdentities {
    validity: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Loaded CA per mesh name.
    cas: HashMap<String, LoadedCa>,
    /// Trusted CA certificates (every listed backend) per mesh name.
    trust: HashMap<String, LoadedTrust>,
    /// Issued identity per (mesh name, sorted DNS names).
    identities: HashMap<(String, Vec<String>), Identity>,
}

#[derive(Debug)]
struct LoadedTrust {
    /// The backends the roots were read from.
    backends: Vec<CaBackend>,
    /// The CA certificate of each backend, in order (`None`: could not be read).
    roots: Vec<Option<CertificateDer<'static>>>,
    /// When they were read.
    loaded_at: SystemTime,
}

#[derive(Debug)]
struct LoadedCa {
    /// The backend definition the CA was loaded from.
    backend: CaBackend,
    ca: Arc<MeshCa>,
    /// When the CA was (re)loaded or last tried.
    loaded_at: SystemTime,
}

#[derive(Debug)]
struct Identity {
    /// The CA that signed it.
    ca: CertificateDer<'static>,
    /// The CA certificates its configuration trusts for clients.
    trust: Vec<CertificateDer<'static>>,
    /// The lifetime it was issued with.
    validity: Duration,
    renew_at: SystemTime,
    not_after: SystemTime,
    config: Arc<SslContext>,
}

impl EgressIdentities {
    /// The default lifetime of an egress identity.
    pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
    /// How often a file-based mesh CA is read again.
    pub const CA_REFRESH: Duration = Duration::from_secs(60);

    /// Identities valid for `validity`.
    pub fn new(validity: Duration) -> EgressIdentities {
        EgressIdentities {
            validity,
            state: Mutex::new(State::default()),
        }
    }

    /// The lifetime of a certificate issued from `mesh`'s enabled backend: its
    /// `dpCert.rotation.expiration` (Kuma's field for data-plane certificates), else this node's
    /// `pki.identity_validity`.
    pub fn validity_for(&self, mesh: &Mesh) -> Duration {
        mesh.enabled_ca()
            .and_then(|b| b.dp_cert.as_ref())
            .and_then(|d| d.expiration.as_ref())
            .map(|e| e.get())
            .filter(|v| !v.is_zero())
            .unwrap_or(self.validity)
    }

    /// The server context terminating mTLS for `mesh` with a certificate naming `dns_names`
    /// (order and duplicates do not matter; each must be a DNS name), issued or renewed as
    /// needed at `now`, valid for [`EgressIdentities::validity_for`] the mesh.
    pub fn acceptor(
        &self,
        mesh: &Mesh,
        dns_names: &[String],
        now: SystemTime,
    ) -> Result<Arc<SslContext>, PkiError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ca = state.ca(mesh, now)?;
        let trust = state.trust(mesh, now);
        let mut names = dns_names.to_vec();
        names.sort();
        names.dedup();
        let key = (mesh.name.to_string(), names);
        let validity = self.validity_for(mesh);
        if let Some(identity) = state.identities.get(&key) {
            if identity.ca == *ca.certificate()
                && identity.trust == trust
                && identity.validity == validity
                && now < identity.renew_at
            {
                return Ok(identity.config.clone());
            }
        }
        let issued = ca.issue_egress(ca.mesh(), &key.1, now, validity)?;
        let config = Arc::new(acceptor_for_mesh(&ca, &trust, &issued)?);
        tracing::debug!(
            mesh = ca.mesh(),
            names = %key.1.join(","),
            "issued the egress identity"
        );
        state
            .identities
            .retain(|_, identity| identity.not_after > now);
        state.identities.insert(
            key,
            Identity {
                ca: ca.certificate().clone(),
                trust,
                validity,
                renew_at: issued.renew_at(),
                not_after: issued.not_after,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// The context [`EgressIdentities::acceptor`] would return, when it is issued and current
    /// (CA loaded and not due for a re-read, same trust, same lifetime, not due for renewal):
    /// no file is read and no key generated. `None` when it must be (re)issued.
    pub fn cached(
        &self,
        mesh: &Mesh,
        dns_names: &[String],
        now: SystemTime,
    ) -> Option<Arc<SslContext>> {
        let due = |at: SystemTime| {
            now.duration_since(at)
                .is_ok_and(|age| age >= EgressIdentities::CA_REFRESH)
        };
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let name = mesh.name.as_str();
        let backend = mesh.enabled_ca()?;
        let ca = state
            .cas
            .get(name)
            .filter(|l| l.backend == *backend && !(due(l.loaded_at) && from_files(backend)))?;
        let backends = mesh.mtls.as_ref().map(|m| m.backends()).unwrap_or_default();
        let trust = state.trust.get(name).filter(|t| {
            t.backends.as_slice() == backends
                && !(due(t.loaded_at) && backends.iter().any(from_files))
        })?;
        let mut names = dns_names.to_vec();
        names.sort();
        names.dedup();
        let identity = state.identities.get(&(name.to_string(), names))?;
        (identity.ca == *ca.ca.certificate()
            && identity.trust.iter().eq(trust.roots.iter().flatten())
            && identity.validity == self.validity_for(mesh)
            && now < identity.renew_at)
            .then(|| identity.config.clone())
    }

    /// [`EgressIdentities::acceptor`] for async callers: the [`cached`](Self::cached) context
    /// at once, else issued on a blocking thread (reading CA files and generating a key must not
    /// stall the async workers that serve every other connection).
    ///
    /// # Errors
    /// As [`EgressIdentities::acceptor`]; [`PkiError::Unsupported`] if the blocking task failed.
    pub async fn acceptor_async(
        self: &Arc<Self>,
        mesh: &Mesh,
        dns_names: &[String],
        now: SystemTime,
    ) -> Result<Arc<SslContext>, PkiError> {
        if let Some(config) = self.cached(mesh, dns_names, now) {
            return Ok(config);
        }
        let (this, mesh, names) = (self.clone(), mesh.clone(), dns_names.to_vec());
        tokio::task::spawn_blocking(move || this.acceptor(&mesh, &names, now))
            .await
            .map_err(|e| {
                PkiError::Unsupported(format!("issuing the egress identity failed: {e}"))
            })?
    }

    /// The meshes whose CA or identities are held.
    pub fn meshes(&self) -> std::collections::BTreeSet<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .cas
            .keys()
            .chain(state.trust.keys())
            .chain(state.identities.keys().map(|(m, _)| m))
            .cloned()
            .collect()
    }

    /// The CAs loaded now, by mesh name: the enabled backend's name and the CA certificate's
    /// `notAfter` in Unix seconds (`None` when the certificate's validity cannot be read). A mesh
    /// appears once this node has issued an identity from its CA (the first connection or
    /// `inspect route`); the status page shows the others as not loaded.
    pub fn loaded_cas(&self) -> std::collections::BTreeMap<String, (String, Option<i64>)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .cas
            .iter()
            .map(|(mesh, loaded)| {
                let not_after = x509_parser::parse_x509_certificate(loaded.ca.certificate())
                    .ok()
                    .map(|(_, x)| x.validity().not_after.timestamp());
                (mesh.clone(), (loaded.ca.backend().to_string(), not_after))
            })
            .collect()
    }

    /// Drops the CA and identities of a mesh (deleted, or its mTLS turned off).
    pub fn forget_mesh(&self, mesh: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cas.remove(mesh);
        state.trust.remove(mesh);
        state.identities.retain(|(m, _), _| m != mesh);
    }
}

impl State {
    /// The CA of `mesh`, loaded or refreshed as needed.
    fn ca(&mut self, mesh: &Mesh, now: SystemTime) -> Result<Arc<MeshCa>, PkiError> {
        let name = mesh.name.as_str();
        let backend = mesh
            .enabled_ca()
            .ok_or_else(|| PkiError::NoMtls { mesh: name.into() })?;
        if let Some(loaded) = self.cas.get_mut(name) {
            if loaded.backend == *backend {
                let due = now
                    .duration_since(loaded.loaded_at)
                    .is_ok_and(|age| age >= EgressIdentities::CA_REFRESH);
                if !(due && from_files(backend)) {
                    return Ok(loaded.ca.clone());
                }
                loaded.loaded_at = now;
                match MeshCa::from_mesh(mesh) {
                    Ok(ca) => loaded.ca = Arc::new(ca),
                    Err(error) => {
                        tracing::warn!(%error, "cannot reload the mesh CA; keeping the loaded one");
                    }
                }
                return Ok(loaded.ca.clone());
            }
        }
        let ca = Arc::new(MeshCa::from_mesh(mesh)?);
        self.cas.insert(
            name.into(),
            LoadedCa {
                backend: backend.clone(),
                ca: ca.clone(),
                loaded_at: now,
            },
        );
        Ok(ca)
    }
}

impl State {
    /// The CA certificates of every backend `mesh` lists, read again when the backends change
    /// or, for files, every [`EgressIdentities::CA_REFRESH`].
    fn trust(&mut self, mesh: &Mesh, now: SystemTime) -> Vec<CertificateDer<'static>> {
        let name = mesh.name.as_str();
        let backends: Vec<CaBackend> = mesh
            .mtls
            .as_ref()
            .map(|m| m.backends().to_vec())
            .unwrap_or_default();
        let previous = self.trust.get(name).filter(|l| l.backends == backends);
        if let Some(loaded) = previous {
            let due = now
                .duration_since(loaded.loaded_at)
                .is_ok_and(|age| age >= EgressIdentities::CA_REFRESH);
            if !(due && backends.iter().any(from_files)) {
                return loaded.roots.iter().flatten().cloned().collect();
            }
        }
        let mut roots = Vec::with_capacity(backends.len());
        for (i, backend) in backends.iter().enumerate() {
            let CaKind::Provided { cert, .. } = &backend.kind else {
                roots.push(None);
                continue;
            };
            match read_data_source(cert).and_then(|bytes| parse_certificates(&bytes)) {
                Ok(certs) => roots.push(certs.into_iter().next()),
                Err(error) => {
                    // A re-read that fails keeps what was read before, like the enabled CA.
                    let kept = previous.and_then(|l| l.roots.get(i).cloned().flatten());
                    tracing::warn!(
                        mesh = name,
                        backend = %backend.name,
                        %error,
                        kept_previous = kept.is_some(),
                        "cannot read the CA certificate of a listed backend"
                    );
                    roots.push(kept);
                }
            }
        }
        let trusted = roots.iter().flatten().cloned().collect();
        self.trust.insert(
            name.into(),
            LoadedTrust {
                backends,
                roots,
                loaded_at: now,
            },
        );
        trusted
    }
}

/// Whether the backend reads its certificate or key from this node's disk.
fn from_files(backend: &CaBackend) -> bool {
    match &backend.kind {
        CaKind::Provided { cert, key } => cert.file().is_some() || key.file().is_some(),
        CaKind::Builtin { .. } => false,
    }
}

/// How often the mesh identities are checked without a resource change (a CA file may change).
const MESH_IDENTITY_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks, on every commit that wrote a `Mesh` or a `Secret` ([`crate::store::Changes`]) and
/// every `MESH_IDENTITY_CHECK` (5 s), that this egress can issue its identity for every mesh with
/// mTLS (CA loadable, key matching): what a terminated connection needs. A mesh that fails is a
/// `/ready` warning (the mesh only: `/ready` is open to anyone, the cause is in the log and in
/// `inspect route`), and counts in `zone_egress_meshes_without_identity`. The CA and identities
/// of a mesh that was deleted or whose mTLS is off are forgotten. The check reads CA files and
/// may generate keys, so it runs on a blocking thread, not on the async workers.
pub async fn keep_mesh_identities(
    mut changes: crate::store::Changes,
    identities: std::sync::Arc<EgressIdentities>,
    readiness_tx: tokio::sync::watch::Sender<crate::readiness::Readiness>,
) {
    use proto::resource::Kind;
    let kinds = [Kind::Mesh, Kind::Secret];
    let Some(mut resources) = changes.next(&kinds).await else {
        return;
    };
    let mut logged: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        let checked = {
            let (resources, identities) = (resources.clone(), identities.clone());
            tokio::task::spawn_blocking(move || check_meshes(&resources, &identities)).await
        };
        let Ok((problems, causes)) = checked else {
            return;
        };
        for (mesh, cause) in &causes {
            if logged.get(mesh) != Some(cause) {
                tracing::warn!(mesh = %mesh, error = %cause, "cannot issue the egress identity of a mesh");
            }
        }
        logged = causes;
        metrics::gauge!("zone_egress_meshes_without_identity").set(problems.len() as f64);
        readiness_tx.send_if_modified(|r| {
            if r.mesh_ca == problems {
                false
            } else {
                r.mesh_ca = problems;
                true
            }
        });
        tokio::select! {
            next = changes.next(&kinds) => match next {
                Some(r) => resources = r,
                None => return,
            },
            _ = tokio::time::sleep(MESH_IDENTITY_CHECK) => {}
        }
    }
}

/// One check of [`keep_mesh_identities`]: the `/ready` warnings and the cause per mesh that
/// fails; forgets the meshes that no longer have mTLS.
fn check_meshes(
    resources: &proto::zone::Resources,
    identities: &EgressIdentities,
) -> (Vec<String>, std::collections::BTreeMap<String, String>) {
    let mut problems = Vec::new();
    let mut causes = std::collections::BTreeMap::new();
    let mut with_mtls = std::collections::BTreeSet::new();
    for mesh in resources.meshes() {
        if mesh.enabled_ca().is_none() {
            continue;
        }
        let name = mesh.name.as_str().to_string();
        with_mtls.insert(name.clone());
        // As connections see it: `secret:` references and a minted builtin CA resolved.
        let mesh = resources.resolved_mesh(mesh);
        if let Err(e) = identities.acceptor(&mesh, &[], std::time::SystemTime::now()) {
            problems.push(format!(
                "mesh {name:?}: this egress cannot issue its identity, so every terminated \
                 connection of the mesh is closed (reason identity; the cause is in the log \
                 and in inspect route)"
            ));
            causes.insert(name, e.to_string());
        }
    }
    for gone in identities
        .meshes()
        .into_iter()
        .filter(|m| !with_mtls.contains(m))
    {
        tracing::debug!(mesh = %gone, "forgetting the CA and identities of a mesh without mTLS");
        identities.forget_mesh(&gone);
    }
    (problems, causes)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proto::resource::DataSource;

    use super::*;
    use crate::pki::init_ca;
    use crate::pki::mesh_ca::tests::{mesh_and_ca, mesh_with};

    const HOUR: Duration = Duration::from_secs(3600);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn identities_are_cached_and_renewed_after_two_thirds() {
        let (mesh, _) = mesh_and_ca("default");
        let identities = EgressIdentities::new(HOUR * 3);
        let start = SystemTime::now();
        let first = identities
            .acceptor(&mesh, &names(&["b.test", "a.test"]), start)
            .unwrap();
        let again = identities
            .acceptor(&mesh, &names(&["a.test", "b.test", "a.test"]), start + HOUR)
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "same names, before renewal: cached"
        );
        drop(again);
        let other_names = identities
            .acceptor(&mesh, &names(&["c.test"]), start + HOUR)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other_names));

        // Two thirds of 3 h (counted from one minute before `start`) have passed.
        let renewed = identities
            .acceptor(&mesh, &names(&["a.test", "b.test"]), start + HOUR * 2)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed), "renewed after renew_at");
        let still = identities
            .acceptor(&mesh, &names(&["a.test", "b.test"]), start + HOUR * 3)
            .unwrap();
        assert!(Arc::ptr_eq(&renewed, &still));
        // The old configuration stays usable by the connections holding it.
        assert_eq!(Arc::strong_count(&first), 1);
    }

    #[tokio::test]
    async fn the_cached_identity_needs_no_blocking_work_and_a_miss_is_issued_off_the_workers() {
        let (mesh, _) = mesh_and_ca("default");
        let (rotated, _) = mesh_and_ca("default");
        let identities = Arc::new(EgressIdentities::new(HOUR * 3));
        let now = SystemTime::now();
        let names = names(&["a.test"]);
        assert!(
            identities.cached(&mesh, &names, now).is_none(),
            "nothing issued yet"
        );
        let first = identities.acceptor_async(&mesh, &names, now).await.unwrap();
        let cached = identities
            .cached(&mesh, &names, now)
            .expect("issued: cached");
        assert!(Arc::ptr_eq(&first, &cached));
        assert!(Arc::ptr_eq(
            &first,
            &identities.acceptor_async(&mesh, &names, now).await.unwrap()
        ));
        // What would need work is not answered from the cache: renewal due, another CA, a
        // file-based CA due for a re-read.
        assert!(identities.cached(&mesh, &names, now + HOUR * 2).is_none());
        assert!(identities.cached(&rotated, &names, now).is_none());
        let second = identities
            .acceptor_async(&rotated, &names, now)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn a_mesh_deleted_or_without_mtls_is_forgotten_by_the_check() {
        let (mesh, _) = mesh_and_ca("default");
        let identities = EgressIdentities::new(HOUR);
        identities.acceptor(&mesh, &[], SystemTime::now()).unwrap();
        assert_eq!(identities.meshes(), ["default".to_string()].into());
        // A zone where the mesh is gone.
        let (problems, _) = check_meshes(&proto::zone::Resources::default(), &identities);
        assert!(problems.is_empty());
        assert!(identities.meshes().is_empty(), "{:?}", identities.meshes());
    }

    #[test]
    fn a_new_ca_means_a_new_identity() {
        let (mesh, _) = mesh_and_ca("default");
        let (rotated, _) = mesh_and_ca("default");
        let identities = EgressIdentities::new(HOUR);
        let now = SystemTime::now();
        let first = identities.acceptor(&mesh, &[], now).unwrap();
        let second = identities.acceptor(&rotated, &[], now).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(
            &second,
            &identities.acceptor(&rotated, &[], now).unwrap()
        ));

        identities.forget_mesh("default");
        let third = identities.acceptor(&rotated, &[], now).unwrap();
        assert!(!Arc::ptr_eq(&second, &third));
    }

    #[test]
    fn ca_files_are_reread_and_a_bad_reread_keeps_the_old_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "first").unwrap();
        let file = |name: &str| DataSource::File(dir.path().join(name).display().to_string());
        let mesh = mesh_with("default", file("ca.pem"), file("ca.key"));
        let identities = EgressIdentities::new(HOUR * 24);
        let start = SystemTime::now();
        let first = identities.acceptor(&mesh, &[], start).unwrap();

        // Rotate the CA on disk: picked up after CA_REFRESH.
        fs::remove_file(dir.path().join("ca.pem")).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        init_ca(dir.path(), "second").unwrap();
        let soon = start + EgressIdentities::CA_REFRESH / 2;
        assert!(Arc::ptr_eq(
            &first,
            &identities.acceptor(&mesh, &[], soon).unwrap()
        ));
        let later = start + EgressIdentities::CA_REFRESH;
        let second = identities.acceptor(&mesh, &[], later).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));

        // A broken file on disk: the loaded CA stays.
        fs::write(dir.path().join("ca.pem"), b"broken").unwrap();
        let much_later = later + EgressIdentities::CA_REFRESH * 2;
        let third = identities.acceptor(&mesh, &[], much_later).unwrap();
        assert!(Arc::ptr_eq(&second, &third));

        // A changed backend that does not load is an error.
        let moved = mesh_with("default", file("missing.pem"), file("ca.key"));
        let error = identities.acceptor(&moved, &[], much_later).unwrap_err();
        assert!(
            error.to_string().contains("conf.cert: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn a_mesh_without_mtls_has_no_identity() {
        let (mut mesh, _) = mesh_and_ca("default");
        mesh.mtls = None;
        let identities = EgressIdentities::new(HOUR);
        let error = identities
            .acceptor(&mesh, &[], SystemTime::now())
            .unwrap_err();
        assert!(matches!(error, PkiError::NoMtls { .. }), "{error}");
    }
}

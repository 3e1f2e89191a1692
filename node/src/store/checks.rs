//! What a local write must satisfy before it is stamped: references between resources (a mesh's
//! CA secret, a permission's mesh, a secret still in use) and the builtin CA a mesh gets minted.

use std::collections::HashSet;
use std::time::SystemTime;

use proto::resource::{CaKind, Kind, Resource, ResourceKey};
use proto::zone::Resources;

use super::{Change, StoreError};

/// How many builtin CAs this node minted (`zone_egress_builtin_ca_minted_total`).
pub const MINTED_METRIC: &str = "zone_egress_builtin_ca_minted_total";

/// The changes a batch implies for builtin CAs:
///
/// * a Mesh put with a `builtin` backend whose two Secrets (`<mesh>.ca-builtin-cert-<backend>`,
///   `-key-`) neither exist nor come in the batch gets them minted here
///   ([`crate::pki::generate_builtin_ca`], `conf.caCert` honoured). Minting happens only in the
///   write path of the node that takes the Mesh's write, under the store lock, so nodes that
///   receive the Mesh by replication never mint, and one node never mints twice;
/// * a Mesh delete takes its builtin CA Secrets with it (Kuma deletes a mesh's CA with it).
///
/// The caller counts and logs a minted CA once its batch is written ([`minted_cas`]), so a dry
/// run that mints (and throws away) one neither counts nor logs it.
/// The builtin CAs a completed batch mints: `(mesh, cert Secret name)` per CA, from the cert
/// Secrets [`builtin_ca_changes`] added.
pub(super) fn minted_cas(minted: &[Change]) -> Vec<(String, String)> {
    minted
        .iter()
        .filter_map(|c| match c {
            Change::Put(r @ Resource::Secret(_)) if r.name().contains(".ca-builtin-cert-") => {
                Some((
                    r.mesh().unwrap_or_default().to_string(),
                    r.name().to_string(),
                ))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn builtin_ca_changes(
    current: &Resources,
    changes: &[Change],
    now: SystemTime,
) -> Result<Vec<Change>, StoreError> {
    let in_batch = |key: &ResourceKey| {
        changes.iter().any(|c| match c {
            Change::Put(r) => r.resource_key() == *key,
            Change::Delete(k) => k == key,
        })
    };
    let mut extra = Vec::new();
    for change in changes {
        match change {
            Change::Put(Resource::Mesh(mesh)) => {
                let name = mesh.name.as_str();
                for backend in mesh.mtls.iter().flat_map(|m| m.backends()) {
                    let CaKind::Builtin {
                        rsa_bits,
                        expiration,
                    } = &backend.kind
                    else {
                        continue;
                    };
                    let (cert_name, key_name) =
                        proto::zone::builtin_ca_secret_names(name, backend.name.as_str());
                    let key_of = |secret: &str| ResourceKey::new(Kind::Secret, Some(name), secret);
                    let (Ok(cert_key), Ok(key_key)) = (key_of(&cert_name), key_of(&key_name))
                    else {
                        return Err(StoreError::Invalid(vec![format!(
                            "Mesh {name:?} backend {:?}: the builtin CA's Secret names \
                             ({cert_name:?}) are not valid resource names; use shorter names",
                            backend.name.as_str()
                        )]));
                    };
                    let exists = |k: &ResourceKey| current.get(k).is_some() || in_batch(k);
                    match (exists(&cert_key), exists(&key_key)) {
                        (true, true) => continue,
                        (false, false) => {}
                        (cert, _) => {
                            let (there, missing) = if cert {
                                (&cert_name, &key_name)
                            } else {
                                (&key_name, &cert_name)
                            };
                            return Err(StoreError::Invalid(vec![format!(
                                "Mesh {name:?} backend {:?}: Secret {there:?} exists but \
                                 {missing:?} does not; give both (an imported CA) or neither \
                                 (the fleet mints it)",
                                backend.name.as_str()
                            )]));
                        }
                    }
                    let bits = rsa_bits.unwrap_or(crate::pki::BUILTIN_CA_RSA_BITS);
                    let validity = expiration
                        .as_ref()
                        .map(|e| e.get())
                        .unwrap_or(crate::pki::CA_VALIDITY);
                    let (cert, key) = crate::pki::generate_builtin_ca(name, bits, now, validity)
                        .map_err(|e| {
                            StoreError::Invalid(vec![format!(
                                "Mesh {name:?} backend {:?}: cannot mint the builtin CA: {e}",
                                backend.name.as_str()
                            )])
                        })?;
                    for (secret, bytes) in [(cert_name, cert), (key_name, key)] {
                        let doc = serde_json::json!({
                            "type": "Secret", "mesh": name, "name": secret,
                            "data": proto::resource::base64::encode(bytes.as_bytes()),
                        });
                        let resource = Resource::from_json(&doc.to_string()).map_err(|e| {
                            StoreError::Invalid(vec![format!("builtin CA Secret: {e}")])
                        })?;
                        extra.push(Change::Put(resource));
                    }
                }
            }
            Change::Delete(key) if key.kind() == Kind::Mesh => {
                let prefix = format!("{}.ca-builtin-", key.name());
                for r in current.list(Kind::Secret, Some(key.name())) {
                    let k = r.resource_key();
                    if r.name().starts_with(&prefix) && !in_batch(&k) {
                        extra.push(Change::Delete(k));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(extra)
}

/// Mesh-scoped resources need their mesh; a mesh with resources cannot be deleted; a `secret:`
/// reference needs its Secret (in the zone or the batch), and a Secret that a resource (or a
/// builtin CA backend) uses cannot be deleted.
pub(super) fn check_references(current: &Resources, changes: &[Change]) -> Result<(), StoreError> {
    let mut meshes: HashSet<String> = current
        .list(Kind::Mesh, None)
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    for change in changes {
        if let Change::Put(r) = change {
            if r.kind() == Kind::Mesh {
                meshes.insert(r.name().to_string());
            }
        }
    }
    let deleted = |key: &ResourceKey| {
        changes
            .iter()
            .any(|c| matches!(c, Change::Delete(k) if k == key))
    };
    let put = |key: &ResourceKey| {
        changes.iter().find_map(|c| match c {
            Change::Put(r) if r.resource_key() == *key => Some(r),
            _ => None,
        })
    };
    // A Secret as it will be: put or deleted by the batch, else as it is. O(batch) per
    // lookup: a write's cost must not grow with the zone.
    let secret_exists = |mesh: &str, name: &str| {
        let key = ResourceKey::new(Kind::Secret, Some(mesh), name);
        match key {
            Ok(key) if put(&key).is_some() => true,
            Ok(key) if deleted(&key) => false,
            _ => current.secret(mesh, name).is_some(),
        }
    };
    // The zone as it will be: current resources, replaced or removed by the batch. Only a
    // Secret delete reads it (whose users may be anywhere in its mesh).
    let after = || -> Vec<&Resource> {
        current
            .iter()
            .filter(|r| !deleted(&r.resource_key()) && put(&r.resource_key()).is_none())
            .chain(changes.iter().filter_map(|c| match c {
                Change::Put(r) => Some(r),
                Change::Delete(_) => None,
            }))
            .collect()
    };
    let mut problems = Vec::new();
    for change in changes {
        match change {
            Change::Put(r) => {
                if let Some(mesh) = r.mesh() {
                    if !meshes.contains(mesh) {
                        problems.push(format!(
                            "{} {:?}: mesh {mesh:?} does not exist; apply the Mesh first",
                            r.kind().as_str(),
                            r.name()
                        ));
                    }
                }
                let mesh = r.mesh().unwrap_or(r.name());
                for (path, secret) in r.secret_refs() {
                    if !secret_exists(mesh, secret) {
                        problems.push(format!(
                            "{} {:?}: {path} refers to Secret {secret:?} of mesh {mesh:?}, which \
                             does not exist; apply the Secret first (or in the same batch)",
                            r.kind().as_str(),
                            r.name()
                        ));
                    }
                }
            }
            Change::Delete(key) if key.kind() == Kind::Mesh => {
                let users: Vec<String> = current
                    .iter()
                    .filter(|r| r.mesh() == Some(key.name()))
                    .filter(|r| !deleted(&r.resource_key()))
                    .map(|r| format!("{} {}", r.kind().as_str(), r.name()))
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "mesh {:?} still has resources ({}); delete them first",
                        key.name(),
                        users.join(", ")
                    )));
                }
            }
            Change::Delete(key) if key.kind() == Kind::Secret => {
                let mesh = key.mesh().unwrap_or_default();
                let users: Vec<String> = after()
                    .into_iter()
                    .filter(|r| r.mesh().unwrap_or(r.name()) == mesh)
                    .filter_map(|r| {
                        let by_ref = r
                            .secret_refs()
                            .into_iter()
                            .find(|(_, s)| *s == key.name())
                            .map(|(path, _)| path);
                        let by_builtin = match r {
                            Resource::Mesh(m) => m
                                .mtls
                                .iter()
                                .flat_map(|t| t.backends())
                                .filter(|b| matches!(b.kind, CaKind::Builtin { .. }))
                                .find(|b| {
                                    let (c, k) =
                                        proto::zone::builtin_ca_secret_names(mesh, b.name.as_str());
                                    c == key.name() || k == key.name()
                                })
                                .map(|b| format!("the builtin CA of backend {}", b.name)),
                            _ => None,
                        };
                        by_ref
                            .or(by_builtin)
                            .map(|why| format!("{} {} ({why})", r.kind().as_str(), r.name()))
                    })
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "Secret {:?} of mesh {mesh:?} is in use by {}; change or delete them first",
                        key.name(),
                        users.join(", ")
                    )));
                }
            }
            Change::Delete(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(problems))
    }
}

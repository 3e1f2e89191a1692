//! The egress's merged view of what remote zones offer, and the weighted choice of a link.
//!
//! Each link that is up contributes its ingress's last [`ServiceSet`]; entries with the same
//! (mesh, tags) are merged into one [`RemoteService`] listing every link that offers it with its
//! instance count. A link that goes down leaves the view at once.
//!
//! [`weighted_pick`] chooses among links in proportion to the instances they advertise for the
//! requested service: a uniform random number in `[0, total)` lands in one link's share
//! (cumulative weights in link-name order). Random rather than a weighted round robin: every
//! egress node picks independently, without per-service state, and converges on the weights
//! over many connections; tests seed the generator.

use std::collections::BTreeMap;

use crate::link::{SERVICE_TAG, ServiceSet};

/// One service (mesh and full tag set) and the links that offer it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteService {
    /// The mesh.
    pub mesh: String,
    /// The inbound tags, `kuma.io/service` included.
    pub tags: BTreeMap<String, String>,
    /// The links (up) whose ingress offers it, in link-name order.
    pub links: Vec<LinkInstances>,
}

/// One link's share of a [`RemoteService`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkInstances {
    /// The link's name.
    pub link: String,
    /// The remote zone.
    pub zone: String,
    /// Instances advertised by the link's ingress.
    pub instances: u32,
}

/// Services offered by remote zones through the links that are up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteServices {
    /// By (mesh, service), the tag sets offered.
    by_service: BTreeMap<(String, String), Vec<RemoteService>>,
    /// Links that are not up, for explanations only (never for routing).
    down: Vec<DownLink>,
}

/// Why no link that is up offers a service ([`RemoteServices::why_not_offered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOffered {
    /// A link that is down offered it while it was up.
    pub was_offered: bool,
    /// The links that are down and their errors.
    pub detail: String,
}

/// A link that is not up: why, and what its ingress offered while it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownLink {
    /// The link's name.
    pub link: String,
    /// The remote zone.
    pub zone: String,
    /// Its last error (`not connected yet` when it never came up).
    pub error: String,
    /// What its ingress last offered while it was up (empty when it never was).
    pub last_offered: std::sync::Arc<ServiceSet>,
}

/// One contribution to [`RemoteServices::merge`]: a link, its zone and its ingress's set.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The link's name.
    pub link: &'a str,
    /// The remote zone.
    pub zone: &'a str,
    /// What the link's ingress advertises.
    pub set: &'a ServiceSet,
}

impl RemoteServices {
    /// Merges the sets of the links that are up (the manager does this on every change; tests
    /// and tools can build a view directly). Entries without `kuma.io/service` or with no
    /// instance are left out.
    pub fn merge<'a>(contributions: impl IntoIterator<Item = Contribution<'a>>) -> Self {
        let mut merged: BTreeMap<(String, BTreeMap<String, String>), Vec<LinkInstances>> =
            BTreeMap::new();
        for Contribution { link, zone, set } in contributions {
            for service in &set.services {
                if service.service().is_none() || service.instances == 0 {
                    continue;
                }
                let links = merged
                    .entry((service.mesh.clone(), service.tags.clone()))
                    .or_default();
                match links.iter_mut().find(|l| l.link == link) {
                    Some(existing) => {
                        existing.instances = existing.instances.saturating_add(service.instances)
                    }
                    None => links.push(LinkInstances {
                        link: link.to_string(),
                        zone: zone.to_string(),
                        instances: service.instances,
                    }),
                }
            }
        }
        let mut by_service: BTreeMap<(String, String), Vec<RemoteService>> = BTreeMap::new();
        for ((mesh, tags), mut links) in merged {
            links.sort_by(|a, b| a.link.cmp(&b.link));
            let service = tags.get(SERVICE_TAG).cloned().unwrap_or_default();
            by_service
                .entry((mesh.clone(), service))
                .or_default()
                .push(RemoteService { mesh, tags, links });
        }
        RemoteServices {
            by_service,
            down: Vec::new(),
        }
    }

    /// The same view, knowing which links are down ([`RemoteServices::why_not_offered`]).
    pub fn with_down_links(mut self, down: Vec<DownLink>) -> Self {
        self.down = down;
        self
    }

    /// Why no link that is up offers `service` of `mesh`, when a link that is down explains it:
    /// a down link whose ingress offered it, else every down link (its services are unknown).
    /// `None` when every link is up.
    pub fn why_not_offered(&self, mesh: &str, service: &str) -> Option<NotOffered> {
        let offered_by: Vec<&DownLink> = self
            .down
            .iter()
            .filter(|d| {
                d.last_offered
                    .services
                    .iter()
                    .any(|s| s.mesh == mesh && s.service() == Some(service))
            })
            .collect();
        if !offered_by.is_empty() {
            let links: Vec<String> = offered_by
                .iter()
                .map(|d| format!("{} (zone {}): {}", d.link, d.zone, d.error))
                .collect();
            return Some(NotOffered {
                was_offered: true,
                detail: format!(
                    "{service:?} was offered through link(s) that are down now: {}",
                    links.join("; ")
                ),
            });
        }
        if self.down.is_empty() {
            return None;
        }
        let links: Vec<String> = self
            .down
            .iter()
            .map(|d| format!("{} (zone {}): {}", d.link, d.zone, d.error))
            .collect();
        Some(NotOffered {
            was_offered: false,
            detail: format!(
                "{} link(s) are down, and what their zones offer is not known until they are up: {}",
                self.down.len(),
                links.join("; ")
            ),
        })
    }

    /// Every service, ordered by mesh, service and tags.
    pub fn iter(&self) -> impl Iterator<Item = &RemoteService> {
        self.by_service.values().flatten()
    }

    /// Number of distinct (mesh, tags) entries.
    pub fn len(&self) -> usize {
        self.by_service.values().map(Vec::len).sum()
    }

    /// Whether no remote service is known.
    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// The links offering `service` of `mesh` with every tag of `subset`, each with the sum of
    /// its matching instances, in link-name order. Empty: no remote zone offers it.
    pub fn candidates(
        &self,
        mesh: &str,
        service: &str,
        subset: &BTreeMap<String, String>,
    ) -> Vec<(String, u64)> {
        let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
        let Some(entries) = self
            .by_service
            .get(&(mesh.to_string(), service.to_string()))
        else {
            return Vec::new();
        };
        let matching = entries.iter().filter(|entry| {
            super::matches_subset(subset, |k| entry.tags.get(k).map(String::as_str))
        });
        for entry in matching {
            for link in &entry.links {
                *weights.entry(&link.link).or_default() += u64::from(link.instances);
            }
        }
        weights
            .into_iter()
            .map(|(link, weight)| (link.to_string(), weight))
            .collect()
    }
}

/// The candidate whose cumulative share holds `roll`, where `roll` is uniform in
/// `[0, sum of weights)`; `None` when the sum is zero or `roll` is beyond it.
pub fn weighted_pick(candidates: &[(String, u64)], roll: u64) -> Option<&str> {
    let mut upper = 0u64;
    for (name, weight) in candidates {
        upper = upper.saturating_add(*weight);
        if roll < upper {
            return Some(name);
        }
    }
    None
}

/// Sum of the candidates' weights.
pub fn total_weight(candidates: &[(String, u64)]) -> u64 {
    candidates
        .iter()
        .fold(0u64, |sum, (_, weight)| sum.saturating_add(*weight))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::link::AvailableService;

    fn available(mesh: &str, service: &str, version: &str, instances: u32) -> AvailableService {
        AvailableService {
            mesh: mesh.into(),
            tags: BTreeMap::from([
                (SERVICE_TAG.to_string(), service.to_string()),
                ("version".to_string(), version.to_string()),
            ]),
            instances,
        }
    }

    #[test]
    fn merge_groups_by_tags_and_sums_subsets() {
        let a = ServiceSet {
            services: vec![
                available("default", "backend", "v1", 2),
                available("default", "backend", "v2", 1),
            ],
            ingresses: vec![],
        };
        let b = ServiceSet {
            services: vec![
                available("default", "backend", "v1", 5),
                available("other", "backend", "v1", 9),
                available("default", "idle", "v1", 0),
            ],
            ingresses: vec![],
        };
        let merged = RemoteServices::merge([
            Contribution {
                link: "b",
                zone: "zone-c",
                set: &b,
            },
            Contribution {
                link: "a",
                zone: "zone-b",
                set: &a,
            },
        ]);
        assert_eq!(merged.len(), 3);
        let all = BTreeMap::new();
        assert_eq!(
            merged.candidates("default", "backend", &all),
            vec![("a".to_string(), 3), ("b".to_string(), 5)]
        );
        let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        assert_eq!(
            merged.candidates("default", "backend", &v2),
            vec![("a".to_string(), 1)]
        );
        assert!(merged.candidates("default", "idle", &all).is_empty());
        assert!(merged.candidates("default", "web", &all).is_empty());
        let first = merged.iter().next().unwrap();
        assert_eq!(first.links[0].link, "a");
    }

    #[test]
    fn pick_boundaries() {
        let candidates = vec![
            ("a".to_string(), 1),
            ("b".to_string(), 0),
            ("c".to_string(), 2),
        ];
        assert_eq!(total_weight(&candidates), 3);
        assert_eq!(weighted_pick(&candidates, 0), Some("a"));
        assert_eq!(weighted_pick(&candidates, 1), Some("c"));
        assert_eq!(weighted_pick(&candidates, 2), Some("c"));
        assert_eq!(weighted_pick(&candidates, 3), None);
        assert_eq!(weighted_pick(&[], 0), None);
    }

    #[test]
    fn picks_follow_the_instances() {
        // 1 : 3 : 6 with a fixed seed; each share within 1.5 points of its weight.
        let candidates = vec![
            ("a".to_string(), 1),
            ("b".to_string(), 3),
            ("c".to_string(), 6),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = BTreeMap::new();
        let rounds = 100_000;
        for _ in 0..rounds {
            let roll = rng.random_range(0..total_weight(&candidates));
            *counts
                .entry(weighted_pick(&candidates, roll).unwrap())
                .or_insert(0u32) += 1;
        }
        for (name, weight) in &candidates {
            let share = f64::from(counts[name.as_str()]) / f64::from(rounds);
            let expected = *weight as f64 / 10.0;
            assert!(
                (share - expected).abs() < 0.015,
                "{name}: {share} vs {expected}"
            );
        }
    }
}

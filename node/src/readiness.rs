//! Readiness of this node: the conditions of DESIGN.md §8 and why one fails.
//!
//! Ready = joined gossip, name unique in the zone, listeners up, not draining (nor drained).
//! The node keeps one [`Readiness`] in a `watch` channel; `/ready` answers from it and gossip
//! publishes it.

/// The readiness conditions of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Gossip has joined the zone (another member seen, or nothing to join).
    pub joined: bool,
    /// Set when another live node holds this name: the reason.
    pub name_conflict: Option<String>,
    /// Every listener of the role is bound and accepting.
    pub listeners_up: bool,
    /// The node is draining (signal or `POST /v1/drain`).
    pub draining: bool,
    /// The drain is over: the node stopped accepting, and its in-flight connections finished
    /// or `drain.grace` ran out. Only ever set after `draining`; `zone-egress drain --wait`
    /// waits for it.
    pub drained: bool,
}

impl Readiness {
    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.joined
            && self.name_conflict.is_none()
            && self.listeners_up
            && !self.draining
            && !self.drained
    }

    /// Why the node is not ready (empty when it is).
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.joined {
            reasons.push("gossip has not joined the zone yet (no seed peer answered)".to_string());
        }
        if let Some(conflict) = &self.name_conflict {
            reasons.push(conflict.clone());
        }
        if !self.listeners_up {
            reasons.push("listeners are not up".to_string());
        }
        if self.drained {
            reasons.push("the node is draining (drained: no longer accepting)".to_string());
        } else if self.draining {
            reasons.push("the node is draining".to_string());
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_counts_and_says_why() {
        let ok = Readiness {
            joined: true,
            listeners_up: true,
            ..Default::default()
        };
        assert!(ok.is_ready());
        assert!(ok.reasons().is_empty());
        let conflict = Readiness {
            name_conflict: Some("name taken".into()),
            ..ok.clone()
        };
        assert!(!conflict.is_ready());
        assert_eq!(conflict.reasons(), vec!["name taken"]);
        let draining = Readiness {
            draining: true,
            ..ok.clone()
        };
        assert!(!draining.is_ready());
        assert_eq!(draining.reasons(), vec!["the node is draining"]);
        let drained = Readiness {
            drained: true,
            ..draining.clone()
        };
        assert!(!drained.is_ready());
        assert_eq!(
            drained.reasons(),
            vec!["the node is draining (drained: no longer accepting)"]
        );
        assert!(
            !Readiness {
                draining: false,
                ..drained
            }
            .is_ready()
        );
        assert!(!Readiness::default().is_ready());
        assert_eq!(Readiness::default().reasons().len(), 2);
    }
}

//! Key rotation, the pure part: when an announced rotation completes, and the shape
//! `weft key status` shows. Time comes in as Unix seconds (the shells read it with `unix_now`);
//! nothing else here touches the outside world.
//!
//! A rotation completes when every peer of the current mesh has completed a handshake with
//! the next key, or when its grace period ends, whichever comes first; never before its
//! announcement has been published (peers learn the next key only from the record), and the
//! grace period counts from that first publication, not from the start.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::datapath::stats::KeyRotationProgress;

/// An announced rotation that has not completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub epoch: u64,
    /// The announced next public key (base64).
    pub next_public_key: String,
    /// Unix seconds.
    pub started_at: u64,
    pub grace_secs: u64,
    /// When the announcement was first published (Unix seconds); `None` until then.
    pub announced_at: Option<u64>,
}

impl Rotation {
    /// When the grace period ends: none before the announcement is published.
    pub fn deadline(&self) -> Option<u64> {
        self.announced_at
            .map(|at| at.saturating_add(self.grace_secs))
    }
}

/// Why a rotation completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionReason {
    /// Every peer completed a handshake with the next key.
    AllPeersMoved,
    /// The grace period ended first; the unmoved peers re-handshake once they read the record.
    GraceEnded,
}

/// What to do with a pending rotation now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait,
    Complete {
        reason: CompletionReason,
        unmoved: Vec<String>,
    },
}

/// What the agent knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Whether registry and routes have been read since the agent started: before that the
    /// mesh is not known, and an empty peer list would prove nothing.
    pub synced: bool,
    /// The peers of the mesh the datapath holds.
    pub peers: &'a BTreeSet<String>,
    /// The datapath's rotation progress (`None` without a datapath).
    pub progress: Option<&'a KeyRotationProgress>,
    pub now: u64,
}

/// The peers of the mesh that have not completed a handshake with the next key.
fn unmoved(rotation: &Rotation, observed: &Observed<'_>) -> Vec<String> {
    let moved: BTreeSet<&str> = observed
        .progress
        .filter(|p| p.next_public_key == rotation.next_public_key)
        .map(|p| p.moved.iter().map(String::as_str).collect())
        .unwrap_or_default();
    observed
        .peers
        .iter()
        .filter(|peer| !moved.contains(peer.as_str()))
        .cloned()
        .collect()
}

/// Decides whether `rotation` completes now.
pub fn decide(rotation: &Rotation, observed: Observed<'_>) -> Decision {
    let Some(deadline) = rotation.deadline() else {
        // Not published: nobody has been told the next key yet.
        return Decision::Wait;
    };
    let unmoved = unmoved(rotation, &observed);
    // The datapath's progress must be about this mesh: same peers, this next key.
    let progress_current = observed.progress.is_some_and(|p| {
        p.next_public_key == rotation.next_public_key
            && p.moved
                .iter()
                .chain(&p.pending)
                .cloned()
                .collect::<BTreeSet<_>>()
                == *observed.peers
    });
    if observed.synced && progress_current && unmoved.is_empty() {
        return Decision::Complete {
            reason: CompletionReason::AllPeersMoved,
            unmoved,
        };
    }
    if observed.now >= deadline {
        return Decision::Complete {
            reason: CompletionReason::GraceEnded,
            unmoved,
        };
    }
    Decision::Wait
}

/// The wall clock in Unix seconds, as the IO shells pass it in here (0 before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a key current since `current_since` is due for a scheduled rotation.
pub fn scheduled_at(current_since: u64, interval_secs: u64) -> u64 {
    current_since.saturating_add(interval_secs)
}

/// A number of seconds as people write it: `1h 30m`, `50s`.
fn human_secs(secs: u64) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_secs(secs))
}

/// `weft key status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub public_key: String,
    pub next_public_key: Option<String>,
    pub key_epoch: u64,
    /// Unix seconds since the current key is current.
    #[serde(default)]
    pub current_since: u64,
    /// When the agent rotates on its own next (`--key-rotation-interval`), Unix seconds.
    #[serde(default)]
    pub next_scheduled_rotation: Option<u64>,
    pub rotation: Option<RotationView>,
    pub last_rotation: Option<CompletedView>,
    /// Whether the registry holds the own record as the keys are now (an agent from before
    /// this field published before it answered: true).
    #[serde(default = "published_by_default")]
    pub published: bool,
    /// The last thing that went wrong while rotating or publishing the record (a rotation
    /// error is cleared when a rotation begins or completes, a publish error once the record
    /// is published).
    pub last_error: Option<String>,
}

fn published_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationView {
    pub epoch: u64,
    pub started_at: u64,
    pub grace_secs: u64,
    /// When the announcement was first published: the grace period counts from then.
    #[serde(default)]
    pub announced_at: Option<u64>,
    pub peers_moved: usize,
    pub peers_total: usize,
    pub pending_peers: Vec<String>,
}

impl RotationView {
    /// When the grace period ends: none before the announcement is published.
    pub fn deadline(&self) -> Option<u64> {
        self.announced_at
            .map(|at| at.saturating_add(self.grace_secs))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedView {
    pub epoch: u64,
    pub completed_at: u64,
    pub reason: CompletionReason,
    pub unmoved_peers: Vec<String>,
}

impl RotationView {
    pub fn new(rotation: &Rotation, observed: Observed<'_>) -> Self {
        let unmoved = unmoved(rotation, &observed);
        Self {
            epoch: rotation.epoch,
            started_at: rotation.started_at,
            grace_secs: rotation.grace_secs,
            announced_at: rotation.announced_at,
            peers_moved: observed.peers.len() - unmoved.len(),
            peers_total: observed.peers.len(),
            pending_peers: unmoved,
        }
    }
}

impl KeyStatus {
    /// The human form of `weft key status`.
    pub fn to_table(&self, now: u64) -> String {
        let mut out = format!(
            "public key:  {}\nkey epoch:   {}\nrecord:      {}\n",
            self.public_key,
            self.key_epoch,
            if self.published {
                "published"
            } else {
                "not published yet"
            }
        );
        match (&self.next_public_key, &self.rotation) {
            (Some(next), Some(rotation)) => {
                let grace = match rotation.deadline() {
                    Some(deadline) => {
                        format!("grace ends in {}", human_secs(deadline.saturating_sub(now)))
                    }
                    None => format!(
                        "grace of {} starts once the announcement is published",
                        human_secs(rotation.grace_secs)
                    ),
                };
                out.push_str(&format!(
                    "next key:    {next}\nrotating:    epoch {}, {}/{} peers moved, {grace}\n",
                    rotation.epoch, rotation.peers_moved, rotation.peers_total
                ));
                if !rotation.pending_peers.is_empty() {
                    out.push_str(&format!(
                        "waiting for: {}\n",
                        rotation.pending_peers.join(", ")
                    ));
                }
            }
            _ => out.push_str("rotating:    no\n"),
        }
        if let Some(at) = self.next_scheduled_rotation {
            out.push_str(&format!(
                "scheduled:   next rotation in {}\n",
                human_secs(at.saturating_sub(now))
            ));
        }
        if let Some(last) = &self.last_rotation {
            let reason = match last.reason {
                CompletionReason::AllPeersMoved => "all peers moved".to_string(),
                CompletionReason::GraceEnded => format!(
                    "grace ended; not moved: {}",
                    if last.unmoved_peers.is_empty() {
                        "none".to_string()
                    } else {
                        last.unmoved_peers.join(", ")
                    }
                ),
            };
            out.push_str(&format!(
                "last:        epoch {} completed {} ago ({reason})\n",
                last.epoch,
                human_secs(now.saturating_sub(last.completed_at))
            ));
        }
        if let Some(error) = &self.last_error {
            out.push_str(&format!("last error:  {error}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation() -> Rotation {
        Rotation {
            epoch: 3,
            next_public_key: "NEXT".into(),
            started_at: 1000,
            grace_secs: 60,
            announced_at: Some(1000),
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn progress(key: &str, moved: &[&str], pending: &[&str]) -> KeyRotationProgress {
        KeyRotationProgress {
            next_public_key: key.into(),
            moved: moved.iter().map(|s| s.to_string()).collect(),
            pending: pending.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn observe<'a>(
        peers: &'a BTreeSet<String>,
        progress: Option<&'a KeyRotationProgress>,
        now: u64,
    ) -> Observed<'a> {
        Observed {
            synced: true,
            peers,
            progress,
            now,
        }
    }

    #[test]
    fn completes_when_every_peer_moved() {
        let peers = names(&["n2", "n3"]);
        let partly = progress("NEXT", &["n2"], &["n3"]);
        assert_eq!(
            decide(&rotation(), observe(&peers, Some(&partly), 1010)),
            Decision::Wait
        );
        let all = progress("NEXT", &["n2", "n3"], &[]);
        assert_eq!(
            decide(&rotation(), observe(&peers, Some(&all), 1010)),
            Decision::Complete {
                reason: CompletionReason::AllPeersMoved,
                unmoved: vec![]
            }
        );
    }

    #[test]
    fn the_grace_period_ends_it_and_names_the_peers_left_behind() {
        let peers = names(&["n2", "n3"]);
        let partly = progress("NEXT", &["n2"], &["n3"]);
        assert_eq!(
            decide(&rotation(), observe(&peers, Some(&partly), 1060)),
            Decision::Complete {
                reason: CompletionReason::GraceEnded,
                unmoved: vec!["n3".into()]
            }
        );
    }

    #[test]
    fn the_grace_period_counts_from_the_first_publication_not_the_start() {
        let peers = names(&["n2"]);
        let mut rotation = rotation();
        // Publishing failed from the start (at 1000) until long past the grace period.
        rotation.announced_at = None;
        assert_eq!(rotation.deadline(), None);
        assert_eq!(
            decide(&rotation, observe(&peers, None, 1000 + 3600)),
            Decision::Wait,
            "an unpublished rotation completed"
        );
        // A node without peers has nobody to wait for, but nobody was told either.
        let none = BTreeSet::new();
        let empty = progress("NEXT", &[], &[]);
        assert_eq!(
            decide(&rotation, observe(&none, Some(&empty), 1000 + 3600)),
            Decision::Wait
        );
        // The first successful publish: peers get the whole grace period from now on.
        let published = 1000 + 3600;
        rotation.announced_at = Some(published);
        assert_eq!(
            decide(&rotation, observe(&peers, None, published)),
            Decision::Wait,
            "completed on the tick of the first publish"
        );
        assert_eq!(
            decide(&rotation, observe(&peers, None, published + 59)),
            Decision::Wait
        );
        assert!(matches!(
            decide(&rotation, observe(&peers, None, published + 60)),
            Decision::Complete {
                reason: CompletionReason::GraceEnded,
                ..
            }
        ));
    }

    #[test]
    fn the_table_tells_when_the_grace_period_ends_or_that_it_has_not_started() {
        let peers = names(&["n2"]);
        let mut rotation = rotation();
        rotation.announced_at = Some(1010);
        let status = |rotation: &Rotation| KeyStatus {
            public_key: "OLD".into(),
            next_public_key: Some("NEXT".into()),
            key_epoch: 3,
            current_since: 0,
            next_scheduled_rotation: None,
            rotation: Some(RotationView::new(rotation, observe(&peers, None, 1020))),
            last_rotation: None,
            published: true,
            last_error: None,
        };
        let table = status(&rotation).to_table(1020);
        assert!(table.contains("grace ends in 50s"), "{table}");
        rotation.grace_secs = 3600 + 30 * 60 + 10;
        let table = status(&rotation).to_table(1020);
        assert!(table.contains("grace ends in 1h 30m"), "{table}");
        rotation.grace_secs = 60;
        rotation.announced_at = None;
        let table = status(&rotation).to_table(1020);
        assert!(
            table.contains("grace of 1m starts once the announcement is published"),
            "{table}"
        );
    }

    #[test]
    fn the_table_and_json_say_whether_the_record_is_published_and_why_not() {
        let mut status = KeyStatus {
            public_key: "OLD".into(),
            next_public_key: None,
            key_epoch: 3,
            current_since: 0,
            next_scheduled_rotation: None,
            rotation: None,
            last_rotation: None,
            published: false,
            last_error: Some("publishing the own record failed: timeout".into()),
        };
        let table = status.to_table(0);
        assert!(
            table.contains("record:      not published yet\n"),
            "{table}"
        );
        assert!(
            table.contains("last error:  publishing the own record failed: timeout\n"),
            "{table}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["published"], false);
        assert_eq!(
            json["lastError"],
            "publishing the own record failed: timeout"
        );
        status.published = true;
        assert!(status.to_table(0).contains("record:      published\n"));
        // The answer of an agent that does not report it (it published before answering).
        let mut json = serde_json::to_value(&status).unwrap();
        json.as_object_mut().unwrap().remove("published");
        let read: KeyStatus = serde_json::from_value(json).unwrap();
        assert!(read.published);
    }

    #[test]
    fn progress_about_another_key_or_another_mesh_proves_nothing() {
        let peers = names(&["n2", "n3"]);
        let stale_key = progress("OLD", &["n2", "n3"], &[]);
        assert_eq!(
            decide(&rotation(), observe(&peers, Some(&stale_key), 1001)),
            Decision::Wait
        );
        // The datapath has not applied the mesh yet (it knows no peers).
        let empty = progress("NEXT", &[], &[]);
        assert_eq!(
            decide(&rotation(), observe(&peers, Some(&empty), 1001)),
            Decision::Wait
        );
    }

    #[test]
    fn nothing_completes_early_before_the_agent_has_synced() {
        let none = BTreeSet::new();
        let empty = progress("NEXT", &[], &[]);
        let mut observed = observe(&none, Some(&empty), 1001);
        observed.synced = false;
        assert_eq!(decide(&rotation(), observed), Decision::Wait);
        observed.synced = true;
        // A node with no peers at all has nobody to wait for.
        assert!(matches!(
            decide(&rotation(), observed),
            Decision::Complete {
                reason: CompletionReason::AllPeersMoved,
                ..
            }
        ));
    }

    #[test]
    fn without_a_datapath_only_the_grace_period_completes() {
        let peers = names(&["n2"]);
        assert_eq!(
            decide(&rotation(), observe(&peers, None, 1059)),
            Decision::Wait
        );
        assert!(matches!(
            decide(&rotation(), observe(&peers, None, 1060)),
            Decision::Complete {
                reason: CompletionReason::GraceEnded,
                ..
            }
        ));
    }

    #[test]
    fn a_scheduled_rotation_is_due_once_the_key_is_as_old_as_the_interval() {
        assert_eq!(scheduled_at(1000, 60), 1060);
        assert_eq!(scheduled_at(u64::MAX, 60), u64::MAX);
    }

    #[test]
    fn the_view_counts_moved_peers() {
        let peers = names(&["n2", "n3", "n4"]);
        let partly = progress("NEXT", &["n2"], &["n3", "n4"]);
        let view = RotationView::new(&rotation(), observe(&peers, Some(&partly), 1010));
        assert_eq!((view.peers_moved, view.peers_total), (1, 3));
        assert_eq!(view.pending_peers, vec!["n3".to_string(), "n4".to_string()]);
    }
}

//! Drives a key rotation from the agent's loop: starts it on `weft key rotate`, checks it
//! every tick, completes it, and keeps the published record in step with the keys (retrying
//! a publish that failed; a rotation whose announcement is not published yet never completes).

use std::collections::BTreeSet;

use super::node_keys::{self, NodeKeys};
use super::{RotateRequest, SharedStatus, own_record};
use crate::agent::backend::Backend;
use crate::agent::config::AgentConfig;
use crate::datapath::Datapath;
use crate::datapath::stats::KeyRotationProgress;
use crate::registry::{OwnNode, Registry};
use crate::rotation::{Decision, KeyStatus, Observed};

/// What the driver works with: the agent's settings, registry, datapath and shared status.
pub(super) struct RotationEnv<'a> {
    pub config: &'a AgentConfig,
    pub registry: &'a Backend,
    pub datapath: Option<&'a Datapath>,
    pub shared: &'a SharedStatus,
}

/// What a decision rests on, read at one moment: the agent's last computed mesh (and whether
/// registry and routes had been read for it) and the datapath's rotation progress.
struct Seen {
    synced: bool,
    peers: BTreeSet<String>,
    progress: Option<KeyRotationProgress>,
}

impl RotationEnv<'_> {
    fn seen(&self) -> Seen {
        let (synced, peers) = self
            .shared
            .status
            .read()
            .ok()
            .and_then(|status| {
                let status = status.as_ref()?;
                let peers = status.peers.iter().map(|p| p.name.clone()).collect();
                Some((status.synced.registry && status.synced.routes, peers))
            })
            .unwrap_or_default();
        let progress = self
            .datapath
            .and_then(|d| d.status_receiver().borrow().key_rotation.clone());
        Seen {
            synced,
            peers,
            progress,
        }
    }
}

impl Seen {
    fn observed(&self) -> Observed<'_> {
        Observed {
            synced: self.synced,
            peers: &self.peers,
            progress: self.progress.as_ref(),
            now: node_keys::unix_now(),
        }
    }
}

pub(super) struct RotationDriver {
    keys: NodeKeys,
    /// Whether the datapath and the registry hold the keys as they are now (if not, applying
    /// them is retried every tick, and no rotation completes).
    published: bool,
    /// After a scheduled rotation failed to start, the next try waits until then (Unix s).
    scheduled_retry_at: u64,
}

/// How long a scheduled rotation that could not start waits before trying again.
const SCHEDULED_RETRY_SECS: u64 = 60;

impl RotationDriver {
    /// `published`: whether the own record as the keys are now is in the registry.
    pub fn new(mut keys: NodeKeys, published: bool) -> Self {
        if published {
            keys.mark_announced(node_keys::unix_now());
        }
        Self {
            keys,
            published,
            scheduled_retry_at: 0,
        }
    }

    /// Announces a rotation: the next key on disk, then in the datapath, then published.
    async fn begin(
        &mut self,
        grace: std::time::Duration,
        env: &RotationEnv<'_>,
        own: &mut OwnNode,
    ) -> Result<(), String> {
        let rotation = self.keys.begin(grace)?;
        tracing::info!(epoch = rotation.epoch, next_public_key = %rotation.next_public_key, grace_secs = rotation.grace_secs, "key rotation announced");
        self.apply(env, own).await
    }

    /// `weft key rotate`. Returns whether the own record changed.
    pub async fn start(
        &mut self,
        request: RotateRequest,
        env: &RotationEnv<'_>,
        own: &mut OwnNode,
    ) -> bool {
        let result = self.begin(request.grace, env, own).await;
        self.publish_status(env);
        let changed = result.is_ok();
        let _ = request.reply.send(result.map(|()| self.status(env)));
        changed
    }

    /// Once a second: retry an unpublished record, complete a rotation that is due, start a
    /// scheduled one. Returns whether the own record changed.
    pub async fn tick(&mut self, env: &RotationEnv<'_>, own: &mut OwnNode) -> bool {
        if !self.published {
            if let Err(error) = self.apply(env, own).await {
                self.keys.failed(error);
            }
            self.publish_status(env);
            return true;
        }
        let now = node_keys::unix_now();
        let scheduled = self.keys.rotation().is_none()
            && self.keys.next_scheduled().is_some_and(|at| now >= at)
            && now >= self.scheduled_retry_at;
        if scheduled {
            tracing::info!("the node key reached --key-rotation-interval: rotating");
            let result = self.begin(node_keys::DEFAULT_GRACE, env, own).await;
            if result.is_err() {
                self.scheduled_retry_at = now.saturating_add(SCHEDULED_RETRY_SECS);
            }
            self.publish_status(env);
            return result.is_ok();
        }
        let mut changed = false;
        if self.complete_if_due(env) {
            if let Err(error) = self.apply(env, own).await {
                self.keys.failed(error);
            }
            changed = true;
        }
        self.publish_status(env);
        changed
    }

    /// Hands the keys to the datapath (waiting until they are in force), then publishes the
    /// record that announces them: a peer that learns a key finds it accepted already.
    async fn apply(&mut self, env: &RotationEnv<'_>, own: &mut OwnNode) -> Result<(), String> {
        self.published = false;
        if let Some(datapath) = env.datapath {
            datapath
                .set_keys(self.keys.current(), self.keys.next())
                .await
                .map_err(|e| format!("the datapath did not take the keys: {e}"))?;
        }
        own.record = own_record(
            env.config,
            self.keys.public_key(),
            self.keys.next_public_key(),
            self.keys.epoch(),
        )
        .map_err(|e| format!("the own record is invalid: {e}"))?;
        self.published = publish(env.registry, own).await;
        if self.published {
            // The grace period of an announced rotation counts from here.
            self.keys.mark_announced(node_keys::unix_now());
        }
        Ok(())
    }

    /// Completes the pending rotation on disk if every peer moved or the grace period ended.
    fn complete_if_due(&mut self, env: &RotationEnv<'_>) -> bool {
        let Some(rotation) = self.keys.rotation().cloned() else {
            return false;
        };
        let decision = crate::rotation::decide(&rotation, env.seen().observed());
        let Decision::Complete { reason, unmoved } = decision else {
            return false;
        };
        tracing::info!(epoch = rotation.epoch, ?reason, unmoved = ?unmoved, "key rotation completing");
        self.keys.complete(reason, unmoved).is_ok()
    }

    fn status(&self, env: &RotationEnv<'_>) -> KeyStatus {
        self.keys.status(env.seen().observed())
    }

    /// Refreshes what `weft key status` and the metrics show.
    pub fn publish_status(&self, env: &RotationEnv<'_>) {
        let status = self.status(env);
        if let Ok(mut slot) = env.shared.keys.write() {
            *slot = Some(status);
        }
    }
}

async fn publish(registry: &Backend, own: &OwnNode) -> bool {
    match registry.publish(own).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "publishing the own record failed; retrying every second");
            false
        }
    }
}

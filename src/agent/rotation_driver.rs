//! Drives a key rotation from the agent's loop: starts it on `weft key rotate`, checks it
//! every tick, completes it, and keeps the own record in step with the keys. Records go to the
//! registry through the publisher task (the loop never waits on the registry); the grace
//! period of a rotation starts when the publisher reports its announcement taken, and a
//! rotation whose announcement was never taken never completes.

use std::collections::BTreeSet;

use super::node_keys::{self, NodeKeys};
use super::publisher::Publisher;
use super::{RotateRequest, SharedStatus, own_record};
use crate::agent::config::AgentConfig;
use crate::datapath::Datapath;
use crate::datapath::stats::KeyRotationProgress;
use crate::registry::OwnNode;
use crate::rotation::{Decision, KeyStatus, Observed};

/// What the driver works with: the agent's settings, the publisher, datapath and shared status.
pub(super) struct RotationEnv<'a> {
    pub config: &'a AgentConfig,
    pub publisher: &'a Publisher,
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
    /// Whether the datapath holds the keys as they are now and the own record was built from
    /// them (if not, applying them is retried every tick, and no rotation completes).
    applied: bool,
    /// The publisher's generation of the record announcing the pending rotation, until the
    /// registry took it (then the grace period starts).
    announcement: Option<u64>,
    /// Why the registry has not taken the latest record (cleared once it has).
    publish_error: Option<String>,
    /// After a scheduled rotation failed to start, the next try waits until then (Unix s).
    scheduled_retry_at: u64,
}

/// How long a scheduled rotation that could not start waits before trying again.
const SCHEDULED_RETRY_SECS: u64 = 60;

impl RotationDriver {
    /// `publisher` was started with the own record as the keys are now.
    pub fn new(keys: NodeKeys, publisher: &Publisher) -> Self {
        let announcement = unannounced(&keys, publisher.generation());
        let mut driver = Self {
            keys,
            applied: true,
            announcement,
            publish_error: None,
            scheduled_retry_at: 0,
        };
        driver.follow_publisher(publisher);
        driver
    }

    /// Announces a rotation: the next key on disk, then in the datapath, then to the publisher.
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
        let status = self.publish_status(env);
        let changed = result.is_ok();
        let _ = request.reply.send(result.map(|()| status));
        changed
    }

    /// Once a second: follow the publisher, retry keys the datapath did not take, complete a
    /// rotation that is due, start a scheduled one. Returns whether the own record changed.
    pub async fn tick(&mut self, env: &RotationEnv<'_>, own: &mut OwnNode) -> bool {
        self.follow_publisher(env.publisher);
        if !self.applied {
            let result = self.apply(env, own).await;
            if let Err(error) = &result {
                self.keys.failed(error.clone());
            }
            self.publish_status(env);
            return result.is_ok();
        }
        let now = node_keys::unix_now();
        let scheduled = self.keys.rotation().is_none()
            && env.publisher.is_published()
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

    /// Hands the keys to the datapath (waiting until they are in force), then asks for the
    /// record that announces them to be published: a peer that learns a key finds it
    /// accepted already.
    async fn apply(&mut self, env: &RotationEnv<'_>, own: &mut OwnNode) -> Result<(), String> {
        self.applied = false;
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
        let generation = env.publisher.publish(own.clone());
        self.announcement = unannounced(&self.keys, generation);
        self.applied = true;
        Ok(())
    }

    /// Takes in what the publisher reports: the announcement taken (the grace period starts
    /// now), or why the latest record is not taken.
    fn follow_publisher(&mut self, publisher: &Publisher) {
        let acked = publisher.acked();
        if self.announcement.is_some_and(|g| acked.generation >= g) {
            self.announcement = None;
            self.keys.mark_announced(node_keys::unix_now());
        }
        self.publish_error = match acked.error {
            Some((generation, error)) if generation >= publisher.generation() => {
                Some(format!("publishing the own record failed: {error}"))
            }
            _ if publisher.is_published() => None,
            _ => self.publish_error.take(),
        };
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
        let published = self.applied && env.publisher.is_published();
        let mut status = self.keys.status(env.seen().observed(), published);
        if let Some(error) = &self.publish_error {
            status.last_error = Some(error.clone());
        }
        status
    }

    /// Refreshes what `weft key status` and the metrics show, and returns it.
    pub fn publish_status(&self, env: &RotationEnv<'_>) -> KeyStatus {
        let status = self.status(env);
        if let Ok(mut slot) = env.shared.keys.write() {
            *slot = Some(status.clone());
        }
        status
    }
}

/// The publisher generation to wait for before the grace period of `keys`' pending rotation
/// starts: `generation` if its announcement has not been published yet.
fn unannounced(keys: &NodeKeys, generation: u64) -> Option<u64> {
    keys.rotation()
        .filter(|r| r.announced_at.is_none())
        .map(|_| generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::agent::config::RegistryConfig;
    use crate::agent::publisher::tests::{FakeRegistry, until};
    use weft_keys::KeyStore;

    fn config(dir: &std::path::Path) -> AgentConfig {
        AgentConfig {
            node_name: "n1".into(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            blocks: vec!["10.244.1.0/24".parse().unwrap()],
            endpoint: None,
            listen_port: 51820,
            registry: RegistryConfig::File {
                dir: dir.join("registry"),
            },
            health_address: None,
            key_dir: dir.join("keys"),
            run_dir: dir.join("run"),
            route_protocols: [12].into_iter().collect(),
            debounce: Duration::from_millis(200),
            key_rotation_interval: None,
            netlink_receive_buffer: 1 << 20,
            pod_cidrs: vec![],
            datapath: None,
        }
    }

    fn own_node(config: &AgentConfig, keys: &NodeKeys) -> OwnNode {
        OwnNode {
            name: config.node_name.clone(),
            addresses: config.addresses.clone(),
            record: own_record(
                config,
                keys.public_key(),
                keys.next_public_key(),
                keys.epoch(),
            )
            .unwrap(),
        }
    }

    fn env<'a>(
        config: &'a AgentConfig,
        publisher: &'a Publisher,
        shared: &'a SharedStatus,
    ) -> RotationEnv<'a> {
        RotationEnv {
            config,
            publisher,
            datapath: None,
            shared,
        }
    }

    fn key_status(shared: &SharedStatus) -> KeyStatus {
        shared.keys.read().unwrap().clone().unwrap()
    }

    #[tokio::test]
    async fn a_rotation_published_only_after_its_grace_gets_the_whole_grace_from_then() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = KeyStore::new(&config.key_dir);
        store.generate(false).unwrap();
        // Begun an hour ago with a 60 s grace; the registry has been away ever since.
        store
            .begin_rotation(node_keys::unix_now() - 3600, 60)
            .unwrap();
        let (keys, _) = NodeKeys::load(store.clone(), None).unwrap();
        let mut own = own_node(&config, &keys);
        let registry = FakeRegistry::default();
        registry.failing.store(true, Ordering::SeqCst);
        let mut publisher = Publisher::spawn(registry.clone(), own.clone(), false);
        let shared = SharedStatus::default();
        let mut driver = RotationDriver::new(keys, &publisher);
        until(&mut publisher, |a| a.error.is_some()).await;

        assert!(
            !driver
                .tick(&env(&config, &publisher, &shared), &mut own)
                .await
        );
        assert!(driver.keys.rotation().is_some(), "completed unpublished");
        let status = key_status(&shared);
        assert!(!status.published);
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("the API server is away"), "{error}");
        assert_eq!(status.rotation.unwrap().announced_at, None);

        // The registry is back: the publisher's retry gets the announcement out.
        registry.failing.store(false, Ordering::SeqCst);
        until(&mut publisher, |a| a.generation >= 1).await;
        let published_at = node_keys::unix_now();
        assert!(
            !driver
                .tick(&env(&config, &publisher, &shared), &mut own)
                .await
        );
        let rotation = driver.keys.rotation();
        assert!(
            rotation.is_some(),
            "completed on the tick the announcement was first published"
        );
        let announced = rotation.and_then(|r| r.announced_at).unwrap();
        assert!(announced >= published_at, "{announced} < {published_at}");
        let status = key_status(&shared);
        assert!(status.published, "{status:?}");
        assert_eq!(status.last_error, None);
        // Kept on disk: a restart does not start the grace period over.
        let text = std::fs::read_to_string(store.rotation_state_path()).unwrap();
        assert!(
            text.contains(&format!("\"announcedAt\":{announced}")),
            "{text}"
        );
        assert_eq!(registry.taken().len(), 1);
        assert!(registry.taken()[0].record.next_public_key.is_some());
    }

    #[tokio::test]
    async fn starting_a_rotation_never_waits_for_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (keys, _) = NodeKeys::load(KeyStore::new(&config.key_dir), None).unwrap();
        let mut own = own_node(&config, &keys);
        let registry = FakeRegistry::default();
        let mut publisher = Publisher::spawn(registry.clone(), own.clone(), true);
        let shared = SharedStatus::default();
        let mut driver = RotationDriver::new(keys, &publisher);

        // Every publish now hangs until released: the request is answered all the same.
        registry.holding.store(true, Ordering::SeqCst);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = RotateRequest {
            grace: Duration::from_secs(60),
            reply,
        };
        let rig = env(&config, &publisher, &shared);
        let changed = tokio::time::timeout(
            Duration::from_secs(30),
            driver.start(request, &rig, &mut own),
        )
        .await
        .expect("starting a rotation waited for the registry");
        assert!(changed);
        let answered = answer.await.unwrap().unwrap();
        let next = answered.next_public_key.clone().unwrap();
        assert!(!answered.published, "{answered:?}");
        assert_eq!(answered.rotation.unwrap().announced_at, None);
        // The tick does not wait either.
        tokio::time::timeout(Duration::from_secs(30), driver.tick(&rig, &mut own))
            .await
            .expect("a tick waited for the registry");
        assert!(registry.taken().is_empty());

        registry.holding.store(false, Ordering::SeqCst);
        registry.release.notify_one();
        let generation = publisher.generation();
        until(&mut publisher, |a| a.generation == generation).await;
        driver
            .tick(&env(&config, &publisher, &shared), &mut own)
            .await;
        let status = key_status(&shared);
        assert!(status.published, "{status:?}");
        assert!(status.rotation.unwrap().announced_at.is_some());
        let taken = registry.taken();
        assert_eq!(
            taken
                .last()
                .unwrap()
                .record
                .next_public_key
                .map(|k| k.to_string()),
            Some(next)
        );
    }
}

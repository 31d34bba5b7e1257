//! Publishes the own record from a task of its own, so the agent's loop never waits on the
//! registry (a Kubernetes publish can take seconds while the API server is away). The loop
//! says which record it wants published; the task publishes the latest one, retrying with
//! exponential backoff and jitter while that fails (a newer record is tried at once), and
//! reports which one the registry took.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::{Backoff, spread};
use crate::registry::{OwnNode, Registry};

/// How long the first failed publish waits before the next try; each further failure
/// doubles it, up to `RETRY_MAX`, and each wait is spread per node (see [`spread`]).
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A record to publish, numbered: every request gets a higher generation, even for the same
/// record (a re-publish after the registry lost it).
#[derive(Clone)]
struct Desired {
    generation: u64,
    own: OwnNode,
}

/// What the registry took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Acked {
    /// The generation the registry last took (0: none yet).
    pub generation: u64,
    /// The last failure and the generation it was for; cleared when a publish succeeds.
    pub error: Option<(u64, String)>,
}

/// The handle the agent's loop holds; dropping it stops the task.
pub(crate) struct Publisher {
    desired: watch::Sender<Desired>,
    acked: watch::Receiver<Acked>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts the task with `own` as the first record (generation 1). `published`: the
    /// registry holds it already (nothing to do until the next record).
    pub fn spawn<R: Registry>(registry: R, own: OwnNode, published: bool) -> Self {
        let (desired, desired_rx) = watch::channel(Desired { generation: 1, own });
        let (acked_tx, acked) = watch::channel(Acked {
            generation: u64::from(published),
            error: None,
        });
        let task = tokio::spawn(run(registry, desired_rx, acked_tx));
        Self {
            desired,
            acked,
            task,
        }
    }

    /// Asks for `own` to be published and returns its generation. Never waits.
    pub fn publish(&self, own: OwnNode) -> u64 {
        let mut generation = 0;
        self.desired.send_modify(|desired| {
            desired.generation += 1;
            desired.own = own;
            generation = desired.generation;
        });
        generation
    }

    /// The generation of the latest record asked for.
    pub fn generation(&self) -> u64 {
        self.desired.borrow().generation
    }

    /// Follows what the registry takes.
    pub fn acked_receiver(&self) -> watch::Receiver<Acked> {
        self.acked.clone()
    }

    /// What the registry took so far.
    pub fn acked(&self) -> Acked {
        self.acked.borrow().clone()
    }

    /// Whether the registry took the latest record asked for.
    pub fn is_published(&self) -> bool {
        self.acked.borrow().generation >= self.generation()
    }

    /// Waits until the task reports a success or a failure.
    #[cfg(test)]
    pub async fn changed(&mut self) {
        let _ = self.acked.changed().await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<R: Registry>(
    registry: R,
    mut desired: watch::Receiver<Desired>,
    acked: watch::Sender<Acked>,
) {
    let mut backoff = Backoff::new(RETRY, RETRY_MAX);
    loop {
        let want = desired.borrow_and_update().clone();
        if acked.borrow().generation < want.generation {
            match registry.publish(&want.own).await {
                Ok(()) => {
                    backoff.reset();
                    acked.send_modify(|acked| {
                        acked.generation = want.generation;
                        acked.error = None;
                    });
                }
                Err(error) => {
                    let retry_in = spread(backoff.delay(), &want.own.name);
                    tracing::warn!(%error, generation = want.generation, ?retry_in, "publishing the own record failed");
                    acked.send_modify(|acked| {
                        acked.error = Some((want.generation, error.to_string()));
                    });
                    tokio::select! {
                        () = tokio::time::sleep(retry_in) => {}
                        changed = desired.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::registry::{RegistryError, RegistrySnapshot};

    /// A registry that fails while told to, or holds every publish until released, and
    /// remembers what it took.
    #[derive(Clone, Default)]
    pub(crate) struct FakeRegistry {
        pub failing: Arc<AtomicBool>,
        /// While set, a publish waits until `release` is notified.
        pub holding: Arc<AtomicBool>,
        pub release: Arc<tokio::sync::Notify>,
        pub taken: Arc<Mutex<Vec<OwnNode>>>,
    }

    impl FakeRegistry {
        pub fn taken(&self) -> Vec<OwnNode> {
            self.taken.lock().unwrap().clone()
        }
    }

    impl Registry for FakeRegistry {
        async fn publish(&self, own: &OwnNode) -> Result<(), RegistryError> {
            if self.holding.load(Ordering::SeqCst) {
                self.release.notified().await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(RegistryError::Kube("the API server is away".into()));
            }
            self.taken.lock().unwrap().push(own.clone());
            Ok(())
        }

        async fn watch(
            &self,
            _snapshots: watch::Sender<Option<RegistrySnapshot>>,
        ) -> Result<(), RegistryError> {
            std::future::pending().await
        }
    }

    pub(crate) fn own(epoch: u64) -> OwnNode {
        let record = crate::record::NodeRecord {
            public_key: weft_keys::PrivateKey::generate().public_key(),
            next_public_key: None,
            endpoint: None,
            blocks: vec!["10.244.1.0/24".parse().unwrap()],
            key_epoch: epoch,
        };
        OwnNode {
            name: "n1".into(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            record,
        }
    }

    /// Waits (bounded, no timing asserted) until `done` holds for what the registry took.
    pub(crate) async fn until(publisher: &mut Publisher, done: impl Fn(&Acked) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !done(&publisher.acked()) {
                publisher.changed().await;
            }
        })
        .await
        .expect("the publisher never got there");
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap_with_a_spread_per_node() {
        let within = |delay: Duration, base: Duration| delay >= base && delay < base * 5 / 4;
        let mut backoff = Backoff::new(RETRY, RETRY_MAX);
        let retry_delay: Vec<Duration> = (0..100).map(|_| spread(backoff.delay(), "n1")).collect();
        assert!(within(retry_delay[0], Duration::from_secs(1)));
        assert!(within(retry_delay[1], Duration::from_secs(2)));
        assert!(within(retry_delay[3], Duration::from_secs(8)));
        assert!(within(retry_delay[5], RETRY_MAX));
        assert!(within(retry_delay[99], RETRY_MAX));
        let spread: std::collections::BTreeSet<Duration> = (0..20)
            .map(|n| spread(Duration::from_secs(4), format!("node-{n}")))
            .collect();
        assert!(
            spread.len() > 10,
            "nodes retry at different moments: {spread:?}"
        );
    }

    #[tokio::test]
    async fn publishes_the_latest_record_and_retries_until_the_registry_takes_it() {
        let registry = FakeRegistry::default();
        registry.failing.store(true, Ordering::SeqCst);
        let mut publisher = Publisher::spawn(registry.clone(), own(0), false);
        until(&mut publisher, |a| a.error.is_some()).await;
        let acked = publisher.acked();
        assert_eq!(acked.generation, 0);
        let (generation, error) = acked.error.unwrap();
        assert_eq!(generation, 1);
        assert!(error.contains("the API server is away"), "{error}");
        assert!(!publisher.is_published());

        // A newer record replaces the one not taken yet; once the registry is back it takes
        // that one, and the failure is cleared.
        let newer = own(1);
        assert_eq!(publisher.publish(newer.clone()), 2);
        registry.failing.store(false, Ordering::SeqCst);
        until(&mut publisher, |a| a.generation == 2).await;
        assert!(publisher.is_published());
        assert_eq!(publisher.acked().error, None);
        assert_eq!(registry.taken().last(), Some(&newer));
    }

    #[tokio::test]
    async fn asking_for_a_publish_never_waits_for_the_registry() {
        let registry = FakeRegistry::default();
        let mut publisher = Publisher::spawn(registry.clone(), own(0), true);
        assert!(publisher.is_published());
        registry.holding.store(true, Ordering::SeqCst);
        // The registry holds this publish until released: asking returns all the same.
        let record = own(1);
        let generation = publisher.publish(record.clone());
        assert!(!publisher.is_published());
        assert!(registry.taken().is_empty());
        registry.holding.store(false, Ordering::SeqCst);
        registry.release.notify_one();
        until(&mut publisher, |a| a.generation == generation).await;
        assert_eq!(registry.taken(), vec![record]);
    }
}

//! The Kubernetes registry: node records live in the `weft.dev/node` annotation of each Node.

use crate::backoff::Backoff;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use tokio::sync::watch;

use super::follow::follow;
use super::node::{annotation_patch, published_record, snapshot, trim_node};
use crate::registry::{OwnNode, Registry, RegistryError, RegistrySnapshot};
use kube::runtime::reflector;

/// Conflicts in a row one publish reads the Node again for (the agent publishes again later).
const PUBLISH_ATTEMPTS: u32 = 6;

/// Backoff between API retries: 200 ms, doubling, at most 5 s.
pub(crate) fn api_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

/// A Kubernetes API client: from `kubeconfig` when given (out-of-cluster runs); otherwise,
/// in a cluster, the Pod's service account (in-cluster config, never a kubeconfig lying
/// around); outside a cluster without `kubeconfig`, `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, RegistryError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                // The IO error alone: kube's own text repeats the path, quoted twice.
                let reason = match e {
                    kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
                    other => other.to_string(),
                };
                RegistryError::Kube(format!(
                    "cannot read kubeconfig {}: {reason}",
                    path.display()
                ))
            })?;
            Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| RegistryError::Kube(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => default_config(std::env::var_os(SERVICE_HOST_ENV).is_some()).await?,
    };
    Client::try_from(config)
        .map_err(|e| RegistryError::Kube(format!("cannot build the API client: {e}")))
}

/// Set by the kubelet in every container: weft runs in a Pod.
const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The configuration without `--kubeconfig`: in a cluster the in-cluster one, and a failure
/// to load it is an error (not a reason to try some kubeconfig instead); outside a cluster
/// `$KUBECONFIG` or `~/.kube/config`.
async fn default_config(in_cluster: bool) -> Result<Config, RegistryError> {
    if in_cluster {
        let config = Config::incluster().map_err(|e| {
            RegistryError::Kube(format!(
                "in-cluster config ({SERVICE_HOST_ENV} is set; the service account's token and CA \
                 are read from /var/run/secrets/kubernetes.io/serviceaccount; pass --kubeconfig \
                 to use a kubeconfig instead): {e}"
            ))
        })?;
        tracing::info!(server = %config.cluster_url, "using the in-cluster service account");
        return Ok(config);
    }
    tracing::info!(
        "not running in a cluster ({SERVICE_HOST_ENV} is not set) and no --kubeconfig given: \
         using $KUBECONFIG or ~/.kube/config"
    );
    Config::infer().await.map_err(|e| {
        RegistryError::Kube(format!(
            "not in a cluster and no usable kubeconfig ($KUBECONFIG, ~/.kube/config; or pass \
             --kubeconfig): {e}"
        ))
    })
}

#[derive(Clone)]
pub struct KubeRegistry {
    nodes: Api<Node>,
}

impl KubeRegistry {
    pub fn new(client: Client) -> Self {
        Self {
            nodes: Api::all(client),
        }
    }

    /// Reads this node's Node object (once; the agent retries, see `agent::backend`).
    pub async fn own_node(&self, name: &str) -> Result<Node, kube::Error> {
        self.nodes.get(name).await
    }

    async fn publish_once(&self, own: &OwnNode) -> Result<bool, kube::Error> {
        let node = self.nodes.get(&own.name).await?;
        if published_record(&node)
            .and_then(|t| crate::record::NodeRecord::parse(t).ok())
            .as_ref()
            == Some(&own.record)
        {
            return Ok(false);
        }
        let patch = annotation_patch(&own.record, node.metadata.resource_version.as_deref());
        self.nodes
            .patch(&own.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(true)
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Registry for KubeRegistry {
    /// Sets the own Node's `weft.dev/node` annotation with a merge patch that names only that
    /// key and the resourceVersion it read: other annotations are never touched, and a Node
    /// changed in between (409 Conflict) is read again and retried here. Any other API error
    /// is returned at once: the agent's publisher retries it (every second, with the latest
    /// record).
    async fn publish(&self, own: &OwnNode) -> Result<(), RegistryError> {
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.publish_once(own).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(node = %own.name, "published the weft.dev/node annotation");
                    }
                    return Ok(());
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(node = %own.name, attempt, "the Node changed meanwhile (409); reading it again");
                }
                Err(error) => {
                    return Err(RegistryError::Kube(format!(
                        "cannot publish the weft.dev/node annotation of {}: {error}",
                        own.name
                    )));
                }
            }
        }
        Err(RegistryError::Kube(format!(
            "cannot publish the weft.dev/node annotation of {}: the Node kept changing ({PUBLISH_ATTEMPTS} conflicts in a row)",
            own.name
        )))
    }

    /// Watches every Node. While the API server is away the last snapshot stays in force.
    async fn watch(
        &self,
        snapshots: watch::Sender<Option<RegistrySnapshot>>,
    ) -> Result<(), RegistryError> {
        let (store, writer) = reflector::store::<Node>();
        let (changes_tx, mut changes) = watch::channel(0u64);
        let follower = tokio::spawn(follow(
            self.nodes.clone(),
            "Node",
            trim_node,
            writer,
            changes_tx,
        ));
        while changes.changed().await.is_ok() {
            let state = store.state();
            let snap = snapshot(state.iter().map(|n| n.as_ref()));
            if snapshots.send(Some(snap)).is_err() {
                break;
            }
        }
        follower.abort();
        Ok(())
    }
}

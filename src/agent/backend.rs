//! The registry backend the agent runs with, chosen by configuration: the file registry, or
//! Kubernetes Nodes (which also supply the node's addresses and Pod CIDRs by default).

use tokio::sync::watch;

use k8s_openapi::api::core::v1::Node;

use super::SharedStatus;
use super::config::{AgentConfig, RegistryConfig};
use crate::kube::node::{node_addresses, node_pod_cidrs};
use crate::kube::registry::{KubeRegistry, api_backoff, client};
use crate::registry::file::FileRegistry;
use crate::registry::{OwnNode, Registry, RegistryError, RegistrySnapshot};

#[derive(Clone)]
pub enum Backend {
    File(FileRegistry),
    Kube {
        registry: Box<KubeRegistry>,
        client: kube::Client,
    },
}

impl Backend {
    /// Connects the configured registry. For Kubernetes this waits until the own Node exists
    /// and carries what is not configured (its addresses, its `spec.podCIDRs`), retrying with
    /// backoff and saying why in the log and in readiness, then fills that in.
    pub async fn connect(
        config: &mut AgentConfig,
        shared: &SharedStatus,
    ) -> Result<Self, RegistryError> {
        match &config.registry {
            RegistryConfig::File { dir } => Ok(Self::File(FileRegistry::new(dir))),
            RegistryConfig::Kube { kubeconfig } => {
                let client = client(kubeconfig.as_deref()).await?;
                let registry = KubeRegistry::new(client.clone());
                let node = wait_for_own_node(&registry, config, shared).await?;
                if config.addresses.is_empty() {
                    config.addresses = node_addresses(&node);
                }
                if config.blocks.is_empty() {
                    config.blocks = node_pod_cidrs(&node).map_err(RegistryError::Kube)?;
                    super::config::check_blocks_in_pod_cidrs(&config.blocks, &config.pod_cidrs)
                        .map_err(|e| {
                            RegistryError::Kube(format!("Node {}: {e}", config.node_name))
                        })?;
                }
                tracing::info!(
                    node = %config.node_name,
                    addresses = ?config.addresses,
                    blocks = ?config.blocks,
                    "read the own Node"
                );
                Ok(Self::Kube {
                    registry: Box::new(registry),
                    client,
                })
            }
        }
    }

    /// Whether `snapshot` shows this node as we publish it. The file registry stores our
    /// addresses with the record; a Node's addresses are the kubelet's and cloud
    /// controller's (weft only writes the annotation), so there only the record counts.
    pub fn holds(&self, snapshot: &RegistrySnapshot, own: &OwnNode) -> bool {
        match self {
            Self::File(_) => snapshot.holds(own),
            Self::Kube { .. } => snapshot.holds_record(own),
        }
    }

    /// The API client, when running against Kubernetes.
    pub fn kube_client(&self) -> Option<kube::Client> {
        match self {
            Self::File(_) => None,
            Self::Kube { client, .. } => Some(client.clone()),
        }
    }
}

impl Registry for Backend {
    async fn publish(&self, own: &OwnNode) -> Result<(), RegistryError> {
        match self {
            Self::File(registry) => registry.publish(own).await,
            Self::Kube { registry, .. } => registry.publish(own).await,
        }
    }

    async fn watch(
        &self,
        snapshots: watch::Sender<Option<RegistrySnapshot>>,
    ) -> Result<(), RegistryError> {
        match self {
            Self::File(registry) => registry.watch(snapshots).await,
            Self::Kube { registry, .. } => registry.watch(snapshots).await,
        }
    }
}

/// What the own Node still lacks of what the agent takes from it, if anything.
fn missing(node: &Node, config: &AgentConfig) -> Result<Option<String>, RegistryError> {
    if config.addresses.is_empty() && node_addresses(node).is_empty() {
        // A cloud controller manager may add them after the kubelet registered the Node.
        return Ok(Some(
            "the own Node has no InternalIP or ExternalIP address yet (or pass --address)".into(),
        ));
    }
    if config.blocks.is_empty()
        && node_pod_cidrs(node)
            .map_err(RegistryError::Kube)?
            .is_empty()
    {
        // Node IPAM allocates them after the Node registered.
        return Ok(Some(
            "the own Node has no spec.podCIDRs yet (or pass --block)".into(),
        ));
    }
    Ok(None)
}

/// Reads the own Node until it exists and has what the agent needs from it: a record
/// without blocks, published now, would never be corrected. Meanwhile the agent is not ready
/// and says why (in the log when the reason changes, and in readiness).
async fn wait_for_own_node(
    registry: &KubeRegistry,
    config: &AgentConfig,
    shared: &SharedStatus,
) -> Result<Node, RegistryError> {
    let name = &config.node_name;
    let mut backoff = api_backoff();
    let mut said = String::new();
    loop {
        let reason = match registry.own_node(name).await {
            Ok(node) => match missing(&node, config)? {
                None => {
                    shared.set_waiting(None);
                    return Ok(node);
                }
                Some(reason) => reason,
            },
            Err(kube::Error::Api(status)) if status.code == 404 => {
                format!("the own Node {name} does not exist yet")
            }
            Err(error) => format!("cannot read the own Node {name}: {error}"),
        };
        let delay = backoff.delay();
        if reason != said {
            tracing::warn!(node = %name, retry_in = ?delay, "waiting: {reason}");
        } else {
            tracing::debug!(node = %name, retry_in = ?delay, "still waiting: {reason}");
        }
        shared.set_waiting(Some(&reason));
        said = reason;
        tokio::time::sleep(delay).await;
    }
}

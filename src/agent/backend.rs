//! The registry backend the agent runs with, chosen by configuration: the file registry, or
//! Kubernetes Nodes (which also supply the node's addresses and Pod CIDRs by default).

use tokio::sync::watch;

use super::config::{AgentConfig, RegistryConfig};
use crate::kube::node::{node_addresses, node_pod_cidrs};
use crate::kube::registry::{KubeRegistry, client};
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
    /// Connects the configured registry. For Kubernetes this reads the own Node (retrying
    /// until the API server answers) and fills in the addresses and blocks not configured.
    pub async fn connect(config: &mut AgentConfig) -> Result<Self, RegistryError> {
        match &config.registry {
            RegistryConfig::File { dir } => Ok(Self::File(FileRegistry::new(dir))),
            RegistryConfig::Kube { kubeconfig } => {
                let client = client(kubeconfig.as_deref()).await?;
                let registry = KubeRegistry::new(client.clone());
                let node = registry.own_node(&config.node_name).await;
                if config.addresses.is_empty() {
                    config.addresses = node_addresses(&node);
                    if config.addresses.is_empty() {
                        return Err(RegistryError::Kube(format!(
                            "Node {} has no InternalIP or ExternalIP address; pass --address",
                            config.node_name
                        )));
                    }
                }
                if config.blocks.is_empty() {
                    config.blocks = node_pod_cidrs(&node).map_err(RegistryError::Kube)?;
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

//! The IO shell of `weft bird-config`: list the Nodes, render the own node's BIRD config.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use super::node::{node_addresses, node_pod_cidrs};
use crate::bird::{BirdConfigError, BirdNode, BirdSettings, render};

#[derive(Debug, thiserror::Error)]
pub enum BirdSourceError {
    #[error("cannot list Nodes: {0}")]
    List(#[source] kube::Error),
    #[error("Node {0} has no IPv4 InternalIP/ExternalIP address for BGP")]
    NoAddress(String),
    #[error("Node {0}: {1}")]
    BadPodCidr(String, String),
    #[error("no Node named {0:?} in the cluster")]
    NoOwnNode(String),
    #[error(transparent)]
    Render(#[from] BirdConfigError),
}

/// The BIRD configuration of node `own` from the cluster's current Nodes.
pub async fn bird_config(
    client: kube::Client,
    own: &str,
    settings: &BirdSettings,
) -> Result<String, BirdSourceError> {
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(BirdSourceError::List)?;
    let mut bird_nodes = Vec::new();
    for node in &nodes.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(address) = node_addresses(node).into_iter().find(|a| a.is_ipv4()) else {
            return Err(BirdSourceError::NoAddress(name));
        };
        let blocks =
            node_pod_cidrs(node).map_err(|e| BirdSourceError::BadPodCidr(name.clone(), e))?;
        bird_nodes.push(BirdNode {
            name,
            address,
            blocks,
        });
    }
    let Some(index) = bird_nodes.iter().position(|n| n.name == own) else {
        return Err(BirdSourceError::NoOwnNode(own.to_string()));
    };
    let me = bird_nodes.remove(index);
    bird_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&me, &bird_nodes, settings)?)
}

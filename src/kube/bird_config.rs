//! The IO shell of `weft bird-config`: list the Nodes, render the own node's BIRD config; or
//! follow the Nodes and re-render on every change (the BIRD sidecar).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::runtime::reflector;
use tokio::sync::watch;

use super::follow::follow;
use super::node::{node_addresses, node_pod_cidrs, trim_node};
use crate::bird::{BirdConfigError, BirdNode, BirdSettings, render};

/// A burst of Node changes (a node joining sets addresses, then podCIDRs) settles this long
/// before the configuration is rendered again.
const SETTLE: Duration = Duration::from_millis(500);
/// How often a reload that failed is tried again.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

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
    #[error("the Node watch stopped")]
    WatchStopped,
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
    render_nodes(nodes.items.iter(), own, settings)
}

/// The BIRD configuration of node `own` from `nodes` (pure).
pub fn render_nodes<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    own: &str,
    settings: &BirdSettings,
) -> Result<String, BirdSourceError> {
    let mut bird_nodes = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        // Our own node must be right; another node that cannot be routed to yet (no IPv4
        // address, a bad podCIDR) is left out, so it does not hold up everyone else.
        let skip = |error: BirdSourceError| {
            if name == own {
                Err(error)
            } else {
                tracing::warn!(%error, "leaving the node out of the BIRD configuration");
                Ok(())
            }
        };
        let Some(address) = node_addresses(node).into_iter().find(|a| a.is_ipv4()) else {
            skip(BirdSourceError::NoAddress(name.clone()))?;
            continue;
        };
        let blocks = match node_pod_cidrs(node) {
            Ok(blocks) => blocks,
            Err(e) => {
                skip(BirdSourceError::BadPodCidr(name.clone(), e))?;
                continue;
            }
        };
        let address_v6 = node_addresses(node).into_iter().find_map(|a| match a {
            std::net::IpAddr::V6(v6) => Some(v6),
            std::net::IpAddr::V4(_) => None,
        });
        bird_nodes.push(BirdNode {
            name,
            address,
            address_v6,
            blocks,
        });
    }
    let Some(index) = bird_nodes.iter().position(|n| n.name == own) else {
        return Err(BirdSourceError::NoOwnNode(own.to_string()));
    };
    let me = bird_nodes.remove(index);
    // Other nodes sharing a BGP address (with us or each other) cannot be told apart: they
    // are left out too, like any node that cannot be routed to, instead of failing everyone.
    let mut holders: std::collections::BTreeMap<std::net::IpAddr, usize> = Default::default();
    for node in &bird_nodes {
        *holders.entry(node.address).or_default() += 1;
    }
    bird_nodes.retain(|node| {
        let shared = node.address == me.address || holders.get(&node.address) > Some(&1);
        if shared {
            tracing::warn!(node = %node.name, address = %node.address, "leaving the node out of the BIRD configuration: another node has its address");
        }
        !shared
    });
    bird_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&me, &bird_nodes, settings)?)
}

/// Follows the Nodes and keeps `output` (written atomically) at the configuration they give,
/// running `reload` (a shell command, e.g. `birdc configure`) after every change, and again
/// every few seconds until it succeeds, until `shutdown`. Other Nodes that cannot be routed to
/// yet are left out; if the configuration cannot be rendered at all (our own Node without an
/// address, an unknown reflector) that is logged and the last good one stays.
pub async fn watch_bird_config(
    client: kube::Client,
    own: &str,
    settings: &BirdSettings,
    output: &Path,
    reload: Option<&str>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BirdSourceError> {
    let (store, writer) = reflector::store::<Node>();
    let (changes_tx, mut changes) = watch::channel(0u64);
    let follower = tokio::spawn(follow(
        Api::<Node>::all(client),
        "Node",
        trim_node,
        writer,
        changes_tx,
    ));
    tokio::pin!(shutdown);
    let mut last = std::fs::read_to_string(output).ok();
    let mut reload_pending = false;
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            changed = changes.changed() => if changed.is_err() {
                tracing::error!("the Node watch stopped");
                break Err(BirdSourceError::WatchStopped);
            },
            () = tokio::time::sleep(RELOAD_RETRY), if reload_pending => {
                if let Some(command) = reload {
                    reload_pending = !run_reload(command).await;
                }
                continue;
            }
        }
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            () = tokio::time::sleep(SETTLE) => {}
        }
        changes.borrow_and_update();
        let state = store.state();
        let config = match render_nodes(state.iter().map(|n| n.as_ref()), own, settings) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, "cannot render the BIRD configuration; keeping the last one");
                continue;
            }
        };
        if last.as_deref() == Some(config.as_str()) {
            tracing::debug!("Node change without effect on the BIRD configuration");
            continue;
        }
        if let Err(source) =
            weft_keys::atomic::write_atomic(output, config.as_bytes(), settings.file_mode())
        {
            break Err(BirdSourceError::Write {
                path: output.display().to_string(),
                source,
            });
        }
        tracing::info!(path = %output.display(), nodes = state.len(), "BIRD configuration written");
        last = Some(config);
        if let Some(command) = reload {
            reload_pending = !run_reload(command).await;
        }
    };
    follower.abort();
    result
}

/// Runs the reload command; whether it succeeded.
async fn run_reload(command: &str) -> bool {
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
    {
        Ok(status) if status.success() => {
            tracing::info!(command, "BIRD reloaded");
            true
        }
        // BIRD may not be up yet (it reads the file when it starts) or may refuse the file.
        Ok(status) => {
            tracing::warn!(command, %status, "the reload command failed; retrying");
            false
        }
        Err(error) => {
            tracing::warn!(command, %error, "cannot run the reload command; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str, cidr: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}
        }))
        .unwrap()
    }

    #[test]
    fn nodes_sharing_an_address_are_left_out_without_failing_the_rest() {
        let nodes = [
            node("n1", "198.18.0.1", "10.244.1.0/24"),
            node("n2", "198.18.0.2", "10.244.2.0/24"),
            node("n3", "198.18.0.3", "10.244.3.0/24"),
            node("n4", "198.18.0.3", "10.244.4.0/24"),
            node("n5", "198.18.0.1", "10.244.5.0/24"),
        ];
        let settings = BirdSettings {
            asn: 64512,
            route_reflectors: Default::default(),
            password: None,
        };
        let conf = render_nodes(nodes.iter(), "n1", &settings).unwrap();
        assert!(conf.contains("neighbor 198.18.0.2 as 64512;"), "{conf}");
        assert!(!conf.contains("neighbor 198.18.0.3"), "{conf}");
        assert!(!conf.contains("neighbor 198.18.0.1"), "{conf}");
        assert!(!conf.contains("10.244.4.0/24") && !conf.contains("10.244.5.0/24"));
    }
}

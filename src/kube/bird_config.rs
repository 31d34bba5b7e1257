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
use super::node::{node_addresses, node_pod_cidrs};
use crate::bird::{BirdConfigError, BirdNode, BirdSettings, render};

/// A burst of Node changes (a node joining sets addresses, then podCIDRs) settles this long
/// before the configuration is rendered again.
const SETTLE: Duration = Duration::from_millis(500);

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
        let Some(address) = node_addresses(node).into_iter().find(|a| a.is_ipv4()) else {
            return Err(BirdSourceError::NoAddress(name));
        };
        let blocks =
            node_pod_cidrs(node).map_err(|e| BirdSourceError::BadPodCidr(name.clone(), e))?;
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
    bird_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&me, &bird_nodes, settings)?)
}

/// Follows the Nodes and keeps `output` (written atomically) at the configuration they give,
/// running `reload` (a shell command, e.g. `birdc configure`) after every change, until
/// `shutdown`. A Node set that cannot be rendered (say a new Node without an IPv4 address yet)
/// is logged and the last good configuration stays.
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
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            changed = changes.changed() => if changed.is_err() { break Ok(()) },
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
        if let Err(source) = weft_keys::atomic::write_atomic(output, config.as_bytes(), 0o644) {
            break Err(BirdSourceError::Write {
                path: output.display().to_string(),
                source,
            });
        }
        tracing::info!(path = %output.display(), nodes = state.len(), "BIRD configuration written");
        last = Some(config);
        if let Some(command) = reload {
            run_reload(command).await;
        }
    };
    follower.abort();
    result
}

async fn run_reload(command: &str) {
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
    {
        Ok(status) if status.success() => tracing::info!(command, "BIRD reloaded"),
        // BIRD may not be up yet: it reads the file when it starts.
        Ok(status) => tracing::warn!(command, %status, "the reload command failed"),
        Err(error) => tracing::warn!(command, %error, "cannot run the reload command"),
    }
}

/// Keeps what the configuration reads of a Node: name, addresses and Pod CIDRs.
fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
    if let Some(status) = node.status.as_mut() {
        let addresses = status.addresses.take();
        *status = Default::default();
        status.addresses = addresses;
    }
    if let Some(spec) = node.spec.as_mut() {
        let (pod_cidr, pod_cidrs) = (spec.pod_cidr.take(), spec.pod_cidrs.take());
        *spec = Default::default();
        spec.pod_cidr = pod_cidr;
        spec.pod_cidrs = pod_cidrs;
    }
}

//! The IO shell of `weft bird-config`: list the Nodes, render the own node's BIRD config; or
//! follow the Nodes and re-render on every change (the BIRD sidecar).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::runtime::reflector;
use tokio::sync::watch;

use super::follow::follow;
use super::node::{node_addresses, node_pod_cidrs, trim_node};
use crate::bird::{BirdConfigError, BirdNode, BirdSettings, render, session_addresses};

/// A burst of Node changes (a node joining sets addresses, then podCIDRs) settles this long
/// before the configuration is rendered again.
const SETTLE: Duration = Duration::from_millis(500);
/// How often a reload that failed is tried again.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BirdSourceError {
    #[error("cannot list Nodes: {0}")]
    List(#[source] kube::Error),
    #[error("Node {0} has no InternalIP/ExternalIP address for BGP")]
    NoAddress(String),
    #[error("Node {0}: {1}")]
    BadPodCidr(String, String),
    #[error("no Node named {0:?} in the cluster")]
    NoOwnNode(String),
    #[error("route reflector {name:?} is left out of the BIRD configuration: {reason}")]
    ReflectorLeftOut { name: String, reason: String },
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
    // Nodes left out, and why (a reflector left out is an error of its own).
    let mut left_out: BTreeMap<String, String> = BTreeMap::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        // Our own node must be right; another node that cannot be routed to yet (no address,
        // a bad podCIDR) is left out, so it does not hold up everyone else.
        let mut skip = |error: BirdSourceError| {
            if name == own {
                Err(error)
            } else {
                leave_out(&mut left_out, &name, error.to_string());
                Ok(())
            }
        };
        let addresses = node_addresses(node);
        let address_v4 = addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let address_v6 = addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        if address_v4.is_none() && address_v6.is_none() {
            skip(BirdSourceError::NoAddress(name.clone()))?;
            continue;
        }
        let blocks = match node_pod_cidrs(node) {
            Ok(blocks) => blocks,
            Err(e) => {
                skip(BirdSourceError::BadPodCidr(name.clone(), e))?;
                continue;
            }
        };
        bird_nodes.push(BirdNode {
            name,
            address_v4,
            address_v6,
            blocks,
        });
    }
    let Some(index) = bird_nodes.iter().position(|n| n.name == own) else {
        return Err(BirdSourceError::NoOwnNode(own.to_string()));
    };
    let me = bird_nodes.remove(index);
    // Other nodes that cannot be told apart from us or each other, or cannot reach us at all,
    // are left out too, like any node that cannot be routed to, instead of failing everyone.
    bird_nodes.retain(|node| {
        let reachable = session_addresses(&me, node).is_some();
        if !reachable {
            leave_out(
                &mut left_out,
                &node.name,
                "it shares no address family (IPv4 or IPv6) with this node".into(),
            );
        }
        reachable
    });
    leave_out_shared(&me, &mut bird_nodes, &mut left_out, "address", |n| {
        n.addresses().collect()
    });
    leave_out_shared(&me, &mut bird_nodes, &mut left_out, "router id", |n| {
        n.router_id().map(IpAddr::V4).into_iter().collect()
    });
    if let Some((name, reason)) = settings
        .route_reflectors
        .iter()
        .find_map(|r| Some((r, left_out.get(r)?)))
    {
        return Err(BirdSourceError::ReflectorLeftOut {
            name: name.clone(),
            reason: reason.clone(),
        });
    }
    bird_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&me, &bird_nodes, settings)?)
}

/// Records (and logs) that node `name` is left out of the configuration, and why.
fn leave_out(left_out: &mut BTreeMap<String, String>, name: &str, reason: String) {
    tracing::warn!(node = %name, %reason, "leaving the node out of the BIRD configuration");
    left_out.insert(name.to_string(), reason);
}

/// Leaves out the nodes holding any of `keys` (their addresses, their router id) that `me`
/// or another node holds too.
fn leave_out_shared(
    me: &BirdNode,
    nodes: &mut Vec<BirdNode>,
    left_out: &mut BTreeMap<String, String>,
    what: &str,
    keys: impl Fn(&BirdNode) -> Vec<IpAddr>,
) {
    let mine = keys(me);
    let mut holders: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for key in nodes.iter().flat_map(&keys) {
        *holders.entry(key).or_default() += 1;
    }
    nodes.retain(|node| {
        let shared = keys(node)
            .into_iter()
            .find(|key| mine.contains(key) || holders.get(key) > Some(&1));
        if let Some(shared) = shared {
            leave_out(
                left_out,
                &node.name,
                format!("another node has its {what} {shared}"),
            );
        }
        shared.is_none()
    });
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
        let conf = render_nodes(nodes.iter(), "n1", &settings()).unwrap();
        assert!(conf.contains("neighbor 198.18.0.2 as 64512;"), "{conf}");
        assert!(!conf.contains("neighbor 198.18.0.3"), "{conf}");
        assert!(!conf.contains("neighbor 198.18.0.1"), "{conf}");
        assert!(!conf.contains("10.244.4.0/24") && !conf.contains("10.244.5.0/24"));
    }

    fn settings() -> BirdSettings {
        BirdSettings {
            asn: 64512,
            route_reflectors: Default::default(),
            password: None,
        }
    }

    #[test]
    fn ipv6_only_nodes_are_rendered_with_ipv6_sessions() {
        let nodes = [
            node("n1", "2001:2::1", "fd00:10:244:1::/64"),
            node("n2", "2001:2::2", "fd00:10:244:2::/64"),
        ];
        let conf = render_nodes(nodes.iter(), "n1", &settings()).unwrap();
        assert!(conf.contains("local 2001:2::1 as 64512;"), "{conf}");
        assert!(conf.contains("neighbor 2001:2::2 as 64512;"), "{conf}");
    }

    #[test]
    fn nodes_sharing_a_router_id_or_no_address_family_with_us_are_left_out() {
        // n3 and n4 hash to the same derived router id (see bird_tests.rs); n5 has IPv4 only.
        let nodes = [
            node("n1", "2001:2::1", "fd00:10:244:1::/64"),
            node("n2", "2001:2::2", "fd00:10:244:2::/64"),
            node(
                "n3",
                "2001:2:0:b7f6:e4ca:a107:6f04:f5ac",
                "fd00:10:244:3::/64",
            ),
            node(
                "n4",
                "2001:2:0:b7c6:c2d6:4895:e155:7588",
                "fd00:10:244:4::/64",
            ),
            node("n5", "198.18.0.5", "10.244.5.0/24"),
        ];
        let conf = render_nodes(nodes.iter(), "n1", &settings()).unwrap();
        assert!(conf.contains("neighbor 2001:2::2 as 64512;"), "{conf}");
        for gone in [
            "fd00:10:244:3::",
            "fd00:10:244:4::",
            "10.244.5.0",
            "198.18.0.5",
        ] {
            assert!(!conf.contains(gone), "{gone} in {conf}");
        }
    }

    #[test]
    fn a_route_reflector_left_out_is_an_error_that_says_why() {
        let nodes = [
            node("n1", "2001:2::1", "fd00:10:244:1::/64"),
            node("n2", "198.18.0.2", "10.244.2.0/24"),
        ];
        let mut with_reflector = settings();
        with_reflector.route_reflectors = ["n1".to_string()].into();
        let error = render_nodes(nodes.iter(), "n2", &with_reflector).unwrap_err();
        assert_eq!(
            error.to_string(),
            "route reflector \"n1\" is left out of the BIRD configuration: it shares no \
             address family (IPv4 or IPv6) with this node"
        );
    }

    #[test]
    fn dual_stack_nodes_sharing_their_ipv6_address_are_left_out() {
        let dual = |name: &str, v4: &str, v6: &str, k: u8| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDRs": [format!("10.244.{k}.0/24"), format!("fd00:10:244:{k}::/64")]},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": v4},
                    {"type": "InternalIP", "address": v6}]}
            }))
            .unwrap()
        };
        let nodes = [
            dual("n1", "198.18.0.1", "2001:2::1", 1),
            dual("n2", "198.18.0.2", "2001:2::2", 2),
            dual("n3", "198.18.0.3", "2001:2::9", 3),
            dual("n4", "198.18.0.4", "2001:2::9", 4),
        ];
        let conf = render_nodes(nodes.iter(), "n1", &settings()).unwrap();
        assert!(conf.contains("neighbor 198.18.0.2 as 64512;"), "{conf}");
        assert!(
            !conf.contains("198.18.0.3") && !conf.contains("198.18.0.4"),
            "{conf}"
        );
    }
}

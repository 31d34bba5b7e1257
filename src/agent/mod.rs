//! `weft agent`: publishes this node's record, watches records and BGP routes, recomputes the
//! mesh on every change (debounced), logs the diff and serves the admin API.

pub mod admin;
mod backend;
pub mod config;
pub mod health;
pub(crate) mod node_keys;
mod publisher;
mod rotation_driver;
mod shared;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};

use crate::datapath::{Datapath, DatapathConfig, DatapathError, Guarded};
use crate::mesh::{Mesh, MeshInput, Peer, compute_mesh, diff_peers};
use crate::policy::PolicySet;
use crate::record::{NodeRecord, RecordError, within};
use crate::registry::{OwnNode, Registry, RegistryError, RegistrySnapshot};
use crate::rotation::KeyStatus;
use crate::route_source::{RouteSourceConfig, watch_routes};
use crate::routes::LearnedRoute;
use crate::status::{RejectionView, Status, Synced};
use admin::AdminError;
use backend::Backend;
use config::AgentConfig;
use node_keys::NodeKeys;
use publisher::Publisher;
use rotation_driver::{RotationDriver, RotationEnv};
pub(crate) use shared::SharedStatus;

/// How often a pending key rotation is checked for completion.
const ROTATION_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// How soon a failed datapath update is tried again.
const APPLY_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the kernel state (TUN, rules, routes) is checked and put back if something else
/// changed it: a deleted rule would let Pod traffic leave in clear until then.
const KERNEL_REPAIR: std::time::Duration = std::time::Duration::from_secs(5);

/// `weft key rotate`, on its way from the admin socket to the agent's loop.
pub(crate) struct RotateRequest {
    grace: std::time::Duration,
    reply: oneshot::Sender<Result<KeyStatus, String>>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("key store: {0}")]
    Key(#[from] weft_keys::KeyError),
    #[error("the configured blocks and endpoint do not form a valid node record: {0}")]
    Record(#[from] RecordError),
    #[error("cannot create run directory {path}: {source}")]
    RunDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
    #[error(
        "the {0} watch stopped (see the log for why); exiting so the supervisor restarts the agent"
    )]
    WatchStopped(&'static str),
    #[error("cannot listen for health and metrics on {address}: {source}")]
    Health {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Builds this node's record from its keys and settings, validated by the same strict parser
/// every other node applies to it.
pub fn own_record(
    config: &AgentConfig,
    public_key: weft_keys::PublicKey,
    next_public_key: Option<weft_keys::PublicKey>,
    key_epoch: u64,
) -> Result<NodeRecord, RecordError> {
    let record = NodeRecord {
        public_key,
        next_public_key,
        endpoint: config.endpoint,
        blocks: config.blocks.clone(),
        key_epoch,
    };
    NodeRecord::parse(&record.to_json())
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    create_run_dir(&config)?;
    let listener = admin::bind(&config.run_dir).await?;
    let socket = admin::socket_path(&config.run_dir);
    let health = match config.health_address {
        Some(address) => match health::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                let _ = std::fs::remove_file(&socket);
                return Err(error);
            }
        },
        None => None,
    };
    // Admin and health answer from the start ("starting" until the own record exists), so
    // probes and `weft status` work while the agent waits for the API server.
    let shared = Arc::new(SharedStatus::default());
    let admin_task = tokio::spawn(admin::serve(listener, shared.clone()));
    let health_task = health.map(|listener| tokio::spawn(health::serve(listener, shared.clone())));
    let result = serve_node(config, shared, shutdown).await;
    admin_task.abort();
    if let Some(task) = health_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    result
}

/// Where NetworkPolicy comes from.
enum PolicySource {
    /// `--policy-dir`.
    Dir(std::path::PathBuf),
    /// The Kubernetes API: the kube registry without `--policy-dir`.
    Api(kube::Client),
}

fn policy_source(config: &AgentConfig, registry: &Backend) -> Option<PolicySource> {
    let dir = config.datapath.as_ref().and_then(|d| d.policy_dir.clone());
    match (dir, registry.kube_client()) {
        (Some(dir), _) => Some(PolicySource::Dir(dir)),
        (None, Some(client)) => Some(PolicySource::Api(client)),
        (None, None) => None,
    }
}

async fn serve_node(
    mut config: AgentConfig,
    shared: Arc<SharedStatus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let registry = tokio::select! {
        () = &mut shutdown => return Ok(()),
        connected = Backend::connect(&mut config, &shared) => connected?,
    };
    let (keys, created) = NodeKeys::load(
        weft_keys::KeyStore::new(&config.key_dir),
        config.key_rotation_interval,
    )?;
    let public_key = keys.public_key();
    tracing::info!(%public_key, created, key_dir = %config.key_dir.display(), "node key ready");
    if let Some(rotation) = keys.rotation() {
        tracing::warn!(epoch = rotation.epoch, next_public_key = %rotation.next_public_key, "resuming an unfinished key rotation");
    }

    let mut own = OwnNode {
        name: config.node_name.clone(),
        addresses: config.addresses.clone(),
        record: own_record(&config, public_key, keys.next_public_key(), keys.epoch())?,
    };
    let policy_source = policy_source(&config, &registry);
    let datapath = start_datapath(&config, &keys, policy_source.is_some()).await?;
    // The file registry is local: a record it cannot take is a configuration error. After
    // that (and from the start with Kubernetes, whose API server may be away) records are
    // published by the publisher task, so the loop below never waits on the registry.
    let published = match &registry {
        Backend::File(_) => {
            registry.publish(&own).await?;
            true
        }
        Backend::Kube { .. } => false,
    };
    let publisher = Publisher::spawn(registry.clone(), own.clone(), published);
    let _ = shared.published.set(publisher.acked_receiver());
    let _ = shared.own_blocks.set(config.blocks.clone());

    let (nodes_tx, mut nodes) = watch::channel(None::<RegistrySnapshot>);
    let (routes_tx, mut routes) = watch::channel(None::<Vec<LearnedRoute>>);
    let registry_task = tokio::spawn({
        let registry = registry.clone();
        async move {
            if let Err(error) = registry.watch(nodes_tx).await {
                tracing::error!(%error, "registry watch stopped");
            }
        }
    });
    let route_source = RouteSourceConfig {
        protocols: config.route_protocols.clone(),
        receive_buffer: config.netlink_receive_buffer,
    };
    let routes_task = tokio::spawn(watch_routes(route_source, routes_tx));
    let (policy_tx, mut policies) = watch::channel(None::<Arc<PolicySet>>);
    let policy_task = policy_source.map(|source| match source {
        PolicySource::Dir(dir) => {
            let (rejected_tx, rejected) = watch::channel(Vec::new());
            let _ = shared.rejected_policy_files.set(rejected);
            tokio::spawn(crate::policy::source::watch_dir(
                dir,
                policy_tx,
                rejected_tx,
            ))
        }
        PolicySource::Api(client) => {
            tokio::spawn(crate::kube::policy::watch_policy(client, policy_tx))
        }
    });

    let empty = Mesh {
        peers: BTreeMap::new(),
        rejections: Vec::new(),
    };
    let initial = Status::new(
        &own,
        Synced {
            registry: false,
            routes: false,
        },
        &empty,
        &[],
        0,
    );
    if let Some(datapath) = &datapath {
        let _ = shared.datapath.set(datapath.status_receiver());
    }
    shared
        .policy_expected
        .store(policy_task.is_some(), Ordering::Relaxed);
    if let Ok(mut slot) = shared.status.write() {
        *slot = Some(initial);
    }
    let (rotate_tx, mut rotate_rx) = mpsc::channel::<RotateRequest>(4);
    let _ = shared.rotate.set(rotate_tx);
    let mut rotation_tick = tokio::time::interval(ROTATION_TICK);
    tracing::info!(node = %own.name, run_dir = %config.run_dir.display(), "agent started");

    let mut current: BTreeMap<String, Peer> = BTreeMap::new();
    let mut rejected: Vec<RejectionView> = Vec::new();
    let mut failure = None;
    // A datapath update that failed (half-applied routes) is retried until it succeeds, at a
    // fixed deadline (other arms firing in between do not push it back).
    let mut retry_apply_at: Option<tokio::time::Instant> = None;
    let mut repair_tick = tokio::time::interval(KERNEL_REPAIR);
    repair_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rotation = RotationDriver::new(keys, &publisher);
    let env = RotationEnv {
        config: &config,
        publisher: &publisher,
        datapath: datapath.as_ref(),
        shared: &shared,
    };
    rotation.publish_status(&env);
    loop {
        // Inputs changed: debounce; the own record changed: recompute at once.
        let debounce = tokio::select! {
            _ = &mut shutdown => break,
            // A watch that ended is a failure, not a stop: weft's rule and routes stay (fail
            // closed) and the agent exits non-zero.
            changed = nodes.changed() => if changed.is_err() {
                failure = Some(AgentError::WatchStopped("registry"));
                break;
            } else { true },
            changed = routes.changed() => if changed.is_err() {
                failure = Some(AgentError::WatchStopped("route"));
                break;
            } else { true },
            Some(request) = rotate_rx.recv() => {
                if !rotation.start(request, &env, &mut own).await {
                    continue;
                }
                false
            }
            _ = rotation_tick.tick() => {
                if !rotation.tick(&env, &mut own).await {
                    continue;
                }
                false
            }
            changed = policies.changed(), if policy_task.is_some() => {
                if changed.is_err() {
                    break;
                }
                let set = policies.borrow_and_update().clone();
                if let Ok(mut slot) = shared.policy.write() {
                    slot.clone_from(&set);
                }
                if let (Some(datapath), Some(set)) = (&datapath, set)
                    && let Err(error) = datapath.set_policy(set).await
                {
                    tracing::error!(%error, "applying the policy rule set failed");
                }
                continue;
            }
            _ = sleep_until(retry_apply_at), if retry_apply_at.is_some() => false,
            _ = repair_tick.tick(), if datapath.is_some() && retry_apply_at.is_none() => {
                if let Some(datapath) = &datapath {
                    let repaired = datapath.repair().await;
                    if let Ok(count) = repaired && count > 0 {
                        tracing::warn!(count, "put back kernel state changed behind weft's back");
                    }
                    retry_apply_at = note_apply(&shared, repaired.map(|_| ()));
                }
                continue;
            }
            _ = datapath_stopped(datapath.as_ref()) => {
                // Exit so the supervisor restarts us; the unreachable backstops keep Pod
                // traffic from leaving in clear meanwhile.
                tracing::error!("the datapath stopped; exiting");
                failure = Some(AgentError::Datapath(DatapathError::Stopped));
                break;
            }
        };
        // Debounce: let a burst of changes settle, then compute once from the latest inputs.
        if debounce {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(config.debounce) => {}
            }
        }
        let snapshot = nodes.borrow_and_update().clone().unwrap_or_default();
        let learned = routes.borrow_and_update().clone();
        let synced = Synced {
            registry: nodes.borrow().is_some(),
            routes: learned.is_some(),
        };
        let learned = learned.unwrap_or_default();
        let mut entries = snapshot.nodes.clone();
        // Our own record always takes part (overlap checks), even before the registry shows it.
        entries.retain(|node| node.name != own.name);
        entries.push(crate::mesh::NodeEntry {
            name: own.name.clone(),
            addresses: own.addresses.clone(),
            record: Ok(own.record.clone()),
        });
        let mesh = compute_mesh(&MeshInput {
            local_node: &own.name,
            nodes: &entries,
            routes: &learned,
            default_port: config.listen_port,
            pod_cidrs: &config.pod_cidrs,
        });
        log_changes(&current, &mesh, &mut rejected);
        current = mesh.peers.clone();
        if let Some(datapath) = &datapath {
            let applied = datapath.update(&mesh, &guarded(&config, &entries)).await;
            retry_apply_at = note_apply(&shared, applied);
        }
        let status = Status::new(&own, synced, &mesh, &snapshot.skipped, learned.len());
        if let Ok(mut slot) = shared.status.write() {
            *slot = Some(status);
        }
        // After our own record changed (a key rotation step) the snapshot predates the
        // publish; the registry's next change event checks it again. While the publisher is
        // still at it, there is nothing to add.
        if debounce
            && synced.registry
            && !registry.holds(&snapshot, &own)
            && publisher.is_published()
        {
            tracing::warn!(node = %own.name, "own record missing or changed in the registry; publishing it again");
            publisher.publish(own.clone());
        }
    }

    tracing::info!("agent stopping");
    drop(publisher);
    registry_task.abort();
    routes_task.abort();
    if let Some(task) = policy_task {
        task.abort();
    }
    // A clean stop removes weft's rules and routes (unless told to keep them); after a
    // failure (the datapath or a watch stopped) they stay, so the backstops keep failing closed until the agent is back.
    if let Some(datapath) = datapath
        && failure.is_none()
    {
        datapath.shutdown().await;
    }
    failure.map_or(Ok(()), Err)
}

/// Starts the datapath (unless running the control plane only) with the node's keys; with `policy_required` it delivers nothing decrypted
/// until the first rule set is in force.
async fn start_datapath(
    config: &AgentConfig,
    keys: &NodeKeys,
    policy_required: bool,
) -> Result<Option<Datapath>, DatapathError> {
    let Some(settings) = &config.datapath else {
        return Ok(None);
    };
    let datapath = Datapath::start(
        DatapathConfig {
            interface: settings.interface.clone(),
            listen_port: config.listen_port,
            fwmark: settings.fwmark,
            table: settings.route_table,
            rule_priority: settings.rule_priority,
            underlay_mtu: settings.underlay_mtu,
            underlay_address: config.addresses.first().copied(),
            ipv6_underlay: crate::datapath::underlay_may_be_ipv6(
                &config.addresses,
                config.endpoint,
            ),
            local_blocks: config.blocks.clone(),
            encryption: settings.encryption,
            keep_routing_on_exit: settings.keep_routing_on_exit,
            uapi_socket: settings.uapi_socket.clone(),
            conntrack_max: settings.conntrack_max,
            conntrack_pickup: settings.conntrack_pickup,
            policy_required,
        },
        &guarded(config, &[]),
        keys.current(),
        keys.next(),
    )
    .await?;
    Ok(Some(datapath))
}

/// Records how applying the mesh to the kernel (an update, or the periodic repair) went
/// (readiness, the failure counter, the log) and returns when to try again, if it failed.
fn note_apply(
    shared: &SharedStatus,
    applied: Result<(), DatapathError>,
) -> Option<tokio::time::Instant> {
    if let Err(error) = &applied {
        shared.apply_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, retry_in = ?APPLY_RETRY, "applying the mesh to the datapath failed");
    }
    if let Ok(mut slot) = shared.apply_error.write() {
        if applied.is_ok() && slot.is_some() {
            tracing::info!("the mesh is applied to the datapath again");
        }
        *slot = applied.as_ref().err().map(|e| e.to_string());
    }
    applied
        .is_err()
        .then(|| tokio::time::Instant::now() + APPLY_RETRY)
}

/// Sleeps until `deadline`; never returns without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn datapath_stopped(datapath: Option<&Datapath>) {
    match datapath {
        Some(datapath) => datapath.stopped().await,
        None => std::future::pending().await,
    }
}

/// The Pod prefixes the datapath must keep from leaving in clear.
fn guarded(config: &AgentConfig, entries: &[crate::mesh::NodeEntry]) -> Guarded {
    Guarded {
        pod_cidrs: config.pod_cidrs.clone(),
        own_blocks: config.blocks.clone(),
        remote_blocks: entries
            .iter()
            .filter(|e| e.name != config.node_name)
            .filter_map(|e| e.record.as_ref().ok())
            .flat_map(|r| r.blocks.iter().copied())
            .filter(|block| within(&config.pod_cidrs, block))
            .collect(),
    }
}

fn create_run_dir(config: &AgentConfig) -> Result<(), AgentError> {
    let dir = &config.run_dir;
    let error = |source| AgentError::RunDir {
        path: dir.display().to_string(),
        source,
    };
    weft_keys::make_private_dir(dir).map_err(error)?;
    Ok(())
}

/// Logs the peer diff and rejections that appeared or went away since the last computation.
fn log_changes(current: &BTreeMap<String, Peer>, mesh: &Mesh, rejected: &mut Vec<RejectionView>) {
    let diff = diff_peers(current, &mesh.peers);
    let ips = |peer: &Peer| {
        let list: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        list.join(",")
    };
    for peer in &diff.added {
        tracing::info!(peer = %peer.name, public_key = %peer.public_key, endpoint = ?peer.endpoint, allowed_ips = %ips(peer), "peer added");
    }
    for name in &diff.removed {
        tracing::info!(peer = %name, "peer removed");
    }
    for peer in &diff.changed {
        tracing::info!(peer = %peer.name, public_key = %peer.public_key, endpoint = ?peer.endpoint, allowed_ips = %ips(peer), "peer changed");
    }
    let now: Vec<RejectionView> = Status::rejection_views(&mesh.rejections);
    for view in now.iter().filter(|v| !rejected.contains(v)) {
        if view.reason == "own_node" {
            continue;
        }
        tracing::warn!(kind = %view.kind, prefix = ?view.prefix, next_hop = ?view.next_hop, node = ?view.node, reason = %view.reason, "{}", view.message);
    }
    for view in rejected.iter().filter(|v| !now.contains(v)) {
        tracing::info!(kind = %view.kind, prefix = ?view.prefix, node = ?view.node, reason = %view.reason, "rejection cleared");
    }
    *rejected = now;
}

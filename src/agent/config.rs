//! Agent settings: command-line flags over an optional TOML config file, validated into one
//! `AgentConfig` before anything starts.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::datapath::Encryption;
use crate::registry::is_valid_node_name;
use crate::route_source::{DEFAULT_RECEIVE_BUFFER_BYTES, parse_route_protocol};
use crate::routes::{PROTO_BGP, PROTO_BIRD};

pub const DEFAULT_RUN_DIR: &str = "/run/weft";
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Shortest automatic key rotation interval (short ones are for tests; see SECURITY.md).
const MIN_KEY_ROTATION_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_FWMARK: u32 = 0x5746;
pub const DEFAULT_ROUTE_TABLE: u32 = 51820;
pub const DEFAULT_RULE_PRIORITY: u32 = 5210;
pub const DEFAULT_CONNTRACK_MAX: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(65536) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
/// How long after the agent starts any outbound TCP packet opens a tracked flow (so
/// connections established before a restart keep working); see SECURITY.md.
pub const DEFAULT_CONNTRACK_PICKUP: Duration = Duration::from_secs(120);
/// Longest pickup window: the window trades policy strictness for continuity, and an hour
/// covers any restart.
const MAX_CONNTRACK_PICKUP: Duration = Duration::from_secs(3600);

/// `weft agent` flags. Every flag may also be set in the config file (same name, kebab-case);
/// a flag given on the command line wins.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// TOML config file with any of the settings below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name (in a cluster: the Node name, from the downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's underlay address: the next hop BGP routes to its Pods use (repeatable).
    #[arg(long = "address", value_name = "IP")]
    pub addresses: Vec<IpAddr>,
    /// A Pod CIDR block this node owns (repeatable).
    #[arg(long = "block", value_name = "CIDR")]
    pub blocks: Vec<IpNetwork>,
    /// The endpoint peers send WireGuard traffic to (default: first address and listen port).
    #[arg(long, value_name = "IP:PORT")]
    pub endpoint: Option<SocketAddr>,
    /// WireGuard UDP listen port [default: 51820].
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<u16>,
    /// Where node records live: `file` (a shared directory, --registry-dir) or `kube` (the
    /// `weft.dev/node` annotation of each Kubernetes Node) [default: file].
    #[arg(long, value_enum, value_name = "KIND")]
    pub registry: Option<RegistryKind>,
    /// Directory of the file registry (one JSON record per node).
    #[arg(long, value_name = "DIR")]
    pub registry_dir: Option<PathBuf>,
    /// kubeconfig for running outside the cluster [default: in a Pod (KUBERNETES_SERVICE_HOST
    /// set) the in-cluster service account; elsewhere $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the HTTP health and metrics endpoints (/healthz, /readyz, /metrics)
    /// [default: none].
    #[arg(long, value_name = "IP:PORT")]
    pub health_address: Option<SocketAddr>,
    /// Directory of this node's private key [default: /var/lib/weft/keys].
    #[arg(long, value_name = "DIR")]
    pub key_dir: Option<PathBuf>,
    /// Run directory holding the admin socket [default: /run/weft].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Kernel route protocol whose routes are learned, by name or number (repeatable)
    /// [default: bird, bgp].
    #[arg(long = "route-protocol", value_name = "PROTO", value_parser = parse_route_protocol)]
    pub route_protocols: Vec<u8>,
    /// How long to wait for more changes before recomputing the mesh [default: 200ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub debounce: Option<Duration>,
    /// Rotate the node key on its own once the current key is this old (e.g. 30d), as
    /// `weft key rotate` would [default: never].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub key_rotation_interval: Option<Duration>,
    /// TUN interface name [default: weft0].
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// What happens to BGP-routed Pod prefixes without a valid peer: `required` makes them
    /// unreachable (never in clear), `preferred` leaves them to the BGP route (migration only)
    /// [default: required].
    #[arg(long, value_enum, value_name = "MODE")]
    pub encryption: Option<Encryption>,
    /// MTU of the underlay network; the TUN gets this minus the WireGuard overhead (60 bytes
    /// over IPv4, 80 over IPv6) [default: the MTU of the interface holding --address].
    #[arg(long, value_name = "BYTES")]
    pub underlay_mtu: Option<u32>,
    /// Firewall mark on weft's own UDP packets, so they bypass weft's table [default: 0x5746].
    #[arg(long, value_name = "MARK", value_parser = parse_u32)]
    pub fwmark: Option<u32>,
    /// weft's routing table [default: 51820].
    #[arg(long, value_name = "ID")]
    pub route_table: Option<u32>,
    /// Priority of the `ip rule` that steers unmarked traffic into weft's table
    /// [default: 5210].
    #[arg(long, value_name = "PRIO")]
    pub rule_priority: Option<u32>,
    /// The cluster's Pod CIDR (repeatable). With encryption required, any address in it that
    /// no verified peer or local block covers is unreachable rather than sent in clear.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pub pod_cidrs: Vec<IpNetwork>,
    /// WireGuard userspace API socket, for `wg show`
    /// [default: /var/run/wireguard/<interface>.sock].
    #[arg(long, value_name = "PATH")]
    pub uapi_socket: Option<PathBuf>,
    /// Directory of Kubernetes YAML (Namespaces, Pods, NetworkPolicies) enforced on decrypted
    /// traffic, watched for changes (standalone nodes and the lab). With `--registry kube` and
    /// no --policy-dir, they come from the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Most live flows connection tracking holds, and most revoked ones besides
    /// [default: 65536].
    #[arg(long, value_name = "FLOWS")]
    pub conntrack_max: Option<std::num::NonZeroUsize>,
    /// For how long after the agent starts any TCP packet a local Pod sends opens a tracked
    /// flow, not only a SYN, so connections established before a restart keep working; `0s`
    /// for none (see SECURITY.md) [default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub conntrack_pickup: Option<Duration>,
    /// Run the control plane only: no TUN, no encryption (status and records still work).
    #[arg(long)]
    pub no_datapath: bool,
    /// On a clean stop, leave weft's ip rule and unreachable routes in place, so Pod traffic
    /// to other nodes is dropped, not sent in clear over BGP routes, until the agent is back
    /// (for DaemonSets, where every rollout stops the agent; see deploy/README.md to remove
    /// them on uninstall).
    #[arg(long)]
    pub keep_routing_on_exit: bool,
    /// Receive buffer of the route notification socket in bytes (tests use a tiny one to force
    /// overruns).
    #[arg(long, value_name = "BYTES", hide = true)]
    pub netlink_receive_buffer: Option<usize>,
}

/// Where node records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryKind {
    File,
    Kube,
}

/// The configured registry backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConfig {
    File { dir: PathBuf },
    Kube { kubeconfig: Option<PathBuf> },
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    node_name: Option<String>,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    #[serde(default)]
    blocks: Vec<IpNetwork>,
    endpoint: Option<SocketAddr>,
    listen_port: Option<u16>,
    registry: Option<RegistryKind>,
    registry_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    health_address: Option<SocketAddr>,
    key_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    #[serde(default)]
    route_protocols: Vec<String>,
    #[serde(default, with = "humantime_serde_opt")]
    debounce: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    key_rotation_interval: Option<Duration>,
    interface: Option<String>,
    encryption: Option<Encryption>,
    underlay_mtu: Option<u32>,
    fwmark: Option<u32>,
    route_table: Option<u32>,
    rule_priority: Option<u32>,
    #[serde(default)]
    no_datapath: bool,
    #[serde(default)]
    keep_routing_on_exit: bool,
    #[serde(default)]
    pod_cidrs: Vec<IpNetwork>,
    uapi_socket: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    conntrack_max: Option<std::num::NonZeroUsize>,
    #[serde(default, with = "humantime_serde_opt")]
    conntrack_pickup: Option<Duration>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Why the agent's settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Validated agent settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub node_name: String,
    pub addresses: Vec<IpAddr>,
    pub blocks: Vec<IpNetwork>,
    pub endpoint: Option<SocketAddr>,
    pub listen_port: u16,
    pub registry: RegistryConfig,
    pub health_address: Option<SocketAddr>,
    pub key_dir: PathBuf,
    pub run_dir: PathBuf,
    pub route_protocols: BTreeSet<u8>,
    pub debounce: Duration,
    /// Rotate the key on its own once it is this old.
    pub key_rotation_interval: Option<Duration>,
    pub netlink_receive_buffer: usize,
    /// The cluster's Pod CIDRs: the mesh takes nothing outside them, and the datapath guards
    /// everything inside them.
    pub pod_cidrs: Vec<IpNetwork>,
    /// `None` when running the control plane only.
    pub datapath: Option<DatapathSettings>,
}

/// Datapath settings (the datapath itself also needs the listen port and the blocks).
#[derive(Debug, Clone, PartialEq)]
pub struct DatapathSettings {
    pub interface: String,
    pub encryption: Encryption,
    pub underlay_mtu: Option<u32>,
    pub fwmark: u32,
    pub route_table: u32,
    pub rule_priority: u32,
    pub uapi_socket: PathBuf,
    pub policy_dir: Option<PathBuf>,
    pub conntrack_max: std::num::NonZeroUsize,
    /// How long after start any outbound TCP packet opens a tracked flow (zero: none).
    pub conntrack_pickup: Duration,
    pub keep_routing_on_exit: bool,
}

impl DatapathSettings {
    /// Refuses settings that would let Pod traffic leave in clear or disturb the host.
    fn check(&self, blocks: &[IpNetwork], pod_cidrs: &[IpNetwork]) -> Result<(), String> {
        if pod_cidrs.is_empty() {
            return Err(
                "the datapath needs the cluster's Pod CIDRs (--pod-cidr, every address \
                 family): weft routes and guards only addresses inside them, so no record can \
                 pull other traffic into the tunnel, and with --encryption required nothing \
                 inside them leaves in clear"
                    .into(),
            );
        }
        if self.fwmark == 0 {
            return Err(
                "--fwmark must not be 0: the ip rule could not tell weft's own \
                 packets from Pod traffic"
                    .into(),
            );
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return Err(format!(
                "--route-table {} is reserved (unspec, default, main, local); use a table of weft's own",
                self.route_table
            ));
        }
        check_blocks_in_pod_cidrs(blocks, pod_cidrs)
    }
}

/// Every block of this node must lie inside the Pod CIDRs (when they are configured): other
/// nodes reject blocks outside them.
pub fn check_blocks_in_pod_cidrs(
    blocks: &[IpNetwork],
    pod_cidrs: &[IpNetwork],
) -> Result<(), String> {
    match blocks
        .iter()
        .find(|b| !crate::record::in_pod_cidrs(pod_cidrs, b))
    {
        Some(block) => Err(format!(
            "block {block} is outside the Pod CIDRs ({}); other nodes would reject it",
            pod_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

fn parse_u32(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a number (decimal or 0x hex)"))
}

impl AgentConfig {
    /// Merges the flags over the config file (if any) and validates the result.
    pub fn load(args: &AgentArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &AgentArgs, file: ConfigFile) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let node_name = args
            .node_name
            .clone()
            .or(file.node_name)
            .ok_or_else(|| invalid("no node name: pass --node-name or set NODE_NAME".into()))?;
        if !is_valid_node_name(&node_name) {
            return Err(invalid(format!(
                "invalid node name {node_name:?}: use lowercase letters, digits, '-' and '.'"
            )));
        }
        let key_rotation_interval = args.key_rotation_interval.or(file.key_rotation_interval);
        if key_rotation_interval.is_some_and(|i| i < MIN_KEY_ROTATION_INTERVAL) {
            return Err(invalid(format!(
                "key-rotation-interval must be at least {}",
                humantime::format_duration(MIN_KEY_ROTATION_INTERVAL)
            )));
        }
        let endpoint = args.endpoint.or(file.endpoint);
        let mut addresses = pick(&args.addresses, file.addresses);
        if addresses.is_empty() {
            addresses.extend(endpoint.map(|e| e.ip()));
        }
        let registry_kind = args
            .registry
            .or(file.registry)
            .unwrap_or(RegistryKind::File);
        // With the kube registry, addresses (and blocks) default to the Node's own.
        if addresses.is_empty() && registry_kind == RegistryKind::File {
            return Err(invalid(
                "no node address: pass --address with the underlay address BGP routes use as next hop"
                    .into(),
            ));
        }
        let route_protocols = if args.route_protocols.is_empty() {
            file.route_protocols
                .iter()
                .map(|p| parse_route_protocol(p))
                .collect::<Result<BTreeSet<u8>, String>>()
                .map_err(invalid)?
        } else {
            args.route_protocols.iter().copied().collect()
        };
        let route_protocols = if route_protocols.is_empty() {
            [PROTO_BIRD, PROTO_BGP].into_iter().collect()
        } else {
            route_protocols
        };
        let listen_port = args
            .listen_port
            .or(file.listen_port)
            .unwrap_or(DEFAULT_LISTEN_PORT);
        if listen_port == 0 {
            return Err(invalid("--listen-port must not be 0".into()));
        }
        let registry_dir = args.registry_dir.clone().or(file.registry_dir);
        let kubeconfig = args.kubeconfig.clone().or(file.kubeconfig);
        let registry = match (registry_kind, registry_dir, kubeconfig) {
            (RegistryKind::File, Some(dir), None) => RegistryConfig::File { dir },
            (RegistryKind::File, None, _) => {
                return Err(invalid(
                    "no registry: pass --registry-dir (the shared directory of node records) or --registry kube"
                        .into(),
                ));
            }
            (RegistryKind::File, Some(_), Some(_)) => {
                return Err(invalid("--kubeconfig needs --registry kube".into()));
            }
            (RegistryKind::Kube, Some(_), _) => {
                return Err(invalid(
                    "--registry-dir is for --registry file, not kube".into(),
                ));
            }
            (RegistryKind::Kube, None, kubeconfig) => RegistryConfig::Kube { kubeconfig },
        };
        let underlay_mtu = args.underlay_mtu.or(file.underlay_mtu);
        if let Some(mtu) = underlay_mtu
            && !(1280..=65535).contains(&mtu)
        {
            return Err(invalid(format!(
                "--underlay-mtu {mtu} is outside 1280-65535"
            )));
        }
        let interface = args
            .interface
            .clone()
            .or(file.interface)
            .unwrap_or_else(|| "weft0".into());
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(format!(
                "invalid --interface {interface:?}: 1-15 letters, digits, '-' or '_'"
            )));
        }
        let uapi_socket = args
            .uapi_socket
            .clone()
            .or(file.uapi_socket)
            .unwrap_or_else(|| crate::datapath::uapi::default_socket_path(&interface));
        let policy_dir = args.policy_dir.clone().or(file.policy_dir);
        if policy_dir.is_some() && (args.no_datapath || file.no_datapath) {
            return Err(invalid(
                "--policy-dir needs the datapath: policy is enforced on the packets it decrypts \
                 (drop --no-datapath, or --policy-dir)"
                    .into(),
            ));
        }
        let conntrack_max = args
            .conntrack_max
            .or(file.conntrack_max)
            .unwrap_or(DEFAULT_CONNTRACK_MAX);
        let conntrack_pickup = args
            .conntrack_pickup
            .or(file.conntrack_pickup)
            .unwrap_or(DEFAULT_CONNTRACK_PICKUP);
        if conntrack_pickup > MAX_CONNTRACK_PICKUP {
            return Err(invalid(format!(
                "conntrack-pickup must be at most {}",
                humantime::format_duration(MAX_CONNTRACK_PICKUP)
            )));
        }
        let datapath = (!(args.no_datapath || file.no_datapath)).then(|| DatapathSettings {
            policy_dir,
            conntrack_max,
            conntrack_pickup,
            keep_routing_on_exit: args.keep_routing_on_exit || file.keep_routing_on_exit,
            uapi_socket,
            interface,
            encryption: args
                .encryption
                .or(file.encryption)
                .unwrap_or(Encryption::Required),
            underlay_mtu,
            fwmark: args.fwmark.or(file.fwmark).unwrap_or(DEFAULT_FWMARK),
            route_table: args
                .route_table
                .or(file.route_table)
                .unwrap_or(DEFAULT_ROUTE_TABLE),
            rule_priority: args
                .rule_priority
                .or(file.rule_priority)
                .unwrap_or(DEFAULT_RULE_PRIORITY),
        });
        let blocks = pick(&args.blocks, file.blocks);
        let pod_cidrs = pick(&args.pod_cidrs, file.pod_cidrs);
        if let Some(datapath) = &datapath {
            datapath.check(&blocks, &pod_cidrs).map_err(invalid)?;
        }
        Ok(Self {
            node_name,
            addresses,
            blocks,
            endpoint,
            listen_port,
            registry,
            health_address: args.health_address.or(file.health_address),
            key_dir: args
                .key_dir
                .clone()
                .or(file.key_dir)
                .unwrap_or_else(|| weft_keys::DEFAULT_KEY_DIR.into()),
            run_dir: args
                .run_dir
                .clone()
                .or(file.run_dir)
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
            route_protocols,
            debounce: args.debounce.or(file.debounce).unwrap_or(DEFAULT_DEBOUNCE),
            key_rotation_interval,
            pod_cidrs,
            netlink_receive_buffer: args
                .netlink_receive_buffer
                .unwrap_or(DEFAULT_RECEIVE_BUFFER_BYTES),
            datapath,
        })
    }
}

fn pick<T: Clone>(flag: &[T], file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag.to_vec() }
}

fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

//! The Kubernetes deployment in `deploy/`: every object is a well-formed Kubernetes object
//! without misspelled fields, the DaemonSet's command line and the ConfigMap's settings are
//! accepted by the agent, the ClusterRole grants exactly the API access the code makes, and
//! the DaemonSet and the admission policy are as narrow as the design says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HTTPGetAction, Namespace, PodSpec, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft::agent::config::{AgentConfig, RegistryConfig};

const NAMESPACE: &str = "weft-system";
const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "weft");
const CONFIG_KEY: &str = "agent.toml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The manifest files: every `*.yaml` in deploy/ but the kustomization.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .inspect(|path| {
            assert!(
                path.extension().is_none_or(|e| e != "yml"),
                "{}: name manifests *.yaml",
                path.display()
            );
        })
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .filter(|path| path.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        deploy_dir().display()
    );
    files
}

/// Every YAML document of the manifests, with the name of its file.
fn documents() -> Vec<(String, serde_yaml_ng::Value)> {
    let mut documents = Vec::new();
    for path in manifest_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if !value.is_null() {
                documents.push((file.clone(), value));
            }
        }
    }
    documents
}

/// Deserializes a document into its k8s-openapi type and checks that serializing it again
/// gives the document back. k8s-openapi ignores fields it does not know, so this is what
/// catches a misspelled or misplaced field (and a value of the wrong type).
fn try_typed<T: DeserializeOwned + Serialize>(
    file: &str,
    document: &serde_yaml_ng::Value,
) -> Result<T, String> {
    let object: T = serde_yaml_ng::from_value(document.clone())
        .map_err(|e| format!("{file}: not a valid {}: {e}", std::any::type_name::<T>()))?;
    let original = serde_json::to_value(document).unwrap();
    let round_trip = serde_json::to_value(&object).unwrap();
    let mut differences = Vec::new();
    differ(&original, &round_trip, String::new(), &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "{file}: fields the Kubernetes type does not have, or values of the wrong type:\n  {}",
            differences.join("\n  ")
        ))
    }
}

fn typed<T: DeserializeOwned + Serialize>(file: &str, document: &serde_yaml_ng::Value) -> T {
    try_typed(file, document).unwrap_or_else(|e| panic!("{e}"))
}

/// Where two JSON values differ, as paths.
fn differ(
    original: &serde_json::Value,
    round_trip: &serde_json::Value,
    path: String,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let here = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => differ(x, y, here, out),
                    (Some(x), None) => out.push(format!("{here}: {x} is unknown (dropped)")),
                    (None, Some(y)) => out.push(format!("{here}: {y} appeared")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differ(x, y, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

/// Every object of deploy/, by kind.
#[derive(Default)]
struct Manifests {
    kinds: BTreeSet<String>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for (file, document) in documents() {
        let kind = document["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: a document without kind"))
            .to_string();
        let file = file.as_str();
        let document = &document;
        match kind.as_str() {
            "Namespace" => m.namespaces.push(typed(file, document)),
            "ServiceAccount" => m.service_accounts.push(typed(file, document)),
            "ClusterRole" => m.cluster_roles.push(typed(file, document)),
            "ClusterRoleBinding" => m.cluster_role_bindings.push(typed(file, document)),
            "ConfigMap" => m.config_maps.push(typed(file, document)),
            "DaemonSet" => m.daemon_sets.push(typed(file, document)),
            "ValidatingAdmissionPolicy" => m.policies.push(typed(file, document)),
            "ValidatingAdmissionPolicyBinding" => m.policy_bindings.push(typed(file, document)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        m.kinds.insert(kind);
    }
    m
}

fn only<'a, T>(objects: &'a [T], what: &str) -> &'a T {
    assert_eq!(objects.len(), 1, "expected exactly one {what}");
    &objects[0]
}

impl Manifests {
    fn namespace(&self) -> &Namespace {
        only(&self.namespaces, "Namespace")
    }
    fn service_account(&self) -> &ServiceAccount {
        only(&self.service_accounts, "ServiceAccount")
    }
    fn cluster_role(&self) -> &ClusterRole {
        only(&self.cluster_roles, "ClusterRole")
    }
    fn cluster_role_binding(&self) -> &ClusterRoleBinding {
        only(&self.cluster_role_bindings, "ClusterRoleBinding")
    }
    fn config_map(&self) -> &ConfigMap {
        only(&self.config_maps, "ConfigMap")
    }
    fn daemon_set(&self) -> &DaemonSet {
        only(&self.daemon_sets, "DaemonSet")
    }
    fn policy(&self) -> &ValidatingAdmissionPolicy {
        only(&self.policies, "ValidatingAdmissionPolicy")
    }
    fn policy_binding(&self) -> &ValidatingAdmissionPolicyBinding {
        only(&self.policy_bindings, "ValidatingAdmissionPolicyBinding")
    }
    fn pod_spec(&self) -> &PodSpec {
        self.daemon_set().spec.template.spec.as_ref().unwrap()
    }
    fn agent(&self) -> &Container {
        let pod = self.pod_spec();
        assert_eq!(pod.containers.len(), 1, "the agent Pod has one container");
        assert_eq!(pod.containers[0].name, "agent");
        &pod.containers[0]
    }
    fn volume(&self, name: &str) -> &Volume {
        self.pod_spec()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }
    /// The host path mounted at `mount_path` in the agent container, if a hostPath is.
    fn host_path_at(&self, mount_path: &str) -> Option<String> {
        let mount = self
            .agent()
            .volume_mounts
            .as_ref()?
            .iter()
            .find(|m| m.mount_path == mount_path)?;
        Some(self.volume(&mount.name).host_path.as_ref()?.path.clone())
    }
    fn service_account_user(&self) -> String {
        let meta = &self.service_account().metadata;
        format!(
            "system:serviceaccount:{}:{}",
            meta.namespace.as_deref().unwrap(),
            meta.name.as_deref().unwrap()
        )
    }
}

/// The agent's settings as the DaemonSet starts it: its command line, the ConfigMap's
/// agent.toml, and a node name (NODE_NAME from the downward API in the cluster).
fn agent_config(m: &Manifests) -> AgentConfig {
    let container = m.agent();
    let argv: Vec<String> = container
        .command
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(container.args.clone().unwrap_or_default())
        .collect();
    assert_eq!(argv.first().map(String::as_str), Some("weft"), "{argv:?}");
    let cli = <weft::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("weft refuses the DaemonSet's arguments {argv:?}: {e}"));
    let weft::cli::Command::Agent(mut args) = cli.command else {
        panic!("the DaemonSet does not run `weft agent`: {argv:?}");
    };

    // --config names the ConfigMap's key where the ConfigMap is mounted.
    let config_path = args.config.clone().expect("the DaemonSet passes --config");
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| config_path.parent() == Some(Path::new(&m.mount_path)))
        .unwrap_or_else(|| panic!("{} is not in a mounted volume", config_path.display()));
    let config_map_name = m
        .volume(&mount.name)
        .config_map
        .as_ref()
        .expect("--config is read from the ConfigMap volume")
        .name
        .clone();
    assert_eq!(
        Some(&config_map_name),
        m.config_map().metadata.name.as_ref()
    );
    let key = config_path.file_name().unwrap().to_str().unwrap();
    assert_eq!(key, CONFIG_KEY);
    let toml = m
        .config_map()
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(key);
    std::fs::write(&file, toml).unwrap();
    args.config = Some(file);
    args.node_name = Some("node-1".into());
    AgentConfig::load(&args).unwrap_or_else(|e| panic!("the agent refuses its settings: {e}"))
}

fn http_get(probe: Option<&k8s_openapi::api::core::v1::Probe>, what: &str) -> HTTPGetAction {
    probe
        .and_then(|p| p.http_get.clone())
        .unwrap_or_else(|| panic!("no HTTP {what} probe"))
}

fn port_number(port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => panic!("probe port {name:?}: use the number"),
    }
}

/// CPU in millicores: "20m", "0.1", "1".
fn millicores(quantity: &Quantity) -> f64 {
    let text = quantity.0.as_str();
    match text.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap(),
        None => text.parse::<f64>().unwrap() * 1000.0,
    }
}

/// Memory in bytes: "32Mi", "64M", "1Gi", "1048576".
fn bytes(quantity: &Quantity) -> f64 {
    let text = quantity.0.as_str();
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().unwrap() * factor;
        }
    }
    text.parse().unwrap()
}

fn has_name_label(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(NAME_LABEL.0))
        .is_some_and(|value| value == NAME_LABEL.1)
}

#[test]
fn every_yaml_document_in_deploy_parses_into_its_k8s_openapi_type() {
    let m = manifests();
    let expected: BTreeSet<String> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(m.kinds, expected);
    // One object of each kind.
    m.namespace();
    m.service_account();
    m.cluster_role();
    m.cluster_role_binding();
    m.config_map();
    m.daemon_set();
    m.policy();
    m.policy_binding();
}

#[test]
fn the_round_trip_check_catches_a_misspelled_field() {
    let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  labes: {a: b}\n",
    )
    .unwrap();
    let Err(error) = try_typed::<ServiceAccount>("test", &document) else {
        panic!("a misspelled field went unnoticed");
    };
    assert!(error.contains(".metadata.labes"), "{error}");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let kustomization: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "{text}"
    );
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn the_objects_refer_to_each_other_by_the_right_names() {
    let m = manifests();
    assert_eq!(m.namespace().metadata.name.as_deref(), Some(NAMESPACE));
    let sa = &m.service_account().metadata;
    let (sa_name, sa_namespace) = (sa.name.as_deref(), sa.namespace.as_deref());
    assert_eq!(sa_namespace, Some(NAMESPACE));

    let binding = m.cluster_role_binding();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        m.cluster_role().metadata.name.as_deref()
    );
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(
        subjects.len(),
        1,
        "the ClusterRole is bound to the agent only"
    );
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(subjects[0].name.as_str()), sa_name);
    assert_eq!(subjects[0].namespace.as_deref(), sa_namespace);

    let daemon_set = m.daemon_set();
    assert_eq!(daemon_set.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        m.config_map().metadata.namespace.as_deref(),
        Some(NAMESPACE)
    );
    assert_eq!(m.pod_spec().service_account_name.as_deref(), sa_name);
    let spec = &daemon_set.spec;
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "the selector misses the Pods"
        );
    }

    // The admission policy is about this service account.
    let conditions = m.policy().spec.as_ref().unwrap().match_conditions.as_ref();
    let user = m.service_account_user();
    assert!(
        conditions
            .unwrap()
            .iter()
            .any(|c| c.expression.contains(&format!("'{user}'"))),
        "the policy's matchConditions do not name {user}"
    );

    let all_meta = [
        &m.namespace().metadata,
        &m.service_account().metadata,
        &m.cluster_role().metadata,
        &m.cluster_role_binding().metadata,
        &m.config_map().metadata,
        &daemon_set.metadata,
        &m.policy().metadata,
        &m.policy_binding().metadata,
    ];
    for meta in all_meta {
        assert!(has_name_label(meta), "{:?} lacks {NAME_LABEL:?}", meta.name);
    }
    assert!(has_name_label(spec.template.metadata.as_ref().unwrap()));
}

#[test]
fn the_daemonset_arguments_are_accepted_by_the_agent_parser() {
    let m = manifests();
    let config = agent_config(&m);
    assert!(
        matches!(config.registry, RegistryConfig::Kube { kubeconfig: None }),
        "in-cluster kube registry expected, got {:?}",
        config.registry
    );
    assert_eq!(
        config.key_rotation_interval,
        Some(std::time::Duration::from_secs(30 * 86_400)),
        "keys rotate every 30 days"
    );
    let datapath = config.datapath.as_ref().expect("the datapath is on");
    assert_eq!(datapath.encryption, weft::datapath::Encryption::Required);
    assert_eq!(datapath.interface, "weft0");
    assert_eq!(
        datapath.conntrack_pickup,
        std::time::Duration::from_secs(120),
        "established connections are picked up for 2 minutes after a restart"
    );
    assert_eq!(
        config.pod_cidrs,
        vec!["10.42.0.0/16".parse::<ipnetwork::IpNetwork>().unwrap()],
        "the k3s default cluster CIDR"
    );

    let health = config.health_address.expect("health-address is set");
    assert!(
        health.ip().is_unspecified(),
        "the kubelet probes the node's address: {health}"
    );
    let port = i32::from(health.port());
    assert_eq!(port, 9720);
    let container = m.agent();
    let liveness = http_get(container.liveness_probe.as_ref(), "liveness");
    let readiness = http_get(container.readiness_probe.as_ref(), "readiness");
    assert_eq!(port_number(&liveness.port), port);
    assert_eq!(port_number(&readiness.port), port);
    let ports = container.ports.as_ref().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(metrics.container_port, port);
    let wireguard = ports.iter().find(|p| p.protocol.as_deref() == Some("UDP"));
    if let Some(wireguard) = wireguard {
        assert_eq!(wireguard.container_port, i32::from(config.listen_port));
    }

    let env: BTreeMap<&str, _> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let node_name = env.get("NODE_NAME").expect("NODE_NAME is set");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME comes from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn the_agents_paths_are_host_mounts() {
    // The root filesystem is read-only: everything the agent writes is a hostPath mount,
    // at the same path as on the host, so `weft status` and `wg show` work on the node.
    let m = manifests();
    let config = agent_config(&m);
    let datapath = config.datapath.as_ref().unwrap();
    let socket_dir = datapath.uapi_socket.parent().unwrap().to_path_buf();
    for dir in [&config.key_dir, &config.run_dir, &socket_dir] {
        let dir = dir.to_str().unwrap();
        assert_eq!(
            m.host_path_at(dir).as_deref(),
            Some(dir),
            "{dir} is not mounted from the same host path"
        );
    }
    assert_eq!(
        config.key_dir,
        PathBuf::from("/var/lib/weft/keys"),
        "keys survive restarts in /var/lib/weft/keys"
    );
}

#[test]
fn the_clusterrole_grants_exactly_what_the_code_uses() {
    let m = manifests();
    let role = m.cluster_role();
    assert!(role.aggregation_rule.is_none());
    let rules = role.rules.as_ref().unwrap();
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        let groups = rule.api_groups.as_ref().expect("apiGroups");
        let resources = rule.resources.as_ref().expect("resources");
        for value in groups.iter().chain(resources).chain(&rule.verbs) {
            assert!(!value.contains('*'), "wildcard in {rule:?}");
        }
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = weft::kube::access::API_ACCESS
        .iter()
        .flat_map(|access| {
            access.verbs.iter().map(move |verb| {
                (
                    access.group.to_string(),
                    access.resource.to_string(),
                    verb.to_string(),
                )
            })
        })
        .collect();
    assert_eq!(granted, used);
    assert_eq!(
        rules.len(),
        weft::kube::access::API_ACCESS.len(),
        "one rule per API_ACCESS entry"
    );
}

#[test]
fn the_daemonset_is_least_privilege_and_edge_sized() {
    let m = manifests();
    let pod = m.pod_spec();
    let container = m.agent();

    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(
        capabilities.add.as_deref(),
        Some(&["NET_ADMIN".to_string()][..])
    );
    assert!(
        capabilities
            .drop
            .as_ref()
            .unwrap()
            .contains(&"ALL".to_string())
    );
    assert!(pod.host_pid.is_none_or(|v| !v));
    assert!(pod.host_ipc.is_none_or(|v| !v));

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the agent runs on every node, whatever its taints"
    );

    let liveness = http_get(container.liveness_probe.as_ref(), "liveness");
    let readiness = http_get(container.readiness_probe.as_ref(), "readiness");
    assert_eq!(liveness.path.as_deref(), Some("/healthz"));
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));

    let resources = container.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert!(
        millicores(&requests["cpu"]) <= 100.0,
        "{:?}",
        requests["cpu"]
    );
    assert!(
        bytes(&requests["memory"]) <= 64.0 * 1024.0 * 1024.0,
        "{:?}",
        requests["memory"]
    );
    assert!(
        bytes(&limits["memory"]) >= bytes(&requests["memory"]),
        "memory limit below the request"
    );

    assert_eq!(
        m.host_path_at("/var/lib/weft/keys").as_deref(),
        Some("/var/lib/weft/keys")
    );
    assert_eq!(
        m.host_path_at("/dev/net/tun").as_deref(),
        Some("/dev/net/tun")
    );
    let tun = m
        .volume(
            &container
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.mount_path == "/dev/net/tun")
                .unwrap()
                .name,
        )
        .host_path
        .clone()
        .unwrap();
    assert_eq!(tun.type_.as_deref(), Some("CharDevice"));
}

#[test]
fn the_admission_policy_binds_the_agent_to_its_own_node() {
    let m = manifests();
    let policy = m.policy();
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));

    let rules = spec
        .match_constraints
        .as_ref()
        .unwrap()
        .resource_rules
        .as_ref()
        .unwrap();
    let contains = |list: &Option<Vec<String>>, value: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|v| v == value))
    };
    assert!(
        rules.iter().any(|r| contains(&r.api_groups, "")
            && contains(&r.api_versions, "v1")
            && contains(&r.resources, "nodes")
            && contains(&r.operations, "UPDATE")),
        "the policy does not cover UPDATE of core v1 nodes: {rules:?}"
    );

    // What the matchConditions and validations admit and deny is tested by evaluating
    // them: tests/admission_policy.rs.
    let validations = spec.validations.as_ref().unwrap();
    assert!(
        validations
            .iter()
            .all(|v| v.message.is_some() || v.message_expression.is_some()),
        "every validation says why it denied"
    );

    let binding = m.policy_binding();
    let binding_spec = &binding.spec;
    assert_eq!(
        Some(binding_spec.policy_name.as_str()),
        policy.metadata.name.as_deref()
    );
    assert_eq!(binding_spec.validation_actions, vec!["Deny".to_string()]);
    assert!(
        binding_spec.match_resources.is_none(),
        "the binding applies wherever the policy matches"
    );
}

/// The optional BIRD sidecar overlay (deploy/with-bird/): a well-formed patch of the weft
/// DaemonSet whose `weft bird-config --watch` arguments weft accepts, with BIRD reading the
/// file bird-config writes and reloaded on the socket it listens on.
#[test]
fn the_bird_sidecar_overlay_patches_the_daemonset_with_arguments_weft_accepts() {
    let dir = deploy_dir().join("with-bird");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let kustomization: serde_yaml_ng::Value = serde_yaml_ng::from_str(&kustomization).unwrap();
    assert_eq!(kustomization["resources"][0].as_str(), Some("../"));
    assert_eq!(
        kustomization["patches"][0]["path"].as_str(),
        Some("bird-sidecar.yaml")
    );
    let text = std::fs::read_to_string(dir.join("bird-sidecar.yaml")).unwrap();
    let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let patch: DaemonSet = typed("with-bird/bird-sidecar.yaml", &document);
    let m = manifests();
    assert_eq!(patch.metadata.name, m.daemon_set().metadata.name);
    assert_eq!(patch.metadata.namespace, m.daemon_set().metadata.namespace);
    assert_eq!(patch.spec.selector, m.daemon_set().spec.selector);
    let pod = patch.spec.template.spec.unwrap();
    let container = |name: &str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} container"))
            .clone()
    };

    let renderer = container("bird-config");
    let env = renderer.env.clone().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    // NODE_NAME comes from the environment in the cluster; the parser gets it as a flag here.
    let argv: Vec<String> = renderer
        .command
        .clone()
        .unwrap()
        .into_iter()
        .chain(renderer.args.clone().unwrap())
        .chain(["--node-name".to_string(), "n1".to_string()])
        .collect();
    let cli = <weft::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("weft refuses the sidecar's arguments {argv:?}: {e}"));
    let weft::cli::Command::BirdConfig(args) = cli.command else {
        panic!("the sidecar does not run `weft bird-config`: {argv:?}");
    };
    assert!(args.watch, "the sidecar must follow the Nodes");
    let output = args.output.unwrap();
    let reload = args.reload_command.unwrap();

    let bird = container("bird");
    let script = bird.args.clone().unwrap().join(" ");
    let config_flag = format!("-c {}", output.display());
    assert!(script.contains(&config_flag), "{script}");
    let socket = reload
        .split_whitespace()
        .skip_while(|w| *w != "-s")
        .nth(1)
        .unwrap_or_else(|| panic!("the reload command names no socket: {reload}"));
    assert!(
        script.contains(&format!("-s {socket}")),
        "BIRD listens where birdc talks: {script}"
    );

    // Both share the directory of the file and the socket, and it is not a host path.
    let shared = output.parent().unwrap().to_str().unwrap();
    assert!(socket.starts_with(shared));
    for c in [&renderer, &bird] {
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == shared)
            .unwrap_or_else(|| panic!("{} does not mount {shared}", c.name));
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert!(volume.empty_dir.is_some() && volume.host_path.is_none());
    }

    // Least privilege: the renderer needs no capability; BIRD only routes and port 179.
    let caps = |c: &Container| {
        let security = c.security_context.clone().unwrap();
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let caps = security.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        caps.add.unwrap_or_default()
    };
    assert!(caps(&renderer).is_empty());
    assert_eq!(caps(&bird), vec!["NET_ADMIN", "NET_BIND_SERVICE"]);

    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(" bird2"), "the image must carry BIRD");
}

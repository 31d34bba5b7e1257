//! A NetworkPolicy truth table in the real lab, in the style of the upstream Kubernetes
//! network policy e2e suite: namespaces x, y, z with Pods a, b, c each, spread over 3 nodes;
//! ports 80 and 81 over TCP and UDP. For each scenario every Pod probes every Pod on the other
//! nodes through the encrypted datapath, and the observed table must equal the reference
//! model's (`weft::policy::reference`), computed from the very objects the agents read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Lab, Servers, support_script, wait_for};
use weft::policy::{Flow, Protocol, reference, source};

const NODES: usize = 3;
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NAMES: [&str; 3] = ["a", "b", "c"];
const PORTS: [(u16, &str); 4] = [(80, "tcp"), (81, "tcp"), (80, "udp"), (81, "udp")];
/// How long a probe waits before calling a target unreachable.
const PROBE_TIMEOUT_SECS: &str = "2";

#[derive(Debug, Clone)]
struct TestPod {
    namespace: &'static str,
    name: &'static str,
    node: usize,
    netns: String,
    ip: String,
}

impl TestPod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Node k, lab Pod slot j holds Pod NAMES[(k - 1 + j) % 3] of namespace NAMESPACES[j]: every
/// namespace has a, b and c, each on a different node.
fn layout(lab: &Lab) -> Vec<TestPod> {
    let mut pods = Vec::new();
    for node in 1..=NODES {
        for (slot, (netns, ip)) in lab.pods(node).into_iter().enumerate() {
            pods.push(TestPod {
                namespace: NAMESPACES[slot],
                name: NAMES[(node - 1 + slot) % 3],
                node,
                netns,
                ip,
            });
        }
    }
    pods
}

fn policy_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(format!("/run/{}/policy", lab.name))
}

/// Writes a file of the policy directory atomically (the agents never see half of it).
fn write_atomically(dir: &Path, file: &str, text: &str) {
    let temp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, dir.join(file)).unwrap();
}

/// Replaces the lab's own Namespace and Pod objects with x, y, z and their Pods.
fn write_objects(lab: &Lab, pods: &[TestPod]) {
    let dir = policy_dir(lab);
    let namespaces: String = NAMESPACES
        .iter()
        .map(|ns| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"))
        .collect();
    write_atomically(&dir, "namespace.yaml", &namespaces);
    for node in 1..=NODES {
        let text: String = pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{pod: {}}}}}\nspec:\n  nodeName: n{node}\n  containers:\n  - name: main\n    ports:\n    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\nstatus: {{podIP: {}}}\n",
                    p.name, p.namespace, p.name, p.ip
                )
            })
            .collect();
        write_atomically(&dir, &format!("pods-n{node}.yaml"), &text);
    }
}

/// (from, to, "port/proto") -> reachable.
type Table = BTreeMap<(String, String, String), bool>;

fn targets_of(pods: &[TestPod], from: &TestPod) -> Vec<(String, String)> {
    pods.iter()
        .filter(|to| to.node != from.node)
        .flat_map(|to| {
            PORTS
                .iter()
                .map(move |(port, proto)| (to.key(), format!("{}:{port}/{proto}", to.ip)))
        })
        .collect()
}

/// Probes `wanted` (or every cross-node pair when `None`) at once, one probe process per
/// source Pod.
fn probe(pods: &[TestPod], wanted: Option<&Table>) -> Table {
    let mut running = Vec::new();
    for from in pods {
        let targets: Vec<(String, String)> = targets_of(pods, from)
            .into_iter()
            .filter(|(to, target)| {
                wanted.is_none_or(|w| w.contains_key(&(from.key(), to.clone(), port_of(target))))
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let child = support_script(&from.netns, "netprobe.py", "probe")
            .arg(PROBE_TIMEOUT_SECS)
            .args(targets.iter().map(|(_, t)| t))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        running.push((from.key(), targets, child));
    }
    let mut table = Table::new();
    for (from, targets, child) in running {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "the probe from {from} failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let results: BTreeMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once(' ')).collect();
        for (to, target) in targets {
            let verdict = results.get(target.as_str()).copied();
            assert!(
                verdict.is_some(),
                "no probe result for {target} from {from}"
            );
            table.insert((from.clone(), to, port_of(&target)), verdict == Some("ok"));
        }
    }
    table
}

/// "10.244.1.5:80/tcp" -> "80/tcp".
fn port_of(target: &str) -> String {
    target.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap()
}

/// The reference model's table for what the policy directory holds now.
fn expected(lab: &Lab, pods: &[TestPod]) -> Table {
    let read = source::read_once(&policy_dir(lab));
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    let objects = read.objects;
    let mut table = Table::new();
    for from in pods {
        for to in pods.iter().filter(|to| to.node != from.node) {
            for (port, proto) in PORTS {
                let flow = Flow {
                    src: from.ip.parse::<IpAddr>().unwrap(),
                    dst: to.ip.parse::<IpAddr>().unwrap(),
                    protocol: if proto == "tcp" {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    },
                    dst_port: port,
                };
                let allowed = reference::allowed(
                    &objects.policies,
                    &objects.namespaces,
                    &objects.pods,
                    &flow,
                );
                table.insert((from.key(), to.key(), format!("{port}/{proto}")), allowed);
            }
        }
    }
    table
}

/// Rows "from -> to" and one column per port, "." reachable and "X" not: the form the
/// upstream suite prints.
fn render(table: &Table) -> String {
    let mut out = String::new();
    let mut rows: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for ((from, to, _), reachable) in table {
        rows.entry((from, to))
            .or_default()
            .push(if *reachable { "." } else { "X" });
    }
    for ((from, to), cells) in rows {
        out.push_str(&format!("{from:>4} -> {to:<4} {}\n", cells.join(" ")));
    }
    out
}

/// Applies one scenario's policies (one file, or none) and waits until every agent has them
/// in force.
fn apply(lab: &Lab, policies: &str, names: &[&str]) {
    let dir = policy_dir(lab);
    let before: Vec<u64> = (1..=NODES).map(|k| policy_version(lab, k)).collect();
    let changes = !policies.is_empty() || dir.join("scenario.yaml").exists();
    if policies.is_empty() {
        let _ = std::fs::remove_file(dir.join("scenario.yaml"));
    } else {
        write_atomically(&dir, "scenario.yaml", policies);
    }
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    wait_for(
        Duration::from_secs(20),
        "every agent to apply the scenario",
        || {
            (1..=NODES)
                .all(|k| {
                    let Some(status) = lab.status(k) else {
                        return false;
                    };
                    let policy = &status["datapath"]["policy"];
                    let in_force: Vec<String> =
                        serde_json::from_value(policy["policies"].clone()).unwrap_or_default();
                    assert_eq!(
                        policy["rejected"].as_array().map(Vec::len),
                        Some(0),
                        "a scenario policy was rejected: {policy}"
                    );
                    let version = policy["version"].as_u64().unwrap_or(0);
                    in_force == want && (!changes || version > before[k - 1])
                })
                .then_some(())
        },
    );
}

fn policy_version(lab: &Lab, k: usize) -> u64 {
    lab.status(k)
        .and_then(|s| s["datapath"]["policy"]["version"].as_u64())
        .unwrap_or(0)
}

/// Probes everything; a pair the model allows but the probe missed is probed once more (a
/// lost datagram or SYN is not a verdict; a wrong "reachable" cannot be a fluke).
fn observe(pods: &[TestPod], expected: &Table) -> Table {
    let mut observed = probe(pods, None);
    let missed: Table = observed
        .iter()
        .filter(|(key, reachable)| !**reachable && expected.get(*key) == Some(&true))
        .map(|(key, _)| (key.clone(), false))
        .collect();
    if !missed.is_empty() {
        observed.extend(probe(pods, Some(&missed)));
    }
    observed
}

fn check_scenario(lab: &Lab, pods: &[TestPod], scenario: &str, policies: &str, names: &[&str]) {
    apply(lab, policies, names);
    let expected = expected(lab, pods);
    let observed = observe(pods, &expected);
    assert_eq!(observed.len(), expected.len());
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(key, want)| observed.get(*key) != Some(want))
        .map(|((from, to, port), want)| {
            format!("{from} -> {to} {port}: expected {want}, observed {}", !want)
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "scenario {scenario:?}: {} of {} probes disagree with the reference model:\n{}\nexpected (ports 80/tcp 81/tcp 80/udp 81/udp):\n{}\nobserved:\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n"),
        render(&expected),
        render(&observed)
    );
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

#[test]
fn the_datapath_agrees_with_the_reference_model_on_the_upstream_style_truth_table() {
    let lab = Lab::up_with_pods("wttt", NODES, 3, "");
    lab.wait_for_mesh(Duration::from_secs(60));
    let pods = layout(&lab);
    write_objects(&lab, &pods);
    let _servers = Servers(
        pods.iter()
            .map(|p| {
                support_script(&p.netns, "netprobe.py", "serve")
                    .args(["80", "81"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let everything = |pods: &[TestPod]| probe(pods, None).values().all(|ok| *ok);
    wait_for(
        Duration::from_secs(30),
        "every Pod to reach every other",
        || everything(&pods).then_some(()),
    );
    let yb_ip = pods
        .iter()
        .find(|p| p.key() == "y/b")
        .map(|p| p.ip.clone())
        .unwrap();

    let scenarios: Vec<(&str, String, Vec<&str>)> = vec![
        ("no policy", String::new(), vec![]),
        (
            "default deny ingress",
            policy(
                "x",
                "deny-ingress",
                "  podSelector: {}\n  policyTypes: [Ingress]\n",
            ),
            vec!["x/deny-ingress"],
        ),
        (
            "default deny egress",
            policy(
                "x",
                "deny-egress",
                "  podSelector: {}\n  policyTypes: [Egress]\n",
            ),
            vec!["x/deny-egress"],
        ),
        (
            "allow from a namespace",
            policy(
                "x",
                "allow-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n",
            ),
            vec!["x/allow-from-y"],
        ),
        (
            "allow from a Pod in another namespace",
            policy(
                "x",
                "allow-from-y-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n",
            ),
            vec!["x/allow-from-y-b"],
        ),
        (
            "namespace AND Pod selector in one peer",
            policy(
                "x",
                "one-peer",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}\n      podSelector: {matchLabels: {pod: b}}\n",
            ),
            vec!["x/one-peer"],
        ),
        (
            "namespace OR Pod selector as two peers",
            policy(
                "x",
                "two-peers",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}\n    - podSelector: {matchLabels: {pod: b}}\n",
            ),
            vec!["x/two-peers"],
        ),
        (
            "ipBlock with except",
            policy(
                "x",
                "ip-block",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{yb_ip}/32]}}}}]\n"
                ),
            ),
            vec!["x/ip-block"],
        ),
        (
            "named port",
            policy(
                "x",
                "named-port",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]\n",
            ),
            vec!["x/named-port"],
        ),
        (
            "endPort range",
            policy(
                "x",
                "port-range",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP, port: 81, endPort: 90}, {protocol: UDP, port: 70, endPort: 80}]\n",
            ),
            vec!["x/port-range"],
        ),
        (
            "egress to one Pod only",
            policy(
                "x",
                "egress-to-y-c",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]\n",
            ),
            vec!["x/egress-to-y-c"],
        ),
        (
            "policy added",
            policy(
                "y",
                "deny-all",
                "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
            ),
            vec!["y/deny-all"],
        ),
        ("policy deleted", String::new(), vec![]),
    ];
    for (scenario, policies, names) in &scenarios {
        check_scenario(&lab, &pods, scenario, policies, names);
    }
}

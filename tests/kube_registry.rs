//! The kube registry and the API policy source against the in-process API server emulation
//! (`tests/apiserver`). Each test runs a real `weft agent --registry kube` in a network
//! namespace of its own, with BGP-style kernel routes (protocol bird) to the other nodes, and
//! the emulated API server listening inside that namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;
mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use apiserver::ApiServer;
use common::{
    Netns, http_get, in_netns, run_ok, wait_for, weft_bin, weft_key_status, weft_policy_check,
    weft_status,
};
use serde_json::{Value, json};

const HEALTH: &str = "127.0.0.1:9720";

/// A network namespace standing in for node n1: an underlay 198.18.0.1/24 and routes of
/// protocol bird to n2's and n3's Pod blocks. Removed on drop, with everything in it.
struct Node1 {
    /// Its `process` is the agent.
    netns: Netns,
    ns: String,
    dir: tempfile::TempDir,
    api: Option<ApiServer>,
}

impl Node1 {
    fn new(ns: &str) -> Node1 {
        let node = Node1 {
            netns: Netns::new(ns),
            ns: ns.to_string(),
            dir: tempfile::tempdir().unwrap(),
            api: None,
        };
        for cmd in [
            // No dummy module here: a veth pair with both ends inside the namespace.
            "link add d0 type veth peer name d1",
            "addr add 198.18.0.1/24 dev d0",
            "link set d1 up",
            "link set d0 up",
            "route add 10.244.2.0/24 via 198.18.0.2 proto bird",
            "route add 10.244.3.0/24 via 198.18.0.3 proto bird",
        ] {
            let args: Vec<&str> = ["-n", ns].into_iter().chain(cmd.split(' ')).collect();
            run_ok("ip", &args);
        }
        node
    }

    fn api(&self) -> &ApiServer {
        self.api.as_ref().unwrap()
    }

    fn start_api(&mut self) {
        let listener = in_netns(&self.ns, || TcpListener::bind("127.0.0.1:0").unwrap());
        let api = ApiServer::start(listener);
        std::fs::write(self.dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
        self.api = Some(api);
    }

    fn start_agent(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, weft_bin(), "agent"])
            .args(["--registry", "kube", "--node-name", "n1", "--no-datapath"])
            .args(["--debounce", "50ms", "--health-address", HEALTH])
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--key-dir")
            .arg(dir.join("keys"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.netns.process = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn run_dir(&self) -> String {
        self.dir.path().join("run").to_str().unwrap().to_string()
    }

    fn status(&self) -> Option<Value> {
        weft_status(&self.ns, &self.run_dir())
    }

    /// `weft key status --output json` against the agent, or `None` if it does not answer.
    fn key_status(&self) -> Option<Value> {
        weft_key_status(&self.ns, &self.run_dir())
    }

    /// The record in n1's weft.dev/node annotation, or `None` while there is none.
    fn own_record(&self) -> Option<Value> {
        let node = self.api().object("Node", "n1")?;
        serde_json::from_str(node["metadata"]["annotations"]["weft.dev/node"].as_str()?).ok()
    }

    /// Peer name -> public key, once the agent answers.
    fn peers(&self) -> Option<Vec<(String, String)>> {
        let status = self.status()?;
        Some(
            status["peers"]
                .as_array()?
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["publicKey"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    fn wait_for_peers(&self, what: &str, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        let mut last = None;
        let found = (0..120).any(|_| {
            last = self.peers();
            if last.as_ref() == Some(&want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
            false
        });
        assert!(
            found,
            "{what}: peers {last:?}, want {want:?}\nagent log:\n{}",
            self.log()
        );
    }

    /// HTTP GET on the agent's health address: (status code, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.ns, HEALTH, path)
    }

    fn ready(&self) -> Option<bool> {
        self.get("/readyz").map(|(code, _)| code == 200)
    }
}

fn public_key(seed: u8) -> String {
    weft_keys::PrivateKey::from_bytes([seed; 32])
        .public_key()
        .to_string()
}

fn record(seed: u8, block: &str) -> String {
    json!({"v": 1, "publicKey": public_key(seed), "blocks": [block]}).to_string()
}

fn node(name: &str, ip: &str, pod_cidr: &str, annotations: Value) -> Value {
    json!({
        "metadata": {"name": name, "annotations": annotations, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
    })
}

/// n1 (ours, with annotations of other owners) and n2 (a weft node with its record).
fn cluster(node1: &mut Node1) {
    node1.start_api();
    node1.api().upsert(
        "Node",
        node(
            "n1",
            "198.18.0.1",
            "10.244.1.0/24",
            json!({"keep.example/me": "yes", "flannel.alpha.coreos.com/x": "y"}),
        ),
    );
    node1.api().upsert(
        "Node",
        node(
            "n2",
            "198.18.0.2",
            "10.244.2.0/24",
            json!({"weft.dev/node": record(2, "10.244.2.0/24")}),
        ),
    );
}

/// Node n1 without a weft record, with an annotation of another owner.
fn n1_without_record() -> Value {
    node(
        "n1",
        "198.18.0.1",
        "10.244.1.0/24",
        json!({"keep.example/me": "yes"}),
    )
}

fn own_public_key(node1: &Node1) -> String {
    let keys = node1.dir.path().join("keys");
    run_ok(
        weft_bin(),
        &["key", "show", "--key-dir", keys.to_str().unwrap()],
    )
    .trim()
    .to_string()
}

#[test]
fn startup_publishes_the_record_from_the_node_and_touches_no_other_annotation() {
    let mut n1 = Node1::new("wk-start");
    cluster(&mut n1);
    n1.start_agent();
    let published = wait_for(Duration::from_secs(30), "the annotation", || {
        let node = n1.api().object("Node", "n1")?;
        node["metadata"]["annotations"]["weft.dev/node"]
            .as_str()
            .map(String::from)
    });
    let record: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(
        record["blocks"],
        json!(["10.244.1.0/24"]),
        "blocks from podCIDRs"
    );
    assert_eq!(record["publicKey"].as_str().unwrap(), own_public_key(&n1));
    let node = n1.api().object("Node", "n1").unwrap();
    let annotations = node["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.len(), 3, "{annotations:?}");
    assert_eq!(annotations["keep.example/me"], "yes");
    assert_eq!(annotations["flannel.alpha.coreos.com/x"], "y");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"], "n1",
        "labels untouched"
    );
    let patches: Vec<String> = n1
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0].contains("/api/v1/nodes/n1") && patches[0].contains("merge-patch+json"),
        "{patches:?}"
    );
    // The address came from the Node's InternalIP; the mesh has n2.
    n1.wait_for_peers("n2 from the API", &[("n2", &public_key(2))]);
    let status = n1.status().unwrap();
    assert_eq!(status["node"]["addresses"], json!(["198.18.0.1"]));
    assert_eq!(n1.ready(), Some(true));
    let (code, metrics) = n1.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l == "weft_peers 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "weft_ready 1"), "{metrics}");
    assert_eq!(n1.get("/healthz").map(|(c, _)| c), Some(200));
}

#[test]
fn nodes_added_changed_and_deleted_change_the_mesh() {
    let mut n1 = Node1::new("wk-nodes");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    let n3 = |seed: u8| {
        node(
            "n3",
            "198.18.0.3",
            "10.244.3.0/24",
            json!({"weft.dev/node": record(seed, "10.244.3.0/24")}),
        )
    };
    n1.api().upsert("Node", n3(3));
    n1.wait_for_peers(
        "n3 added",
        &[("n2", &public_key(2)), ("n3", &public_key(3))],
    );
    n1.api().upsert("Node", n3(33));
    n1.wait_for_peers(
        "n3's key changed",
        &[("n2", &public_key(2)), ("n3", &public_key(33))],
    );
    n1.api().delete("Node", "n2");
    n1.wait_for_peers("n2 deleted", &[("n3", &public_key(33))]);
    // A Node whose record claims another node's block is rejected, visibly, and the claimed
    // block goes to neither node.
    n1.api().upsert(
        "Node",
        node(
            "n2",
            "198.18.0.2",
            "10.244.2.0/24",
            json!({"weft.dev/node": record(2, "10.244.3.0/24")}),
        ),
    );
    n1.wait_for_peers("the overlap to take n3's block from both", &[]);
    let status = n1.status().unwrap();
    let reasons: Vec<&str> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"overlapping_claims"), "{status}");
    assert!(reasons.contains(&"not_claimed_by_next_hop"), "{status}");
}

#[test]
fn a_dropped_watch_resumes_from_its_resource_version_without_a_relist() {
    let mut n1 = Node1::new("wk-drop");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    let lists_before = node_lists(n1.api());
    let watches_before = node_watches(n1.api()).len();
    let rv = n1.api().resource_version();
    n1.api().drop_watches();
    n1.api().upsert("Node", weft_node(3));
    n1.wait_for_peers(
        "n3 after the watch dropped",
        &[("n2", &public_key(2)), ("n3", &public_key(3))],
    );
    assert_eq!(node_lists(n1.api()), lists_before, "the watch re-listed");
    let resumed = node_watches(n1.api()).split_off(watches_before);
    assert!(!resumed.is_empty(), "no new watch after the drop");
    assert!(
        resumed
            .iter()
            .all(|r| resource_version_of(r).is_some_and(|v| v >= rv)),
        "a watch did not resume from resourceVersion >= {rv}: {resumed:?}"
    );
}

#[test]
fn bookmarks_keep_a_quiet_node_watch_resumable_after_the_history_is_compacted() {
    let mut n1 = Node1::new("wk-bookmark");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    let api = n1.api();
    let lists_before = node_lists(api);
    let gone_before = api.gone_sent();
    assert!(
        node_watches(api)
            .iter()
            .all(|w| w.contains("allowWatchBookmarks=true")),
        "the agent does not ask for bookmarks: {:?}",
        node_watches(api)
    );
    // Other objects change while the Nodes stay quiet: only bookmarks tell the Node watch
    // how far the history has moved.
    for i in 0..5 {
        api.upsert(
            "Namespace",
            json!({"metadata": {"name": format!("churn{i}")}}),
        );
    }
    let churned = api.resource_version();
    let seen = api.bookmarks_sent("Node");
    wait_for(
        Duration::from_secs(10),
        "bookmarks on the Node watch",
        || (api.bookmarks_sent("Node") >= seen + 2).then_some(()),
    );
    api.compact();
    api.drop_watches();
    api.upsert("Node", weft_node(3));
    n1.wait_for_peers(
        "n3 after the compaction",
        &[("n2", &public_key(2)), ("n3", &public_key(3))],
    );
    assert_eq!(
        api.gone_sent(),
        gone_before,
        "a Node watch resumed from before the bookmarks and got 410 Gone"
    );
    assert_eq!(node_lists(api), lists_before, "the Node watch re-listed");
    let last = node_watches(api).pop().unwrap();
    assert!(
        resource_version_of(&last).is_some_and(|v| v >= churned),
        "the watch did not resume from the bookmarked resourceVersion {churned}: {last}"
    );
}

#[test]
fn gone_410_makes_the_watch_relist_and_the_mesh_is_right_afterwards() {
    let mut n1 = Node1::new("wk-gone");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    let lists_before = node_lists(n1.api());
    // While the watch is away, the cluster changes and the history is compacted.
    n1.api().set_down(true);
    n1.api().delete("Node", "n2");
    n1.api().upsert("Node", weft_node(3));
    n1.api().compact();
    n1.api().set_down(false);
    n1.wait_for_peers("the re-listed mesh", &[("n3", &public_key(3))]);
    assert!(
        n1.api().gone_sent() > 0,
        "no watch was answered with 410 Gone"
    );
    assert!(
        node_lists(n1.api()) > lists_before,
        "410 Gone did not cause a re-list"
    );
}

#[test]
fn a_conflicting_publish_is_read_again_and_retried() {
    let mut n1 = Node1::new("wk-conf");
    cluster(&mut n1);
    n1.api().conflict_next_patches(2);
    n1.start_agent();
    wait_for(Duration::from_secs(30), "the annotation", || {
        n1.api().object("Node", "n1")?["metadata"]["annotations"]["weft.dev/node"]
            .as_str()
            .map(|_| ())
    });
    let requests = n1.api().requests();
    let patches = requests.iter().filter(|r| r.starts_with("PATCH")).count();
    assert_eq!(patches, 3, "two conflicts then success: {requests:?}");
    let gets = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/nodes/n1"))
        .count();
    assert!(gets >= 4, "each retry reads the Node again: {requests:?}");
    // A stale resourceVersion is what a conflict means: the other annotations survived, the
    // ones the racing writer added included.
    let node = n1.api().object("Node", "n1").unwrap();
    assert_eq!(node["metadata"]["annotations"]["keep.example/me"], "yes");
    for write in ["concurrent.example/write-1", "concurrent.example/write-2"] {
        assert_eq!(
            node["metadata"]["annotations"][write], "yes",
            "{write} lost"
        );
    }
}

#[test]
fn without_kubeconfig_the_in_cluster_config_comes_first() {
    // No network namespace needed: the emulation on this namespace's loopback, reached by
    // `weft bird-config` (the same client as the agent's) through $KUBECONFIG only.
    let api = ApiServer::start(TcpListener::bind("127.0.0.1:0").unwrap());
    api.upsert("Node", weft_node(1));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let output = dir.path().join("bird.conf");
    let bird_config = |in_cluster: bool| {
        let mut command = Command::new(weft_bin());
        command
            .args(["bird-config", "--node-name", "n1", "--output"])
            .arg(&output)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
        if in_cluster {
            // What the kubelet sets in every container (nothing listens on port 9).
            command.env("KUBERNETES_SERVICE_HOST", "127.0.0.1");
            command.env("KUBERNETES_SERVICE_PORT", "9");
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Outside a cluster: $KUBECONFIG, and the log says why.
    let (ok, log) = bird_config(false);
    assert!(ok, "{log}");
    assert!(log.contains("not running in a cluster"), "{log}");
    let requests = api.requests().len();
    assert!(requests > 0);
    // In a Pod the service account is used, never a kubeconfig that happens to be there:
    // here it has no token, so that is an error naming the in-cluster config.
    let (ok, log) = bird_config(true);
    assert!(!ok, "a kubeconfig was used in a cluster: {log}");
    assert_eq!(
        api.requests().len(),
        requests,
        "the kubeconfig's server was asked"
    );
    if !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount").exists() {
        assert!(log.contains("in-cluster config"), "{log}");
    }
}

#[test]
fn the_api_going_away_keeps_the_mesh_and_readiness_stays_honest() {
    let mut n1 = Node1::new("wk-away");
    cluster(&mut n1);
    // Down before the agent starts: it is alive but not ready.
    n1.api().set_down(true);
    n1.start_agent();
    wait_for(Duration::from_secs(20), "the health endpoint", || {
        n1.get("/healthz").map(|_| ())
    });
    assert_eq!(n1.get("/healthz").map(|(c, _)| c), Some(200));
    let (code, body) = n1.get("/readyz").unwrap();
    assert_eq!(code, 503, "ready before it ever synced: {body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n1.ready(), Some(false));
    // Up: it syncs, publishes its record and becomes ready.
    n1.api().set_down(false);
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    wait_for_own_record(&n1, "the first publish after the API came up");
    wait_for(Duration::from_secs(20), "readiness", || {
        n1.ready()?.then_some(())
    });
    // Away again, answering 503, then not answering at all (connections reset): the last
    // known mesh stays, and so does readiness (it has synced).
    n1.api().set_down(true);
    std::thread::sleep(Duration::from_secs(3));
    n1.api().set_down(false);
    n1.api().set_unreachable(true);
    let requests = n1.api().requests().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        n1.api().requests().len(),
        requests,
        "a request got through while the API server was unreachable"
    );
    assert_eq!(
        n1.peers(),
        Some(vec![("n2".to_string(), public_key(2))]),
        "the mesh changed while the API server was away"
    );
    assert_eq!(n1.ready(), Some(true));
    // Back: changes made meanwhile arrive, and a record lost meanwhile (the Node object
    // re-created without it) is published again.
    n1.api().delete("Node", "n2");
    n1.api().upsert("Node", n1_without_record());
    n1.api().set_unreachable(false);
    n1.wait_for_peers("n2 gone after the API came back", &[]);
    wait_for_own_record(&n1, "the record published again after the API came back");
    let node = n1.api().object("Node", "n1").unwrap();
    assert_eq!(node["metadata"]["annotations"]["keep.example/me"], "yes");
}

/// Waits until n1's Node carries the agent's record: its key and the Node's Pod CIDR.
fn wait_for_own_record(n1: &Node1, what: &str) {
    let record = wait_for(Duration::from_secs(30), what, || {
        let record = n1.own_record()?;
        // The key exists once the record is published.
        (record["publicKey"].as_str()? == own_public_key(n1)).then_some(record)
    });
    assert_eq!(record["blocks"], json!(["10.244.1.0/24"]), "{what}");
}

#[test]
fn the_agent_waits_for_the_own_nodes_pod_cidrs_before_publishing() {
    let mut n1 = Node1::new("wk-cidr");
    n1.start_api();
    // n1 has registered, but node IPAM has not allocated its Pod CIDR yet.
    let mut unallocated = n1_without_record();
    unallocated["spec"] = json!({});
    n1.api().upsert("Node", unallocated);
    n1.api().upsert("Node", weft_node(2));
    n1.start_agent();
    let body = wait_for(Duration::from_secs(20), "the reason in /readyz", || {
        let (code, body) = n1.get("/readyz")?;
        assert_eq!(code, 503, "ready without blocks: {body}");
        body.contains("spec.podCIDRs").then_some(body)
    });
    assert!(body.starts_with("starting"), "{body}");
    // It keeps waiting, publishing nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n1.ready(), Some(false));
    let waiting = n1.api().object("Node", "n1").unwrap();
    assert!(
        waiting["metadata"]["annotations"]
            .get("weft.dev/node")
            .is_none(),
        "published a record before the Node had Pod CIDRs: {waiting}"
    );
    assert!(
        !n1.api().requests().iter().any(|r| r.starts_with("PATCH")),
        "{:?}",
        n1.api().requests()
    );
    assert!(n1.log().contains("no spec.podCIDRs yet"), "{}", n1.log());
    // The CIDR is allocated: the record carries it, and the agent becomes ready.
    n1.api().upsert("Node", n1_without_record());
    wait_for_own_record(&n1, "the record with the allocated block");
    n1.wait_for_peers("n2", &[("n2", &public_key(2))]);
    wait_for(Duration::from_secs(20), "readiness", || {
        n1.ready()?.then_some(())
    });
}

#[test]
fn network_policy_comes_from_the_api() {
    let mut n1 = Node1::new("wk-pol");
    cluster(&mut n1);
    let api = n1.api();
    api.upsert(
        "Namespace",
        json!({"metadata": {"name": "x", "labels": {"ns": "x"}}}),
    );
    for (name, ip) in [("a", "10.244.1.10"), ("b", "10.244.2.10")] {
        api.upsert(
            "Pod",
            json!({"metadata": {"name": name, "namespace": "x", "labels": {"pod": name}},
                   "spec": {"containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 80}]}]},
                   "status": {"podIP": ip}}),
        );
    }
    api.upsert(
        "NetworkPolicy",
        json!({"metadata": {"name": "only-b", "namespace": "x"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                     "ports": [{"port": "http"}]}]}}),
    );
    n1.start_agent();
    let check =
        |from: &str, to: &str, port: &str| weft_policy_check(&n1.ns, &n1.run_dir(), from, to, port);
    wait_for(Duration::from_secs(30), "the rule set from the API", || {
        let (allowed, verdict) = check("x/b", "x/a", "80");
        (allowed && verdict.contains("x/only-b")).then_some(())
    });
    assert!(!check("x/b", "x/a", "81").0, "port 81 is not allowed");
    // A policy change arrives through the watch.
    n1.api().delete("NetworkPolicy", "x/only-b");
    wait_for(Duration::from_secs(20), "the policy deletion", || {
        check("x/b", "x/a", "81").0.then_some(())
    });
}

#[test]
fn a_key_rotation_goes_through_the_annotation_and_leaves_other_annotations_alone() {
    let mut n1 = Node1::new("wk-rotate");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2 from the API", &[("n2", &public_key(2))]);
    let old = own_public_key(&n1);

    // Without a datapath nobody can be seen moving: the grace period completes it.
    let rotate = Command::new(weft_bin())
        .args(["key", "rotate", "--grace", "3s", "--run-dir", &n1.run_dir()])
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{rotate:?}");
    let announced = wait_for(Duration::from_secs(10), "nextPublicKey", || {
        let record = n1.own_record()?;
        Some((record["nextPublicKey"].as_str()?.to_string(), record))
    });
    assert_eq!(announced.1["publicKey"].as_str(), Some(old.as_str()));
    assert_eq!(announced.1["keyEpoch"], 1);
    let completed = wait_for(Duration::from_secs(20), "the rotated key", || {
        let record = n1.own_record()?;
        (record["publicKey"].as_str()? == announced.0).then_some(record)
    });
    assert!(completed.get("nextPublicKey").is_none(), "{completed}");
    assert_eq!(completed["keyEpoch"], 1);
    assert_eq!(own_public_key(&n1), announced.0);
    let node = n1.api().object("Node", "n1").unwrap();
    let annotations = node["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.len(), 3, "{annotations:?}");
    assert_eq!(annotations["keep.example/me"], "yes");
    let (_, metrics) = n1.get("/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l == "weft_key_epoch 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "weft_key_rotation_in_progress 0"),
        "{metrics}"
    );

    // A peer announcing its own next key shows up with it.
    let rotating = json!({"v": 1, "publicKey": public_key(2), "nextPublicKey": public_key(12),
        "blocks": ["10.244.2.0/24"], "keyEpoch": 3});
    n1.api().upsert(
        "Node",
        node_with("n2", "198.18.0.2", "10.244.2.0/24", &rotating.to_string()),
    );
    wait_for(
        Duration::from_secs(20),
        "n2's next key in the status",
        || {
            let status = n1.status()?;
            let peer = status["peers"].as_array()?.first()?.clone();
            (peer["nextPublicKey"].as_str()? == public_key(12)).then_some(())
        },
    );
}

#[test]
fn a_rotation_while_the_api_is_away_says_so_and_gets_its_whole_grace_once_published() {
    use std::io::BufRead as _;
    let mut n1 = Node1::new("wk-rotaway");
    cluster(&mut n1);
    n1.start_agent();
    n1.wait_for_peers("n2 from the API", &[("n2", &public_key(2))]);
    wait_for(Duration::from_secs(20), "the record published", || {
        n1.key_status()?["published"].as_bool()?.then_some(())
    });

    // The API server is unreachable from now on: the rotation is announced locally only, and
    // `weft key rotate --wait` says so and why, then keeps waiting.
    n1.api().set_unreachable(true);
    let mut rotate = Command::new(weft_bin())
        .args(["key", "rotate", "--wait", "--grace", "3s"])
        .args(["--run-dir", &n1.run_dir()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(rotate.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.contains("announced locally, not yet published: publishing the own record failed"),
        "{first}\nagent log:\n{}",
        n1.log()
    );
    let status = n1.key_status().unwrap();
    assert_eq!(status["published"], false, "{status}");
    assert!(status["lastError"].is_string(), "{status}");
    assert!(status["rotation"]["announcedAt"].is_null(), "{status}");
    assert!(n1.own_record().unwrap().get("nextPublicKey").is_none());
    // Past the grace period (counted from the start) while nobody could be told.
    std::thread::sleep(Duration::from_secs(4));
    let status = n1.key_status().unwrap();
    assert!(
        status["rotation"].is_object(),
        "completed unpublished: {status}"
    );

    n1.api().set_unreachable(false);
    let announced_at = wait_for(
        Duration::from_secs(30),
        "the announcement published",
        || {
            let status = n1.key_status()?;
            status["rotation"]["announcedAt"].as_u64()
        },
    );
    let done = rotate.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(stdout.contains("complete: public key"), "{stdout}");
    // `--wait` returned only once the completed record was published.
    let status = n1.key_status().unwrap();
    let new = status["publicKey"].as_str().unwrap().to_string();
    let record = n1.own_record().unwrap();
    assert_eq!(record["publicKey"], new.as_str(), "{record}");
    assert!(record.get("nextPublicKey").is_none(), "{record}");
    assert_eq!(status["published"], true, "{status}");
    assert!(status["lastError"].is_null(), "{status}");
    // The peers got the whole grace period from the first publication.
    let completed_at = status["lastRotation"]["completedAt"].as_u64().unwrap();
    assert!(
        completed_at >= announced_at + 3,
        "completed at {completed_at}, announced at {announced_at}: {status}"
    );
}

fn node_with(name: &str, ip: &str, pod_cidr: &str, record: &str) -> Value {
    node(name, ip, pod_cidr, json!({"weft.dev/node": record}))
}

/// Node `nK` at 198.18.0.K with Pod CIDR 10.244.K.0/24 and a weft record for it.
fn weft_node(k: u8) -> Value {
    let block = format!("10.244.{k}.0/24");
    node_with(
        &format!("n{k}"),
        &format!("198.18.0.{k}"),
        &block,
        &record(k, &block),
    )
}

fn node_lists(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/nodes") && !r.contains("watch=") && !r.contains("/nodes/")
        })
        .count()
}

fn node_watches(api: &ApiServer) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/nodes?") && r.contains("watch=true"))
        .collect()
}

fn resource_version_of(request: &str) -> Option<u64> {
    let query = request.split_once('?')?.1;
    let query = query.split(' ').next()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("resourceVersion="))?
        .parse()
        .ok()
}

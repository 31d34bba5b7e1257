//! Small rule sets for unit tests of the policy gate and the datapath.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use super::PolicySet;

/// Pods `lab/c` (10.244.1.2 and fd00:10:244:1::2, remote) and `lab/s` (10.244.2.2 and
/// fd00:10:244:2::2, local), labelled `pod: <name>`, under `policies`.
pub fn world(policies: &[Value]) -> Arc<PolicySet> {
    world_with(policies, &[])
}

/// [`world`] with more Pods of namespace `lab`, each `(name, IPv4 address)`.
pub fn world_with(policies: &[Value], more: &[(&str, &str)]) -> Arc<PolicySet> {
    let pod = |name: &str, ips: &[&str]| -> Pod {
        let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "lab", "labels": {"pod": name}},
            "status": {"podIP": ips[0], "podIPs": pod_ips}
        }))
        .unwrap()
    };
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "lab"}})).unwrap();
    let policies: Vec<NetworkPolicy> = policies
        .iter()
        .map(|p| serde_json::from_value(p.clone()).unwrap())
        .collect();
    let mut pods = vec![
        pod("c", &["10.244.1.2", "fd00:10:244:1::2"]),
        pod("s", &["10.244.2.2", "fd00:10:244:2::2"]),
    ];
    pods.extend(more.iter().map(|(name, ip)| pod(name, &[ip])));
    let set = PolicySet::compile(&policies, &[namespace], &pods);
    assert!(set.rejected.is_empty(), "{:?}", set.rejected);
    Arc::new(set)
}

/// Isolates Pod `pod` in `direction` ("Ingress" or "Egress") with no rule allowing anything.
pub fn isolate(pod: &str, direction: &str) -> Value {
    json!({
        "metadata": {"name": format!("isolate-{pod}-{direction}"), "namespace": "lab"},
        "spec": {"podSelector": {"matchLabels": {"pod": pod}}, "policyTypes": [direction]}
    })
}

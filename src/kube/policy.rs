//! NetworkPolicy from the Kubernetes API: watchers on NetworkPolicies, Pods and Namespaces,
//! compiled into a rule set whenever one of them changes.
//!
//! What is cached, and why: policy is enforced where a packet is decrypted, for the sender's
//! egress as well as the receiver's ingress, so a node must know every Pod that can send to it
//! (its labels and addresses, to match peers and ipBlocks), every policy that can select such
//! a Pod, and every Namespace's labels (namespaceSelectors). A node therefore caches all three
//! kinds cluster-wide, but each Pod only as far as policy reads it: name, namespace, labels,
//! creation and deletion timestamps (which of two Pods sharing an address holds it), node,
//! hostNetwork, container ports (named ports), phase and Pod IPs; everything else (managed
//! fields, volumes, conditions, ...) is dropped as it arrives.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;

use super::follow::follow;
use crate::policy::PolicySet;
use crate::policy::source::{publish, warn_about};
use kube::runtime::reflector;

/// Changes arriving within this window are compiled once.
const SETTLE: Duration = Duration::from_millis(100);

/// Follows the three kinds and sends a freshly compiled rule set after each change, once all
/// three have been listed. While the API server is away the last rule set stays in force.
pub async fn watch_policy(client: Client, sets: watch::Sender<Option<Arc<PolicySet>>>) {
    let (policies, policies_writer) = reflector::store::<NetworkPolicy>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let (policies_tx, mut policies_changed) = watch::channel(0u64);
    let (pods_tx, mut pods_changed) = watch::channel(0u64);
    let (namespaces_tx, mut namespaces_changed) = watch::channel(0u64);
    let tasks = [
        tokio::spawn(follow(
            Api::<NetworkPolicy>::all(client.clone()),
            "NetworkPolicy",
            |p| p.metadata.managed_fields = None,
            policies_writer,
            policies_tx,
        )),
        tokio::spawn(follow(
            Api::<Pod>::all(client.clone()),
            "Pod",
            trim_pod,
            pods_writer,
            pods_tx,
        )),
        tokio::spawn(follow(
            Api::<Namespace>::all(client),
            "Namespace",
            |n| {
                n.metadata.managed_fields = None;
                n.spec = None;
                n.status = None;
            },
            namespaces_writer,
            namespaces_tx,
        )),
    ];
    loop {
        tokio::select! {
            changed = policies_changed.changed() => if changed.is_err() { break },
            changed = pods_changed.changed() => if changed.is_err() { break },
            changed = namespaces_changed.changed() => if changed.is_err() { break },
            () = sets.closed() => break,
        }
        tokio::time::sleep(SETTLE).await;
        let synced = *policies_changed.borrow_and_update() > 0
            && *pods_changed.borrow_and_update() > 0
            && *namespaces_changed.borrow_and_update() > 0;
        if !synced {
            continue;
        }
        let policy_list: Vec<NetworkPolicy> = owned(policies.state());
        let pod_list: Vec<Pod> = owned(pods.state());
        let namespace_list: Vec<Namespace> = owned(namespaces.state());
        update(&sets, &policy_list, &namespace_list, &pod_list);
    }
    for task in tasks {
        task.abort();
    }
}

/// Compiles the cached objects and publishes the rule set if it differs from the one in
/// force (a Pod status update policy does not read changes nothing). Returns whether it did.
fn update(
    sets: &watch::Sender<Option<Arc<PolicySet>>>,
    policies: &[NetworkPolicy],
    namespaces: &[Namespace],
    pods: &[Pod],
) -> bool {
    let set = PolicySet::compile(policies, namespaces, pods);
    let Some(set) = publish(sets, set) else {
        tracing::debug!(
            pods = pods.len(),
            "NetworkPolicy inputs changed; rule set unchanged"
        );
        return false;
    };
    warn_about(&set);
    tracing::info!(
        policies = set.accepted.len(),
        rejected = set.rejected.len(),
        address_conflicts = set.conflicts.len(),
        pods = pods.len(),
        "NetworkPolicy rule set compiled from the API"
    );
    true
}

fn owned<K: Clone>(items: Vec<Arc<K>>) -> Vec<K> {
    items.iter().map(|item| K::clone(item)).collect()
}

/// Keeps what policy reads of a Pod.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    let spec = pod.spec.take().unwrap_or_default();
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(PodStatus {
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        phase: status.phase,
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, ready: &str, rv: &str) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": labels, "resourceVersion": rv},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "nginx"}]},
            "status": {"podIP": "10.244.1.5", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": ready}],
                       "containerStatuses": [{"name": "main", "image": "nginx", "imageID": "",
                                              "ready": ready == "True", "restartCount": 0}]}
        }))
        .unwrap();
        trim_pod(&mut pod);
        pod
    }

    #[test]
    fn a_pod_status_change_policy_does_not_read_publishes_nothing() {
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        let (sets, receiver) = watch::channel(None);
        let web = serde_json::json!({"app": "web"});
        assert!(update(
            &sets,
            std::slice::from_ref(&policy),
            &[],
            &[pod(web.clone(), "False", "1")]
        ));
        let first = receiver.borrow().clone().unwrap();
        // The kubelet reports the Pod ready: a new resourceVersion, nothing policy reads.
        assert!(!update(
            &sets,
            std::slice::from_ref(&policy),
            &[],
            &[pod(web, "True", "2")]
        ));
        assert!(Arc::ptr_eq(&first, &receiver.borrow().clone().unwrap()));
        // A label change that takes the Pod out of the policy is published.
        let other = serde_json::json!({"app": "db"});
        assert!(update(&sets, &[policy], &[], &[pod(other, "True", "3")]));
    }

    #[test]
    fn trimming_keeps_what_policy_reads_and_drops_the_rest() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"},
                         "annotations": {"big": "blob"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                     "containers": [{"name": "main", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP", "hostPort": 8080}]}]},
            "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}], "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let before = crate::policy::PodInfo::from_pod(&pod);
        trim_pod(&mut pod);
        assert_eq!(crate::policy::PodInfo::from_pod(&pod), before);
        assert!(pod.metadata.annotations.is_none() && pod.metadata.managed_fields.is_none());
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.service_account_name.is_none());
        assert!(spec.containers[0].image.is_none() && spec.containers[0].env.is_none());
        assert!(pod.status.as_ref().unwrap().conditions.is_none());
    }
}

//! What the agent's loop shares with the admin API, health and metrics: the latest status,
//! the key status, the policy rule set (and the policy files not used as they are), and the way
//! in for `weft key rotate`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use super::RotateRequest;
use super::admin::{AdminHandler, AdminRequest};
use crate::datapath::stats::DatapathStatus;
use crate::policy::files::RejectedPolicyFile;
use crate::policy::{PolicySet, Verdict};
use crate::rotation::KeyStatus;
use crate::status::Status;

/// What the admin API reads: the latest status, replaced after every recomputation, and the
/// datapath's live counters.
#[derive(Default)]
pub(crate) struct SharedStatus {
    /// `None` while starting (before the own record exists).
    pub(super) status: RwLock<Option<Status>>,
    pub(super) datapath: OnceLock<watch::Receiver<DatapathStatus>>,
    /// This node's own blocks, once known (they do not change while the agent runs).
    pub(super) own_blocks: OnceLock<Vec<ipnetwork::IpNetwork>>,
    /// What the registry took of the own record (readiness waits for the first one).
    pub(super) published: OnceLock<watch::Receiver<super::publisher::Acked>>,
    pub(super) policy: RwLock<Option<Arc<PolicySet>>>,
    /// The policy directory's files whose current content is not used (`--policy-dir` only).
    pub(super) rejected_policy_files: OnceLock<watch::Receiver<Vec<RejectedPolicyFile>>>,
    /// Whether a policy source is configured (readiness then waits for its first rule set).
    pub(super) policy_expected: AtomicBool,
    pub(super) keys: RwLock<Option<KeyStatus>>,
    pub(super) rotate: OnceLock<mpsc::Sender<RotateRequest>>,
    /// Why the last datapath update failed (it is being retried), if it did.
    pub(super) apply_error: RwLock<Option<String>>,
    /// Datapath updates that failed since start (every retry that fails counts).
    pub(super) apply_failures: AtomicU64,
    /// While starting, what the agent waits for (the own Node's podCIDRs, ...).
    pub(super) waiting: RwLock<Option<String>>,
}

impl SharedStatus {
    /// The latest status with the datapath's live counters.
    pub(crate) fn snapshot(&self) -> Result<Status, String> {
        let mut status = self
            .status
            .read()
            .map_err(|_| "status lock poisoned".to_string())?
            .clone()
            .ok_or_else(|| self.starting())?;
        status.datapath = self.datapath.get().map(|d| {
            let mut datapath = d.borrow().clone();
            datapath.apply_error = self.apply_error.read().ok().and_then(|e| e.clone());
            datapath
        });
        if let Some(rejected) = self.rejected_policy_files.get() {
            status.rejected_policy_files = rejected.borrow().clone();
        }
        Ok(status)
    }

    pub(crate) fn set_waiting(&self, reason: Option<&str>) {
        if let Ok(mut slot) = self.waiting.write() {
            *slot = reason.map(String::from);
        }
    }

    /// Why the own record is not built yet.
    fn starting(&self) -> String {
        match self.waiting.read().ok().and_then(|w| w.clone()) {
            Some(reason) => format!("starting: {reason}"),
            None => STARTING.to_string(),
        }
    }

    pub(crate) fn datapath_stopped(&self) -> bool {
        self.datapath
            .get()
            .is_some_and(|d| d.has_changed().is_err())
    }

    /// Ready once the own record has been published, and the registry, the kernel routes and
    /// (if configured) the policy source have each been read, at least once. After that the agent stays ready while the API server is
    /// away: it keeps enforcing its last known mesh and policy.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        // Only the synced flags are needed: no copy of the whole status.
        let synced = self
            .status
            .read()
            .map_err(|_| "status lock poisoned".to_string())?
            .as_ref()
            .map(|status| status.synced)
            .ok_or_else(|| self.starting())?;
        let mut waiting = Vec::new();
        if !synced.registry {
            waiting.push("registry");
        }
        if !synced.routes {
            waiting.push("routes");
        }
        let policy_loaded = self.policy.read().map(|p| p.is_some()).unwrap_or(false);
        if self.policy_expected.load(Ordering::Relaxed) && !policy_loaded {
            waiting.push("policy");
        }
        if let Some(acked) = self.published.get() {
            let acked = acked.borrow();
            if acked.generation == 0 {
                // Peers cannot reach this node before its record is out.
                return Err(match &acked.error {
                    Some((_, error)) => format!("own record not published yet: {error}"),
                    None => "own record not published yet".into(),
                });
            }
        }
        if self.datapath_stopped() {
            return Err("the datapath stopped".into());
        }
        if let Ok(slot) = self.apply_error.read()
            && let Some(error) = slot.as_ref()
        {
            return Err(format!("applying the mesh to the datapath failed: {error}"));
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("not synced yet: {}", waiting.join(", ")))
        }
    }
}

impl AdminHandler for SharedStatus {
    async fn handle(&self, request: AdminRequest) -> Result<serde_json::Value, String> {
        match request {
            AdminRequest::KeyStatus => {
                let keys = self
                    .keys
                    .read()
                    .map_err(|_| "key status lock poisoned".to_string())?
                    .clone()
                    .ok_or(STARTING)?;
                serde_json::to_value(&keys).map_err(|e| e.to_string())
            }
            AdminRequest::KeyRotate { grace_secs } => {
                let sender = self.rotate.get().ok_or(STARTING)?.clone();
                let (reply, answer) = oneshot::channel();
                let request = RotateRequest {
                    grace: std::time::Duration::from_secs(grace_secs),
                    reply,
                };
                let stopping = |_| "the agent is stopping".to_string();
                sender.send(request).await.map_err(stopping)?;
                let keys = answer
                    .await
                    .map_err(|_| "the agent is stopping".to_string())??;
                serde_json::to_value(&keys).map_err(|e| e.to_string())
            }
            AdminRequest::Status => {
                let status = self.snapshot()?;
                serde_json::to_value(&status).map_err(|e| e.to_string())
            }
            AdminRequest::PolicyCheck {
                from,
                to,
                port,
                protocol,
            } => {
                let policy = self
                    .policy
                    .read()
                    .map_err(|_| "policy lock poisoned".to_string())?
                    .clone()
                    .ok_or("no policy source is configured or loaded (--policy-dir)")?;
                let src = policy
                    .pod_ip(&from)
                    .ok_or_else(|| crate::policy::gate::unknown_pod(&policy, &from))?;
                let dst = policy
                    .pod_ip(&to)
                    .ok_or_else(|| crate::policy::gate::unknown_destination_note(&policy, &to))?;
                let protocol = match protocol.to_uppercase().as_str() {
                    // Judged as any protocol without ports: only port-less rules allow it.
                    "ICMP" => crate::policy::Protocol::Other,
                    other => crate::policy::Protocol::parse(Some(other))?,
                };
                let flow = crate::policy::Flow {
                    src,
                    dst,
                    protocol,
                    dst_port: port,
                };
                let verdict = policy.check(&flow);
                let mut text = explain(&policy, &verdict);
                let own_blocks = self.own_blocks.get().map_or(&[][..], Vec::as_slice);
                if both_on_this_node(own_blocks, src, dst) {
                    text.push_str(SAME_NODE_NOTE);
                }
                Ok(serde_json::json!({
                    "allowed": verdict.is_allowed(),
                    "verdict": text,
                }))
            }
        }
    }
}

/// Added to a verdict on two Pods of this node: their traffic never enters weft.
const SAME_NODE_NOTE: &str = "\nnote: both Pods are on this node; weft enforces policy only on \
     traffic it decrypts, so this verdict does not apply to traffic between them (see README)";

/// Whether both addresses lie in this node's own blocks.
fn both_on_this_node(
    own_blocks: &[ipnetwork::IpNetwork],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
) -> bool {
    let local = |ip| own_blocks.iter().any(|block| block.contains(ip));
    local(src) && local(dst)
}

/// The verdict's text; a denial also names the rejected policies of the denied Pod's namespace,
/// which isolate the Pods they select without allowing anything.
fn explain(policy: &PolicySet, verdict: &Verdict<'_>) -> String {
    let mut text = verdict.to_string();
    if let Verdict::Denied { pod, .. } = verdict {
        let namespace = pod.split('/').next().unwrap_or_default();
        for rejected in &policy.rejected {
            if rejected.policy.split('/').next() == Some(namespace) {
                text.push_str(&format!(
                    "\nnote: policy {} is rejected ({}); it still isolates the Pods it selects \
                     and allows nothing",
                    rejected.policy, rejected.reason
                ));
            }
        }
    }
    text
}

const STARTING: &str = "starting: the own record is not built yet (waiting for the registry)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_pods_are_on_this_node_only_if_both_lie_in_its_blocks() {
        let blocks = [
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        let ip = |text: &str| text.parse().unwrap();
        assert!(both_on_this_node(
            &blocks,
            ip("10.244.1.2"),
            ip("10.244.1.3")
        ));
        assert!(both_on_this_node(
            &blocks,
            ip("10.244.1.2"),
            ip("fd00:10:244:1::3")
        ));
        assert!(!both_on_this_node(
            &blocks,
            ip("10.244.1.2"),
            ip("10.244.2.2")
        ));
        assert!(!both_on_this_node(
            &blocks,
            ip("10.244.2.2"),
            ip("10.244.1.2")
        ));
        assert!(!both_on_this_node(&[], ip("10.244.1.2"), ip("10.244.1.3")));
    }

    #[tokio::test]
    async fn policy_check_of_two_pods_of_this_node_carries_the_same_node_note() {
        let pod = |name: &str, ip: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "lab"},
                "status": {"podIP": ip}
            }))
            .unwrap()
        };
        let set = PolicySet::compile(
            &[],
            &[],
            &[
                pod("a", "10.244.1.2"),
                pod("b", "10.244.1.3"),
                pod("r", "10.244.2.2"),
            ],
        );
        let shared = SharedStatus::default();
        *shared.policy.write().unwrap() = Some(Arc::new(set));
        let status: Status = serde_json::from_value(serde_json::json!({
            "version": 1,
            "node": {"name": "n1", "addresses": [], "record": {"blocks": ["10.244.1.0/24"]}},
            "synced": {"registry": true, "routes": true},
            "peers": [], "rejected": [], "skippedRecords": [], "learnedRoutes": 0
        }))
        .unwrap();
        *shared.status.write().unwrap() = Some(status);
        let _ = shared
            .own_blocks
            .set(vec!["10.244.1.0/24".parse().unwrap()]);
        let check = |to: &str| AdminRequest::PolicyCheck {
            from: "lab/a".into(),
            to: to.into(),
            port: 0,
            protocol: "ICMP".into(),
        };
        let local = shared.handle(check("lab/b")).await.unwrap();
        let text = local["verdict"].as_str().unwrap();
        assert!(text.contains("note: both Pods are on this node"), "{text}");
        let remote = shared.handle(check("lab/r")).await.unwrap();
        let text = remote["verdict"].as_str().unwrap();
        assert!(!text.contains("on this node"), "{text}");
        let unknown = shared.handle(check("lab/x")).await.unwrap_err();
        assert_eq!(unknown, "no Pod lab/x is known");
    }

    #[test]
    fn a_denial_names_the_rejected_policies_of_the_pods_namespace() {
        let bad = serde_json::json!({
            "metadata": {"name": "bad", "namespace": "lab"},
            "spec": {"podSelector": {"matchLabels": {"pod": "s"}},
                     "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}
        });
        let c_to_s = crate::policy::Flow {
            src: "10.244.1.2".parse().unwrap(),
            dst: "10.244.2.2".parse().unwrap(),
            protocol: crate::policy::Protocol::Tcp,
            dst_port: 80,
        };
        let set = PolicySet::compile(
            &[serde_json::from_value(bad).unwrap()],
            &[serde_json::from_value(serde_json::json!({"metadata": {"name": "lab"}})).unwrap()],
            &["c", "s"].map(|name| {
                let ip = if name == "c" {
                    "10.244.1.2"
                } else {
                    "10.244.2.2"
                };
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "lab", "labels": {"pod": name}},
                    "status": {"podIP": ip}
                }))
                .unwrap()
            }),
        );
        let verdict = set.check(&c_to_s);
        assert!(!verdict.is_allowed());
        let text = explain(&set, &verdict);
        assert!(
            text.starts_with("denied: lab/s is isolated for ingress"),
            "{text}"
        );
        assert!(
            text.contains(
                "note: policy lab/bad is rejected (endPort 80 is not a port at or above 90)"
            ),
            "{text}"
        );
        let back = set.check(&crate::policy::Flow {
            src: c_to_s.dst,
            dst: c_to_s.src,
            ..c_to_s
        });
        assert_eq!(explain(&set, &back), back.to_string());
    }

    fn synced_status() -> Status {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "node": {"name": "n1", "addresses": ["198.18.0.1"], "record": {}},
            "synced": {"registry": true, "routes": true},
            "peers": [],
            "rejected": [],
            "skippedRecords": [],
            "learnedRoutes": 0,
            "datapath": null
        }))
        .unwrap()
    }

    #[test]
    fn a_failed_datapath_update_makes_the_agent_unready_until_it_is_cleared() {
        let shared = SharedStatus::default();
        *shared.status.write().unwrap() = Some(synced_status());
        assert_eq!(shared.readiness(), Ok(()));
        *shared.apply_error.write().unwrap() = Some("netlink: Network is down".into());
        assert_eq!(
            shared.readiness(),
            Err("applying the mesh to the datapath failed: netlink: Network is down".into())
        );
        *shared.apply_error.write().unwrap() = None;
        assert_eq!(shared.readiness(), Ok(()));
    }

    #[test]
    fn the_agent_is_unready_until_the_registry_took_its_record_once() {
        use super::super::publisher::Acked;
        let shared = SharedStatus::default();
        *shared.status.write().unwrap() = Some(synced_status());
        let (acked, receiver) = tokio::sync::watch::channel(Acked::default());
        let _ = shared.published.set(receiver);
        assert_eq!(
            shared.readiness(),
            Err("own record not published yet".into())
        );
        acked.send_modify(|a| a.error = Some((1, "admission denied the patch".into())));
        assert_eq!(
            shared.readiness(),
            Err("own record not published yet: admission denied the patch".into())
        );
        acked.send_modify(|a| {
            a.generation = 1;
            a.error = None;
        });
        assert_eq!(shared.readiness(), Ok(()));
        // A later record failing to go out keeps the agent ready: peers know the last one.
        acked.send_modify(|a| a.error = Some((2, "the API server is away".into())));
        assert_eq!(shared.readiness(), Ok(()));
    }

    #[test]
    fn status_shows_why_the_datapath_update_failed_until_it_applies() {
        let shared = SharedStatus::default();
        *shared.status.write().unwrap() = Some(synced_status());
        let (_sender, receiver) = tokio::sync::watch::channel(DatapathStatus::default());
        let _ = shared.datapath.set(receiver);
        *shared.apply_error.write().unwrap() = Some("netlink: No such device".into());
        let status = shared.snapshot().unwrap();
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["datapath"]["applyError"], "netlink: No such device");
        assert!(
            status
                .to_table()
                .contains("apply error: netlink: No such device (retrying)"),
            "{}",
            status.to_table()
        );
        *shared.apply_error.write().unwrap() = None;
        let json = serde_json::to_value(shared.snapshot().unwrap()).unwrap();
        assert_eq!(json["datapath"]["applyError"], serde_json::Value::Null);
    }
}

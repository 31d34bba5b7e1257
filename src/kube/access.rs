//! Every Kubernetes API call weft makes, in one table. `deploy/clusterrole.yaml` grants
//! exactly this (a test compares them), so the ClusterRole never drifts from the code.

/// One kind of access: API group ("" is core), resource, verbs, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "nodes",
        verbs: &["get", "list", "watch", "patch"],
        why: "read the own Node's addresses and podCIDRs (get), learn every node's record \
              (list, watch), publish the own weft.dev/node annotation (patch; the \
              ValidatingAdmissionPolicy limits it to the own Node and that one key)",
    },
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "NetworkPolicy needs Pod labels, IPs and named container ports",
    },
    ApiAccess {
        group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        why: "NetworkPolicy namespaceSelectors match Namespace labels",
    },
    ApiAccess {
        group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["list", "watch"],
        why: "the policies enforced on decrypted traffic",
    },
];

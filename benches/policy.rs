//! The per-packet policy cost: a conntrack hit, and a full check (conntrack miss) with 10, 100
//! and 1,000 NetworkPolicies in the cluster, and with one policy of 1,000 ipBlocks; and the
//! whole gate a decrypted packet goes through, hit and miss, with the same rule sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft::policy::conntrack::{Conntrack, FlowKey, Sent, Timeouts};
use weft::policy::gate::{Admission, PolicyGate};
use weft::policy::{Flow, PolicySet, Protocol};

fn labels(app: usize) -> BTreeMap<String, String> {
    [("app".to_string(), format!("app{app}"))]
        .into_iter()
        .collect()
}

/// 10 namespaces, `ns0` to `ns9`.
fn namespaces() -> Vec<Namespace> {
    (0..10)
        .map(|n| Namespace {
            metadata: ObjectMeta {
                name: Some(format!("ns{n}")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
        .collect()
}

/// 1,000 Pods: `pod<i>` in namespace `ns<i % 10>`, labelled `app: app<i % 100>`.
fn pods() -> Vec<Pod> {
    (0..1000)
        .map(|i| Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod{i}")),
                namespace: Some(format!("ns{}", i % 10)),
                labels: Some(labels(i % 100)),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: Some(
                    IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]).to_string(),
                ),
                ..PodStatus::default()
            }),
            ..Pod::default()
        })
        .collect()
}

/// `policies` policies in 10 namespaces, each selecting one app and allowing one other app on
/// port 80; 1,000 Pods.
fn world(policies: usize) -> PolicySet {
    let select = |app: usize| LabelSelector {
        match_labels: Some(labels(app)),
        ..LabelSelector::default()
    };
    let policies: Vec<NetworkPolicy> = (0..policies)
        .map(|p| NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("policy{p}")),
                namespace: Some(format!("ns{}", p % 10)),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(select(p % 100)),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(select((p + 1) % 100)),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(80)),
                        ..NetworkPolicyPort::default()
                    }]),
                }]),
                ..NetworkPolicySpec::default()
            }),
        })
        .collect();
    PolicySet::compile(&policies, &namespaces(), &pods())
}

/// One policy selecting `app1` (in `ns1`) and allowing ingress from `blocks` ipBlocks, each a
/// /24 of 172.16.0.0/12 less a /28 in it; none holds a Pod. 1,000 Pods.
fn world_of_ip_blocks(blocks: usize) -> PolicySet {
    let from = (0..blocks)
        .map(|b| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("172.{}.{}.0/24", 16 + b / 256, b % 256),
                except: Some(vec![format!("172.{}.{}.16/28", 16 + b / 256, b % 256)]),
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("ip-blocks".into()),
            namespace: Some("ns1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(1)),
                ..LabelSelector::default()
            }),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: None,
            }]),
            ..NetworkPolicySpec::default()
        }),
    };
    let set = PolicySet::compile(&[policy], &namespaces(), &pods());
    assert!(set.rejected.is_empty(), "{:?}", set.rejected);
    set
}

fn bench(c: &mut Criterion) {
    // pod0 (ns0, app0) -> pod1 (ns1, app1): app1 is selected by policies when there are enough.
    let flow = Flow {
        src: "10.244.0.1".parse().unwrap(),
        dst: "10.244.0.2".parse().unwrap(),
        protocol: Protocol::Tcp,
        dst_port: 80,
    };
    for policies in [10, 100, 1000] {
        let set = world(policies);
        c.bench_function(
            &format!("policy check, conntrack miss, {policies} policies"),
            |b| b.iter(|| black_box(set.check(black_box(&flow))).is_allowed()),
        );
    }
    // A Pod selected by a policy of 1,000 ipBlocks, from a Pod in none of them: a denial, so
    // every block is ruled out.
    let set = world_of_ip_blocks(1000);
    assert!(!set.check(&flow).is_allowed());
    let from_a_block = Flow {
        src: "172.19.231.1".parse().unwrap(),
        ..flow
    };
    assert!(set.check(&from_a_block).is_allowed());
    c.bench_function(
        "policy check, conntrack miss, 1,000 ipblocks (denied)",
        |b| b.iter(|| black_box(set.check(black_box(&flow))).is_allowed()),
    );
    let mut conntrack = Conntrack::new(NonZeroUsize::new(65536).unwrap(), Timeouts::default());
    let now = Instant::now();
    let key = FlowKey {
        protocol: 6,
        src: flow.src,
        dst: flow.dst,
        src_port: 40000,
        dst_port: 80,
    };
    for port in 0..10_000u16 {
        conntrack.record_outbound(
            FlowKey {
                src_port: port,
                ..key.reversed()
            },
            Sent::Opening,
            1,
            now,
        );
    }
    conntrack.record_outbound(key.reversed(), Sent::Opening, 1, now);
    c.bench_function("conntrack hit", |b| {
        b.iter(|| black_box(conntrack.lookup_inbound(black_box(&key), now)))
    });

    // The whole decision on a decrypted packet, as the datapath makes it: a reply to a flow
    // opened here (conntrack hit), and a packet of no tracked flow (miss: the policy check,
    // here a denial, so every iteration misses again).
    for policies in [10, 100, 1000] {
        let capacity = NonZeroUsize::new(65536).unwrap();
        let mut gate = PolicyGate::new(Conntrack::new(capacity, Timeouts::default()), true);
        gate.set_policy(std::sync::Arc::new(world(policies)));
        gate.record_outbound(key.reversed(), Sent::Opening, now);
        assert!(matches!(gate.admit(&key, now), Admission::TrackedReply));
        c.bench_function(&format!("gate, tracked reply, {policies} policies"), |b| {
            b.iter(|| matches!(gate.admit(black_box(&key), now), Admission::TrackedReply))
        });
        let miss = FlowKey {
            src_port: 50000,
            ..key
        };
        assert!(matches!(gate.admit(&miss, now), Admission::Denied { .. }));
        c.bench_function(&format!("gate, miss, {policies} policies"), |b| {
            b.iter(|| matches!(gate.admit(black_box(&miss), now), Admission::Denied { .. }))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

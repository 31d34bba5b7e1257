//! The admission policy in deploy/admission-policy.yaml, evaluated. Every matchCondition
//! and validation expression is read from the file and run by a CEL interpreter (the `cel`
//! crate) on Node updates, with `object`, `oldObject` and `request` bound the way the API
//! server binds them for a ValidatingAdmissionPolicy: the Nodes and the AdmissionRequest as
//! plain JSON values (maps, lists, strings, int64s). Each case says whether the update is
//! admitted, skipped (a matchCondition is false: the policy does not apply), or which of
//! the validations deny it.
//!
//! Kubernetes' own rules for the outcome are followed: a false matchCondition skips the
//! policy; an error evaluating any expression denies the request (the policy's
//! failurePolicy is Fail, checked below); every validation is evaluated and each false one
//! is a reason for the denial.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::json;
use weft::kube::node::annotation_patch;
use weft::record::{ANNOTATION_KEY, NodeRecord};
use weft_keys::PrivateKey;

/// The node the agent's Pod runs on, named in its token.
const OWN: &str = "n1";
/// Another node.
const OTHER: &str = "n2";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The policy's validations, each known by a part of its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    OwnNode,
    Spec,
    Labels,
    Annotations,
    Metadata,
}

impl Rule {
    const ALL: [Rule; 5] = [
        Rule::OwnNode,
        Rule::Spec,
        Rule::Labels,
        Rule::Annotations,
        Rule::Metadata,
    ];

    fn message_part(self) -> &'static str {
        match self {
            Rule::OwnNode => "only the Node its Pod runs on",
            Rule::Spec => "a Node's spec",
            Rule::Labels => "a Node's labels",
            Rule::Annotations => "may change only the weft.dev/node annotation",
            Rule::Metadata => "a Node's metadata",
        }
    }
}

/// One compiled expression and where it came from.
struct Expression {
    source: String,
    program: Program,
}

struct Validation {
    rule: Rule,
    message: String,
    expression: Expression,
}

struct Policy {
    env: Arc<Env>,
    match_conditions: Vec<(String, Expression)>,
    validations: Vec<Validation>,
}

/// What the API server makes of a request.
#[derive(Debug, PartialEq)]
enum Decision {
    /// A matchCondition is false: the policy does not apply.
    Skipped,
    Admitted,
    Denied(Vec<Denial>),
}

#[derive(Debug, PartialEq)]
struct Denial {
    /// The validation that denied, None for an error in a matchCondition.
    rule: Option<Rule>,
    message: String,
    /// Set when the expression did not evaluate to a bool (failurePolicy Fail denies).
    error: Option<String>,
}

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Skipped,
    Admitted,
    /// Denied by exactly these validations, each evaluating to false (not to an error).
    Denied(&'static [Rule]),
    /// Denied because this validation could not be evaluated (failurePolicy Fail).
    DeniedByError(Rule),
}

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The only document of `kind` in a deploy/ file, as its k8s-openapi type.
fn document<T: DeserializeOwned>(file: &str, kind: &str) -> T {
    let text = deploy_file(file);
    let mut found: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    serde_yaml_ng::from_value(found.remove(0)).unwrap()
}

/// The user name of the agent's service account, as the API server reports it.
fn agent_user() -> String {
    let sa: ServiceAccount = document("serviceaccount.yaml", "ServiceAccount");
    format!(
        "system:serviceaccount:{}:{}",
        sa.metadata.namespace.unwrap(),
        sa.metadata.name.unwrap()
    )
}

impl Policy {
    fn load() -> Policy {
        let policy: ValidatingAdmissionPolicy =
            document("admission-policy.yaml", "ValidatingAdmissionPolicy");
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.failure_policy.as_deref(),
            Some("Fail"),
            "this test treats an evaluation error as a denial"
        );
        let env = Arc::new(Env::stdlib());
        let compile = |source: &str| Expression {
            source: source.to_string(),
            program: env
                .compile(source)
                .unwrap_or_else(|e| panic!("cannot compile {source:?}: {e}")),
        };
        let match_conditions: Vec<(String, Expression)> = spec
            .match_conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, compile(&c.expression)))
            .collect();
        assert!(
            !match_conditions.is_empty(),
            "the policy must be limited to the agent's requests"
        );
        let validations: Vec<Validation> = spec
            .validations
            .unwrap()
            .into_iter()
            .map(|v| {
                assert!(
                    v.message_expression.is_none(),
                    "a messageExpression is not evaluated here"
                );
                let message = v.message.expect("every validation says why it denied");
                let rules: Vec<Rule> = Rule::ALL
                    .into_iter()
                    .filter(|r| message.contains(r.message_part()))
                    .collect();
                assert_eq!(
                    rules.len(),
                    1,
                    "a validation this test does not know (or knows twice): {message:?}"
                );
                Validation {
                    rule: rules[0],
                    message,
                    expression: compile(&v.expression),
                }
            })
            .collect();
        let rules: BTreeSet<Rule> = validations.iter().map(|v| v.rule).collect();
        assert_eq!(
            rules.len(),
            Rule::ALL.len(),
            "every rule is one validation of the policy"
        );
        Policy {
            env,
            match_conditions,
            validations,
        }
    }

    fn decide(
        &self,
        request: &serde_json::Value,
        old: &serde_json::Value,
        new: &serde_json::Value,
    ) -> Decision {
        let mut context = Context::with_env(Arc::clone(&self.env));
        context.add_variable_from_value("request", cel_value(request));
        context.add_variable_from_value("oldObject", cel_value(old));
        context.add_variable_from_value("object", cel_value(new));
        let evaluate = |e: &Expression| match e.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("{:?} gave {other:?}, not a bool", e.source)),
            Err(error) => Err(format!("{:?} failed: {error}", e.source)),
        };

        // Any false matchCondition skips the policy; otherwise an error denies.
        let mut errors = Vec::new();
        for (name, condition) in &self.match_conditions {
            match evaluate(condition) {
                Ok(true) => {}
                Ok(false) => return Decision::Skipped,
                Err(error) => errors.push(Denial {
                    rule: None,
                    message: format!("matchCondition {name}"),
                    error: Some(error),
                }),
            }
        }
        if !errors.is_empty() {
            return Decision::Denied(errors);
        }

        let denials: Vec<Denial> = self
            .validations
            .iter()
            .filter_map(|v| {
                let error = match evaluate(&v.expression) {
                    Ok(true) => return None,
                    Ok(false) => None,
                    Err(error) => Some(error),
                };
                Some(Denial {
                    rule: Some(v.rule),
                    message: v.message.clone(),
                    error,
                })
            })
            .collect();
        if denials.is_empty() {
            Decision::Admitted
        } else {
            Decision::Denied(denials)
        }
    }
}

/// A JSON value as the CEL value the API server makes of it: JSON numbers that are
/// integers become int64, others double.
fn cel_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap()),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(cel_value).collect()))
        }
        serde_json::Value::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), cel_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A Node as the API server holds it: labels and annotations the kubelet and controllers
/// set, a managedFields entry, the Pod CIDRs, no weft.dev/node annotation yet.
fn node(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("6f1d2c3e-0000-4000-8000-00000000000{}", &name[1..]),
            "resourceVersion": "1000",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node-role.kubernetes.io/worker": ""
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            },
            "managedFields": [{
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:kubernetes.io/hostname": {}}}}
            }]
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
            "providerID": format!("kind://docker/weft/{name}")
        },
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status"
            }]
        }
    })
}

/// The weft.dev/node annotation of a record with key `n`, as the agent writes it.
fn record(n: u8) -> String {
    record_of(n).to_json()
}

fn record_of(n: u8) -> NodeRecord {
    NodeRecord {
        public_key: PrivateKey::from_bytes([n; 32]).public_key(),
        next_public_key: None,
        endpoint: Some("192.0.2.1:51820".parse().unwrap()),
        blocks: vec!["10.244.1.0/24".parse().unwrap()],
        key_epoch: 0,
    }
}

fn with(base: &serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut node = base.clone();
    edit(&mut node);
    node
}

fn metadata(node: &mut serde_json::Value) -> &mut serde_json::Map<String, serde_json::Value> {
    node["metadata"].as_object_mut().unwrap()
}

fn without_labels_and_annotations(base: &serde_json::Value) -> serde_json::Value {
    with(base, |n| {
        metadata(n).remove("labels");
        metadata(n).remove("annotations");
    })
}

/// The labels or annotations map of a Node, created if it has none.
fn map<'a>(
    node: &'a mut serde_json::Value,
    field: &str,
) -> &'a mut serde_json::Map<String, serde_json::Value> {
    metadata(node)
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .unwrap()
}

fn set(node: &mut serde_json::Value, field: &str, key: &str, value: &str) {
    map(node, field).insert(key.to_string(), json!(value));
}

fn unset(node: &mut serde_json::Value, field: &str, key: &str) {
    map(node, field).remove(key);
}

/// A Node with the weft.dev/node annotation set to record `n`.
fn published(base: &serde_json::Value, n: u8) -> serde_json::Value {
    with(base, |node| {
        set(node, "annotations", ANNOTATION_KEY, &record(n))
    })
}

/// What every write does besides the change itself: a new resourceVersion, and the
/// writer's managedFields entry.
fn written(node: &mut serde_json::Value) {
    let meta = metadata(node);
    let version: u64 = meta["resourceVersion"].as_str().unwrap().parse().unwrap();
    meta.insert("resourceVersion".into(), json!((version + 1).to_string()));
    meta["managedFields"].as_array_mut().unwrap().push(json!({
        "manager": "weft",
        "operation": "Apply",
        "apiVersion": "v1",
        "time": "2026-01-02T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:weft.dev/node": {}}}}
    }));
}

/// `old` changed by `edit`, written as a real write is.
fn update(old: &serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    with(old, |node| {
        edit(node);
        written(node);
    })
}

/// `old` with a JSON merge patch (RFC 7386) applied, as the API server applies the agent's
/// patch, and written.
fn merge_patched(old: &serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        let Some(fields) = patch.as_object() else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let target = target.as_object_mut().unwrap();
        for (key, value) in fields {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(json!(null)), value);
            }
        }
    }
    update(old, |node| merge(node, patch))
}

/// The AdmissionRequest for an UPDATE of Node `name` by `username`, with `extra` as the
/// user's extra (None: no extra at all).
fn request(username: &str, extra: Option<serde_json::Value>, name: &str) -> serde_json::Value {
    let mut user = json!({
        "username": username,
        "uid": "0b6c6a84-1111-4000-8000-000000000001",
        "groups": ["system:serviceaccounts", "system:authenticated"]
    });
    if let Some(extra) = extra {
        user["extra"] = extra;
    }
    json!({
        "uid": "7a1e8d2b-2222-4000-8000-000000000002",
        "kind": {"group": "", "version": "v1", "kind": "Node"},
        "resource": {"group": "", "version": "v1", "resource": "nodes"},
        "requestKind": {"group": "", "version": "v1", "kind": "Node"},
        "requestResource": {"group": "", "version": "v1", "resource": "nodes"},
        "name": name,
        "operation": "UPDATE",
        "userInfo": user,
        "options": {"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "weft"},
        "dryRun": false
    })
}

/// The extra of a Pod-bound service account token of a Pod on `node`.
fn token_extra(node: &str) -> serde_json::Value {
    json!({
        "authentication.kubernetes.io/credential-id": ["JTI=3c1b7a5e-3333-4000-8000-000000000003"],
        NODE_NAME_EXTRA: [node],
        "authentication.kubernetes.io/node-uid": ["6f1d2c3e-0000-4000-8000-000000000001"],
        "authentication.kubernetes.io/pod-name": ["weft-x7k2p"],
        "authentication.kubernetes.io/pod-uid": ["9d4e0f1a-4444-4000-8000-000000000004"]
    })
}

/// The agent on node OWN.
fn agent(name: &str) -> serde_json::Value {
    request(&agent_user(), Some(token_extra(OWN)), name)
}

struct Case {
    name: &'static str,
    request: serde_json::Value,
    old: serde_json::Value,
    new: serde_json::Value,
    expect: Expect,
}

fn case(
    name: &'static str,
    request: serde_json::Value,
    old: serde_json::Value,
    new: serde_json::Value,
    expect: Expect,
) -> Case {
    Case {
        name,
        request,
        old,
        new,
        expect,
    }
}

/// A case where the agent on node OWN updates its own Node.
fn own(name: &'static str, old: serde_json::Value, new: serde_json::Value, expect: Expect) -> Case {
    case(name, agent(OWN), old, new, expect)
}

/// Fails unless the fixture is a Node whose every field k8s-openapi knows (it drops the
/// ones it does not), so that no case tests a misspelled field.
fn assert_well_formed(case: &str, node: &serde_json::Value) {
    let typed: Node =
        serde_json::from_value(node.clone()).unwrap_or_else(|e| panic!("{case}: not a Node: {e}"));
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        node,
        "{case}: a field of the fixture is not a Node field"
    );
}

fn outcome_matches(decision: &Decision, expect: Expect) -> bool {
    match (decision, expect) {
        (Decision::Skipped, Expect::Skipped) | (Decision::Admitted, Expect::Admitted) => true,
        (Decision::Denied(denials), Expect::Denied(rules)) => {
            let got: BTreeSet<Option<Rule>> = denials.iter().map(|d| d.rule).collect();
            let want: BTreeSet<Option<Rule>> = rules.iter().copied().map(Some).collect();
            got == want && denials.iter().all(|d| d.error.is_none())
        }
        (Decision::Denied(denials), Expect::DeniedByError(rule)) => {
            denials.len() == 1 && denials[0].rule == Some(rule) && denials[0].error.is_some()
        }
        _ => false,
    }
}

/// Evaluates every case and fails with all the ones that went otherwise.
fn check(cases: Vec<Case>) {
    let policy = Policy::load();
    let mut wrong = Vec::new();
    for c in &cases {
        assert_well_formed(c.name, &c.old);
        assert_well_formed(c.name, &c.new);
        let decision = policy.decide(&c.request, &c.old, &c.new);
        if !outcome_matches(&decision, c.expect) {
            wrong.push(format!(
                "{}: expected {:?}, got {decision:#?}",
                c.name, c.expect
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases went otherwise:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_agent_may_publish_add_change_and_remove_its_own_record() {
    let bare = node(OWN);
    let with_record = published(&bare, 1);
    let no_annotations = with(&bare, |n| {
        metadata(n).remove("annotations");
    });
    let only_record = published(&no_annotations, 1);
    let no_labels = with(&with_record, |n| {
        metadata(n).remove("labels");
    });
    let bare_metadata = without_labels_and_annotations(&bare);
    let rv = |n: &serde_json::Value| {
        n["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    check(vec![
        own(
            "the agent's own patch publishing its first record",
            bare.clone(),
            merge_patched(&bare, &annotation_patch(&record_of(1), Some(&rv(&bare)))),
            Expect::Admitted,
        ),
        own(
            "the agent's own patch replacing its record",
            with_record.clone(),
            merge_patched(
                &with_record,
                &annotation_patch(&record_of(2), Some(&rv(&with_record))),
            ),
            Expect::Admitted,
        ),
        own(
            "the agent's own patch on a Node without labels or annotations",
            bare_metadata.clone(),
            merge_patched(&bare_metadata, &annotation_patch(&record_of(1), None)),
            Expect::Admitted,
        ),
        own(
            "a Node without labels or annotations, unchanged",
            bare_metadata.clone(),
            bare_metadata.clone(),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node added",
            bare.clone(),
            update(&bare, |n| set(n, "annotations", ANNOTATION_KEY, &record(1))),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node changed",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "annotations", ANNOTATION_KEY, &record(2))
            }),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node removed",
            with_record.clone(),
            update(&with_record, |n| unset(n, "annotations", ANNOTATION_KEY)),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node changed, resourceVersion and managedFields as they were",
            with_record.clone(),
            published(&with_record, 2),
            Expect::Admitted,
        ),
        own(
            "nothing changed",
            with_record.clone(),
            with_record.clone(),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node added to a Node without annotations",
            no_annotations.clone(),
            update(&no_annotations, |n| {
                set(n, "annotations", ANNOTATION_KEY, &record(1))
            }),
            Expect::Admitted,
        ),
        own(
            "the only annotation, weft.dev/node, removed with the annotations map",
            only_record.clone(),
            update(&only_record, |n| {
                metadata(n).remove("annotations");
            }),
            Expect::Admitted,
        ),
        own(
            "weft.dev/node changed on a Node without labels",
            no_labels.clone(),
            update(&no_labels, |n| {
                set(n, "annotations", ANNOTATION_KEY, &record(2))
            }),
            Expect::Admitted,
        ),
        own(
            "an empty labels map where there was none (the same labels: none)",
            no_labels.clone(),
            update(&no_labels, |n| {
                metadata(n).insert("labels".into(), json!({}));
                set(n, "annotations", ANNOTATION_KEY, &record(2));
            }),
            Expect::Admitted,
        ),
    ]);
}

#[test]
fn the_agent_may_change_only_the_node_its_token_names() {
    let other = published(&node(OTHER), 1);
    let own_node = published(&node(OWN), 1);
    let record_changed = |base: &serde_json::Value| {
        update(base, |n| set(n, "annotations", ANNOTATION_KEY, &record(2)))
    };
    let user = agent_user();
    let without_node_name = with(&token_extra(OWN), |extra| {
        extra.as_object_mut().unwrap().remove(NODE_NAME_EXTRA);
    });
    check(vec![
        case(
            "another Node's weft.dev/node",
            agent(OTHER),
            other.clone(),
            record_changed(&other),
            Expect::Denied(&[Rule::OwnNode]),
        ),
        case(
            "another Node's label",
            agent(OTHER),
            other.clone(),
            update(&other, |n| set(n, "labels", "example.com/x", "y")),
            Expect::Denied(&[Rule::OwnNode, Rule::Labels]),
        ),
        case(
            "a token without user extra",
            request(&user, None, OWN),
            own_node.clone(),
            record_changed(&own_node),
            Expect::Denied(&[Rule::OwnNode]),
        ),
        case(
            "a token whose extra does not name the node",
            request(&user, Some(without_node_name), OWN),
            own_node.clone(),
            record_changed(&own_node),
            Expect::Denied(&[Rule::OwnNode]),
        ),
        case(
            "a token whose extra names no node at all (an empty list)",
            request(&user, Some(json!({NODE_NAME_EXTRA: []})), OWN),
            own_node.clone(),
            record_changed(&own_node),
            Expect::DeniedByError(Rule::OwnNode),
        ),
    ]);
}

#[test]
fn the_agent_may_not_touch_other_annotations() {
    let with_record = published(&node(OWN), 1);
    let no_annotations = with(&node(OWN), |n| {
        metadata(n).remove("annotations");
    });
    let bare_metadata = without_labels_and_annotations(&node(OWN));
    let denied = Expect::Denied(&[Rule::Annotations]);
    check(vec![
        own(
            "another annotation added",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "annotations", "example.com/owner", "weft")
            }),
            denied,
        ),
        own(
            "another annotation added along with weft.dev/node",
            node(OWN),
            update(&node(OWN), |n| {
                set(n, "annotations", ANNOTATION_KEY, &record(1));
                set(n, "annotations", "example.com/owner", "weft");
            }),
            denied,
        ),
        own(
            "an annotation whose key starts like weft.dev/node added",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "annotations", "weft.dev/node-extra", "x")
            }),
            denied,
        ),
        own(
            "another annotation changed",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "annotations", "node.alpha.kubernetes.io/ttl", "15")
            }),
            denied,
        ),
        own(
            "another annotation removed",
            with_record.clone(),
            update(&with_record, |n| {
                unset(n, "annotations", "node.alpha.kubernetes.io/ttl")
            }),
            denied,
        ),
        own(
            "every annotation but weft.dev/node removed",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).insert("annotations".into(), json!({ANNOTATION_KEY: record(1)}));
            }),
            denied,
        ),
        own(
            "the annotations map removed",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).remove("annotations");
            }),
            denied,
        ),
        own(
            "an annotation added to a Node without labels or annotations",
            bare_metadata.clone(),
            update(&bare_metadata, |n| {
                set(n, "annotations", "example.com/owner", "weft")
            }),
            denied,
        ),
        own(
            "an annotation added to a Node without annotations",
            no_annotations.clone(),
            update(&no_annotations, |n| {
                set(n, "annotations", "example.com/owner", "weft")
            }),
            denied,
        ),
    ]);
}

#[test]
fn the_agent_may_not_touch_labels() {
    let with_record = published(&node(OWN), 1);
    let no_labels = with(&with_record, |n| {
        metadata(n).remove("labels");
    });
    let bare_metadata = without_labels_and_annotations(&node(OWN));
    let denied = Expect::Denied(&[Rule::Labels]);
    check(vec![
        own(
            "a label added to a Node without labels or annotations",
            bare_metadata.clone(),
            update(&bare_metadata, |n| set(n, "labels", "example.com/x", "y")),
            denied,
        ),
        own(
            "a label added",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "labels", "node-role.kubernetes.io/control-plane", "")
            }),
            denied,
        ),
        own(
            "a label changed",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "labels", "kubernetes.io/os", "windows")
            }),
            denied,
        ),
        own(
            "a label emptied",
            with_record.clone(),
            update(&with_record, |n| {
                set(n, "labels", "kubernetes.io/hostname", "")
            }),
            denied,
        ),
        own(
            "a label removed",
            with_record.clone(),
            update(&with_record, |n| {
                unset(n, "labels", "node-role.kubernetes.io/worker")
            }),
            denied,
        ),
        own(
            "a label removed along with a change of weft.dev/node",
            with_record.clone(),
            update(&with_record, |n| {
                unset(n, "labels", "node-role.kubernetes.io/worker");
                set(n, "annotations", ANNOTATION_KEY, &record(2));
            }),
            denied,
        ),
        own(
            "the labels map removed",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).remove("labels");
            }),
            denied,
        ),
        own(
            "a label added to a Node without labels",
            no_labels.clone(),
            update(&no_labels, |n| set(n, "labels", "example.com/x", "y")),
            denied,
        ),
    ]);
}

#[test]
fn the_agent_may_not_touch_the_spec() {
    let with_record = published(&node(OWN), 1);
    let tainted = with(&with_record, |n| {
        n["spec"]["taints"] = json!([{"key": "example.com/drain", "effect": "NoSchedule"}]);
    });
    let denied = Expect::Denied(&[Rule::Spec]);
    check(vec![
        own(
            "podCIDRs changed",
            with_record.clone(),
            update(&with_record, |n| {
                n["spec"]["podCIDRs"] = json!(["10.244.9.0/24", "fd00:10:244:1::/64"]);
            }),
            denied,
        ),
        own(
            "an IPv6 Pod CIDR added",
            with_record.clone(),
            update(&with_record, |n| {
                n["spec"]["podCIDRs"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("fd00:10:245:1::/64"));
            }),
            denied,
        ),
        own(
            "podCIDR changed",
            with_record.clone(),
            update(&with_record, |n| {
                n["spec"]["podCIDR"] = json!("10.244.9.0/24")
            }),
            denied,
        ),
        own(
            "a taint added",
            with_record.clone(),
            update(&with_record, |n| {
                n["spec"]["taints"] = json!([{"key": "example.com/drain", "effect": "NoSchedule"}]);
            }),
            denied,
        ),
        own(
            "a taint removed",
            tainted.clone(),
            update(&tainted, |n| {
                n["spec"].as_object_mut().unwrap().remove("taints");
            }),
            denied,
        ),
        own(
            "a taint's effect changed",
            tainted.clone(),
            update(&tainted, |n| {
                n["spec"]["taints"][0]["effect"] = json!("NoExecute");
            }),
            denied,
        ),
        own(
            "made unschedulable",
            with_record.clone(),
            update(&with_record, |n| n["spec"]["unschedulable"] = json!(true)),
            denied,
        ),
        own(
            "providerID changed",
            with_record.clone(),
            update(&with_record, |n| {
                n["spec"]["providerID"] = json!("aws:///eu-west-1a/i-0")
            }),
            denied,
        ),
    ]);
}

#[test]
fn the_agent_may_not_touch_other_metadata() {
    let with_record = published(&node(OWN), 1);
    let finalized = with(&with_record, |n| {
        metadata(n).insert("finalizers".into(), json!(["example.com/keep"]));
    });
    let owner = json!([{
        "apiVersion": "v1",
        "kind": "Namespace",
        "name": "weft-system",
        "uid": "5b0c9e7d-5555-4000-8000-000000000005"
    }]);
    let denied = Expect::Denied(&[Rule::Metadata]);
    check(vec![
        own(
            "a finalizer added",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).insert("finalizers".into(), json!(["example.com/keep"]));
            }),
            denied,
        ),
        own(
            "a finalizer added to one there was",
            finalized.clone(),
            update(&finalized, |n| {
                metadata(n).insert(
                    "finalizers".into(),
                    json!(["example.com/keep", "weft.dev/x"]),
                );
            }),
            denied,
        ),
        own(
            "a finalizer removed",
            finalized.clone(),
            update(&finalized, |n| {
                metadata(n).remove("finalizers");
            }),
            denied,
        ),
        own(
            "an ownerReference added",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).insert("ownerReferences".into(), owner.clone());
            }),
            denied,
        ),
        own(
            "an ownerReference added along with a change of weft.dev/node",
            with_record.clone(),
            update(&with_record, |n| {
                metadata(n).insert("ownerReferences".into(), owner.clone());
                set(n, "annotations", ANNOTATION_KEY, &record(2));
            }),
            denied,
        ),
    ]);
}

#[test]
fn the_policy_does_not_apply_to_anyone_else() {
    let with_record = published(&node(OWN), 1);
    let relabeled = update(&with_record, |n| {
        set(n, "labels", "example.com/x", "y");
        n["spec"]["unschedulable"] = json!(true);
    });
    let kubelet_extra = json!({NODE_NAME_EXTRA: [OWN]});
    let agent_elsewhere = agent_user().replace(":weft-system:", ":other:");
    assert_ne!(agent_elsewhere, agent_user());
    check(vec![
        case(
            "the kubelet of the Node",
            request(&format!("system:node:{OWN}"), Some(kubelet_extra), OWN),
            with_record.clone(),
            relabeled.clone(),
            Expect::Skipped,
        ),
        case(
            "an administrator",
            request("kubernetes-admin", None, OWN),
            with_record.clone(),
            relabeled.clone(),
            Expect::Skipped,
        ),
        case(
            "a service account of the same name in another namespace",
            request(&agent_elsewhere, Some(token_extra(OWN)), OWN),
            with_record.clone(),
            relabeled.clone(),
            Expect::Skipped,
        ),
        case(
            "the agent itself (the same change)",
            agent(OWN),
            with_record.clone(),
            relabeled,
            Expect::Denied(&[Rule::Labels, Rule::Spec]),
        ),
    ]);
}

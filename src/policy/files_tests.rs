use super::*;

/// A file holding one NetworkPolicy `namespace/name` selecting every Pod of it.
fn policy(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: x}}\nspec: {{podSelector: {{}}}}\n"
    )
}

fn pod(name: &str, ip: &str) -> String {
    format!("kind: Pod\nmetadata: {{name: {name}, namespace: x}}\nstatus: {{podIP: {ip}}}\n")
}

fn good(text: &str) -> FileRead {
    let read = parse_file(text);
    assert!(matches!(read, FileRead::Good(_)), "{read:?}");
    read
}

/// Parses `text`, which must be a bad file for a reason containing `expected`.
fn parse_bad(text: &str, expected: &str) -> FileRead {
    let read = parse_file(text);
    let FileRead::Bad(reason) = &read else {
        panic!("{text:?} was taken: {read:?}");
    };
    assert!(reason.contains(expected), "{reason}");
    read
}

/// Files seen once: a.yaml and b.yaml, each good with one policy (x/a, x/b).
fn a_and_b_seen() -> PolicyFiles {
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", good(&policy("b"))),
    ]));
    files_seen
}

fn bad(reason: &str) -> FileRead {
    FileRead::Bad(reason.into())
}

fn files(reads: Vec<(&str, FileRead)>) -> DirRead {
    DirRead::Files(reads.into_iter().map(|(f, r)| (f.to_string(), r)).collect())
}

/// The policies (`namespace/name`) a merge puts in force.
fn in_force(merged: &Merged) -> Vec<String> {
    merged.objects.compile().accepted
}

fn rejected(merged: &Merged) -> Vec<(&str, InForce)> {
    merged
        .rejected
        .iter()
        .map(|r| (r.file.as_str(), r.in_force))
        .collect()
}

#[test]
fn a_file_that_turns_bad_keeps_its_last_good_content_until_fixed() {
    let mut files_seen = PolicyFiles::default();
    let first = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", good(&policy("b"))),
    ]));
    assert_eq!(in_force(&first), ["x/a", "x/b"]);
    assert!(first.rejected.is_empty());

    // b turns bad: its last good content stays; a's new content is used.
    let broken = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a2"))),
        (
            "b.yaml",
            bad("document 0: did not find expected node content"),
        ),
    ]));
    assert_eq!(in_force(&broken), ["x/a2", "x/b"]);
    assert_eq!(rejected(&broken), [("b.yaml", InForce::LastGood)]);
    assert_eq!(
        broken.rejected[0].reason,
        "document 0: did not find expected node content"
    );
    assert!(!broken.incomplete);

    // Still bad at the next read: still the same last good content.
    let again = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a2"))),
        ("b.yaml", bad("still")),
    ]));
    assert_eq!(in_force(&again), ["x/a2", "x/b"]);

    // Fixed: the new content is used.
    let fixed = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a2"))),
        ("b.yaml", good(&policy("b2"))),
    ]));
    assert_eq!(in_force(&fixed), ["x/a2", "x/b2"]);
    assert!(fixed.rejected.is_empty());
}

#[test]
fn a_deleted_file_is_gone_even_after_it_was_bad() {
    let mut files_seen = a_and_b_seen();
    files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", bad("typo")),
    ]));
    let deleted = files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    assert_eq!(in_force(&deleted), ["x/a"]);
    assert!(deleted.rejected.is_empty());
    // Back under the same name but bad: it is a new file, never good.
    let back = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", bad("typo")),
    ]));
    assert_eq!(in_force(&back), ["x/a"]);
    assert_eq!(rejected(&back), [("b.yaml", InForce::Nothing)]);
}

#[test]
fn a_file_bad_since_the_start_holds_the_rule_set_until_fixed_or_deleted() {
    let mut files_seen = PolicyFiles::default();
    // Bad when the agent starts: it may hold policies in force before a restart.
    let start = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", bad("typo")),
    ]));
    assert!(
        start.incomplete,
        "a rule set without b's policies may be published"
    );
    assert_eq!(rejected(&start), [("b.yaml", InForce::PreviousRuleSet)]);
    let fixed = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", good(&policy("b"))),
    ]));
    assert!(!fixed.incomplete && fixed.rejected.is_empty());
    assert_eq!(in_force(&fixed), ["x/a", "x/b"]);

    // Deleting the bad file instead releases the rule set too.
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![("b.yaml", bad("typo"))]));
    let deleted = files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    assert!(!deleted.incomplete);
    assert_eq!(in_force(&deleted), ["x/a"]);
}

#[test]
fn a_new_file_that_is_bad_contributes_nothing_and_is_reported() {
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    let new = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", bad("typo")),
        ("c.yaml", bad("typo")),
    ]));
    assert!(!new.incomplete, "a new bad file does not hold the rule set");
    assert_eq!(in_force(&new), ["x/a"]);
    assert_eq!(
        rejected(&new),
        [("b.yaml", InForce::Nothing), ("c.yaml", InForce::Nothing)]
    );
}

#[test]
fn a_multi_document_file_with_one_bad_document_keeps_its_whole_last_good_version() {
    let mut files_seen = PolicyFiles::default();
    let version_1 = format!(
        "{}---\n{}---\n{}",
        policy("a"),
        pod("p", "10.244.1.2"),
        policy("b")
    );
    files_seen.merge(files(vec![("lab.yaml", good(&version_1))]));
    // The edit changes policy a and the Pod's address, and breaks policy b: nothing of it
    // is used, not even the documents that are fine.
    let version_2 = format!(
        "{}---\n{}---\n{}",
        policy("a-renamed"),
        pod("p", "10.244.1.9"),
        policy("b").replace("podSelector: {}", "podSelector: []")
    );
    let read = parse_bad(&version_2, "document 2: bad NetworkPolicy");
    let merged = files_seen.merge(files(vec![("lab.yaml", read)]));
    assert_eq!(in_force(&merged), ["x/a", "x/b"]);
    let set = merged.objects.compile();
    assert!(set.knows("10.244.1.2".parse().unwrap()));
    assert!(!set.knows("10.244.1.9".parse().unwrap()));
    assert_eq!(rejected(&merged), [("lab.yaml", InForce::LastGood)]);
}

#[test]
fn a_policy_made_invalid_by_an_edit_keeps_its_last_valid_version() {
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    // Well-formed YAML, but a policy compiling would reject (an unknown selector operator).
    let invalid = policy("a").replace(
        "podSelector: {}",
        "podSelector: {matchExpressions: [{key: k, operator: Near}]}",
    );
    let read = parse_bad(&invalid, "document 0: NetworkPolicy x/a is invalid:");
    let merged = files_seen.merge(files(vec![("a.yaml", read)]));
    assert_eq!(in_force(&merged), ["x/a"]);
    assert!(merged.objects.compile().rejected.is_empty());
    assert_eq!(rejected(&merged), [("a.yaml", InForce::LastGood)]);
}

#[test]
fn documents_of_other_kinds_or_none_make_a_file_bad() {
    let typo = policy("a").replace("kind: NetworkPolicy", "kind: NetworkPolcy");
    for (text, expected) in [
        (
            "kind: ConfigMap\nmetadata: {name: c}\n",
            "unsupported kind \"ConfigMap\"",
        ),
        // A typo in the kind must not drop the policy silently.
        (typo.as_str(), "unsupported kind \"NetworkPolcy\""),
        ("metadata: {name: c}\n", "unsupported kind \"\""),
    ] {
        parse_bad(text, expected);
    }
    // Empty documents and comments are nothing, not bad.
    assert_eq!(
        parse_file("# only a comment\n---\n---\n"),
        FileRead::Good(PolicyObjects::default())
    );
}

#[test]
fn an_unreadable_file_uses_its_last_good_content_or_holds_the_rule_set() {
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    // Once good: its last good content stands in, and a rule set can still be compiled.
    let unreadable = files_seen.merge(files(vec![
        ("a.yaml", FileRead::Unreadable("permission denied".into())),
        ("b.yaml", good(&policy("b"))),
    ]));
    assert_eq!(in_force(&unreadable), ["x/a", "x/b"]);
    assert_eq!(rejected(&unreadable), [("a.yaml", InForce::LastGood)]);
    assert!(!unreadable.incomplete);
    // Never good: what it holds is unknown, so nothing new may be published.
    let unknown = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", good(&policy("b"))),
        ("c.yaml", FileRead::Unreadable("permission denied".into())),
    ]));
    assert!(unknown.incomplete);
    assert_eq!(rejected(&unknown), [("c.yaml", InForce::PreviousRuleSet)]);
}

#[test]
fn an_unreadable_directory_forgets_no_file() {
    let mut files_seen = PolicyFiles::default();
    files_seen.merge(files(vec![("a.yaml", good(&policy("a")))]));
    let unreadable = files_seen.merge(DirRead::Unreadable {
        dir: "/policy".into(),
        reason: "permission denied".into(),
    });
    assert!(unreadable.incomplete);
    assert_eq!(
        rejected(&unreadable),
        [("/policy", InForce::PreviousRuleSet)]
    );
    // Readable again, the file is still known good: a typo in it now keeps it in force.
    let broken = files_seen.merge(files(vec![("a.yaml", bad("typo"))]));
    assert_eq!(in_force(&broken), ["x/a"]);
}

#[test]
fn in_force_codes_are_its_json_names() {
    for in_force in InForce::ALL {
        assert_eq!(
            serde_json::to_value(in_force).unwrap(),
            serde_json::json!(in_force.code())
        );
    }
}

#[test]
fn a_misspelt_networkpolicy_field_makes_the_file_bad_not_the_selector_empty() {
    let typo = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                metadata: {name: a, namespace: x}\n\
                spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabel: {app: web}}\n";
    parse_bad(
        typo,
        "unknown field spec.ingress.0.from.0.podSelector.matchLabel",
    );
    let typo = policy("a").replace("spec: {", "spec: {polcyTypes: [Ingress], ");
    parse_bad(&typo, "bad NetworkPolicy: unknown field spec.polcyTypes");
    // Spelt right, the same policy is taken.
    good(&typo.replace("polcyTypes", "policyTypes"));
}

#[test]
fn pods_and_namespaces_are_strict_where_policy_reads_them() {
    let pod = pod("p", "10.244.1.2");
    for (typo, field) in [
        (
            pod.replace("namespace: x", "namespace: x, label: {app: web}"),
            "metadata.label",
        ),
        (
            pod.replace("status: {podIP", "status: {podIp"),
            "status.podIp",
        ),
        (pod.replace("status:", "stauts:"), "stauts"),
        (
            pod.replace(
                "status: {podIP: 10.244.1.2}",
                "status: {podIPs: [{iP: 10.244.1.2}]}",
            ),
            "status.podIPs.0.iP",
        ),
        (
            format!("{pod}spec: {{hostNetwrk: true}}\n"),
            "spec.hostNetwrk",
        ),
        (
            format!("{pod}spec: {{containers: [{{name: c, port: [{{containerPort: 80}}]}}]}}\n"),
            "spec.containers.0.port",
        ),
        (
            format!(
                "{pod}spec: {{containers: [{{name: c, ports: [{{name: http, contanerPort: 80}}]}}]}}\n"
            ),
            "spec.containers.0.ports.0.contanerPort",
        ),
    ] {
        parse_bad(&typo, &format!("bad Pod: unknown field {field}"));
    }
    parse_bad(
        "kind: Namespace\nmetadata: {name: x, lables: {team: a}}\n",
        "bad Namespace: unknown field metadata.lables",
    );
    // Deeper fields this build does not know (an export from a newer cluster) are no reason
    // to refuse a Pod: policy reads none of them.
    good(&format!(
        "{}spec: {{containers: [{{name: c, resources: {{newerField: 1}}}}]}}\n",
        pod.replace(
            "status: {",
            "status: {conditions: [{type: Ready, newerField: 1}], "
        )
    ));
}

#[test]
fn the_same_object_in_a_later_file_is_refused_until_one_copy_goes() {
    let mut files_seen = a_and_b_seen();
    // x/a copied into b.yaml (say, on its way there from a.yaml): b.yaml is refused and its
    // last good content stays.
    let both = format!("{}---\n{}", policy("b"), policy("a"));
    let copied = files_seen.merge(files(vec![
        ("a.yaml", good(&policy("a"))),
        ("b.yaml", good(&both)),
    ]));
    assert_eq!(in_force(&copied), ["x/a", "x/b"]);
    assert_eq!(rejected(&copied), [("b.yaml", InForce::LastGood)]);
    assert_eq!(
        copied.rejected[0].reason,
        "NetworkPolicy x/a is also in a.yaml"
    );
    // Gone from a.yaml: b.yaml is taken.
    let moved = files_seen.merge(files(vec![("a.yaml", good("")), ("b.yaml", good(&both))]));
    assert!(moved.rejected.is_empty(), "{:?}", moved.rejected);
    assert_eq!(in_force(&moved), ["x/a", "x/b"]);
    assert_eq!(moved.objects.policies.len(), 2);
    // Copied into a file earlier in name order: that file is refused, not the one holding it.
    let mut files_seen = a_and_b_seen();
    let both = format!("{}---\n{}", policy("a"), policy("b"));
    let copied = files_seen.merge(files(vec![
        ("a.yaml", good(&both)),
        ("b.yaml", good(&policy("b"))),
    ]));
    assert_eq!(rejected(&copied), [("a.yaml", InForce::LastGood)]);
    assert_eq!(
        copied.rejected[0].reason,
        "NetworkPolicy x/b is also in b.yaml"
    );
    assert_eq!(copied.objects.policies.len(), 2, "one copy of each policy");
}

#[test]
fn duplicates_at_start_hold_the_rule_set_and_count_across_kinds_and_default_namespace() {
    // Pods and Namespaces too; cluster-scoped Namespaces by name alone. At start no copy is
    // known to be the current one: the rule set is held.
    let ns = "kind: Namespace\nmetadata: {name: x}\n";
    let merged = PolicyFiles::default().merge(files(vec![
        (
            "a.yaml",
            good(&format!("{ns}---\n{}", pod("p", "10.244.1.2"))),
        ),
        ("b.yaml", good(&pod("p", "10.244.1.3"))),
        ("c.yaml", good(ns)),
    ]));
    assert!(merged.incomplete);
    assert_eq!(rejected(&merged), [("a.yaml", InForce::PreviousRuleSet)]);
    assert_eq!(merged.rejected[0].reason, "Namespace x is also in c.yaml");
    // A policy without a namespace is in `default`, as compiling takes it.
    let bare = policy("a").replace("namespace: x", "namespace: default");
    let implicit = bare.replace(", namespace: default", "");
    let merged = PolicyFiles::default().merge(files(vec![
        ("a.yaml", good(&implicit)),
        ("b.yaml", good(&bare)),
    ]));
    assert_eq!(
        merged.rejected[0].reason,
        "NetworkPolicy default/a is also in b.yaml"
    );
    // Nameless Pods are no duplicates (compiling ignores them).
    let nameless = "kind: Pod\nmetadata: {namespace: x}\nstatus: {podIP: 10.244.1.9}\n";
    let merged = PolicyFiles::default().merge(files(vec![(
        "a.yaml",
        good(&format!("{nameless}---\n{nameless}")),
    )]));
    assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
}

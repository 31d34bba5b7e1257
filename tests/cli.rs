//! The `weft` binary's commands, run as a user would, with their error messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(common::weft_bin())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn key_generate_then_show_prints_the_same_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    let key_dir = key_dir.to_str().unwrap();
    let generated = weft(&["key", "generate", "--key-dir", key_dir]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let public = stdout(&generated).trim().to_string();
    assert_eq!(public.len(), 44, "not a base64 x25519 key: {public}");
    let shown = weft(&["key", "show", "--key-dir", key_dir]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(stdout(&shown).trim(), public);
    // The private key never appears on stdout/stderr.
    let private = std::fs::read_to_string(format!("{key_dir}/private.key")).unwrap();
    assert!(!stdout(&generated).contains(private.trim()));
    assert!(!stderr(&generated).contains(private.trim()));
}

#[test]
fn key_generate_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().to_str().unwrap();
    let first = stdout(&weft(&["key", "generate", "--key-dir", key_dir]));
    let again = weft(&["key", "generate", "--key-dir", key_dir]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let shown = stdout(&weft(&["key", "show", "--key-dir", key_dir]));
    assert_eq!(shown, first, "a refused generate changed the key");
    let forced = weft(&["key", "generate", "--key-dir", key_dir, "--force"]);
    assert!(forced.status.success());
    assert_ne!(stdout(&forced), first);
}

#[test]
fn key_generate_force_waits_for_a_pending_rotation_and_restarts_the_key_age() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    let key_dir_arg = key_dir.to_str().unwrap();
    let store = weft_keys::KeyStore::new(&key_dir);
    let first = stdout(&weft(&["key", "generate", "--key-dir", key_dir_arg]));
    // A rotation announced by the agent (the key directory is what it leaves).
    store.begin_rotation(1, 300).unwrap();
    let refused = weft(&["key", "generate", "--key-dir", key_dir_arg, "--force"]);
    assert!(!refused.status.success(), "replaced the key mid-rotation");
    let message = stderr(&refused);
    assert!(message.contains("rotation is in progress"), "{message}");
    assert!(message.contains("weft key status"), "{message}");
    let shown = stdout(&weft(&["key", "show", "--key-dir", key_dir_arg]));
    assert_eq!(shown, first, "a refused generate changed the key");
    assert!(store.next_key_path().exists());

    // Once the rotation completed (its key age recorded), a forced generate replaces the key
    // and the age restarts with the new key.
    store.complete_rotation(1000).unwrap();
    let forced = weft(&["key", "generate", "--key-dir", key_dir_arg, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let key = store.load().unwrap();
    assert_eq!(stdout(&forced).trim(), key.public_key().to_string());
    let age = store.load_rotation(&key).unwrap().current_since;
    let written = std::fs::metadata(store.private_key_path())
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(age, written, "the replaced key kept the old key's age");
}

#[test]
fn key_show_rejects_a_world_readable_key_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().to_str().unwrap();
    assert!(
        weft(&["key", "generate", "--key-dir", key_dir])
            .status
            .success()
    );
    let path = dir.path().join("private.key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shown = weft(&["key", "show", "--key-dir", key_dir]);
    assert!(!shown.status.success());
    assert!(stderr(&shown).contains("chmod 600"), "{}", stderr(&shown));
}

#[test]
fn status_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft(&["status", "--run-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no weft agent is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn agent_refuses_bad_settings_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "agent",
        "--node-name",
        "n1",
        "--address",
        "198.18.0.1",
        "--registry-dir",
        d,
        "--pod-cidr",
        "10.244.0.0/16",
    ];
    let cases: [(&[&str], &str); 6] = [
        (&["--block", "10.244.1.1/24"], "10.244.1.1/24"),
        (&["--block", "10.1.0.0/24"], "outside the Pod CIDRs"),
        (&["--fwmark", "0"], "--fwmark"),
        (&["--route-table", "254"], "reserved"),
        (
            &["--block", "10.244.1.0/24", "--block", "10.244.1.0/25"],
            "overlap",
        ),
        (&["--block", "not-a-cidr"], "not-a-cidr"),
    ];
    for (extra, expected) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--key-dir", d, "--run-dir", d]);
        args.extend(extra);
        let out = weft(&args);
        assert!(!out.status.success(), "agent accepted {extra:?}");
        assert!(
            stderr(&out)
                .to_lowercase()
                .contains(&expected.to_lowercase()),
            "error for {extra:?} does not mention {expected:?}: {}",
            stderr(&out)
        );
    }
    let out = weft(&["agent", "--address", "198.18.0.1", "--registry-dir", d]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--node-name"), "{}", stderr(&out));
    // Without the Pod CIDRs weft could not keep Pod traffic from leaving in clear.
    let out = weft(&base[..base.len() - 2]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pod-cidr"), "{}", stderr(&out));
}

fn lab_sh(args: &[&str], envs: &[(&str, &str)], as_nobody: bool) -> Output {
    let script = common::repo().join("scripts/lab.sh");
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&script);
        c
    } else {
        Command::new(&script)
    };
    command
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn lab_refuses_bad_input_with_clear_messages() {
    let not_root = lab_sh(&["up"], &[("WEFT_LAB", "wtcli")], true);
    assert!(!not_root.status.success());
    assert!(
        stderr(&not_root).contains("must run as root"),
        "{}",
        stderr(&not_root)
    );

    let bad_name = lab_sh(&["up"], &[("WEFT_LAB", "Bad_Name")], false);
    assert!(!bad_name.status.success());
    assert!(
        stderr(&bad_name).contains("WEFT_LAB"),
        "{}",
        stderr(&bad_name)
    );

    let bad_ipv6 = lab_sh(
        &["up"],
        &[("WEFT_LAB", "wtcli"), ("WEFT_LAB_IPV6", "yes")],
        false,
    );
    assert!(!bad_ipv6.status.success());
    assert!(
        stderr(&bad_ipv6).contains("WEFT_LAB_IPV6"),
        "{}",
        stderr(&bad_ipv6)
    );

    // A lab up with 3 nodes (only its record of them here) refuses another count.
    let run = std::path::Path::new("/run/wtclin");
    std::fs::create_dir_all(run).unwrap();
    std::fs::write(run.join("nodes"), "3\n").unwrap();
    let other_count = lab_sh(&["up", "2"], &[("WEFT_LAB", "wtclin")], false);
    let _ = std::fs::remove_dir_all(run);
    assert!(!other_count.status.success());
    assert!(
        stderr(&other_count).contains("lab 'wtclin' is up with 3 nodes; run `WEFT_LAB=wtclin"),
        "{}",
        stderr(&other_count)
    );

    let bad_count = lab_sh(&["up", "many"], &[("WEFT_LAB", "wtcli")], false);
    assert!(!bad_count.status.success());
    assert!(
        stderr(&bad_count).contains("node count"),
        "{}",
        stderr(&bad_count)
    );
}

/// `what` failed, saying that no agent runs for the run directory.
fn assert_no_agent(out: &std::process::Output, what: &str) {
    assert!(!out.status.success(), "{what} succeeded without an agent");
    assert!(
        stderr(out).contains("no weft agent is running"),
        "{what}: {}",
        stderr(out)
    );
}

#[test]
fn key_rotate_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    for extra in [&[][..], &["--wait"][..]] {
        let mut args = vec!["key", "rotate", "--run-dir", run_dir];
        args.extend_from_slice(extra);
        let out = weft(&args);
        assert_no_agent(&out, &format!("{args:?}"));
        assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn key_rotate_rejects_a_bad_grace_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let out = weft(&["key", "rotate", "--run-dir", run_dir, "--grace", "nonsense"]);
    assert!(!out.status.success(), "--grace nonsense was accepted");
    let message = stderr(&out);
    assert!(message.contains("--grace"), "{message}");
    assert!(message.contains("nonsense"), "{message}");
    // Rejected by the argument parser (usage error, exit 2) before any agent is asked.
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(!message.contains("no weft agent"), "{message}");
    // A well-formed duration gets past the parser to the (missing) agent.
    let out = weft(&["key", "rotate", "--run-dir", run_dir, "--grace", "2m"]);
    assert_no_agent(&out, "--grace 2m");
}

#[test]
fn key_rotate_refuses_a_grace_with_a_fraction_of_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    for grace in ["1500ms", "90s 250ms"] {
        let out = weft(&["key", "rotate", "--run-dir", run_dir, "--grace", grace]);
        let message = stderr(&out);
        // Refused by the argument parser, not silently cut to whole seconds and sent.
        assert_eq!(out.status.code(), Some(2), "--grace {grace}: {message}");
        assert!(message.contains("--grace"), "{message}");
        assert!(message.contains("whole seconds"), "{message}");
        assert!(!message.contains("no weft agent"), "{message}");
    }
}

#[test]
fn key_rotate_refuses_a_negative_or_out_of_range_grace() {
    for (grace, expected) in [
        ("-1m", "cannot be negative"),
        ("0s", "must be 1s to 7days"),
        ("8d", "must be 1s to 7days"),
        ("5", "5 has no unit"),
    ] {
        let out = weft(&[
            "key",
            "rotate",
            "--run-dir",
            "/nonexistent",
            "--grace",
            grace,
        ]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "--grace {grace}: {message}");
        assert!(message.contains(expected), "--grace {grace}: {message}");
        assert!(!message.contains("no weft agent"), "{message}");
    }
}

#[test]
fn a_key_file_that_is_no_key_is_refused_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let generated = weft(&["key", "generate", "--key-dir", keys.to_str().unwrap()]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    std::fs::write(keys.join("private.key"), "c2hvcnQ=\n").unwrap();
    let shown = weft(&["key", "show", "--key-dir", keys.to_str().unwrap()]);
    assert!(!shown.status.success());
    let message = stderr(&shown);
    assert!(message.contains("holds 5 bytes, not 32"), "{message}");
    assert!(message.contains("weft key generate --force"), "{message}");
}

#[test]
fn key_status_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    for output in ["table", "json"] {
        let out = weft(&["key", "status", "--run-dir", run_dir, "--output", output]);
        assert_no_agent(&out, &format!("key status --output {output}"));
        assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_fields_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let path = |sub: &str| dir.path().join(sub).to_str().unwrap().to_string();
    let log = dir.path().join("agent.log");
    // A control-plane-only agent in a namespace of its own: it only reads routes there.
    let mut ns = common::Netns::new(&format!("wtlog-{}", std::process::id()));
    ns.process = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, common::weft_bin()])
            .args(["--log-format", "json", "agent", "--node-name", "n1"])
            .args(["--address", "198.18.0.1", "--block", "10.244.1.0/24"])
            .args([
                "--registry-dir",
                &path("registry"),
                "--key-dir",
                &path("keys"),
            ])
            .args(["--run-dir", &path("run"), "--no-datapath"])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = common::wait_for(
        std::time::Duration::from_secs(20),
        "the agent to log that it started",
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.contains("agent started"))
                .map(String::from)
        },
    );
    let line: serde_json::Value = serde_json::from_str(&started)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {started}"));
    assert_eq!(line["message"], "agent started", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["node"], "n1", "{line}");
    drop(ns);
    for text in std::fs::read_to_string(&log).unwrap().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object()),
            "a log line that is not a JSON object: {text}"
        );
    }
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_choices() {
    let out = weft(&["--log-format", "xml", "key", "show"]);
    assert_eq!(out.status.code(), Some(2));
    let message = stderr(&out);
    assert!(
        message.contains("--log-format") && message.contains("text, json"),
        "{message}"
    );
}

#[test]
fn policy_lint_names_each_file_an_agent_would_reject_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pods.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.244.1.2}\n",
    )
    .unwrap();
    let out = weft(&["policy", "lint", d.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 NetworkPolicy, 1 Pod, 0 Namespaces taken from"),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        d.join("typo.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: allow, namespace: x}\nspec: {podSelector: {}, polcyTypes: [Ingress]}\n",
    )
    .unwrap();
    let out = weft(&["policy", "lint", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(
        report.contains("typo.yaml: document 0: bad NetworkPolicy: unknown field spec.polcyTypes"),
        "{report}"
    );
    assert!(report.contains("would publish no rule set"), "{report}");
    assert!(
        stderr(&out).contains("files an agent would reject"),
        "{}",
        stderr(&out)
    );

    let missing = d.join("missing");
    let out = weft(&["policy", "lint", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: directory {} does not exist", missing.display())
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn policy_lint_counts_in_the_singular_for_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = weft(&["policy", "lint", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 NetworkPolicies, 0 Pods, 1 Namespace taken from"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bird_config_without_a_kubeconfig_says_it_needs_the_kubernetes_api() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("kubeconfig");
    let out = weft(&[
        "bird-config",
        "--node-name",
        "n1",
        "--kubeconfig",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&format!(
            "weft bird-config reads the Nodes from the Kubernetes API: cannot read kubeconfig {}: No such file",
            missing.display()
        )),
        "{message}"
    );
    assert!(!message.contains("\"'"), "doubled quotes: {message}");
}

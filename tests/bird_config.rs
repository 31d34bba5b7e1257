//! `weft bird-config` against the API server emulation: the rendered configuration is
//! accepted by the real BIRD 2 parser, peers as asked, and bad input fails clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;
mod common;

use apiserver::ApiServer;
use common::{run, weft_bin};
use serde_json::json;

fn cluster() -> (ApiServer, tempfile::TempDir) {
    // Loopback of this namespace only: the emulation never leaves the machine.
    let api = ApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    for k in 1..=3 {
        api.upsert(
            "Node",
            json!({"metadata": {"name": format!("n{k}")},
                   "spec": {"podCIDRs": [format!("10.244.{k}.0/24")]},
                   "status": {"addresses": [{"type": "InternalIP", "address": format!("198.18.0.{k}")}]}}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    (api, dir)
}

fn bird_config(dir: &tempfile::TempDir, extra: &[&str]) -> std::process::Output {
    let kubeconfig = dir.path().join("kubeconfig");
    let output = dir.path().join("bird.conf");
    let mut args = vec![
        "bird-config",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(weft_bin(), &args)
}

fn bird_parses(path: &std::path::Path) -> Result<(), String> {
    let out = run("bird", &["-p", "-c", path.to_str().unwrap()]);
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_full_mesh_config_parses_with_bird_and_peers_with_every_other_node() {
    let (_api, dir) = cluster();
    let out = bird_config(&dir, &["--node-name", "n2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().join("bird.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    assert!(conf.contains("route 10.244.2.0/24 unreachable;"), "{conf}");
    assert!(conf.contains("neighbor 198.18.0.1 as 64512;"), "{conf}");
    assert!(conf.contains("neighbor 198.18.0.3 as 64512;"), "{conf}");
    assert!(
        !conf.contains("neighbor 198.18.0.2 "),
        "no session to itself: {conf}"
    );
    bird_parses(&path).unwrap();
}

#[test]
fn route_reflector_configs_parse_with_bird() {
    let (_api, dir) = cluster();
    let path = dir.path().join("bird.conf");
    let out = bird_config(&dir, &["--node-name", "n1", "--route-reflector", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reflector = std::fs::read_to_string(&path).unwrap();
    assert_eq!(reflector.matches("rr client;").count(), 2, "{reflector}");
    bird_parses(&path).unwrap();
    let out = bird_config(
        &dir,
        &[
            "--node-name",
            "n3",
            "--route-reflector",
            "n1",
            "--asn",
            "65010",
        ],
    );
    assert!(out.status.success());
    let client = std::fs::read_to_string(&path).unwrap();
    assert!(client.contains("neighbor 198.18.0.1 as 65010;"), "{client}");
    assert!(
        !client.contains("198.18.0.2"),
        "clients peer only with reflectors: {client}"
    );
    bird_parses(&path).unwrap();
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let (_api, dir) = cluster();
    let out = bird_config(&dir, &["--node-name", "n9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Node named \"n9\""));
    let out = bird_config(&dir, &["--node-name", "n1", "--route-reflector", "nx"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("route reflector \"nx\""));
    assert!(
        !dir.path().join("bird.conf").exists(),
        "nothing is written on failure"
    );
}

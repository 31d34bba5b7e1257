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

/// Node `k` with IPv6 only: address `2001:2::K` (the IPv6 benchmarking prefix) and block
/// `fd00:10:244:K::/64`; `dual_stack` adds `198.18.0.K` and `10.244.K.0/24`.
fn ipv6_node(k: u8, dual_stack: bool) -> serde_json::Value {
    let mut blocks = vec![format!("fd00:10:244:{k}::/64")];
    let mut addresses = vec![json!({"type": "InternalIP", "address": format!("2001:2::{k}")})];
    if dual_stack {
        blocks.push(format!("10.244.{k}.0/24"));
        addresses.push(json!({"type": "InternalIP", "address": format!("198.18.0.{k}")}));
    }
    json!({"metadata": {"name": format!("n{k}")},
           "spec": {"podCIDRs": blocks},
           "status": {"addresses": addresses}})
}

/// The cluster with nodes `dual_stack` dual-stack and the others IPv6-only.
fn ipv6_cluster(dual_stack: &[u8]) -> (ApiServer, tempfile::TempDir) {
    let (api, dir) = cluster();
    for k in 1..=3u8 {
        api.upsert("Node", ipv6_node(k, dual_stack.contains(&k)));
    }
    (api, dir)
}

#[test]
fn ipv6_only_configs_parse_with_bird_and_peer_over_ipv6() {
    let (_api, dir) = ipv6_cluster(&[]);
    let path = dir.path().join("bird.conf");
    for (node, reflectors) in [("n2", &[][..]), ("n1", &["n1"][..]), ("n3", &["n1"][..])] {
        let mut args = vec!["--node-name", node];
        for r in reflectors {
            args.extend(["--route-reflector", r]);
        }
        let out = bird_config(&dir, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = std::fs::read_to_string(&path).unwrap();
        assert!(conf.contains("from peer6 {"), "{conf}");
        assert!(!conf.contains("ipv4"), "{conf}");
        bird_parses(&path).unwrap();
    }
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

/// `weft bird-config --watch` for n1 running in the background, writing `bird.conf` and
/// (at debug level) `log` in `dir`; killed on drop.
struct Watcher(std::process::Child);

impl Watcher {
    fn start(dir: &tempfile::TempDir, reload: &str) -> Watcher {
        let child = std::process::Command::new(weft_bin())
            .args(["bird-config", "--watch", "--node-name", "n1"])
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .arg("--output")
            .arg(dir.path().join("bird.conf"))
            .args(["--reload-command", reload])
            .env("RUST_LOG", "weft=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        Watcher(child)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(k: u8, address: Option<&str>) -> serde_json::Value {
    let addresses: Vec<serde_json::Value> = address
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .into_iter()
        .collect();
    json!({"metadata": {"name": format!("n{k}")},
           "spec": {"podCIDRs": [format!("10.244.{k}.0/24")]},
           "status": {"addresses": addresses}})
}

#[test]
fn watch_mode_rewrites_the_config_and_reloads_bird_only_when_the_nodes_change_it() {
    let (api, dir) = cluster();
    let output = dir.path().join("bird.conf");
    let reloads = dir.path().join("reloads");
    let reload = format!("echo reload >> {}", reloads.display());
    let _watcher = Watcher::start(&dir, &reload);
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let reload_count = || {
        std::fs::read_to_string(&reloads)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let config = || std::fs::read_to_string(&output).unwrap_or_default();
    let timeout = std::time::Duration::from_secs(20);

    common::wait_for(timeout, "the first configuration", || {
        (reload_count() == 1).then_some(())
    });
    assert!(
        config().contains("neighbor 198.18.0.3 as 64512;"),
        "{}",
        config()
    );
    bird_parses(&output).unwrap();

    // A node joins: n1 peers with it too.
    api.upsert("Node", node(4, Some("198.18.0.4")));
    common::wait_for(timeout, "n4 in the configuration", || {
        (config().contains("neighbor 198.18.0.4 as 64512;") && reload_count() == 2).then_some(())
    });
    bird_parses(&output).unwrap();

    // Another node without an address yet is left out; nothing else changes.
    api.upsert("Node", node(5, None));
    common::wait_for(timeout, "n5 left out in the log", || {
        log()
            .contains("leaving the node out of the BIRD configuration")
            .then_some(())
    });
    assert!(!config().contains("10.244.5.0"), "{}", config());
    assert_eq!(reload_count(), 2);
    // Our own node without an address cannot be rendered at all: the last good file stays.
    api.upsert("Node", node(1, None));
    common::wait_for(timeout, "the render failure in the log", || {
        log()
            .contains("cannot render the BIRD configuration")
            .then_some(())
    });
    assert!(
        config().contains("neighbor 198.18.0.4 as 64512;"),
        "{}",
        config()
    );
    assert_eq!(reload_count(), 2);
    // Each of these changes is rendered, to the file already there: counted in the log, one
    // change at a time, so each wait sees the render of its own change.
    let unchanged = || log().matches("Node change without effect").count();
    let before = unchanged();
    api.upsert("Node", node(1, Some("198.18.0.1")));
    common::wait_for(timeout, "the render after n1 got its address back", || {
        (unchanged() > before).then_some(())
    });
    let before = unchanged();
    api.delete("Node", "n5");
    common::wait_for(timeout, "the render after n5 left", || {
        (unchanged() > before).then_some(())
    });
    // A change to nothing BIRD reads (a label) rewrites nothing either.
    let unchanged_before = unchanged();
    let mut labelled = node(4, Some("198.18.0.4"));
    labelled["metadata"]["labels"] = json!({"team": "edge"});
    api.upsert("Node", labelled);
    common::wait_for(timeout, "the label change to be seen", || {
        (unchanged() > unchanged_before).then_some(())
    });
    assert_eq!(reload_count(), 2);
    // n3 leaving changes the configuration again.
    api.delete("Node", "n3");
    common::wait_for(timeout, "n3 gone from the configuration", || {
        (!config().contains("198.18.0.3")).then_some(())
    });
    assert_eq!(
        reload_count(),
        3,
        "one rewrite and reload per effective change"
    );
    assert!(config().contains("neighbor 198.18.0.4 as 64512;"));
    bird_parses(&output).unwrap();
}

#[test]
fn watch_mode_needs_an_output_file() {
    let (_api, dir) = cluster();
    let kubeconfig = dir.path().join("kubeconfig");
    let out = run(
        weft_bin(),
        &[
            "bird-config",
            "--watch",
            "--node-name",
            "n1",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--output"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three node namespaces on a bridge (in a namespace of its own) running real BIRD with the
/// configurations `weft bird-config` renders; everything is removed on drop.
struct BgpLab {
    name: &'static str,
    dir: tempfile::TempDir,
}

impl BgpLab {
    fn ns(&self, k: u8) -> String {
        format!("{}-n{k}", self.name)
    }

    fn up(name: &'static str, api: &apiserver::ApiServer, reflectors: &[&str]) -> BgpLab {
        Self::up_with(name, api, reflectors, |_| vec![])
    }

    /// `extra(k)`: more `weft bird-config` arguments for node `k`.
    fn up_with(
        name: &'static str,
        api: &apiserver::ApiServer,
        reflectors: &[&str],
        extra: impl Fn(u8) -> Vec<String>,
    ) -> BgpLab {
        common::require_root();
        let lab = BgpLab {
            name,
            dir: tempfile::tempdir().unwrap(),
        };
        // Namespaces a killed earlier run left behind.
        lab.remove_namespaces();
        std::fs::write(lab.dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
        let br = format!("{name}-br");
        let ip = |args: &[&str]| common::run_ok("ip", args);
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for k in 1..=3u8 {
            let ns = lab.ns(k);
            let port = format!("p{k}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{k}/24"),
                "dev",
                "eth0",
            ]);
            for v6 in [format!("fd00:198:18::{k}/64"), format!("2001:2::{k}/64")] {
                ip(&["-n", &ns, "addr", "add", &v6, "dev", "eth0", "nodad"]);
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let conf = lab.dir.path().join(format!("n{k}.conf"));
            let kubeconfig = lab.dir.path().join("kubeconfig");
            let mut args = vec![
                "bird-config".to_string(),
                "--node-name".into(),
                format!("n{k}"),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--output".into(),
                conf.display().to_string(),
            ];
            for r in reflectors {
                args.extend(["--route-reflector".to_string(), r.to_string()]);
            }
            args.extend(extra(k));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(weft_bin(), &args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sock = lab.dir.path().join(format!("n{k}.ctl"));
            let pid = lab.dir.path().join(format!("n{k}.pid"));
            common::run_ok(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "bird",
                    "-c",
                    &conf.display().to_string(),
                    "-s",
                    &sock.display().to_string(),
                    "-P",
                    &pid.display().to_string(),
                ],
            );
        }
        lab
    }

    /// `ip [-4|-6] route show proto bird` in node `k`, as "prefix via address" lines.
    fn bird_routes(&self, k: u8, family: &str) -> Vec<String> {
        let ns = self.ns(k);
        let out = common::run_ok("ip", &[family, "-n", &ns, "route", "show", "proto", "bird"]);
        let mut routes: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let via = words.iter().position(|w| *w == "via")?;
                Some(format!("{} via {}", words.first()?, words.get(via + 1)?))
            })
            .collect();
        routes.sort();
        routes
    }
}

impl BgpLab {
    /// Waits until node `k` has learned the IPv6 block `fd00:10:244:J::/64` of every other
    /// node `J` in `owners`, each via its owner's address `{underlay}J`, and nothing else.
    fn wait_for_ipv6_blocks(&self, k: u8, owners: std::ops::RangeInclusive<u8>, underlay: &str) {
        let want: Vec<String> = owners
            .filter(|j| *j != k)
            .map(|j| format!("fd00:10:244:{j}::/64 via {underlay}{j}"))
            .collect();
        common::wait_for(
            std::time::Duration::from_secs(30),
            &format!(
                "{}: n{k} to learn the IPv6 blocks via their owners",
                self.name
            ),
            || (self.bird_routes(k, "-6") == want).then_some(()),
        );
    }

    fn remove_namespaces(&self) {
        for k in 1..=3u8 {
            let _ = run("ip", &["netns", "del", &self.ns(k)]);
        }
        let _ = run("ip", &["netns", "del", &format!("{}-br", self.name)]);
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        for k in 1..=3u8 {
            let pid = self.dir.path().join(format!("n{k}.pid"));
            if let Ok(pid) = std::fs::read_to_string(&pid) {
                let pid = pid.trim();
                let _ = run("kill", &[pid]);
                // Wait for BIRD to exit before its namespace goes.
                for _ in 0..50 {
                    if !run("kill", &["-0", pid]).status.success() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        self.remove_namespaces();
    }
}

fn expected_routes(k: u8) -> Vec<String> {
    (1..=3u8)
        .filter(|j| *j != k)
        .map(|j| format!("10.244.{j}.0/24 via 198.18.0.{j}"))
        .collect()
}

/// Real BIRD with the rendered configurations: every node learns every other node's block
/// with that node as next hop (what weft's cross-check needs), in a full mesh and through a
/// route reflector alike.
#[test]
fn rendered_configs_make_real_bird_learn_every_block_via_its_owner() {
    for (name, reflectors) in [("wbfm", &[][..]), ("wbrr", &["n1"][..])] {
        let (api, _dir) = cluster();
        let lab = BgpLab::up(name, &api, reflectors);
        for k in 1..=3u8 {
            common::wait_for(
                std::time::Duration::from_secs(30),
                &format!("{name}: n{k} to learn the other blocks via their owners"),
                || (lab.bird_routes(k, "-4") == expected_routes(k)).then_some(()),
            );
        }
    }
}

/// Dual-stack Nodes: the IPv6 blocks reach every node over the same sessions, each via its
/// owner's IPv6 address, through a route reflector too, even one without IPv6 blocks.
#[test]
fn dual_stack_blocks_reach_real_bird_via_their_owners_ipv6_address() {
    let cases = [
        ("wbd6", &[][..], 1),
        ("wbr6", &["n1"][..], 1),
        ("wbx6", &["n1"][..], 2),
    ];
    for (name, reflectors, first_v6) in cases {
        let (api, _dir) = cluster();
        for k in first_v6..=3u8 {
            api.upsert(
                "Node",
                json!({"metadata": {"name": format!("n{k}")},
                       "spec": {"podCIDRs": [format!("10.244.{k}.0/24"), format!("fd00:10:244:{k}::/64")]},
                       "status": {"addresses": [
                           {"type": "InternalIP", "address": format!("198.18.0.{k}")},
                           {"type": "InternalIP", "address": format!("fd00:198:18::{k}")}]}}),
            );
        }
        let lab = BgpLab::up(name, &api, reflectors);
        for k in 1..=3u8 {
            lab.wait_for_ipv6_blocks(k, first_v6..=3, "fd00:198:18::");
            assert_eq!(lab.bird_routes(k, "-4"), expected_routes(k));
        }
    }
}

/// IPv6-only Nodes (and a dual-stack reflector serving IPv6-only clients): sessions run over
/// IPv6 and every node learns the other IPv6 blocks via their owner's (global) address, in a
/// full mesh and through a route reflector.
#[test]
fn ipv6_only_nodes_learn_every_block_via_its_owner_over_ipv6_sessions() {
    let cases = [
        ("wb6fm", &[][..], &[][..]),
        ("wb6rr", &["n1"][..], &[][..]),
        ("wb6mx", &["n1"][..], &[1u8][..]),
    ];
    for (name, reflectors, dual_stack) in cases {
        let (api, _dir) = ipv6_cluster(dual_stack);
        let lab = BgpLab::up(name, &api, reflectors);
        for k in 1..=3u8 {
            lab.wait_for_ipv6_blocks(k, 1..=3, "2001:2::");
            assert!(lab.bird_routes(k, "-4").is_empty(), "{name}: n{k}");
        }
    }
}

#[test]
fn watch_mode_retries_a_failed_reload_until_it_succeeds() {
    let (_api, dir) = cluster();
    let attempts = dir.path().join("attempts");
    let ready = dir.path().join("bird-is-up");
    // Fails until `ready` exists, as `birdc configure` does while BIRD is not up.
    let reload = format!(
        "echo attempt >> {}; test -e {}",
        attempts.display(),
        ready.display()
    );
    let _watcher = Watcher::start(&dir, &reload);
    let count = || {
        std::fs::read_to_string(&attempts)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let timeout = std::time::Duration::from_secs(30);
    common::wait_for(timeout, "a failed reload and its retry", || {
        (count() >= 2).then_some(())
    });
    std::fs::write(&ready, b"").unwrap();
    common::wait_for(timeout, "a successful reload", || {
        std::fs::read_to_string(dir.path().join("log"))
            .unwrap_or_default()
            .contains("BIRD reloaded")
            .then_some(())
    });
    // Once it succeeded, no more attempts.
    let settled = count();
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(count(), settled, "reloads went on after one succeeded");
}

/// With `--bgp-password-file`, sessions are TCP-MD5 protected: nodes sharing the password
/// exchange routes, a node with another password gets no session at all, and the written
/// configuration is private (0600).
#[test]
fn bgp_sessions_need_the_shared_password() {
    let (api, dir) = cluster();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (shared, other) = (
        write("pw", "lab-secret\n"),
        write("pw-other", "not-the-same\n"),
    );
    let lab = BgpLab::up_with("wbmd5", &api, &[], |k| {
        let file = if k == 3 { &other } else { &shared };
        vec!["--bgp-password-file".into(), file.clone()]
    });
    use std::os::unix::fs::PermissionsExt;
    let conf = lab.dir.path().join("n1.conf");
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains("password \"lab-secret\";")
    );
    common::wait_for(
        std::time::Duration::from_secs(30),
        "n1 to learn n2's block over the authenticated session",
        || (lab.bird_routes(1, "-4") == ["10.244.2.0/24 via 198.18.0.2"]).then_some(()),
    );
    common::wait_for(
        std::time::Duration::from_secs(30),
        "n2 to learn n1's block",
        || (lab.bird_routes(2, "-4") == ["10.244.1.0/24 via 198.18.0.1"]).then_some(()),
    );
    // n3's sessions never come up: give them the time the others took, and then some.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(
        lab.bird_routes(3, "-4").is_empty(),
        "n3 learned routes with the wrong password"
    );
    assert_eq!(lab.bird_routes(1, "-4"), ["10.244.2.0/24 via 198.18.0.2"]);

    // A password BIRD or the kernel could not take is refused with a clear message.
    let bad = write("pw-bad", "has\"quote\n");
    let out = bird_config(&dir, &["--node-name", "n1", "--bgp-password-file", &bad]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid BGP password"), "{stderr}");
    assert!(
        !stderr.contains("has\"quote"),
        "the password was printed: {stderr}"
    );
}

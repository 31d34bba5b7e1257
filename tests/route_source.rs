//! The route source against a real kernel: bulk route changes that overrun the netlink
//! socket's buffer end with exactly the kernel's BGP routes learned (the agent re-dumps after
//! the overrun), multipath routes included, other protocols ignored; adding or deleting one
//! next hop of an IPv6 multipath route (sibling routes in the kernel) changes just that hop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Netns, require_root, run_ok, wait_for, weft_bin, weft_status};

fn learned_routes(ns: &str, run_dir: &str) -> Option<u64> {
    let status = weft_status(ns, run_dir)?;
    status["synced"]["routes"].as_bool().filter(|s| *s)?;
    status["learnedRoutes"].as_u64()
}

fn batch(ns: &str, commands: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch");
    std::fs::write(&path, commands).unwrap();
    run_ok("ip", &["-n", ns, "-batch", path.to_str().unwrap()]);
}

#[test]
fn bulk_route_changes_are_all_learned_and_nothing_else() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("wtroute-{}", std::process::id());
    let mut ns = Netns::new(&name);
    run_ok(
        "ip",
        &[
            "-n", &name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ],
    );
    run_ok("ip", &["-n", &name, "link", "set", "d1", "up"]);
    run_ok(
        "ip",
        &["-n", &name, "addr", "add", "198.18.0.1/24", "dev", "d0"],
    );
    run_ok("ip", &["-n", &name, "link", "set", "d0", "up"]);

    let log = tmp.path().join("agent.log");
    let run_dir = tmp.path().join("run");
    let run_dir = run_dir.to_str().unwrap().to_string();
    let dir = |sub: &str| tmp.path().join(sub).to_str().unwrap().to_string();
    ns.process = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                weft_bin(),
                "agent",
                "--node-name",
                "n1",
            ])
            .args(["--address", "198.18.0.1", "--block", "10.244.1.0/24"])
            .args([
                "--registry-dir",
                &dir("registry"),
                "--key-dir",
                &dir("keys"),
            ])
            .args(["--run-dir", &run_dir, "--debounce", "50ms", "--no-datapath"])
            // A tiny notification buffer: the bursts below overrun it.
            .args(["--netlink-receive-buffer", "4096"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    wait_for(
        Duration::from_secs(20),
        "the agent's first route dump",
        || learned_routes(&name, &run_dir).filter(|n| *n == 0),
    );

    // 4096 BGP routes at once: /29s inside 10.244.128.0/17 via a next hop on d0.
    let mut adds = String::new();
    for i in 0..4096u32 {
        adds.push_str(&format!(
            "route add 10.244.{}.{}/29 via 198.18.0.2 proto bird\n",
            128 + i / 32,
            (i % 32) * 8
        ));
    }
    // Routes of other protocols are not learned; a multipath BGP route counts once.
    adds.push_str("route add 10.244.0.0/24 via 198.18.0.3 proto static\n");
    adds.push_str(
        "route add 10.244.1.0/28 proto bgp nexthop via 198.18.0.2 nexthop via 198.18.0.3\n",
    );
    batch(&name, &adds);
    wait_for(
        Duration::from_secs(60),
        "all 4097 BGP routes to be learned",
        || learned_routes(&name, &run_dir).filter(|n| *n == 4097),
    );

    // Delete half of them at once; exactly the rest remains.
    let dels: String = adds
        .lines()
        .take(2048)
        .map(|l| l.replacen("route add", "route del", 1) + "\n")
        .collect();
    batch(&name, &dels);
    wait_for(
        Duration::from_secs(60),
        "the deleted routes to be forgotten",
        || learned_routes(&name, &run_dir).filter(|n| *n == 2049),
    );
    // The kernel dropped notifications on the tiny buffer and the agent recovered by re-dumping.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("netlink overrun"),
        "no overrun was seen:\n{log_text}"
    );

    // IPv6 multipath routes are sibling routes in the kernel: adding or deleting one next hop
    // must change just that next hop of the learned route.
    run_ok(
        "ip",
        &[
            "-n",
            &name,
            "addr",
            "add",
            "fd00:198:18::1/64",
            "dev",
            "d0",
            "nodad",
        ],
    );
    let v6 = "fd00:10:244:7::/64";
    let ip6 = |args: &[&str]| {
        let mut all = vec!["-n", name.as_str(), "-6", "route"];
        all.extend(args);
        run_ok("ip", &all);
    };
    ip6(&[
        "add",
        v6,
        "proto",
        "bird",
        "nexthop",
        "via",
        "fd00:198:18::2",
        "nexthop",
        "via",
        "fd00:198:18::3",
    ]);
    let hops = || v6_hops(&name, &run_dir, v6);
    wait_for(Duration::from_secs(20), "both IPv6 next hops", || {
        (hops() == ["fd00:198:18::2", "fd00:198:18::3"]).then_some(())
    });
    ip6(&["del", v6, "via", "fd00:198:18::3", "proto", "bird"]);
    wait_for(Duration::from_secs(20), "one IPv6 next hop left", || {
        (hops() == ["fd00:198:18::2"]).then_some(())
    });
    ip6(&["append", v6, "via", "fd00:198:18::4", "proto", "bird"]);
    wait_for(Duration::from_secs(20), "an appended IPv6 next hop", || {
        (hops() == ["fd00:198:18::2", "fd00:198:18::4"]).then_some(())
    });
    ip6(&["del", v6, "proto", "bird"]);
    wait_for(Duration::from_secs(20), "the IPv6 route to be gone", || {
        hops().is_empty().then_some(())
    });
}

/// The next hops the agent learned for `prefix` (every route is rejected here, one rejection
/// per next hop: no node is known), sorted.
fn v6_hops(ns: &str, run_dir: &str, prefix: &str) -> Vec<String> {
    let Some(status) = weft_status(ns, run_dir) else {
        return vec![];
    };
    let mut hops: Vec<String> = status["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["prefix"] == prefix)
        .filter_map(|r| r["nextHop"].as_str().map(str::to_string))
        .collect();
    hops.sort();
    hops
}

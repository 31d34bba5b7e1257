//! The kernel state weft owns in a node (the TUN's state and addresses, the `ip rule`, the
//! routes in weft's table) in the real lab: what something else changes behind the agent's
//! back is put back without any mesh event, and an update the kernel refuses is reported and
//! retried until it applies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Lab, Netns, http_get, run_ok, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);
/// Where the agents of a lab started with `--health-address` serve health and metrics (each
/// in its own node's namespace).
const HEALTH: &str = "127.0.0.1:9720";

/// `weft_datapath_apply_failures_total` of node `k`'s agent.
fn apply_failures(lab: &Lab, k: usize) -> Option<u64> {
    let (_, metrics) = http_get(&lab.node_ns(k), HEALTH, "/metrics")?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_datapath_apply_failures_total "))?
        .parse()
        .ok()
}

/// What n1's mesh is computed from, as its status shows it: equal readings mean no input
/// changed in between.
fn mesh_inputs(lab: &Lab) -> Option<(serde_json::Value, serde_json::Value)> {
    let status = lab.status(1)?;
    Some((status["peers"].clone(), status["learnedRoutes"].clone()))
}

/// n1's routes in weft's table, and its rules at weft's priority (IPv4 and IPv6).
fn kernel_state(lab: &Lab) -> (String, String, String) {
    let n1 = lab.node_ns(1);
    (
        run_ok("ip", &["-n", &n1, "route", "show", "table", "51820"]),
        run_ok("ip", &["-n", &n1, "rule", "show", "priority", "5210"]),
        run_ok("ip", &["-6", "-n", &n1, "rule", "show", "priority", "5210"]),
    )
}

/// A 2-node lab serving health on `HEALTH`, meshed: (lab, n1's namespace, n1's TUN, a Pod
/// namespace on n1, a Pod address on n2).
fn two_nodes(name: &str) -> (Lab, String, String, String, String) {
    let lab = Lab::up_with(name, 2, &format!("--health-address {HEALTH}"));
    lab.wait_for_mesh(CONVERGE);
    let (n1, tun) = (lab.node_ns(1), lab.interface(1));
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    (lab, n1, tun, from, to)
}

#[test]
fn kernel_state_changed_behind_the_agents_back_is_put_back_without_an_event() {
    let (lab, n1, tun, from, to) = two_nodes("wtrepair");
    wait_for(CONVERGE, "n1's Pod to reach n2's Pod", || {
        lab.ping(&from, &to, 1).then_some(())
    });
    let before = kernel_state(&lab);
    let tunnel_route = format!("10.244.2.0/24 dev {tun}");
    assert!(before.0.contains(&tunnel_route), "{}", before.0);
    let inputs = mesh_inputs(&lab).unwrap();

    // Someone flushes weft's rules, sets the TUN down (which takes its routes with it) and
    // deletes what is left of weft's table.
    run_ok("ip", &["-n", &n1, "rule", "del", "priority", "5210"]);
    run_ok("ip", &["-6", "-n", &n1, "rule", "del", "priority", "5210"]);
    run_ok("ip", &["-n", &n1, "link", "set", &tun, "down"]);
    run_ok("ip", &["-n", &n1, "route", "flush", "table", "51820"]);
    let broken = kernel_state(&lab);
    assert!(broken.0.is_empty() && broken.1.is_empty(), "{broken:?}");

    wait_for(
        Duration::from_secs(20),
        "n1's kernel state to be put back",
        || (kernel_state(&lab) == before).then_some(()),
    );
    let link = run_ok("ip", &["-n", &n1, "link", "show", &tun]);
    assert!(link.contains(",UP"), "{link}");
    wait_for(CONVERGE, "n1's Pod to reach n2's Pod again", || {
        lab.ping(&from, &to, 1).then_some(())
    });
    assert_eq!(
        mesh_inputs(&lab).unwrap(),
        inputs,
        "an input changed: the repair may have come from a mesh event"
    );
    assert_eq!(apply_failures(&lab, 1), Some(0), "the repair is no failure");
    let log = std::fs::read_to_string(format!("{}/agent.log", lab.run_dir(1))).unwrap();
    assert!(
        log.contains("weft's rule was missing; adding it again"),
        "{log}"
    );
}

#[test]
fn a_route_update_the_kernel_refuses_is_reported_retried_alone_and_applies_once_the_cause_is_gone()
{
    let (lab, n1, tun, from, to) = two_nodes("wtapply");
    assert_eq!(http_get(&n1, HEALTH, "/readyz").map(|(c, _)| c), Some(200));
    assert_eq!(apply_failures(&lab, 1), Some(0));

    // n2 leaves (its BGP route stays, so n1 blackholes its block) ...
    lab.script(&["stop-agent", "2"]);
    std::fs::remove_file(lab.registry_dir().join("n2.json")).unwrap();
    wait_for(Duration::from_secs(20), "n1 to drop n2", || {
        lab.peers(1)?.is_empty().then_some(())
    });
    // ... and n1's TUN is moved into another namespace under the agent (the packet loop keeps
    // running): n1's kernel now has no such link to set up or route into.
    let parking = Netns::new(&format!("{}-park", lab.name));
    run_ok(
        "ip",
        &["-n", &n1, "link", "set", &tun, "netns", &parking.name],
    );
    lab.script(&["start-agent", "2"]);

    // (a) n2's return is one event; applying it fails, and readiness says so.
    let body = wait_for(CONVERGE, "n1's /readyz to report the failed update", || {
        let (code, body) = http_get(&n1, HEALTH, "/readyz")?;
        (code == 503).then_some(body)
    });
    assert!(
        body.starts_with("applying the mesh to the datapath failed: ")
            && body.contains("No such device"),
        "{body}"
    );
    let (_, metrics) = http_get(&n1, HEALTH, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l == "weft_ready 0"), "{metrics}");
    let shown = lab.status(1).unwrap()["datapath"]["applyError"].clone();
    assert!(
        shown.as_str().is_some_and(|e| e.contains("No such device")),
        "weft status does not say why: {shown}"
    );
    // Meanwhile n2's block stays unreachable from n1: nothing leaves in clear.
    let table = run_ok("ip", &["-n", &n1, "route", "show", "table", "51820"]);
    assert!(
        !table.contains(&format!("10.244.2.0/24 dev {tun}")),
        "a tunnel route despite the failure:\n{table}"
    );
    lab.assert_blackholed(&from, &to, "unreachable 10.244.2.0/24");
    // A rule deleted meanwhile comes back although the TUN's repair keeps failing: Pod
    // traffic must not follow the main table's BGP routes in clear.
    run_ok("ip", &["-n", &n1, "rule", "del", "priority", "5210"]);
    wait_for(Duration::from_secs(20), "n1's rule to be put back", || {
        let rules = run_ok("ip", &["-n", &n1, "rule", "show", "priority", "5210"]);
        (rules.lines().count() == 1).then_some(())
    });

    // (b) With no input changing, the update is tried again (and fails again).
    let inputs = mesh_inputs(&lab).unwrap();
    let failed = apply_failures(&lab, 1).unwrap();
    assert!(failed >= 1, "the failure was not counted");
    wait_for(Duration::from_secs(20), "n1 to retry the update", || {
        (apply_failures(&lab, 1)? > failed).then_some(())
    });
    assert_eq!(
        mesh_inputs(&lab).unwrap(),
        inputs,
        "an input changed: the new attempt may not have been a retry"
    );
    assert_eq!(
        http_get(&n1, HEALTH, "/readyz").map(|(c, _)| c),
        Some(503),
        "ready while the kernel still refuses the route"
    );

    // (c) The cause goes away (no event for the agent, which watches no link state): the TUN
    // comes back, down and without its address; the next retry sets it up again, readiness
    // returns, and the route and rule are in place.
    run_ok(
        "ip",
        &["-n", &parking.name, "link", "set", &tun, "netns", &n1],
    );
    wait_for(CONVERGE, "n1 to be ready again", || {
        let (code, body) = http_get(&n1, HEALTH, "/readyz")?;
        (code == 200 && body == "ready\n").then_some(())
    });
    assert_eq!(mesh_inputs(&lab).unwrap(), inputs);
    let log = std::fs::read_to_string(format!("{}/agent.log", lab.run_dir(1))).unwrap();
    assert!(
        log.contains("the mesh is applied to the datapath again"),
        "{log}"
    );
    let table = run_ok("ip", &["-n", &n1, "route", "show", "table", "51820"]);
    assert!(
        table.contains(&format!("10.244.2.0/24 dev {tun}")),
        "no tunnel route to n2 after the retry:\n{table}"
    );
    let rules = run_ok("ip", &["-n", &n1, "rule", "show", "priority", "5210"]);
    assert_eq!(rules.lines().count(), 1, "{rules}");
    assert!(rules.contains("lookup 51820"), "{rules}");
    let (_, metrics) = http_get(&n1, HEALTH, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l == "weft_ready 1"), "{metrics}");
    assert_eq!(
        lab.status(1).unwrap()["datapath"]["applyError"],
        serde_json::Value::Null
    );
    wait_for(
        CONVERGE,
        "n1's Pod to reach n2's Pod through the tunnel",
        || lab.ping(&from, &to, 1).then_some(()),
    );
}

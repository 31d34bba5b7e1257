//! Interop with a plain WireGuard peer (wireguard-go configured with `wg`), as an external
//! machine in a hybrid cloud would be, and anti-spoofing against a peer we control.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Lab, run, run_ok, wait_for};

const LAB: &str = "wtwg";
const EXT_NS: &str = "wtwg-ext";
const EXT_IF: &str = "wtwgext";

/// wireguard-go in the external host's namespace; killed on drop.
struct WireguardGo(Child);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{EXT_IF}.sock"));
    }
}

fn ext(args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", EXT_NS];
    full.extend(args);
    run_ok("ip", &full)
}

fn wg_stdin(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", EXT_NS, "wg"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_plain_wireguard_peer_interoperates_and_cannot_spoof_sources() {
    let lab = Lab::up(LAB, 2);
    wait_for(Duration::from_secs(60), "n1 to peer with n2", || {
        (lab.peers(1)?.len() == 1).then_some(())
    });
    let n1_key = lab.status(1).unwrap()["node"]["record"]["publicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let (pod_ns, pod_ip) = lab.pods(1)[0].clone();

    // The external host: on the underlay bridge at 198.18.0.200, running wireguard-go.
    run_ok("ip", &["netns", "add", EXT_NS]);
    run_ok(
        "ip",
        &[
            "-n",
            &format!("{LAB}-br"),
            "link",
            "add",
            "ext",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            EXT_NS,
        ],
    );
    run_ok(
        "ip",
        &[
            "-n",
            &format!("{LAB}-br"),
            "link",
            "set",
            "ext",
            "master",
            "br0",
            "up",
        ],
    );
    ext(&["ip", "addr", "add", "198.18.0.200/24", "dev", "eth0"]);
    ext(&["ip", "link", "set", "eth0", "up"]);
    ext(&["ip", "link", "set", "lo", "up"]);
    let _wg = WireguardGo(
        Command::new("ip")
            .args(["netns", "exec", EXT_NS, "wireguard-go", "-f", EXT_IF])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        Duration::from_secs(10),
        "wireguard-go to create its interface",
        || {
            run("ip", &["-n", EXT_NS, "link", "show", EXT_IF])
                .status
                .success()
                .then_some(())
        },
    );
    let private = run_ok("wg", &["genkey"]).trim().to_string();
    let public = wg_stdin(&["pubkey"], &private);
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &private).unwrap();
    ext(&[
        "wg",
        "set",
        EXT_IF,
        "private-key",
        key_file.path().to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &n1_key,
        "endpoint",
        "198.18.0.1:51820",
        "allowed-ips",
        "10.244.1.0/24",
    ]);
    ext(&["ip", "addr", "add", "10.244.200.1/32", "dev", EXT_IF]);
    ext(&["ip", "addr", "add", "10.244.250.1/32", "dev", EXT_IF]);
    ext(&["ip", "link", "set", EXT_IF, "up"]);
    ext(&[
        "ip",
        "route",
        "add",
        "10.244.1.0/24",
        "dev",
        EXT_IF,
        "src",
        "10.244.200.1",
    ]);

    // weft learns the external host from its record and a BGP route (here installed by hand,
    // as its BGP speaker would).
    std::fs::write(
        lab.registry_dir().join("ext.json"),
        format!(
            r#"{{"name":"ext","addresses":["198.18.0.200"],"record":{{"v":1,"publicKey":"{public}","blocks":["10.244.200.0/24"]}}}}"#
        ),
    )
    .unwrap();
    run_ok(
        "ip",
        &[
            "-n",
            &lab.node_ns(1),
            "route",
            "add",
            "10.244.200.0/24",
            "via",
            "198.18.0.200",
            "proto",
            "bird",
        ],
    );
    wait_for(Duration::from_secs(20), "n1 to peer with ext", || {
        lab.peers(1)?.iter().any(|(n, _)| n == "ext").then_some(())
    });

    // Both directions work: ext -> Pod on n1, and Pod on n1 -> ext.
    wait_for(Duration::from_secs(20), "ext to reach a Pod on n1", || {
        run(
            "ip",
            &[
                "netns", "exec", EXT_NS, "ping", "-c", "1", "-W", "1", &pod_ip,
            ],
        )
        .status
        .success()
        .then_some(())
    });
    assert!(
        lab.ping(&pod_ns, "10.244.200.1", 3),
        "the Pod cannot reach the external host"
    );
    let shown = ext(&["wg", "show", EXT_IF, "latest-handshakes"]);
    assert!(shown.contains(&n1_key), "{shown}");
    assert!(!shown.contains("\t0"), "no handshake with weft: {shown}");

    // `wg show` on the weft node lists exactly its peers.
    let peers = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &lab.node_ns(1),
            "wg",
            "show",
            "wtwgn1",
            "peers",
        ],
    );
    let mut listed: Vec<&str> = peers.lines().collect();
    listed.sort();
    let n2_key = lab.status(2).unwrap()["node"]["record"]["publicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut expected = vec![public.as_str(), n2_key.as_str()];
    expected.sort();
    assert_eq!(listed, expected);

    // Spoofing: packets from a source outside ext's allowed IPs are dropped and counted.
    let spoofed = run(
        "ip",
        &[
            "netns",
            "exec",
            EXT_NS,
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            "10.244.250.1",
            &pod_ip,
        ],
    );
    assert!(!spoofed.status.success(), "a spoofed source got through");
    let dropped = wait_for(
        Duration::from_secs(5),
        "the spoofed packets to be counted",
        || {
            let status = lab.status(1)?;
            let ext_peer = status["datapath"]["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "ext")?
                .clone();
            ext_peer["drops"]["source_not_allowed"]
                .as_u64()
                .filter(|n| *n >= 3)
        },
    );
    assert!(dropped >= 3);
    // And genuine traffic from ext still flows.
    assert!(
        run(
            "ip",
            &[
                "netns", "exec", EXT_NS, "ping", "-c", "1", "-W", "2", &pod_ip
            ]
        )
        .status
        .success()
    );
}

//! A lab for integration tests: `scripts/lab.sh` with its own name, torn down on drop (also
//! when the test fails).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn weft_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

/// Runs a command, returning its output whether or not it succeeded.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and panics with its output if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `weft ARGS...` inside network namespace `ns`.
pub fn weft_in(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns, weft_bin()];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `weft status --output json` of the agent with run directory `run_dir` in `ns`, or `None` if
/// it does not answer.
pub fn weft_status(ns: &str, run_dir: &str) -> Option<Value> {
    let output = weft_in(ns, &["status", "--run-dir", run_dir, "--output", "json"]);
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// `weft policy check`: (allowed, the printed verdict).
pub fn weft_policy_check(
    ns: &str,
    run_dir: &str,
    from: &str,
    to: &str,
    port: &str,
) -> (bool, String) {
    let output = weft_in(
        ns,
        &[
            "policy",
            "check",
            "--run-dir",
            run_dir,
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
        ],
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

pub fn require_root() {
    let uid = run_ok("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "the lab tests create network namespaces and must run as root"
    );
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub struct Lab {
    pub name: String,
    pub nodes: usize,
    /// Extra `weft agent` flags for every agent of this lab.
    pub agent_args: String,
    pub pods_per_node: usize,
}

impl Lab {
    /// Brings up a lab of `nodes` nodes named `name` (≤ 8 lowercase alphanumerics).
    pub fn up(name: &str, nodes: usize) -> Lab {
        Self::up_with(name, nodes, "")
    }

    /// Like `up`, with extra `weft agent` flags.
    pub fn up_with(name: &str, nodes: usize, agent_args: &str) -> Lab {
        Self::up_with_pods(name, nodes, 2, agent_args)
    }

    /// Like `up_with`, with `pods_per_node` Pods on every node (1-8).
    pub fn up_with_pods(name: &str, nodes: usize, pods_per_node: usize, agent_args: &str) -> Lab {
        require_root();
        // The guard exists before `up` runs so a half-built lab is torn down too.
        let lab = Lab {
            name: name.to_string(),
            nodes,
            agent_args: agent_args.to_string(),
            pods_per_node,
        };
        lab.down_quietly();
        lab.script(&["up", &nodes.to_string()]);
        lab
    }

    pub fn script(&self, args: &[&str]) -> String {
        let script = repo().join("scripts/lab.sh");
        let output = Command::new(&script)
            .args(args)
            .env("WEFT_LAB", &self.name)
            .env("WEFT_BIN", weft_bin())
            .env("WEFT_AGENT_ARGS", &self.agent_args)
            .env("WEFT_LAB_PODS", self.pods_per_node.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "lab.sh {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn down_quietly(&self) {
        let _ = Command::new(repo().join("scripts/lab.sh"))
            .arg("down")
            .env("WEFT_LAB", &self.name)
            .output();
    }

    pub fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.name)
    }

    pub fn run_dir(&self, k: usize) -> String {
        format!("/run/{}/n{k}", self.name)
    }

    pub fn registry_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/{}/registry", self.name))
    }

    /// `weft status --output json` inside node `k`, or `None` if the agent does not answer.
    pub fn status(&self, k: usize) -> Option<Value> {
        weft_status(&self.node_ns(k), &self.run_dir(k))
    }

    /// `weft policy check` against node `k`'s agent.
    pub fn policy_check(&self, k: usize, from: &str, to: &str, port: &str) -> (bool, String) {
        weft_policy_check(&self.node_ns(k), &self.run_dir(k), from, to, port)
    }

    /// Peer name -> allowed IPs, from node `k`'s status.
    pub fn peers(&self, k: usize) -> Option<Vec<(String, BTreeSet<String>)>> {
        let status = self.status(k)?;
        let peers = status["peers"].as_array()?;
        Some(
            peers
                .iter()
                .map(|p| {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    let ips = p["allowedIps"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    (name, ips)
                })
                .collect(),
        )
    }

    /// Prefixes the kernel of node `k` holds as BGP routes (protocol bird) via `next_hop`.
    pub fn bird_routes_via(&self, k: usize, next_hop: &str) -> BTreeSet<String> {
        let out = run_ok(
            "ip",
            &[
                "-n",
                &self.node_ns(k),
                "-j",
                "route",
                "show",
                "proto",
                "bird",
            ],
        );
        let routes: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        routes
            .iter()
            .filter(|r| {
                r["gateway"].as_str() == Some(next_hop)
                    || r["nexthops"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|h| h["gateway"].as_str() == Some(next_hop)))
            })
            .filter_map(|r| r["dst"].as_str().map(String::from))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down_quietly();
    }
}

impl Lab {
    /// (netns, IP) of every Pod on node `k`, as the lab recorded them.
    pub fn pods(&self, k: usize) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(format!("/run/{}/n{k}/pods", self.name)).unwrap();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect()
    }

    /// Whether a ping from netns `from` reaches `to` (up to `tries` single pings).
    pub fn ping(&self, from: &str, to: &str, tries: usize) -> bool {
        (0..tries).any(|_| {
            run(
                "ip",
                &["netns", "exec", from, "ping", "-c", "1", "-W", "1", to],
            )
            .status
            .success()
        })
    }
}

/// A packet capture on the lab's underlay bridge, stopped (and reaped) on drop.
pub struct Capture {
    child: Option<std::process::Child>,
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Captures packets matching the tcpdump `filter` on the bridge of `lab`.
    pub fn start(lab: &Lab, filter: &str) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capture.txt");
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{}-br", lab.name),
                "tcpdump",
                "-l",
                "-n",
                "-i",
                "br0",
            ])
            .arg(filter)
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // tcpdump needs a moment to attach.
        std::thread::sleep(Duration::from_millis(1000));
        Capture {
            child: Some(child),
            file,
            _dir: dir,
        }
    }

    /// Stops the capture and returns the captured lines.
    pub fn stop(mut self) -> Vec<String> {
        self.finish();
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }

    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(Duration::from_millis(500));
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A TCP server in netns `ns` that answers every connection with "weft\n".
pub fn tcp_server(ns: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(
            "import socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 8080)); s.listen(16)\n\
             while True:\n    c, _ = s.accept(); c.sendall(b'weft\\n'); c.close()\n",
        )
        .spawn()
        .unwrap()
}

pub fn tcp_reaches(from: &str, to: &str) -> bool {
    let script = format!(
        "import socket\ns = socket.create_connection(('{to}', 8080), timeout=3)\nprint(s.recv(16).decode().strip())"
    );
    let out = run("ip", &["netns", "exec", from, "python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim() == "weft"
}

pub struct Servers(pub Vec<std::process::Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

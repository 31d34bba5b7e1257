//! A lab for integration tests: `scripts/lab.sh` with its own name, torn down on drop (also
//! when the test fails).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod duplex;
mod pair;
pub mod stream;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python3 tests/support/<script> <command>` in netns `ns`; the caller adds the arguments.
pub fn support_script(ns: &str, script: &str, command: &str) -> Command {
    let script = repo().join("tests/support").join(script);
    let mut python = Command::new("ip");
    python
        .args(["netns", "exec", ns, "python3"])
        .arg(script)
        .arg(command);
    python
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

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it creates stay
/// there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsFd as _;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// HTTP GET of `path` on `address` (an agent's `--health-address`) from inside netns `ns`:
/// (status code, body), or `None` if nothing answers.
pub fn http_get(ns: &str, address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let address: std::net::SocketAddr = address.parse().unwrap();
    let path = path.to_string();
    in_netns(ns, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: weft\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    })
}

/// A network namespace a test creates (any left over from an earlier run replaced), with
/// its loopback up, and the process the test runs in it: the process is killed and the
/// namespace deleted on drop, even when the test fails.
pub struct Netns {
    pub name: String,
    pub process: Option<std::process::Child>,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        require_root();
        let _ = run("ip", &["netns", "del", name]);
        run_ok("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
            process: None,
        };
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
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
    /// Dual-stack (`WEFT_LAB_IPV6=1`): IPv6 underlay, Pod blocks and Pod addresses too.
    pub dual_stack: bool,
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
        Self::bring_up(Lab {
            name: name.to_string(),
            nodes,
            agent_args: agent_args.to_string(),
            pods_per_node,
            dual_stack: false,
        })
    }

    /// Like `up`, dual-stack: node K also has `2001:2::K`, the block `fd00:10:244:K::/64` and
    /// an IPv6 address on every Pod (see [`Lab::pods6`]).
    pub fn up_dual_stack(name: &str, nodes: usize) -> Lab {
        Self::bring_up(Lab {
            name: name.to_string(),
            nodes,
            agent_args: String::new(),
            pods_per_node: 2,
            dual_stack: true,
        })
    }

    fn bring_up(lab: Lab) -> Lab {
        require_root();
        // The guard exists before `up` runs so a half-built lab is torn down too.
        lab.down_quietly();
        lab.script(&["up", &lab.nodes.to_string()]);
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
            .env("WEFT_LAB_IPV6", if self.dual_stack { "1" } else { "0" })
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

    /// Waits up to `timeout` for every node to have all the others as peers.
    pub fn wait_for_mesh(&self, timeout: Duration) {
        wait_for(timeout, "the mesh", || {
            (1..=self.nodes)
                .all(|k| self.peers(k).is_some_and(|p| p.len() == self.nodes - 1))
                .then_some(())
        });
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
    /// Pings from n1's Pod `from` to `to` fail, nothing Pod-addressed crosses the underlay
    /// meanwhile, and n1's table holds `route`.
    pub fn assert_blackholed(&self, from: &str, to: &str, route: &str) {
        self.assert_blackholed_on(1, from, to, route);
    }

    /// Pings from node `k`'s Pod `from` to `to` fail, nothing Pod-addressed crosses the
    /// underlay meanwhile, and node `k`'s table holds `route`.
    pub fn assert_blackholed_on(&self, k: usize, from: &str, to: &str, route: &str) {
        let clear = Capture::start(self, CLEAR_POD_TRAFFIC);
        assert!(
            !self.ping(from, to, 3),
            "{to} is reachable without a verified peer"
        );
        clear.assert_nothing(&format!("traffic to {to} left in clear"));
        let family = if to.contains(':') { "-6" } else { "-4" };
        let table = run_ok(
            "ip",
            &[
                family,
                "-n",
                &self.node_ns(k),
                "route",
                "show",
                "table",
                "51820",
            ],
        );
        assert!(
            table.contains(route),
            "{route} missing from n{k}'s table:\n{table}"
        );
    }
}

/// Any packet on the underlay whose outer header carries a Pod address (IPv4, or IPv6 in a
/// dual-stack lab) is a leak.
pub const CLEAR_POD_TRAFFIC: &str = "net 10.244.0.0/16 or ip6 net fd00:10:244::/48";

impl Lab {
    /// (netns, IP) of every Pod on node `k`, as the lab recorded them.
    pub fn pods(&self, k: usize) -> Vec<(String, String)> {
        self.pod_addresses(k, 1)
    }

    /// (netns, IPv6 address) of every Pod on node `k` of a dual-stack lab.
    pub fn pods6(&self, k: usize) -> Vec<(String, String)> {
        self.pod_addresses(k, 2)
    }

    /// (netns, column `column` of the lab's Pod list: 1 the IPv4, 2 the IPv6 address).
    fn pod_addresses(&self, k: usize, column: usize) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(format!("/run/{}/n{k}/pods", self.name)).unwrap();
        text.lines()
            .filter_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                Some((parts.first()?.to_string(), parts.get(column)?.to_string()))
            })
            .collect()
    }

    /// Every Pod of `pods` (node, netns, addresses) pings and reaches TCP port 8080 (a
    /// [`tcp_server`] must answer there) on every address of every Pod of another node.
    pub fn assert_pods_reach_remote_pods(&self, pods: &[(usize, String, Vec<String>)]) {
        for (k, from, _) in pods {
            for (j, to_ns, addresses) in pods {
                if k == j {
                    continue;
                }
                for to in addresses {
                    assert!(self.ping(from, to, 5), "{from} cannot ping {to_ns} ({to})");
                    assert!(
                        tcp_reaches(from, to),
                        "{from} cannot reach TCP on {to_ns} ({to})"
                    );
                }
            }
        }
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
        Capture::on(&format!("{}-br", lab.name), "br0", filter)
    }

    /// Captures packets matching the tcpdump `filter` on `interface` in netns `ns`.
    pub fn on(ns: &str, interface: &str, filter: &str) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capture.txt");
        let out = std::fs::File::create(&file).unwrap();
        let log = dir.path().join("tcpdump.log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-l", "-n", "-i", interface])
            .arg(filter)
            .stdout(out)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // A capture that never started would find nothing and prove nothing: wait until
        // tcpdump says it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("listening on") {
                break;
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tcpdump {filter:?} did not start ({exited:?}): {said}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

    /// Stops the capture and asserts it saw nothing; `what` says what a packet would mean.
    pub fn assert_nothing(self, what: &str) {
        let seen = self.stop();
        assert!(seen.is_empty(), "{what}:\n{}", seen.join("\n"));
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

/// A TCP server in netns `ns` that answers every connection on IPv4 port 8080 with "weft\n".
pub fn tcp_server(ns: &str) -> std::process::Child {
    answering_server(
        ns,
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', 8080)); s.listen(16)\n",
    )
}

/// Like [`tcp_server`], on IPv6 and IPv4.
pub fn tcp_server_dual_stack(ns: &str) -> std::process::Child {
    answering_server(
        ns,
        "s = socket.create_server(('::', 8080), family=socket.AF_INET6, dualstack_ipv6=True, backlog=16)\n",
    )
}

/// Python in netns `ns` that runs `listen` (binding a listening socket `s`) and then answers
/// every connection with "weft\n".
fn answering_server(ns: &str, listen: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(format!(
            "import socket\n{listen}while True:\n    c, _ = s.accept(); c.sendall(b'weft\\n'); c.close()\n"
        ))
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

// Key rotation: `weft key` against a lab node, the registry files, `wg show`, and traffic that
// runs in the background while a test acts (a fast ping and a steady TCP stream).

/// `weft key status --output json` of the agent with run directory `run_dir` in `ns`, or
/// `None` if it does not answer.
pub fn weft_key_status(ns: &str, run_dir: &str) -> Option<Value> {
    let output = weft_in(
        ns,
        &["key", "status", "--run-dir", run_dir, "--output", "json"],
    );
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// A command's stdout and stderr, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

impl Lab {
    /// Node `k`'s key directory (the `--key-dir` the lab passes).
    pub fn key_dir(&self, k: usize) -> PathBuf {
        PathBuf::from(format!("/run/{}/n{k}/keys", self.name))
    }

    /// Node `k`'s TUN and WireGuard API name (`wg show <interface>`).
    pub fn interface(&self, k: usize) -> String {
        format!("{}n{k}", self.name)
    }

    /// `weft key status --output json` against node `k`'s agent.
    pub fn key_status(&self, k: usize) -> Option<Value> {
        weft_key_status(&self.node_ns(k), &self.run_dir(k))
    }

    /// `weft key rotate --run-dir <node k's> EXTRA...`, run to completion.
    pub fn key_rotate(&self, k: usize, extra: &[&str]) -> Output {
        let run_dir = self.run_dir(k);
        let mut args = vec!["key", "rotate", "--run-dir", &run_dir];
        args.extend_from_slice(extra);
        weft_in(&self.node_ns(k), &args)
    }

    /// The `record` of node `k`'s file in the registry directory, as the file holds it now.
    pub fn registry_record(&self, k: usize) -> Option<Value> {
        let text = std::fs::read_to_string(self.registry_dir().join(format!("n{k}.json"))).ok()?;
        let file: Value = serde_json::from_str(&text).ok()?;
        Some(file["record"].clone())
    }

    /// `wg show <node k's interface> FIELD` inside node `k`, as lines.
    pub fn wg_show(&self, k: usize, field: &str) -> Vec<String> {
        let out = run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &self.node_ns(k),
                "wg",
                "show",
                &self.interface(k),
                field,
            ],
        );
        out.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The public key node `j` holds for its peer `name` (from `weft status`), if it has one.
    pub fn peer_key(&self, j: usize, name: &str) -> Option<String> {
        let status = self.status(j)?;
        status["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?["publicKey"]
            .as_str()
            .map(String::from)
    }

    /// Pod `p` (1-based) of node `k`: (netns, IP).
    pub fn pod(&self, k: usize, p: usize) -> (String, String) {
        self.pods(k)[p - 1].clone()
    }

    /// The pid in node `k`'s agent pid file.
    pub fn agent_pid(&self, k: usize) -> String {
        std::fs::read_to_string(format!("{}/agent.pid", self.run_dir(k)))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// Files under `dir` (recursively) whose bytes contain `secret_b64`, its decoded bytes or their
/// hex form.
pub fn files_containing_secret(dir: &std::path::Path, secret_b64: &str) -> Vec<PathBuf> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret_b64)
        .unwrap_or_else(|e| panic!("not a base64 key: {e}"));
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let needles: [&[u8]; 3] = [secret_b64.as_bytes(), &raw, hex.as_bytes()];
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == *n))
        {
            found.push(path);
        }
    }
    found
}

/// `(transmitted, received)` from ping's summary line
/// ("N packets transmitted, M received, ...").
pub fn ping_counts(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',');
    let transmitted = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let received = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((transmitted, received))
}

/// The sequence numbers in 1..=`transmitted` that ping printed no reply for.
pub fn ping_missing_replies(text: &str, transmitted: u64) -> Vec<u64> {
    let replied: BTreeSet<u64> = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let seq = l.split("icmp_seq=").nth(1)?;
            seq.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (1..=transmitted).filter(|s| !replied.contains(s)).collect()
}

/// What a finished background ping saw.
#[derive(Debug)]
pub struct PingReport {
    pub transmitted: u64,
    pub received: u64,
    /// Sequence numbers without a reply.
    pub missing: Vec<u64>,
    pub output: String,
}

impl PingReport {
    pub fn lossless(&self) -> bool {
        self.transmitted > 0 && self.transmitted == self.received
    }

    /// The summary and the first missing replies, for assertion messages.
    pub fn summary(&self) -> String {
        let tail: Vec<&str> = self.output.lines().rev().take(3).collect();
        let shown: Vec<u64> = self.missing.iter().copied().take(40).collect();
        format!(
            "{} transmitted, {} received; no reply for icmp_seq {:?}{}\n{}",
            self.transmitted,
            self.received,
            shown,
            if self.missing.len() > shown.len() {
                " ..."
            } else {
                ""
            },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// `ping -c COUNT -i INTERVAL` from netns `from` to `to`, running in the background (output to
/// a file, so a long run never blocks on a pipe); killed on drop.
pub struct BackgroundPing {
    child: Option<std::process::Child>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl BackgroundPing {
    /// Starts the ping (as root, so intervals below 0.2 s are allowed).
    pub fn start(from: &str, to: &str, count: u32, interval: &str) -> BackgroundPing {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ping.txt");
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", from, "ping", "-n", "-i", interval])
            .args(["-c", &count.to_string(), "-W", "2", to])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        BackgroundPing {
            child: Some(child),
            file,
            _dir: dir,
        }
    }

    /// Whether ping is still sending (it has not exited yet).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for ping to finish its count and returns what it saw.
    pub fn finish(mut self) -> PingReport {
        if let Some(mut child) = self.child.take() {
            child.wait().unwrap();
        }
        let output = std::fs::read_to_string(&self.file).unwrap_or_default();
        let (transmitted, received) =
            ping_counts(&output).unwrap_or_else(|| panic!("ping printed no summary:\n{output}"));
        let missing = ping_missing_replies(&output, transmitted);
        PingReport {
            transmitted,
            received,
            missing,
            output,
        }
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

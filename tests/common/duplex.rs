//! A two-way TCP stream between two Pods (`tests/support/duplex.py`): both ends send a small
//! chunk every 10 ms until dropped; the server's received byte count can be read at any time.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::repo;

pub struct Duplex {
    server: Option<Child>,
    client: Option<Child>,
    progress: PathBuf,
}

impl Duplex {
    /// Starts the server on `server_ip:port` in netns `server_ns` and the client in netns
    /// `client_ns`; returns once the client is connected. The server writes its progress to
    /// `progress`.
    pub fn start(
        server_ns: &str,
        server_ip: &str,
        port: u16,
        client_ns: &str,
        progress: PathBuf,
    ) -> Duplex {
        let script = repo().join("tests/support/duplex.py");
        let script = script.to_str().unwrap();
        let port = port.to_string();
        let _ = std::fs::remove_file(&progress);
        let server = Command::new("ip")
            .args(["netns", "exec", server_ns, "python3", script, "server"])
            .args([server_ip, &port, progress.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut duplex = Duplex {
            server: Some(server),
            client: None,
            progress,
        };
        let mut client = Command::new("ip")
            .args(["netns", "exec", client_ns, "python3", script, "client"])
            .args([server_ip, &port])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
        duplex.client = Some(client);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "connected",
            "the duplex client did not connect to {server_ip}:{port}"
        );
        duplex
    }

    /// Bytes the server has received so far (`None` before its first report).
    pub fn received(&self) -> Option<u64> {
        std::fs::read_to_string(&self.progress)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Duplex {
    fn drop(&mut self) {
        for mut child in [self.client.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.progress);
    }
}

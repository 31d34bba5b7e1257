//! A two-way TCP stream between two Pods (`tests/support/duplex.py`): both ends send a small
//! chunk every 10 ms until dropped; the server's received byte count can be read at any time.

use std::path::PathBuf;
use std::process::Stdio;

use super::pair::ProcessPair;
use super::support_script;

pub struct Duplex {
    pair: ProcessPair,
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
        let port = port.to_string();
        let _ = std::fs::remove_file(&progress);
        let pair = ProcessPair::serve(
            support_script(server_ns, "duplex.py", "server")
                .args([server_ip, &port, progress.to_str().unwrap()])
                .stdout(Stdio::null()),
        );
        let mut duplex = Duplex { pair, progress };
        let connected = duplex
            .pair
            .connect(support_script(client_ns, "duplex.py", "client").args([server_ip, &port]));
        if let Err(line) = connected {
            panic!("the duplex client did not connect to {server_ip}:{port}: {line:?}");
        }
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
        // Both ends first: a live server would write the progress file again.
        self.pair.kill();
        let _ = std::fs::remove_file(&self.progress);
    }
}

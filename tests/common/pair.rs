//! A server and a client of one `tests/support` script, each in a network namespace of its
//! own, killed on drop: what `Duplex` and `Stream` have in common.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The two processes; whichever of them is still here is killed on drop (the client first).
pub struct ProcessPair {
    server: Option<Child>,
    client: Option<Child>,
}

impl ProcessPair {
    /// Spawns the server.
    pub fn serve(server: &mut Command) -> ProcessPair {
        ProcessPair {
            server: Some(server.spawn().unwrap()),
            client: None,
        }
    }

    /// Spawns the client with its stdout piped and reads the first line it prints: `Ok` with
    /// the rest of its stdout once that line is "connected", `Err` with the line otherwise
    /// (empty if the client printed nothing before it exited).
    pub fn connect(&mut self, client: &mut Command) -> Result<BufReader<ChildStdout>, String> {
        let mut child = client.stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        self.client = Some(child);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.trim() == "connected" {
            Ok(out)
        } else {
            Err(line)
        }
    }

    /// The server, no longer killed on drop.
    pub fn take_server(&mut self) -> Child {
        self.server.take().unwrap()
    }

    /// The client, no longer killed on drop.
    pub fn take_client(&mut self) -> Child {
        self.client.take().unwrap()
    }

    /// Kills and reaps the client, then the server (those not taken or killed already).
    pub fn kill(&mut self) {
        for mut child in [self.client.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessPair {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A TCP stream from a client Pod to a server Pod (`tests/support/stream.py`): a small chunk
//! every 10 ms until `finish`.

use std::io::{BufReader, Read as _};
use std::process::{ChildStdout, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::output_text;
use super::pair::ProcessPair;
use super::support_script;

/// What a finished stream saw (`tests/support/stream.py`).
#[derive(Debug)]
pub struct StreamReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The longest time between two successive reads with data at the server.
    pub max_gap: Duration,
    /// How long the client sent.
    pub sent_for: Duration,
    pub server: Value,
    pub client: Value,
}

/// A TCP stream from a client Pod to a server Pod (`tests/support/stream.py`): a small chunk
/// every 10 ms until `finish`; both ends killed on drop.
pub struct Stream {
    pair: ProcessPair,
    client_out: BufReader<ChildStdout>,
}

impl Stream {
    /// Starts the server on `server_ip:port` in netns `server_ns` and the client in netns
    /// `client_ns`; returns once the client is connected. The client stops by itself after
    /// `max_secs` at the latest.
    pub fn start(
        server_ns: &str,
        server_ip: &str,
        port: u16,
        client_ns: &str,
        max_secs: u32,
    ) -> Stream {
        let port = port.to_string();
        let mut pair = ProcessPair::serve(
            support_script(server_ns, "stream.py", "server")
                .args([server_ip, &port])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let connected = pair.connect(
            support_script(client_ns, "stream.py", "client")
                .args([server_ip, &port, &max_secs.to_string()])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        match connected {
            Ok(client_out) => Stream { pair, client_out },
            Err(line) => {
                let client = pair.take_client().wait_with_output().unwrap();
                panic!(
                    "the stream client did not connect to {server_ip}:{port}: {line}\n{}",
                    String::from_utf8_lossy(&client.stderr)
                );
            }
        }
    }

    /// Stops the client, waits for both ends and returns what they saw.
    pub fn finish(mut self) -> StreamReport {
        let mut client = self.pair.take_client();
        // Closing the client's stdin stops it.
        drop(client.stdin.take());
        let mut client_text = String::new();
        self.client_out.read_to_string(&mut client_text).unwrap();
        let client_output = client.wait_with_output().unwrap();
        let server_output = self.pair.take_server().wait_with_output().unwrap();
        assert!(
            client_output.status.success(),
            "the stream client failed: {client_text}\n{}",
            String::from_utf8_lossy(&client_output.stderr)
        );
        assert!(
            server_output.status.success(),
            "the stream server failed: {}",
            output_text(&server_output)
        );
        let client: Value = serde_json::from_str(client_text.trim())
            .unwrap_or_else(|e| panic!("stream client printed {client_text:?}: {e}"));
        let server: Value = serde_json::from_slice(&server_output.stdout).unwrap_or_else(|e| {
            panic!("stream server printed {}: {e}", output_text(&server_output))
        });
        StreamReport {
            bytes_sent: client["bytes"].as_u64().unwrap(),
            bytes_received: server["bytes"].as_u64().unwrap(),
            max_gap: Duration::from_secs_f64(server["maxGapSecs"].as_f64().unwrap()),
            sent_for: Duration::from_secs_f64(client["secs"].as_f64().unwrap()),
            server,
            client,
        }
    }
}

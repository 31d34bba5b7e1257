//! `weft key rotate` and `weft key status`: thin clients of the agent's admin socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::OutputFormat;
use crate::agent::admin::{self, AdminError, AdminRequest};
use crate::rotation::KeyStatus;

/// How often `--wait` asks the agent for progress.
const POLL: Duration = Duration::from_millis(250);
/// How long `--wait` waits beyond the grace period before giving up.
const WAIT_SLACK: Duration = Duration::from_secs(30);

async fn key_status(run_dir: &Path) -> Result<KeyStatus, AdminError> {
    let value = admin::request(run_dir, &AdminRequest::KeyStatus).await?;
    serde_json::from_value(value)
        .map_err(|e| AdminError::BadResponse(format!("unexpected key status shape: {e}")))
}

pub async fn status(run_dir: &Path, output: OutputFormat) -> anyhow::Result<()> {
    let status = key_status(run_dir).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => print!("{}", status.to_table(crate::rotation::unix_now())),
    }
    Ok(())
}

pub async fn rotate(run_dir: &Path, grace: Duration, wait: bool) -> anyhow::Result<()> {
    let request = AdminRequest::KeyRotate {
        grace_secs: grace.as_secs(),
    };
    let value = admin::request(run_dir, &request).await?;
    let started: KeyStatus =
        serde_json::from_value(value).context("the agent's answer has an unexpected shape")?;
    let (Some(rotation), Some(next)) = (&started.rotation, &started.next_public_key) else {
        bail!("the agent accepted the rotation but reports none in progress");
    };
    let epoch = rotation.epoch;
    println!(
        "key rotation to epoch {epoch} announced: next public key {next} ({}/{} peers moved, grace {})",
        rotation.peers_moved,
        rotation.peers_total,
        humantime::format_duration(grace)
    );
    if !wait {
        return Ok(());
    }
    let give_up = tokio::time::Instant::now() + grace + WAIT_SLACK;
    loop {
        tokio::time::sleep(POLL).await;
        let status = match key_status(run_dir).await {
            Ok(status) => status,
            Err(error) => bail!(
                "lost the agent before the rotation to epoch {epoch} completed ({error}); it resumes the rotation from its key directory when it starts again"
            ),
        };
        if status.key_epoch >= epoch && status.rotation.is_none() {
            let detail = match &status.last_rotation {
                Some(last) if last.epoch == epoch && !last.unmoved_peers.is_empty() => format!(
                    " (grace ended; {} re-handshake once they read the record)",
                    last.unmoved_peers.join(", ")
                ),
                Some(last) if last.epoch == epoch => " (every peer moved)".to_string(),
                _ => String::new(),
            };
            println!(
                "key rotation to epoch {epoch} complete: public key {}{detail}",
                status.public_key
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            let why = status
                .last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            bail!(
                "the rotation to epoch {epoch} did not complete within the grace period and {}s{why}",
                WAIT_SLACK.as_secs()
            );
        }
    }
}

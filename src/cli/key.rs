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
/// How long `weft key rotate` waits for the agent to publish the announcement (or to say why
/// it cannot) before it reports it not published.
const PUBLISH_WAIT: Duration = Duration::from_secs(15);

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
    let next = next.clone();
    // The agent publishes in the background: give it a moment to get the record out (or to
    // say why it cannot).
    let status = until_published(run_dir, started).await;
    let progress = status
        .rotation
        .as_ref()
        .map(|r| format!("{}/{} peers moved, ", r.peers_moved, r.peers_total))
        .unwrap_or_default();
    let shown_grace = humantime::format_duration(grace);
    if status.published {
        println!(
            "key rotation to epoch {epoch} announced: next public key {next} ({progress}grace {shown_grace})"
        );
    } else {
        println!(
            "key rotation to epoch {epoch} announced locally, not yet published: {}; the agent keeps trying, and the grace period ({shown_grace}) starts once it is published (next public key {next})",
            not_published_reason(&status)
        );
    }
    if !wait {
        return Ok(());
    }
    let mut give_up = tokio::time::Instant::now() + PUBLISH_WAIT + grace + WAIT_SLACK;
    loop {
        tokio::time::sleep(POLL).await;
        let status = match key_status(run_dir).await {
            Ok(status) => status,
            Err(error) => bail!(
                "lost the agent before the rotation to epoch {epoch} completed ({error}); it resumes the rotation from its key directory when it starts again"
            ),
        };
        // The grace period runs from the announcement's first publication, which may come
        // well after we started waiting (the API server was away): wait for all of it.
        if let Some(deadline) = status
            .rotation
            .as_ref()
            .and_then(crate::rotation::RotationView::deadline)
        {
            let ends = deadline.saturating_add(WAIT_SLACK.as_secs());
            let left = ends.saturating_sub(crate::rotation::unix_now());
            give_up = give_up.max(tokio::time::Instant::now() + Duration::from_secs(left));
        }
        if completed(&status, epoch) && status.published {
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
            let state = if completed(&status, epoch) {
                "completed, but its record is not published"
            } else if status
                .rotation
                .as_ref()
                .is_some_and(|r| r.announced_at.is_none())
            {
                "has not completed: its announcement is not published"
            } else {
                "has not completed"
            };
            let why = if status.published {
                status
                    .last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            } else {
                format!(": {}", not_published_reason(&status))
            };
            bail!(
                "gave up waiting: the rotation to epoch {epoch} {state} within the grace period and {}s{why}",
                WAIT_SLACK.as_secs()
            );
        }
    }
}

/// Whether the rotation to `epoch` has completed.
fn completed(status: &KeyStatus, epoch: u64) -> bool {
    status.key_epoch >= epoch && status.rotation.is_none()
}

/// Why the record is not published, as far as the agent knows.
fn not_published_reason(status: &KeyStatus) -> String {
    status
        .last_error
        .clone()
        .unwrap_or_else(|| "the registry has not taken the record yet".into())
}

/// Polls the key status until the record is published or the agent reports why not, for at
/// most `PUBLISH_WAIT`; returns the last status seen.
async fn until_published(run_dir: &Path, mut status: KeyStatus) -> KeyStatus {
    let give_up = tokio::time::Instant::now() + PUBLISH_WAIT;
    while !status.published && status.last_error.is_none() && tokio::time::Instant::now() < give_up
    {
        tokio::time::sleep(POLL).await;
        match key_status(run_dir).await {
            Ok(now) => status = now,
            Err(_) => break,
        }
    }
    status
}

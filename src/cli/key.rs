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
    let peers_total = rotation.peers_total;
    let next = next.clone();
    // The agent publishes in the background: give it a moment to get the record out (or to
    // say why it cannot).
    let status = until_published(run_dir, started).await;
    let shown_grace = humantime::format_duration(grace);
    let progress = progress(&status, epoch, peers_total, &shown_grace.to_string());
    if status.published {
        println!("key rotation to epoch {epoch} announced: next public key {next} ({progress})");
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

/// How far the rotation to `epoch` has come, once announced. Peers move within moments of
/// reading the record, so the rotation may already have completed by the time the
/// announcement is seen published: then how it ended (out of the `peers_total` peers it
/// started with).
fn progress(status: &KeyStatus, epoch: u64, peers_total: usize, grace: &str) -> String {
    if let Some(rotation) = status.rotation.as_ref().filter(|r| r.epoch == epoch) {
        return format!(
            "{}/{} peers moved, grace {grace}",
            rotation.peers_moved, rotation.peers_total
        );
    }
    match &status.last_rotation {
        Some(last) if last.epoch == epoch && completed(status, epoch) => {
            let moved = peers_total.saturating_sub(last.unmoved_peers.len());
            let end = match last.reason {
                crate::rotation::CompletionReason::AllPeersMoved => "complete".to_string(),
                crate::rotation::CompletionReason::GraceEnded => format!("grace {grace} ended"),
            };
            format!("{moved}/{peers_total} peers moved: {end}")
        }
        _ => format!("grace {grace}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::{CompletedView, CompletionReason, RotationView};

    fn status(rotation: Option<RotationView>, last: Option<CompletedView>) -> KeyStatus {
        KeyStatus {
            public_key: "k".into(),
            next_public_key: rotation.as_ref().map(|_| "n".into()),
            key_epoch: if rotation.is_some() { 0 } else { 1 },
            current_since: 0,
            next_scheduled_rotation: None,
            rotation,
            last_rotation: last,
            published: true,
            last_error: None,
        }
    }

    #[test]
    fn progress_of_a_rotation_in_progress_counts_the_moved_peers() {
        let rotation = RotationView {
            epoch: 1,
            started_at: 10,
            grace_secs: 300,
            announced_at: Some(11),
            peers_moved: 1,
            peers_total: 2,
            pending_peers: vec!["n3".into()],
        };
        assert_eq!(
            progress(&status(Some(rotation), None), 1, 2, "5m"),
            "1/2 peers moved, grace 5m"
        );
    }

    #[test]
    fn progress_of_a_rotation_that_already_completed_says_so() {
        let last = |reason, unmoved: &[&str]| CompletedView {
            epoch: 1,
            completed_at: 12,
            reason,
            unmoved_peers: unmoved.iter().map(|p| p.to_string()).collect(),
        };
        let moved = status(None, Some(last(CompletionReason::AllPeersMoved, &[])));
        assert_eq!(progress(&moved, 1, 2, "5m"), "2/2 peers moved: complete");
        let ended = status(None, Some(last(CompletionReason::GraceEnded, &["n3"])));
        assert_eq!(
            progress(&ended, 1, 2, "1s"),
            "1/2 peers moved: grace 1s ended"
        );
        // Nothing known about this epoch: only the grace period.
        assert_eq!(progress(&status(None, None), 1, 2, "5m"), "grace 5m");
    }
}

//! The policy source for standalone nodes and the lab: a directory of Kubernetes YAML
//! (Namespaces, Pods with labels, IPs and container ports, NetworkPolicies), re-read and
//! recompiled whenever it changes. Each file is taken whole; one that cannot be used keeps its
//! last good content in force (see [`super::files`]) and is reported with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::PolicySet;
use super::files::{DirRead, FileRead, Merged, PolicyFiles, RejectedPolicyFile, parse_file};

/// Reads every `.yaml`, `.yml` and `.json` file of `dir` (hidden files aside), each parsed.
pub fn read_dir(dir: &Path) -> DirRead {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        // An entry that cannot be listed makes the listing unknown: it must not look like a
        // deleted file.
        Ok(entries) => match entries.map(|e| e.map(|e| e.path())).collect() {
            Ok(paths) => paths,
            Err(error) => {
                return DirRead::Unreadable {
                    dir: dir.display().to_string(),
                    reason: format!("listing it failed: {error}"),
                };
            }
        },
        Err(error) => {
            return DirRead::Unreadable {
                dir: dir.display().to_string(),
                reason: error.to_string(),
            };
        }
    };
    paths.sort();
    let files = paths
        .into_iter()
        .filter(|path| is_policy_file(path))
        .map(|path| {
            let read = match std::fs::metadata(&path) {
                // A FIFO or device would block the read (and the watch with it) or never end.
                Ok(meta) if !meta.is_file() && !meta.is_dir() => {
                    FileRead::Bad("not a regular file (nor a link to one)".into())
                }
                _ => read_file(&path),
            };
            (path.display().to_string(), read)
        })
        .collect();
    DirRead::Files(files)
}

fn read_file(path: &Path) -> FileRead {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&text),
        // Read, but not UTF-8: bad content, like bad YAML.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            FileRead::Bad(error.to_string())
        }
        Err(error) => FileRead::Unreadable(error.to_string()),
    }
}

fn is_policy_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
}

/// What the directory holds now, for an agent that has never read it before: a file that
/// cannot be used makes the read incomplete.
pub fn read_once(dir: &Path) -> Merged {
    PolicyFiles::default().merge(read_dir(dir))
}

/// Publishes `set` unless it equals the rule set in force, and returns it if published.
/// Inputs re-read unchanged, or changed only where policy does not look (a Pod's conditions,
/// a resourceVersion), compile to an equal set; publishing it would bump the datapath's rule
/// set version for nothing and make it re-check every tracked flow.
pub(crate) fn publish(
    sets: &watch::Sender<Option<Arc<PolicySet>>>,
    set: PolicySet,
) -> Option<Arc<PolicySet>> {
    let mut published = None;
    sets.send_if_modified(|current| {
        if current.as_deref() == Some(&set) {
            return false;
        }
        let set = Arc::new(set);
        published = Some(set.clone());
        *current = Some(set);
        true
    });
    published
}

/// Logs what a compiled rule set left out or had to decide: rejected policies, and addresses
/// claimed by several live Pods.
pub(crate) fn warn_about(set: &PolicySet) {
    for rejected in &set.rejected {
        tracing::warn!(policy = %rejected.policy, reason = %rejected.reason, "NetworkPolicy rejected");
    }
    for conflict in &set.conflicts {
        tracing::warn!(
            ip = %conflict.ip,
            pod = %conflict.owner,
            others = ?conflict.others,
            "several live Pods claim one address; policy judges it as the newest, not terminating one"
        );
    }
}

/// Watches `dir`, publishing a freshly compiled rule set after every change, and the files
/// whose current content is not used to `rejected`.
pub async fn watch_dir(
    dir: PathBuf,
    sets: watch::Sender<Option<Arc<PolicySet>>>,
    rejected: watch::Sender<Vec<RejectedPolicyFile>>,
) {
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| crate::registry::file::changes_content(&e.kind)) {
            let _ = events_tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut watcher) => {
            if let Err(error) =
                notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
            {
                tracing::warn!(%error, dir = %dir.display(), "cannot watch the policy directory; re-reading it every 10 s");
            }
            Some(watcher)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch the policy directory; re-reading it every 10 s");
            None
        }
    };
    let mut files = PolicyFiles::default();
    loop {
        if sets.is_closed() {
            return;
        }
        let path = dir.clone();
        if let Ok(read) = tokio::task::spawn_blocking(move || read_dir(&path)).await {
            let merged = files.merge(read);
            // Fail closed: what cannot be read, and was never read good, keeps the rule set in
            // force (or none at all before the first) rather than one missing what it holds.
            if merged.incomplete {
                tracing::warn!(dir = %dir.display(), "policy directory not fully readable; keeping the rule set in force");
            } else {
                publish_objects(&sets, &merged, &dir);
            }
            // After the rule set: a report seen means the rule set of the read it comes from
            // has been handed to the agent.
            report_rejected(&rejected, merged.rejected);
        }
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        // Let a burst of writes settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while events.try_recv().is_ok() {}
    }
}

fn publish_objects(sets: &watch::Sender<Option<Arc<PolicySet>>>, merged: &Merged, dir: &Path) {
    let objects = &merged.objects;
    match publish(sets, objects.compile()) {
        Some(set) => {
            warn_about(&set);
            tracing::info!(
                policies = objects.policies.len(),
                pods = objects.pods.len(),
                namespaces = objects.namespaces.len(),
                rejected_files = merged.rejected.len(),
                "policy rule set compiled"
            );
        }
        None => {
            tracing::debug!(dir = %dir.display(), "policy directory re-read; rule set unchanged")
        }
    }
}

/// Sends `now` and logs it, when it differs from what was sent last (every 10 s the same: say
/// it again only when it changes).
fn report_rejected(sent: &watch::Sender<Vec<RejectedPolicyFile>>, now: Vec<RejectedPolicyFile>) {
    sent.send_if_modified(|last| {
        if *last == now {
            return false;
        }
        for file in &now {
            tracing::warn!(
                file = %file.file,
                reason = %file.reason,
                in_force = file.in_force.code(),
                "policy file not used as it is"
            );
        }
        if now.is_empty() {
            tracing::info!("every policy file is used as it is again");
        }
        *last = now;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::files::InForce;

    const POD_A: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.244.1.2, phase: Running}
"#;
    const POD_B: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.244.1.3, phase: Running}
"#;
    const DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#;

    /// The rule set a starting agent compiles from `dir`.
    fn load(dir: &Path) -> PolicySet {
        read_once(dir).objects.compile()
    }

    #[test]
    fn only_a_rule_set_that_differs_is_published() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), format!("{POD_A}---{POD_B}")).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), DENY).unwrap();
        let (sets, _receiver) = watch::channel(None);
        assert!(publish(&sets, load(dir.path())).is_some(), "the first set");
        assert!(
            publish(&sets, load(dir.path())).is_none(),
            "re-read unchanged"
        );
        std::fs::remove_file(dir.path().join("pods.yaml")).unwrap();
        // The Pods swapped in a file of another name, Pod b in `phase`: what publishing the
        // directory read again gives.
        let republish_with_b = |phase: &str| {
            let pod_b = POD_B.replace("Running", phase);
            std::fs::write(dir.path().join("a-pods.yaml"), format!("{pod_b}---{POD_A}")).unwrap();
            publish(&sets, load(dir.path()))
        };
        // The same objects in another order (files renamed, Pods swapped).
        assert!(republish_with_b("Running").is_none(), "reordered");
        // A Pod's phase moving on within the live ones changes nothing either.
        assert!(republish_with_b("Pending").is_none(), "phase");
        // A Pod finishing does.
        let set = republish_with_b("Succeeded").expect("a Pod finished");
        assert!(!set.knows("10.244.1.3".parse().unwrap()));
    }

    type Sets = watch::Receiver<Option<Arc<PolicySet>>>;
    type Rejected = watch::Receiver<Vec<RejectedPolicyFile>>;

    /// Watches `dir`: the task, and where its rule sets and reports arrive.
    fn watch(dir: &Path) -> (tokio::task::JoinHandle<()>, Sets, Rejected) {
        let (sets, set_receiver) = watch::channel(None);
        let (rejected, rejected_receiver) = watch::channel(Vec::new());
        let task = tokio::spawn(watch_dir(dir.to_path_buf(), sets, rejected));
        (task, set_receiver, rejected_receiver)
    }

    const WAIT: Duration = Duration::from_secs(20);

    async fn next<T: Clone>(receiver: &mut watch::Receiver<T>) -> T {
        tokio::time::timeout(WAIT, receiver.changed())
            .await
            .unwrap()
            .unwrap();
        receiver.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn rereading_an_unchanged_directory_does_not_bump_the_rule_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lab.yaml");
        std::fs::write(&file, format!("{POD_A}---{DENY}")).unwrap();
        let (task, mut receiver, _rejected) = watch(dir.path());
        next(&mut receiver).await;
        // Rewritten with the same content, and an unrelated file: read again, same rule set.
        std::fs::write(&file, format!("{POD_A}---{DENY}")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !receiver.has_changed().unwrap(),
            "published an unchanged rule set"
        );
        // A real change still arrives.
        std::fs::write(&file, format!("{POD_A}---{POD_B}---{DENY}")).unwrap();
        let set = next(&mut receiver).await.unwrap();
        assert!(set.knows("10.244.1.3".parse().unwrap()));
        task.abort();
    }

    /// The watched directory end to end: a policy file broken by an edit keeps its policy in
    /// force (reported), fixed it is used as written, deleted its policy is gone.
    #[tokio::test]
    async fn a_broken_file_keeps_its_policy_until_it_is_fixed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), format!("{POD_A}---{POD_B}")).unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, DENY).unwrap();
        let (task, mut sets, mut rejected) = watch(dir.path());
        let set = next(&mut sets).await.unwrap();
        assert_eq!(set.accepted, ["x/deny"]);

        // A typo: the file is reported, with its last good content in force.
        std::fs::write(&policy, DENY.replace("podSelector: {}", "podSelector: {")).unwrap();
        let report = next(&mut rejected).await;
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].file, policy.display().to_string());
        assert_eq!(report[0].in_force, InForce::LastGood);
        // The report follows the publish decision of the same read: nothing was published.
        assert!(
            !sets.has_changed().unwrap(),
            "the broken file changed the rule set"
        );
        assert_eq!(sets.borrow().as_ref().unwrap().accepted, ["x/deny"]);

        // Fixed, with new content: used as written, and no longer reported.
        let allow = DENY.replace("{podSelector: {}}", "{podSelector: {}, ingress: [{}]}");
        std::fs::write(&policy, allow.replace("name: deny", "name: allow")).unwrap();
        let set = next(&mut sets).await.unwrap();
        assert_eq!(set.accepted, ["x/allow"]);
        assert_eq!(next(&mut rejected).await, []);

        // Deleted: its policy goes away.
        std::fs::remove_file(&policy).unwrap();
        let set = next(&mut sets).await.unwrap();
        assert!(set.accepted.is_empty(), "{:?}", set.accepted);
        task.abort();
    }

    #[tokio::test]
    async fn an_unreadable_directory_or_file_publishes_no_rule_set() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there");
        assert!(read_once(&missing).incomplete);
        // A directory where a policy file should be: it cannot be read as a file.
        std::fs::create_dir(dir.path().join("policy.yaml")).unwrap();
        let merged = read_once(dir.path());
        assert!(merged.incomplete);
        assert_eq!(merged.rejected[0].in_force, InForce::PreviousRuleSet);
        // A file that is read but not UTF-8 is bad content, rejected like bad YAML (which,
        // on a first read, also holds the rule set).
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("bad.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let merged = read_once(other.path());
        assert!(merged.incomplete);
        assert_eq!(merged.rejected.len(), 1);
        assert!(
            merged.rejected[0].reason.contains("UTF-8"),
            "{:?}",
            merged.rejected
        );

        // A FIFO named like a policy file would block the read forever: it is refused.
        let fifo = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(fifo.path().join("pipe.yaml"))
            .status()
            .unwrap();
        assert!(status.success());
        let merged = read_once(fifo.path());
        assert!(
            merged.rejected[0].reason.contains("not a regular file"),
            "{:?}",
            merged.rejected
        );

        let (task, receiver, mut rejected) = watch(&missing);
        let report = next(&mut rejected).await;
        assert_eq!(report[0].in_force, InForce::PreviousRuleSet);
        assert!(
            receiver.borrow().is_none(),
            "an unreadable policy directory published a rule set (allowing everything)"
        );
        task.abort();
    }

    #[test]
    fn reads_multi_document_yaml_and_rejects_a_file_it_cannot_use_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("lab.yaml"),
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]
status: {podIP: 10.244.1.2}
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#,
        )
        .unwrap();
        // A good Pod with a broken one: neither is used.
        std::fs::write(
            dir.path().join("broken.yaml"),
            format!("{POD_B}---\nkind: Pod\nmetadata: [not, a, map]\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        let merged = read_once(dir.path());
        assert_eq!(merged.objects.namespaces.len(), 1);
        assert_eq!(merged.objects.pods.len(), 1);
        assert_eq!(merged.objects.policies.len(), 1);
        assert_eq!(merged.rejected.len(), 1, "{:?}", merged.rejected);
        assert!(merged.rejected[0].file.ends_with("broken.yaml"));
        assert!(
            merged.rejected[0].reason.starts_with("document 1: bad Pod"),
            "{}",
            merged.rejected[0].reason
        );
        let set = merged.objects.compile();
        assert!(set.knows("10.244.1.2".parse().unwrap()));
        assert!(!set.knows("10.244.1.3".parse().unwrap()));
    }
}

//! The policy source for standalone nodes and the lab: a directory of Kubernetes YAML
//! (Namespaces, Pods with labels, IPs and container ports, NetworkPolicies), re-read and
//! recompiled whenever it changes. Unreadable files and documents are skipped with a reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::PolicySet;

/// Everything read from the directory.
#[derive(Debug, Default)]
pub struct PolicyObjects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
    /// (file, reason) for what could not be used.
    pub skipped: Vec<(String, String)>,
    /// The directory or one of its files could not be read (as opposed to a file that was
    /// read but holds something invalid): the objects are incomplete, and compiling them
    /// could drop policies that still apply.
    pub unreadable: bool,
}

/// Reads every `.yaml`, `.yml` and `.json` file of `dir` (multi-document YAML allowed).
pub fn read_dir(dir: &Path) -> PolicyObjects {
    let mut objects = PolicyObjects::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(error) => {
            objects
                .skipped
                .push((dir.display().to_string(), error.to_string()));
            objects.unreadable = true;
            return objects;
        }
    };
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.')
            || !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
        {
            continue;
        }
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                objects.skipped.push((shown, error.to_string()));
                objects.unreadable |= error.kind() != std::io::ErrorKind::InvalidData;
                continue;
            }
        };
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = match serde_yaml_ng::Value::deserialize(document) {
                Ok(serde_yaml_ng::Value::Null) => continue,
                Ok(value) => value,
                Err(error) => {
                    objects
                        .skipped
                        .push((format!("{shown}#{index}"), error.to_string()));
                    continue;
                }
            };
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let result = match kind.as_str() {
                "Namespace" => serde_yaml_ng::from_value(value).map(|n| objects.namespaces.push(n)),
                "Pod" => serde_yaml_ng::from_value(value).map(|p| objects.pods.push(p)),
                "NetworkPolicy" => {
                    serde_yaml_ng::from_value(value).map(|p| objects.policies.push(p))
                }
                other => {
                    objects.skipped.push((
                        format!("{shown}#{index}"),
                        format!("unsupported kind {other:?}"),
                    ));
                    Ok(())
                }
            };
            if let Err(error) = result {
                objects
                    .skipped
                    .push((format!("{shown}#{index}"), format!("bad {kind}: {error}")));
            }
        }
    }
    objects
}

/// Reads and compiles the directory.
pub fn load(dir: &Path) -> (PolicySet, PolicyObjects) {
    let objects = read_dir(dir);
    let set = PolicySet::compile(&objects.policies, &objects.namespaces, &objects.pods);
    (set, objects)
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

/// Watches `dir`, publishing a freshly compiled rule set after every change.
pub async fn watch_dir(dir: PathBuf, sets: watch::Sender<Option<Arc<PolicySet>>>) {
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
    let mut last_skipped = Vec::new();
    loop {
        if sets.is_closed() {
            return;
        }
        let path = dir.clone();
        if let Ok((set, objects)) = tokio::task::spawn_blocking(move || load(&path)).await {
            // Every 10 s the same: say it again only when it changes.
            if objects.skipped != last_skipped {
                for (source, reason) in &objects.skipped {
                    tracing::warn!(%source, %reason, "skipping policy input");
                }
                last_skipped.clone_from(&objects.skipped);
            }
            let counts = (
                objects.policies.len(),
                objects.pods.len(),
                objects.namespaces.len(),
            );
            // Fail closed: an unreadable directory (or file) keeps the rule set in force, or
            // none at all before the first, rather than one missing the policies it hides.
            let published = if objects.unreadable {
                tracing::warn!(dir = %dir.display(), "policy directory not fully readable; keeping the rule set in force");
                None
            } else {
                publish(&sets, set)
            };
            match published {
                Some(set) => {
                    warn_about(&set);
                    tracing::info!(
                        policies = counts.0,
                        pods = counts.1,
                        namespaces = counts.2,
                        "policy rule set compiled"
                    );
                }
                None => {
                    tracing::debug!(dir = %dir.display(), "policy directory re-read; rule set unchanged")
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_a_rule_set_that_differs_is_published() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), format!("{POD_A}---{POD_B}")).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), DENY).unwrap();
        let (sets, _receiver) = watch::channel(None);
        assert!(
            publish(&sets, load(dir.path()).0).is_some(),
            "the first set"
        );
        assert!(
            publish(&sets, load(dir.path()).0).is_none(),
            "re-read unchanged"
        );
        std::fs::remove_file(dir.path().join("pods.yaml")).unwrap();
        // The Pods swapped in a file of another name, Pod b in `phase`: what publishing the
        // directory read again gives.
        let republish_with_b = |phase: &str| {
            let pod_b = POD_B.replace("Running", phase);
            std::fs::write(dir.path().join("a-pods.yaml"), format!("{pod_b}---{POD_A}")).unwrap();
            publish(&sets, load(dir.path()).0)
        };
        // The same objects in another order (files renamed, Pods swapped).
        assert!(republish_with_b("Running").is_none(), "reordered");
        // A Pod's phase moving on within the live ones changes nothing either.
        assert!(republish_with_b("Pending").is_none(), "phase");
        // A Pod finishing does.
        let set = republish_with_b("Succeeded").expect("a Pod finished");
        assert!(!set.knows("10.244.1.3".parse().unwrap()));
    }

    #[tokio::test]
    async fn rereading_an_unchanged_directory_does_not_bump_the_rule_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lab.yaml");
        std::fs::write(&file, format!("{POD_A}---{DENY}")).unwrap();
        let (sets, mut receiver) = watch::channel(None);
        let task = tokio::spawn(watch_dir(dir.path().to_path_buf(), sets));
        let wait = Duration::from_secs(20);
        tokio::time::timeout(wait, receiver.changed())
            .await
            .unwrap()
            .unwrap();
        receiver.borrow_and_update();
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
        tokio::time::timeout(wait, receiver.changed())
            .await
            .unwrap()
            .unwrap();
        let set = receiver.borrow().clone().unwrap();
        assert!(set.knows("10.244.1.3".parse().unwrap()));
        task.abort();
    }

    #[tokio::test]
    async fn an_unreadable_directory_or_file_publishes_no_rule_set() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there");
        assert!(read_dir(&missing).unreadable);
        // A directory where a policy file should be: it cannot be read as a file.
        std::fs::create_dir(dir.path().join("policy.yaml")).unwrap();
        assert!(read_dir(dir.path()).unreadable);
        // A file that is read but not UTF-8 is bad content, skipped like bad YAML.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("bad.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let objects = read_dir(other.path());
        assert!(!objects.unreadable && objects.skipped.len() == 1);

        let (sets, receiver) = watch::channel(None);
        let task = tokio::spawn(watch_dir(missing, sets));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            receiver.borrow().is_none(),
            "an unreadable policy directory published a rule set (allowing everything)"
        );
        task.abort();
    }

    #[test]
    fn reads_multi_document_yaml_and_skips_what_it_cannot_use() {
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
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("broken.yaml"),
            "kind: Pod\nmetadata: [not, a, map]\n",
        )
        .unwrap();
        let (set, objects) = load(dir.path());
        assert_eq!(objects.namespaces.len(), 1);
        assert_eq!(objects.pods.len(), 1);
        assert_eq!(objects.policies.len(), 1);
        assert_eq!(objects.skipped.len(), 2, "{:?}", objects.skipped);
        assert!(set.knows("10.244.1.2".parse().unwrap()));
    }
}

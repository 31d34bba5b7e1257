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
    loop {
        let path = dir.clone();
        if let Ok((set, objects)) = tokio::task::spawn_blocking(move || load(&path)).await {
            for (source, reason) in &objects.skipped {
                tracing::warn!(%source, %reason, "skipping policy input");
            }
            warn_about(&set);
            tracing::info!(
                policies = objects.policies.len(),
                pods = objects.pods.len(),
                namespaces = objects.namespaces.len(),
                "policy rule set compiled"
            );
            if sets.send(Some(Arc::new(set))).is_err() {
                return;
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

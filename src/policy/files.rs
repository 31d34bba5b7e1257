//! The files of a policy directory, each taken whole, and what the directory contributes after
//! each read: a file's current content when every document in it can be used, else the last
//! content of it that could (fail closed: a typo in an edited file never drops the policies it
//! held). No IO: `source` reads the directory and hands the reads in.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use super::PolicySet;
use super::validate::check_policy;

/// Namespaces, Pods and NetworkPolicies: what one file holds, or all of them together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyObjects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

impl PolicyObjects {
    pub fn compile(&self) -> PolicySet {
        PolicySet::compile(&self.policies, &self.namespaces, &self.pods)
    }

    /// Every named object's kind and name, as in `NetworkPolicy x/a` (a Pod or policy without
    /// a namespace is in `default`, as compiling takes it; nameless objects are left out).
    fn ids(&self) -> impl Iterator<Item = String> + '_ {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let namespaced = |kind: &'static str| {
            move |meta: &ObjectMeta| {
                let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
                let namespace = meta.namespace.as_deref().unwrap_or("default");
                Some(format!("{kind} {namespace}/{name}"))
            }
        };
        let namespaces = self.namespaces.iter().filter_map(|n| {
            let name = n.metadata.name.as_deref().filter(|n| !n.is_empty())?;
            Some(format!("Namespace {name}"))
        });
        let pod = namespaced("Pod");
        let policy = namespaced("NetworkPolicy");
        namespaces
            .chain(self.pods.iter().filter_map(move |p| pod(&p.metadata)))
            .chain(
                self.policies
                    .iter()
                    .filter_map(move |p| policy(&p.metadata)),
            )
    }

    fn extend(&mut self, other: &PolicyObjects) {
        self.namespaces.extend_from_slice(&other.namespaces);
        self.pods.extend_from_slice(&other.pods);
        self.policies.extend_from_slice(&other.policies);
    }
}

/// What reading one file gave.
#[derive(Debug, Clone, PartialEq)]
pub enum FileRead {
    /// Every document in it can be used.
    Good(PolicyObjects),
    /// Read, but some document in it cannot be used: why.
    Bad(String),
    /// Not readable (an IO error): what it holds now is unknown.
    Unreadable(String),
}

/// What reading the directory gave.
#[derive(Debug, Clone, PartialEq)]
pub enum DirRead {
    /// The directory itself could not be listed.
    Unreadable { dir: String, reason: String },
    /// Each policy file (by path) and what reading it gave.
    Files(Vec<(String, FileRead)>),
}

/// What stands in for a file whose current content is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InForce {
    /// The file's last good content.
    LastGood,
    /// Nothing: the file turned up bad after the agent's first complete read (a new file, or
    /// one deleted and written again), so no policy of it was in force.
    Nothing,
    /// The whole rule set in force (none before the first) is kept: nothing new is published
    /// while this file or directory cannot be read, or has been bad since the agent started,
    /// and no last good content of it is known (it may hold policies in force before a
    /// restart: leaving them out could un-isolate Pods).
    PreviousRuleSet,
}

impl InForce {
    pub const ALL: [InForce; 3] = [Self::LastGood, Self::Nothing, Self::PreviousRuleSet];

    /// Stable name, as in `weft status` and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::LastGood => "last_good",
            Self::Nothing => "nothing",
            Self::PreviousRuleSet => "previous_rule_set",
        }
    }
}

/// A policy file (or the directory) whose current content is not used, why, and what is used
/// instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedPolicyFile {
    pub file: String,
    pub reason: String,
    pub in_force: InForce,
}

/// What the directory contributes after one read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Every file's current content, or its last good one.
    pub objects: PolicyObjects,
    /// Files whose current content is not used, by path.
    pub rejected: Vec<RejectedPolicyFile>,
    /// Something with no last good content could not be read: `objects` may lack what it
    /// holds, so no rule set may be compiled from them.
    pub incomplete: bool,
}

/// Parses one file's text: every document in it (multi-document YAML, or JSON), or the first
/// reason one of them cannot be used. Null documents (an empty `---`) are nothing.
pub fn parse_file(text: &str) -> FileRead {
    match parse_documents(text) {
        Ok(objects) => FileRead::Good(objects),
        Err(reason) => FileRead::Bad(reason),
    }
}

fn parse_documents(text: &str) -> Result<PolicyObjects, String> {
    use serde_yaml_ng::Value;
    let mut objects = PolicyObjects::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = |reason: String| format!("document {index}: {reason}");
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(error) => return Err(at(error.to_string())),
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let bad = |reason: String| at(format!("bad {kind}: {reason}"));
        match kind.as_str() {
            "Namespace" => objects
                .namespaces
                .push(strict(value, Strictness::Namespace).map_err(bad)?),
            "Pod" => objects
                .pods
                .push(strict(value, Strictness::Pod).map_err(bad)?),
            "NetworkPolicy" => {
                let policy: NetworkPolicy = strict(value, Strictness::Whole).map_err(bad)?;
                // Checked here as compiling would, so that an invalid policy keeps its file's
                // last good content in force rather than leaving it out.
                if let Err(rejected) = check_policy(&policy) {
                    return Err(at(format!(
                        "NetworkPolicy {} is invalid: {}",
                        rejected.policy, rejected.reason
                    )));
                }
                objects.policies.push(policy);
            }
            other => {
                return Err(at(format!(
                    "unsupported kind {other:?} (a policy directory holds Namespaces, Pods and \
                     NetworkPolicies)"
                )));
            }
        }
    }
    Ok(objects)
}

/// Which unknown fields make a document bad.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Any: a misspelt field of a NetworkPolicy (`matchLabel`, `polcyTypes`) would otherwise
    /// be dropped silently, and a selector left empty selects everything.
    Whole,
    /// Where policy reads a Pod: its top level, `metadata` (labels), the keys of `spec` and
    /// `status` (`hostNetwork`, `podIP`, `phase`), of its `podIPs` and its containers' `ports`. A misspelt
    /// `podIp` would leave the Pod without an address, and an unknown address is isolated by
    /// nothing. Deeper unknown fields (an export from a newer cluster) are accepted.
    Pod,
    /// A Namespace's top level and `metadata` (labels).
    Namespace,
}

impl Strictness {
    /// Whether an unknown field at `path` (as [`field_path`] writes it) makes the document bad.
    fn refuses(self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('.').collect();
        matches!(
            (self, parts.as_slice()),
            (Self::Whole, _)
                | (_, [_] | ["metadata", ..])
                | (Self::Pod, ["spec" | "status", _])
                | (Self::Pod, ["status", "podIPs", _, _])
                | (Self::Pod, ["spec", "containers" | "initContainers", _, _])
                | (
                    Self::Pod,
                    ["spec", "containers" | "initContainers", _, "ports", ..]
                )
        )
    }
}

/// Deserializes `value`, refusing the unknown fields `strictness` covers (which the
/// Kubernetes types would otherwise ignore), as the API server's strict field validation does.
fn strict<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    strictness: Strictness,
) -> Result<T, String> {
    let mut unknown = Vec::new();
    let parsed: T = serde_ignored::deserialize(value, |path| {
        let path = field_path(&path);
        if strictness.refuses(&path) {
            unknown.push(path);
        }
    })
    .map_err(|error| error.to_string())?;
    match unknown.as_slice() {
        [] => Ok(parsed),
        fields => Err(format!("unknown field {}", fields.join(", "))),
    }
}

/// A field's path as written in YAML: `spec.ingress.0.from`, leaving out the `Option` and
/// newtype layers serde sees.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, part: &dyn std::fmt::Display| {
        let parent = field_path(parent);
        if parent.is_empty() {
            part.to_string()
        } else {
            format!("{parent}.{part}")
        }
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index),
        Path::Map { parent, key } => join(parent, key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// The last good content of every policy file, carried from one read of the directory to
/// the next.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    last_good: BTreeMap<String, PolicyObjects>,
    /// A read has been complete (and its rule set published): a bad file seen after that is
    /// new or was deleted since, so it held nothing. Before, it may hold policies in force
    /// before the agent (re)started.
    complete_once: bool,
}

impl PolicyFiles {
    /// Takes a new read of the directory: a good file is used as read; a bad or unreadable one
    /// as it last was good, or not at all if it never was; a file no longer listed is gone
    /// (deleting a file is intentional). An unreadable directory changes nothing.
    pub fn merge(&mut self, read: DirRead) -> Merged {
        let mut merged = Merged::default();
        let files = match read {
            DirRead::Unreadable { dir, reason } => {
                merged.objects = self.objects();
                merged.rejected.push(RejectedPolicyFile {
                    file: dir,
                    reason,
                    in_force: InForce::PreviousRuleSet,
                });
                merged.incomplete = true;
                return merged;
            }
            DirRead::Files(files) => files,
        };
        let files = self.refuse_duplicates(files);
        let mut last_good = BTreeMap::new();
        for (file, read) in files {
            let (reason, unreadable) = match read {
                FileRead::Good(objects) => {
                    last_good.insert(file, objects);
                    continue;
                }
                FileRead::Bad(reason) => (reason, false),
                FileRead::Unreadable(reason) => (reason, true),
            };
            let in_force = match self.last_good.remove(&file) {
                Some(objects) => {
                    last_good.insert(file.clone(), objects);
                    InForce::LastGood
                }
                None if unreadable || !self.complete_once => InForce::PreviousRuleSet,
                None => InForce::Nothing,
            };
            merged.incomplete |= in_force == InForce::PreviousRuleSet;
            merged.rejected.push(RejectedPolicyFile {
                file,
                reason,
                in_force,
            });
        }
        self.last_good = last_good;
        self.complete_once |= !merged.incomplete;
        merged.objects = self.objects();
        merged.rejected.sort_by(|a, b| a.file.cmp(&b.file));
        merged
    }

    /// Everything the files contribute, in file order.
    fn objects(&self) -> PolicyObjects {
        let mut objects = PolicyObjects::default();
        for file in self.last_good.values() {
            objects.extend(file);
        }
        objects
    }
}

impl PolicyFiles {
    /// Turns into bad reads the good ones that would put an object in force twice: a file
    /// holding one twice, and a file whose new content adds an object (one its last good
    /// content lacks) that another file holds, as read or, if that one is refused, as last
    /// good. One of the two copies is stale, and a stale copy's allows would add up. Refusing
    /// a file puts its last good content back, which may refuse another: repeated until none
    /// changes (at most once per file).
    fn refuse_duplicates(&self, files: Vec<(String, FileRead)>) -> Vec<(String, FileRead)> {
        let mut files: Vec<(String, FileRead)> = files
            .into_iter()
            .map(|(file, read)| {
                let read = match read {
                    FileRead::Good(objects) => match twice(&objects) {
                        Some(id) => FileRead::Bad(format!("{id} is in this file twice")),
                        None => FileRead::Good(objects),
                    },
                    other => other,
                };
                (file, read)
            })
            .collect();
        loop {
            // What each file would put in force now, by object.
            let mut holders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (index, (file, read)) in files.iter().enumerate() {
                let objects = match read {
                    FileRead::Good(objects) => Some(objects),
                    _ => self.last_good.get(file),
                };
                for id in objects.into_iter().flat_map(PolicyObjects::ids) {
                    holders.entry(id).or_default().push(index);
                }
            }
            let refused = files.iter().enumerate().find_map(|(index, (file, read))| {
                let FileRead::Good(objects) = read else {
                    return None;
                };
                let before: BTreeSet<String> = self
                    .last_good
                    .get(file)
                    .into_iter()
                    .flat_map(PolicyObjects::ids)
                    .collect();
                objects
                    .ids()
                    .filter(|id| !before.contains(id))
                    .find_map(|id| {
                        let other = holders.get(&id)?.iter().find(|&&other| other != index)?;
                        Some((index, format!("{id} is also in {}", files[*other].0)))
                    })
            });
            match refused {
                Some((index, reason)) => files[index].1 = FileRead::Bad(reason),
                None => return files,
            }
        }
    }
}

/// An object `objects` holds twice, if any.
fn twice(objects: &PolicyObjects) -> Option<String> {
    let mut seen = BTreeSet::new();
    objects.ids().find(|id| !seen.insert(id.clone()))
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;

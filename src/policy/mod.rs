//! Kubernetes NetworkPolicy, compiled ahead of time into per-Pod rule sets and checked per
//! packet. No IO: policies, Pods and Namespaces come in as k8s-openapi objects from whatever
//! source (the API server, a directory of YAML).

pub mod compile;
pub mod conntrack;
pub mod files;
pub mod gate;
mod ip_ranges;
pub mod model;
pub mod selector;
pub mod source;
mod validate;

pub use compile::{AddressConflict, Allowance, Direction, PolicySet, RejectedPolicy, Verdict};
pub use model::{Flow, PodInfo, Protocol};

/// The reference evaluator: an independent, deliberately plain model of NetworkPolicy that
/// the engine is tested against (property tests here, the truth-table lab test in `tests/`).
/// Not used by the agent.
#[doc(hidden)]
pub mod reference;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

//! The Kubernetes side of weft: the Node registry (records in the `weft.dev/node` annotation)
//! and NetworkPolicy from the API. Thin IO shells over pure conversions (`node`).

pub mod access;
pub mod bird_config;
pub mod follow;
pub mod node;
pub mod policy;
pub mod registry;

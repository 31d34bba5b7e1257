//! weft: a WireGuard-encrypted overlay mesh agent for Kubernetes.
//!
//! Pure cores (`record`, `mesh`, `routes`) know nothing of tokio, netlink or Kubernetes; the IO
//! shells (`route_source`, `registry`, `agent`) are thin.

pub mod agent;
pub mod backoff;
pub mod bird;
pub mod cli;
pub mod datapath;
pub mod kube;
pub mod mesh;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod registry;
pub mod rotation;
pub mod route_source;
pub mod routes;
pub mod status;

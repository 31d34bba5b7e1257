//! Routes learned from the routing daemon, as the mesh computation sees them (no IO here).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

/// Kernel route protocol numbers weft listens to by default (`/etc/iproute2/rt_protos`).
pub const PROTO_BIRD: u8 = 12;
/// `bgp` in `/etc/iproute2/rt_protos` (FRR's zebra uses it).
pub const PROTO_BGP: u8 = 186;

/// One kernel route installed by a BGP daemon: `prefix via next_hops`.
///
/// A multipath (ECMP) route carries several next hops; a route without a gateway (a device or
/// blackhole route) carries none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnedRoute {
    pub prefix: IpNetwork,
    #[serde(rename = "nextHops")]
    pub next_hops: Vec<IpAddr>,
    pub protocol: u8,
}

/// What identifies one kernel route: the same prefix may sit in several tables or at several
/// metrics at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteKey {
    pub table: u32,
    pub prefix: IpNetwork,
    pub tos: u8,
    pub priority: u32,
}

/// The kernel's BGP routes as weft last saw them, kept up to date from netlink dumps and
/// change notifications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: BTreeMap<RouteKey, LearnedRoute>,
}

impl RouteTable {
    /// A route was added or replaced. A replacement by a protocol outside the watched set removes
    /// the route we knew (pass `None` for the route then).
    pub fn upsert(&mut self, key: RouteKey, route: Option<LearnedRoute>) -> bool {
        match route {
            Some(route) => self.routes.insert(key, route.clone()) != Some(route),
            None => self.routes.remove(&key).is_some(),
        }
    }

    /// A route was deleted; returns whether it was one we knew.
    pub fn remove(&mut self, key: &RouteKey) -> bool {
        self.routes.remove(key).is_some()
    }

    pub fn contains(&self, key: &RouteKey) -> bool {
        self.routes.contains_key(key)
    }

    /// Forget everything (before a re-dump).
    pub fn clear(&mut self) {
        self.routes.clear();
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes in a stable order, as the mesh computation takes them.
    pub fn snapshot(&self) -> Vec<LearnedRoute> {
        self.routes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, priority: u32) -> RouteKey {
        RouteKey {
            table: 254,
            prefix: prefix.parse().unwrap(),
            tos: 0,
            priority,
        }
    }

    fn route(prefix: &str, hop: &str) -> LearnedRoute {
        LearnedRoute {
            prefix: prefix.parse().unwrap(),
            next_hops: vec![hop.parse().unwrap()],
            protocol: PROTO_BIRD,
        }
    }

    #[test]
    fn upsert_replaces_and_reports_changes() {
        let mut table = RouteTable::default();
        assert!(table.upsert(
            key("10.244.2.0/24", 0),
            Some(route("10.244.2.0/24", "198.18.0.2"))
        ));
        assert!(!table.upsert(
            key("10.244.2.0/24", 0),
            Some(route("10.244.2.0/24", "198.18.0.2"))
        ));
        assert!(table.upsert(
            key("10.244.2.0/24", 0),
            Some(route("10.244.2.0/24", "198.18.0.3"))
        ));
        assert_eq!(table.snapshot(), vec![route("10.244.2.0/24", "198.18.0.3")]);
    }

    #[test]
    fn replacement_by_unwatched_protocol_removes_the_route() {
        let mut table = RouteTable::default();
        table.upsert(
            key("10.244.2.0/24", 0),
            Some(route("10.244.2.0/24", "198.18.0.2")),
        );
        assert!(table.upsert(key("10.244.2.0/24", 0), None));
        assert!(table.is_empty());
    }

    #[test]
    fn same_prefix_at_two_metrics_is_two_routes() {
        let mut table = RouteTable::default();
        table.upsert(
            key("10.244.2.0/24", 10),
            Some(route("10.244.2.0/24", "198.18.0.2")),
        );
        table.upsert(
            key("10.244.2.0/24", 20),
            Some(route("10.244.2.0/24", "198.18.0.3")),
        );
        assert_eq!(table.len(), 2);
        assert!(table.remove(&key("10.244.2.0/24", 10)));
        assert!(!table.remove(&key("10.244.2.0/24", 10)));
        assert_eq!(table.snapshot(), vec![route("10.244.2.0/24", "198.18.0.3")]);
    }
}

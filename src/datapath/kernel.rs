//! Kernel plumbing over rtnetlink: the TUN's MTU, address and state, weft's routing table
//! (routes to peers' allowed IPs, unreachable routes for prefixes that must not leave in
//! clear), and the `ip rule` steering unmarked traffic into that table.
//!
//! Everything weft adds carries its own markers (route protocol `PROTO_WEFT`, the rule's
//! priority + table + mark), so a restart finds and replaces exactly its own objects and leaves
//! everything else alone.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::route_source::route_key;

/// Route protocol number marking routes weft installed (not in any watched set).
pub const PROTO_WEFT: u8 = 87;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no interface named {0}")]
    NoLink(String),
    #[error("invalid route: {0}")]
    Route(String),
}

/// rtnetlink's builder error (its type is not exported) as ours.
fn invalid_route(error: impl std::fmt::Display) -> KernelError {
    KernelError::Route(error.to_string())
}

/// Metric of unreachable routes: above the tunnel's, so an unreachable route under a tunnel
/// route for the same prefix only takes over when the tunnel route is gone (the TUN vanished
/// with a crashed agent), and traffic is dropped rather than sent in clear.
const BACKSTOP_METRIC: u32 = 4096;

/// What [`Kernel::keep_one_rule`] did with the rule of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// It was in place.
    Kept,
    /// It was missing and is added.
    Added,
    /// A kernel without IPv6 refused the IPv6 rule on a node without IPv6 blocks.
    Unsupported,
}

/// What a prefix in weft's table should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TableRoute {
    /// Into the TUN, with the tunnel address as preferred source.
    Tunnel,
    /// Nowhere: a Pod prefix without a valid peer (fail closed).
    Unreachable,
    /// Back to the next rule: this node's own blocks, delivered by the main table.
    Throw,
}

#[derive(Debug, Clone)]
pub struct Plumbing {
    pub interface: String,
    pub table: u32,
    pub fwmark: u32,
    pub rule_priority: u32,
    pub mtu: u32,
    pub tunnel_addresses: Vec<IpAddr>,
    /// The node has IPv6 Pod blocks: without the IPv6 rule their traffic would bypass weft.
    pub require_ipv6: bool,
}

pub struct Kernel {
    handle: Handle,
    plumbing: Plumbing,
    link_index: u32,
    /// The IPv6 rule is part of this node's state: required (IPv6 blocks), or the kernel
    /// took it at setup. Otherwise (a kernel without IPv6) it is neither expected nor repaired.
    ipv6_rule: bool,
    _connection: tokio::task::JoinHandle<()>,
}

impl Kernel {
    /// Configures the TUN link (MTU, addresses, up) and the rules. Idempotent.
    pub async fn setup(plumbing: Plumbing) -> Result<Self, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        let connection = tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name(plumbing.interface.clone())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .ok_or_else(|| KernelError::NoLink(plumbing.interface.clone()))?;
        let mut kernel = Self {
            handle,
            plumbing,
            link_index: link.header.index,
            ipv6_rule: true,
            _connection: connection,
        };
        kernel.configure_link().await?;
        kernel.keep_one_rule(IpVersion::V4).await?;
        kernel.ipv6_rule = kernel.keep_one_rule(IpVersion::V6).await? != Rule::Unsupported;
        Ok(kernel)
    }

    /// Leaves exactly one rule of the family: one in place (an earlier run's, at start) is
    /// kept, never removed and added again, so Pod traffic is not without it for a moment,
    /// nor for good if adding failed; duplicates are removed; a missing one is added.
    async fn keep_one_rule(&self, version: IpVersion) -> Result<Rule, KernelError> {
        let rules = match self.our_rules(version.clone()).await {
            Ok(rules) => rules,
            // A kernel without IPv6 lists no IPv6 rules; adding says whether that matters.
            Err(error) if version == IpVersion::V6 && !self.plumbing.require_ipv6 => {
                tracing::debug!(%error, "cannot list IPv6 rules");
                Vec::new()
            }
            Err(error) => return Err(error),
        };
        match rules.split_first() {
            Some((_, duplicates)) => {
                for rule in duplicates {
                    self.handle.rule().del(rule.clone()).execute().await?;
                }
                Ok(Rule::Kept)
            }
            None if self.add_rule(version).await? => Ok(Rule::Added),
            None => Ok(Rule::Unsupported),
        }
    }

    /// Puts back what something else changed behind weft's back: the TUN's MTU, state and
    /// addresses, and a missing rule (added, never removed and re-added, so traffic is never
    /// left without the rule). Routes are [`Kernel::sync_routes`]'s. Idempotent; returns how
    /// many things it put back.
    /// Each part is tried whatever became of the others (a TUN gone must not keep a deleted
    /// rule away); the first error is returned.
    pub async fn repair(&self) -> Result<usize, KernelError> {
        let mut results = vec![self.configure_link().await];
        let mut versions = vec![IpVersion::V4];
        if self.ipv6_rule {
            versions.push(IpVersion::V6);
        }
        for version in versions {
            let kept = self.keep_one_rule(version.clone()).await;
            if matches!(kept, Ok(Rule::Added)) {
                tracing::warn!(
                    ?version,
                    priority = self.plumbing.rule_priority,
                    "weft's rule was missing; adding it again"
                );
            }
            results.push(kept.map(|rule| usize::from(rule == Rule::Added)));
        }
        results.into_iter().sum()
    }

    /// The TUN's MTU, up, and its addresses; returns how many of them it had to set.
    async fn configure_link(&self) -> Result<usize, KernelError> {
        let mut changed = 0;
        let link = self
            .handle
            .link()
            .get()
            .match_index(self.link_index)
            .execute()
            .try_next()
            .await?
            .ok_or_else(|| KernelError::NoLink(self.plumbing.interface.clone()))?;
        let up = link.header.flags.contains(LinkFlags::Up);
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        if !up || mtu != Some(self.plumbing.mtu) {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(self.link_index)
                        .mtu(self.plumbing.mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await?;
            changed += 1;
        }
        for address in &self.plumbing.tunnel_addresses {
            let len = if address.is_ipv4() { 32 } else { 128 };
            match self
                .handle
                .address()
                .add(self.link_index, *address, len)
                .execute()
                .await
            {
                Ok(()) => changed += 1,
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(changed)
    }

    fn is_our_rule(&self, rule: &RuleMessage) -> bool {
        let mut table = u32::from(rule.header.table);
        let mut priority = None;
        let mut mark = None;
        for attribute in &rule.attributes {
            match attribute {
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = Some(*p),
                RuleAttribute::FwMark(m) => mark = Some(*m),
                _ => {}
            }
        }
        table == self.plumbing.table
            && priority == Some(self.plumbing.rule_priority)
            && mark == Some(self.plumbing.fwmark)
            && rule.header.action == RuleAction::ToTable
            && rule.header.flags.contains(RuleFlags::Invert)
    }

    async fn our_rules(&self, version: IpVersion) -> Result<Vec<RuleMessage>, KernelError> {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await?;
        Ok(rules.into_iter().filter(|r| self.is_our_rule(r)).collect())
    }

    async fn remove_rules(&self) -> Result<(), KernelError> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules = match self.our_rules(version.clone()).await {
                Ok(rules) => rules,
                // A kernel without IPv6 has no IPv6 rules to list.
                Err(error) if version == IpVersion::V6 && !self.plumbing.require_ipv6 => {
                    tracing::debug!(%error, "cannot list IPv6 rules; the node has no IPv6 blocks");
                    continue;
                }
                Err(error) => return Err(error),
            };
            for rule in rules {
                self.handle.rule().del(rule).execute().await?;
            }
        }
        Ok(())
    }

    /// Adds the rule sending traffic without weft's mark to weft's table, for one family.
    /// Returns whether it was added (an IPv6 rule a kernel without IPv6 refuses is not, on a
    /// node without IPv6 blocks).
    async fn add_rule(&self, version: IpVersion) -> Result<bool, KernelError> {
        let p = &self.plumbing;
        let v6 = version == IpVersion::V6;
        let mut request = self
            .handle
            .rule()
            .add()
            .table_id(p.table)
            .priority(p.rule_priority)
            .fw_mark(p.fwmark)
            .action(RuleAction::ToTable);
        let message = request.message_mut();
        message.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        message.header.flags |= RuleFlags::Invert;
        match request.execute().await {
            Ok(()) => Ok(true),
            // A kernel without IPv6 refuses the rule: fine for an IPv4-only node, fatal for a
            // node with IPv6 Pods, whose traffic would otherwise leave in clear.
            Err(error) if v6 && !p.require_ipv6 => {
                tracing::debug!(%error, "cannot add the IPv6 rule; the node has no IPv6 blocks");
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The routes weft has in its table now.
    async fn current_routes(&self) -> Result<BTreeSet<(IpNetwork, TableRoute)>, KernelError> {
        let mut current = BTreeSet::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(self.plumbing.table)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(self.plumbing.table)
                .build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await?;
            for route in &routes {
                // Every route weft added, whatever its type (throw routes included).
                if u8::from(route.header.protocol) == PROTO_WEFT
                    && let Some(key) = route_key(route)
                    && key.table == self.plumbing.table
                {
                    let kind = match route.header.kind {
                        RouteType::Unreachable => TableRoute::Unreachable,
                        RouteType::Throw => TableRoute::Throw,
                        _ => TableRoute::Tunnel,
                    };
                    current.insert((key.prefix, kind));
                }
            }
        }
        Ok(current)
    }

    /// Makes weft's table hold exactly `desired`; returns how many routes it removed or added.
    pub async fn sync_routes(
        &self,
        desired: &BTreeSet<(IpNetwork, TableRoute)>,
    ) -> Result<usize, KernelError> {
        let current = self.current_routes().await?;
        let mut changed = 0;
        for (prefix, kind) in current.difference(desired) {
            let message = self.route_message(*prefix, *kind)?;
            self.handle.route().del(message).execute().await?;
            changed += 1;
        }
        for (prefix, kind) in desired.difference(&current) {
            let message = self.route_message(*prefix, *kind)?;
            self.handle.route().add(message).replace().execute().await?;
            changed += 1;
        }
        Ok(changed)
    }

    fn route_message(
        &self,
        prefix: IpNetwork,
        kind: TableRoute,
    ) -> Result<RouteMessage, KernelError> {
        let p = &self.plumbing;
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(prefix.network(), prefix.prefix())
            .map_err(invalid_route)?
            .table_id(p.table)
            .protocol(RouteProtocol::from(PROTO_WEFT));
        if kind == TableRoute::Tunnel {
            builder = builder.output_interface(self.link_index);
            // The tunnel address of the prefix's family, if any.
            if let Some(source) = p
                .tunnel_addresses
                .iter()
                .find(|a| a.is_ipv4() == prefix.is_ipv4())
            {
                builder = builder.pref_source(*source).map_err(invalid_route)?;
            }
        }
        let mut message = builder.build();
        match kind {
            TableRoute::Unreachable => {
                message.header.kind = RouteType::Unreachable;
                message
                    .attributes
                    .push(RouteAttribute::Priority(BACKSTOP_METRIC));
            }
            TableRoute::Throw => message.header.kind = RouteType::Throw,
            TableRoute::Tunnel => {}
        }
        Ok(message)
    }

    /// Removes weft's rules and routes (clean shutdown).
    pub async fn teardown(&self) -> Result<(), KernelError> {
        self.remove_rules().await?;
        self.sync_routes(&BTreeSet::new()).await?;
        Ok(())
    }
}

/// The MTU of the interface holding `address` (the underlay), if any interface holds it.
pub async fn underlay_mtu(address: IpAddr) -> Result<Option<u32>, KernelError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
    let connection = tokio::spawn(connection);
    let result = async {
        let found = handle
            .address()
            .get()
            .set_address_filter(address)
            .execute()
            .try_next()
            .await?;
        let Some(found) = found else {
            return Ok(None);
        };
        let link = handle
            .link()
            .get()
            .match_index(found.header.index)
            .execute()
            .try_next()
            .await?;
        Ok(link.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
        }))
    }
    .await;
    connection.abort();
    result
}

const fn libc_eexist() -> i32 {
    17
}

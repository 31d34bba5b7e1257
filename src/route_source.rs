//! The route source: BGP routes from the kernel over rtnetlink (dump plus change
//! notifications, IPv4 and IPv6), filtered by route protocol.
//!
//! The socket subscribes to the route multicast groups *before* dumping, so no change between
//! the dump and the subscription is lost. When the kernel reports an overrun (notifications
//! dropped because our receive buffer was full) the table is rebuilt from a fresh dump; when
//! the netlink connection fails it is re-opened after a short backoff.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use tokio::sync::watch;

use crate::routes::{LearnedRoute, RouteKey, RouteTable};

/// Receive buffer asked for on the notification socket by default (the kernel caps it at
/// `net.core.rmem_max`).
pub const DEFAULT_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// What the route source learns and how it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSourceConfig {
    /// Kernel route protocols whose routes are learned.
    pub protocols: BTreeSet<u8>,
    /// Receive buffer of the notification socket, in bytes.
    pub receive_buffer: usize,
}

/// Errors of the route source.
#[derive(Debug, thiserror::Error)]
pub enum RouteSourceError {
    #[error("cannot open a netlink route socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink route dump failed: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error("the netlink connection closed")]
    Closed,
}

/// Parses a route protocol given by name (as in `/etc/iproute2/rt_protos`) or by number.
pub fn parse_route_protocol(text: &str) -> Result<u8, String> {
    let named = match text {
        "kernel" => Some(2),
        "boot" => Some(3),
        "static" => Some(4),
        "zebra" => Some(11),
        "bird" => Some(12),
        "bgp" => Some(186),
        "isis" => Some(187),
        "ospf" => Some(188),
        "rip" => Some(189),
        "eigrp" => Some(192),
        _ => None,
    };
    match named {
        Some(number) => Ok(number),
        None => text.parse::<u8>().map_err(|_| {
            format!("unknown route protocol {text:?}: use a name (bird, bgp, zebra, ...) or a number 0-255")
        }),
    }
}

/// What identifies a kernel route message (table, prefix, tos, metric), whatever its type
/// or protocol; `None` for messages that are not IP routes.
pub fn route_key(message: &RouteMessage) -> Option<RouteKey> {
    let header = &message.header;
    let mut destination = None;
    let mut table = u32::from(header.table);
    let mut priority = 0;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => destination = ip_of(address),
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Priority(value) => priority = *value,
            _ => {}
        }
    }
    let destination = match (header.address_family, destination) {
        (_, Some(ip)) => ip,
        (AddressFamily::Inet, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (AddressFamily::Inet6, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(RouteKey {
        table,
        prefix: IpNetwork::new(destination, header.destination_prefix_length).ok()?,
        tos: header.tos,
        priority,
    })
}

/// Converts a kernel route message into our key and route. `None` for the route part means
/// the route exists but is not one we watch (other protocol, local/broadcast route, ...).
/// Returns `None` altogether for messages that are not IP routes.
pub fn route_from_message(
    message: &RouteMessage,
    protocols: &BTreeSet<u8>,
) -> Option<(RouteKey, Option<LearnedRoute>)> {
    let key = route_key(message)?;
    let header = &message.header;
    let protocol = u8::from(header.protocol);
    let watched = protocols.contains(&protocol)
        && matches!(
            header.kind,
            RouteType::Unicast
                | RouteType::Unreachable
                | RouteType::BlackHole
                | RouteType::Prohibit
        );
    if !watched {
        return Some((key, None));
    }
    let mut next_hops = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Gateway(address) => next_hops.extend(ip_of(address)),
            RouteAttribute::Via(via) => next_hops.extend(ip_of_via(via)),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    for hop_attribute in &hop.attributes {
                        match hop_attribute {
                            RouteAttribute::Gateway(address) => next_hops.extend(ip_of(address)),
                            RouteAttribute::Via(via) => next_hops.extend(ip_of_via(via)),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    next_hops.sort();
    next_hops.dedup();
    let route = LearnedRoute {
        prefix: key.prefix,
        next_hops,
        protocol,
    };
    Some((key, Some(route)))
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn ip_of_via(via: &RouteVia) -> Option<IpAddr> {
    match via {
        RouteVia::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteVia::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Watches the kernel's routes forever, publishing the filtered table on `routes` after the
/// initial dump and after every change. Reconnects on failure; returns only when every
/// receiver is gone.
pub async fn watch_routes(
    config: RouteSourceConfig,
    routes: watch::Sender<Option<Vec<LearnedRoute>>>,
) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match watch_once(&config, &routes).await {
            Ok(()) => return,
            Err(error) => {
                let retry_in = backoff.delay();
                tracing::warn!(%error, ?retry_in, "route source failed; reconnecting");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// One netlink connection's life: subscribe, dump, follow notifications; re-dump on overrun.
/// `Ok` only when nobody listens any more.
async fn watch_once(
    config: &RouteSourceConfig,
    routes: &watch::Sender<Option<Vec<LearnedRoute>>>,
) -> Result<(), RouteSourceError> {
    let (mut connection, handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(RouteSourceError::Socket)?;
    // A generous receive buffer makes overruns (and the re-dumps they cost) rare.
    let protocols = &config.protocols;
    if let Err(error) = connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(config.receive_buffer)
    {
        tracing::debug!(%error, "cannot enlarge the netlink receive buffer");
    }
    let connection = tokio::spawn(connection);
    let _abort = AbortOnDrop(connection);

    let mut table = RouteTable::default();
    dump_into(&handle, protocols, &mut table).await?;
    tracing::info!(routes = table.len(), "route dump complete");
    if publish(routes, &table) {
        return Ok(());
    }

    while let Some(first) = messages.next().await {
        let mut change = apply(first.0, protocols, &mut table);
        // Take everything already queued before publishing, so a burst of changes is
        // published once instead of once per route.
        loop {
            match messages.next().now_or_never() {
                Some(Some((message, _))) => {
                    change = change.max(apply(message, protocols, &mut table));
                }
                Some(None) => return Err(RouteSourceError::Closed),
                None => break,
            }
        }
        if change == Change::Redump {
            table.clear();
            dump_into(&handle, protocols, &mut table).await?;
        }
        if change != Change::None {
            tracing::debug!(routes = table.len(), "learned routes changed");
            if publish(routes, &table) {
                return Ok(());
            }
        }
    }
    Err(RouteSourceError::Closed)
}

/// What one notification did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    Changed,
    /// The table cannot be patched from the notification: dump the kernel's routes again.
    Redump,
}

/// Applies one notification to the table.
///
/// IPv6 multipath routes are sibling routes in the kernel: a notification about one next hop
/// (added with `NLM_F_APPEND`, or deleted alone) carries only that next hop, under the same
/// key as the whole route, so it cannot be applied as a replacement or a removal. Any IPv6
/// notification we care about therefore asks for a re-dump, which sees the merged route.
fn apply(
    message: NetlinkMessage<RouteNetlinkMessage>,
    protocols: &BTreeSet<u8>,
    table: &mut RouteTable,
) -> Change {
    let changed = |yes: bool| if yes { Change::Changed } else { Change::None };
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
            match route_from_message(&route, protocols) {
                Some((key, learned)) if key.prefix.is_ipv6() => {
                    if learned.is_some() || table.contains(&key) {
                        Change::Redump
                    } else {
                        Change::None
                    }
                }
                Some((key, learned)) => changed(table.upsert(key, learned)),
                None => Change::None,
            }
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route)) => {
            match route_from_message(&route, protocols) {
                Some((key, _)) if key.prefix.is_ipv6() && table.contains(&key) => Change::Redump,
                Some((key, _)) => changed(table.remove(&key)),
                None => Change::None,
            }
        }
        NetlinkPayload::Overrun(_) => {
            tracing::warn!("netlink overrun: notifications were lost; re-dumping routes");
            Change::Redump
        }
        _ => Change::None,
    }
}

/// Publishes the table; returns true when nobody listens any more.
fn publish(routes: &watch::Sender<Option<Vec<LearnedRoute>>>, table: &RouteTable) -> bool {
    routes.send(Some(table.snapshot())).is_err()
}

async fn dump_into(
    handle: &Handle,
    protocols: &BTreeSet<u8>,
    table: &mut RouteTable,
) -> Result<(), RouteSourceError> {
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let mut stream = handle.route().get(request).execute();
        while let Some(route) = stream.try_next().await.map_err(RouteSourceError::Dump)? {
            if let Some((key, Some(learned))) = route_from_message(&route, protocols) {
                table.upsert(key, Some(learned));
            }
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::{RouteNextHop, RouteProtocol};

    fn protocols() -> BTreeSet<u8> {
        [12, 186].into_iter().collect()
    }

    fn message(protocol: RouteProtocol, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 24;
        message.header.table = 254;
        message.header.protocol = protocol;
        message.header.kind = RouteType::Unicast;
        message.attributes = attributes;
        message
    }

    #[test]
    fn bird_route_with_gateway_is_learned() {
        let msg = message(
            RouteProtocol::Bird,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 244, 2, 0))),
                RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(198, 18, 0, 2))),
            ],
        );
        let (key, route) = route_from_message(&msg, &protocols()).unwrap();
        assert_eq!(key.table, 254);
        let route = route.unwrap();
        assert_eq!(route.prefix, "10.244.2.0/24".parse().unwrap());
        assert_eq!(
            route.next_hops,
            vec!["198.18.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(route.protocol, 12);
    }

    #[test]
    fn multipath_route_keeps_every_next_hop() {
        let hop = |last| {
            let mut hop = RouteNextHop::default();
            hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                198, 18, 0, last,
            )))];
            hop
        };
        let msg = message(
            RouteProtocol::Bgp,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 244, 2, 0))),
                RouteAttribute::MultiPath(vec![hop(3), hop(2)]),
            ],
        );
        let route = route_from_message(&msg, &protocols()).unwrap().1.unwrap();
        assert_eq!(
            route.next_hops,
            vec![
                "198.18.0.2".parse::<IpAddr>().unwrap(),
                "198.18.0.3".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn route_of_other_protocol_is_keyed_but_not_learned() {
        let msg = message(
            RouteProtocol::Static,
            vec![RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(10, 244, 2, 0),
            ))],
        );
        let (_, route) = route_from_message(&msg, &protocols()).unwrap();
        assert!(route.is_none());
    }

    #[test]
    fn local_route_type_is_ignored_even_from_bird() {
        let mut msg = message(RouteProtocol::Bird, vec![]);
        msg.header.kind = RouteType::Local;
        assert!(route_from_message(&msg, &protocols()).unwrap().1.is_none());
    }

    #[test]
    fn protocol_names_and_numbers_parse() {
        assert_eq!(parse_route_protocol("bird"), Ok(12));
        assert_eq!(parse_route_protocol("bgp"), Ok(186));
        assert_eq!(parse_route_protocol("42"), Ok(42));
        assert!(parse_route_protocol("birdy").is_err());
        assert!(parse_route_protocol("300").is_err());
    }
}

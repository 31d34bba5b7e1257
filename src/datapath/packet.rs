//! Just enough IP header parsing for the datapath: source and destination addresses, the
//! transport (protocol, ports, TCP flags, fragment position; IPv6 extension headers walked),
//! and for an ICMP or ICMPv6 error message the flow of the packet it quotes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the datapath reads from an IP packet's headers, parsed once per packet and passed
/// along (addresses for the peer lookup and the checks, transport for policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// `None` if the headers past the addresses are truncated or malformed (an IPv4 header
    /// length below 20 bytes, a truncated IPv6 extension header, more than
    /// [`MAX_EXTENSION_HEADERS`] of them).
    pub transport: Option<Transport>,
    /// `Some` if the packet is an ICMP or ICMPv6 error message (see [`IcmpError`]).
    pub icmp_error: Option<IcmpError>,
}

/// The headers of an IPv4 or IPv6 packet, or `None` if it is not one (or too short to hold
/// both addresses).
pub fn parse(packet: &[u8]) -> Option<Header> {
    let (version, source, destination, layout) = ip(packet)?;
    Some(Header {
        source,
        destination,
        transport: layout.map(|layout| transport(packet, layout)),
        icmp_error: layout.and_then(|layout| icmp_error(packet, version, layout)),
    })
}

/// What [`ipv4`] and [`ipv6`] read past the addresses: (protocol, offset of the transport
/// header, fragment).
type Layout = (u8, usize, Fragment);

/// (IP version, source, destination, layout) of an IP packet.
fn ip(packet: &[u8]) -> Option<(u8, IpAddr, IpAddr, Option<Layout>)> {
    match packet.first()? >> 4 {
        4 => {
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some((
                4,
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                ipv4(packet),
            ))
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some((
                6,
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                ipv6(packet),
            ))
        }
        _ => None,
    }
}

/// An ICMP error message (destination unreachable, fragmentation needed included; time
/// exceeded; parameter problem) or ICMPv6 one (destination unreachable, packet too big, time
/// exceeded, parameter problem): it reports on a packet it quotes (its IP header and at
/// least the first 8 bytes past it), which the error's destination sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// The quoted packet, as its sender sent it; `None` if the quote is truncated (short of
    /// 8 bytes of transport header), malformed, of the other IP version, or a later fragment.
    pub quoted: Option<Quoted>,
}

/// The packet an ICMP error quotes: addresses and transport (ports as for any packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub transport: Transport,
}

/// The transport of an IP packet: protocol number and, for TCP, UDP and SCTP, the ports
/// (zero for other protocols and for later fragments, which carry no transport header), and
/// where the packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// The TCP header's flags: `None` for other protocols, later fragments and a TCP header
    /// too short to hold them.
    pub tcp_flags: Option<TcpFlags>,
    pub fragment: Fragment,
}

impl Transport {
    /// Whether this packet can be the first of a flow: a TCP connection opening (SYN without
    /// ACK), or any packet of a protocol without one (UDP, ICMP, others). A TCP packet whose
    /// flags are unknown (a later fragment, a truncated header) cannot.
    pub fn opens_flow(&self) -> bool {
        self.protocol != TCP || self.tcp_flags.is_some_and(TcpFlags::is_connection_opening)
    }
}

/// The flags byte of a TCP header (byte 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;

    /// SYN without ACK: a client opening a connection (a SYN-ACK answers one).
    pub fn is_connection_opening(self) -> bool {
        self.0 & (Self::SYN | Self::ACK) == Self::SYN
    }
}

/// Which fragmented datagram a fragment belongs to (with its source and destination): the
/// identification and the protocol field the fragments share (IPv4: the header's protocol;
/// IPv6: the fragment header's next header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentId {
    pub id: u32,
    pub protocol: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (IPv6 atomic fragments included).
    Whole,
    /// The first fragment: it carries the transport header.
    First(FragmentId),
    /// A later fragment: no transport header, so no ports.
    Later(FragmentId),
}

use crate::policy::conntrack::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
const SCTP: u8 = 132;
pub(crate) const ICMP: u8 = 1;
pub(crate) const ICMPV6: u8 = 58;
/// IPv6 extension headers walked to find the transport header.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
/// Most IPv6 extension headers walked; a packet with more is not parsed.
const MAX_EXTENSION_HEADERS: usize = 8;
/// Length of the ICMP and ICMPv6 header, before an error message's quote.
const ICMP_HEADER: usize = 8;
/// Bytes of the transport header an ICMP error quotes at least (RFC 792, RFC 4443).
const ICMP_QUOTED_TRANSPORT: usize = 8;

/// The transport of a packet whose IP headers read as `layout`.
fn transport(packet: &[u8], (protocol, offset, fragment): Layout) -> Transport {
    let header = match fragment {
        Fragment::Later(_) => &[][..],
        _ => packet.get(offset..).unwrap_or_default(),
    };
    let (src_port, dst_port) = ports(protocol, header);
    let tcp_flags = match protocol {
        TCP => header.get(13).map(|&flags| TcpFlags(flags)),
        _ => None,
    };
    Transport {
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        fragment,
    }
}

/// (source, destination) ports of a transport `header` (what the packet holds of it) of
/// `protocol`: zero if it has none or is too short to hold them.
fn ports(protocol: u8, header: &[u8]) -> (u16, u16) {
    let field = |at: usize| match header.get(at..at + 2) {
        Some(&[high, low]) => u16::from_be_bytes([high, low]),
        _ => 0,
    };
    match protocol {
        TCP | UDP | SCTP if header.len() >= 4 => (field(0), field(2)),
        // ICMP echo: a request is (identifier, 0) and a reply (0, identifier), so a reply
        // matches the reverse of its request and a request in the other direction never does.
        ICMP | ICMPV6 if header.len() >= 8 => match (protocol, header[0]) {
            (ICMP, 8) | (ICMPV6, 128) => (field(4), 0),
            (ICMP, 0) | (ICMPV6, 129) => (0, field(4)),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}

/// The ICMP error an IP packet of `version` whose headers read as `layout` is, if it is one:
/// ICMP types 3, 11, 12 in IPv4; ICMPv6 types 1 to 4 in IPv6 (of a whole packet or a first
/// fragment, which holds the ICMP header).
fn icmp_error(
    packet: &[u8],
    version: u8,
    (protocol, offset, fragment): Layout,
) -> Option<IcmpError> {
    if matches!(fragment, Fragment::Later(_)) {
        return None;
    }
    match (version, protocol, *packet.get(offset)?) {
        (4, ICMP, 3 | 11 | 12) | (6, ICMPV6, 1..=4) => {}
        _ => return None,
    }
    // The quote follows the 8-byte ICMP header.
    let quote = packet.get(offset + ICMP_HEADER..).unwrap_or_default();
    Some(IcmpError {
        quoted: quoted(quote, version),
    })
}

/// The packet an ICMP error of IP `version` quotes, if the quote holds its IP headers and the
/// first [`ICMP_QUOTED_TRANSPORT`] bytes of its transport header.
fn quoted(quote: &[u8], version: u8) -> Option<Quoted> {
    let (quoted_version, source, destination, layout) = ip(quote)?;
    let layout @ (_, offset, fragment) = layout?;
    if quoted_version != version
        || matches!(fragment, Fragment::Later(_))
        || quote.len() < offset.checked_add(ICMP_QUOTED_TRANSPORT)?
    {
        return None;
    }
    Some(Quoted {
        source,
        destination,
        transport: transport(quote, layout),
    })
}

/// (protocol, offset of the transport header, fragment) of an IPv4 packet.
fn ipv4(packet: &[u8]) -> Option<Layout> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    if header < 20 {
        return None;
    }
    let protocol = *packet.get(9)?;
    let id = u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]);
    let flags_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let id = FragmentId {
        id: u32::from(id),
        protocol,
    };
    let fragment = match (flags_offset & 0x1fff, more_fragments) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First(id),
        _ => Fragment::Later(id),
    };
    Some((protocol, header, fragment))
}

/// (protocol, offset of the transport header, fragment) of an IPv6 packet: walks hop-by-hop,
/// routing, destination options and fragment headers. For a later fragment the protocol is
/// the fragment header's next header.
fn ipv6(packet: &[u8]) -> Option<Layout> {
    let mut next = *packet.get(6)?;
    let mut offset = 40;
    let mut fragment = Fragment::Whole;
    // Up to MAX_EXTENSION_HEADERS extension headers, then the transport header.
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                let length = (usize::from(*packet.get(offset + 1)?) + 1) * 8;
                next = *packet.get(offset)?;
                offset += length;
            }
            FRAGMENT => {
                let h = packet.get(offset..offset + 8)?;
                let id = FragmentId {
                    id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    protocol: h[0],
                };
                let fragment_offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                let more_fragments = h[3] & 1 != 0;
                next = h[0];
                offset += 8;
                if fragment_offset != 0 {
                    return Some((next, offset, Fragment::Later(id)));
                }
                if more_fragments {
                    fragment = Fragment::First(id);
                }
            }
            _ => return Some((next, offset, fragment)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
        parse(packet).map(|h| (h.source, h.destination))
    }

    fn transport(packet: &[u8]) -> Option<Transport> {
        parse(packet)?.transport
    }

    #[test]
    fn reads_ipv4_and_ipv6_addresses() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 244, 1, 2]);
        v4[16..20].copy_from_slice(&[10, 244, 2, 3]);
        assert_eq!(
            addresses(&v4),
            Some(("10.244.1.2".parse().unwrap(), "10.244.2.3".parse().unwrap()))
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[23] = 1;
        v6[39] = 2;
        assert_eq!(
            addresses(&v6),
            Some(("::1".parse().unwrap(), "::2".parse().unwrap()))
        );
        assert_eq!(addresses(&v4[..19]), None);
        assert_eq!(addresses(&[0x50; 40]), None);
        assert_eq!(addresses(&[]), None);
    }

    fn tcp(src_port: u16, dst_port: u16, fragment: Fragment) -> Option<Transport> {
        Some(Transport {
            protocol: 6,
            src_port,
            dst_port,
            tcp_flags: None,
            fragment,
        })
    }

    #[test]
    fn reads_ipv4_ports_and_fragment_positions() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[4..6].copy_from_slice(&[0x12, 0x34]); // identification
        v4[9] = 6;
        v4[20..24].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        assert_eq!(transport(&v4), tcp(12345, 80, Fragment::Whole));
        let id = FragmentId {
            id: 0x1234,
            protocol: 6,
        };
        v4[6] = 0x20; // more fragments, offset 0: the first fragment, with the ports
        assert_eq!(transport(&v4), tcp(12345, 80, Fragment::First(id)));
        v4[7] = 1; // offset 8 bytes: a later fragment, no ports
        assert_eq!(transport(&v4), tcp(0, 0, Fragment::Later(id)));
        v4[6] = 0; // the last fragment is a later one too
        assert_eq!(transport(&v4), tcp(0, 0, Fragment::Later(id)));
        v4[6] = 0x40; // don't fragment
        v4[7] = 0;
        assert_eq!(transport(&v4), tcp(12345, 80, Fragment::Whole));
        // A header length below 20 bytes is not IPv4.
        v4[0] = 0x44;
        assert_eq!(transport(&v4), None);
        v4[0] = 0x45;

        v4[9] = 1; // ICMP echo request, identifier 12345
        v4[20..28].copy_from_slice(&[8, 0, 0, 0, 0x30, 0x39, 0, 1]);
        let icmp = |src_port, dst_port| {
            Some(Transport {
                protocol: 1,
                src_port,
                dst_port,
                tcp_flags: None,
                fragment: Fragment::Whole,
            })
        };
        assert_eq!(transport(&v4), icmp(12345, 0));
        v4[20] = 0; // its echo reply: the reverse
        assert_eq!(transport(&v4), icmp(0, 12345));
        v4[20] = 3; // destination unreachable: no identifier
        assert_eq!(transport(&v4), icmp(0, 0));
    }

    /// An IPv6 packet: the fixed header with `first` as next header, then `headers`
    /// (extension headers and the transport header, as bytes).
    fn ipv6(first: u8, headers: &[&[u8]]) -> Vec<u8> {
        let mut packet = vec![0u8; 40];
        packet[0] = 0x60;
        packet[6] = first;
        for header in headers {
            packet.extend_from_slice(header);
        }
        packet
    }

    /// An extension header of 8 bytes (hop-by-hop, routing, destination options).
    fn extension(next: u8) -> [u8; 8] {
        [next, 0, 0, 0, 0, 0, 0, 0]
    }

    fn fragment_header(next: u8, offset_units: u16, more: bool, id: u32) -> [u8; 8] {
        let field = (offset_units << 3) | u16::from(more);
        let [a, b] = field.to_be_bytes();
        let [c, d, e, f] = id.to_be_bytes();
        [next, 0, a, b, c, d, e, f]
    }

    const TCP_PORTS: [u8; 4] = [0x30, 0x39, 0x00, 0x50];

    #[test]
    fn walks_ipv6_extension_headers_to_the_transport_header() {
        assert_eq!(
            transport(&ipv6(6, &[&TCP_PORTS])),
            tcp(12345, 80, Fragment::Whole)
        );
        // Hop-by-hop, then a 16-byte destination options header, then a routing header.
        let mut long_options = [0u8; 16];
        long_options[0] = 43;
        long_options[1] = 1; // (1 + 1) * 8 bytes
        let packet = ipv6(
            0,
            &[&extension(60), &long_options, &extension(6), &TCP_PORTS],
        );
        assert_eq!(transport(&packet), tcp(12345, 80, Fragment::Whole));
        // ICMPv6 echo request behind a destination options header.
        let echo = [128, 0, 0, 0, 0x30, 0x39, 0, 1];
        assert_eq!(
            transport(&ipv6(60, &[&extension(58), &echo])),
            Some(Transport {
                protocol: 58,
                src_port: 12345,
                dst_port: 0,
                tcp_flags: None,
                fragment: Fragment::Whole,
            })
        );
        // A truncated extension header, or too many of them: not parsed.
        assert_eq!(transport(&ipv6(0, &[&[6]])), None);
        let chain = |headers: usize| {
            let mut chain: Vec<[u8; 8]> = (1..headers).map(|_| extension(60)).collect();
            chain.push(extension(6));
            let mut parts: Vec<&[u8]> = chain.iter().map(|h| &h[..]).collect();
            parts.push(&TCP_PORTS);
            transport(&ipv6(60, &parts))
        };
        assert_eq!(
            chain(MAX_EXTENSION_HEADERS),
            tcp(12345, 80, Fragment::Whole)
        );
        assert_eq!(chain(MAX_EXTENSION_HEADERS + 1), None);
    }

    #[test]
    fn reads_ipv6_fragment_positions() {
        let id = FragmentId {
            id: 0xdead_beef,
            protocol: 6,
        };
        let first = ipv6(44, &[&fragment_header(6, 0, true, id.id), &TCP_PORTS]);
        assert_eq!(transport(&first), tcp(12345, 80, Fragment::First(id)));
        let later = ipv6(44, &[&fragment_header(6, 3, true, id.id), &TCP_PORTS]);
        assert_eq!(transport(&later), tcp(0, 0, Fragment::Later(id)));
        let last = ipv6(44, &[&fragment_header(6, 3, false, id.id), &TCP_PORTS]);
        assert_eq!(transport(&last), tcp(0, 0, Fragment::Later(id)));
        // An atomic fragment (offset 0, no more fragments) is a whole packet.
        let atomic = ipv6(44, &[&fragment_header(6, 0, false, id.id), &TCP_PORTS]);
        assert_eq!(transport(&atomic), tcp(12345, 80, Fragment::Whole));
        // Extension headers after the fragment header, in the first fragment, are walked;
        // the datagram is identified by the fragment header's next header.
        let first = ipv6(
            0,
            &[
                &extension(44),
                &fragment_header(60, 0, true, 7),
                &extension(6),
                &TCP_PORTS,
            ],
        );
        let id = FragmentId {
            id: 7,
            protocol: 60,
        };
        assert_eq!(transport(&first), tcp(12345, 80, Fragment::First(id)));
        let later = ipv6(44, &[&fragment_header(60, 10, false, 7), &[0; 16]]);
        assert_eq!(
            transport(&later),
            Some(Transport {
                protocol: 60,
                src_port: 0,
                dst_port: 0,
                tcp_flags: None,
                fragment: Fragment::Later(id),
            })
        );
    }

    /// A TCP header (20 bytes) from port 12345 to 80 with `flags`.
    fn tcp_header(flags: u8) -> [u8; 20] {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(&TCP_PORTS);
        header[12] = 0x50;
        header[13] = flags;
        header
    }

    fn tcp_flags(packet: &[u8]) -> Option<TcpFlags> {
        transport(packet)?.tcp_flags
    }

    const SYN: u8 = TcpFlags::SYN;
    const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;

    #[test]
    fn reads_tcp_flags_where_the_tcp_header_is() {
        let whole = ipv6(6, &[&tcp_header(SYN)]);
        assert_eq!(tcp_flags(&whole), Some(TcpFlags(SYN)));
        assert!(transport(&whole).unwrap().opens_flow());
        // The first fragment carries the TCP header, hence the flags; later ones do not.
        let first = ipv6(44, &[&fragment_header(6, 0, true, 1), &tcp_header(SYN)]);
        assert_eq!(tcp_flags(&first), Some(TcpFlags(SYN)));
        let later = ipv6(44, &[&fragment_header(6, 3, false, 1), &tcp_header(SYN)]);
        assert_eq!(tcp_flags(&later), None);
        assert!(!transport(&later).unwrap().opens_flow());
        // A TCP header too short for the flags byte: ports, but no flags.
        let short = ipv6(6, &[&tcp_header(SYN)[..13]]);
        assert_eq!(transport(&short), tcp(12345, 80, Fragment::Whole));
        assert!(!transport(&short).unwrap().opens_flow());
        // Other protocols have no TCP flags, and any of their packets may open a flow.
        let udp = ipv6(17, &[&tcp_header(SYN)]);
        assert_eq!(tcp_flags(&udp), None);
        assert!(transport(&udp).unwrap().opens_flow());
    }

    #[test]
    fn only_a_syn_without_ack_opens_a_tcp_flow() {
        for (flags, opens) in [
            (SYN, true),
            (SYN | 0x08, true), // SYN with PSH
            (SYN_ACK, false),
            (ACK, false),
            (ACK | 0x01, false), // FIN-ACK
            (0x04, false),       // RST
            (0, false),
        ] {
            let packet = ipv6(6, &[&tcp_header(flags)]);
            assert_eq!(tcp_flags(&packet), Some(TcpFlags(flags)));
            assert_eq!(
                transport(&packet).unwrap().opens_flow(),
                opens,
                "{flags:#04x}"
            );
        }
    }

    /// An IPv4 packet from 198.18.0.9 to 10.244.1.2 with `protocol` and `payload`.
    fn ipv4_to_pod(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[9] = protocol;
        packet[12..16].copy_from_slice(&[198, 18, 0, 9]);
        packet[16..20].copy_from_slice(&[10, 244, 1, 2]);
        packet.extend_from_slice(payload);
        packet
    }

    /// An ICMP message of `icmp_type` (code 0) quoting `quote`.
    fn icmp(icmp_type: u8, quote: &[u8]) -> Vec<u8> {
        let mut message = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(quote);
        message
    }

    /// The UDP packet 10.244.1.2:5000 to 10.244.2.3:53 (its header, no payload).
    fn udp_sent() -> Vec<u8> {
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[9] = 17;
        packet[12..16].copy_from_slice(&[10, 244, 1, 2]);
        packet[16..20].copy_from_slice(&[10, 244, 2, 3]);
        packet.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        packet
    }

    fn icmp_error(packet: &[u8]) -> Option<IcmpError> {
        parse(packet)?.icmp_error
    }

    #[test]
    fn reads_the_packet_an_icmp_error_quotes() {
        let quoted = Some(Quoted {
            source: "10.244.1.2".parse().unwrap(),
            destination: "10.244.2.3".parse().unwrap(),
            transport: Transport {
                protocol: 17,
                src_port: 5000,
                dst_port: 53,
                tcp_flags: None,
                fragment: Fragment::Whole,
            },
        });
        // Destination unreachable, time exceeded, parameter problem.
        for icmp_type in [3, 11, 12] {
            let error = ipv4_to_pod(1, &icmp(icmp_type, &udp_sent()));
            assert_eq!(icmp_error(&error), Some(IcmpError { quoted }));
            // The error's own transport is ICMP without ports, as before.
            assert_eq!(
                transport(&error).map(|t| (t.src_port, t.dst_port)),
                Some((0, 0))
            );
        }
        // Other ICMP messages are no errors: echo, echo reply, redirect.
        for icmp_type in [8, 0, 5] {
            assert_eq!(
                icmp_error(&ipv4_to_pod(1, &icmp(icmp_type, &udp_sent()))),
                None
            );
        }
        // An ICMPv6 type in an ICMPv4 message, or a UDP packet, is none either.
        assert_eq!(icmp_error(&ipv4_to_pod(1, &icmp(1, &udp_sent()))), None);
        assert_eq!(icmp_error(&ipv4_to_pod(17, &icmp(3, &udp_sent()))), None);
    }

    #[test]
    fn a_truncated_or_malformed_quote_quotes_nothing() {
        let no_quote = Some(IcmpError { quoted: None });
        let sent = udp_sent();
        // Short of 8 bytes of the quoted transport header, of its IP header, or of both.
        for len in [0, 1, 19, 20, 24, 27] {
            let error = ipv4_to_pod(1, &icmp(3, &sent[..len]));
            assert_eq!(icmp_error(&error), no_quote, "quote of {len} bytes");
        }
        // No room even for the ICMP header past the type: still an error, quoting nothing.
        assert_eq!(icmp_error(&ipv4_to_pod(1, &[3])), no_quote);
        // An ICMPv4 error quoting an IPv6 packet.
        assert_eq!(
            icmp_error(&ipv4_to_pod(1, &icmp(3, &ipv6(17, &[&[0; 8]])))),
            no_quote
        );
        // A quoted later fragment has no ports.
        let mut later = sent.clone();
        later[7] = 1;
        assert_eq!(icmp_error(&ipv4_to_pod(1, &icmp(3, &later))), no_quote);
        // A later fragment of an error holds no ICMP header: not read as one.
        let mut error = ipv4_to_pod(1, &icmp(3, &sent));
        error[7] = 1;
        assert_eq!(icmp_error(&error), None);
    }

    #[test]
    fn reads_the_packet_an_icmpv6_error_quotes() {
        // Packet too big (and the other errors) quoting a TCP segment behind a destination
        // options header.
        let sent = ipv6(60, &[&extension(6), &tcp_header(TcpFlags::ACK)]);
        for icmp_type in 1..=4 {
            let error = ipv6(58, &[&icmp(icmp_type, &sent)]);
            let quoted = icmp_error(&error).and_then(|e| e.quoted).unwrap();
            assert_eq!(quoted.transport.protocol, 6);
            assert_eq!(
                (quoted.transport.src_port, quoted.transport.dst_port),
                (12345, 80)
            );
        }
        // Echo request, router advertisement: no errors; nor ICMPv4's time exceeded (11).
        for icmp_type in [128, 134, 11] {
            assert_eq!(icmp_error(&ipv6(58, &[&icmp(icmp_type, &sent)])), None);
        }
        // Truncated: 7 bytes of the TCP header.
        let short = &sent[..40 + 8 + 7];
        assert_eq!(
            icmp_error(&ipv6(58, &[&icmp(2, short)])),
            Some(IcmpError { quoted: None })
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_an_icmp_error_quote(
            quote in prop::collection::vec(any::<u8>(), 0..120),
            v6 in any::<bool>(),
        ) {
            let error = if v6 {
                ipv6(58, &[&icmp(2, &quote)])
            } else {
                ipv4_to_pod(1, &icmp(3, &quote))
            };
            prop_assert!(parse(&error).is_some_and(|h| h.icmp_error.is_some()));
        }
    }
}

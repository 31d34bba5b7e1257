//! Just enough IP header parsing for the datapath: source and destination addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The (source, destination) of an IPv4 or IPv6 packet, or `None` if it is not one.
pub fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        _ => None,
    }
}

/// The transport of an IP packet: protocol number and, for TCP, UDP and SCTP, the ports
/// (zero for other protocols and for non-first fragments, which carry no ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

pub fn transport(packet: &[u8]) -> Option<Transport> {
    let (protocol, offset, fragment) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([*packet.get(6)? & 0x1f, *packet.get(7)?]);
            (*packet.get(9)?, header, fragment_offset != 0)
        }
        6 => (*packet.get(6)?, 40, false),
        _ => return None,
    };
    let header = |len: usize| packet.get(offset..offset + len).filter(|_| !fragment);
    let (src_port, dst_port) = match protocol {
        TCP | UDP | SCTP => match header(4) {
            Some(p) => (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ),
            None => (0, 0),
        },
        // ICMP echo: a request is (identifier, 0) and a reply (0, identifier), so a reply
        // matches the reverse of its request and a request in the other direction never does.
        ICMP | ICMPV6 => match header(8) {
            Some(h) if matches!((protocol, h[0]), (ICMP, 8) | (ICMPV6, 128)) => {
                (u16::from_be_bytes([h[4], h[5]]), 0)
            }
            Some(h) if matches!((protocol, h[0]), (ICMP, 0) | (ICMPV6, 129)) => {
                (0, u16::from_be_bytes([h[4], h[5]]))
            }
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    Some(Transport {
        protocol,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn reads_tcp_ports_and_skips_fragments() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[20..24].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        assert_eq!(
            transport(&v4),
            Some(Transport {
                protocol: 6,
                src_port: 12345,
                dst_port: 80
            })
        );
        v4[7] = 1; // a later fragment: no ports
        assert_eq!(
            transport(&v4),
            Some(Transport {
                protocol: 6,
                src_port: 0,
                dst_port: 0
            })
        );
        v4[9] = 1; // ICMP echo request, identifier 12345
        v4[7] = 0;
        v4[20..28].copy_from_slice(&[8, 0, 0, 0, 0x30, 0x39, 0, 1]);
        let icmp = |src_port, dst_port| {
            Some(Transport {
                protocol: 1,
                src_port,
                dst_port,
            })
        };
        assert_eq!(transport(&v4), icmp(12345, 0));
        v4[20] = 0; // its echo reply: the reverse
        assert_eq!(transport(&v4), icmp(0, 12345));
        v4[20] = 3; // destination unreachable: no identifier
        assert_eq!(transport(&v4), icmp(0, 0));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = addresses(&bytes);
            let _ = transport(&bytes);
        }
    }
}

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn block(cidr: &str, except: &[&str]) -> IpBlock {
    IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The definition the ranges compile: some block holds `ip` and none of its own excepts does.
fn linear(blocks: &[IpBlock], ip: IpAddr) -> bool {
    blocks
        .iter()
        .any(|b| b.cidr.contains(ip) && !b.except.iter().any(|e| e.contains(ip)))
}

#[test]
fn an_except_removes_its_range_and_nothing_around_it() {
    let set = IpRanges::from_blocks(&[block("10.0.0.0/8", &["10.1.0.0/16"])]);
    assert!(set.contains(ip("10.0.0.0")));
    assert!(set.contains(ip("10.0.255.255")));
    assert!(!set.contains(ip("10.1.0.0")));
    assert!(!set.contains(ip("10.1.255.255")));
    assert!(set.contains(ip("10.2.0.0")));
    assert!(set.contains(ip("10.255.255.255")));
    assert!(!set.contains(ip("9.255.255.255")));
    assert!(!set.contains(ip("11.0.0.0")));
    assert_eq!(set.v4.len(), 2);
}

#[test]
fn an_address_excepted_by_one_block_is_matched_by_another_that_holds_it() {
    let blocks = [
        block("10.0.0.0/8", &["10.1.0.0/16"]),
        block("10.1.2.0/24", &[]),
    ];
    let set = IpRanges::from_blocks(&blocks);
    assert!(set.contains(ip("10.1.2.3")));
    assert!(!set.contains(ip("10.1.3.0")));
    // Order does not matter.
    let reversed = [blocks[1].clone(), blocks[0].clone()];
    assert_eq!(IpRanges::from_blocks(&reversed), set);
}

#[test]
fn an_except_subtracts_only_from_its_own_block() {
    let set = IpRanges::from_blocks(&[
        block("10.0.0.0/16", &["10.0.1.0/24"]),
        block("10.0.0.0/8", &[]),
    ]);
    assert!(set.contains(ip("10.0.1.7")));
    assert_eq!(
        set.v4,
        [Span {
            first: 0x0a00_0000,
            last: 0x0aff_ffff
        }]
    );
}

#[test]
fn nested_and_overlapping_excepts_leave_the_rest_of_the_block() {
    // Excepts inside excepts (valid, each a strict subset of the cidr) and overlapping ones.
    let blocks = [block(
        "10.0.0.0/16",
        &[
            "10.0.0.0/24",
            "10.0.0.128/25",
            "10.0.4.0/22",
            "10.0.6.0/24",
            "10.0.255.255/32",
        ],
    )];
    let set = IpRanges::from_blocks(&blocks);
    for text in [
        "10.0.0.0",
        "10.0.0.200",
        "10.0.4.1",
        "10.0.6.1",
        "10.0.255.255",
    ] {
        assert!(!set.contains(ip(text)), "{text}");
    }
    for text in ["10.0.1.0", "10.0.3.255", "10.0.8.0", "10.0.255.254"] {
        assert!(set.contains(ip(text)), "{text}");
    }
    assert_eq!(
        set.v4,
        [
            Span {
                first: 0x0a00_0100,
                last: 0x0a00_03ff
            },
            Span {
                first: 0x0a00_0800,
                last: 0x0a00_fffe
            },
        ]
    );
}

#[test]
fn adjacent_and_overlapping_blocks_merge_into_one_range() {
    let set = IpRanges::from_blocks(&[
        block("10.0.1.0/24", &[]),
        block("10.0.0.0/24", &[]),
        block("10.0.2.0/23", &[]),
        block("10.0.2.128/25", &[]),
    ]);
    assert_eq!(
        set.v4,
        [Span {
            first: 0x0a00_0000,
            last: 0x0a00_03ff
        }]
    );
    // One address apart: not merged.
    let apart = IpRanges::from_blocks(&[block("10.0.0.0/32", &[]), block("10.0.0.2/32", &[])]);
    assert_eq!(apart.v4.len(), 2);
    assert!(!apart.contains(ip("10.0.0.1")));
}

#[test]
fn slash_zero_holds_its_whole_family_and_no_other() {
    let v4 = IpRanges::from_blocks(&[block("0.0.0.0/0", &[])]);
    assert_eq!(
        v4.v4,
        [Span {
            first: 0,
            last: u32::MAX
        }]
    );
    assert!(v4.contains(ip("0.0.0.0")) && v4.contains(ip("255.255.255.255")));
    assert!(!v4.contains(ip("::")) && !v4.contains(ip("::ffff:10.0.0.1")));
    let v6 = IpRanges::from_blocks(&[block("::/0", &[])]);
    assert_eq!(
        v6.v6,
        [Span {
            first: 0,
            last: u128::MAX
        }]
    );
    assert!(v6.contains(ip("::")) && v6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(!v6.contains(ip("0.0.0.0")) && !v6.contains(ip("10.0.0.1")));
}

#[test]
fn excepts_at_the_ends_of_the_address_space_do_not_overflow() {
    let v4 = IpRanges::from_blocks(&[block(
        "0.0.0.0/0",
        &["0.0.0.0/32", "255.255.255.255/32", "255.255.255.0/24"],
    )]);
    assert_eq!(
        v4.v4,
        [Span {
            first: 1,
            last: 0xffff_feff
        }]
    );
    let v6 = IpRanges::from_blocks(&[block("::/0", &["::/1", "ffff::/16"])]);
    assert_eq!(
        v6.v6,
        [Span {
            first: 1 << 127,
            last: (0xffff << 112) - 1
        }]
    );
    assert!(!v6.contains(ip("ffff::1")));
    assert!(v6.contains(ip("fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
}

#[test]
fn host_prefixes_hold_one_address() {
    let set = IpRanges::from_blocks(&[
        block("255.255.255.255/32", &[]),
        block("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", &[]),
        block("fd00::1/128", &[]),
    ]);
    assert!(set.contains(ip("255.255.255.255")));
    assert!(!set.contains(ip("255.255.255.254")));
    assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(set.contains(ip("fd00::1")));
    assert!(!set.contains(ip("fd00::")) && !set.contains(ip("fd00::2")));
}

#[test]
fn a_cidr_with_host_bits_set_holds_its_whole_network() {
    // `IpNetwork` keeps the address as written; `contains` masks it, and so do the ranges.
    let blocks = [block("10.0.0.77/24", &["10.0.0.200/30"])];
    let set = IpRanges::from_blocks(&blocks);
    for last in [0u8, 77, 199, 200, 203, 204, 255] {
        let address = IpAddr::from([10, 0, 0, last]);
        assert_eq!(set.contains(address), linear(&blocks, address), "{address}");
    }
    assert!(set.contains(ip("10.0.0.0")) && !set.contains(ip("10.0.0.201")));
}

#[test]
fn ipv4_mapped_addresses_are_ipv6_as_in_the_linear_match() {
    let blocks = [
        block("10.0.0.0/8", &[]),
        block("::ffff:0:0/96", &["::ffff:10.9.0.0/112"]),
    ];
    let set = IpRanges::from_blocks(&blocks);
    assert!(set.contains(ip("10.9.0.1")));
    assert!(!set.contains(ip("::ffff:10.9.0.1")));
    assert!(set.contains(ip("::ffff:192.168.0.1")));
    assert!(!set.contains(ip("192.168.0.1")));
    for text in [
        "10.9.0.1",
        "::ffff:10.9.0.1",
        "::ffff:192.168.0.1",
        "192.168.0.1",
    ] {
        assert_eq!(set.contains(ip(text)), linear(&blocks, ip(text)), "{text}");
    }
}

#[test]
fn an_except_of_the_other_family_removes_nothing() {
    let blocks = [
        block("10.0.0.0/8", &["::/0"]),
        block("fd00::/8", &["0.0.0.0/0"]),
    ];
    let set = IpRanges::from_blocks(&blocks);
    assert!(set.contains(ip("10.0.0.1")) && set.contains(ip("fd00::1")));
    assert!(linear(&blocks, ip("10.0.0.1")) && linear(&blocks, ip("fd00::1")));
}

#[test]
fn no_blocks_hold_nothing() {
    let set = IpRanges::from_blocks(&[]);
    assert!(!set.contains(ip("0.0.0.0")) && !set.contains(ip("::")));
}

/// An address near `bits` most of the time (to land in, around and between blocks), any
/// address otherwise.
fn arb_address(bits: u32) -> impl Strategy<Value = u128> {
    let max = if bits == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    // A few anchors, so that blocks and excepts overlap often.
    let top = max & !0xffff;
    let mut anchors = vec![0, 0x0a00_0000 << (bits - 32), top, max - 0x1ff];
    if bits == 128 {
        // IPv4-mapped addresses, `::ffff:0:0/96`.
        anchors.push(0xffff_0000_0000);
    }
    prop_oneof![
        3 => (prop::sample::select(anchors), 0u128..0x1_0000).prop_map(move |(a, o)| a.saturating_add(o).min(max)),
        1 => 0..=max,
    ]
}

/// A CIDR of the family of `bits` (32 or 128), with a prefix length biased to long ones.
fn arb_network(bits: u32) -> impl Strategy<Value = IpNetwork> {
    let prefix = prop_oneof![
        1 => 0..=bits as u8,
        3 => (bits as u8 - 20)..=bits as u8,
    ];
    (arb_address(bits), prefix).prop_map(move |(address, prefix)| {
        let network = if bits == 32 {
            IpNetwork::new(Ipv4Addr::from(address as u32).into(), prefix)
        } else {
            IpNetwork::new(Ipv6Addr::from(address).into(), prefix)
        };
        network.unwrap()
    })
}

/// Blocks of both families; their excepts are mostly inside them (as validation requires),
/// sometimes anywhere in either family (to hold the ranges to the definition, not to it).
fn arb_blocks() -> impl Strategy<Value = Vec<IpBlock>> {
    let except = |bits: u32| {
        prop_oneof![
            4 => arb_network(bits),
            1 => arb_network(32),
            1 => arb_network(128),
        ]
    };
    let block = |bits: u32| {
        (arb_network(bits), prop::collection::vec(except(bits), 0..4))
            .prop_map(|(cidr, except)| IpBlock { cidr, except })
    };
    prop::collection::vec(prop_oneof![block(32), block(128)], 0..8)
}

/// Every address at or next to a boundary of a block or except: its first and last, and the
/// one before and after each.
fn boundaries(blocks: &[IpBlock]) -> Vec<IpAddr> {
    let networks = blocks
        .iter()
        .flat_map(|b| std::iter::once(&b.cidr).chain(&b.except));
    let mut addresses = Vec::new();
    for network in networks {
        let span = span_of(network);
        for n in [
            span.first.wrapping_sub(1),
            span.first,
            span.last,
            span.last.wrapping_add(1),
        ] {
            match network {
                IpNetwork::V4(_) => addresses.push(IpAddr::from(Ipv4Addr::from(n as u32))),
                IpNetwork::V6(_) => addresses.push(IpAddr::from(Ipv6Addr::from(n))),
            }
        }
    }
    addresses
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn contains_agrees_with_the_linear_match(
        blocks in arb_blocks(),
        v4 in prop::collection::vec(arb_address(32), 8),
        v6 in prop::collection::vec(arb_address(128), 8),
    ) {
        let set = IpRanges::from_blocks(&blocks);
        let random = v4
            .iter()
            .flat_map(|a| {
                let v4 = Ipv4Addr::from(*a as u32);
                [IpAddr::from(v4), IpAddr::from(v4.to_ipv6_mapped())]
            })
            .chain(v6.iter().map(|a| IpAddr::from(Ipv6Addr::from(*a))));
        for address in boundaries(&blocks).into_iter().chain(random) {
            prop_assert_eq!(set.contains(address), linear(&blocks, address), "{}", address);
        }
        // Sorted, disjoint and merged: each range starts past the one before ends, plus one.
        prop_assert!(set.v4.windows(2).all(|w| w[0].last < w[1].first.saturating_sub(1)));
        prop_assert!(set.v6.windows(2).all(|w| w[0].last < w[1].first.saturating_sub(1)));
    }
}

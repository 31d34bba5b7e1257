//! The addresses a rule's ipBlock peers match, compiled once: the union over the blocks of
//! each block's CIDR less its own excepts, kept per family as sorted, disjoint, merged
//! inclusive ranges, so a lookup is a binary search, whatever the number of blocks.
//!
//! An address matches only blocks of its own family, as `IpNetwork::contains` has it: an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is an IPv6 address, matched by IPv6 blocks
//! (`::ffff:0:0/96`, `::/0`) and never by IPv4 ones. An except of the other family than its
//! block's removes nothing.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::validate::IpBlock;

/// An inclusive range of addresses, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span<T> {
    first: T,
    last: T,
}

/// A set of addresses, compiled from ipBlocks. Two sets of the same addresses are equal,
/// however their blocks were written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct IpRanges {
    v4: Vec<Span<u32>>,
    v6: Vec<Span<u128>>,
}

impl IpRanges {
    /// The addresses some block contains and none of that block's excepts does.
    pub(super) fn from_blocks(blocks: &[IpBlock]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for block in blocks {
            let family = if block.cidr.is_ipv4() {
                &mut v4
            } else {
                &mut v6
            };
            let excepts: Vec<Span<u128>> = block
                .except
                .iter()
                .filter(|e| e.is_ipv4() == block.cidr.is_ipv4())
                .map(span_of)
                .collect();
            subtract(span_of(&block.cidr), excepts, family);
        }
        Self {
            v4: merge(v4)
                .into_iter()
                .filter_map(|s| {
                    Some(Span {
                        first: u32::try_from(s.first).ok()?,
                        last: u32::try_from(s.last).ok()?,
                    })
                })
                .collect(),
            v6: merge(v6),
        }
    }

    /// Whether the set holds `ip`. A binary search; no allocation.
    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => holds(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => holds(&self.v6, u128::from(v6)),
        }
    }
}

/// A CIDR's addresses, as numbers (an IPv4 address's fits in the low 32 bits).
fn span_of(network: &IpNetwork) -> Span<u128> {
    match network {
        IpNetwork::V4(n) => Span {
            first: u128::from(u32::from(n.network())),
            last: u128::from(u32::from(n.broadcast())),
        },
        IpNetwork::V6(n) => Span {
            first: u128::from(n.network()),
            last: u128::from(n.broadcast()),
        },
    }
}

/// Appends to `out` the parts of `whole` outside every span of `holes`, in order.
fn subtract(whole: Span<u128>, mut holes: Vec<Span<u128>>, out: &mut Vec<Span<u128>>) {
    holes.sort_unstable_by_key(|h| h.first);
    // The first address of `whole` not yet ruled in or out.
    let mut next = whole.first;
    for hole in holes {
        if hole.last < next || hole.first > whole.last {
            continue;
        }
        if hole.first > next {
            out.push(Span {
                first: next,
                last: hole.first - 1,
            });
        }
        match hole.last.checked_add(1) {
            Some(after) => next = after,
            // The hole runs to the last address there is: nothing of `whole` is left.
            None => return,
        }
    }
    if next <= whole.last {
        out.push(Span {
            first: next,
            last: whole.last,
        });
    }
}

/// Sorts `spans` and merges those that overlap or touch.
fn merge(mut spans: Vec<Span<u128>>) -> Vec<Span<u128>> {
    spans.sort_unstable_by_key(|s| s.first);
    let mut merged: Vec<Span<u128>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            // Sorted, so `span.first >= last.first`: it overlaps or touches `last` exactly
            // when it starts at most one past `last`'s end.
            Some(last) if span.first.saturating_sub(1) <= last.last => {
                last.last = last.last.max(span.last);
            }
            _ => merged.push(span),
        }
    }
    merged
}

/// Whether one of the sorted, disjoint `spans` holds `address`.
fn holds<T: Ord + Copy>(spans: &[Span<T>], address: T) -> bool {
    let index = spans.partition_point(|s| s.last < address);
    spans.get(index).is_some_and(|s| s.first <= address)
}

#[cfg(test)]
#[path = "ip_ranges_tests.rs"]
mod tests;

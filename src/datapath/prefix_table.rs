//! Longest-prefix match over a set of CIDRs: one hash map per prefix length, probed from the
//! longest length down. Lookups allocate nothing and cost at most one probe per distinct
//! length in the table.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    /// (prefix length, masked address -> value), longest length first.
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

fn slot<K, T>(levels: &mut Vec<(u8, HashMap<K, T>)>, len: u8) -> &mut HashMap<K, T> {
    let at = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::new()));
            i
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    &mut levels[at].1
}

impl<T> PrefixTable<T> {
    /// Inserts (or replaces) the value for `prefix`.
    pub fn insert(&mut self, prefix: IpNetwork, value: T) {
        match (prefix.network(), prefix.prefix()) {
            (IpAddr::V4(net), len) => {
                slot(&mut self.v4, len).insert(mask4(u32::from(net), len), value);
            }
            (IpAddr::V6(net), len) => {
                slot(&mut self.v6, len).insert(mask6(u128::from(net), len), value);
            }
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask6(a, *len)))
            }
        }
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn longest_prefix_wins() {
        let mut table = PrefixTable::default();
        table.insert("10.244.0.0/16".parse().unwrap(), 1);
        table.insert("10.244.2.0/24".parse().unwrap(), 2);
        table.insert("fd00::/64".parse().unwrap(), 6);
        assert_eq!(table.lookup("10.244.2.9".parse().unwrap()), Some(&2));
        assert_eq!(table.lookup("10.244.3.9".parse().unwrap()), Some(&1));
        assert_eq!(table.lookup("10.245.0.1".parse().unwrap()), None);
        assert_eq!(table.lookup("fd00::1".parse().unwrap()), Some(&6));
        assert_eq!(table.lookup("fd01::1".parse().unwrap()), None);
    }

    proptest! {
        #[test]
        fn agrees_with_a_linear_scan(
            prefixes in prop::collection::vec((any::<u32>(), 0u8..=32), 0..20),
            probes in prop::collection::vec(any::<u32>(), 1..50),
        ) {
            let mut table = PrefixTable::default();
            let mut list: Vec<(IpNetwork, usize)> = Vec::new();
            for (i, (addr, len)) in prefixes.iter().enumerate() {
                let net = IpNetwork::new(IpAddr::from(mask4(*addr, *len).to_be_bytes()), *len).unwrap();
                table.insert(net, i);
                list.retain(|(n, _)| *n != net);
                list.push((net, i));
            }
            for probe in probes {
                let addr = IpAddr::from(probe.to_be_bytes());
                let expected = list
                    .iter()
                    .filter(|(n, _)| n.contains(addr))
                    .max_by_key(|(n, _)| n.prefix())
                    .map(|(_, v)| v);
                prop_assert_eq!(table.lookup(addr), expected);
            }
        }
    }
}

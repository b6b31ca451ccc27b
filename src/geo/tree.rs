//! [`Tree`]: the search tree of a MaxMind DB, copied out of the file into plain `u32` pairs,
//! with every data pointer replaced by the index of a distinct [`Location`](super::Location).
//!
//! Owns the hot-path walk: one array read per address bit, no decoding, no allocation. The file
//! itself (and its data section) is not kept after [`GeoDb::open`](super::GeoDb::open): the
//! tree plus the distinct locations are all a lookup needs, so a GeoLite2-City file of 60 MB
//! costs about half that in memory. Pure: built from bytes, read by `&self`.

use std::collections::HashMap;

/// A child that is not a node: the high bit is set, the rest is a location index or a sentinel.
const TERMINAL: u32 = 1 << 31;
/// No record at all (the MaxMind "empty" pointer): worth trying the IPv4-mapped subtree.
pub(super) const EMPTY: u32 = TERMINAL | 0x7fff_ffff;
/// A record without a usable location (no or bad coordinates, undecodable).
pub(super) const NO_LOCATION: u32 = TERMINAL | 0x7fff_fffe;
/// Location indices must stay below the sentinels.
pub(super) const MAX_LOCATIONS: u32 = 0x7fff_fff0;

/// Where a walk ended: the terminal it reached and how many address bits led there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reached {
    /// [`EMPTY`], [`NO_LOCATION`] or `TERMINAL | location index`.
    pub(super) terminal: u32,
    /// Bits consumed from the start node: the length of the network that holds the address.
    pub(super) bits: u8,
}

impl Reached {
    /// The location index, if the record has one.
    pub(super) fn location(self) -> Option<u32> {
        match self.terminal {
            EMPTY | NO_LOCATION => None,
            t => Some(t & !TERMINAL),
        }
    }
}

pub(super) struct Tree {
    /// Per node, its two children: a node index, or a terminal (high bit set).
    nodes: Vec<[u32; 2]>,
    /// Where IPv4 addresses start in an IPv6 tree (after 96 zero bits), and how deep that is;
    /// the root and 0 in an IPv4 tree. May itself be a terminal (a record above ::/96).
    pub(super) v4_start: u32,
    pub(super) v4_depth: u8,
}

impl Tree {
    /// Copy the tree out of `raw` (the file's first `node_count * record_size / 4` bytes),
    /// mapping each data offset through `locations` (offset in the data section -> location
    /// index, or [`NO_LOCATION`]). An offset that `locations` lacks has no location.
    pub(super) fn build(
        raw: &[u8],
        node_count: usize,
        record_size: u16,
        ip_version: u16,
        locations: &HashMap<usize, u32>,
    ) -> Option<Tree> {
        let node_bytes = usize::from(record_size) / 4;
        if node_count >= TERMINAL as usize || raw.len() < node_count * node_bytes {
            return None;
        }
        let child = |value: usize| -> u32 {
            if value < node_count {
                value as u32
            } else if value == node_count {
                EMPTY
            } else {
                // MaxMind DB: a data pointer is node_count + 16 + offset in the data section.
                value
                    .checked_sub(node_count + 16)
                    .and_then(|offset| locations.get(&offset))
                    .map_or(NO_LOCATION, |&l| l)
            }
        };
        let mut nodes = Vec::with_capacity(node_count);
        for n in 0..node_count {
            let b = &raw[n * node_bytes..(n + 1) * node_bytes];
            let (left, right) = read_node(b, record_size)?;
            nodes.push([child(left), child(right)]);
        }
        let mut tree = Tree {
            nodes,
            v4_start: 0,
            v4_depth: 0,
        };
        if ip_version == 6 {
            let r = tree.walk(0, 0, 96);
            // A node after 96 bits, or a terminal met on the way (it covers all of IPv4).
            tree.v4_start = r.terminal;
            tree.v4_depth = r.bits;
        }
        Some(tree)
    }

    /// Follow `len` bits of `bits` (most significant first) from `start`; stops early at a
    /// terminal. Running out of bits on a node (a malformed tree) reads as [`EMPTY`], as the
    /// maxminddb crate does; a walk that ends on a node returns that node when `len` is 96.
    #[inline]
    pub(super) fn walk(&self, start: u32, bits: u128, len: u8) -> Reached {
        let mut node = start;
        let mut depth = 0u8;
        while node & TERMINAL == 0 {
            if depth == len {
                return Reached {
                    terminal: if len == 96 { node } else { EMPTY },
                    bits: depth,
                };
            }
            let bit = ((bits >> (127 - u32::from(depth))) & 1) as usize;
            node = match self.nodes.get(node as usize) {
                Some(children) => children[bit],
                None => EMPTY,
            };
            depth += 1;
        }
        Reached {
            terminal: node,
            bits: depth,
        }
    }

    /// Walk an IPv4 address from the IPv4 start; `bits` counts from the start of the address.
    #[inline]
    pub(super) fn walk_v4(&self, v4: u32) -> Reached {
        if self.v4_start & TERMINAL != 0 {
            // A record above ::/96 covers every IPv4 address.
            return Reached {
                terminal: self.v4_start,
                bits: 0,
            };
        }
        self.walk(self.v4_start, u128::from(v4) << 96, 32)
    }

    /// Bytes held by the tree, for the memory figures.
    pub(super) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<[u32; 2]>()
    }
}

/// The two records of one node, for the three record sizes of the format (24, 28, 32 bits).
fn read_node(b: &[u8], record_size: u16) -> Option<(usize, usize)> {
    let be = |s: &[u8]| s.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
    match record_size {
        24 => Some((be(&b[0..3]), be(&b[3..6]))),
        28 => {
            let left = (usize::from(b[3] & 0xf0) << 20) | be(&b[0..3]);
            let right = (usize::from(b[3] & 0x0f) << 24) | be(&b[4..7]);
            Some((left, right))
        }
        32 => Some((be(&b[0..4]), be(&b[4..8]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_record_sizes() {
        assert_eq!(read_node(&[0, 0, 1, 0, 0, 2], 24), Some((1, 2)));
        assert_eq!(
            read_node(&[0x12, 0x34, 0x56, 0xab, 0x65, 0x43, 0x21], 28),
            Some((0x0a12_3456, 0x0b65_4321))
        );
        assert_eq!(read_node(&[0, 0, 0, 7, 1, 0, 0, 0], 32), Some((7, 1 << 24)));
        assert_eq!(read_node(&[0; 8], 30), None);
    }
}

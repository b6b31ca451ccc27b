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

/// Nodes per cache line: a node is two `u32` children, 8 bytes.
const LINE: usize = 8;

/// One 64-byte cache line of nodes, aligned as one: a walk that stays within a line costs one
/// memory access for up to [`LINE`] levels (see [`cluster`]).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([[u32; 2]; LINE]);

pub(super) struct Tree {
    /// Per node, its two children: a node index, or a terminal (high bit set). Node `i` is
    /// `lines[i / LINE].0[i % LINE]`, in the order of [`cluster`], not the file's.
    lines: Vec<Line>,
    /// Where IPv4 addresses start in an IPv6 tree (after 96 zero bits), and how deep that is;
    /// the root and 0 in an IPv4 tree. May itself be a terminal (a record above ::/96).
    pub(super) v4_start: u32,
    pub(super) v4_depth: u8,
    /// For each value of an IPv4 address's first [`JUMP_BITS`] bits: where a walk from
    /// `v4_start` is after them, as `depth << 32 | node or terminal` (the terminal and its
    /// depth if one came first). One read of a 512 KiB table instead of the tree's top 16
    /// levels: about six cache lines, the lower ones missing once the tree is big. Empty when
    /// `v4_start` is itself a terminal.
    v4_jump: Vec<u64>,
    /// `lines`' memory and how much of it is on huge pages, measured once built.
    pub(super) backing: crate::memory::Backing,
}

/// Leading IPv4 bits resolved by [`Tree::v4_jump`]'s one read.
const JUMP_BITS: u32 = 16;

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
        let lines = cluster(&nodes);
        let mut tree = Tree {
            backing: crate::memory::backing(&lines),
            lines,
            v4_start: 0,
            v4_depth: 0,
            v4_jump: Vec::new(),
        };
        if ip_version == 6 {
            let r = tree.walk(0, 0, 96);
            // A node after 96 bits, or a terminal met on the way (it covers all of IPv4).
            tree.v4_start = r.terminal;
            tree.v4_depth = r.bits;
        }
        tree.v4_jump = tree.jump_table();
        Some(tree)
    }

    /// Follow `len` bits of `bits` (most significant first) from `start`; stops early at a
    /// terminal. Running out of bits on a node (a malformed tree) reads as [`EMPTY`], as the
    /// maxminddb crate does; a walk that ends on a node returns that node when `len` is 96.
    #[inline]
    pub(super) fn walk(&self, start: u32, bits: u128, len: u8) -> Reached {
        self.walk_bits(start, len, |depth| {
            ((bits >> (127 - u32::from(depth))) & 1) as usize
        })
    }

    /// [`Tree::walk`] with the address bit at each depth from `bit`: an IPv4 walk reads its
    /// bits from a `u32`, cheaper than shifting a `u128` at every level.
    #[inline(always)]
    fn walk_bits(&self, start: u32, len: u8, bit: impl Fn(u8) -> usize) -> Reached {
        let mut node = start;
        let mut depth = 0u8;
        while node & TERMINAL == 0 {
            if depth == len {
                return Reached {
                    terminal: if len == 96 { node } else { EMPTY },
                    bits: depth,
                };
            }
            let bit = bit(depth);
            let i = node as usize;
            node = match self.lines.get(i / LINE) {
                Some(line) => line.0[i % LINE][bit],
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
        let Some(&jump) = self.v4_jump.get((v4 >> (32 - JUMP_BITS)) as usize) else {
            return self.walk_bits(self.v4_start, 32, |depth| {
                ((v4 >> (31 - u32::from(depth))) & 1) as usize
            });
        };
        let (node, depth) = (jump as u32, (jump >> 32) as u8);
        if node & TERMINAL != 0 {
            return Reached {
                terminal: node,
                bits: depth,
            };
        }
        let rest = v4 << JUMP_BITS;
        let r = self.walk_bits(node, (32 - JUMP_BITS) as u8, |d| {
            ((rest >> (31 - u32::from(d))) & 1) as usize
        });
        Reached {
            terminal: r.terminal,
            bits: r.bits + JUMP_BITS as u8,
        }
    }

    /// [`Tree::v4_jump`], from the tree itself.
    fn jump_table(&self) -> Vec<u64> {
        if self.v4_start & TERMINAL != 0 {
            return Vec::new();
        }
        (0..1u32 << JUMP_BITS)
            .map(|prefix| {
                let mut node = self.v4_start;
                let mut depth = 0;
                while node & TERMINAL == 0 && depth < JUMP_BITS {
                    let bit = ((prefix >> (JUMP_BITS - 1 - depth)) & 1) as usize;
                    let i = node as usize;
                    node = self
                        .lines
                        .get(i / LINE)
                        .map_or(EMPTY, |l| l.0[i % LINE][bit]);
                    depth += 1;
                }
                u64::from(depth) << 32 | u64::from(node)
            })
            .collect()
    }

    /// Bytes held by the tree, for the memory figures.
    pub(super) fn heap_bytes(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<Line>() + self.v4_jump.capacity() * 8
    }
}

/// Renumber the nodes (root first, as node 0) so that a node and the nodes below it, breadth
/// first, share a cache line: a cold walk of a GeoLite2-City tree (3.5M networks, about 24
/// levels for an IPv4 /24) then misses the cache about once per three levels or more instead
/// of nearly once per level, which was most of the cost of a cold client's answer. A group
/// starts where the last one ended and takes only the room left in that line, so lines are
/// full (no padding: the tree costs what it did) and a group never straddles two lines.
/// Nodes no walk reaches from the root are dropped. The tree may be a DAG (MaxMind aliases
/// the IPv4 subtree): a node shared by two parents is placed once.
fn cluster(nodes: &[[u32; 2]]) -> Vec<Line> {
    const UNSET: u32 = u32::MAX;
    let mut new_index = vec![UNSET; nodes.len()];
    // Old indices in their new order; UNSET pads the last line.
    let mut order: Vec<u32> = Vec::with_capacity(nodes.len() + LINE);
    // Roots of groups still to place: depth first, so a subtree's groups stay close.
    let mut roots: Vec<u32> = if nodes.is_empty() {
        Vec::new()
    } else {
        vec![0]
    };
    let mut group: Vec<u32> = Vec::with_capacity(LINE);
    while let Some(root) = roots.pop() {
        if new_index[root as usize] != UNSET {
            continue;
        }
        // The group: as many nodes below `root`, breadth first, as the current line has room
        // for (a fresh line: LINE); its frontier are roots of later groups.
        let room = LINE - order.len() % LINE;
        group.clear();
        group.push(root);
        new_index[root as usize] = 0;
        let mut next = 0;
        while next < group.len() {
            let n = group[next] as usize;
            next += 1;
            for child in nodes[n] {
                if child & TERMINAL != 0 || new_index[child as usize] != UNSET {
                    continue;
                }
                if group.len() < room {
                    new_index[child as usize] = 0;
                    group.push(child);
                } else {
                    roots.push(child);
                }
            }
        }
        for &n in &group {
            new_index[n as usize] = order.len() as u32;
            order.push(n);
        }
    }
    order.resize(order.len().next_multiple_of(LINE), UNSET);
    let renumber = |c: u32| {
        if c & TERMINAL != 0 {
            c
        } else {
            new_index[c as usize]
        }
    };
    // On huge pages where the kernel has them: a walk touches a few lines scattered over tens
    // of megabytes, and on 4 KiB pages each one missed the address translation cache too.
    let count = order.len() / LINE;
    let mut lines = Vec::with_capacity(count + crate::memory::huge_page_slack::<Line>(count));
    crate::memory::advise_huge_pages(&lines);
    lines.extend(order.chunks(LINE).map(|chunk| {
        let mut line = Line([[EMPTY, EMPTY]; LINE]);
        for (slot, &old) in line.0.iter_mut().zip(chunk) {
            if old != UNSET {
                let [l, r] = nodes[old as usize];
                *slot = [renumber(l), renumber(r)];
            }
        }
        line
    }));
    lines
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

    /// The walk of [`Tree::walk`] over nodes in the file's order.
    fn walk_plain(nodes: &[[u32; 2]], bits: u128, len: u8) -> Reached {
        let (mut node, mut depth) = (0u32, 0u8);
        while node & TERMINAL == 0 {
            if depth == len {
                return Reached {
                    terminal: EMPTY,
                    bits: depth,
                };
            }
            node = nodes[node as usize][((bits >> (127 - u32::from(depth))) & 1) as usize];
            depth += 1;
        }
        Reached {
            terminal: node,
            bits: depth,
        }
    }

    #[test]
    fn clustering_keeps_every_walk_and_packs_lines() {
        // A pseudo-random tree of 5,000 nodes, numbered as a writer might (creation order),
        // with a shared subtree (node 1 is also a child further down, as MaxMind's aliases)
        // and a node no walk reaches (the last).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 5_000u32;
        let mut nodes = vec![[EMPTY, EMPTY]; n as usize];
        let mut open = vec![(0u32, 0usize), (0, 1)];
        let mut next = 1u32;
        while let Some((parent, side)) = open.pop() {
            if next >= n - 1 || rnd() % 5 == 0 {
                nodes[parent as usize][side] = TERMINAL | (rnd() % 100) as u32;
                continue;
            }
            nodes[parent as usize][side] = next;
            open.splice(0..0, [(next, 0), (next, 1)]);
            next += 1;
        }
        nodes[next as usize - 1][1] = 1;
        let lines = cluster(&nodes);
        let mut tree = Tree {
            lines,
            v4_start: 0,
            v4_depth: 0,
            v4_jump: Vec::new(),
            backing: crate::memory::Backing::default(),
        };
        assert!(
            tree.lines.len() * LINE < n as usize + LINE,
            "{} lines",
            tree.lines.len()
        );
        for _ in 0..20_000 {
            let bits = u128::from(rnd()) << 64 | u128::from(rnd());
            assert_eq!(tree.walk(0, bits, 128), walk_plain(&nodes, bits, 128));
        }
        // IPv4 walks through the first-16-bits table end where the plain walk does, at the
        // same depth; the random tree has terminals above and below depth 16.
        tree.v4_jump = tree.jump_table();
        let mut depths = [0usize; 2];
        for _ in 0..20_000 {
            let v4 = rnd() as u32;
            let got = tree.walk_v4(v4);
            assert_eq!(got, walk_plain(&nodes, u128::from(v4) << 96, 32), "{v4:#x}");
            depths[usize::from(got.bits > 16)] += 1;
        }
        assert!(
            depths[0] > 100 && depths[1] > 100,
            "both sides of 16: {depths:?}"
        );
    }
}

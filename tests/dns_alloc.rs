//! The fast path allocates nothing per query: a counting global allocator (per thread, so
//! other tests' threads do not count) around `answer_into` with a reused buffer, for a routed
//! answer with ECS (a client seen before, and many clients in one /24) and for static data.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

mod support;
use support::demo_config;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local,
// which needs no allocation to reach.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` otherwise.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A query with an ECS option for `addr`/24 (IPv4) or `addr`/56 (IPv6).
fn query(name: &str, qtype: u16, ecs: Option<IpAddr>) -> Vec<u8> {
    let mut q = vec![
        0x12,
        0x34,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(ecs.is_some()),
    ];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if let Some(addr) = ecs {
        let (family, prefix, octets) = match addr {
            IpAddr::V4(a) => (1u16, 24u8, a.octets()[..3].to_vec()),
            IpAddr::V6(a) => (2, 56, a.octets()[..7].to_vec()),
        };
        let len = 4 + octets.len() as u16;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        q.extend_from_slice(&(4 + len).to_be_bytes());
        q.extend_from_slice(&[0, 8]);
        q.extend_from_slice(&len.to_be_bytes());
        q.extend_from_slice(&family.to_be_bytes());
        q.extend_from_slice(&[prefix, 0]);
        q.extend_from_slice(&octets);
    }
    q
}

#[test]
fn fast_path_answers_allocate_nothing() {
    use berth::dns::{answer_fast, answer_into, Transport};
    let dir = tempfile::tempdir().expect("tempdir");
    let live = berth::live::Live::load(&demo_config(dir.path(), &[], "")).expect("loads");
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    let queries = [
        query(
            "registry.example.test",
            1,
            Some("198.51.100.0".parse().expect("ip")),
        ),
        query(
            "registry.example.test",
            28,
            Some("2001:db8:2::".parse().expect("ip")),
        ),
        query(
            "registry.example.test",
            1,
            Some("10.9.8.0".parse().expect("ip")),
        ),
        query("registry.example.test", 1, None),
        query("static.example.test", 1, None),
        query(
            "static.example.test",
            15,
            Some("198.51.100.0".parse().expect("ip")),
        ),
        query("example.test", 6, None),
        query(
            "no-such-name.example.test",
            1,
            Some("198.51.100.0".parse().expect("ip")),
        ),
    ];
    let mut out = Vec::with_capacity(512);
    for q in &queries {
        // Which path: every one of these is the fast path's.
        assert!(answer_fast(&live, q, src, None).is_some(), "{q:?}");
        // First sight of the client fills the sticky table; the snapshot is loaded.
        assert!(answer_into(&live, q, src, Transport::Udp, None, &mut out));
    }
    for q in &queries {
        let before = allocations();
        for _ in 0..100 {
            assert!(answer_into(&live, q, src, Transport::Udp, None, &mut out));
        }
        let n = allocations() - before;
        assert_eq!(n, 0, "{n} allocations for 100 answers to {q:?}");
    }
}

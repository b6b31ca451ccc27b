//! How the DNS path's big tables sit in memory: on huge pages, and prefetched.
//!
//! The sticky table (megabytes, read at a scattered place per answer) and the GeoIP tree
//! (tens of megabytes for a city database, one path per answer) miss the CPU's address
//! translation cache on 4 KiB pages: profiling showed most of the sticky read's cost on the
//! page walk, which a virtual machine makes dearer still. Transparent huge pages (2 MiB, on
//! Linux where `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`) cut
//! those misses; a prefetch lets the remaining load overlap other work.

/// Huge pages are this large on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Ask the kernel to back `v`'s buffer (its whole capacity) with transparent huge pages.
/// Call it before writing: pages touched first come huge straight away, where the kernel
/// has them. Only whole 2 MiB pages inside the buffer are advised, so a buffer gets extra
/// capacity of [`HUGE_PAGE`] bytes to have its middle aligned. A hint: if the kernel says
/// no, nothing changes but the speed.
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    let start = v.as_ptr() as usize;
    let end = start + v.capacity() * size_of::<T>();
    let (from, to) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if to > from {
        madvise_huge(from, to - from);
    }
}

/// Extra elements of `T` that let a buffer of `len` have its middle on whole huge pages.
pub fn huge_page_slack<T>(len: usize) -> usize {
    if len * size_of::<T>() < 2 * HUGE_PAGE {
        return 0;
    }
    HUGE_PAGE / size_of::<T>().max(1)
}

/// A big table's size, and how much of it the kernel backs with huge pages: measured once,
/// when the table is built (`berth_table_bytes`, `berth_table_huge_page_bytes`). Where the
/// kernel has transparent huge pages off or fragmented, `huge` is 0 and answers cost more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backing {
    pub bytes: usize,
    /// None where it cannot be known (not Linux, or `/proc` unreadable).
    pub huge: Option<usize>,
}

/// `v`'s buffer (its whole capacity) and the part of it on huge pages now. Reads
/// `/proc/self/smaps` (a few milliseconds): call it when a table is built, not per query.
pub fn backing<T>(v: &Vec<T>) -> Backing {
    let start = v.as_ptr() as usize;
    let bytes = v.capacity() * size_of::<T>();
    let huge = if cfg!(target_os = "linux") && bytes > 0 {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .map(|smaps| huge_bytes_in(&smaps, start, start + bytes))
    } else {
        None
    };
    Backing { bytes, huge }
}

/// The `AnonHugePages` of the mappings in `smaps` (the text of `/proc/PID/smaps`) that
/// overlap `[start, end)`, each counted at most up to its overlap.
fn huge_bytes_in(smaps: &str, start: usize, end: usize) -> usize {
    let mut overlap = 0;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                overlap = b.min(end).saturating_sub(a.max(start));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("AnonHugePages:") {
            let kb: usize = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += (kb * 1024).min(overlap);
        }
    }
    total
}

#[cfg(target_os = "linux")]
fn madvise_huge(addr: usize, len: usize) {
    // SAFETY: the range is page-aligned and inside an allocation the caller holds;
    // MADV_HUGEPAGE changes how it is backed, never its contents. A refusal (kernel without
    // THP) is fine: the pages stay small.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn madvise_huge(_addr: usize, _len: usize) {}

/// Ask for the cache line holding `addr` (an address only: nothing is dereferenced).
#[inline(always)]
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint. It never faults and writes nothing, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 123   /usr/bin/berth
Size:               2048 kB
AnonHugePages:         0 kB
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
Size:               8192 kB
AnonHugePages:      6144 kB
7f0000800000-7f0000a00000 rw-p 00000000 00:00 0
Size:               2048 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me ac sd hg
";

    #[test]
    fn huge_pages_are_counted_only_where_the_table_lies() {
        // The table covers the first mapping wholly and half of the second.
        let (start, end) = (0x7f00_0000_0000, 0x7f00_0090_0000);
        assert_eq!(huge_bytes_in(SMAPS, start, end), (6144 + 1024) * 1024);
        // Only the first mapping.
        assert_eq!(huge_bytes_in(SMAPS, start, 0x7f00_0080_0000), 6144 * 1024);
        // Outside every mapping with huge pages.
        assert_eq!(huge_bytes_in(SMAPS, 0x55d0_c000_0000, 0x55d0_c020_0000), 0);
        assert_eq!(huge_bytes_in("", start, end), 0);
    }

    #[test]
    fn a_table_knows_its_size_and_reads_its_backing() {
        let len = 3 * HUGE_PAGE / 8;
        let mut v: Vec<u64> = Vec::with_capacity(len + huge_page_slack::<u64>(len));
        advise_huge_pages(&v);
        v.resize(len, 1);
        let b = backing(&v);
        assert_eq!(b.bytes, v.capacity() * 8);
        if cfg!(target_os = "linux") {
            let huge = b.huge.expect("/proc/self/smaps is readable on Linux");
            assert!(huge <= b.bytes, "{huge} > {}", b.bytes);
        }
    }
}

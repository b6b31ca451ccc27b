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

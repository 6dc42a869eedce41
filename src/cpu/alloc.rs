//! Output memory: zeroed by every thread, so that fresh pages are faulted in on all
//! cores, and backed by huge pages where Linux allows it.

use super::elem::Elem;
use super::rows::TASK_ELEMS;
use rayon::prelude::*;

/// `n` zeros with room for `capacity` elements, in memory asked to be backed by huge
/// pages, for outputs that tasks then write in place. Large outputs are zeroed by all
/// threads, so that the first touch of fresh pages is shared among the cores instead
/// of falling on the calling thread alone. (Building the output from pieces collected
/// by rayon, which skips the zeroing, moved every piece once more; docs/perf-notes.md,
/// c6.)
pub(super) fn output<T: Elem>(n: usize, capacity: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity);
    advise_huge_pages(&v);
    if n < TASK_ELEMS {
        v.resize(n, T::zero());
    } else {
        v.par_extend(rayon::iter::repeat_n(T::zero(), n));
    }
    v
}

/// Asks Linux to back the whole 2 MiB pages inside `v`'s allocation with transparent
/// huge pages, before anything touches them. Large outputs are mostly fresh memory
/// (glibc maps allocations of 32 MiB and more anew each time and gives trimmed heap
/// back), and faulting them in 4 KiB at a time costs more than computing them
/// (docs/perf-notes.md). Without THP, or in "never" mode, the advice changes nothing.
#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &Vec<T>) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let begin = start.next_multiple_of(HUGE_PAGE);
    let end = (start + v.capacity() * std::mem::size_of::<T>()) / HUGE_PAGE * HUGE_PAGE;
    if end > begin {
        // SAFETY: [begin, end) lies inside the allocation `v` owns (its capacity, in
        // bytes, from its start), and MADV_HUGEPAGE only changes how the kernel backs
        // those pages, never their contents or whether they are mapped. The result is
        // ignored: the advice is optional and failing it leaves the memory as it was.
        unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_: &Vec<T>) {}

//! Output memory: filled in parallel without being zeroed first, and backed by huge
//! pages where Linux allows it.

use super::elem::Elem;
use super::rows::TASK_ELEMS;
use rayon::prelude::*;

/// `n` zeros with room for `capacity` elements, in memory asked to be backed by huge
/// pages, for the backward's dx, whose tasks (fixed, for deterministic dγ/dβ
/// partials) write into it in place. Large outputs are zeroed by all threads, so that
/// the first touch of fresh pages is shared among the cores instead of falling on the
/// calling thread alone.
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

/// Elements of one piece of a [`collect`]ed output: a few KiB, so that a piece is
/// filled in L1 before it is moved to its place.
const PIECE: usize = 2048;

/// A vector of `n` elements filled in parallel by `fill(state, start, out)`, which
/// writes elements `start..start + out.len()`; `state` is made by `init` once per
/// rayon job and sees that job's pieces in order.
///
/// Rayon's indexed collect writes each piece straight into the vector's spare
/// capacity, so the output is never zeroed first: zeroing it would move as many bytes
/// again as writing it (docs/perf-notes.md).
pub(super) fn collect<T: Elem, S>(
    n: usize,
    init: impl Fn() -> S + Send + Sync,
    fill: impl Fn(&mut S, usize, &mut [T]) + Send + Sync,
) -> Vec<T> {
    let count = n.div_ceil(PIECE);
    let mut pieces: Vec<[T; PIECE]> = Vec::with_capacity(count);
    advise_huge_pages(&pieces);
    (0..count)
        .into_par_iter()
        .with_min_len(TASK_ELEMS / PIECE)
        .map_init(init, |state, k| {
            let mut piece = [T::zero(); PIECE];
            let start = k * PIECE;
            fill(state, start, &mut piece[..PIECE.min(n - start)]);
            piece
        })
        .collect_into_vec(&mut pieces);
    let mut v = pieces.into_flattened();
    v.truncate(n);
    v
}

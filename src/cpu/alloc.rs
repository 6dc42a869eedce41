//! Output memory, backed by huge pages where Linux allows it, written once into a
//! vector's uninitialized capacity by the tasks that compute it (split by rayon, or as
//! the caller splits it), never zeroed: fresh pages are faulted in by the cores that
//! write them, not by the calling thread alone.

use super::rows::TASK_ELEMS;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per piece of a [`filled`] output.
const PIECE: usize = 4096;

/// An output of `n` elements written once into the vector's own uninitialized capacity,
/// never zeroed nor copied: rayon's jobs fill consecutive pieces of [`PIECE`] elements,
/// each by `fill(state, start, piece)` for the elements `start..start + piece.len()`,
/// with `state` made by `init` once per job. `fill` must write every element of its
/// piece.
pub(super) fn filled<A: Copy + Send + Sync, S>(
    n: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [MaybeUninit<A>]) + Sync + Send,
) -> Vec<A> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(&v);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(PIECE)
        .with_min_len(TASK_ELEMS / PIECE)
        .enumerate()
        .for_each_init(init, |s, (p, piece)| fill(s, p * PIECE, piece));
    // SAFETY: the pieces cover the first n elements of the capacity, every `fill`
    // writes each element of its piece (the callers' contract, which the forward
    // tests check on every path: an element left unwritten would be garbage in y),
    // and all of them have returned; a panic in one never reaches this line.
    unsafe { v.set_len(n) };
    v
}

/// An output of `n` elements written once into the vector's own uninitialized
/// capacity by `fill`, which splits it as it must (the backward's fixed task split,
/// whose dγ/dβ partials are summed in task order; tasks of whole rows or tiles) and
/// returns what it computed beside it. `fill` must write every element.
pub(super) fn written<T, R>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>]) -> R) -> (Vec<T>, R) {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(&v);
    let r = fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` has written each of the first n elements of the capacity (the
    // callers' contract, which the backward tests check on every path: an element left
    // unwritten would be garbage in dx) and has returned.
    unsafe { v.set_len(n) };
    (v, r)
}

/// `buf`, a job's buffer reused from row to row, refilled with `n` elements that
/// `fill` writes once into its spare capacity, never zeroed first (a task's first row
/// would otherwise zero a row's worth). `fill` must write every element.
#[inline(always)]
pub(super) fn refilled<A>(buf: &mut Vec<A>, n: usize, fill: impl FnOnce(&mut [MaybeUninit<A>])) -> &[A] {
    buf.clear();
    buf.reserve(n);
    fill(&mut buf.spare_capacity_mut()[..n]);
    // SAFETY: the capacity is at least n (reserved above), and `fill` has written each
    // of the first n elements (the callers' contract, which the tests check: an
    // element left unwritten would be garbage in the output).
    unsafe { buf.set_len(n) };
    buf
}

/// Elements that a pass has written, seen as the values they now hold.
///
/// # Safety
/// Every element of `s` must have been written.
pub(super) unsafe fn assume_written<T>(s: &[MaybeUninit<T>]) -> &[T] {
    // SAFETY: MaybeUninit<T> has T's layout, and the caller guarantees that every
    // element is initialized.
    unsafe { &*(std::ptr::from_ref(s) as *const [T]) }
}

/// Elements that a pass has written, seen as the values they now hold, to be read and
/// overwritten in place.
///
/// # Safety
/// Every element of `s` must have been written.
pub(super) unsafe fn assume_written_mut<T>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: MaybeUninit<T> has T's layout, and the caller guarantees that every
    // element is initialized.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [T]) }
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

//! A cache-line prefetch hint, for the UDP worker's batch pass.
//!
//! A `recvmmsg` batch holds several queries (13 on average under a dnsperf
//! load at the client's ceiling). With a large zone each lookup reads two
//! lines that usually come from memory: the name index's slot and the node's
//! first line. The worker hints both for every query of the batch before it
//! answers the first, so the misses of the batch overlap instead of
//! following one another.
//!
//! `unsafe` here: the intrinsic is an `unsafe fn` (it takes a raw pointer).
//! A prefetch reads nothing the program can observe and cannot fault, and
//! the pointer comes from a live reference.
#![allow(unsafe_code)]

/// Hints that the cache line holding `r` will be read soon. A no-op where
/// the target has no stable prefetch instruction.
#[inline(always)]
pub(crate) fn line<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in
    // the target's baseline); a prefetch does not access memory in the
    // program's sense and never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(r).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

//! Gives memory freed on the update path back to the kernel at once.
//!
//! Compiling a snapshot decodes the whole `opengslb.v1.Snapshot` (several
//! heap blocks per name) next to the compiled tables, then drops it. The
//! allocator (mimalloc) keeps freed pages for a while (its purge delay) and
//! only purges them when the process allocates again; a dataplane at rest
//! allocates nothing (the query path never does), so without this call a
//! 100,000-name zone kept about 50 MiB of dead decode memory resident.
//!
//! This module is the one place besides the socket batches (`udp::batch`)
//! with `unsafe`: one call into the allocator, off the query path.
#![allow(unsafe_code)]

/// Purges every page the allocator holds free (all threads' arenas), so RSS
/// is what the served snapshot and buffers really use. Called once after
/// each snapshot is published; costs a few system calls, never per query.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and only walks the allocator's
    // own structures; it is safe to call from any thread at any time (it is
    // what mimalloc runs itself on thread exit). With another global
    // allocator (the counting one of tests/alloc.rs) it has nothing to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

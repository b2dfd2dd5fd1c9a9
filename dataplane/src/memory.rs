//! Gives memory freed on the update path back to the kernel at once.
//!
//! Compiling a snapshot decodes the whole `opengslb.v1.Snapshot` (several
//! heap blocks per name) next to the compiled tables, then drops it. The
//! allocator (mimalloc) keeps freed pages for a while (its purge delay) and
//! only purges them when the process allocates again; a dataplane at rest
//! allocates nothing (the query path never does), so without this call a
//! 100,000-name zone kept about 50 MiB of dead decode memory resident.
//!
//! This module is one of the three places with `unsafe` (with the socket
//! batches, `udp::batch`, and the prefetch hint, `prefetch`): calls into the
//! allocator, at start and after updates, never on the query path.
#![allow(unsafe_code)]

/// `mi_option_arena_eager_commit` in the bundled mimalloc v3 (`mimalloc.h`,
/// `mi_option_e`); the `libmimalloc-sys` constants follow v2's numbering.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_delay` in the bundled mimalloc v3.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Environment variable mimalloc reads at process start: arenas committed
/// as pages are used, not all at once. Its option table cannot change this
/// for the arena the Rust runtime has already created before `main`.
const EAGER_COMMIT_ENV: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
/// Environment variable for the purge delay (ms), read at process start.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Sets the allocator up for a process that allocates in bursts (snapshot
/// updates) and then not at all (queries): arenas committed as pages are
/// used rather than eagerly, and freed pages returned to the kernel at once
/// rather than after a second. mimalloc takes the first from its
/// environment only, before `main`; so when neither variable is set, the
/// process re-executes itself once (same PID, same arguments) with both set
/// to 0. Measured with a 100,000-name zone served from the cache: RSS 40 →
/// 25 MiB; small zone 13 → 6 MiB. An operator's own setting of either
/// variable is left alone (no re-exec); when the exec fails (the binary
/// replaced on disk), the process goes on with the option table set
/// instead. Call first thing in `main`, before threads exist.
pub fn configure() {
    let own =
        std::env::var_os(EAGER_COMMIT_ENV).is_some() || std::env::var_os(PURGE_DELAY_ENV).is_some();
    if !own {
        if let Ok(exe) = std::env::current_exe() {
            use std::os::unix::process::CommandExt;
            // Returns only when the exec failed.
            let _ = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(EAGER_COMMIT_ENV, "0")
                .env(PURGE_DELAY_ENV, "0")
                .exec();
        }
    }
    set_options();
}

/// The in-process half of [`configure`]: purge at once (the eager commit of
/// arenas made after this also stops).
fn set_options() {
    // SAFETY: `mi_option_set` takes plain integers and writes mimalloc's
    // option table; both options are read when arenas are created or pages
    // purged, so setting them at any time is sound.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

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

/// Asks the kernel to back the memory of `v` (its whole capacity) with
/// transparent huge pages, where the system allows them on request
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, a common
/// default). For the big per-snapshot tables (nodes, the name index) that
/// every query reads at a random place: with 4 KiB pages a 100,000-name zone
/// spans thousands of pages and most lookups miss the TLB (costly in a VM,
/// where a miss walks two page tables); 2 MiB pages cover it with a few.
/// Call right after allocating and before writing, so the pages are faulted
/// in huge. A no-op for tables under 2 MiB, and wherever `madvise` refuses.
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let len = v.capacity().saturating_mul(size_of::<T>());
    let start = v.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + len) / HUGE * HUGE;
    if end <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `madvise` with `MADV_HUGEPAGE` changes no content and no
    // mapping's permissions, only how the range is backed; the range lies
    // inside the allocation of `v` (aligned inwards), which is mapped.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_numbers_match_the_bundled_allocator() {
        // SAFETY: reads of mimalloc's option table.
        let (eager, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
            )
        };
        // v3's defaults: eager commit "2" (on overcommit systems), purge
        // delay 1000 ms; another numbering would read other options.
        assert!(
            (eager, delay) == (2, 1000) || (eager, delay) == (0, 0),
            "unexpected option values {eager} {delay}: option numbering changed?"
        );
        set_options();
        // SAFETY: as above.
        let after = unsafe {
            (
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
            )
        };
        assert_eq!(after, (0, 0));
        release_freed();
    }
}

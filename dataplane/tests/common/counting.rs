//! The counting global allocator shared by the zero-allocation tests: it
//! forwards to `System` and counts each thread's calls.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

/// `System`, counting the calls made by each thread.
struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates or registers a destructor.
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: a thread being torn down may still free memory.
    let _ = CALLS.try_with(|c| c.set(c.get() + 1));
}

pub(crate) fn calls() -> u64 {
    CALLS.with(Cell::get)
}

// SAFETY: every method forwards to `System` unchanged; counting touches only
// a thread-local `Cell`, which neither allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

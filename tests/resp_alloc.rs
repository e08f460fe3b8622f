//! The RESP decoder refuses lengths and counts it was told about before
//! allocating anything for them (the `websocket` crate's abort,
//! RUSTSEC-2022-0035, came from `Vec::with_capacity(declared_len)`), and a
//! depth bomb costs no more than its depth limit. Counted with an allocator
//! that counts only on the thread that asks it to, so other tests running
//! beside this one do not disturb the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use chatroom::redis::{RespDecoder, RespError, RespLimits};

thread_local! {
    // `const` and destructor-free, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

struct CountingAlloc;

fn count(size: usize) {
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        let _ = BYTES.try_with(|bytes| bytes.set(bytes.get() + size as u64));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// thread-local cells touched without allocating.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Decodes `input` with a fresh decoder; returns the error and the
/// allocations (count, bytes) the decode made.
fn refused(input: &[u8], limits: RespLimits) -> (RespError, u64, u64) {
    let mut decoder = RespDecoder::new(limits);
    ALLOCATIONS.with(|count| count.set(0));
    BYTES.with(|bytes| bytes.set(0));
    COUNTING.with(|counting| counting.set(true));
    let result = decoder.decode(input);
    COUNTING.with(|counting| counting.set(false));
    let error = result.expect_err("refused");
    (error, ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get))
}

#[test]
fn declared_lengths_and_counts_are_refused_without_allocating() {
    let limits = RespLimits::default();
    let long_status = [&b"+"[..], &vec![b'a'; limits.max_bulk_bytes + 1][..]].concat();
    for (input, expected) in [
        (&b"$99999999999\r\n"[..], RespError::BulkTooLarge),
        (b"$18446744073709551616\r\n", RespError::BulkTooLarge),
        (b"*99999999999\r\n", RespError::TooManyElements),
        (b"*1\r\n*1\r\n$4294967296\r\n", RespError::BulkTooLarge),
        (&long_status, RespError::BulkTooLarge),
    ] {
        let (error, allocations, bytes) = refused(input, limits);
        assert_eq!(
            error,
            expected,
            "{:?}",
            String::from_utf8_lossy(&input[..20.min(input.len())])
        );
        // The nested case opens two arrays: the depth stack's one small
        // allocation, bounded by the depth limit, not by anything declared.
        assert!(allocations <= 1, "{allocations} allocations");
        assert!(bytes <= 64, "{bytes} bytes allocated");
    }
}

#[test]
fn a_depth_bomb_costs_only_its_depth_limit() {
    let limits = RespLimits::default();
    let mut bomb = b"*1\r\n".repeat(1_000_000);
    bomb.extend_from_slice(b":1\r\n");
    let (error, allocations, bytes) = refused(&bomb, limits);
    assert_eq!(error, RespError::TooDeep);
    // The depth stack grows to the limit (8 entries) and no further.
    assert!(allocations <= 4, "{allocations} allocations");
    assert!(
        bytes <= (limits.max_depth * 2 * std::mem::size_of::<usize>()) as u64,
        "{bytes} bytes"
    );
}

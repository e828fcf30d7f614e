//! Header maps kept for reuse, per thread.
//!
//! Every proxied call decodes three header blocks into `HeaderMap`s (the client's request, the
//! part's response and its trailers) and drops each once it is encoded onto the other hop. A
//! map holds two heap blocks, and the larger (its entries, ~100 bytes a field) is often past
//! glibc's per-thread cache, so allocating and freeing them on every call goes to the arena. A
//! map given back here is cleared, keeping its memory, and the next header block
//! decoded on the same thread fills it.
//!
//! A call's client connection, part connection and call future run on one worker thread (see
//! `workers.rs`), so the maps a thread takes are the ones it gives back. A map taken on one
//! thread and given back on another only moves between the two threads' spares.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps kept per thread: enough for the maps in flight to turn over at high
/// concurrency; beyond it a map given back is freed.
const KEEP: usize = 128;

/// Maps grown past this capacity (an unusually large header block) are freed, not kept, so a
/// spare never pins much memory.
const MAX_CAPACITY: usize = 24;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map: a spare from this thread if there is one, else a new (unallocated) one.
pub fn take() -> HeaderMap {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// An empty map with room for at least `capacity` fields (a spare is grown if it is smaller;
/// it is kept at its new size when given back).
pub fn take_with_capacity(capacity: usize) -> HeaderMap {
    let mut map = take();
    if map.capacity() < capacity {
        map.reserve(capacity);
    }
    map
}

/// Gives back a map whose fields are no longer needed; it is cleared and kept for [`take`]
/// (or freed, when this thread has enough spares or the map is large).
pub fn give(mut map: HeaderMap) {
    let capacity = map.capacity();
    if capacity == 0 || capacity > MAX_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEEP {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_memory() {
        // Drain whatever other tests on this thread left.
        while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
        let mut map = take();
        assert_eq!(map.capacity(), 0);
        map.insert("viam-sid", HeaderValue::from_static("abc"));
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let capacity = map.capacity();
        give(map);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.get("x-a"), None);
        assert_eq!(again.capacity(), capacity);
        assert_eq!(take().capacity(), 0, "one map given, one taken");
        give(again);
        assert!(
            take_with_capacity(12).capacity() >= 12,
            "a small spare is grown"
        );
    }

    #[test]
    fn large_and_unallocated_maps_are_not_kept() {
        while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
        give(HeaderMap::new());
        let mut large = HeaderMap::with_capacity(MAX_CAPACITY + 1);
        large.insert("x-a", HeaderValue::from_static("1"));
        assert!(large.capacity() > MAX_CAPACITY);
        give(large);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
    }

    #[test]
    fn at_most_keep_maps_are_kept() {
        while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
        for _ in 0..KEEP + 10 {
            give(HeaderMap::with_capacity(4));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEEP);
        while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
    }
}

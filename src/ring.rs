//! The SPSC hand-off between the I/O thread and the inference worker: a thin
//! use of `rtrb` (wait-free, cache-padded head/tail, the single-producer and
//! single-consumer rules carried by the `Producer`/`Consumer` types), plus the
//! sleep/wake handshake a blocking consumer needs.

use std::sync::atomic::{AtomicBool, Ordering};

pub use rtrb::{Consumer, Producer};

/// A ring of `capacity` slots: `(producer, consumer)`.
pub fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    rtrb::RingBuffer::new(capacity)
}

/// Pop up to `max` items into `out` (appending). Returns how many.
#[inline]
pub fn pop_into<T>(rx: &mut Consumer<T>, out: &mut Vec<T>, max: usize) -> usize {
    let n = rx.slots().min(max);
    for _ in 0..n {
        // `slots()` said they are there and only this consumer pops.
        match rx.pop() {
            Ok(v) => out.push(v),
            Err(_) => unreachable!("slots() counted an item that pop() did not find"),
        }
    }
    n
}

/// Sleep/wake handshake for a consumer that blocks when its ring is empty.
///
/// Consumer: `announce_sleep()`, re-check the ring, then block (if the ring is
/// still empty) — `wake_pending()` after waking. Producer: push, then
/// `should_wake()`; if true, wake the consumer (unpark / mio `Waker`).
///
/// Orderings: both sides are the classic store-then-load (Dekker) pattern —
/// consumer stores `sleeping` then loads the ring's tail; producer stores the
/// tail (in `push`) then loads `sleeping`. Only `SeqCst` on the flag, plus the
/// fence below, forbids both loads seeing the old values (which would lose a
/// wake-up: the consumer sleeps on a non-empty ring).
#[derive(Debug, Default)]
pub struct Doorbell {
    sleeping: AtomicBool,
}

impl Doorbell {
    /// Consumer: about to block. Re-check the ring after this, before blocking.
    #[inline]
    pub fn announce_sleep(&self) {
        // SeqCst: see the type's doc (store before the ring re-check).
        self.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Consumer: awake again (or decided not to block).
    #[inline]
    pub fn wake_pending(&self) {
        // Relaxed: only the consumer's own later announce_sleep orders against producers.
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Producer: after a push. True exactly once per announced sleep: wake the consumer.
    #[inline]
    pub fn should_wake(&self) -> bool {
        // SeqCst fence then load: the push's tail store is ordered before this load (see type doc).
        std::sync::atomic::fence(Ordering::SeqCst);
        self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_into_respects_max_and_order() {
        let (mut tx, mut rx) = ring::<u32>(8);
        for i in 0..6 {
            tx.push(i).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(pop_into(&mut rx, &mut out, 4), 4);
        assert_eq!(pop_into(&mut rx, &mut out, 4), 2);
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn doorbell_wakes_once_per_sleep() {
        let d = Doorbell::default();
        assert!(!d.should_wake());
        d.announce_sleep();
        assert!(d.should_wake());
        assert!(!d.should_wake());
    }
}

//! Nanosecond stamps on one documented clock: `CLOCK_MONOTONIC`.
//!
//! Every stamp on the wire (`server_recv_ns`, `server_send_ns`) and every
//! latency the server records comes from [`now_ns`], so a client on the same
//! host can subtract its own `clock_gettime(CLOCK_MONOTONIC)` readings
//! (`ml_now_ns()` in `proto/ml_client.h`). On Linux with the `tsc` clocksource
//! this is a vDSO call (~20 ns), no syscall.

/// `CLOCK_MONOTONIC` now, in nanoseconds.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic() {
        let a = super::now_ns();
        let b = super::now_ns();
        assert!(b >= a && a > 0);
    }
}

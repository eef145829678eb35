//! Keeping an idle hot thread's path in cache (`serve --keep-warm-us N`,
//! `replay --keep-warm-us N`).
//!
//! Why: on a VM (measured on this project's 2-vCPU host) a thread that spins for
//! milliseconds with nothing to do comes back to a cold cache — other tenants and
//! the hypervisor evict it. A Unix-socket round trip between two spinning threads
//! takes 5.1 µs back to back but 9–11 µs p50 after 4 ms of idle spinning; the
//! model run 160 ns hot, 1.2–1.9 µs after 3 ms. Every few tens of µs of idle, a
//! keep-warm thread exercises its own path: a request- and a response-sized
//! message through a private socket pair (the kernel's Unix-socket send and
//! receive code, its allocator caches) and, for the server, one model run on a
//! made-up request with its own state (`Scorer::keep_warm`). Measured with a C
//! ping-pong (`/tmp`-only experiment, numbers in docs/serving.md): warming both ends
//! every 50 µs brings the 4 ms-idle round trip to 6.6–6.8 µs; one end alone,
//! 6.9–9.4 µs.
//!
//! It never runs while there is work: only after `every` of idle since the last
//! work or the last warm-up, and each costs ≈ 1–3 µs that a request arriving in it
//! waits. Only spinning threads warm (a blocked thread sleeps; nothing runs).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::wire::{REQUEST_SIZE, RESPONSE_SIZE};

/// A keep-warm option (`flag`, in µs) as an interval: `None` when not given; refused when
/// 0, or when the thread it would run on blocks instead of spinning (`spins` false;
/// `needs` says what to set, e.g. "--client-poll spin").
pub fn interval(flag: &str, us: Option<u64>, spins: bool, needs: &str) -> Result<Option<Duration>, String> {
    match us {
        None => Ok(None),
        Some(0) => Err(format!("{flag} must be at least 1 (microseconds of idle)")),
        Some(_) if !spins => Err(format!("{flag} needs {needs} (a blocked thread sleeps and warms nothing)")),
        Some(us) => Ok(Some(Duration::from_micros(us))),
    }
}

/// When to warm, and the private socket pair that warms the kernel's socket path.
#[derive(Debug)]
pub struct KeepWarm {
    every_ns: u64,
    /// `CLOCK_MONOTONIC` ns of the last work or warm-up.
    last_ns: u64,
    /// Connected, non-blocking; nothing else ever reads or writes them.
    pair: (UnixStream, UnixStream),
    buf: [u8; REQUEST_SIZE],
    /// Warm-ups done since the start.
    pub runs: u64,
}

impl KeepWarm {
    /// Warm after `every` of idle (at least 1 µs).
    pub fn new(every: Duration) -> std::io::Result<KeepWarm> {
        let (a, b) = UnixStream::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        Ok(KeepWarm {
            every_ns: (every.as_nanos() as u64).max(1_000),
            last_ns: crate::clock::now_ns(),
            pair: (a, b),
            buf: [0; REQUEST_SIZE],
            runs: 0,
        })
    }

    /// The thread did work at `now` (the next warm-up is `every` after it).
    #[inline]
    pub fn worked(&mut self, now: u64) {
        self.last_ns = now;
    }

    /// Whether the thread has been idle for `every` at `now`.
    #[inline]
    pub fn due(&self, now: u64) -> bool {
        now.saturating_sub(self.last_ns) >= self.every_ns
    }

    /// One request-sized message out and one response-sized one back through the
    /// private pair, as a server and a client do; then counts the warm-up and restarts
    /// the interval. No allocation; errors (none expected: the pair is ours) ignored.
    pub fn socket_round_trip(&mut self) {
        let (a, b) = (&self.pair.0, &self.pair.1);
        let _ = (&*a).write(&self.buf);
        let _ = (&*b).read(&mut self.buf);
        let _ = (&*b).write(&self.buf[..RESPONSE_SIZE]);
        let _ = (&*a).read(&mut self.buf);
        self.runs += 1;
        self.last_ns = crate::clock::now_ns();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_only_after_the_interval_and_leaves_nothing_queued() {
        let mut kw = KeepWarm::new(Duration::from_micros(50)).unwrap();
        let t = crate::clock::now_ns();
        kw.worked(t);
        assert!(!kw.due(t + 49_000));
        assert!(kw.due(t + 50_000));
        kw.socket_round_trip();
        kw.socket_round_trip();
        assert_eq!(kw.runs, 2);
        assert!(!kw.due(crate::clock::now_ns()), "a warm-up restarts the interval");
        // Both directions drained: nothing left to read on either end.
        let mut b = [0u8; 1];
        for end in [&kw.pair.0, &kw.pair.1] {
            let e = (&*end).read(&mut b).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        }
        // Below 1 µs is raised to 1 µs.
        let kw = KeepWarm::new(Duration::ZERO).unwrap();
        assert_eq!(kw.every_ns, 1_000);
    }
}

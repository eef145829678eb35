//! Spinning with one connection: read its socket directly instead of asking the poll.
//!
//! A trading system usually holds one connection and keeps one request in flight. While
//! the loop spins, noticing its next request through `epoll_wait` costs a second system
//! call on the request's path (the poll that reports the edge, then the `read`). Measured
//! with tickinfer's frame sizes, the same echo loop answers a ping-pong slower through
//! `epoll_wait` + `read` than through `read` alone: +0.5 µs at p50 over loopback TCP,
//! +0.05–0.1 µs over a Unix socket (C ping-pong on the 2-core VM, 200 000 round trips).
//!
//! So while the loop spins and exactly one connection exists (socket, not a
//! shared-memory session, not paused or closing, nothing deferred), three iterations in
//! four read that connection instead of polling; the fourth polls as before, so a new
//! connection, a hang-up or a writable edge waits at most three reads (~2 µs) to be seen.
//! With two connections or more the loop polls every iteration, exactly as without this:
//! no connection's requests are ever read ahead of another's.
//!
//! Edge-triggered readiness stays sound: a read here takes the bytes an edge announced,
//! and the poll that later reports that edge finds `WouldBlock` (a spurious event, which
//! every handler tolerates).

use super::IoLoop;

/// Iterations per poll while reading directly (three direct reads, then one poll).
const POLL_EVERY: u32 = 4;

/// The connection read directly, and when the loop polls next.
#[derive(Default)]
pub(super) struct DirectRead {
    /// The slot that last admitted a request from its socket.
    slot: Option<usize>,
    /// Direct reads since the last poll. Invariant: `< POLL_EVERY`.
    reads: u32,
}

impl DirectRead {
    /// A request was read from `slot`'s socket.
    #[inline]
    pub(super) fn note(&mut self, slot: usize) {
        self.slot = Some(slot);
    }

    /// The loop polled (or blocked): the count starts again.
    #[inline]
    pub(super) fn polled(&mut self) {
        self.reads = 0;
    }
}

impl IoLoop {
    /// The connection to read directly this spinning iteration instead of polling, if
    /// any (see the module's rule); counts the read.
    #[inline]
    pub(super) fn direct_read_due(&mut self) -> Option<usize> {
        debug_assert!(self.direct.reads < POLL_EVERY);
        let slot = self.direct.slot?;
        if self.direct.reads + 1 == POLL_EVERY || self.conns.len() != 1 || !self.deferred.is_empty() {
            return None;
        }
        let conn = self.conns.get(slot)?;
        if conn.shm.is_some() || conn.read_paused || conn.close_after_flush || conn.peer_closed {
            return None;
        }
        self.direct.reads += 1;
        Some(slot)
    }

    /// Read `slot` as its readable event would; returns 1 when it gave requests, else 0
    /// (the loop's count of events).
    pub(super) fn read_direct(&mut self, slot: usize) -> usize {
        let before = self.intake.admitted;
        self.read_conn(slot);
        let got = self.intake.admitted != before;
        if got {
            self.stats.direct_reads += 1;
            if self.cfg.poll == super::PollMode::Adaptive {
                self.last_work = crate::clock::now_ns();
            }
        }
        usize::from(got)
    }
}

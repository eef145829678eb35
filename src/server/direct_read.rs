//! Spinning with one connection: read its socket directly instead of asking the poll.
//!
//! A trading system usually holds one connection and keeps one request in flight. While
//! the loop spins, noticing its next request through `epoll_wait` costs a second system
//! call on the request's path (the poll that reports the edge, then the `read`). Measured
//! with tickinfer's frame sizes, the same echo loop answers a ping-pong slower through
//! `epoll_wait` + `read` than through `read` alone: +0.5 µs at p50 over loopback TCP,
//! +0.05–0.1 µs over a Unix socket (C ping-pong on the 2-core VM, 200 000 round trips).
//!
//! So while the loop polls without waiting (spinning, or catching up with pipelined
//! answers) and exactly one connection exists (socket, not a shared-memory session, not
//! paused or closing, nothing deferred), three iterations in four read that connection
//! instead of polling; the fourth polls as before, so a new connection or a writable edge
//! waits at most three loop iterations to be seen (a hang-up of the connection itself is
//! seen by the read). With two connections or more — a pending one that has not said hello
//! counts — the loop polls every iteration, exactly as without this: no connection's
//! requests are ever read ahead of another's.
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
    /// The slot and generation of the connection that last admitted a request from its
    /// socket (a slot reused by another connection does not match).
    conn: Option<(usize, u32)>,
    /// Direct reads since the last poll. Invariant: `< POLL_EVERY`.
    reads: u32,
}

impl DirectRead {
    /// A request was read from the socket of `slot`, connection `generation`.
    #[inline]
    pub(super) fn note(&mut self, slot: usize, generation: u32) {
        self.conn = Some((slot, generation));
    }

    /// Whether this turn reads directly, the connection qualifying (counted), or polls:
    /// three turns in four, then one poll.
    #[inline]
    fn take_turn(&mut self) -> bool {
        debug_assert!(self.reads < POLL_EVERY);
        if self.reads + 1 == POLL_EVERY {
            return false;
        }
        self.reads += 1;
        true
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
        let (slot, generation) = self.direct.conn?;
        if self.conns.len() != 1 || !self.deferred.is_empty() {
            return None;
        }
        let conn = self.conns.get(slot)?;
        if conn.generation != generation
            || conn.shm.is_some()
            || conn.read_paused
            || conn.close_after_flush
            || conn.peer_closed
        {
            return None;
        }
        self.direct.take_turn().then_some(slot)
    }

    /// Read `slot` as its readable event would; returns 1 when it read anything (bytes or
    /// the end), else 0 — the loop's count of events. `direct_reads` counts the reads that
    /// took requests.
    pub(super) fn read_direct(&mut self, slot: usize) -> usize {
        let before = self.intake.admitted;
        let read = self.read_conn(slot);
        if self.intake.admitted != before {
            self.stats.direct_reads += 1;
        }
        if read && self.cfg.poll == super::PollMode::Adaptive {
            self.last_work = crate::clock::now_ns();
        }
        usize::from(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_direct_reads_then_a_poll() {
        let mut d = DirectRead::default();
        for round in 0..3 {
            let turns: Vec<bool> = (0..POLL_EVERY).map(|_| d.take_turn()).collect();
            assert_eq!(turns, [true, true, true, false], "round {round}");
            d.polled();
        }
        // A poll for another reason (two connections) starts the count again.
        assert!(d.take_turn());
        d.polled();
        assert_eq!((0..POLL_EVERY).filter(|_| d.take_turn()).count(), 3);
    }
}

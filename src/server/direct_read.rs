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
//! While it is read directly, the connection is also taken out of the poll (deregistered):
//! a registered socket costs every request the kernel's readiness callback on the
//! client's send path, and every fourth turn a poll reporting an edge whose bytes were
//! already read, then a `read` that finds nothing. Measured with the same C ping-pong,
//! an echo spinning on `read` with its socket registered in an epoll set (never polled)
//! answered 0.05–0.44 µs slower at p50 than one whose socket was not, over loopback TCP
//! (six alternated runs, median ≈ 0.2 µs). It goes back into the poll (registered again,
//! with its writable interest when it waits to write) the moment it no longer qualifies:
//! before the loop blocks, when a second connection exists, when it is paused or must
//! wait to write — before that turn's poll. Registering reports the readiness it finds
//! (`EPOLL_CTL_ADD` polls the socket), so bytes that came meanwhile are not missed. A
//! turn that polls only because of the cadence, or because reads are deferred (which
//! read it anyway), leaves it out.
//!
//! Edge-triggered readiness stays sound: a read here takes the bytes an edge announced,
//! and the poll that later reports that edge finds `WouldBlock` (a spurious event, which
//! every handler tolerates).

use mio::{Interest, Token};

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
    /// The connection (slot, generation) taken out of the poll while read directly; at
    /// most one, and only while it qualifies (see the module's rule).
    detached: Option<(usize, u32)>,
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
    /// The connection to read directly this iteration instead of polling, if any (see the
    /// module's rule): taken out of the poll for it. When none qualifies, the one taken out
    /// goes back in first.
    #[inline]
    pub(super) fn direct_read_due(&mut self) -> Option<usize> {
        let Some(slot) = self.direct_qualifying() else {
            self.reattach_direct();
            return None;
        };
        // Deferred reads read it anyway this turn; the cadence's poll needs nothing of it.
        if !self.deferred.is_empty() || !self.direct.take_turn() {
            return None;
        }
        self.detach_direct(slot);
        Some(slot)
    }

    /// The lone connection that may be read directly now: spinning, one connection, and
    /// that one a socket, neither paused, closing nor waiting to write.
    #[inline]
    fn direct_qualifying(&self) -> Option<usize> {
        let (slot, generation) = self.direct.conn?;
        if !self.spinning || self.conns.len() != 1 {
            return None;
        }
        let conn = self.conns.get(slot)?;
        let fit = conn.generation == generation
            && conn.shm.is_none()
            && !conn.read_paused
            && !conn.want_write
            && !conn.close_after_flush
            && !conn.peer_closed;
        fit.then_some(slot)
    }

    /// Take `slot` out of the poll while it is read directly (once: a no-op when it is out).
    fn detach_direct(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if self.direct.detached == Some((slot, conn.generation)) {
            return;
        }
        debug_assert!(self.direct.detached.is_none(), "one connection out of the poll at most");
        // A failed deregistration leaves it in the poll: read directly all the same.
        if self.poll.registry().deregister(&mut conn.stream).is_ok() {
            self.direct.detached = Some((slot, conn.generation));
            self.stats.direct_detaches += 1;
        }
    }

    /// Put the connection taken out of the poll back in, if any (and if it is still open):
    /// readable, and writable while it waits to write. Registering reports the readiness it
    /// finds, so bytes that came while it was out are seen by the next poll. Called before
    /// any poll that must see it, and at the drain.
    pub(super) fn reattach_direct(&mut self) {
        let Some((slot, generation)) = self.direct.detached.take() else { return };
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.generation != generation {
            return; // closed (its registration went with it) and the slot reused
        }
        let interest =
            if conn.want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if let Err(e) = self.poll.registry().register(&mut conn.stream, Token(slot + 1), interest) {
            // Never left unpolled: a connection the poll cannot see would hang.
            log::warn!("connection {slot} ({}): cannot put it back into the poll ({e}); closing", conn.who());
            self.close(slot);
        }
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

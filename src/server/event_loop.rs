//! The loop itself: poll, hand events to their handlers, advance the stage,
//! flush, tick the stats, check for shutdown.
//!
//! Rules, as mio requires and as this loop keeps them:
//! - Readiness is edge-triggered: a readable connection is read until the
//!   kernel has nothing more — `WouldBlock`, or a short read, which on a stream
//!   socket returns all that was queued (one syscall less per request) — or EOF,
//!   or until it must pause (it is then put on the resume list and read again
//!   without waiting for an event), or until its turn of 4 reads ends: then it
//!   is read again first thing next iteration, after the answers so far are
//!   flushed — one busy client can neither starve the others nor grow its write
//!   buffer past the bound between two flushes.
//! - Shared-memory sessions raise no socket event for a request: every
//!   iteration looks at each session's request ring (one acquire load of its
//!   head per session when idle), and before the loop blocks it arms their
//!   doorbells (see `shm_sessions`).
//! - Spinning with exactly one connection, three iterations in four read that
//!   connection's socket instead of polling (`direct_read`): its next request is
//!   then one `read` away, not a poll and a read. Meanwhile it is out of the poll
//!   (deregistered), and back in before any poll that must see it — before the
//!   loop blocks, once a second connection exists, when it must wait to write.
//!   Two connections or more: every iteration polls.
//! - `EINTR` is retried everywhere (`poll`, `read`, `write`).
//! - Spurious events are harmless: every handler tolerates finding nothing to do.
//! - Each iteration: poll (or the direct read) → accept/read/write per event → read the shm rings →
//!   score (inline) or exchange with the worker (pipeline) → route responses to
//!   their connections → flush → close what is finished → stats tick →
//!   shutdown check.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::Token;

use super::worker::publish;
use super::{
    IoLoop, PollMode, Stage, ACCEPT_RETRY, LISTENER, PUBLISH_EVERY_NS, SHM_DOORBELL, SHM_STALLED_POLL,
    TCP_LISTENER, WAKER,
};
use crate::clock::now_ns;

impl IoLoop {
    pub(super) fn run(&mut self) -> io::Result<()> {
        loop {
            let timeout = if self.deferred.is_empty() { self.poll_timeout() } else { Some(Duration::ZERO) };
            self.spinning = timeout == Some(Duration::ZERO);
            let events = match self.direct_read_due() {
                Some(slot) => self.read_direct(slot),
                None => {
                    self.direct.polled();
                    self.poll_once(timeout)?
                }
            };
            self.disarm_doorbells();
            self.read_deferred();
            self.read_rings();
            let routed = self.advance();
            if self.spinning {
                self.keep_warm(events + routed > 0);
            }
            if self.shared.shutdown.is_triggered() {
                return self.drain();
            }
        }
    }

    /// Everything after the poll: stage work, routing, flushing, stats. Returns how many
    /// answers were routed.
    pub(super) fn advance(&mut self) -> usize {
        let mut routed = 0;
        loop {
            let moved = self.exchange();
            routed += moved;
            self.resume_paused();
            // Again while there is work: inline, jobs read by the resumed connections (a
            // request's own iteration scores once, not twice); pipeline, answers still coming
            // or jobs pushed by the resumed connections (the worker is rung for them).
            let more = match &self.stage {
                Stage::Inline { jobs, scored, .. } => jobs.len() > *scored,
                Stage::Pipeline(w) => moved > 0 || w.pushed,
            };
            if !more {
                break;
            }
        }
        self.flush_dirty();
        // The answers are on their way: now their quality and shadow taps.
        self.stage.observe_answered(&mut self.stats);
        self.tick();
        self.refresh_model_info();
        self.retry_accept();
        routed
    }

    /// `--keep-warm-us`, after an iteration that spun: note work, or once idle for the
    /// interval warm the path — a socket round trip on a private pair and (inline) one
    /// model run (see [`crate::keep_warm`]). One branch when off.
    fn keep_warm(&mut self, worked: bool) {
        let Some(kw) = &mut self.keep_warm else { return };
        let now = now_ns();
        if worked {
            kw.worked(now);
            return;
        }
        if !kw.due(now) {
            return;
        }
        // The worker warms the model on its own (pipeline); this thread warms its sockets.
        if let Stage::Inline { scorer, .. } = &mut self.stage {
            scorer.keep_warm(&mut self.stats);
        }
        kw.socket_round_trip();
        self.stats.keep_warm_socket_trips += 1;
    }

    /// After a reload swap (by this thread or the worker), new connections are told the
    /// model now serving. Called before events are handled too: a hello acked right after
    /// a reload reports the new version. One atomic load when nothing changed.
    pub(super) fn refresh_model_info(&mut self) {
        let swaps = self.shared.reload.swaps();
        if swaps != self.seen_swaps {
            self.seen_swaps = swaps;
            if let Some((model, _)) = self.shared.reload.current() {
                self.info.model_version = model.version;
                self.info.model_name = model.name;
            }
        }
    }

    pub(super) fn poll_timeout(&mut self) -> Option<Duration> {
        let spin = match self.cfg.poll {
            PollMode::Spin => true,
            PollMode::Adaptive => now_ns() - self.last_work < self.cfg.spin.as_nanos() as u64,
            PollMode::Block => false,
        };
        if spin {
            return Some(Duration::ZERO);
        }
        // About to block: in pipeline mode, make sure no answer is waiting first.
        if let Stage::Pipeline(w) = &self.stage {
            w.io_bell.announce_sleep();
            if !w.done_rx.is_empty() {
                w.io_bell.wake_pending();
                return Some(Duration::ZERO);
            }
        }
        // Shared-memory clients ring a doorbell only once asked to (and only while we sleep).
        match self.arm_doorbells() {
            Some(true) => return Some(Duration::ZERO),
            Some(false) => return Some(SHM_STALLED_POLL),
            None => {}
        }
        // Blocking: wake in time for an accept retry, if one is due.
        Some(if self.accept_retry_at.is_some() { ACCEPT_RETRY } else { Duration::from_millis(200) })
    }

    /// One poll and the handling of its events; returns how many there were.
    pub(super) fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        loop {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if let Stage::Pipeline(w) = &self.stage {
            w.io_bell.wake_pending();
        }
        self.refresh_model_info();
        // Collect first: handlers need `&mut self`. (A reused buffer: zeroing a 6 KB
        // array on every spin iteration showed up at the top of `perf`.)
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for ev in self.events.iter() {
            ready.push((
                ev.token(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable(),
            ));
        }
        let n = ready.len();
        for &(token, readable, writable) in &ready {
            match token {
                LISTENER => self.accept(),
                TCP_LISTENER => self.accept_tcp(),
                WAKER => {}
                // A shm client rang: its ring is read after the poll (disarming drains the eventfd).
                Token(t) if t >= SHM_DOORBELL => {}
                Token(t) => {
                    let slot = t - 1;
                    if writable {
                        self.mark_dirty(slot);
                    }
                    if readable {
                        self.read_conn(slot);
                    }
                }
            }
        }
        self.ready = ready;
        if n > 0 && self.cfg.poll == PollMode::Adaptive {
            self.last_work = now_ns();
        }
        Ok(n)
    }

    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.mark_dirty(slot, &mut self.dirty);
        }
    }

    pub(super) fn publish(&mut self, force: bool) {
        publish(&mut self.stats, &self.shared.stats, force);
        // Relaxed: gauges, read by the metrics endpoint with no ordering needs.
        self.shared.connections.store(self.established as u64, Ordering::Relaxed);
        self.shared.shm_sessions.store(self.shm_slots.len() as u64, Ordering::Relaxed);
        let depth = match &self.stage {
            Stage::Pipeline(w) => (w.jobs_tx.buffer().capacity() - w.jobs_tx.slots()) as u64,
            Stage::Inline { .. } => 0,
        };
        self.shared.queue_depth.store(depth, Ordering::Relaxed);
    }

    pub(super) fn tick(&mut self) {
        // While spinning, a clock read every 64 iterations is plenty for 200 ms periods.
        self.ticks = self.ticks.wrapping_add(1);
        if self.spinning && self.ticks % 64 != 0 {
            return;
        }
        let now = now_ns();
        if now - self.last_publish > PUBLISH_EVERY_NS {
            self.publish(false);
            self.last_publish = now;
            self.close_silent_connections(now);
            self.end_lingering_sessions(now);
        }
        let every = self.cfg.stats_interval.as_nanos() as u64;
        if every > 0 && now - self.last_log > every {
            self.last_log = now;
            if let Ok(s) = self.shared.stats.lock() {
                let r = s.report();
                log::info!(
                    "stats: {} answered; total p50 {} ns p99 {} p99.9 {}; inference p50 {} ns; queue p50 {} ns; \
                     {} connections",
                    r.responses,
                    r.total_ns.p50,
                    r.total_ns.p99,
                    r.total_ns.p999,
                    r.inference_ns.p50,
                    r.queue_ns.p50,
                    self.conns.len()
                );
            }
        }
    }
}

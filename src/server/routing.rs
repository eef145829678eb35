//! Answers back to their connections: the stage exchange, routing each answer
//! to its connection's write buffer (or shm response ring), flushing.

use mio::{Interest, Token};
use slab::Slab;

use super::stage::Done;
use super::{IoLoop, PollMode, Stage};
use crate::clock::now_ns;
use crate::stats::Stats;
use crate::transport::Conn;

impl IoLoop {
    /// Score (inline) or hand over / collect (pipeline); route answers.
    /// Returns how many answers were routed.
    pub(super) fn exchange(&mut self) -> usize {
        // Stage work: score the inline jobs, or ring the worker for the ones pushed.
        self.stage.observe_answered(&mut self.stats); // any left from before: first, in order
        match &mut self.stage {
            Stage::Inline { scorer, jobs, dones, scored } => {
                // Every turn, jobs or not: an idle server takes a reload at once (one atomic load).
                scorer.poll_reload(&self.shared.reload);
                scorer.poll_shadows(&self.shared.shadows, &self.shared.reload, &mut self.stats);
                if !jobs.is_empty() {
                    // Observed once flushed (`advance`), or at the next turn's start.
                    scorer.answer(jobs, &mut self.stats, |done| dones.push(done));
                    *scored = jobs.len();
                }
            }
            Stage::Pipeline(w) => {
                if w.pushed {
                    w.pushed = false;
                    if w.worker_bell.should_wake() {
                        if let Some(t) = &w.thread {
                            t.thread().unpark();
                        }
                    }
                }
            }
        }
        // Route the answers, in order, to their connections: one clock read for them all,
        // none when there are none (most spinning iterations).
        let mut send_ns = None;
        let IoLoop { stage, conns, dirty, resume, stats, hard_limit, .. } = self;
        let mut routed = 0;
        let mut deliver = |done| {
            let send_ns = *send_ns.get_or_insert_with(now_ns);
            route(conns, dirty, resume, stats, *hard_limit, done, send_ns);
            routed += 1;
        };
        match stage {
            Stage::Inline { dones, .. } => dones.drain(..).for_each(&mut deliver),
            Stage::Pipeline(w) => {
                while let Ok(done) = w.done_rx.pop() {
                    w.in_flight -= 1; // delivered or, for a closed connection, dropped
                    deliver(done);
                }
            }
        }
        if routed > 0 && self.cfg.poll == PollMode::Adaptive {
            self.last_work = now_ns();
        }
        routed
    }

    /// Flush connections with output; switch WRITABLE interest; close finished ones.
    pub(super) fn flush_dirty(&mut self) {
        while let Some(slot) = self.dirty.pop() {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            conn.dirty = false;
            if let Some(fault) = conn.shm_fault {
                log::warn!(
                    "connection {slot} ({}): shared-memory session broken: {fault}; disconnecting",
                    conn.who()
                );
                self.stats.shm_faults += 1;
                self.close(slot);
                continue;
            }
            if let Some(end) = conn.shm.as_deref_mut() {
                end.publish(); // the answers routed this iteration, one release store (+ wake if asleep)
            }
            let close = match conn.flush() {
                Ok(true) => {
                    if conn.want_write {
                        conn.want_write = false;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot + 1),
                            Interest::READABLE,
                        );
                    }
                    (conn.close_after_flush || conn.peer_closed) && conn.inflight == 0
                }
                Ok(false) if conn.queued() > self.cfg.write_buffer_limit => {
                    log::warn!(
                        "connection {slot} ({}): slow reader, {} bytes of answers unread (limit {}); \
                         disconnecting",
                        conn.who(),
                        conn.queued(),
                        self.cfg.write_buffer_limit
                    );
                    self.stats.slow_reader_disconnects += 1;
                    true
                }
                Ok(false) => {
                    log::debug!("connection {slot}: kernel buffer full, {} bytes queued", conn.queued());
                    if !conn.want_write {
                        conn.want_write = true;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot + 1),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    false
                }
                Err(e) => {
                    log::debug!("connection {slot}: write failed ({e}); closing");
                    true
                }
            };
            if close {
                self.close(slot);
            }
        }
    }
}

/// Deliver one answer to its connection (if it is still the same connection).
fn route(
    conns: &mut Slab<Conn>,
    dirty: &mut Vec<usize>,
    resume: &mut Vec<usize>,
    stats: &mut Stats,
    hard_limit: u32,
    done: Done,
    send_ns: u64,
) {
    let slot = done.slot as usize;
    let Some(conn) = conns.get_mut(slot) else { return };
    if conn.generation != done.generation {
        return; // the connection closed and its slot was reused
    }
    let mut resp = done.resp;
    resp.server_send_ns = send_ns;
    match conn.shm.as_deref_mut() {
        None => conn.queue_response(&resp),
        Some(end) => {
            if let Err(fault) = end.write_response(&resp) {
                conn.shm_fault = Some(fault); // closed at the flush, with a log line
            }
        }
    }
    debug_assert!(conn.inflight > 0);
    conn.inflight -= 1;
    stats.total.saturating_record(send_ns.saturating_sub(resp.server_recv_ns));
    if let Some(c) = stats.status.get_mut(resp.status as usize) {
        *c += 1;
    }
    conn.mark_dirty(slot, dirty);
    if conn.read_paused && conn.inflight < hard_limit {
        // Once per pause: the list never holds a connection twice (and never grows).
        conn.read_paused = false;
        resume.push(slot);
    }
}

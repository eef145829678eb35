//! Shared-memory sessions (`proto/ml_shm.h`): granting one in the hello,
//! starting it once the client says it mapped its regions, reading each active
//! session's request ring every loop iteration, doorbells around blocking polls.
//!
//! Cost per iteration: one acquire load of each session's request head (a
//! cache line its client writes), plus one of its response tail when requests
//! are ready. A session gives at most [`RING_FRAMES_PER_TURN`] frames per
//! iteration, so one busy client cannot starve the others. Everything read from
//! the region is checked ([`ServerEnd`]); a session whose indices break the
//! protocol is marked faulty and closed at the next flush with a log line.

use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::reading::admit_bad_frame;
use super::{IoLoop, SHM_DOORBELL, SHM_LINGER};
use crate::clock::now_ns;
use crate::shm::{ServerEnd, ShmError};
use crate::wire::{MlHelloAck, Status, HELLO_ACK_SIZE, REQUEST_END};

/// Frames taken from one session's request ring per loop iteration.
const RING_FRAMES_PER_TURN: u32 = 256;

impl IoLoop {
    /// Answer a hello that asked for shared memory: create the region, pass it
    /// with the ack. If it cannot be created, the ack goes without descriptors
    /// and the connection is served over the socket (the protocol's "not granted").
    pub(super) fn grant_shm(&mut self, slot: usize) {
        let capacity = crate::shm::capacity_for(self.hard_limit);
        let ack = MlHelloAck::new(Status::Ok, &self.info);
        let created = ServerEnd::create(capacity, capacity).and_then(|end| {
            let fd: RawFd = end.doorbell_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(SHM_DOORBELL + slot), Interest::READABLE)
                .map(|()| end)
        });
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let mut end = match created {
            Ok(end) => end,
            Err(e) => {
                log::warn!(
                    "connection {slot} ({}): cannot set up shared memory ({e}); serving it over the socket",
                    conn.who()
                );
                conn.queue_ack(Status::Ok, &self.info);
                conn.mark_dirty(slot, &mut self.dirty);
                return;
            }
        };
        debug_assert_eq!(conn.queued(), 0, "the ack is the first thing a connection is sent");
        match end.send_ack(&conn.stream, &ack) {
            Ok(n) => {
                // A fresh socket takes 64 bytes; should it not, the rest follows as normal output.
                if n < HELLO_ACK_SIZE {
                    conn.queue(&bytemuck::bytes_of(&ack)[n..]);
                    conn.mark_dirty(slot, &mut self.dirty);
                }
            }
            Err(e) => {
                // Dropping `end` closes its doorbell, which also takes it out of the poller.
                log::debug!("connection {slot}: sending the shared-memory ack failed ({e}); closing");
                conn.peer_closed = true;
                conn.mark_dirty(slot, &mut self.dirty);
                return;
            }
        }
        log::info!(
            "connection {slot} ({}): shared-memory session, rings of {capacity} requests and {capacity} \
             responses (server region {} KiB, client region {} KiB)",
            conn.who(),
            crate::shm::server_region_size(capacity) / 1024,
            crate::shm::client_region_size(capacity) / 1024
        );
        conn.shm = Some(Box::new(end));
        self.stats.shm_sessions += 1;
        // Its rings are read once the client says it mapped them (`activate_shm`).
    }

    /// The client sent `ML_SHM_MAPPED`: seal and check its region, then serve its rings
    /// (a region that fails is a fault: the session is closed at the flush, logged).
    pub(super) fn activate_shm(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let Some(end) = conn.shm.as_deref_mut() else { return };
        match end.activate() {
            Ok(()) => {
                self.shm_slots.push(slot);
                if self.cfg.poll == super::PollMode::Adaptive {
                    self.last_work = now_ns();
                }
            }
            Err(fault) => {
                conn.shm_fault = Some(fault);
                conn.mark_dirty(slot, &mut self.dirty);
            }
        }
    }

    /// Take what every session's request ring holds (within the bounds) into the stage.
    pub(super) fn read_rings(&mut self) {
        // Indexed: reading a ring needs `&mut self`. No session closes here (closing is the flush's).
        for i in 0..self.shm_slots.len() {
            let slot = self.shm_slots[i];
            if self.read_ring(slot) > 0 && self.cfg.poll == super::PollMode::Adaptive {
                self.last_work = now_ns();
            }
        }
    }

    /// Read one session's ready requests, as many as the in-flight bound, free
    /// response slots, the stage and the turn allow. Returns the frames taken.
    fn read_ring(&mut self, slot: usize) -> u32 {
        let mut taken = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else { return taken };
            if conn.close_after_flush || conn.peer_closed || conn.shm_fault.is_some() {
                return taken;
            }
            // Out of the connection for the turn (a pointer move): admitting needs `conn` too.
            let Some(mut end) = conn.shm.take() else { return taken };
            let n = match takeable(&mut end, conn.inflight, self.hard_limit) {
                Ok(n) => n.min(RING_FRAMES_PER_TURN - taken),
                Err(fault) => {
                    conn.shm = Some(end);
                    conn.shm_fault = Some(fault);
                    conn.mark_dirty(slot, &mut self.dirty);
                    return taken;
                }
            };
            if n == 0 {
                conn.shm = Some(end); // the idle case: no clock read, no store
                return taken;
            }
            let recv_ns = now_ns();
            let mut stage_full = false;
            for _ in 0..n {
                if !self.stage.has_room() {
                    stage_full = true;
                    break;
                }
                // Copied out of the slot first; only the copy is checked and used.
                let req = end.read_request();
                taken += 1;
                if { req.frame_end } != REQUEST_END {
                    log::warn!(
                        "connection {slot} ({}): request frame trailer {:#010x} in the shared-memory ring; \
                         answering {} and closing",
                        conn.who(),
                        { req.frame_end },
                        Status::BadFrame
                    );
                    admit_bad_frame(&mut self.stage, conn, slot, recv_ns);
                    break;
                }
                self.intake.admit(&mut self.stage, conn, slot, recv_ns, req);
            }
            end.release_requests();
            conn.shm = Some(end);
            if !stage_full || taken >= RING_FRAMES_PER_TURN {
                return taken;
            }
            self.exchange(); // full stage: score/route now, then keep reading
        }
    }

    /// About to block: arm every session's doorbell. Returns `Some(busy)` when
    /// the loop must not block — `true` if a ring already holds requests it can
    /// take, `false` if requests wait only for their client to read answers
    /// (no doorbell says when: poll again after a short timeout).
    pub(super) fn arm_doorbells(&mut self) -> Option<bool> {
        let mut stalled = false;
        self.doorbells_armed = !self.shm_slots.is_empty();
        for &slot in &self.shm_slots {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            let Some(end) = conn.shm.as_deref_mut() else { continue };
            if end.arm_doorbell() {
                match takeable(end, conn.inflight, self.hard_limit) {
                    Ok(0) => stalled = true,
                    _ => return Some(true), // something to take, or a fault read_ring reports at once
                }
            }
        }
        stalled.then_some(false)
    }

    /// Awake: the sessions' clients need not ring any more.
    pub(super) fn disarm_doorbells(&mut self) {
        if !std::mem::take(&mut self.doorbells_armed) {
            return;
        }
        for &slot in &self.shm_slots {
            if let Some(end) = self.conns.get(slot).and_then(|c| c.shm.as_deref()) {
                end.disarm_doorbell();
            }
        }
    }

    /// A closing connection's session: stop watching its doorbell, and give the server
    /// region's pages back (`ServerEnd`'s drop punches them) — at once when nothing is
    /// owed to the client (it left, or broke the protocol, or read every answer), else
    /// after [`SHM_LINGER`]: answers published before the server hung up stay readable
    /// that long (at most `max_connections` sessions linger; a draining server leaves
    /// them, it exits).
    pub(super) fn end_shm(&mut self, slot: usize, mut end: Box<ServerEnd>, client_left: bool) {
        let fd = end.doorbell_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        if let Some(i) = self.shm_slots.iter().position(|&s| s == slot) {
            self.shm_slots.swap_remove(i);
        }
        if client_left || !end.answers_unread() {
            return; // dropped here: unmapped and punched
        }
        if self.shared.shutdown.is_triggered() {
            end.keep_pages();
            return;
        }
        if self.lingering.len() == self.cfg.max_connections {
            self.lingering.pop_front(); // the oldest goes early: the list never grows
        }
        self.lingering.push_back((now_ns() + SHM_LINGER.as_nanos() as u64, end));
    }

    /// Give back the pages of sessions whose linger time is over (from `tick`).
    pub(super) fn end_lingering_sessions(&mut self, now: u64) {
        while self.lingering.front().is_some_and(|(due, _)| *due <= now) {
            self.lingering.pop_front();
        }
    }
}

/// Requests in a session's ring that may be taken now: each needs a response slot not held
/// by an unread answer or a request in flight, within the hard in-flight bound. (The
/// client's response tail is read only when requests are ready.)
fn takeable(end: &mut ServerEnd, inflight: u32, hard_limit: u32) -> Result<u32, ShmError> {
    let ready = end.requests_ready()?;
    if ready == 0 {
        return Ok(0);
    }
    let room = end.response_capacity().saturating_sub(end.responses_unread()? + inflight);
    Ok(ready.min(room).min(hard_limit.saturating_sub(inflight)))
}

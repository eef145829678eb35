//! Reading a connection's socket: decode frames, answer the hello, admit
//! requests into the stage in order, pause at the in-flight bound.

use super::stage::Job;
use super::{IoLoop, Stage, READS_PER_TURN};
use crate::clock::now_ns;
use crate::record::Recorder;
use crate::transport::{Conn, Decoded, ReadOutcome};
use crate::wire::{Limits, MlRequest, Status};

impl IoLoop {
    /// Read and decode one connection until `WouldBlock`, EOF, the hard
    /// in-flight limit (→ resume list) or a full stage (→ score, continue).
    /// Returns whether any read gave bytes or the end.
    pub(super) fn read_conn(&mut self, slot: usize) -> bool {
        let mut reads = 0;
        let mut read_any = false;
        'read: loop {
            let Some(conn) = self.conns.get_mut(slot) else { return read_any };
            if reads == READS_PER_TURN {
                // Fairness and the write-buffer bound: answers are flushed and other
                // connections served before this one is read again (next iteration).
                if !conn.read_deferred {
                    conn.read_deferred = true;
                    self.deferred.push(slot);
                }
                return read_any;
            }
            reads += 1;
            if conn.close_after_flush || conn.peer_closed {
                return read_any;
            }
            let outcome = conn.read_some();
            if outcome == ReadOutcome::WouldBlock {
                if !conn.has_buffered() {
                    return read_any; // nothing new, nothing left: no clock read for an empty read
                }
            } else {
                read_any = true;
            }
            let recv_ns = now_ns();
            let mut blocked = false; // stopped decoding with bytes left
            loop {
                if conn.inflight >= self.hard_limit {
                    conn.read_paused = true;
                    blocked = true;
                    break;
                }
                if !self.stage.has_room() {
                    blocked = true;
                    break;
                }
                if conn.shm.as_deref().is_some_and(|end| !end.is_active()) {
                    // A granted session's one byte: the client mapped its regions.
                    match conn.take_byte() {
                        None => break,
                        Some(crate::shm::MAPPED) => {
                            self.activate_shm(slot);
                            continue 'read;
                        }
                        Some(byte) => {
                            log::warn!(
                                "connection {slot} ({}): byte {byte:#04x} on the socket where a \
                                 shared-memory session's ML_SHM_MAPPED was due; answering {} and closing",
                                conn.who(),
                                Status::BadFrame
                            );
                            admit_bad_frame(&mut self.stage, conn, slot, recv_ns);
                            return read_any;
                        }
                    }
                }
                match conn.decode_next() {
                    Decoded::NeedMore => break,
                    Decoded::Hello(hello, auth) => {
                        if conn.tcp_peer.is_some()
                            && self.tcp_token.as_ref().is_some_and(|t| !t.admits(auth.as_ref()))
                        {
                            // No token, or another one: refused without a word about the server.
                            conn.queue(bytemuck::bytes_of(&super::tcp::blank_refusal(
                                Status::PermissionDenied,
                            )));
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                            self.stats.connections_refused += 1;
                            self.stats.tcp_auth_refusals += 1;
                            if let Some(left_out) = self.tcp_refused_log.event(recv_ns) {
                                log::warn!(
                                    "refusing TCP connection from {}: {} (--tcp-token-file) ({left_out} more \
                                     refused since the last such line)",
                                    conn.who(),
                                    if auth.is_some() { "wrong token" } else { "no token in its hello" }
                                );
                            }
                            return read_any;
                        }
                        if self.established >= self.cfg.max_connections {
                            conn.queue_ack(Status::TooManyConnections, &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                            self.stats.connections_refused += 1;
                            if let Some(left_out) = self.refused_log.event(recv_ns) {
                                log::warn!(
                                    "refusing connection from {}: {} established (--max-connections) \
                                     ({left_out} more refused since the last such line)",
                                    conn.who(),
                                    self.established
                                );
                            }
                            return read_any;
                        }
                        let uid = conn.quota_uid();
                        let held = uid.and_then(|u| self.uid_connections.get(&u).copied()).unwrap_or(0);
                        if uid.is_some() && held >= self.cfg.max_connections_per_uid {
                            conn.queue_ack(Status::TooManyConnections, &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                            self.stats.connections_refused += 1;
                            self.stats.uid_quota_refusals += 1;
                            if let Some(left_out) = self.quota_log.event(recv_ns) {
                                log::warn!(
                                    "refusing connection from {}: that uid holds {held} connections \
                                     (--max-connections-per-uid) ({left_out} more refused since the last such line)",
                                    conn.who()
                                );
                            }
                            return read_any;
                        }
                        if let Some(uid) = uid {
                            *self.uid_connections.entry(uid).or_insert(0) += 1;
                        }
                        conn.established = true;
                        conn.last_request_ns = recv_ns;
                        self.pending -= 1;
                        self.established += 1;
                        // Shared memory is for the same host: a TCP hello asking for it gets a plain ack.
                        if hello.wants_shm() && self.cfg.shm && conn.tcp_peer.is_none() {
                            self.grant_shm(slot);
                            // Read on: anything after this hello on the socket is an error.
                            continue 'read;
                        }
                        conn.queue_ack(Status::Ok, &self.info);
                        conn.mark_dirty(slot, &mut self.dirty);
                    }
                    Decoded::Request(_) if conn.shm.is_some() => {
                        log::warn!(
                            "connection {slot} ({}): request bytes on the socket of a shared-memory \
                             session (requests go through the ring); answering {} and closing",
                            conn.who(),
                            Status::BadFrame
                        );
                        admit_bad_frame(&mut self.stage, conn, slot, recv_ns);
                        return read_any;
                    }
                    Decoded::Request(req) => {
                        self.intake.admit(&mut self.stage, conn, slot, recv_ns, req);
                        self.direct.note(slot, conn.generation);
                    }
                    Decoded::Error(e) => {
                        log::warn!(
                            "connection {slot} ({}): {e}; answering {} and closing",
                            conn.who(),
                            e.status()
                        );
                        if conn.decoder.is_open() {
                            admit_bad_frame(&mut self.stage, conn, slot, recv_ns);
                        } else {
                            conn.queue_ack(e.status(), &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                        }
                        return read_any;
                    }
                }
            }
            if blocked {
                if conn.read_paused {
                    return read_any; // resumed from resume_paused() when answers drain
                }
                self.exchange(); // full stage: score/route now, then keep reading
                continue;
            }
            match outcome {
                ReadOutcome::Data => continue,
                // A short read drained the socket: skip the read() that would only say WouldBlock
                // (one syscall less per request on the hot path).
                ReadOutcome::Drained | ReadOutcome::WouldBlock => return read_any,
                ReadOutcome::Closed => {
                    conn.peer_closed = true;
                    conn.mark_dirty(slot, &mut self.dirty); // so close-when-done is checked
                    return read_any;
                }
            }
        }
    }

    /// Continue the connections whose turn ended with bytes left (taken as a batch:
    /// a connection deferred again goes to the next iteration).
    pub(super) fn read_deferred(&mut self) {
        let mut slots = std::mem::take(&mut self.deferred);
        for &slot in &slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.read_deferred = false;
                self.read_conn(slot);
            }
        }
        slots.clear();
        if self.deferred.is_empty() {
            self.deferred = slots; // keep the allocation
        }
    }

    pub(super) fn resume_paused(&mut self) {
        while let Some(slot) = self.resume.pop() {
            self.read_conn(slot); // tolerates a slot closed meanwhile
        }
    }
}

/// Where a request read from a socket or a shared-memory ring goes before the stage.
pub(super) struct Intake {
    /// Request checks (feature count, symbol table).
    pub(super) limits: Limits,
    /// `--record`: requests go to the capture writer thread.
    pub(super) recorder: Option<Recorder>,
    /// Past this many in flight, requests are answered `ML_ERR_OVERLOADED`.
    pub(super) max_inflight: u32,
    /// Requests admitted so far (wrapping): a direct read sees whether it found any.
    pub(super) admitted: u64,
}

impl Intake {
    /// One request into the stage, in order: recorded, answered `ML_ERR_OVERLOADED`
    /// past `max_inflight`, validated.
    #[inline]
    pub(super) fn admit(
        &mut self,
        stage: &mut Stage,
        conn: &mut Conn,
        slot: usize,
        recv_ns: u64,
        req: MlRequest,
    ) {
        if let Some(r) = &mut self.recorder {
            r.record(recv_ns, &req);
        }
        conn.last_request_ns = recv_ns;
        let status = if conn.inflight >= self.max_inflight {
            Status::Overloaded
        } else {
            crate::wire::validate(&req, &self.limits)
        };
        conn.inflight += 1;
        self.admitted = self.admitted.wrapping_add(1);
        stage.admit(Job { slot: slot as u32, generation: conn.generation, recv_ns, status, req });
    }
}

/// The stream (or ring) can no longer be trusted: one `ML_ERR_BAD_FRAME` answer
/// behind the requests already in flight (so it arrives last), then close.
pub(super) fn admit_bad_frame(stage: &mut Stage, conn: &mut Conn, slot: usize, recv_ns: u64) {
    conn.inflight += 1;
    let req = MlRequest::new();
    stage.admit(Job {
        slot: slot as u32,
        generation: conn.generation,
        recv_ns,
        status: Status::BadFrame,
        req,
    });
    conn.close_after_flush = true;
}

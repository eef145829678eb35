//! Reading a connection's socket: decode frames, answer the hello, admit
//! requests into the stage in order, pause at the in-flight bound.

use super::stage::Job;
use super::{IoLoop, READS_PER_TURN};
use crate::clock::now_ns;
use crate::transport::{Decoded, ReadOutcome};
use crate::wire::Status;

impl IoLoop {
    /// Read and decode one connection until `WouldBlock`, EOF, the hard
    /// in-flight limit (→ resume list) or a full stage (→ score, continue).
    pub(super) fn read_conn(&mut self, slot: usize) {
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else { return };
            if reads == READS_PER_TURN {
                // Fairness and the write-buffer bound: answers are flushed and other
                // connections served before this one is read again (next iteration).
                if !conn.read_deferred {
                    conn.read_deferred = true;
                    self.deferred.push(slot);
                }
                return;
            }
            reads += 1;
            if conn.close_after_flush || conn.peer_closed {
                return;
            }
            let outcome = conn.read_some();
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
                match conn.decode_next() {
                    Decoded::NeedMore => break,
                    Decoded::Hello => {
                        if self.established >= self.cfg.max_connections {
                            conn.queue_ack(Status::TooManyConnections, &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                            self.stats.connections_refused += 1;
                            if let Some(left_out) = self.refused_log.event(recv_ns) {
                                log::warn!(
                                    "refusing connection from pid {} uid {}: {} established (--max-connections) \
                                     ({left_out} more refused since the last such line)",
                                    conn.peer.pid,
                                    conn.peer.uid,
                                    self.established
                                );
                            }
                            return;
                        }
                        conn.established = true;
                        self.pending -= 1;
                        self.established += 1;
                        conn.queue_ack(Status::Ok, &self.info);
                        conn.mark_dirty(slot, &mut self.dirty);
                    }
                    Decoded::Request(req) => {
                        if let Some(r) = &mut self.recorder {
                            r.record(recv_ns, &req);
                        }
                        let status = if conn.inflight >= self.cfg.max_inflight {
                            Status::Overloaded
                        } else {
                            crate::wire::validate(&req, &self.limits)
                        };
                        conn.inflight += 1;
                        self.stage.admit(Job {
                            slot: slot as u32,
                            generation: conn.generation,
                            recv_ns,
                            status,
                            req,
                        });
                    }
                    Decoded::Error(e) => {
                        log::warn!(
                            "connection {slot} (pid {} uid {}): {e}; answering {} and closing",
                            conn.peer.pid,
                            conn.peer.uid,
                            e.status()
                        );
                        if conn.decoder.is_open() {
                            // Behind the requests already in flight, so it arrives last.
                            conn.inflight += 1;
                            let req = crate::wire::MlRequest::new();
                            self.stage.admit(Job {
                                slot: slot as u32,
                                generation: conn.generation,
                                recv_ns,
                                status: Status::BadFrame,
                                req,
                            });
                            conn.close_after_flush = true;
                        } else {
                            conn.queue_ack(e.status(), &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                        }
                        return;
                    }
                }
            }
            if blocked {
                if conn.read_paused {
                    return; // resumed from resume_paused() when answers drain
                }
                self.exchange(); // full stage: score/route now, then keep reading
                continue;
            }
            match outcome {
                ReadOutcome::Data => continue,
                // A short read drained the socket: skip the read() that would only say WouldBlock
                // (one syscall less per request on the hot path).
                ReadOutcome::Drained | ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {
                    conn.peer_closed = true;
                    conn.mark_dirty(slot, &mut self.dirty); // so close-when-done is checked
                    return;
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


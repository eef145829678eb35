//! The drain on SIGTERM: stop accepting, answer every request already sent,
//! flush, close.

use std::io;
use std::time::Duration;

use super::{IoLoop, Stage, DRAIN_DEADLINE};
use crate::clock::now_ns;

impl IoLoop {
    /// Stop accepting, answer every request already sent, flush, close.
    pub(super) fn drain(&mut self) -> io::Result<()> {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.tcp_listener.take() {
            let _ = self.poll.registry().deregister(&mut l); // dropped: new TCP connects are refused
        }
        self.socket_file.take(); // removes the socket file: no new clients find us
        self.reattach_direct(); // the drain's polls see every connection
        log::info!("draining: stopped accepting; answering {} connections' requests", self.conns.len());
        let deadline = now_ns() + DRAIN_DEADLINE.as_nanos() as u64;
        loop {
            // Everything clients sent before now is read and answered.
            let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for &slot in &slots {
                self.read_conn(slot);
            }
            self.read_rings();
            self.advance();
            // A shared-memory session's requests still in its ring count too (a faulty ring counts none).
            let in_ring = |c: &crate::transport::Conn| match (&c.shm, c.shm_fault, c.peer_closed) {
                (Some(end), None, false) if end.is_active() => end.requests_ready().unwrap_or(0) as usize,
                _ => 0,
            };
            let pending: usize =
                self.conns.iter().map(|(_, c)| c.inflight as usize + c.queued() + in_ring(c)).sum();
            if pending == 0 && self.deferred.is_empty() {
                break;
            }
            self.deferred.clear(); // every connection is read again on the next pass
            for (_, c) in self.conns.iter_mut() {
                c.read_deferred = false;
            }
            if now_ns() > deadline {
                log::warn!("drain deadline passed with {pending} requests/bytes unanswered");
                break;
            }
            self.poll_once(Some(Duration::from_millis(1)))?;
        }
        let n = self.conns.len();
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            self.close(slot);
        }
        // This process exits: sessions still lingering keep their last answers readable.
        for (_, end) in self.lingering.iter_mut() {
            end.keep_pages();
        }
        if let Stage::Pipeline(w) = &mut self.stage {
            w.stop();
        }
        log::info!("drained: {n} connections closed");
        Ok(())
    }
}

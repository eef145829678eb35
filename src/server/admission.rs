//! Who gets a serving slot: accepting, the pending pool, refusals, the hello
//! timeout, closing.

use std::io;

use mio::{Interest, Token};

use super::{IoLoop, ACCEPT_RETRY, HELLO_TIMEOUT};
use crate::clock::now_ns;
use crate::transport::Conn;
use crate::wire::{MlHelloAck, Status};

impl IoLoop {
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.accept_failed(e),
            };
            let generation = self.next_generation();
            let mut conn = match Conn::new(stream, generation) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("new connection: cannot read peer credentials: {e}");
                    continue;
                }
            };
            if !self.cfg.policy.admits(&conn.peer) {
                self.refuse(&mut conn, Status::PermissionDenied);
                continue;
            }
            self.add_pending(conn);
        }
    }

    /// A new slot generation (never 0).
    pub(super) fn next_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        generation
    }

    /// `accept` failed (not `EINTR`): queue drained, or out of descriptors (retry on a timer).
    pub(super) fn accept_failed(&mut self, e: io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            // Queue drained with descriptors to spare (at the limit, accept says EMFILE
            // even with nothing queued): the episode is over.
            if self.accept_retry_at.take().is_some() {
                log::info!("accept recovered: descriptors are available again");
            }
            return;
        }
        let out_of_fds =
            matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
        if out_of_fds {
            // Edge-triggered: the clients already queued raise no new event. Retry on a timer.
            if self.accept_retry_at.is_none() {
                // Logged once per episode: the timer stays set until accept says WouldBlock.
                log::warn!(
                    "accept failed: {e}; retrying every {ACCEPT_RETRY:?} until descriptors free up \
                     (logged once until it recovers; raise `ulimit -n` / LimitNOFILE=)"
                );
            }
            self.accept_retry_at = Some(now_ns() + ACCEPT_RETRY.as_nanos() as u64);
        } else {
            log::warn!("accept failed: {e}");
        }
    }

    /// An accepted, admitted connection joins the pending pool (dropping the oldest
    /// pending one if full), is registered, and read at once.
    pub(super) fn add_pending(&mut self, mut conn: Conn) {
        if self.pending >= self.cfg.max_pending {
            self.drop_oldest_pending();
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self.poll.registry().register(&mut conn.stream, Token(slot + 1), Interest::READABLE) {
            log::warn!("cannot register connection: {e}");
            return;
        }
        log::debug!("connection {slot} from {}", conn.who());
        entry.insert(conn);
        self.pending += 1;
        self.stats.connections_accepted += 1;
        // Data may already be waiting (edge-triggered): read now.
        self.read_conn(slot);
    }

    /// Accept was retried on a timer after running out of descriptors: is it time?
    pub(super) fn retry_accept(&mut self) {
        if let Some(at) = self.accept_retry_at {
            if now_ns() >= at {
                self.accept();
                self.accept_tcp();
            }
        }
    }

    /// Answer a connection's hello (or its first bytes) with a refusal, without registering it.
    pub(super) fn refuse(&mut self, conn: &mut Conn, status: Status) {
        if let Some(left_out) = self.refused_log.event(now_ns()) {
            log::warn!(
                "refusing connection from pid {} uid {} gid {}: {status} ({left_out} more refused since the last such line)",
                conn.peer.pid,
                conn.peer.uid,
                conn.peer.gid,
            );
        }
        self.stats.connections_refused += 1;
        // A fresh socket's buffer always takes one 64-byte ack; the client reads it after its hello.
        conn.queue(bytemuck::bytes_of(&MlHelloAck::new(status, &self.info)));
        let _ = conn.flush();
    }

    /// The pending pool is full: close its oldest connection (a scan, only under a flood).
    pub(super) fn drop_oldest_pending(&mut self) {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| !c.established)
            .min_by_key(|(_, c)| c.accepted_ns)
            .map(|(k, c)| (k, c.who().to_string()));
        if let Some((slot, who)) = oldest {
            if let Some(left_out) = self.flood_log.event(now_ns()) {
                log::warn!(
                    "{} connections without a hello (--max-pending): dropping the oldest, from {} \
                     ({left_out} more dropped since the last such line)",
                    self.pending,
                    who
                );
            }
            self.close(slot);
        }
    }

    /// A connection that sent no hello within `HELLO_TIMEOUT` is closed, so idle
    /// sockets cannot hold the connection slots other clients need; so is a granted
    /// shared-memory session whose client did not say it mapped its regions by then.
    pub(super) fn close_silent_connections(&mut self, now: u64) {
        let limit = HELLO_TIMEOUT.as_nanos() as u64;
        let handshaking =
            |c: &Conn| !c.decoder.is_open() || c.shm.as_deref().is_some_and(|end| !end.is_active());
        let silent: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| handshaking(c) && !c.close_after_flush && now - c.accepted_ns > limit)
            .map(|(k, _)| k)
            .collect();
        if let (Some(&first), n) = (silent.first(), silent.len()) {
            if let Some(c) = self.conns.get(first) {
                log::warn!(
                    "{n} connection(s) sent no hello within {HELLO_TIMEOUT:?} (or, granted shared memory, no \
                     ML_SHM_MAPPED); closing them (first: {})",
                    c.who(),
                );
            }
        }
        for slot in silent {
            self.close(slot);
        }
        if let Some(idle) = self.cfg.idle_timeout {
            self.close_idle_connections(now, idle.as_nanos() as u64);
        }
    }

    /// `--idle-timeout-s`: an established connection with nothing in flight that sent no
    /// request for that long is closed (counted, logged at most once a second), so a
    /// client that connects and never sends cannot hold a slot for good.
    fn close_idle_connections(&mut self, now: u64, idle_ns: u64) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.established
                    && !c.close_after_flush
                    && c.inflight == 0
                    && c.queued() == 0
                    && now.saturating_sub(c.last_request_ns) > idle_ns
            })
            .map(|(k, _)| k)
            .collect();
        for slot in idle {
            if let Some(c) = self.conns.get(slot) {
                if let Some(left_out) = self.idle_log.event(now) {
                    log::warn!(
                        "closing connection {slot} ({}): no request for {:?} (--idle-timeout-s) \
                         ({left_out} more closed since the last such line)",
                        c.who(),
                        std::time::Duration::from_nanos(idle_ns)
                    );
                }
            }
            self.stats.idle_disconnects += 1;
            self.close(slot);
        }
    }

    pub(super) fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.try_remove(slot) {
            if conn.established {
                self.established -= 1;
                if let Some(uid) = conn.quota_uid() {
                    if let Some(held) = self.uid_connections.get_mut(&uid) {
                        *held -= 1;
                        if *held == 0 {
                            self.uid_connections.remove(&uid);
                        }
                    }
                }
            } else {
                self.pending -= 1;
            }
            debug_assert_eq!(self.established + self.pending, self.conns.len());
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(end) = conn.shm.take() {
                // Nothing is owed to a client that hung up or broke the protocol.
                self.end_shm(slot, end, conn.peer_closed || conn.shm_fault.is_some());
            }
            log::debug!("connection {slot} closed ({} in flight dropped)", conn.inflight);
        }
    }
}

//! The TCP listener (`--listen-tcp`): accept, the allowlist, socket options; then
//! the connection joins the same pending pool, reading and routing as a Unix one.

use std::io;

use super::IoLoop;
use crate::clock::now_ns;
use crate::transport::{tcp, Conn};
use crate::wire::{MlHelloAck, ServerInfo, Status};

/// A refusal ack that tells a peer not allowed in nothing about the server (no model,
/// no scales): the frozen first 12 bytes and the layout only.
pub(super) fn blank_refusal(status: Status) -> MlHelloAck {
    let blank = ServerInfo {
        price_scale: 0,
        size_scale_digits: 0,
        model_features: 0,
        max_inflight: 0,
        model_version: 0,
        model_name: String::new(),
    };
    MlHelloAck::new(status, &blank)
}

impl IoLoop {
    pub(super) fn accept_tcp(&mut self) {
        loop {
            let Some(listener) = &self.tcp_listener else { return };
            let (stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.accept_failed(e),
            };
            let Some(listen) = &self.cfg.tcp else { return };
            if !listen.policy.admits(addr.ip()) {
                // Closed at once (dropping the stream), before a byte is read or written.
                self.stats.tcp_peers_refused += 1;
                self.stats.connections_refused += 1;
                if let Some(left_out) = self.tcp_refused_log.event(now_ns()) {
                    log::warn!(
                        "refusing TCP connection from {addr}: not in --tcp-allow ({}) ({left_out} more refused \
                         since the last such line)",
                        if listen.policy.allow.is_empty() {
                            "empty: loopback peers only".to_string()
                        } else {
                            listen.policy.allow.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
                        }
                    );
                }
                continue;
            }
            match tcp::tune(&stream, listen.policy.busy_poll_us) {
                Ok(None) => {}
                Ok(Some(e)) => {
                    if !self.busy_poll_warned {
                        self.busy_poll_warned = true;
                        log::warn!(
                            "--busy-poll-us: SO_BUSY_POLL refused ({e}); raising it needs CAP_NET_ADMIN \
                             (AmbientCapabilities=CAP_NET_ADMIN) or the system default `sysctl \
                             net.core.busy_read=N`; serving without it (said once)"
                        );
                    }
                }
                Err(e) => {
                    log::warn!("TCP connection from {addr}: cannot set TCP_NODELAY ({e}); closing it");
                    continue;
                }
            }
            self.stats.tcp_connections += 1;
            let generation = self.next_generation();
            self.add_pending(Conn::new_tcp(stream, addr, generation));
        }
    }
}

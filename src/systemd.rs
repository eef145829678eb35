//! systemd integration, off the hot path, through the `sd-notify` crate: readiness
//! notifications for `Type=notify` units and socket activation (`LISTEN_FDS`).
//!
//! Outside systemd every function here does nothing: no `NOTIFY_SOCKET` means no
//! notification is sent, and no `LISTEN_PID` naming this process means no socket
//! was handed over. A notification that cannot be sent is logged, never fatal: the
//! server serves whether or not its manager hears about it.
//!
//! What the server says, and when (deploy/systemd/tickinfer.service):
//! - `READY=1` once the model is loaded and warmed, memory locked and real-time
//!   priority set if asked, and the listening socket registered with the event
//!   loop: the first request after it is answered;
//! - `STOPPING=1` when SIGTERM/SIGINT starts the drain;
//! - `RELOADING=1` (with `MONOTONIC_USEC`) when a reload starts, then `READY=1`
//!   when it ended — swapped in or refused, the server serves either way; `STATUS=`
//!   says which.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("systemd notification {states:?} not sent: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: the drain started.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: answering what clients sent, then exiting"),
    ]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` stamp systemd ≥ 253 requires beside it.
pub fn reloading(what: &str) {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(what)];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The listening socket systemd passed to this process (socket activation), if any.
///
/// Exactly one socket is accepted, and it must be a listening Unix stream socket
/// (`ListenStream=PATH`, `Accept=no`) bound at `expected`, the server's `--socket`
/// (its control socket is bound beside it, and clients and operators must agree on
/// one path). Its owner, mode and path are the socket unit's; the server's peer
/// credential allowlist still applies to every connection.
pub fn inherited_listener(expected: &Path) -> Result<Option<UnixListener>, String> {
    let fds: Vec<i32> =
        sd_notify::listen_fds().map_err(|e| format!("socket activation (LISTEN_FDS): {e}"))?.collect();
    let fd = match fds[..] {
        [] => return Ok(None),
        [fd] => fd,
        _ => {
            return Err(format!(
                "socket activation passed {} sockets; tickinfer serves one (one ListenStream= in tickinfer.socket)",
                fds.len()
            ))
        }
    };
    if !crate::sys::is_listening_unix_stream(fd)
        .map_err(|e| format!("socket activation: descriptor {fd}: {e}"))?
    {
        return Err(format!(
            "socket activation: descriptor {fd} is not a listening Unix stream socket \
             (the socket unit needs ListenStream=/path and Accept=no)"
        ));
    }
    // SAFETY: systemd handed `fd` to this process (LISTEN_PID is our pid) for us to own; it
    // is taken here once, checked to be a socket above, and nothing else in the process uses it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true).map_err(|e| format!("socket activation: descriptor {fd}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("socket activation: descriptor {fd}: {e}"))?;
    match addr.as_pathname() {
        Some(path) if path == expected => Ok(Some(listener)),
        Some(path) => Err(format!(
            "socket activation: systemd's socket is {} but --socket is {}; give the socket unit's \
             ListenStream= path as --socket (the control socket is bound beside it)",
            path.display(),
            expected.display()
        )),
        None => Err(format!(
            "socket activation: descriptor {fd} is not bound to a path (abstract or unnamed); \
             ListenStream= must be a filesystem path"
        )),
    }
}

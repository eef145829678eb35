//! The socket side of the request's path: a safe listening socket, and one
//! [`Conn`] per client with its read buffer, frame decoder, write buffer and
//! in-flight accounting. No model code here: `server` drives it. A connection's
//! socket is a Unix stream or, from another host, a TCP stream ([`tcp`]): the
//! same frames and the same path after accept.

pub mod netns;
pub mod tcp;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mio::net::{TcpStream, UnixStream};

use crate::sys::{self, PeerCred};
use crate::wire::{
    Frame, MlHello, MlHelloAck, MlRequest, MlResponse, ServerInfo, Status, WireError, RESPONSE_SIZE,
};

/// Who may connect and how the socket file is published.
#[derive(Clone, Debug)]
pub struct SocketPolicy {
    /// Permission bits of the socket file (default 0o600).
    pub mode: u32,
    /// Group owner of the socket file, if set.
    pub group: Option<u32>,
    /// Peer uids allowed (empty: any uid that can open the file).
    pub allow_uids: Vec<u32>,
    /// Peer gids allowed (empty: any).
    pub allow_gids: Vec<u32>,
}

impl Default for SocketPolicy {
    fn default() -> Self {
        SocketPolicy { mode: 0o600, group: None, allow_uids: vec![], allow_gids: vec![] }
    }
}

impl SocketPolicy {
    /// Whether a peer with these credentials may use the server. With both
    /// lists set, either match admits the peer.
    pub fn admits(&self, peer: &PeerCred) -> bool {
        if self.allow_uids.is_empty() && self.allow_gids.is_empty() {
            return true;
        }
        self.allow_uids.contains(&peer.uid) || self.allow_gids.contains(&peer.gid)
    }
}

/// Why the listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0} is a symbolic link; refusing to follow it (remove it or choose another --socket path)")]
    Symlink(PathBuf),
    #[error(
        "a tickinfer server (or another program) is already listening on {0}; stop it or choose another path"
    )]
    Live(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot set up socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The TCP listener (`--listen-tcp`): the message names the option and the fix.
    #[error("{0}")]
    Tcp(String),
}

/// The file of a bound listening socket; removes it on drop if it is still ours.
pub struct SocketFile {
    path: PathBuf,
    /// (dev, ino) of the file we bound, to never remove someone else's.
    identity: (u64, u64),
}

impl SocketFile {
    /// Bind `path` safely: never through a symlink, refusing a live server's
    /// socket, replacing a stale one, publishing the file with `policy`'s mode
    /// and group from the start (umask held during bind).
    pub fn bind(
        path: &Path,
        policy: &SocketPolicy,
    ) -> Result<(std::os::unix::net::UnixListener, SocketFile), ListenError> {
        let io_err = |source| ListenError::Io { path: path.to_path_buf(), source };
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
            Ok(meta) if meta.file_type().is_symlink() => return Err(ListenError::Symlink(path.into())),
            Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::Live(path.into())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::warn!("replacing stale socket {} (no server listening)", path.display());
                    std::fs::remove_file(path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            },
            Ok(_) => return Err(ListenError::NotASocket(path.into())),
        }
        // Bind with a umask that leaves at most `mode`: the file is never more open than asked.
        let old = sys::umask(0o777 & !policy.mode);
        let bound = std::os::unix::net::UnixListener::bind(path);
        sys::umask(old);
        let std_listener = bound.map_err(io_err)?;
        if let Some(gid) = policy.group {
            sys::chgrp(path, gid).map_err(io_err)?;
        }
        sys::chmod(path, policy.mode).map_err(io_err)?;
        std_listener.set_nonblocking(true).map_err(io_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
        Ok((std_listener, SocketFile { path: path.to_path_buf(), identity: (meta.dev(), meta.ino()) }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the socket file if it is still the one we bound.
    pub fn remove_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// A connection's socket: the local Unix stream, or TCP from another host. One
/// predictable branch per read or write.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // neither stream buffers in user space
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Tcp(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Tcp(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.deregister(r),
            Stream::Tcp(s) => s.deregister(r),
        }
    }
}

/// Who is at the other end of a connection, for log lines.
pub struct Who<'a>(&'a Conn);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.tcp_peer {
            Some(addr) => write!(f, "tcp {addr}"),
            None => write!(f, "pid {} uid {}", self.0.peer.pid, self.0.peer.uid),
        }
    }
}

/// Read buffer size per connection: 337 requests.
pub const READ_BUFFER: usize = 64 * 1024;

/// One client connection.
pub struct Conn {
    pub stream: Stream,
    /// Incremented each time a slab slot is reused, so late responses for a
    /// closed connection are dropped, never delivered to its successor.
    pub generation: u32,
    /// Peer credentials of a Unix connection (`SO_PEERCRED`); none exist over TCP
    /// (there: pid 0, uid and gid `u32::MAX`, and `tcp_peer` is set).
    pub peer: PeerCred,
    /// The peer's address of a TCP connection.
    pub tcp_peer: Option<SocketAddr>,
    pub decoder: crate::wire::Decoder,
    /// Bytes `[rpos, rlen)` are received and not yet decoded; `rpos <= rlen <= rbuf.len()`.
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    /// Bytes `[wpos, wbuf.len())` are queued for the kernel.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Requests read whose responses are not yet queued in `wbuf`.
    pub inflight: u32,
    /// The peer closed its side (EOF): close once nothing is in flight or queued.
    pub peer_closed: bool,
    /// Close after the write buffer drains (after a refusal or BAD_FRAME).
    pub close_after_flush: bool,
    /// Reading stopped at the hard in-flight limit; resume when it falls.
    pub read_paused: bool,
    /// WRITABLE interest is registered (the kernel buffer was full).
    pub want_write: bool,
    /// On the server's flush list this iteration.
    pub dirty: bool,
    /// On the server's deferred-read list (its turn ended with bytes left).
    pub read_deferred: bool,
    /// `CLOCK_MONOTONIC` ns of the accept (the hello must come within the server's hello timeout).
    pub accepted_ns: u64,
    /// `CLOCK_MONOTONIC` ns of its hello, then of its latest request (`--idle-timeout-s`).
    pub last_request_ns: u64,
    /// Its hello was accepted: it holds one of the server's `max_connections` slots.
    /// Until then it is pending (handshaking) and counts against `max_pending` instead.
    pub established: bool,
    /// A shared-memory session (granted in the hello): requests and answers go
    /// through its rings; the socket only carries the hello and liveness.
    pub shm: Option<Box<crate::shm::ServerEnd>>,
    /// The session's rings broke their invariants: close it (with this as the log line).
    pub shm_fault: Option<crate::shm::ShmError>,
}

/// The next frame of a connection's received bytes (copied out).
#[derive(Debug)]
pub enum Decoded {
    /// A valid hello (answer it with an ack); its flags may ask for shared memory;
    /// with the auth frame that followed it, if its flags announced one.
    Hello(MlHello, Option<crate::wire::MlAuth>),
    /// A whole request frame (not yet validated).
    Request(MlRequest),
    /// The stream cannot be trusted: answer `e.status()` and close.
    Error(WireError),
    /// No whole frame yet.
    NeedMore,
}

/// Outcome of reading a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes were read and the buffer filled up: more may be waiting.
    Data,
    /// Bytes were read and the kernel had no more (a short read on a stream
    /// socket returns everything queued): no need for another `read()` to see
    /// `WouldBlock`; new bytes raise a new edge-triggered event.
    Drained,
    /// No more bytes for now.
    WouldBlock,
    /// The peer closed (EOF) or the socket failed.
    Closed,
}

impl Conn {
    pub fn new(stream: UnixStream, generation: u32) -> io::Result<Conn> {
        let peer = sys::peer_cred(stream.as_raw_fd())?;
        Ok(Conn::with(Stream::Unix(stream), generation, peer, None))
    }

    /// A TCP connection from `addr` (no peer credentials: uid quotas and allow-uid do not apply).
    pub fn new_tcp(stream: TcpStream, addr: SocketAddr, generation: u32) -> Conn {
        let nobody = PeerCred { pid: 0, uid: u32::MAX, gid: u32::MAX };
        Conn::with(Stream::Tcp(stream), generation, nobody, Some(addr))
    }

    fn with(stream: Stream, generation: u32, peer: PeerCred, tcp_peer: Option<SocketAddr>) -> Conn {
        Conn {
            stream,
            generation,
            peer,
            tcp_peer,
            decoder: crate::wire::Decoder::new(),
            rbuf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            wbuf: Vec::with_capacity(64 * RESPONSE_SIZE),
            wpos: 0,
            inflight: 0,
            peer_closed: false,
            close_after_flush: false,
            read_paused: false,
            want_write: false,
            dirty: false,
            read_deferred: false,
            accepted_ns: crate::clock::now_ns(),
            last_request_ns: crate::clock::now_ns(),
            established: false,
            shm: None,
            shm_fault: None,
        }
    }

    /// The peer, for log lines: `pid P uid U`, or `tcp ADDR`.
    pub fn who(&self) -> Who<'_> {
        Who(self)
    }

    /// The uid whose `--max-connections-per-uid` quota this connection counts against
    /// (none over TCP: no credentials).
    pub fn quota_uid(&self) -> Option<u32> {
        self.tcp_peer.is_none().then_some(self.peer.uid)
    }

    /// One `read()` into the free tail of the read buffer (retrying EINTR).
    pub fn read_some(&mut self) -> ReadOutcome {
        if self.rpos == self.rlen {
            (self.rpos, self.rlen) = (0, 0); // everything decoded: start at the front
        }
        if self.rlen == self.rbuf.len() {
            return ReadOutcome::Data; // full: the caller must decode frames first
        }
        loop {
            let space = self.rbuf.len() - self.rlen;
            match self.stream.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    self.rlen += n;
                    return if n < space { ReadOutcome::Drained } else { ReadOutcome::Data };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::WouldBlock,
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Received bytes not yet decoded (a partial frame, or frames left at a pause).
    #[inline]
    pub fn has_buffered(&self) -> bool {
        self.rpos < self.rlen
    }

    /// Take one received byte, if any (a shared-memory session's `ML_SHM_MAPPED`).
    pub fn take_byte(&mut self) -> Option<u8> {
        let byte = self.rbuf[..self.rlen].get(self.rpos).copied()?;
        self.rpos += 1;
        Some(byte)
    }

    /// Decode the next frame from the received bytes and consume it.
    #[inline]
    pub fn decode_next(&mut self) -> Decoded {
        let (decoded, used) = match self.decoder.next(&self.rbuf[self.rpos..self.rlen]) {
            Ok(None) => {
                // Keep the partial frame; move it to the front so the buffer has room.
                if self.rpos > 0 {
                    self.rbuf.copy_within(self.rpos..self.rlen, 0);
                    self.rlen -= self.rpos;
                    self.rpos = 0;
                }
                return Decoded::NeedMore;
            }
            Ok(Some((Frame::Hello(h, auth), n))) => (Decoded::Hello(*h, auth.copied()), n),
            Ok(Some((Frame::Request(r), n))) => (Decoded::Request(*r), n),
            Err(e) => return Decoded::Error(e),
        };
        self.rpos += used;
        debug_assert!(self.rpos <= self.rlen);
        decoded
    }

    /// Put this connection (at `slot`) on the flush list, once.
    #[inline]
    pub fn mark_dirty(&mut self, slot: usize, list: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            list.push(slot);
        }
    }

    /// Bytes waiting for the kernel.
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Queue raw bytes for writing.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Queue one response.
    #[inline]
    pub fn queue_response(&mut self, resp: &MlResponse) {
        self.wbuf.extend_from_slice(bytemuck::bytes_of(resp));
    }

    /// Queue a hello ack.
    pub fn queue_ack(&mut self, status: Status, info: &ServerInfo) {
        self.queue(bytemuck::bytes_of(&MlHelloAck::new(status, info)));
    }

    /// Write as much as the kernel takes. `Ok(true)`: all flushed.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }
}

//! One replay connection on one thread: send what is due and fits the window,
//! drain answers, never wait on an answer to send.
//!
//! The same loop drives the socket and shared memory ([`Link`]); each turn it
//! 1. offers every request that is due (open loop: its intended send time has
//!    come; closed loop: at once) while fewer than `window` are unanswered,
//! 2. pushes them out (one `write` for all the socket's),
//! 3. takes every answer already there, without blocking.
//!
//! When a turn moved nothing it busy-polls (`ClientPoll::Spin`, the default:
//! no sleep and no yield on the measured path) or sleeps until the next event is
//! due or an answer arrives (`ClientPoll::Block`, for a shared box: every answer
//! then pays the host's wake-up).
//!
//! What is measured, per request, from its *intended* send time (open loop: the
//! schedule's; closed loop: when it was offered):
//! - **schedule lag** = actual send − intended, "actual send" being the hand-over
//!   to the transport (the `write` or ring publish that took the request): the
//!   client's own lateness (a full window, a descheduled thread, a socket that
//!   would not take more);
//! - **latency** = answer − intended: what a trading system that had to send at
//!   that instant would have seen (coordinated omission included, not hidden).
//!
//! When a due request waits because the window is full, that is counted
//! (`window_waits`, and the time from its due time to its send).

use hdrhistogram::Histogram;

use super::source::Event;
use super::Outcome;
use crate::clock::now_ns;
use crate::wire::{MlRequest, MlResponse, RESPONSE_SIZE};

/// How the replay's connection threads wait when there is nothing to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientPoll {
    /// Busy-poll (default): lowest measurement noise, one core per connection at 100 %.
    #[default]
    Spin,
    /// Sleep in poll(2)/futex until due or answered: for a shared machine; adds its wake-up.
    Block,
}

/// A connection to the server as the driver sees it.
pub(super) trait Link {
    /// Queue one request; `Ok(false)` when the transport has no room now.
    fn offer(&mut self, req: &MlRequest) -> Result<bool, String>;
    /// Push queued requests out without blocking; how many have left since the start.
    fn flush(&mut self) -> Result<usize, String>;
    /// The next answer if one has arrived; `Err` once the server is gone and every
    /// answer it sent was taken.
    fn try_recv(&mut self) -> Result<Option<MlResponse>, String>;
    /// Sleep until an answer may be there (or requests can leave), at most `max` (`None`: no limit).
    fn wait(&mut self, max: Option<std::time::Duration>);
}

/// A Unix socket connection: requests are batched into one `write`.
pub(super) struct SocketLink {
    stream: std::os::unix::net::UnixStream,
    /// Bytes of offered requests not yet written: `out[written..]`.
    out: Vec<u8>,
    written: usize,
    /// Requests fully written since the start.
    left: usize,
    /// Received bytes `inbuf[..have]` not yet taken as answers.
    inbuf: Vec<u8>,
    have: usize,
}

impl SocketLink {
    pub(super) fn new(stream: std::os::unix::net::UnixStream) -> Result<SocketLink, String> {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(SocketLink {
            stream,
            out: Vec::with_capacity(64 * std::mem::size_of::<MlRequest>()),
            written: 0,
            left: 0,
            inbuf: vec![0; 256 * RESPONSE_SIZE],
            have: 0,
        })
    }
}

/// Unsent bytes past which `offer` says no (the socket is not keeping up).
const SOCKET_OUT_LIMIT: usize = 256 * std::mem::size_of::<MlRequest>();

impl Link for SocketLink {
    fn offer(&mut self, req: &MlRequest) -> Result<bool, String> {
        if self.out.len() - self.written >= SOCKET_OUT_LIMIT {
            return Ok(false);
        }
        self.out.extend_from_slice(bytemuck::bytes_of(req));
        Ok(true)
    }

    fn flush(&mut self) -> Result<usize, String> {
        use std::io::Write;
        const REQ: usize = std::mem::size_of::<MlRequest>();
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err("send: the server closed the connection".into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        // Whole requests written; keep a partial one's tail for the next flush.
        let whole = self.written / REQ;
        if whole > 0 {
            self.left += whole;
            self.out.drain(..whole * REQ);
            self.written -= whole * REQ;
        }
        Ok(self.left)
    }

    fn try_recv(&mut self) -> Result<Option<MlResponse>, String> {
        use std::io::Read;
        if self.have < RESPONSE_SIZE {
            loop {
                match self.stream.read(&mut self.inbuf[self.have..]) {
                    Ok(0) => return Err("the server closed the connection".into()),
                    Ok(n) => self.have += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("receive: {e}")),
                }
                break;
            }
            if self.have < RESPONSE_SIZE {
                return Ok(None);
            }
        }
        let resp: MlResponse = bytemuck::pod_read_unaligned(&self.inbuf[..RESPONSE_SIZE]);
        self.inbuf.copy_within(RESPONSE_SIZE..self.have, 0);
        self.have -= RESPONSE_SIZE;
        Ok(Some(resp))
    }

    fn wait(&mut self, max: Option<std::time::Duration>) {
        use std::os::fd::AsRawFd;
        let _ = crate::sys::wait_fd(self.stream.as_raw_fd(), self.written < self.out.len(), max);
    }
}

/// A shared-memory session: requests are published one by one.
pub(super) struct ShmLink {
    client: crate::shm::ShmClient,
    left: usize,
    /// Empty polls since the last answer; the socket is checked for a hang-up every 4096.
    idle: u32,
}

impl ShmLink {
    pub(super) fn new(client: crate::shm::ShmClient) -> ShmLink {
        ShmLink { client, left: 0, idle: 0 }
    }
}

impl Link for ShmLink {
    fn offer(&mut self, req: &MlRequest) -> Result<bool, String> {
        let sent = self.client.try_send(req).map_err(|e| format!("send: {e}"))?;
        self.left += sent as usize;
        Ok(sent)
    }

    fn flush(&mut self) -> Result<usize, String> {
        Ok(self.left)
    }

    fn try_recv(&mut self) -> Result<Option<MlResponse>, String> {
        if let Some(r) = self.client.try_recv() {
            self.idle = 0;
            return Ok(Some(r));
        }
        self.idle = self.idle.wrapping_add(1);
        // Answers published before a hang-up are still in the ring: look once more.
        if self.idle % 4096 == 0 && self.client.server_gone() {
            return self.client.try_recv().map(Some).ok_or_else(|| "the server closed the session".into());
        }
        Ok(None)
    }

    fn wait(&mut self, max: Option<std::time::Duration>) {
        // Woken every 10 ms at most, to notice a hang-up through `try_recv`.
        let max =
            max.unwrap_or(std::time::Duration::from_millis(10)).min(std::time::Duration::from_millis(10));
        self.client.wait_response(max);
        self.idle = self.idle.wrapping_add(4095); // check the socket on the next empty poll
    }
}

/// What one connection measured.
pub(super) struct ConnResult {
    pub outcomes: Vec<(usize, Outcome)>,
    pub mismatched: u64,
    pub lost: u64,
    pub finished_ns: u64,
    /// Actual send − intended send, ns (open loop).
    pub lag: Histogram<u64>,
    pub window: WindowWaits,
}

/// Open loop: times a due request found the window full (its send waited for an
/// answer), and for how long in all and at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowWaits {
    pub episodes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl WindowWaits {
    pub(super) fn merge(&mut self, o: &WindowWaits) {
        self.episodes += o.episodes;
        self.total_ns += o.total_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }
}

/// Pacing of one connection's events.
pub(super) struct Plan<'a> {
    pub events: &'a [Event],
    /// Global indices of this connection's events, in order.
    pub list: &'a [usize],
    /// Due time of each event (global index), ns after `start`; `None`: closed loop.
    pub due: &'a [Option<u64>],
    pub start: u64,
    pub window: usize,
    pub poll: ClientPoll,
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds")
}

/// Run one connection to the end (every answer taken, or the server gone).
pub(super) fn drive(
    link: &mut dyn Link,
    plan: &Plan,
    progress: &indicatif::ProgressBar,
) -> Result<ConnResult, String> {
    let (list, n, window) = (plan.list, plan.list.len(), plan.window.max(1));
    // Intended send time of each unanswered request: at most `window` of them, by position % window.
    let mut intended = vec![0u64; window];
    let mut outcomes = Vec::with_capacity(n);
    let mut lag = new_histogram();
    let (mut next, mut left, mut k) = (0usize, 0usize, 0usize);
    let (mut mismatched, mut lost) = (0u64, 0u64);
    // Open loop: episodes in which a due request found the window full, and their length.
    let (mut window_waits, mut window_wait_ns, mut window_wait_max_ns) = (0u64, 0u64, 0u64);
    let mut blocked_since: Option<u64> = None;
    let due_at = |j: usize| plan.due[list[j]].map(|d| plan.start + d);
    while now_ns() < plan.start {
        std::hint::spin_loop();
    }
    while k < n {
        let mut moved = false;
        let now = now_ns();
        // 1. Offer what is due and fits the window.
        while next < n && next - k < window {
            let when = match due_at(next) {
                Some(t) if t > now => break,
                Some(t) => t,
                None => now,
            };
            if !link.offer(&plan.events[list[next]].req)? {
                break; // the transport is full: answers first
            }
            intended[next % window] = when;
            next += 1;
            moved = true;
        }
        let blocked = next < n && next - k >= window && due_at(next).is_some_and(|t| t <= now);
        match (blocked, blocked_since) {
            (true, None) => blocked_since = Some(now),
            (false, Some(since)) => {
                let waited = now.saturating_sub(since);
                (window_waits, window_wait_ns) = (window_waits + 1, window_wait_ns + waited);
                window_wait_max_ns = window_wait_max_ns.max(waited);
                blocked_since = None;
            }
            _ => {}
        }
        // 2. Push them out; the schedule lag of each that left runs to the hand-over (the
        // write or publish that took it), not past it: the transport's own cost is latency.
        let t = now_ns();
        let gone_out = link.flush()?;
        if gone_out > left {
            for j in left..gone_out {
                lag.saturating_record(t.saturating_sub(intended[j % window]).max(1));
            }
            left = gone_out;
            moved = true;
        }
        // 3. Take every answer already there.
        loop {
            let resp = match link.try_recv() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("replay connection: {e}");
                    lost = (n - k) as u64;
                    break;
                }
            };
            let t = now_ns();
            let i = list[k];
            mismatched += ({ resp.request_id } != i as u64) as u64;
            outcomes.push((i, Outcome::of(&resp, t.saturating_sub(intended[k % window]))));
            k += 1;
            moved = true;
            if k % 1024 == 0 {
                progress.inc(1024);
            }
        }
        if lost > 0 {
            break;
        }
        if !moved {
            match plan.poll {
                ClientPoll::Spin => std::hint::spin_loop(),
                ClientPoll::Block => {
                    // Until the next event is due (if the window has room for it), or an answer.
                    // Until the next event is due (when the window has room for it), or an answer.
                    let until = (next < n && next - k < window).then(|| due_at(next)).flatten();
                    link.wait(until.map(|t| std::time::Duration::from_nanos(t.saturating_sub(now_ns()))));
                }
            }
        }
    }
    progress.inc((k % 1024) as u64);
    let window = WindowWaits { episodes: window_waits, total_ns: window_wait_ns, max_ns: window_wait_max_ns };
    Ok(ConnResult { outcomes, mismatched, lost, finished_ns: now_ns(), lag, window })
}

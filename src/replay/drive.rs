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
//! then pays the host's wake-up). With `--keep-warm-us`, a spinning thread idle that
//! long sends a message round a private socket pair ([`crate::keep_warm`]) so its
//! next real send does not find the kernel's socket path cold.
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

/// A socket connection (Unix or TCP): requests are batched into one `write`.
pub(super) struct SocketLink {
    stream: super::ClientStream,
    /// Bytes of offered requests not yet written: `out[written..]`.
    out: Vec<u8>,
    written: usize,
    /// Requests fully written since the start.
    left: usize,
    /// Received bytes `inbuf[taken..have]` not yet taken as answers; `taken <= have`.
    inbuf: Vec<u8>,
    taken: usize,
    have: usize,
}

impl SocketLink {
    pub(super) fn new(stream: super::ClientStream) -> Result<SocketLink, String> {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(SocketLink {
            stream,
            out: Vec::with_capacity(64 * std::mem::size_of::<MlRequest>()),
            written: 0,
            left: 0,
            inbuf: vec![0; 256 * RESPONSE_SIZE],
            taken: 0,
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
        debug_assert!(self.taken <= self.have);
        if self.have - self.taken < RESPONSE_SIZE {
            // Keep a partial answer's bytes, once per read (not once per answer taken).
            self.inbuf.copy_within(self.taken..self.have, 0);
            (self.have, self.taken) = (self.have - self.taken, 0);
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
        let resp: MlResponse =
            bytemuck::pod_read_unaligned(&self.inbuf[self.taken..self.taken + RESPONSE_SIZE]);
        self.taken += RESPONSE_SIZE;
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

/// One request for a connection: its global index, the request, and when it is due
/// (ns after the replay's start; `None`: closed loop, at once).
pub(super) struct Job {
    pub i: u64,
    pub req: MlRequest,
    pub due: Option<u64>,
}

/// What became of request `i`: its answer, or `None` when the server went away first.
pub(super) struct Done {
    pub i: u64,
    pub outcome: Option<Outcome>,
}

/// What one connection measured.
pub(super) struct ConnResult {
    pub mismatched: u64,
    pub finished_ns: u64,
    /// Answer − intended send, ns.
    pub latency: Histogram<u64>,
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

/// How one connection paces its requests.
pub(super) struct Plan {
    pub start: u64,
    pub window: usize,
    pub poll: ClientPoll,
    /// Spin polling: warm the thread's socket path after this long idle ([`crate::keep_warm`]).
    pub keep_warm: Option<std::time::Duration>,
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds")
}

/// Hand `done` to the collector, waiting while its ring is full (it is sized so that
/// this does not happen while the collector keeps up).
fn report(dones: &mut rtrb::Producer<Done>, mut done: Done) {
    loop {
        match dones.push(done) {
            Ok(()) => return,
            Err(rtrb::PushError::Full(d)) => {
                done = d;
                std::hint::spin_loop();
            }
        }
    }
}

/// Run one connection until its job ring is closed and empty and every request was
/// answered (or, the server gone, reported lost).
pub(super) fn drive(
    link: &mut dyn Link,
    jobs: &mut rtrb::Consumer<Job>,
    dones: &mut rtrb::Producer<Done>,
    plan: &Plan,
) -> ConnResult {
    let window = plan.window.max(1);
    // (index, intended send) of each unanswered request, by sequence number % window.
    let mut inflight = vec![(0u64, 0u64); window];
    let (mut latency, mut lag) = (new_histogram(), new_histogram());
    // Sequence numbers on this connection: offered, handed over, answered.
    let (mut next, mut left, mut k) = (0usize, 0usize, 0usize);
    let mut mismatched = 0u64;
    // Open loop: episodes in which a due request found the window full, and their length.
    let mut waits = WindowWaits::default();
    let mut blocked_since: Option<u64> = None;
    let due_at = |job: &Job| job.due.map(|d| plan.start + d);
    let mut warm = match plan.keep_warm.map(crate::keep_warm::KeepWarm::new).transpose() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("replay connection: no keep-warm socket pair: {e}");
            None
        }
    };
    while now_ns() < plan.start {
        std::hint::spin_loop();
    }
    let failure = 'run: loop {
        let mut moved = false;
        let now = now_ns();
        // 1. Offer what is due and fits the window.
        while next - k < window {
            let Ok(job) = jobs.peek() else { break };
            let when = match due_at(job) {
                Some(t) if t > now => break,
                Some(t) => t,
                None => now,
            };
            match link.offer(&job.req) {
                Ok(true) => {}
                Ok(false) => break, // the transport is full: answers first
                Err(e) => break 'run Some(e),
            }
            inflight[next % window] = (job.i, when);
            let _ = jobs.pop();
            next += 1;
            moved = true;
        }
        let blocked = next - k >= window && jobs.peek().is_ok_and(|j| due_at(j).is_some_and(|t| t <= now));
        match (blocked, blocked_since) {
            (true, None) => blocked_since = Some(now),
            (false, Some(since)) => {
                let waited = now.saturating_sub(since);
                (waits.episodes, waits.total_ns) = (waits.episodes + 1, waits.total_ns + waited);
                waits.max_ns = waits.max_ns.max(waited);
                blocked_since = None;
            }
            _ => {}
        }
        // 2. Push them out; the schedule lag of each that left runs to the hand-over (the
        // write or publish that took it), not past it: the transport's own cost is latency.
        let t = now_ns();
        let gone_out = match link.flush() {
            Ok(n) => n,
            Err(e) => break 'run Some(e),
        };
        if gone_out > left {
            for j in left..gone_out {
                lag.saturating_record(t.saturating_sub(inflight[j % window].1).max(1));
            }
            left = gone_out;
            moved = true;
        }
        // 3. Take every answer already there.
        loop {
            let resp = match link.try_recv() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => break 'run Some(e),
            };
            let t = now_ns();
            let (i, intended) = inflight[k % window];
            mismatched += ({ resp.request_id } != i) as u64;
            let o = Outcome::of(&resp, t.saturating_sub(intended));
            latency.saturating_record(o.latency_ns.max(1));
            report(dones, Done { i, outcome: Some(o) });
            k += 1;
            moved = true;
        }
        if k == next && jobs.is_empty() && jobs.is_abandoned() {
            break None;
        }
        if let Some(w) = warm.as_mut() {
            if moved {
                w.worked(now);
            } else if w.due(now_ns()) {
                w.socket_round_trip();
            }
        }
        if !moved {
            match plan.poll {
                ClientPoll::Spin => std::hint::spin_loop(),
                ClientPoll::Block => {
                    // Until the next event is due (when the window has room for it), or an
                    // answer; at most 1 ms, to see new jobs arrive.
                    let until = if next - k < window { jobs.peek().ok().and_then(due_at) } else { None };
                    let max = until.map_or(1_000_000, |t| t.saturating_sub(now_ns()).min(1_000_000));
                    link.wait(Some(std::time::Duration::from_nanos(max)));
                }
            }
        }
    };
    if let Some(e) = failure {
        // The server is gone: what was in flight and what was still to send are lost.
        log::warn!("replay connection: {e}");
        for j in k..next {
            report(dones, Done { i: inflight[j % window].0, outcome: None });
        }
        loop {
            match jobs.pop() {
                Ok(job) => report(dones, Done { i: job.i, outcome: None }),
                Err(_) if jobs.is_abandoned() => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
    ConnResult { mismatched, finished_ns: now_ns(), latency, lag, window: waits }
}
